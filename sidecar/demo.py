"""``sidecar demo``: watch the gate, the watchdog and an error playbook at work.

``sidecar demo`` starts a daemon of its own in a new temp dir (it says where; the dir is
removed at the end) and plays the story in about ten seconds. ``sidecar demo --socket
[PATH]`` plays it into a daemon that is already running, say the one ``sidecar web`` shows,
in a new conversation (``demo-YYYYMMDD-HHMMSS`` UTC, or ``--conversation``) with task ids of
its own, so runs never collide; that daemon's controller settings pace it, and the story ends
within about 20 s even when its watchdog (``idle_timeout_s``, 30 s by default) is too slow to
speak up before then. A run cut short cancels its open tasks there: no watchdog goes on about
them for ever.

The story: a user asks for two things; three agents (coder, search, rag) work on them;
search's web tool times out (the controller's decision carries the ``tool-timeout``
playbook), search retries and goes quiet (the watchdog speaks up), then gives up (the
``task-failed`` playbook); a scripted narrator speaks only when the controller grants it.
Each step that calls for a turn (the ask, the timeout, the finished work, the failure) is
written only once the narrator has had the turn before, so each gets a turn of its own
whatever the daemon's ``min_gap_s``. The user-visible chat is printed on the left, the
activity rail on the right.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sidecar_client import AsyncClient, RpcError, default_socket_path

from sidecar.terminal import printable

CONFIG = """\
[controller]
min_gap_s = 1.0
idle_timeout_s = 2.5
grant_ttl_s = 10.0
"""
CID = "demo"  # the conversation in a daemon of its own
WIDTH = 58
BEAT = 0.6  # between two steps of an agent: slow enough for a person to follow
NOT_FOUND = -32002
GATE_CLOSED = -32004
TOOL_TIMEOUT = {"tool": "web_search", "after_s": 30, "query": "OAuth login guide"}

Event = dict[str, Any]


@dataclass(frozen=True)
class Pace:
    """How long the story waits for what the daemon decides, in seconds: a daemon of our own
    answers in time for sure; another one's settings may hold turns back for longer, so there
    the whole story has a deadline too."""

    turn_s: float  # for one narrator turn
    watchdog_s: float  # for the watchdog to speak up and the stall report
    story_s: float | None  # for the whole story


OWN_PACE = Pace(turn_s=15.0, watchdog_s=20.0, story_s=None)  # generous: a loaded machine
SOCKET_PACE = Pace(turn_s=8.0, watchdog_s=4.0, story_s=19.0)


@dataclass(frozen=True)
class Plan:
    """Where the story plays: the conversation and the three tasks' ids."""

    conversation: str
    fix: str  # the coder's
    find: str  # search's
    index: str  # rag's
    from_seq: int = 1  # the conversation's first seq of this run

    @classmethod
    def named(cls, conversation: str, suffix: str = "", from_seq: int = 1) -> Plan:
        return cls(conversation, f"fix-login{suffix}", f"find-oauth{suffix}", f"index-docs{suffix}", from_seq)

    @property
    def tasks(self) -> tuple[str, str, str]:
        return self.fix, self.find, self.index


# --- a daemon of our own ---------------------------------------------------------------------


def start_daemon(root: str) -> tuple[subprocess.Popen[bytes], str]:
    """A daemon of the demo's own in ``root`` with its quick controller settings, once it says
    READY (the systemd notify protocol); also ``docs/screenshot.py``'s."""
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


# --- the terminal view -----------------------------------------------------------------------


def _row(left: str, right: str) -> str:
    lines_l = textwrap.wrap(printable(left), WIDTH) or [""]
    lines_r = textwrap.wrap(printable(right), WIDTH) or [""]
    rows = []
    for i in range(max(len(lines_l), len(lines_r))):
        a = lines_l[i] if i < len(lines_l) else ""
        b = lines_r[i] if i < len(lines_r) else ""
        rows.append(f"{a:<{WIDTH}} | {b}")
    return "\n".join(rows)


def _show(event: Event) -> str | None:
    kind, data = event["type"], event.get("data") or {}
    who = event.get("agent_id") or ""
    if event["visibility"] == "user":
        speaker = "you" if kind == "user.message" else "narrator"
        return _row(f"{speaker}: {data.get('text', '')}", "")
    if kind == "controller.decision":
        verdict = "SPEAK" if data.get("speak_now") else "hold"
        playbook = f" playbook {data['playbook']}" if data.get("playbook") else ""
        return _row("", f"[controller] {verdict} ({data.get('reason')}){playbook}")
    if event["visibility"] == "status":
        detail = data.get("msg") or data.get("error") or ""
        if kind.startswith("task."):
            task = data.get("task") or {}
            detail = f"{event.get('task_id')} {task.get('status', '')}".strip()
        if kind == "watchdog.idle":
            detail = f"no sign of life for {data.get('idle_for_s')} s"
        if kind == "tool.timeout":
            detail = f"{data.get('tool')} gave no answer in {data.get('after_s')} s"
        return _row("", f"[{who or 'sidecar'}] {kind}: {detail}")
    return None


