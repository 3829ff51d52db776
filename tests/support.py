"""Helpers shared by several test modules: events as the log hands them over, a policy with
the defaults the tests assume, log lines as our writer writes them, realistic agent traffic,
and waiting for a condition with a deadline."""

from __future__ import annotations

import itertools
import json
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sidecar.controller.policy import RulePolicy
from sidecar.log.events import Event, encode_event

_seq = itertools.count(1)
T = TypeVar("T")


def within(seconds: float, check: Callable[[], T], what: str = "the condition") -> T:
    """``check()`` once it is truthy (its value), asked again every 20 ms; the assertion fails
    at the deadline. How a test waits for background work without sleeping in its place."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not hold within {seconds} s (last: {value!r})"
        time.sleep(0.02)


def ev(
    type_: str,
    cid: str = "c1",
    *,
    task: dict | None = None,
    task_id: str | None = None,
    level: str = "action",
    visibility: str | None = None,
    data: Any = None,
) -> Event:
    """An event as the log would hand it over; the chat's own types default to visibility user."""
    return Event(
        id=f"00000000-0000-7000-8000-{next(_seq):012d}",
        seq=next(_seq),
        timestamp="2026-11-23T10:00:00.000000Z",
        conversation_id=cid,
        type=type_,
        visibility=visibility or ("user" if type_ in ("user.message", "narrator.message") else "internal"),
        level=level,
        task_id=task_id or (task or {}).get("id"),
        caused_by=[],
        data=data if data is not None else ({"task": task} if task else {}),
    )


def policy(**kw) -> RulePolicy:
    return RulePolicy(min_gap_s=kw.pop("min_gap_s", 5.0), idle_timeout_s=kw.pop("idle_timeout_s", 30.0), **kw)


def reasons(decisions) -> list[tuple[str, bool, str]]:
    return [(d.conversation_id, d.speak_now, d.reason) for d in decisions]


def line(cid: str, seq: int, **kw: object) -> bytes:
    """One log line as our writer would have written it."""
    fields: dict = {
        "id": str(uuid.uuid4()),
        "seq": seq,
        "timestamp": f"2026-01-01T00:00:{seq:02d}.000000Z",
        "conversation_id": cid,
        "type": "test.event",
        "visibility": "internal",
        "level": "action",
        "caused_by": [],
        "data": {},
    }
    fields.update(kw)
    return encode_event(Event(**fields))


def event(
    seq: int,
    type_: str,
    *,
    level: str = "action",
    agent: str | None = "coder",
    task: str | None = None,
    data: dict | None = None,
    minute: int = 0,
) -> dict:
    return {
        "id": f"00000000-0000-7000-8000-{seq:012d}",
        "seq": seq,
        "timestamp": f"2020-05-01T10:{minute:02d}:{seq % 60:02d}.000000Z",
        "conversation_id": "c1",
        "type": type_,
        "visibility": "status",
        "level": level,
        "agent_id": agent,
        "task_id": task,
        "caused_by": [],
        "data": data or {},
    }


def realistic(n: int = 400, seed: int = 3) -> list[dict]:
    """Agent traffic: lots of progress and tool calls, some task changes, a few errors and decisions."""
    rng = random.Random(seed)
    out = []
    for seq in range(1, n + 1):
        kind = rng.random()
        task = f"task-{rng.randint(1, 12)}"
        agent = rng.choice(["coder", "search", "rag"])
        if kind < 0.5:
            out.append(
                event(
                    seq,
                    "agent.progress",
                    level="detail",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"msg": f"reading file src/module_{rng.randint(1, 80)}.py and planning", "pct": seq % 100},
                )
            )
        elif kind < 0.8:
            out.append(
                event(
                    seq,
                    "tool.call",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={
                        "tool": "grep",
                        "args": {"pattern": f"def handler_{seq}", "path": "src/"},
                        "result_lines": rng.randint(0, 40),
                    },
                )
            )
        elif kind < 0.93:
            out.append(
                event(
                    seq,
                    "task.updated",
                    level="state",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"status": rng.choice(["running", "blocked", "pending"])},
                )
            )
        elif kind < 0.97:
            out.append(
                event(
                    seq,
                    "agent.error",
                    level="action",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"error": f"tool timed out after {rng.randint(5, 60)} s"},
                )
            )
        else:
            out.append(
                event(
                    seq,
                    "agent.decision",
                    level="decision",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"text": f"switch to plan {chr(65 + seq % 5)} for {task}"},
                )
            )
    return out


def read_notifications(sock_path: str, params: dict) -> Iterator[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sock_path)
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "log.subscribe", "params": params}).encode() + b"\n")
    f = s.makefile("rb")
    assert "result" in json.loads(f.readline())
    try:
        while True:
            yield json.loads(f.readline())
    finally:
        f.close()
        s.close()
