"""The clients' sans-IO codec (``sidecar_client.codec``) on its own: bytes in, events out, no socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sidecar_client import ConnectionLost, RpcError
from sidecar_client.codec import Codec, Notification, Reply
from sidecar_client.errors import ProtocolError


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def result(req_id: Any, value: Any) -> bytes:
    return line({"jsonrpc": "2.0", "id": req_id, "result": value})


def event(sub: int, seq: int) -> bytes:
    return line({"jsonrpc": "2.0", "method": "log.event", "params": {"subscription": sub, "event": {"seq": seq}}})


def subscribed(codec: Codec, sub: int) -> None:
    req_id, _ = codec.subscribe_request({"conversation_id": "c"})
    assert codec.feed(result(req_id, {"subscription": sub})) == [
        Reply(req_id, {"subscription": sub}, method="log.subscribe", opened_subscription=True)
    ]


def test_requests_get_fresh_ids_and_are_encoded_as_lines() -> None:
    codec = Codec()
    first, data = codec.request("sys.stats")
    second, data2 = codec.request("log.get", {"event_id": "e"})
    assert first != second
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {"jsonrpc": "2.0", "id": first, "method": "sys.stats", "params": {}}
    assert json.loads(data2)["params"] == {"event_id": "e"}
    assert codec.pending == {first, second}
    note = json.loads(codec.notification("log.unsubscribe", {"subscription": 3}))
    assert note == {"jsonrpc": "2.0", "method": "log.unsubscribe", "params": {"subscription": 3}}


def test_a_line_split_across_feeds_is_one_reply() -> None:
    codec = Codec()
    req_id, _ = codec.request("sys.stats")
    data = result(req_id, {"ok": True})
    assert codec.feed(data[:5]) == []
    assert codec.feed(data[5:-1]) == []
    assert codec.feed(data[-1:]) == [Reply(req_id, {"ok": True}, method="sys.stats")]
    assert codec.pending == set()


def test_several_lines_in_one_feed_come_out_in_order() -> None:
    codec = Codec()
    a, _ = codec.request("one")
    b, _ = codec.request("two")
    note = line({"jsonrpc": "2.0", "method": "narrator.delta", "params": {"text": "hi"}})
    events = codec.feed(result(b, 2) + b"\n  \n" + note + result(a, 1)[:-1])  # blank lines are skipped
    assert events == [Reply(b, 2, method="two"), Notification("narrator.delta", {"text": "hi"})]
    assert codec.feed(b"\n") == [Reply(a, 1, method="one")]


def test_a_reply_for_an_unknown_or_abandoned_id_is_dropped() -> None:
    codec = Codec()
    req_id, _ = codec.request("slow")
    codec.abandon(req_id)  # the caller timed out, or was cancelled
    assert codec.feed(result(req_id, 1) + result(999, 2) + result("x", 3)) == []
    assert codec.pending == set()


def test_an_error_reply_carries_an_rpc_error() -> None:
    codec = Codec()
    req_id, _ = codec.request("log.get")
    error = {"code": -32002, "message": "no such event", "data": {"event_id": "e"}}
    [reply] = codec.feed(line({"jsonrpc": "2.0", "id": req_id, "error": error}))
    assert isinstance(reply, Reply) and isinstance(reply.error, RpcError)
    with pytest.raises(RpcError) as caught:
        reply.unwrap()
    assert (caught.value.code, caught.value.message, caught.value.data) == (-32002, "no such event", {"event_id": "e"})


def test_a_reply_with_a_null_id_is_passed_on() -> None:
    """The daemon refusing the connection answers no request in particular."""
    codec = Codec()
    codec.request("sys.stats")
    refusal = {"code": -32005, "message": "too many connections; try again later"}
    [reply] = codec.feed(line({"jsonrpc": "2.0", "id": None, "error": refusal}))
    assert isinstance(reply, Reply) and reply.id is None
    with pytest.raises(RpcError, match="too many connections") as caught:
        reply.unwrap()
    assert caught.value.code == -32005


def test_a_notification_goes_to_its_subscription_and_shutdown_to_all() -> None:
    codec = Codec()
    subscribed(codec, 1)
    subscribed(codec, 2)
    events = codec.feed(event(1, 10) + event(2, 20) + event(3, 30))  # 3: nobody's
    assert [e.event for e in events if isinstance(e, Notification)] == [{"seq": 10}, {"seq": 20}, {"seq": 30}]
    assert (codec.queued(1), codec.queued(2), codec.queued(3)) == (1, 1, 0)
    codec.feed(line({"jsonrpc": "2.0", "method": "sys.shutdown", "params": {}}))
    first = codec.next_notification(1)
    assert first is not None and first.subscription == 1 and first.event == {"seq": 10}
    shutdown = codec.next_notification(1)
    assert shutdown is not None and shutdown.event is None and shutdown.ends_subscription()
    assert codec.next_notification(1) is None
    assert codec.queued(2) == 2
    codec.close_subscription(2)
    assert codec.queued(2) == 0
    with pytest.raises(KeyError):
        codec.next_notification(2)


def test_a_subscription_opens_only_with_a_successful_subscribe_answer() -> None:
    codec = Codec()
    plain, _ = codec.request("log.subscribe")  # a bare call: nobody will read its events
    failed, _ = codec.subscribe_request()
    [reply] = codec.feed(result(plain, {"subscription": 1}))
    assert not reply.opened_subscription
    codec.feed(line({"jsonrpc": "2.0", "id": failed, "error": {"code": -32602, "message": "bad filter"}}))
    codec.feed(event(1, 1))
    assert codec.queued(1) == 0
    with pytest.raises(KeyError):
        codec.next_notification(1)


def test_a_subscription_that_is_not_an_id_neither_routes_nor_raises_anything_else() -> None:
    """Found by ./dev fuzz: a peer's notification naming a dict as its subscription raised
    TypeError (unhashable); a subscribe answer like it does not open a queue either."""
    codec = Codec()
    subscribed(codec, 1)
    note = {"jsonrpc": "2.0", "method": "log.event", "params": {"subscription": {"q": 1}, "event": {}}}
    [got] = codec.feed(line(note))
    assert isinstance(got, Notification) and codec.queued(1) == 0
    asked, _ = codec.subscribe_request()
    with pytest.raises(ProtocolError, match="without a subscription id"):
        codec.feed(result(asked, {"subscription": [1]}))


def test_overflow_raises_and_other_notifications_do_not_end_a_subscription() -> None:
    delta = Notification("narrator.delta", {"subscription": 1, "text": "x"})
    assert delta.event is None and not delta.ends_subscription()
    overflow = Notification("log.overflow", {"subscription": 1, "dropped": 5})
    with pytest.raises(RpcError) as caught:
        overflow.ends_subscription()
    assert caught.value.code == -32005 and caught.value.data == {"subscription": 1, "dropped": 5}


def test_an_oversized_line_breaks_the_codec() -> None:
    codec = Codec(max_line_bytes=64)
    req_id, _ = codec.request("sys.stats")
    assert codec.feed(result(req_id, "x" * 10)) == [Reply(req_id, "x" * 10, method="sys.stats")]
    with pytest.raises(ProtocolError, match="over 64 bytes"):
        codec.feed(b"y" * 65)  # no newline yet: too long already
    with pytest.raises(ProtocolError):  # and it stays broken
        codec.feed(b"\n")
    complete = Codec(max_line_bytes=64)
    with pytest.raises(ProtocolError):
        complete.feed(result(1, "z" * 100))


@pytest.mark.parametrize("garbage", [b"not json\n", b"[1, 2]\n", b"\xff\xfe\n"])
def test_a_line_that_is_not_a_json_object_is_a_protocol_error(garbage: bytes) -> None:
    codec = Codec()
    with pytest.raises(ProtocolError) as caught:
        codec.feed(garbage)
    assert isinstance(caught.value, ConnectionLost)  # the clients' callers see a lost connection


def test_a_long_line_in_many_pieces_and_lines_sharing_a_piece() -> None:
    """Feeds resume their search for the newline where the last one stopped: a long line
    that comes a byte at a time, then two lines in one piece, each still whole and in order."""
    codec = Codec(max_line_bytes=10_000)
    first, _ = codec.request("a")
    second, _ = codec.request("b")
    third, _ = codec.request("c")
    long = result(first, "x" * 5000)
    got: list[Any] = []
    for i in range(len(long) - 1):
        got += codec.feed(long[i : i + 1])
    assert got == []
    tail = long[-1:] + result(second, 2) + result(third, 3)[:7]
    assert [r.result for r in codec.feed(tail)] == ["x" * 5000, 2]
    assert [r.result for r in codec.feed(result(third, 3)[7:])] == [3]
    with pytest.raises(ProtocolError):
        Codec(max_line_bytes=10).feed(b"x" * 6 + b"y" * 5)  # over the bound before any newline