# --- the story -------------------------------------------------------------------------------


class Seen:
    """The conversation as the printer has shown it: what the story waits on, so that it
    moves on once a turn is on the screen, not after a guessed delay."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._new = anyio.Event()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._new.set()
        self._new = anyio.Event()

    async def until(self, check: Callable[[list[Event]], bool], limit: float) -> bool:
        """Whether ``check(events)`` came true within ``limit`` seconds."""
        with anyio.move_on_after(max(limit, 0.0)):
            while not check(self.events):
                await self._new.wait()
            return True
        return False


def _spoke(reason: str, since: int) -> Callable[[list[Event]], bool]:
    """The narrator has had a turn for ``reason`` among the events from index ``since``."""
    return lambda events: any(
        e["type"] == "narrator.message" and (e.get("data") or {}).get("reason") == reason for e in events[since:]
    )


async def _latest(me: AsyncClient, cid: str, kind: str, where: Callable[[Event], bool] = bool) -> Event | None:
    """The newest ``kind`` event of the conversation for which ``where`` holds."""
    page = await me.call("log.query", {"conversation_id": cid, "types": [kind]})
    found = [e for e in page["events"] if where(e)]
    return found[-1] if found else None


def _status(event: Event) -> object:
    """The status a task event records (None when it records none)."""
    task = (event.get("data") or {}).get("task")
    return task.get("status") if isinstance(task, dict) else None


async def _done_tasks(me: AsyncClient, plan: Plan) -> list[str]:
    """The story's finished tasks, in the order they finished (a conversation given with
    --conversation may hold those of earlier runs too)."""
    page = await me.call("log.query", {"conversation_id": plan.conversation, "types": ["task.updated"]})
    return [e["task_id"] for e in page["events"] if _status(e) == "done" and e["task_id"] in plan.tasks]


async def _words(me: AsyncClient, plan: Plan, reason: str, playbook: str | None, told: set[str]) -> str:
    """What the scripted narrator says on a turn, read from the log as a real one would:
    for an error or a failure, what the playbook the decision carried asks for."""
    cid = plan.conversation
    done = [t for t in await _done_tasks(me, plan) if t not in told]
    told.update(done)
    if reason == "user_message":
        return "On it: the coder takes the login test, search looks for OAuth docs, rag indexes what we have."
    if playbook == "tool-timeout":  # name the tool and what it was for; no guessing at the cause
        ev = await _latest(me, cid, "tool.timeout")
        data = (ev or {}).get("data") or {}
        who = (ev or {}).get("agent_id") or "an agent"
        return (
            f"One step is taking longer than it should: {who}'s {data.get('tool', 'tool')} gave no answer "
            f"in {data.get('after_s', '?')} s while looking for {data.get('query', 'something')!r}. "
            "It will try once more with a narrower query."
        )
    if playbook == "task-failed":  # what it was, what went wrong, what it means for the rest
        ev = await _latest(me, cid, "task.updated", lambda e: _status(e) == "failed")
        task = ((ev or {}).get("data") or {}).get("task") or {}
        error = (task.get("outputs") or {}).get("error", "no reason given")
        finished = await _done_tasks(me, plan)
        are = "is" if len(finished) == 1 else "are"
        rest = f" Nothing else waits on it: {' and '.join(finished)} {are} done." if finished else ""
        return f"{task.get('id', 'A task')} failed and will not be retried: {error}.{rest} Shall I try another source?"
    if reason == "task_done" and done:
        also = f" Also done: {', '.join(done[1:])}." if len(done) > 1 else ""
        return f"Done: {done[0]}.{also}"
    if reason == "idle":
        return "Search has gone quiet for a while; I have flagged it."
    if reason == "error":
        return "An agent hit an error; I am keeping an eye on it."
    return "Still working."


async def _narrate(sock: str, plan: Plan) -> None:
    """A scripted narrator: it waits for a grant, then says something short."""
    told: set[str] = set()
    held: str | None = None  # a playbook that came with a decision not to speak: said next time
    async with await AsyncClient.connect(sock) as me:
        decisions = {"conversation_id": plan.conversation, "types": ["controller.decision"], "from_seq": plan.from_seq}
        async for ev in me.subscribe(decisions):
            data = ev["data"]
            playbook = data.get("playbook") or held
            if not data.get("speak_now"):
                held = playbook
                continue
            held = None
            words = await _words(me, plan, data["reason"], playbook, told)
            say = {"conversation_id": plan.conversation, "grant_id": data["grant_id"], "text": words}
            try:
                await me.call("narrator.say", say)
            except RpcError as exc:  # used or expired: the daemon's own narrator (an LLM) spoke first
                if exc.code != GATE_CLOSED:
                    raise


async def _story(sock: str, plan: Plan, pace: Pace) -> list[str]:
    """Play the story; what did not show in time (a daemon's settings may hold it back)."""
    cid = plan.conversation
    seen = Seen()
    missed: list[str] = []
    end = None if pace.story_s is None else anyio.current_time() + pace.story_s

    def limit(seconds: float) -> float:
        return seconds if end is None else min(seconds, end - anyio.current_time())

    async with await AsyncClient.connect(sock) as watch, await AsyncClient.connect(sock) as act:

        async def printer() -> None:
            async for event in watch.subscribe({"conversation_id": cid, "from_seq": plan.from_seq}):
                line = _show(event)
                if line:
                    print(line, flush=True)
                seen.add(event)
            raise ConnectionError(f"the daemon on {sock} shut down")  # sys.shutdown ended the subscription

        async def step(agent: str, task: str, msg: str, beat: bool = True) -> None:
            status = {"conversation_id": cid, "agent_id": agent, "task_id": task, "visibility": "status"}
            await act.call("log.append", {**status, "type": "agent.progress", "data": {"msg": msg}})
            if beat:
                await act.call("controller.heartbeat", {"conversation_id": cid, "agent_id": agent, "task_id": task})

        async def turn(reason: str, since: int) -> None:
            if not await seen.until(_spoke(reason, since), limit(pace.turn_s)):
                missed.append(f"a turn for {reason}")
                print(_row("", f"(no {reason} turn yet: this daemon's controller holds it back; moving on)"))

        print(_row("CHAT (what the user sees)", "ACTIVITY RAIL (what the agents do)"))
        print("-" * (2 * WIDTH + 3))
        async with anyio.create_task_group() as tg:
            tg.start_soon(printer)
            tg.start_soon(_narrate, sock, plan)

            # 1. The user asks; the work is split up.
            since = len(seen.events)
            text = "Please fix the failing login test and find docs on OAuth."
            await act.call("chat.user_message", {"conversation_id": cid, "text": text})
            for agent, task in (("coder", plan.fix), ("search", plan.find), ("rag", plan.index)):
                await act.call("tasks.create", {"id": task, "type": agent, "owner": agent, "conversation_id": cid})
                await act.call("tasks.update", {"id": task, "status": "running"})
            await turn("user_message", since)

            # 2. Search's web tool times out: the decision carries the tool-timeout playbook.
            await anyio.sleep(BEAT)
            await step("rag", plan.index, "indexing 42 pages")
            await step("coder", plan.fix, "reading tests/test_login.py")
            await step("search", plan.find, "searching the web for OAuth guides", beat=False)
            await anyio.sleep(BEAT)
            since = len(seen.events)
            timeout = {"conversation_id": cid, "agent_id": "search", "task_id": plan.find, "visibility": "status"}
            await act.call("log.append", {**timeout, "type": "tool.timeout", "data": TOOL_TIMEOUT})
            await turn("error", since)

            # 3. Search retries; the coder and rag finish.
            await step("search", plan.find, "retrying web_search with a narrower query", beat=False)
            await anyio.sleep(BEAT)
            await step("coder", plan.fix, "patching auth/session.py")
            await step("rag", plan.index, "indexed 42 pages")
            await anyio.sleep(BEAT)
            await step("coder", plan.fix, "tests pass")
            since = len(seen.events)
            await act.call("tasks.update", {"id": plan.fix, "status": "done"})
            await act.call("tasks.update", {"id": plan.index, "status": "done"})
            await turn("task_done", since)

            # 4. Search stays silent: the watchdog speaks up, and reports the task stalled.
            since = len(seen.events)

            def watchdog(events: list[Event]) -> bool:
                stalled = any(e["type"] == "task.stalled" and e.get("task_id") == plan.find for e in events[since:])
                return stalled and _spoke("idle", since)(events)

            if not await seen.until(watchdog, limit(pace.watchdog_s)):
                missed.append("the watchdog (this daemon's idle_timeout_s is longer than the demo waits)")
                print(_row("", "(the watchdog has not spoken up yet: this daemon's idle_timeout_s is longer)"))

            # 5. Search gives up: the decision carries the task-failed playbook.
            since = len(seen.events)
            failed = {"error": f"{TOOL_TIMEOUT['tool']} timed out again"}
            await act.call("tasks.update", {"id": plan.find, "status": "failed", "outputs": failed})
            await turn("task_failed", since)
            tg.cancel_scope.cancel()
    return missed


async def _close_open(sock: str, plan: Plan) -> None:
    """Leave no task of ours open in someone else's daemon (the story cut short, by Ctrl-C):
    its watchdog would speak up about it for ever."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            async with await AsyncClient.connect(sock) as me:
                for task in plan.tasks:
                    try:
                        if (await me.call("tasks.get", {"id": task}))["status"] in ("pending", "running", "blocked"):
                            await me.call("tasks.update", {"id": task, "status": "cancelled"})
                    except RpcError:
                        pass
        except ConnectionError:
            pass  # the daemon is gone: the error that ended the story says so


async def _plan(sock: str, conversation: str | None) -> Plan:
    """A conversation and task ids no earlier run used: the time, then -2, -3... if taken
    (two runs in one second). Connecting first also proves a daemon answers."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    async with await AsyncClient.connect(sock) as me:
        for n in range(1, 1000):
            suffix = stamp if n == 1 else f"{stamp}-{n}"
            cid = conversation or f"demo-{suffix}"
            newest = (await me.call("log.tail", {"conversation_id": cid, "limit": 1}))["events"]
            if newest and conversation is None:
                continue
            plan = Plan.named(cid, f"-{suffix}", from_seq=newest[-1]["seq"] + 1 if newest else 1)
            if not [t for t in plan.tasks if await _exists(me, t)]:
                return plan
    raise RuntimeError("no free conversation or task ids: 999 demo runs in one second?")


async def _exists(me: AsyncClient, task: str) -> bool:
    try:
        await me.call("tasks.get", {"id": task})
    except RpcError as exc:
        if exc.code == NOT_FOUND:
            return False
        raise
    return True


async def _play_into(sock: str, conversation: str | None, played: list[str]) -> list[str]:
    """What did not show in time; ``played`` gets the conversation, once it is chosen."""
    plan = await _plan(sock, conversation)
    played.append(plan.conversation)
    print(f"sidecar demo: playing into the daemon on {sock}, conversation {plan.conversation}", flush=True)
    try:
        return await _story(sock, plan, SOCKET_PACE)
    finally:
        await _close_open(sock, plan)


def _why(exc: BaseException) -> str | None:
    """The daemon's part in a failure, in one line (None: a bug of ours, to be raised)."""
    if isinstance(exc, BaseExceptionGroup):  # from a task group
        return next((why for inner in exc.exceptions if (why := _why(inner)) is not None), None)
    if isinstance(exc, RpcError):
        return f"the daemon refused a call: {exc.message} (code {exc.code})"
    if isinstance(exc, ConnectionError):  # no daemon there, or it went away
        return str(exc)
    return None


def main(socket: str | None = None, conversation: str | None = None) -> int:
    """Run the demo. ``socket``: None, a daemon of its own; "", the default socket (which
    honours $SIDECAR_SOCKET); else that path. ``conversation``: instead of the default one."""
    missed: list[str] = []
    played: list[str] = []  # the conversation, once chosen
    sock = None if socket is None else os.path.abspath(socket or default_socket_path())
    root = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        if sock is None:
            root = tempfile.mkdtemp(prefix="sidecar-demo-")
            print(f"sidecar demo: running its own daemon in {root} (removed at the end)", flush=True)
            proc, own = start_daemon(root)
            missed = anyio.run(_story, own, Plan.named(conversation or CID), OWN_PACE)
        else:
            missed = anyio.run(_play_into, sock, conversation, played)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        why = _why(exc)
        if why is None:
            raise
        print(printable(f"sidecar demo: {why}"), file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)  # even when the daemon never came up
    print("-" * (2 * WIDTH + 3))
    print("The narrator spoke only when the controller said SPEAK; the agents never wrote to the chat.")
    if missed:
        print(f"Not shown in time here: {'; '.join(missed)}. `sidecar demo` alone shows it all.")
    if sock is not None and played:
        print(
            f"sidecar demo: to watch it in a browser, run `sidecar web --socket {shlex.quote(sock)}` "
            f"and open the URL it prints with &conversation={played[0]}"
        )
    return 0
