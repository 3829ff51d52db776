"""The narrator's prompt: its template plus the conversation's context, as chat messages,
within a token budget (``narrator.prompt``, and what the built-in narrator and the advisor send).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import anyio
import msgspec

from sidecar.context.build import Context
from sidecar.narrator.llm import TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_PER_REPLY
from sidecar.narrator.templates import PromptLibrary
from sidecar.tokens import TokenCounter


class ContextBuilder(Protocol):
    """The context of a conversation within a budget, under a system prompt (and optionally
    a query and a focus task: the related and tasks layers)."""

    def __call__(
        self,
        cid: str,
        budget_tokens: int,
        system_prompt: str,
        *,
        query: str | None = ...,
        focus_task_id: str | None = ...,
    ) -> Awaitable[Context]: ...


# Why the controller last decided what it did about a conversation, if it has decided.
LastReason = Callable[[str], "str | None"]
# The error playbook the controller's last decision carried, as "title" and text, if any.
LastPlaybook = Callable[[str], "tuple[str, str] | None"]


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class NarratorPrompt(msgspec.Struct, kw_only=True):
    messages: list[ChatMessage]
    summary_ref: str | None
    tokens: int


_HEADINGS = {
    "tasks": "## Tasks",
    "related": "## Related earlier events",
    "summary": "## Earlier in this conversation",
    "recent": "## Recent events",
    "newest": "## Newest event",
}


async def _read(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


async def build_narrator_prompt(
    cid: str,
    budget_tokens: int,
    reason: str | None,
    *,
    prompts: PromptLibrary,
    counter: TokenCounter,
    context: ContextBuilder,
    last_reason: LastReason,
    last_playbook: LastPlaybook | None = None,
    query: str | None = None,
    focus_task_id: str | None = None,
) -> NarratorPrompt:
    """The narrator template plus the conversation's context, as chat messages, within budget.

    The budget also pays for the headings and the chat template's role markers (two messages
    and the reply's opening), which the server counts against its context too. Counting runs in
    worker threads: an exact count may ask the LLM server, which must never block the loop."""
    last = last_reason(cid)
    why = reason or (last if last is not None else "asked to speak")
    system = prompts.render("narrator", conversation_id=cid, reason=why)
    playbook = last_playbook(cid) if last_playbook is not None else None
    if playbook is not None:  # what to say about the error this turn is about (docs/playbooks.md)
        title, text = playbook
        system += f"\n\n## Playbook: {title}\n{text}"
    headings = await _read(counter.count, "\n\n".join(_HEADINGS.values()))
    template = 2 * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_REPLY
    ctx = await context(
        cid, max(1, budget_tokens - headings - template), system, query=query, focus_task_id=focus_task_id
    )
    layers = {layer.name: layer for layer in ctx.layers}
    body = "\n\n".join(f"{_HEADINGS[n]}\n{layers[n].text}" for n in _HEADINGS if n in layers)
    messages = [ChatMessage(role="system", content=layers["system"].text if "system" in layers else "")]
    if body:
        messages.append(ChatMessage(role="user", content=body))
    content = await _read(lambda: sum(counter.count(m.content) for m in messages))
    tokens = content + len(messages) * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_REPLY
    return NarratorPrompt(messages=messages, summary_ref=ctx.summary_ref, tokens=tokens)
