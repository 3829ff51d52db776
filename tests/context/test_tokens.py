"""Token counters: the estimate, and exact counts from a llama.cpp-style /tokenize on loopback,
which must never block the event loop nor wait long on a hung server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
from sidecar_client import Client

from sidecar.clock import ManualClock
from sidecar.tokens import ByteEstimate, LlamaCppTokenizer, on_event_loop
from tests.narrator.fake_llm import FakeLLM, running

ESTIMATE = ByteEstimate()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running() as fake:
        yield fake


def test_byte_estimate_errs_high() -> None:
    counter = ByteEstimate()
    assert counter.count("") == 0
    assert counter.count("abcd") == 2  # 4 bytes / 4 * 1.15, rounded up
    assert counter.count("é" * 100) >= 50  # UTF-8 bytes, not characters


def test_exact_counts_are_cached(llm: FakeLLM) -> None:
    counter = LlamaCppTokenizer(llm.url)
    assert counter.available()
    assert counter.count("one two three") == 3
    assert counter.count("one two three") == 3
    assert llm.hits["/tokenize"] == 2  # the probe, then one count
    counter.close()


def test_falls_back_when_the_server_is_gone() -> None:
    counter = LlamaCppTokenizer("http://127.0.0.1:9")  # discard port: nothing listens
    assert not counter.available()
    assert counter.count("abcd") == ESTIMATE.count("abcd") and counter.failed


def test_a_server_without_tokenize_is_asked_once(llm: FakeLLM) -> None:
    llm.tokenize = False  # vLLM, or anything else that answers 404
    counter = LlamaCppTokenizer(llm.url)
    assert counter.count("one two three four") == ESTIMATE.count("one two three four")
    assert counter.count("five six") == ESTIMATE.count("five six")
    assert llm.hits["/tokenize"] == 1 and counter.unsupported and counter.breaker.state == "closed"


def test_the_api_key_goes_to_tokenize_too(llm: FakeLLM) -> None:
    llm.api_key = "k-123"
    assert LlamaCppTokenizer(llm.url, api_key="k-123").count("a b") == 2
    refused = LlamaCppTokenizer(llm.url)
    assert refused.count("a b c") == ESTIMATE.count("a b c") and refused.failed  # 401: the estimate
    assert llm.authorization == ["Bearer k-123", None]
    with pytest.raises(ValueError, match="printable"):
        LlamaCppTokenizer(llm.url, api_key="two words")


@pytest.mark.anyio
async def test_on_the_event_loop_only_the_cache_or_the_estimate(llm: FakeLLM) -> None:
    counter = LlamaCppTokenizer(llm.url, timeout_s=30)
    assert on_event_loop() and not await anyio.to_thread.run_sync(on_event_loop)
    llm.hang.add("/tokenize")
    started = time.monotonic()
    assert counter.count("one two three") == ESTIMATE.count("one two three")
    assert time.monotonic() - started < 0.5 and llm.hits["/tokenize"] == 0  # never asked from the loop
    with pytest.raises(RuntimeError, match="block the event loop"):
        counter.available()

    llm.hang.clear()
    assert await anyio.to_thread.run_sync(counter.count, "one two three") == 3  # a worker thread asks
    assert counter.count("one two three") == 3  # and the loop reads it from the cache
    assert llm.hits["/tokenize"] == 1
    await anyio.to_thread.run_sync(counter.close)


def test_a_hung_tokenize_costs_its_timeout_a_few_times_then_the_breaker_answers(llm: FakeLLM) -> None:
    clock = ManualClock()
    counter = LlamaCppTokenizer(llm.url, timeout_s=0.3, clock=clock)
    llm.hang.add("/tokenize")
    for i in range(3):
        started = time.monotonic()
        assert counter.count(f"text {i}") == ESTIMATE.count(f"text {i}")
        assert time.monotonic() - started < 2.0  # bounded by timeout_s, not by the server
    assert llm.hits["/tokenize"] == 3 and counter.breaker.state == "open"
    started = time.monotonic()
    assert counter.count("more text") == ESTIMATE.count("more text")
    assert time.monotonic() - started < 0.1 and llm.hits["/tokenize"] == 3  # open: not asked at all

    llm.hang.clear()
    clock.advance(1.0)  # the back-off passed: one trial, which works, and exact counts are back
    assert counter.count("one two three") == 3
    assert counter.breaker.state == "closed" and not counter.failed and llm.hits["/tokenize"] == 4
    counter.close()


def test_a_trickling_tokenize_is_cut_off_at_the_timeout(llm: FakeLLM) -> None:
    """A body that never ends, a byte at a time: each read succeeds, the whole does not."""
    llm.trickle.add("/tokenize")
    counter = LlamaCppTokenizer(llm.url, timeout_s=0.5)
    started = time.monotonic()
    assert counter.count("x y") == ESTIMATE.count("x y")
    assert time.monotonic() - started < 2.0 and llm.hits["/tokenize"] == 1 and counter.failed


def test_the_daemon_counts_with_the_llm_server(start_daemon, llm: FakeLLM) -> None:
    d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\n')
    assert llm.hits["/tokenize"] == 0  # start-up asked nothing: the tokenizer finds out on first use
    with Client(d.socket_path) as c:
        c.call("log.append", {"conversation_id": "c1", "type": "a.b", "data": {"msg": "hello there"}})
        ctx = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 100, "system_prompt": "be very brief"})
    system = ctx["layers"][0]
    assert system["tokens"] == 3  # three words, as the server counts them
    assert "llama.cpp /tokenize" in d.stderr()


def test_the_daemon_falls_back_without_tokenize(start_daemon) -> None:
    d = start_daemon(config_text='[llm]\nurl = "http://127.0.0.1:9"\n')
    with Client(d.socket_path) as c:
        ctx = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 100, "system_prompt": "be very brief"})
    assert ctx["layers"][0]["tokens"] == ESTIMATE.count("be very brief")
    assert "context.tokenize_failed" in d.stderr() and "byte estimate" in d.stderr()
