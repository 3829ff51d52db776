"""A client for an OpenAI-compatible chat-completions server (llama.cpp, vLLM), on httpx.

``POST /v1/chat/completions`` with or without ``stream: true`` (server-sent events), over http
or https, with an optional API key (``Authorization: Bearer``, as ``llama-server --api-key``
wants). A slow, hung or failing server must never hold up the daemon (contract §9), so:

- ``timeout_s`` bounds the whole reply, streamed or not, not each read: a server that trickles
  a byte a second still ends within it;
- a circuit breaker (:mod:`sidecar.breaker`) turns a run of failures into fast failures until a
  back-off passes, then lets one trial call through;
- the server's own error text ("exceeds the available context size") is kept, cleaned and cut
  short, in the :class:`LLMError` that callers log;
- replies are read up to a cap, so a runaway server cannot fill memory.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import httpx
import structlog

from sidecar.breaker import Breaker
from sidecar.clock import SYSTEM_CLOCK, Clock

log = structlog.get_logger("sidecar.llm")

DEFAULT_MAX_TOKENS = 512  # a narrator turn is a few sentences; the controller's verdict is one line
PROPS_TIMEOUT_S = 2.0  # GET /props (the context size) is cheap: no need to wait the full timeout_s
MIN_PROMPT_TOKENS = 16  # narrator.prompt's smallest budget: a clamp never goes below it
MAX_REPLY_BYTES = 4 * 1024 * 1024  # one reply, streamed or not
MAX_ERROR_BYTES = 8192  # read of an error body
ERROR_TEXT_CHARS = 300  # kept of the server's error text in LLMError and the logs

# The chat template wraps each message in role markers (ChatML: "<|im_start|>user\n" ...
# "<|im_end|>\n"; Llama 3: "<|start_header_id|>user<|end_header_id|>\n\n" ... "<|eot_id|>"), and
# opens the reply with one more. Counted when fitting a prompt to the server's context.
TEMPLATE_TOKENS_PER_MESSAGE = 5
TEMPLATE_TOKENS_PER_REPLY = 4

# Answers that say the server (or the way we reach it) is not well, as opposed to this one
# request being wrong (400 too long, 413, 422): only these count towards opening the breaker.
_UNHEALTHY = {401, 403, 404, 408, 429}


class LLMError(Exception):
    """The LLM server could not be reached, or answered with something unusable.

    ``status`` is the HTTP status when the server answered with an error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_warned: set[str] = set()  # variables whose absence was logged


def api_key_from_env(variable: str | None) -> str | None:
    """The API key in the environment variable ``[llm] api_key_env`` names (never logged: only
    the variable's name is). None when no variable is configured, or it is unset (said once)."""
    if not variable:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        if variable not in _warned:
            _warned.add(variable)
            log.warning("llm.api_key_missing", variable=variable, effect="requests go without Authorization")
        return None
    try:
        auth_headers(key)
    except LLMError as exc:
        log.error("llm.api_key_invalid", variable=variable, error=str(exc), effect="requests go without Authorization")
        return None
    return key


def check_url(url: str) -> httpx.URL:
    """``url`` as httpx's URL when it is http(s)://host[:port][/path]; LLMError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"[llm] url must be http(s)://host[:port], not {url!r}")
    try:
        return httpx.URL(url.rstrip("/"))
    except httpx.InvalidURL as exc:
        raise LLMError(f"[llm] url {url!r} is not valid: {exc}") from exc


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer <key>``; a key that cannot be a header value is refused here,
    without showing it (a UnicodeEncodeError from httpx would quote part of it)."""
    if api_key is None:
        return {}
    if not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
        raise LLMError("the API key is not printable ASCII without spaces")
    return {"Authorization": f"Bearer {api_key}"}


