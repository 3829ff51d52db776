"""The ``sidecar`` command as a user runs it: a real subprocess against a real daemon.

Every subprocess has a bounded timeout; the follower's output is read by a thread into a
queue, so a missing line fails the test after a bounded wait instead of hanging it.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from sidecar_client import Client

from tests.daemon.conftest import child_env

TIMEOUT = 30.0
LINE_TIMEOUT = 15.0


def sidecar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def append(socket_path: str, conversation: str, count: int, type_: str = "agent.progress") -> list[dict]:
    with Client(socket_path) as c:
        return [
            c.call("log.append", {"conversation_id": conversation, "type": type_, "data": {"i": i}})
            for i in range(count)
        ]


class LineReader:
    """Lines of a child's stdout, through a queue: ``next()`` waits a bounded time."""

    def __init__(self, stream) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put(line)
        self._lines.put(None)  # end of stream

    def next(self, timeout: float = LINE_TIMEOUT) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the follower within {timeout} s") from None
        assert line is not None, "the follower's stdout ended"
        return line

    def rest(self, timeout: float = LINE_TIMEOUT) -> list[str]:
        """Every line still to come, once the stream has ended (the child exited)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream never ended"
        lines = []
        while (line := self._lines.get_nowait()) is not None:
            lines.append(line)
        return lines


def follower(socket_path: str, *args: str, as_json: bool = True) -> subprocess.Popen:
    """``sidecar tail c1 -f`` (``--json`` unless told otherwise) with ``args``, as a child."""
    json_flag = ["--json"] if as_json else []
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "tail", "c1", "-f", *json_flag, "--socket", socket_path, *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> None:
    """Stop a follower if it still runs, and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()


def seq_of(line: str, as_json: bool) -> int:
    return json.loads(line)["seq"] if as_json else int(line.split()[0])


# --- call ------------------------------------------------------------------------------------


def test_call_prints_the_json_result(daemon) -> None:
    params = {"conversation_id": "c1", "type": "agent.progress", "data": {"pct": 40}}
    run = sidecar("call", "log.append", json.dumps(params), "--socket", daemon.socket_path)
    assert run.returncode == 0, run.stderr
    ack = json.loads(run.stdout)
    assert ack["seq"] == 1 and uuid.UUID(ack["id"])

    run = sidecar("call", "log.tail", '{"conversation_id": "c1", "limit": 5}', "--socket", daemon.socket_path)
    assert run.returncode == 0, run.stderr
    events = json.loads(run.stdout)["events"]
    assert [(e["id"], e["seq"], e["data"]) for e in events] == [(ack["id"], 1, {"pct": 40})]


def test_call_without_params_and_through_the_environment(daemon) -> None:
    run = sidecar("call", "sys.health", env=child_env({"SIDECAR_SOCKET": daemon.socket_path}))
    assert run.returncode == 0, run.stderr
    health = json.loads(run.stdout)
    assert health["status"] == "ok" and health["pid"] == daemon.proc.pid


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("log.get", {"event_id": str(uuid.uuid4())}, -32002),
        ("log.append", {"conversation_id": "c1", "type": "chat.said", "visibility": "user"}, -32003),
        ("log.append", {"conversation_id": "c1", "type": "a.b", "expected_seq": 7}, -32001),
        ("log.tail", {"conversation_id": "../etc"}, -32602),
        ("no.such_method", {}, -32601),
    ],
)
def test_call_rpc_error_exits_1_with_the_error_on_stderr(daemon, method: str, params: dict, code: int) -> None:
    run = sidecar("call", method, json.dumps(params), "--socket", daemon.socket_path)
    assert run.returncode == 1
    assert run.stdout == ""
    error = json.loads(run.stderr)
    assert error["code"] == code and error["message"]
    if code == -32001:
        assert error["data"]["last_seq"] == 0 and error["data"]["expected_seq"] == 7
    if code == -32002:
        assert error["data"]["event_id"] == params["event_id"]


@pytest.mark.parametrize(
    ("params", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('"text"', "must be a JSON object")],
)
def test_call_with_malformed_params_exits_2(daemon, params: str, message: str) -> None:
    run = sidecar("call", "log.tail", params, "--socket", daemon.socket_path)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""
    with Client(daemon.socket_path) as c:  # nothing reached the log
        assert c.call("log.conversations")["conversations"] == []


