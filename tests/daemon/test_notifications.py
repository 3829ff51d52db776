"""Every notification a real daemon sends fits the Struct that rpc.discover describes it with
(``x-notifications``), so the description cannot drift from what goes on the wire."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
from sidecar_client import Client

from sidecar.notifications import NOTIFICATIONS
from tests.daemon.conftest import DaemonProc
from tests.narrator.fake_llm import running


def fits(method: str, params: dict[str, Any]) -> None:
    """``params`` are what the notification's Struct describes: valid, and nothing more."""
    struct, _ = NOTIFICATIONS[method]
    msgspec.convert(params, struct)
    assert set(params) <= set(struct.__struct_fields__), f"{method} sends fields it does not describe: {params}"


class Subscriber:
    """A raw connection that subscribes, then reads what the daemon pushes."""

    def __init__(self, socket_path: str, params: dict[str, Any]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(socket_path)
        self.file = self.sock.makefile("rb")
        request = {"jsonrpc": "2.0", "id": 1, "method": "log.subscribe", "params": params}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        self.subscription = json.loads(self.file.readline())["result"]["subscription"]

    def notes(self) -> Iterator[dict[str, Any]]:
        while line := self.file.readline():
            yield json.loads(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_the_document_describes_the_notifications(daemon: DaemonProc) -> None:
    with Client(daemon.socket_path) as c:
        doc = c.call("rpc.discover")
    described = {n["name"]: n for n in doc["x-notifications"]}
    assert set(described) == {"log.event", "log.overflow", "narrator.delta", "sys.shutdown"}
    for name, note in described.items():
        assert note["params"]["type"] == "object" and note["summary"]
        for example in note["examples"]:
            fits(name, example)


def test_log_event_and_sys_shutdown_fit_their_structs(daemon: DaemonProc) -> None:
    sub = Subscriber(daemon.socket_path, {"conversation_id": "c1"})
    try:
        with Client(daemon.socket_path) as c:
            c.call("log.append", {"conversation_id": "c1", "type": "agent.progress", "agent_id": "a", "turn": 2})
        notes = sub.notes()
        event = next(notes)
        assert event["method"] == "log.event" and event["params"]["subscription"] == sub.subscription
        fits("log.event", event["params"])
        daemon.stop()
        shutdown = next(n for n in notes if n["method"] != "log.event")
        assert shutdown["method"] == "sys.shutdown" and shutdown["params"]["reason"]
        fits("sys.shutdown", shutdown["params"])
    finally:
        sub.close()


def test_log_overflow_fits_its_struct(start_daemon: Any) -> None:
    d = start_daemon(config_text="[server]\nsubscriber_queue = 1\n")
    sub = Subscriber(d.socket_path, {"conversation_id": "c1"})
    try:
        with Client(d.socket_path) as c:  # one commit of five events: the queue of one overflows at once
            c.call("log.append_many", {"events": [{"conversation_id": "c1", "type": "a.b"}] * 5})
        overflow = next(n for n in sub.notes() if n["method"] != "log.event")
        assert overflow["method"] == "log.overflow"
        params = overflow["params"]
        fits("log.overflow", params)
        assert params["reason"] == "overflow" and params["conversation_id"] == "c1" and params["from_seq"] >= 1
    finally:
        sub.close()


def test_narrator_delta_fits_its_struct(start_daemon: Any) -> None:
    with running() as llm:
        d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\nnarrator = true\ntimeout_s = 5.0\n')
        sub = Subscriber(d.socket_path, {"conversation_id": "c1"})
        try:
            with Client(d.socket_path) as c:
                c.call("chat.user_message", {"conversation_id": "c1", "text": "how is it going?"})
            deltas = []
            for note in sub.notes():
                if note["method"] == "narrator.delta":
                    fits("narrator.delta", note["params"])
                    deltas.append(note["params"])
                elif note["params"].get("event", {}).get("type") == "narrator.message":
                    break
            assert [d["index"] for d in deltas] == list(range(len(llm.pieces)))
            assert all(d["subscription"] == sub.subscription for d in deltas)
        finally:
            sub.close()
