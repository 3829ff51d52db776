"""``sidecar demo``: watch the gate and the watchdog at work, in about ten seconds.

A daemon of its own starts in a new temp dir (it says where; the dir is removed at the
end). A user asks for two things; three agents (coder, search, rag) work on them; a
narrator speaks only when the controller grants it. The user-visible chat is printed on
the left, the activity rail on the right.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

import anyio
from sidecar_client import AsyncClient

CONFIG = """\
[controller]
min_gap_s = 1.0
idle_timeout_s = 2.5
grant_ttl_s = 10.0
"""
CID = "demo"
WIDTH = 58


def _start_daemon(root: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = os.path.join(root, "run", "sidecar.sock")
    notify_path = os.path.join(root, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    config = os.path.join(root, "demo.toml")
    with open(config, "w") as f:
        f.write(CONFIG)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "serve",
            "--data-dir",
            os.path.join(root, "data"),
            "--socket",
            sock,
            "--config",
            config,
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not notify.recv(4096).startswith(b"READY=1"):
            pass
    finally:
        notify.close()
    return proc, sock


def _row(left: str, right: str) -> str:
    lines_l = textwrap.wrap(left, WIDTH) or [""]
    lines_r = textwrap.wrap(right, WIDTH) or [""]
    rows = []
    for i in range(max(len(lines_l), len(lines_r))):
        a = lines_l[i] if i < len(lines_l) else ""
        b = lines_r[i] if i < len(lines_r) else ""
        rows.append(f"{a:<{WIDTH}} | {b}")
    return "\n".join(rows)


def _show(event: dict[str, Any]) -> str | None:
    kind, data = event["type"], event.get("data") or {}
    who = event.get("agent_id") or ""
    if event["visibility"] == "user":
        speaker = "you" if kind == "user.message" else "narrator"
        return _row(f"{speaker}: {data.get('text', '')}", "")
    if kind == "controller.decision":
        verdict = "SPEAK" if data.get("speak_now") else "hold"
        return _row("", f"[controller] {verdict} ({data.get('reason')})")
    if event["visibility"] == "status":
        detail = data.get("msg") or data.get("error") or ""
        if kind.startswith("task."):
            task = data.get("task") or {}
            detail = f"{event.get('task_id')} {task.get('status', '')}".strip()
        if kind == "watchdog.idle":
            detail = f"no sign of life for {data.get('idle_for_s')} s"
        return _row("", f"[{who or 'sidecar'}] {kind}: {detail}")
    return None


async def _scenario(sock: str) -> None:
    async with await AsyncClient.connect(sock) as watch, await AsyncClient.connect(sock) as act:
        done = anyio.Event()

        async def printer() -> None:
            async for event in watch.subscribe({"conversation_id": CID}):
                line = _show(event)
                if line:
                    print(line, flush=True)

        async def narrator() -> None:
            """A scripted narrator: it waits for a grant, then says something short."""
            async with await AsyncClient.connect(sock) as me:
                async for ev in me.subscribe({"conversation_id": CID, "types": ["controller.decision"]}):
                    data = ev["data"]
                    if not data.get("speak_now"):
                        continue
                    words = {
                        "user_message": "On it: the coder takes the login test, search looks for OAuth docs.",
                        "error": "An agent hit an error; I am keeping an eye on it.",
                        "idle": "Search has gone quiet for a while; I have flagged it.",
                    }.get(data["reason"], "Still working.")
                    if data["reason"] == "task_done":  # say which one: read it from the log
                        page = await me.call("log.query", {"conversation_id": CID, "types": ["task.updated"]})
                        finished = [e["task_id"] for e in page["events"] if e["data"]["task"]["status"] == "done"]
                        words = f"Done: {finished[-1]}." if finished else "A task is done."
                    await me.call("narrator.say", {"conversation_id": CID, "grant_id": data["grant_id"], "text": words})
                    if done.is_set():
                        return

        async def agent(name: str, task: str, steps: list[str], finish: bool, beat: bool) -> None:
            await act.call("tasks.create", {"id": task, "type": name, "owner": name, "conversation_id": CID})
            await act.call("tasks.update", {"id": task, "status": "running"})
            for step in steps:
                await anyio.sleep(0.6)
                await act.call(
                    "log.append",
                    {
                        "conversation_id": CID,
                        "type": "agent.progress",
                        "agent_id": name,
                        "task_id": task,
                        "visibility": "status",
                        "data": {"msg": step},
                    },
                )
                if beat:
                    await act.call("controller.heartbeat", {"conversation_id": CID, "agent_id": name, "task_id": task})
            if finish:
                await act.call("tasks.update", {"id": task, "status": "done"})

        print(_row("CHAT (what the user sees)", "ACTIVITY RAIL (what the agents do)"))
        print("-" * (2 * WIDTH + 3))
        async with anyio.create_task_group() as tg:
            tg.start_soon(printer)
            tg.start_soon(narrator)
            await anyio.sleep(0.3)
            await act.call(
                "chat.user_message",
                {"conversation_id": CID, "text": "Please fix the failing login test and find docs on OAuth."},
            )
            async with anyio.create_task_group() as agents:
                agents.start_soon(
                    agent,
                    "coder",
                    "fix-login",
                    ["reading tests/test_login.py", "patching auth/session.py", "tests pass"],
                    True,
                    True,
                )
                agents.start_soon(agent, "search", "find-oauth", ["searching the web for OAuth guides"], False, False)
                agents.start_soon(agent, "rag", "index-docs", ["indexing 42 pages"], True, True)
            await anyio.sleep(6.0)  # search stays silent: watch the watchdog speak up
            done.set()
            tg.cancel_scope.cancel()


def main() -> int:
    root = tempfile.mkdtemp(prefix="sidecar-demo-")
    print(f"sidecar demo: running its own daemon in {root} (removed at the end)", flush=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, sock = _start_daemon(root)
        anyio.run(_scenario, sock)
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)  # even when the daemon never came up
    print("-" * (2 * WIDTH + 3))
    print("The narrator spoke only when the controller said SPEAK; the agents never wrote to the chat.")
    return 0