# --- health ----------------------------------------------------------------------------------


def test_health_exits_0_against_a_live_daemon(daemon) -> None:
    run = sidecar("health", "--socket", daemon.socket_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "ok"


def test_health_exits_1_naming_the_socket_when_no_daemon_runs(tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody-home.sock")
    run = sidecar("health", "--socket", missing)
    assert run.returncode == 1
    assert missing in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_health_after_the_daemon_stopped(daemon) -> None:
    assert sidecar("health", "--socket", daemon.socket_path).returncode == 0
    assert daemon.stop() == 0
    run = sidecar("health", "--socket", daemon.socket_path)
    assert run.returncode == 1
    assert daemon.socket_path in run.stderr


# --- tail ------------------------------------------------------------------------------------


def test_tail_prints_the_last_n_readable_lines_without_colour(daemon) -> None:
    acks = append(daemon.socket_path, "c1", 5)
    run = sidecar("tail", "c1", "-n", "3", "--socket", daemon.socket_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3
    assert "\x1b" not in run.stdout  # stdout is a pipe: no ANSI colour codes
    assert [int(line.split()[0]) for line in lines] == [3, 4, 5]
    for line, i in zip(lines, (2, 3, 4)):
        assert "agent.progress" in line and f'{{"i":{i}}}' in line
        assert acks[i]["timestamp"][11:23] in line  # the time of day, to the millisecond


def test_tail_json_prints_one_object_per_line(daemon) -> None:
    acks = append(daemon.socket_path, "c1", 5)
    append(daemon.socket_path, "other", 2)  # another conversation's events stay out
    run = sidecar("tail", "c1", "-n", "3", "--json", "--socket", daemon.socket_path)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert [e["seq"] for e in events] == [3, 4, 5]
    assert [e["id"] for e in events] == [a["id"] for a in acks[2:]]
    assert {e["conversation_id"] for e in events} == {"c1"}


def test_tail_of_an_unknown_conversation_says_so_and_names_the_known_ones(daemon) -> None:
    run = sidecar("tail", "nope", "--socket", daemon.socket_path)
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == "sidecar: no conversation 'nope' (there are none yet)\n"

    for cid in ("beta", "alpha"):
        append(daemon.socket_path, cid, 1)
    run = sidecar("tail", "nope", "-n", "0", "--socket", daemon.socket_path)
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == "sidecar: no conversation 'nope' (known: alpha, beta)\n"

    for i in range(10):
        append(daemon.socket_path, f"c{i:02d}", 1)
    run = sidecar("tail", "nope", "--socket", daemon.socket_path)
    assert run.returncode == 1
    first_ten = "alpha, beta, c00, c01, c02, c03, c04, c05, c06, c07"
    assert run.stderr == f"sidecar: no conversation 'nope' (known: {first_ten}, ... (12 in all))\n"


def test_tail_of_a_known_conversation_with_n_0_prints_nothing_and_succeeds(daemon) -> None:
    append(daemon.socket_path, "c1", 2)
    run = sidecar("tail", "c1", "-n", "0", "--socket", daemon.socket_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_tail_follow_of_a_new_conversation_says_once_that_it_waits(daemon) -> None:
    proc = follower(daemon.socket_path)
    try:
        errors = LineReader(proc.stderr)
        assert errors.next() == "sidecar: no conversation 'c1' yet; waiting for its first event\n"
        out = LineReader(proc.stdout)
        wait_for_subscriber(daemon.socket_path)
        append(daemon.socket_path, "c1", 2)
        assert [seq_of(out.next(), True) for _ in range(2)] == [1, 2]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert errors.rest() == []  # said once, and nothing else
    finally:
        finish(proc)


def test_tail_shows_a_task_events_id_status_and_owner_before_the_cut(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call(
            "tasks.create",
            {
                "id": "fix-login",
                "type": "code",
                "owner": "coder\x1b[2J",
                "conversation_id": "c1",
                "inputs": {"notes": "x" * 500},
            },
        )
        c.call("tasks.update", {"id": "fix-login", "status": "running"})
    run = sidecar("tail", "c1", "--socket", daemon.socket_path)
    assert run.returncode == 0, run.stderr
    created, updated = run.stdout.splitlines()
    owner = "coder\\u001b[2J"  # terminal controls stay escaped
    assert f"task.created task=fix-login status=pending owner={owner} {{" in created  # the sidecar wrote it
    assert f"task.updated task=fix-login status=running owner={owner} {{" in updated
    assert '"changed":["status","updated_at","version"]' in updated  # what changed, before the task itself
    assert created.endswith("...") and "\x1b" not in run.stdout


def test_format_event_of_a_task_event_without_the_whole_task() -> None:
    from sidecar.cli import format_event

    event = {
        "seq": 7,
        "timestamp": "2026-11-23T10:00:00.123456Z",
        "visibility": "status",
        "level": "state",
        "type": "task.progress",
        "task_id": "t9",
        "data": {"status": "blocked", "why": "y" * 300},
    }
    line = format_event(event, colour=False)
    assert line.startswith('     7 10:00:00.123 status   · task.progress task=t9 status=blocked {"why":"yyy')
    assert line.endswith("...") and len(line) < 200


def on_a_terminal(*args: str) -> str:
    """``sidecar ARGS`` with stdout on a pseudo-terminal (colour allowed); what it printed there."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *args],
            env={k: v for k, v in child_env().items() if k != "NO_COLOR"},
            stdout=terminal,
            stderr=subprocess.PIPE,
        )
        os.close(terminal)
        terminal = -1
        assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read()
        proc.stderr.close()
        out = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    return out.decode()


def test_tail_colours_a_terminal(daemon) -> None:
    append(daemon.socket_path, "c1", 2)
    text = on_a_terminal("tail", "c1", "--socket", daemon.socket_path)
    assert text.count("\x1b[") >= 2 and "agent.progress" in text


def test_search_prints_hits_best_first_and_says_what_is_wrong_with_a_query(daemon) -> None:
    with Client(daemon.socket_path) as c:
        for text in ("the deploy failed: connection refused", "deploy again", "lunch at noon"):
            c.call("log.append", {"conversation_id": "s1", "type": "note.added", "data": {"text": text}})
    deadline = time.monotonic() + TIMEOUT  # the index takes each event within a second
    while (run := sidecar("search", "deploy", "--socket", daemon.socket_path)).stdout.count("s1#") < 2:
        assert time.monotonic() < deadline, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("s1#") and "note.added" in lines[0] and "\x1b" not in run.stdout
    assert "**deploy**" in lines[1]
    run = sidecar("search", '"connection refused"', "--json", "-c", "s1", "--socket", daemon.socket_path)
    (hit,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0 and hit["event"]["seq"] == 1 and "**connection refused**" in hit["snippet"]
    bad = sidecar("search", '"unclosed', "--socket", daemon.socket_path)
    assert bad.returncode == 2 and "unclosed quote" in bad.stderr
    none = sidecar("search", "zeppelin", "--socket", daemon.socket_path)
    assert none.returncode == 1 and "no event matches" in none.stderr
    coloured = on_a_terminal("search", "lunch", "--socket", daemon.socket_path)
    assert "\x1b[1;33mlunch\x1b[0m" in coloured and "**" not in coloured


@pytest.mark.parametrize("as_json", [False, True], ids=["readable", "json"])
def test_tail_follow_shows_new_events_once_and_in_order(daemon, as_json: bool) -> None:
    append(daemon.socket_path, "c1", 5)
    proc = follower(daemon.socket_path, "-n", "3", as_json=as_json)
    try:
        reader = LineReader(proc.stdout)
        assert [seq_of(reader.next(), as_json) for _ in range(3)] == [3, 4, 5]
        acks = append(daemon.socket_path, "c1", 10, type_="agent.followed")
        append(daemon.socket_path, "elsewhere", 3)  # not this conversation: not shown
        lines = [reader.next() for _ in range(10)]
        assert [seq_of(line, as_json) for line in lines] == list(range(6, 16))
        assert all("agent.followed" in line for line in lines)
        if as_json:
            assert [json.loads(line)["id"] for line in lines] == [a["id"] for a in acks]
        # Nothing was shown twice: the next line is the next event.
        append(daemon.socket_path, "c1", 1, type_="agent.last")
        last = reader.next()
        assert seq_of(last, as_json) == 16 and "agent.last" in last
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends it quietly
        assert proc.wait(timeout=TIMEOUT) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        finish(proc)


def test_tail_follow_ends_when_the_daemon_stops(daemon) -> None:
    append(daemon.socket_path, "c1", 1)
    proc = follower(daemon.socket_path)
    try:
        reader = LineReader(proc.stdout)
        assert seq_of(reader.next(), True) == 1
        append(daemon.socket_path, "c1", 1)
        assert seq_of(reader.next(), True) == 2  # it is subscribed now
        assert daemon.stop() == 0
        assert proc.wait(timeout=TIMEOUT) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        finish(proc)


# --- help ------------------------------------------------------------------------------------


def check_help(out: str) -> None:
    assert "examples:" in out and "environment:" in out
    for command in ("serve", "call", "health", "tail"):
        assert f"sidecar {command}" in out  # each command is listed, with an example
    assert "SIDECAR_SOCKET" in out


def test_python_m_sidecar_help() -> None:
    run = sidecar("--help")
    assert run.returncode == 0, run.stderr
    check_help(run.stdout)
    assert run.stdout.startswith("usage: sidecar ")


def test_sidecar_script_help() -> None:
    script = shutil.which("sidecar", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the sidecar console script is not installed beside this interpreter")
    run = subprocess.run([script, "--help"], env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    check_help(run.stdout)


def test_subcommand_help_and_usage_errors() -> None:
    run = sidecar("tail", "--help")
    assert run.returncode == 0 and "--follow" in run.stdout and "--json" in run.stdout
    run = sidecar()
    assert run.returncode == 2 and "COMMAND" in run.stderr  # a command is required
    run = sidecar("bogus")
    assert run.returncode == 2 and "invalid choice" in run.stderr


# --- the follower's edge cases ---


def wait_for_subscriber(socket_path: str) -> None:
    """Until the follower's subscription is live (polled with real requests, bounded)."""
    with Client(socket_path) as c:
        deadline = time.monotonic() + 15
        while c.call("sys.stats")["subscriptions"] < 1:
            assert time.monotonic() < deadline, "the follower never subscribed"


def test_tail_n_0_follow_shows_only_new_events(daemon) -> None:
    append(daemon.socket_path, "c1", 3)
    proc = follower(daemon.socket_path, "-n", "0")
    try:
        reader = LineReader(proc.stdout)
        wait_for_subscriber(daemon.socket_path)
        append(daemon.socket_path, "c1", 1)
        assert seq_of(reader.next(), True) == 4  # like tail -n 0 -f: nothing old
    finally:
        finish(proc)


def test_tail_follow_reports_a_dead_daemon_without_a_traceback(daemon) -> None:
    append(daemon.socket_path, "c1", 1)
    proc = follower(daemon.socket_path)
    try:
        reader = LineReader(proc.stdout)
        assert seq_of(reader.next(), True) == 1
        append(daemon.socket_path, "c1", 1)
        assert seq_of(reader.next(), True) == 2  # subscribed
        daemon.proc.kill()
        assert proc.wait(timeout=TIMEOUT) == 1
        err = proc.stderr.read()
        assert "Traceback" not in err and daemon.socket_path in err
    finally:
        finish(proc)


def test_tail_follow_into_a_closed_pipe_exits_quietly(daemon) -> None:
    append(daemon.socket_path, "c1", 1)
    out_r, out_w = os.pipe()  # a bare pipe: closing our end cannot wait on a reader thread
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "tail", "c1", "-f", "--json", "--socket", daemon.socket_path],
        env=child_env(),
        stdout=out_w,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(out_w)
    try:
        got = b""
        deadline = time.monotonic() + LINE_TIMEOUT
        while got.count(b"\n") < 1:
            ready, _, _ = select.select([out_r], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "no line from the follower"
            got += os.read(out_r, 65536)
        assert json.loads(got.splitlines()[0])["seq"] == 1
        os.close(out_r)  # like `head -1` exiting
        out_r = -1
        append(daemon.socket_path, "c1", 1)  # the follower's next print hits the closed pipe
        proc.wait(timeout=TIMEOUT)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if out_r >= 0:
            os.close(out_r)
        finish(proc)
