"""The httpx chat client against a loopback server: the API key, the server's error text,
max_tokens, one deadline for the whole reply, the circuit breaker, https, and the context size."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from structlog.testing import capture_logs

from sidecar.clock import ManualClock
from sidecar.narrator.llm import (
    ERROR_TEXT_CHARS,
    MIN_PROMPT_TOKENS,
    PROPS_TIMEOUT_S,
    ChatClient,
    LLMError,
    api_key_from_env,
    error_text,
)
from tests.narrator.fake_llm import FakeLLM, running

HI = [{"role": "user", "content": "hi"}]
CONTEXT_TOO_BIG = (
    b'{"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",'
    b' "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 4096}}'
)


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running() as fake:
        yield fake


@pytest.fixture
async def client(llm: FakeLLM) -> AsyncIterator[ChatClient]:
    chat = ChatClient(llm.url, timeout_s=5)
    yield chat
    await chat.aclose()


async def failure(call: Callable[[], Awaitable[object]]) -> LLMError:
    with pytest.raises(LLMError) as info:
        await call()
    return info.value


async def drain(chat: ChatClient) -> list[str]:
    return [d async for d in chat.stream(HI)]


@pytest.mark.anyio
async def test_the_api_key_is_sent_and_without_it_the_401_says_what_to_do(
    llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm.api_key = "s3cret-key"
    monkeypatch.setenv("TEST_LLM_KEY", "s3cret-key")
    keyed = ChatClient(llm.url, timeout_s=5, api_key=api_key_from_env("TEST_LLM_KEY"))
    assert '"speak_now": true' in await keyed.complete(HI)
    assert await drain(keyed) == llm.pieces
    assert llm.authorization[-2:] == ["Bearer s3cret-key"] * 2

    keyless = ChatClient(llm.url, timeout_s=5)
    err = await failure(lambda: keyless.complete(HI))
    assert err.status == 401 and "Invalid API Key" in str(err) and "set [llm] api_key_env" in str(err)
    assert llm.authorization[-1] is None

    wrong = ChatClient(llm.url, timeout_s=5, api_key="not-the-key")
    err = await failure(lambda: drain(wrong))
    assert err.status == 401 and "check [llm] api_key_env" in str(err) and "not-the-key" not in str(err)

    with pytest.raises(LLMError, match="printable") as info:
        ChatClient(llm.url, api_key="bad\nkey-with-newline")
    assert "key-with-newline" not in str(info.value)
    monkeypatch.setenv("TEST_LLM_KEY", "")
    assert api_key_from_env("TEST_LLM_KEY") is None and api_key_from_env(None) is None
    for chat in (keyed, keyless, wrong):
        await chat.aclose()


@pytest.mark.anyio
async def test_the_servers_error_text_reaches_the_error(llm: FakeLLM, client: ChatClient) -> None:
    llm.mode, llm.error_status, llm.error_body = "error", 400, CONTEXT_TOO_BIG
    for call in (lambda: client.complete(HI), lambda: drain(client)):
        err = await failure(call)
        assert err.status == 400
        assert "400" in str(err) and "exceeds the available context size, try increasing it" in str(err)

    llm.error_status = 502  # a proxy's HTML page, long, with escape sequences in it
    llm.error_body = b"<html>\x1b]52;c;cGF3bmVk\x07\x1b[2J" + b"Bad gateway " * 2000 + b"</html>"
    err = await failure(lambda: client.complete(HI))
    message = str(err)
    assert "502" in message and "Bad gateway Bad gateway" in message
    assert "\x1b" not in message and "\x07" not in message  # nothing reaches a terminal raw
    assert len(message) < ERROR_TEXT_CHARS + 100 and message.endswith("\u2026")


def test_error_text_prefers_the_message_and_survives_anything() -> None:
    assert error_text(CONTEXT_TOO_BIG).startswith("the request exceeds the available context size")
    assert error_text(b'{"detail": "Not Found"}') == "Not Found"  # vLLM/FastAPI
    assert error_text(b"") == "(no body)"
    assert error_text(b"\xff\xfe  two\n\nlines ") == "\ufffd\ufffd two lines"


@pytest.mark.anyio
async def test_max_tokens_is_sent(llm: FakeLLM) -> None:
    chat = ChatClient(llm.url, timeout_s=5, max_tokens=123)
    await chat.complete(HI)
    await drain(chat)
    assert [r["max_tokens"] for r in llm.requests] == [123, 123]
    await chat.complete(HI, max_tokens=7)
    assert llm.requests[-1]["max_tokens"] == 7
    await chat.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [True, False])
async def test_one_deadline_bounds_the_whole_reply_of_a_trickling_server(llm: FakeLLM, streamed: bool) -> None:
    llm.mode, llm.trickle_s = "trickle", 0.05  # every read gets something within 0.05 s, forever
    chat = ChatClient(llm.url, timeout_s=0.6)
    got: list[str] = []

    async def read() -> None:
        if streamed:
            async for delta in chat.stream(HI):
                got.append(delta)
        else:
            await chat.complete(HI)

    started = time.monotonic()
    err = await failure(read)
    elapsed = time.monotonic() - started
    assert "within 0.6 s" in str(err)
    assert elapsed < 3.0, elapsed  # a per-read timeout would never fire: this would run forever
    if streamed:
        assert got and set(got) == {"."}  # it was trickling, not hung
    await chat.aclose()


@pytest.mark.anyio
async def test_the_breaker_fails_fast_while_open_and_half_opens_on_the_clock(llm: FakeLLM) -> None:
    clock = ManualClock()
    chat = ChatClient(llm.url, timeout_s=5, clock=clock)
    llm.mode, llm.error_status = "error", 503
    for _ in range(3):
        assert (await failure(lambda: chat.complete(HI))).status == 503
    assert llm.hits["/v1/chat/completions"] == 3 and chat.breaker.state == "open"

    for call in (lambda: chat.complete(HI), lambda: drain(chat)):
        err = await failure(call)
        assert "circuit breaker open" in str(err) and err.status is None
    assert await chat.context_size() is None  # unknown for now, and not asked
    assert sum(llm.hits.values()) == 3  # nothing reached the server while open

    clock.advance(1.0)  # the first back-off: one trial goes through, fails, and doubles it
    assert (await failure(lambda: chat.complete(HI))).status == 503
    assert llm.hits["/v1/chat/completions"] == 4
    llm.mode = "ok"
    clock.advance(1.5)
    assert "circuit breaker open" in str(await failure(lambda: chat.complete(HI)))
    assert llm.hits["/v1/chat/completions"] == 4
    clock.advance(0.5)
    assert await drain(chat) == llm.pieces  # the trial works: closed again
    assert chat.breaker.state == "closed" and llm.hits["/v1/chat/completions"] == 5
    await chat.aclose()


@pytest.mark.anyio
async def test_a_request_the_server_finds_too_big_does_not_open_the_breaker(llm: FakeLLM, client: ChatClient) -> None:
    llm.mode, llm.error_status, llm.error_body = "error", 400, CONTEXT_TOO_BIG
    for _ in range(5):
        assert (await failure(lambda: client.complete(HI))).status == 400
    assert llm.hits["/v1/chat/completions"] == 5 and client.breaker.state == "closed"


@pytest.mark.anyio
async def test_a_hung_server_costs_the_deadline_a_few_times_then_nothing(llm: FakeLLM) -> None:
    llm.mode = "hang"
    chat = ChatClient(llm.url, timeout_s=0.3)
    for _ in range(3):
        assert "within 0.3 s" in str(await failure(lambda: chat.complete(HI)))
    started = time.monotonic()
    assert "circuit breaker open" in str(await failure(lambda: drain(chat)))
    assert time.monotonic() - started < 0.2 and llm.hits["/v1/chat/completions"] == 3
    await chat.aclose()


@pytest.mark.anyio
async def test_https_is_spoken(llm: FakeLLM) -> None:
    chat = ChatClient("https://llm.example:8443/base/", timeout_s=5)
    assert str(chat.url) == "https://llm.example:8443/base"
    await chat.aclose()
    plain = llm.url.replace("http://", "https://")  # a TLS handshake against a plain-HTTP server
    tls = ChatClient(plain, timeout_s=5)
    err = await failure(lambda: tls.complete(HI))
    assert "cannot reach" in str(err) and plain in str(err)
    assert llm.hits["/v1/chat/completions"] == 0  # it never got an HTTP request it understood
    await tls.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("top_level", [False, True])
async def test_the_servers_context_size_clamps_the_prompt_budget_once(llm: FakeLLM, top_level: bool) -> None:
    llm.n_ctx, llm.n_ctx_top_level = 2048, top_level
    chat = ChatClient(llm.url, timeout_s=5, max_tokens=512)
    with capture_logs() as logs:
        assert await chat.prompt_budget(3000) == 2048 - 512
        assert await chat.prompt_budget(3000) == 2048 - 512
        assert await chat.prompt_budget(1000) == 1000  # fits beside the reply: left alone
        assert await chat.prompt_budget(1600) == 2048 - 512
    clamps = [e for e in logs if e["event"] == "llm.budget_clamped"]
    assert [(e["configured"], e["budget"], e["n_ctx"]) for e in clamps] == [(3000, 1536, 2048), (1600, 1536, 2048)]
    assert llm.hits["/props"] == 1  # asked once, then remembered
    await chat.aclose()

    tiny = ChatClient(llm.url, timeout_s=5, max_tokens=4096)
    assert await tiny.prompt_budget(3000) == MIN_PROMPT_TOKENS
    await tiny.aclose()


@pytest.mark.anyio
async def test_without_props_the_budget_stands_and_is_not_asked_again(llm: FakeLLM, client: ChatClient) -> None:
    assert await client.prompt_budget(3000) == 3000  # /props and /v1/models: 404
    assert await client.prompt_budget(3000) == 3000
    assert (llm.hits["/props"], llm.hits["/v1/models"]) == (1, 1)
    llm.mode, llm.error_status = "error", 503
    for _ in range(2):  # two failures: with the 404s above they would have opened the breaker
        await failure(lambda: client.complete(HI))
    assert client.breaker.state == "closed"

    llm.hang.add("/props")  # a hung /props is not remembered: asked again next time
    hung = ChatClient(llm.url, timeout_s=0.3)
    assert await hung.context_size() is None
    llm.hang.clear()
    llm.n_ctx = 1000
    assert await hung.context_size() == 1000
    await hung.aclose()


@pytest.mark.anyio
async def test_probe_times_an_answer_and_names_what_went_wrong(llm: FakeLLM, client: ChatClient) -> None:
    assert 0 <= await client.probe() < 2  # the fake has no /health: its 404 is an answer
    assert llm.hits["/health"] == 1
    llm.hang.add("/health")
    started = time.monotonic()
    assert f"within {PROPS_TIMEOUT_S:g} s" in str(await failure(client.probe))
    assert time.monotonic() - started < PROPS_TIMEOUT_S + 2  # bounded by its own deadline, not the reply's
    llm.hang.discard("/health")
    llm.api_key = "other"
    assert "401" in str(await failure(client.probe))  # answered, but refused: not usable


@pytest.mark.anyio
async def test_probe_says_why_and_leaves_the_breaker_to_the_real_calls(llm: FakeLLM, client: ChatClient) -> None:
    llm.health_status = 503  # llama.cpp while it loads its model
    for _ in range(5):  # more failures in a row than open the breaker
        assert "503" in str(err := await failure(client.probe)) and "Loading model" in str(err)
    assert client.breaker.state == "closed"  # watching the server is not calling it
    assert '"speak_now": true' in await client.complete(HI)
    llm.health_status = 200
    assert await client.probe() >= 0
