"""Is the LLM server up? Asked in the background, so ``sys.health`` answers at once.

The daemon serves without an LLM (the rules decide, nobody narrates), so an unreachable
server makes it *degraded*, not down: ``sys.health`` says ``"status": "degraded"``, the web
console's ``GET /health`` answers 503, and ``sidecar health`` exits 2.
"""

from __future__ import annotations

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from sidecar.narrator.llm import ChatClient, LLMError

log = structlog.get_logger("sidecar.narrator")


class LLMHealth(msgspec.Struct, kw_only=True):
    """What the daemon last learned of the LLM server."""

    configured: bool  # [llm] url is set
    reachable: bool | None = None  # None: not asked yet (or not configured)
    latency_ms: float | None = None  # of the last answer to GET /health
    error: str | None = None  # why it is not reachable


class LLMWatch:
    """Asks the server (``ChatClient.probe``) every ``every_s`` seconds, and at once when
    started; logs each change between reachable and not, once."""

    def __init__(self, chat: ChatClient | None, every_s: float) -> None:
        self.chat = chat
        self.every_s = every_s
        self._last = LLMHealth(configured=chat is not None)

    def status(self) -> LLMHealth:
        return self._last

    async def check(self) -> LLMHealth:
        """Ask now; the answer is also what :meth:`status` gives from now on."""
        if self.chat is None:
            return self._last
        try:
            took = await self.chat.probe()
        except LLMError as exc:
            fresh = LLMHealth(configured=True, reachable=False, error=str(exc))
        else:
            fresh = LLMHealth(configured=True, reachable=True, latency_ms=round(took * 1000, 2))
        if fresh.reachable != self._last.reachable:
            if fresh.reachable:
                log.info("llm.reachable", url=str(self.chat.shown), latency_ms=fresh.latency_ms)
            else:
                log.warning("llm.unreachable", url=str(self.chat.shown), error=fresh.error)
        self._last = fresh
        return fresh

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while self.chat is not None:
            await self.check()
            await anyio.sleep(self.every_s)