def error_text(body: bytes) -> str:
    """What the server said was wrong: ``error.message`` of an OpenAI-style JSON error (llama.cpp,
    vLLM), else the text. Control characters are replaced (it goes to logs and terminals) and it is
    cut to ``ERROR_TEXT_CHARS``."""
    text = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error", doc.get("detail", doc.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            text = err if isinstance(err, str) else json.dumps(err)
    text = re.sub(r"\s+", " ", "".join(c if c.isprintable() or c.isspace() else "\ufffd" for c in text)).strip()
    if len(text) > ERROR_TEXT_CHARS:
        text = text[: ERROR_TEXT_CHARS - 1].rstrip() + "\u2026"
    return text or "(no body)"


class ChatClient:
    """Chat completions against one server, sharing its connections, its breaker and its
    context size among all callers. Use from the event loop; :meth:`aclose` when done."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        timeout_s: float = 10.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        api_key: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        breaker: Breaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = check_url(url)
        self.shown = self.url.copy_with(username=None, password=None)  # for messages: no credentials
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.has_api_key = api_key is not None
        self.breaker = breaker or Breaker("chat", clock)
        # No proxies from the environment (the server is beside us; a stray HTTPS_PROXY must not
        # carry the prompts and the key elsewhere) and no redirects (the key stays on this host).
        self._http = httpx.AsyncClient(
            headers=auth_headers(api_key),
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
            follow_redirects=False,
            transport=transport,
        )
        self._n_ctx: int | None = None
        self._n_ctx_known = False  # asked, and the server answered (with a size or without one)
        self._clamped: set[int] = set()  # the budgets whose clamp was logged

    async def aclose(self) -> None:
        await self._http.aclose()

    def _path(self, path: str) -> httpx.URL:
        return self.url.copy_with(path=self.url.path.rstrip("/") + path)

    def _body(self, messages: list[dict[str, str]], stream: bool, max_tokens: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": messages,
            "stream": stream,
            "temperature": 0.2,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if self.model:
            body["model"] = self.model
        return body

    def _late(self, timeout_s: float | None = None) -> LLMError:
        return LLMError(f"no complete reply from the LLM server within {timeout_s or self.timeout_s:g} s")

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: float,
        late: Callable[[], LLMError],
        *,
        absent: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """One request through the breaker: the response once its status is a success, its body
        still to read (with :func:`_read_capped`, or as :meth:`stream` does, against the same deadline).
        Failures, the deadline included, become LLMError and count against the server; a
        cancelled or abandoned exchange counts neither way. With ``absent``, a 404 (the server
        has no such endpoint) is an answer, not a failure."""
        try:
            request = self._http.build_request(method, self._path(path), json=body)
        except (ValueError, TypeError) as exc:  # not the server's fault: the breaker is left alone
            raise LLMError(f"cannot encode the request: {exc}") from exc
        ticket = self.breaker.allow()
        if ticket is None:
            raise LLMError(
                f"the LLM server failed repeatedly; not asking it for {self.breaker.retry_in():.1f} s more"
                " (circuit breaker open)"
            )
        verdict: bool | None = None
        try:
            try:
                with anyio.fail_at(deadline):
                    response = await self._http.send(request, stream=True)
            except TimeoutError:
                raise late() from None
            try:
                if response.status_code >= 400:
                    raw = await _read_capped(response, MAX_ERROR_BYTES, deadline, late, truncate=True)
                    status = response.status_code
                    hint = ""
                    if status == 401:
                        hint = (
                            " (the API key was refused: check [llm] api_key_env)"
                            if self.has_api_key
                            else " (no API key was sent: set [llm] api_key_env)"
                        )
                    verdict = (absent and status in (404, 405, 501)) or (status not in _UNHEALTHY and status < 500)
                    raise LLMError(
                        f"the LLM server answered {status} to {path}: {error_text(raw)}{hint}", status=status
                    )
                yield response
                verdict = True
            finally:
                with anyio.move_on_after(1.0, shield=True):
                    await response.aclose()
        except LLMError:
            if verdict is None:
                verdict = False  # unreachable, too slow, malformed or oversized: the server is not well
            raise
        except httpx.TimeoutException as exc:
            verdict = False
            raise LLMError(f"the LLM server at {self.shown} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            verdict = False
            raise LLMError(f"cannot reach the LLM server at {self.shown}: {exc or type(exc).__name__}") from exc
        finally:
            self.breaker.settle(ticket, verdict)

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int | None = None) -> str:
        """The whole reply (``stream: false``), within ``timeout_s`` overall."""
        deadline = anyio.current_time() + self.timeout_s
        body = self._body(messages, False, max_tokens)
        async with self._exchange("POST", "/v1/chat/completions", body, deadline, self._late) as response:
            raw = await _read_capped(response, MAX_REPLY_BYTES, deadline, self._late)
            try:
                content = json.loads(raw)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise LLMError(f"not a chat-completions answer: {raw[:200]!r}") from exc
            if not isinstance(content, str):
                raise LLMError(f"not a chat-completions answer: {raw[:200]!r}")
            return content

    async def stream(self, messages: list[dict[str, str]], *, max_tokens: int | None = None) -> AsyncIterator[str]:
        """The reply piece by piece (``stream: true``). ``timeout_s`` bounds the whole reply: each
        wait runs against one deadline (never a cancel scope across a ``yield``)."""
        deadline = anyio.current_time() + self.timeout_s
        body = self._body(messages, True, max_tokens)
        async with (
            self._exchange("POST", "/v1/chat/completions", body, deadline, self._late) as response,
            aclosing(_timely_chunks(response, deadline, self._late)) as chunks,
        ):
            buffer = b""
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if total > MAX_REPLY_BYTES:
                    raise LLMError(f"the LLM server's reply is over {MAX_REPLY_BYTES} bytes")
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                        raise LLMError(f"not a chat-completions stream event: {data[:200]!r}") from exc
                    if delta:
                        yield str(delta)

    # --- the server's context size -------------------------------------------------------------

    async def probe(self) -> float:
        """Seconds the server took to answer ``GET /health`` (llama.cpp's and vLLM's; a 404
        from a server without one is an answer too), within ``PROPS_TIMEOUT_S``; LLMError when
        it cannot be reached, fails (llama.cpp says 503 while it loads its model) or is late.

        Apart from the breaker: watching the server must neither open nor close the circuit
        that the real calls keep (a server that answers /health but fails every completion
        still trips it)."""
        timeout_s = min(self.timeout_s, PROPS_TIMEOUT_S)
        start = anyio.current_time()
        deadline = start + timeout_s

        def late() -> LLMError:
            return self._late(timeout_s)

        try:
            with anyio.fail_at(deadline):
                async with self._http.stream("GET", self._path("/health")) as response:
                    body = await _read_capped(response, MAX_ERROR_BYTES, deadline, late, truncate=True)
        except TimeoutError:
            raise late() from None
        except httpx.HTTPError as exc:
            raise LLMError(f"cannot reach the LLM server at {self.shown}: {exc or type(exc).__name__}") from exc
        status = response.status_code
        if status >= 400 and status not in (404, 405, 501):
            raise LLMError(f"the LLM server answered {status} to /health: {error_text(body)}", status=status)
        return anyio.current_time() - start

    async def context_size(self) -> int | None:
        """Tokens of context one request gets: llama.cpp's ``GET /props``
        (``default_generation_settings.n_ctx``, or ``n_ctx`` at the top level in some versions),
        else vLLM's ``max_model_len`` in ``GET /v1/models``. Asked until the server answers,
        then remembered; None when it does not say (or cannot be asked right now)."""
        if self._n_ctx_known:
            return self._n_ctx
        try:
            n_ctx = await self._get_size("/props", _n_ctx_of_props)
            if n_ctx is None:
                n_ctx = await self._get_size("/v1/models", self._n_ctx_of_models)
        except LLMError as exc:
            log.info("llm.context_size_unknown", error=str(exc))
            return None
        self._n_ctx, self._n_ctx_known = n_ctx, True
        log.info("llm.context_size", n_ctx=n_ctx)
        return n_ctx

    async def _get_size(self, path: str, pick: Callable[[Any], Any]) -> int | None:
        timeout_s = min(self.timeout_s, PROPS_TIMEOUT_S)
        deadline = anyio.current_time() + timeout_s

        def late() -> LLMError:
            return self._late(timeout_s)

        try:
            async with self._exchange("GET", path, None, deadline, late, absent=True) as response:
                body = await _read_capped(response, MAX_REPLY_BYTES, deadline, late)
        except LLMError as exc:
            if exc.status in (400, 404, 405, 422, 501):
                return None  # not this kind of server: it answered, just not this
            raise  # unreachable, refused (401), failing: unknown for now, asked again next time
        try:
            n_ctx = pick(json.loads(body))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        return n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0 else None

    def _n_ctx_of_models(self, doc: dict[str, Any]) -> Any:
        models = doc["data"]
        chosen = next((m for m in models if m.get("id") == self.model), models[0])
        return chosen["max_model_len"]

    async def prompt_budget(self, configured: int) -> int:
        """``configured`` prompt tokens, or fewer when that plus ``max_tokens`` for the reply would
        not fit the server's context (said once per configured budget)."""
        n_ctx = await self.context_size()
        if n_ctx is None or configured + self.max_tokens <= n_ctx:
            return configured
        budget = max(MIN_PROMPT_TOKENS, n_ctx - self.max_tokens)
        if configured not in self._clamped:
            self._clamped.add(configured)
            log.warning(
                "llm.budget_clamped", configured=configured, max_tokens=self.max_tokens, n_ctx=n_ctx, budget=budget
            )
        return budget


