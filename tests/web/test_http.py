"""The console's HTTP layer over real HTTP: the token, the Host and Origin checks, the health
endpoint, the chat endpoint's refusals, search, the event stream's resume point, and SIGTERM."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
from sidecar_client import Client

from tests.daemon.conftest import DaemonProc
from tests.web.conftest import Console

PROTECTED = [
    "/",
    "/static/console.js",
    "/api/conversations",
    "/api/tasks?conversation=c1",
    "/api/playbooks",
    "/api/search?q=anything",
]


def poll(
    get: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool], timeout: float = 20.0
) -> httpx.Response:
    """Ask again until ``done`` (the daemon's LLM probe runs on its own clock)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = get()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_every_request_but_health_needs_the_token(console: Console) -> None:
    with console.http() as anonymous:
        for path in PROTECTED:
            answer = anonymous.get(path)
            assert answer.status_code == 401, path
            assert "token" in answer.json()["error"]
        assert anonymous.get("/api/conversations", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anonymous.get("/api/conversations", params={"token": console.token + "x"}).status_code == 401
        assert anonymous.get("/health").status_code == 200
    with console.authed() as bearer:
        for path in PROTECTED:
            assert bearer.get(path).status_code == 200, path


def test_the_token_in_the_url_becomes_a_cookie_and_leaves_the_address(console: Console) -> None:
    with console.http() as browser:
        first = browser.get("/", params={"token": console.token, "conversation": "c 1&x"})
        assert first.status_code == 303
        assert first.headers["location"] == "/?conversation=c+1%26x"  # the token is not in it
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert browser.get("/api/playbooks").status_code == 200  # the cookie alone now
        page = browser.get(first.headers["location"])
        assert page.status_code == 200 and 'data-role="chat-input"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    with console.http(headers={"Cookie": "sidecar_token_1=x; ===; garbage"}) as odd:
        assert odd.get("/api/playbooks").status_code == 401  # a malformed Cookie is no credential


def test_another_host_or_origin_is_refused(console: Console) -> None:
    port = console.base.rpartition(":")[2]
    with console.authed() as c:
        for host in ["evil.example", f"evil.example:{port}", "127.0.0.2", f"localhost.evil.example:{port}", ""]:
            answer = c.get("/api/conversations", headers={"Host": host})
            assert answer.status_code == 403, host
        assert c.get("/health", headers={"Host": "rebound.example"}).status_code == 403
        assert c.get("/api/conversations", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert c.get("/api/conversations", headers={"Host": "localhost"}).status_code == 200
        assert c.get("/api/conversations", headers={"Origin": "http://evil.example"}).status_code == 403
        assert c.get("/api/conversations", headers={"Origin": f"http://localhost:{port}"}).status_code == 200
        sent = c.post(
            "/api/chat", json={"conversation_id": "c1", "text": "hi"}, headers={"Origin": "https://evil.example"}
        )
        assert sent.status_code == 403
        assert c.get("/api/conversations").json() == {"conversations": []}  # nothing was written


def test_health_is_200_then_503_when_the_daemon_is_gone(daemon: DaemonProc, console: Console) -> None:
    with console.http() as c:
        ok = c.get("/health")
        assert ok.status_code == 200
        assert ok.json()["status"] == "ok" and ok.json()["daemon"]["llm"]["configured"] is False
        daemon.stop()
        down = c.get("/health")
        assert down.status_code == 503
        assert down.json()["status"] == "down" and "does not answer" in down.json()["reason"]


def test_health_is_503_while_the_llm_server_is_unreachable(start_daemon, start_console) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    d = start_daemon(config_text=f'[llm]\nurl = "http://127.0.0.1:{port}"\nhealth_every_s = 0.1\n')
    console = start_console(d.socket_path)
    with console.http() as c:
        answer = poll(lambda: c.get("/health"), lambda a: a.status_code == 503)
        body = answer.json()
        assert answer.status_code == 503 and body["status"] == "degraded"
        assert body["reason"].startswith("the LLM server is unreachable")
        assert body["daemon"]["llm"]["reachable"] is False


def test_chat_refusals_name_what_is_wrong_and_write_nothing(daemon: DaemonProc, console: Console) -> None:
    with console.authed() as c:
        form = c.post("/api/chat", content=b"conversation_id=c1&text=hi", headers={"Content-Type": "text/plain"})
        assert form.status_code == 400 and "application/json" in form.json()["error"]
        bad = c.post("/api/chat", content=b"{nope", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
        listed = c.post("/api/chat", json=["c1", "hi"])
        assert listed.status_code == 400 and "JSON object" in listed.json()["error"]
        huge = c.post("/api/chat", json={"conversation_id": "c1", "text": "x" * 300_000})
        assert huge.status_code == 413
        missing = c.post("/api/chat", json={"conversation_id": "c1"})
        assert missing.status_code == 400
        assert missing.json()["error"]["code"] == -32602 and "text" in json.dumps(missing.json())
        sent = c.post("/api/chat", json={"conversation_id": "c1", "text": "hello"})
        assert sent.status_code == 200 and sent.json()["seq"] == 1
        assert c.get("/api/tasks").status_code == 400  # which conversation?
    with Client(daemon.socket_path) as client:
        events = client.call("log.tail", {"conversation_id": "c1", "limit": 10})["events"]
        assert [e["type"] for e in events if e["visibility"] == "user"] == ["user.message"]


def test_search_finds_an_appended_event_within_a_second(daemon: DaemonProc, console: Console) -> None:
    with Client(daemon.socket_path) as client:
        client.call("log.append", {"conversation_id": "c2", "type": "agent.progress", "data": {"msg": "nothing here"}})
        seq = client.call(
            "log.append",
            {"conversation_id": "c1", "type": "agent.error", "data": {"error": "the Zeppelin deploy failed"}},
        )["seq"]
    with console.authed() as c:
        found = poll(
            lambda: c.get("/api/search", params={"q": "zeppelin", "conversation_id": "c1"}),
            lambda a: a.status_code != 200 or bool(a.json()["hits"]),
            timeout=1.0,  # the index follows each acknowledgement within a second
        )
        assert found.status_code == 200, found.text
        (hit,) = found.json()["hits"]
        assert hit["event"]["seq"] == seq and hit["event"]["conversation_id"] == "c1"
        assert hit["snippet"] == "the **Zeppelin** deploy failed" and isinstance(hit["score"], float)
        everywhere = c.get("/api/search", params={"q": "zeppelin OR nothing", "limit": "5"})
        assert {h["event"]["conversation_id"] for h in everywhere.json()["hits"]} == {"c1", "c2"}
        elsewhere = c.get("/api/search", params={"q": "zeppelin", "conversation_id": "c2"})
        assert elsewhere.status_code == 200 and elsewhere.json()["hits"] == []


def test_search_refusals_say_why(console: Console) -> None:
    with console.authed() as c:
        unclosed = c.get("/api/search", params={"q": '"open'})
        assert unclosed.status_code == 400
        assert unclosed.json() == {"error": "q has an unclosed quote at character 1"}  # the daemon's reason
        assert c.get("/api/search", params={"q": "-retry"}).status_code == 400  # nothing wanted
        for limit in ["0", "101", "-1", "ten", "2.5", "9" * 5000]:
            bad = c.get("/api/search", params={"q": "x", "limit": limit})
            assert bad.status_code == 400 and "limit" in bad.json()["error"], limit
        for params in [{}, {"q": ""}, {"q": "x" * 1001}]:
            bad = c.get("/api/search", params=params)
            assert bad.status_code == 400 and "q" in bad.json()["error"].split(), params  # names the field
        assert c.get("/api/search", params={"q": "x" * 1000}).status_code == 200
        odd = c.get("/api/search", params={"q": "x", "conversation_id": "../etc"})
        assert odd.status_code == 400 and "conversation_id" in odd.json()["error"]


def test_search_is_403_when_the_daemon_has_it_off_and_503_when_the_daemon_is_gone(start_daemon, start_console) -> None:
    d = start_daemon(config_text="[search]\nenabled = false\n")
    console = start_console(d.socket_path)
    with console.authed() as c:
        off = c.get("/api/search", params={"q": "anything"})
        assert off.status_code == 403 and "search is off" in off.json()["error"]
        d.stop()
        down = c.get("/api/search", params={"q": "anything"})
        assert down.status_code == 503 and "does not answer" in down.json()["error"]


def sse(c: httpx.Client, conversation: str, want: int, **headers: str) -> Iterator[tuple[str, str, dict]]:
    """The first ``want`` log messages of the console's event stream, as (id, kind, data)."""
    seen = 0
    with c.stream("GET", "/api/events", params={"conversation": conversation}, headers=headers) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in stream.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields.get("event") == "log":
                yield fields.get("id", ""), "log", json.loads(fields["data"])
                seen += 1
                if seen == want:
                    return
            fields = {}


def test_the_stream_resumes_after_last_event_id(daemon: DaemonProc, console: Console) -> None:
    with Client(daemon.socket_path) as client:
        for i in range(6):
            client.call("log.append", {"conversation_id": "c1", "type": "agent.progress", "data": {"i": i}})
    with console.authed() as c:
        fresh = list(sse(c, "c1", 6))
        assert [m[0] for m in fresh] == ["1", "2", "3", "4", "5", "6"]  # the seq is the SSE id
        assert fresh[0][2]["event"]["data"] == {"i": 0} and fresh[0][2]["playbook"] is None
        resumed = list(sse(c, "c1", 2, **{"Last-Event-ID": "4"}))
        assert [m[0] for m in resumed] == ["5", "6"]  # after it: no repeat, no gap


def test_a_failure_comes_with_its_playbook(daemon: DaemonProc, console: Console) -> None:
    with Client(daemon.socket_path) as client:
        client.call(
            "log.append",
            {"conversation_id": "c1", "type": "tool.timeout", "visibility": "status", "data": {"tool": "search"}},
        )
    with console.authed() as c:
        (_, _, first), *_ = sse(c, "c1", 1)
        assert first["event"]["type"] == "tool.timeout"
        assert first["playbook"]["id"] == "tool-timeout" and "Tell the user" in first["playbook"]["text"]


def test_sigterm_ends_open_streams_and_exits_0(daemon: DaemonProc, console: Console) -> None:
    with Client(daemon.socket_path) as client:
        client.call("log.append", {"conversation_id": "c1", "type": "agent.progress"})
    with console.authed() as c, c.stream("GET", "/api/events", params={"conversation": "c1"}) as stream:
        lines = stream.iter_lines()
        assert any(line.startswith("id: 1") for line in lines)  # the stream is live
        started = time.monotonic()
        assert console.stop() == 0
        assert time.monotonic() - started < 5  # not held for the graceful timeout by the stream
        rest = list(lines)  # the stream ended cleanly: a hang or a cut connection raises here
        assert not any(line.startswith("id:") for line in rest)


def test_a_refused_subscription_ends_the_stream_with_fatal(console: Console) -> None:
    with console.authed() as c:
        stream = c.get("/api/events", params={"conversation": "../etc"})  # the stream ends by itself
        assert stream.status_code == 200
        fatal = stream.text.split("event: fatal\ndata: ", 1)[1].split("\n", 1)[0]
        assert json.loads(fatal)["code"] == -32602 and "conversation_id" in json.loads(fatal)["message"]
        assert c.get("/api/events").status_code == 400  # which conversation?
