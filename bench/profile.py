"""Flame graphs of the daemon under append load (py-spy), for docs/performance.md.

    ./dev bench --profile [--out DIR] [--seconds S] [--gil]

One SVG per load shape (1 client, 16 clients x 1, 16 clients x 8 in flight), sampled from a
daemon started the way the benchmarks start it, while the benchmarks' load generator drives
it. ``--gil`` samples only the thread holding the GIL: where the Python time goes, without
the waits. py-spy needs to attach to the daemon (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_appends import append_request
from bench_daemon import Daemon, load
from report import RESULTS

SHAPES = ((1, 1), (16, 1), (16, 8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the SVGs go (default bench/results)")
    parser.add_argument("--seconds", type=int, default=8, help="sampling time per shape")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("profile: py-spy is missing (it is in the bench extra: ./dev bench installs it)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    make = append_request(False)
    with (
        tempfile.TemporaryDirectory(prefix="sidecar-profile-") as name,
        Daemon(Path(name) / "d", Path(name) / "run") as d,
    ):
        load(d.socket, 2, 1, 200, make)  # warm
        for clients, in_flight in SHAPES:
            svg = args.out / f"flame-{clients}x{in_flight}{'-gil' if args.gil else ''}.svg"
            cmd = [spy, "record", "-p", str(d.proc.pid), "-o", str(svg), "-d", str(args.seconds), "-r", "400"]
            cmd += ["--nonblocking", "--format", "flamegraph", *(["--gil"] if args.gil else [])]
            sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            done, rates = time.monotonic() + args.seconds, []
            while time.monotonic() < done:  # keep the load on for the whole sampling time
                took, lat = load(d.socket, clients, in_flight, max(200, 3000 // clients), make)
                rates.append(len(lat) / took)
            _, err = sampler.communicate()
            if sampler.returncode != 0:
                print(f"profile: py-spy failed: {err.strip()}", file=sys.stderr)
                return 1
            print(f"{svg}: {clients} x {in_flight}, {sorted(rates)[len(rates) // 2]:,.0f} appends/s while sampled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