def _n_ctx_of_props(doc: dict[str, Any]) -> Any:
    settings = doc.get("default_generation_settings")
    if isinstance(settings, dict) and "n_ctx" in settings:
        return settings["n_ctx"]
    return doc.get("n_ctx")


async def _read_capped(
    response: httpx.Response, limit: int, deadline: float, late: Callable[[], LLMError], *, truncate: bool = False
) -> bytes:
    """The body by ``deadline`` (else ``late()``), up to ``limit`` bytes: past it, LLMError, or
    with ``truncate`` what was read."""
    body = bytearray()
    async with aclosing(_timely_chunks(response, deadline, late)) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                if truncate:
                    return bytes(body[:limit])
                raise LLMError(f"the LLM server's reply is over {limit} bytes")
    return bytes(body)


async def _timely_chunks(
    response: httpx.Response, deadline: float, late: Callable[[], LLMError]
) -> AsyncGenerator[bytes, None]:
    """The body's chunks, each waited for against one ``deadline`` (else ``late()``); the
    cancel scope covers the wait only, never a ``yield``."""
    chunks = response.aiter_bytes()
    try:
        while True:
            try:
                with anyio.fail_at(deadline):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise late() from None
            yield chunk
    finally:
        # httpx annotates aiter_bytes() as an AsyncIterator; it is an async generator, with aclose()
        await chunks.aclose()  # type: ignore[attr-defined]


def parse_verdict(text: str) -> tuple[bool, str]:
    """The controller template's answer: one JSON object with ``speak_now`` and ``reason``."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise LLMError(f"no JSON object in the answer: {text[:200]!r}")
    try:
        doc = json.loads(text[start : end + 1])
    except ValueError as exc:
        raise LLMError(f"malformed JSON in the answer: {text[:200]!r}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("speak_now"), bool):
        raise LLMError(f"the answer lacks a boolean speak_now: {text[:200]!r}")
    return doc["speak_now"], str(doc.get("reason") or "llm")
