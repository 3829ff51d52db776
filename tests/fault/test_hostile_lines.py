"""Lines an adversary would send, each of which once stopped the whole daemon or made it hold
far more than it should (issue 12). Each test sends the line over the real socket, checks
the answer, and then checks that the daemon still serves: on the same connection where the
protocol allows it, and always on a fresh one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sidecar_client import Client

from tests.daemon.conftest import ROOT, Raw, child_env

HEALTH = b'{"jsonrpc":"2.0","id":"h","method":"sys.health"}\n'


def call(raw: Raw, line: bytes) -> dict:
    raw.send(line if line.endswith(b"\n") else line + b"\n")
    reply = raw.recv()
    assert isinstance(reply, dict), reply
    return reply


def still_serving(path: str, raw: Raw | None = None) -> None:
    """The daemon answers on a fresh connection (and on ``raw``, when given)."""
    if raw is not None:
        assert call(raw, HEALTH)["result"]["status"] in ("ok", "degraded")
    with Client(path) as c:
        assert c.call("sys.health")["status"] in ("ok", "degraded")


def append(cid: str, data: bytes, rid: bytes = b"1") -> bytes:
    return (
        b'{"jsonrpc":"2.0","id":'
        + rid
        + b',"method":"log.append","params":{"conversation_id":"'
        + cid.encode()
        + b'","type":"agent.note","data":'
        + data
        + b"}}\n"
    )


def test_a_line_of_brackets_is_refused_not_fatal(daemon) -> None:
    raw = Raw(daemon.socket_path)
    reply = call(raw, b"[" * 1000)
    assert reply["id"] is None and reply["error"]["code"] in (-32700, -32600)
    reply = call(raw, b"[" * 5000 + b"]" * 5000)
    assert reply["error"]["code"] == -32600 and "max_depth" in reply["error"]["message"]
    still_serving(daemon.socket_path, raw)


def test_params_nested_past_max_depth_are_refused(daemon) -> None:
    raw = Raw(daemon.socket_path)
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    assert call(raw, append("c1", deep))["error"]["code"] == -32600
    # The limit is exact: params may nest max_depth (64) levels, counted from params itself.
    fits, past = b"[" * 62 + b"]" * 62, b"[" * 63 + b"]" * 63  # inside {"data": ...} in params
    ok = call(raw, append("c1", b'{"x":' + fits + b"}"))
    assert ok["result"]["seq"] == 1, ok
    assert call(raw, append("c1", b'{"x":' + past + b"}"))["error"]["code"] == -32600
    # The same in a batch, whose array is one level more.
    batch = b"[" + append("c1", b'{"x":' + fits + b"}")[:-1] + b"]\n"
    assert call_batch(raw, batch)[0]["result"]["seq"] == 2
    # Brackets inside strings are text, not nesting.
    text = json.dumps({"t": "[" * 5000}).encode()
    assert call(raw, append("c1", text))["result"]["seq"] == 3
    still_serving(daemon.socket_path, raw)
    with Client(daemon.socket_path) as c:
        assert c.call("log.tail", {"conversation_id": "c1"})["events"][-1]["data"]["t"] == "[" * 5000


def call_batch(raw: Raw, line: bytes) -> list:
    raw.send(line)
    reply = raw.recv()
    assert isinstance(reply, list), reply
    return reply


def test_invalid_utf8_inside_params_is_invalid_params(daemon) -> None:
    raw = Raw(daemon.socket_path)
    reply = call(raw, append("c1", b'{"t":"\xff"}', b"7"))
    assert reply["id"] == 7 and reply["error"]["code"] == -32602
    assert "UTF-8" in reply["error"]["message"]
    task = b'{"jsonrpc":"2.0","id":8,"method":"tasks.create","params":{"type":"\xff\xfe"}}'
    assert call(raw, task)["error"]["code"] == -32602
    # Outside params (in the method name, or a key) it is a bad request, still answered.
    assert call(raw, b'{"jsonrpc":"2.0","id":9,"method":"sys.\xff"}')["error"]["code"] in (-32600, -32601)
    assert call(raw, b'{"jsonrpc":"2.0","id":9,"\xff":1,"method":"sys.health"}')["error"]["code"] in (-32700, -32600)
    still_serving(daemon.socket_path, raw)
    with Client(daemon.socket_path) as c:
        assert c.call("log.tail", {"conversation_id": "c1"})["events"] == []  # nothing half-written


def test_lone_surrogates_are_taken_in_as_replacement_characters(daemon) -> None:
    raw = Raw(daemon.socket_path)
    # What JavaScript's slice can make of an emoji: a high surrogate with no partner.
    reply = call(raw, append("c1", b'{"t":"cut \\ud83d", "low":"\\udc00", "pair":"\\ud83d\\ude00", "esc":"\\\\ud83d"}'))
    assert reply["result"]["seq"] == 1, reply
    with Client(daemon.socket_path) as c:
        data = c.call("log.get", {"event_id": reply["result"]["id"]})["data"]
    assert data == {"t": "cut \ufffd", "low": "\ufffd", "pair": "\U0001f600", "esc": "\\ud83d"}
    # ... and in an id, which is echoed back as the (mended) string.
    assert call(raw, b'{"jsonrpc":"2.0","id":"a\\ud800","method":"sys.health"}')["id"] == "a\ufffd"


def test_any_json_number_as_id_is_echoed_exactly(daemon) -> None:
    raw = Raw(daemon.socket_path)
    for rid in [b"123456789012345678901234567890", b"1e400", b"1.0", b"-0", b"1.5E-7", b'"x"', b"null"]:
        raw.send(b'{"jsonrpc":"2.0","id":' + rid + b',"method":"sys.health"}\n')
        line = raw.file.readline()
        assert line.startswith(b'{"jsonrpc":"2.0","id":' + rid + b","), line
    still_serving(daemon.socket_path, raw)


def test_batches_are_capped_in_members_and_in_reply_bytes(start_daemon) -> None:
    d = start_daemon("[server]\nmax_batch = 50\nmax_reply_bytes = 65536\n")
    raw = Raw(d.socket_path)
    with Client(d.socket_path) as c:
        c.call(
            "log.append_many", {"events": [{"conversation_id": "big", "type": "a.b", "data": {"t": "x" * 2000}}] * 20}
        )
    query = '{"jsonrpc":"2.0","id":%d,"method":"log.query","params":{"conversation_id":"big"}}'
    too_many = ("[" + ",".join(query % i for i in range(51)) + "]\n").encode()
    reply = call(raw, too_many)
    assert reply["error"]["code"] == -32600 and "max_batch" in reply["error"]["message"]
    # Each answer is ~41 KB: one fits in 64 KiB, the rest are refused, each by its own id.
    raw.send(("[" + ",".join(query % i for i in range(50)) + "]\n").encode())
    line = raw.file.readline()
    assert len(line) <= 65536
    replies = json.loads(line)
    assert sorted(r["id"] for r in replies) == list(range(50))
    answered = [r for r in replies if "result" in r]
    refused = [r for r in replies if "error" in r]
    assert len(answered) == 1 and len(answered[0]["result"]["events"]) == 20
    assert {r["error"]["code"] for r in refused} == {-32005}
    assert "max_reply_bytes" in refused[0]["error"]["message"]
    # A read larger than a reply ends its page early, with a cursor: nothing is built whole
    # only to be refused, and paging gets everything.
    big = [{"conversation_id": "big", "type": "a.b", "data": {"t": "x" * 2000}}] * 20
    with Client(d.socket_path) as c:
        c.call("log.append_many", {"events": big})
    page = call(raw, (query % 99).encode())["result"]
    assert 20 <= len(page["events"]) < 40 and page["next_cursor"]
    more = {"jsonrpc": "2.0", "id": 100, "method": "log.query", "params": {"conversation_id": "big"}}
    more["params"]["cursor"] = page["next_cursor"]
    rest = call(raw, json.dumps(more).encode())["result"]["events"]
    assert [e["seq"] for e in page["events"] + rest] == list(range(1, 41))
    tail = call(raw, b'{"jsonrpc":"2.0","id":101,"method":"log.tail","params":{"conversation_id":"big","limit":40}}')
    newest = [e["seq"] for e in tail["result"]["events"]]
    assert 20 <= len(newest) < 40 and newest == list(range(41 - len(newest), 41))
    # Any other answer too large for a line is refused by its id, and the client goes on.
    summary = (
        b'{"jsonrpc":"2.0","id":99,"method":"summary.rolling","params":{"conversation_id":"big","keep_recent":100}}'
    )
    reply = call(raw, summary)  # 40 events of 2 KB in full
    assert reply["id"] == 99 and reply["error"]["code"] == -32005
    still_serving(d.socket_path, raw)


def test_subscriptions_per_connection_are_capped(start_daemon) -> None:
    d = start_daemon("[server]\nmax_subscriptions = 20\n")
    with Client(d.socket_path) as c:
        subs = [c.call("log.subscribe", {"conversation_id": f"c{i}"}) for i in range(20)]
        assert len({s["subscription"] for s in subs}) == 20
        try:
            c.call("log.subscribe", {"conversation_id": "one-too-many"})
        except Exception as exc:  # RpcError
            assert exc.code == -32005 and exc.data == {"max_subscriptions": 20}  # type: ignore[attr-defined]
        else:
            raise AssertionError("the 21st subscription was accepted")
        c.call("log.unsubscribe", subs[0])
        assert c.call("log.subscribe", {"conversation_id": "room-again"})["subscription"] > 0
        assert c.call("sys.stats")["subscriptions"] == 20


def test_a_half_sent_line_times_out_and_nobody_waits_for_it(start_daemon) -> None:
    d = start_daemon("[server]\nline_timeout_s = 0.5\n")
    slow = Raw(d.socket_path)
    slow.send(b'{"jsonrpc":"2.0","id":1,"method":"sys.he')
    with Client(d.socket_path) as c:  # served meanwhile
        assert c.call("sys.health")["status"] == "ok"
    reply = slow.recv()  # the daemon gives up on the line, says why, and hangs up
    assert reply["error"]["code"] == -32600 and "not finished" in reply["error"]["message"]
    assert slow.closed()
    # A connection that sends whole lines and then waits is not timed out by this.
    patient = Raw(d.socket_path)
    assert call(patient, HEALTH)["result"]["status"] == "ok"
    with Client(d.socket_path) as c:
        sub = c.call("log.subscribe", {"conversation_id": "idle"})
        assert sub["subscription"] > 0
    assert call(patient, HEALTH)["result"]["status"] == "ok"


def test_a_half_sent_line_is_held_to_the_line_timeout_not_the_idle_one(start_daemon) -> None:
    d = start_daemon("[server]\nline_timeout_s = 0.5\nidle_timeout_s = 3600\n")
    slow = Raw(d.socket_path)
    assert call(slow, HEALTH)["result"]["status"] == "ok"  # now idle: an hour's timer runs
    slow.send(b'{"jsonrpc":"2.0","id":2,"method":"sys.he')
    reply = slow.recv()  # within the socket's 20 s read timeout, not the idle hour
    assert reply["error"]["code"] == -32600 and "not finished" in reply["error"]["message"]
    assert slow.closed()


def test_idle_connections_time_out_only_when_asked_to(start_daemon) -> None:
    d = start_daemon("[server]\nidle_timeout_s = 0.3\n")
    idle = Raw(d.socket_path)
    assert call(idle, HEALTH)["result"]["status"] == "ok"
    reply = idle.recv()
    assert reply["error"]["code"] == -32600 and "idle" in reply["error"]["message"]
    assert idle.closed()
    with Client(d.socket_path) as c:  # a subscriber is never idle
        c.call("log.subscribe", {"conversation_id": "quiet"})
        with Client(d.socket_path) as writer:
            writer.call("log.append", {"conversation_id": "elsewhere", "type": "a.b"})
        assert c.call("sys.health")["status"] == "ok"


def test_a_bad_log_level_is_a_one_line_error(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nlog_level = "verbose"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "serve",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path / "d"),
            "--socket",
            str(tmp_path / "r" / "s.sock"),
        ],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "log_level" in proc.stderr and "'info'" in proc.stderr


def test_tail_never_passes_terminal_controls_through(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call(
            "log.append",
            {
                "conversation_id": "esc",
                "type": "agent.note",
                "agent_id": "evil\x1b[2J\x1b]52;c;aGVsbG8=\x07",
                "data": {"t": "\x1b[31mred\u009b31m\u202eevil"},
            },
        )
    env = child_env({"SIDECAR_SOCKET": daemon.socket_path})
    for extra in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "sidecar", "tail", "esc", *extra], env=env, capture_output=True, timeout=30
        ).stdout.decode()
        assert "evil" in out and "red" in out
        assert not any(ch in out for ch in "\x1b\x07\u009b\u202e"), repr(out)
    assert json.loads(out)["agent_id"] == "evil\x1b[2J\x1b]52;c;aGVsbG8=\x07"  # --json: escaped, still exact


def test_stats_count_what_was_contained(daemon) -> None:
    with Client(daemon.socket_path) as c:
        stats = c.call("sys.stats")
    assert stats["internal_errors"] == 0 and stats["faults"] == {}
    assert os.path.exists(daemon.socket_path)


def _line(seq: int, depth: int) -> str:
    data = "1"
    for _ in range(depth):
        data = '{"k":' + data + "}"
    return (
        f'{{"id":"0195a3c2-0000-7000-8000-00000000000{seq}","seq":{seq},'
        f'"timestamp":"2026-11-23T10:00:00.12345{seq}Z","conversation_id":"c1","type":"agent.error",'
        f'"visibility":"internal","level":"action","caused_by":[],"data":{data}}}\n'
    )


def test_an_event_on_disk_nested_too_deep_is_skipped_not_fatal(start_daemon, tmp_path) -> None:
    """Once, an agent.error nested ~975 deep made log.tail answer -32603 forever after a
    restart. The wire now refuses such data; one left on disk by an outside edit (or an
    older version) is skipped with a warning, and everything around it is served."""
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "c1.jsonl").write_text(_line(1, 3) + _line(2, 975) + _line(3, 4))
    d = start_daemon(data_dir=data)
    with Client(d.socket_path) as c:
        assert [e["seq"] for e in c.call("log.tail", {"conversation_id": "c1"})["events"]] == [1, 3]
        assert c.call("log.get", {"event_id": "0195a3c2-0000-7000-8000-000000000003"})["seq"] == 3
        assert "agent.error" in c.call("summary.rolling", {"conversation_id": "c1"})["markdown"]
        assert c.call("context.build", {"conversation_id": "c1", "budget_tokens": 500})["total_tokens"] > 0
        assert c.call("log.append", {"conversation_id": "c1", "type": "a.b"})["seq"] == 4
        assert c.call("sys.stats")["internal_errors"] == 0
    assert "log.bad_line_skipped" in d.stderr() and "Traceback" not in d.stderr()


def test_the_library_refuses_data_it_could_not_read_back(tmp_path) -> None:
    from sidecar.errors import InvalidParams
    from sidecar.log import EventStore

    deep: object = 1
    for _ in range(300):
        deep = {"k": deep}
    with EventStore(tmp_path / "d") as store:
        try:
            store.append({"conversation_id": "c1", "type": "a.b", "data": deep})
        except InvalidParams as exc:
            assert exc.data == {"field": "data"}
        else:
            raise AssertionError("an event nested 300 deep was written")
        assert store.append({"conversation_id": "c1", "type": "a.b", "data": {"k": [1]}}).seq == 1


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_a_batch_of_greedy_queries_holds_bounded_memory(daemon) -> None:
    """Issue 12: 400 log.query in one 43 KB batch made a 484 MB reply and 2.2 GB RSS. Now the
    line is capped, members run 8 at a time, and each answer is refused as it arrives."""
    with Client(daemon.socket_path) as c:
        for _ in range(10):
            c.call(
                "log.append_many",
                {"events": [{"conversation_id": "g", "type": "a.b", "data": {"t": "x" * 1000}}] * 100},
            )
    before = _peak_rss_mb(daemon.proc.pid)
    member = '{"jsonrpc":"2.0","id":%d,"method":"log.query","params":{"conversation_id":"g","limit":1000}}'
    raw = Raw(daemon.socket_path)
    raw.send(("[" + ",".join(member % i for i in range(400)) + "]\n").encode())
    line = raw.file.readline()
    assert len(line) <= 16 * 1024 * 1024
    replies = json.loads(line)
    assert len(replies) == 400 and sum("result" in r for r in replies) >= 10  # ~1.1 MB each: 14 fit
    assert {r["error"]["code"] for r in replies if "error" in r} == {-32005}
    grown = _peak_rss_mb(daemon.proc.pid) - before
    assert grown < 300, f"peak RSS grew {grown:.0f} MB for one batch"  # was over 2 GB
    still_serving(daemon.socket_path, raw)
