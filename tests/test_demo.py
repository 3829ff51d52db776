"""``sidecar demo`` runs start to finish and shows the gate and the watchdog at work."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.daemon.conftest import child_env


def test_the_demo_runs() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo"], capture_output=True, text=True, timeout=90, env=child_env()
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    where = re.fullmatch(r"sidecar demo: running its own daemon in (\S+) \(removed at the end\)", out.splitlines()[0])
    assert where is not None, out.splitlines()[0]  # it says first where its daemon runs...
    assert os.path.isabs(where.group(1)) and not os.path.exists(where.group(1))  # ...and removes it
    assert "you: Please fix the failing login test" in out
    assert "narrator: On it" in out and "narrator: Done: fix-login." in out  # spoke only with grants
    assert "[controller] SPEAK (user_message)" in out and "[controller] SPEAK (task_done)" in out
    assert "watchdog.idle" in out and "[controller] SPEAK (idle)" in out  # the watchdog spoke up
    assert "task.stalled: find-oauth" in out
    chat_lines = [line.split("|")[0] for line in out.splitlines() if "|" in line]
    assert not any("[coder]" in line or "[search]" in line for line in chat_lines)  # agents never in the chat
