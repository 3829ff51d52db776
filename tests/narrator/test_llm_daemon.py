"""The LLM client inside a real daemon: a hung server delays nothing that does not need it, the
narrator's prompt fits the server's context, the API key comes from the environment and the
server's error text reaches the log, and narrator.prompt pays for the chat template."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sidecar_client import Client

from sidecar.narrator.llm import TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_PER_REPLY
from sidecar.tokens import ByteEstimate
from tests.daemon.conftest import DaemonProc, daemon, start_daemon  # noqa: F401
from tests.narrator.fake_llm import FakeLLM, running
from tests.support import read_notifications

QUICK = 2.0  # generous: these calls take milliseconds; a blocked loop would take the LLM's timeout


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running() as fake:
        yield fake


def timed(c: Client, method: str, params: dict[str, Any]) -> float:
    started = time.monotonic()
    c.call(method, params)
    return time.monotonic() - started


def wait_for_log(d: DaemonProc, c: Client, text: str, timeout: float = 20.0) -> str:
    """The daemon's stderr once it holds ``text`` (each look is after one round trip)."""
    deadline = time.monotonic() + timeout
    while text not in (log := d.stderr()):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log}"
        c.call("sys.health")
    return log


def spoken(notes: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The next event from a subscription (narrator.delta notifications come on the way)."""
    return next(n for n in notes if n["method"] == "log.event")["params"]["event"]


def test_a_hung_llm_server_delays_no_call_that_does_not_need_it(start_daemon, llm: FakeLLM) -> None:  # noqa: F811
    llm.hang |= {"/tokenize", "/props", "/v1/models", "/v1/chat/completions"}
    d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\nnarrator = true\ntimeout_s = 30.0\n')
    assert set(llm.hits) <= {"/health"}  # start-up asked the LLM server nothing but, on the side, whether it is up
    with Client(d.socket_path) as c:
        for i in range(20):
            c.call("log.append", {"conversation_id": "c1", "type": "agent.progress", "data": {"msg": f"step {i}"}})

        built: dict[str, Any] = {}

        def needs_counts() -> None:  # exact counts are asked in worker threads, and hang there
            with Client(d.socket_path) as b:
                built.update(b.call("context.build", {"conversation_id": "c1", "budget_tokens": 500}))

        background = threading.Thread(target=needs_counts)
        background.start()
        c.call("chat.user_message", {"conversation_id": "c1", "text": "how is it going?"})  # the narrator starts
        assert llm.arrived("/tokenize").wait(20) and llm.arrived("/props").wait(20)

        # /tokenize and /props hang now. Calls that need neither answer at once, including
        # those that count tokens on the event loop (summaries): there, the estimate serves.
        calls = [
            ("sys.health", {}),
            ("log.append", {"conversation_id": "c2", "type": "agent.progress", "data": {"msg": "meanwhile"}}),
            ("controller.status", {"conversation_id": "c1"}),
            ("log.tail", {"conversation_id": "c1", "limit": 5}),
            ("summary.rolling", {"conversation_id": "c1", "keep_recent": 5, "max_tokens": 60}),
        ]
        latencies = {method: timed(c, method, params) for method, params in calls}
        assert all(v < QUICK for v in latencies.values()), latencies
        assert background.is_alive()  # all of that happened while the counts were still hanging

        assert llm.arrived("/v1/chat/completions").wait(20)  # the narrator now waits on the chat
        assert timed(c, "sys.health", {}) < QUICK and timed(c, "log.append", calls[1][1]) < QUICK
        background.join(30)
        assert not background.is_alive()
    # Three hung counts opened the breaker; the rest of the context was counted by estimate.
    assert built["layers"] and built["total_tokens"] <= 500
    assert "llm.breaker_open" in d.stderr() and "context.tokenize_failed" in d.stderr()


def test_the_narrators_prompt_fits_the_servers_context(start_daemon, llm: FakeLLM) -> None:  # noqa: F811
    llm.n_ctx = 600
    config = f'[llm]\nurl = "{llm.url}"\nnarrator = true\ntimeout_s = 10.0\nmax_tokens = 200\n'
    d = start_daemon(config_text=config)  # narrator_budget_tokens: 3000 by default, far over 600 - 200
    notes = read_notifications(d.socket_path, {"conversation_id": "c1", "types": ["narrator.message"]})
    with Client(d.socket_path) as c:
        for i in range(150):
            words = " ".join(f"word{j}" for j in range(10))
            c.call("log.append", {"conversation_id": "c1", "type": "agent.progress", "data": {"msg": f"{i} {words}"}})
        c.call("chat.user_message", {"conversation_id": "c1", "text": "how is it going?"})
        assert spoken(notes)["type"] == "narrator.message"
    request = next(r for r in llm.requests if r["stream"])
    assert request["max_tokens"] == 200
    # The fake counts a token a word, and the daemon counted with it: the prompt, its role markers
    # and the reply's opening fit in the 400 tokens left beside the reply.
    words = sum(len(m["content"].split()) for m in request["messages"])
    template = len(request["messages"]) * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_REPLY
    assert 200 < words + template <= 400, words
    log = d.stderr()
    assert log.count("llm.budget_clamped") == 1 and '"n_ctx": 600' in log and llm.hits["/props"] == 1


def test_the_api_key_comes_from_the_environment_and_a_refusal_is_logged_with_the_servers_words(
    start_daemon,  # noqa: F811
    llm: FakeLLM,
) -> None:
    llm.api_key = "tok-9f8e7d"
    config = f'[llm]\nurl = "{llm.url}"\nnarrator = true\ntimeout_s = 10.0\napi_key_env = "SIDECAR_TEST_KEY"\n'
    keyed = start_daemon(config_text=config, env={"SIDECAR_TEST_KEY": "tok-9f8e7d"})
    notes = read_notifications(keyed.socket_path, {"conversation_id": "c1", "types": ["narrator.message"]})
    with Client(keyed.socket_path) as c:
        ctx = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 100, "system_prompt": "be very brief"})
        assert ctx["layers"][0]["tokens"] == 3  # /tokenize, with the key
        c.call("chat.user_message", {"conversation_id": "c1", "text": "status?"})
        assert spoken(notes)["data"]["text"] == "All tasks are on track."
    assert set(llm.authorization) == {"Bearer tok-9f8e7d"}
    assert "tok-9f8e7d" not in keyed.stderr()  # the key is never logged
    assert keyed.stop() == 0

    keyless = start_daemon(config_text=config, data_dir=keyed.data_dir)  # the variable is not set
    with Client(keyless.socket_path) as c:
        c.call("chat.user_message", {"conversation_id": "c1", "text": "and now?"})
        log = wait_for_log(keyless, c, "narrator.failed")
    assert "llm.api_key_missing" in log and "SIDECAR_TEST_KEY" in log
    assert "Invalid API Key" in log and "set [llm] api_key_env" in log  # the server's words, and what to do


def test_narrator_prompt_pays_for_the_chat_template(daemon) -> None:  # noqa: F811
    estimate = ByteEstimate()  # no [llm] url: the daemon counts with the estimate
    with Client(daemon.socket_path) as c:
        for i in range(40):
            c.call("log.append", {"conversation_id": "c1", "type": "agent.progress", "data": {"msg": f"step {i}"}})
        for budget in (120, 500, 2000):
            prompt = c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": budget})
            content = sum(estimate.count(m["content"]) for m in prompt["messages"])
            markers = len(prompt["messages"]) * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_REPLY
            assert len(prompt["messages"]) == 2 and prompt["tokens"] == content + markers
            assert prompt["tokens"] <= budget, (budget, prompt["tokens"])


def test_health_says_degraded_while_the_llm_server_is_unreachable(start_daemon, llm: FakeLLM) -> None:  # noqa: F811
    """sys.health carries llm (configured, reachable, latency_ms, error); `sidecar health`
    exits 0 healthy, 2 degraded (0 with --degraded-ok), 1 when nothing answers."""
    from tests.daemon.test_cli import sidecar

    d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\nhealth_every_s = 0.2\n')
    with Client(d.socket_path) as c:
        assert llm.arrived("/health").wait(20)
        health = wait_for(c, lambda h: h["llm"]["reachable"] is True)
        assert health["status"] == "ok" and health["llm"]["configured"] is True
        assert health["llm"]["latency_ms"] >= 0 and health["llm"]["error"] is None
        assert sidecar("health", "--socket", d.socket_path).returncode == 0

        llm.hang.add("/health")  # it stops answering (a restart, a model loading...)
        health = wait_for(c, lambda h: h["status"] == "degraded")
        assert health["llm"]["reachable"] is False and "LLM server" in health["llm"]["error"]
        assert c.call("log.append", {"conversation_id": "c1", "type": "a.b"})["seq"] == 1  # it still serves
        run = sidecar("health", "--socket", d.socket_path)
        assert run.returncode == 2 and '"degraded"' in run.stdout
        assert sidecar("health", "--degraded-ok", "--socket", d.socket_path).returncode == 0

        llm.hang.discard("/health")
        llm.release.set()  # the hung probes give up; the next ones are answered
        assert wait_for(c, lambda h: h["status"] == "ok")["llm"]["reachable"] is True
    assert "llm.unreachable" in d.stderr() and "llm.reachable" in d.stderr()


def test_without_an_llm_server_health_is_ok_and_says_none_is_configured(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        health = c.call("sys.health")
    assert health["status"] == "ok"
    assert health["llm"] == {"configured": False, "reachable": None, "latency_ms": None, "error": None}


def wait_for(c: Client, done: Any, timeout: float = 20.0) -> dict[str, Any]:
    """``sys.health`` once ``done(it)`` holds (each look is one round trip)."""
    deadline = time.monotonic() + timeout
    while not done(health := c.call("sys.health")):
        assert time.monotonic() < deadline, f"never: {health}"
    return health
