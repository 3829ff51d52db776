"""The top-level Procfile under honcho (a Python Foreman): start, serve, stop with exit 0."""

from __future__ import annotations

import os
import signal
import subprocess

from sidecar_client import Client

from tests.deploy.conftest import BIN, ROOT, Site, ready_pid


def test_the_procfile_names_one_process_run_from_path() -> None:
    assert (ROOT / "Procfile").read_text().splitlines() == ["sidecar: sidecar serve"]


def test_honcho_starts_the_daemon_and_sigterm_drains_it(site: Site) -> None:
    out = site.dir / "honcho.out"
    with open(out, "wb") as sink:
        honcho = subprocess.Popen(
            [BIN / "honcho", "start", "-f", ROOT / "Procfile", "-d", site.dir, "--no-colour"],
            env=site.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        pid = ready_pid(site.notify, context=lambda: out.read_text(errors="replace"))
        with Client(site.socket_path) as c:
            assert c.call("sys.health")["status"] == "ok"
            c.call("log.append", {"conversation_id": "pf", "type": "agent.progress", "data": {"pid": pid}})
        assert (site.data_dir / "logs" / "pf.jsonl").exists()  # paths came from SIDECAR_* via honcho

        honcho.send_signal(signal.SIGTERM)  # what `honcho start` does on Ctrl-C: TERM to each process
        honcho.wait(timeout=30)
        text = out.read_text(errors="replace")
        # honcho runs the line under `sh -c` and signals the whole group, so the rc it prints
        # is the shell's (-15); the daemon's own drain shows in its log and on disk.
        assert "sidecar.1 started" in text and "sending SIGTERM to sidecar.1" in text, text
        assert '"event": "daemon.stopping"' in text and '"event": "daemon.stopped"' in text, text
        assert '"level": "error"' not in text, text
        assert not os.path.exists(site.socket_path)  # a clean exit removes its socket
    finally:
        if honcho.poll() is None:
            honcho.kill()
            honcho.wait()
