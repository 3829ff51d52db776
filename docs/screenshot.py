"""Make ``docs/img/console.png`` from a real run: a daemon, ``sidecar web`` and
``sidecar demo --socket`` playing into it, photographed in headless Chromium.

    .venv/bin/python docs/screenshot.py [--output PATH] [--width 1440] [--height 1000] [--dark]

Needs the test extra (Playwright) and a Chromium: ``./dev test`` installs both. Everything
runs in a temp dir, removed at the end; only the picture is written.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.demo import start_daemon  # noqa: E402 - with the demo's quick controller settings
from tests.web import chromium  # noqa: E402

CONVERSATION = "demo"


def newest(sock: str, visibility: str) -> int:
    """The seq of the demo conversation's newest event of ``visibility``."""
    from sidecar_client import Client

    with Client(sock) as client:
        query = {"conversation_id": CONVERSATION, "visibility": visibility}
        page = client.call("log.query", query)
        while page["next_cursor"]:
            page = client.call("log.query", {**query, "cursor": page["next_cursor"]})
        return int(page["events"][-1]["seq"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "docs" / "img" / "console.png"))
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--dark", action="store_true", help="the dark theme")
    args = parser.parse_args()
    browser_path = chromium.path()
    if browser_path is None:
        print("screenshot: no chromium (./dev test installs it; or set SIDECAR_BROWSER)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="sidecar-screenshot-") as tmp:
        daemon, sock = start_daemon(tmp)
        web = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "web", "--socket", sock, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert web.stdout is not None
            url = web.stdout.readline().split(" ", 2)[2].strip()
            print(f"screenshot: console at {url.partition('?')[0]}; playing the demo into it", file=sys.stderr)
            demo = [sys.executable, "-m", "sidecar", "demo", "--socket", sock, "--conversation", CONVERSATION]
            subprocess.run(demo, check=True, stdout=subprocess.DEVNULL, timeout=120)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=browser_path, args=chromium.ARGS)
                page = browser.new_page(
                    viewport={"width": args.width, "height": args.height},
                    color_scheme="dark" if args.dark else "light",
                )
                page.goto(f"{url}&conversation={CONVERSATION}")
                page.wait_for_selector('#link[data-state="live"]')
                for visibility in ("status", "user"):  # the story's last lines are on the page
                    seq = newest(sock, visibility)
                    page.wait_for_selector(f'[data-seq="{seq}"]')
                page.wait_for_selector('[data-role="activity-item"] [data-role="playbook"]')
                page.screenshot(path=args.output, full_page=True)
                browser.close()
        finally:
            for proc in (web, daemon):
                proc.terminate()
                proc.wait(timeout=15)
    print(f"screenshot: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
