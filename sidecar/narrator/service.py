"""The built-in narrator and the LLM advisor, built by the daemon from the parts they need.

:class:`Narrator` is given each thing it uses (the appender's append_valid, the grant book, the
context builder, the token counter, the templates, the hub's notify for ``narrator.delta``,
the ``[llm]`` config section and a fault counter), never the daemon itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import structlog

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.controller.grants import Grant, GrantBook
from sidecar.errors import SidecarError
from sidecar.log.events import AppendResult
from sidecar.narrator.llm import ChatClient, LLMError, api_key_from_env, parse_verdict
from sidecar.narrator.prompt import ContextBuilder, LastPlaybook, LastReason, NarratorPrompt, build_narrator_prompt
from sidecar.narrator.speak import Append, speak
from sidecar.narrator.templates import PromptLibrary
from sidecar.notifications import NarratorDeltaParams
from sidecar.tokens import TokenCounter

if TYPE_CHECKING:
    from sidecar.daemon.config import LLMConfig

log = structlog.get_logger("sidecar.daemon")

Notify = Callable[[str, str, Callable[[int], msgspec.Struct]], None]  # Hub.notify


def chat_client(llm: LLMConfig, clock: Clock = SYSTEM_CLOCK) -> ChatClient | None:
    """The chat client, made once: its connections, breaker and context size are shared."""
    if not llm.url:
        return None
    try:
        return ChatClient(
            llm.url,
            model=llm.model,
            timeout_s=llm.timeout_s,
            max_tokens=llm.max_tokens,
            api_key=api_key_from_env(llm.api_key_env),
            clock=clock,
        )
    except LLMError as exc:
        log.error("daemon.llm_disabled", error=str(exc))
        return None


class Narrator:
    """The narrator's prompt, speaking with a grant, and, when an LLM is configured, the
    advisor the controller asks and the built-in narrator that speaks on a grant."""

    def __init__(
        self,
        *,
        llm: LLMConfig,
        chat: ChatClient | None,
        append: Append,
        grants: GrantBook,
        context: ContextBuilder,
        last_reason: LastReason,
        counter: TokenCounter,
        prompts: PromptLibrary,
        notify: Notify,
        fault: Callable[[str], None],
        last_playbook: LastPlaybook | None = None,
    ) -> None:
        self.llm = llm
        self.chat = chat
        self.append = append
        self.grants = grants
        self.context = context
        self.last_reason = last_reason
        self.last_playbook = last_playbook
        self.counter = counter
        self.prompts = prompts
        self.notify = notify
        self.fault = fault

    async def prompt(
        self,
        cid: str,
        budget_tokens: int,
        reason: str | None,
        *,
        query: str | None = None,
        focus_task_id: str | None = None,
    ) -> NarratorPrompt:
        """The narrator template plus the conversation's context, within budget."""
        return await build_narrator_prompt(
            cid,
            budget_tokens,
            reason,
            prompts=self.prompts,
            counter=self.counter,
            context=self.context,
            last_reason=self.last_reason,
            last_playbook=self.last_playbook,
            query=query,
            focus_task_id=focus_task_id,
        )

    async def say(self, cid: str, grant_id: str, text: str) -> AppendResult:
        """Say ``text`` to the user with a grant."""
        return await speak(self.grants, self.append, cid, grant_id, text)

    async def advise(self, cid: str, reason: str) -> tuple[bool, str]:
        """Ask the LLM, with the controller template and the context, whether to speak."""
        assert self.chat is not None
        question = self.prompts.render("controller", conversation_id=cid, reason=reason)
        budget = await self.chat.prompt_budget(1500)  # what fits the server's context beside the reply
        context = await self.prompt(cid, budget, reason)
        messages = [{"role": "system", "content": question}]
        messages += [{"role": "user", "content": m.content} for m in context.messages[1:]]
        return parse_verdict(await self.chat.complete(messages))

    async def narrate(self, grant: Grant) -> None:
        """The built-in narrator: stream the LLM's reply as narrator.delta, then say it."""
        assert self.chat is not None
        cid = grant.conversation_id
        try:
            budget = await self.chat.prompt_budget(self.llm.narrator_budget_tokens)
            prompt = await self.prompt(cid, budget, grant.reason)
            parts: list[str] = []
            async for delta in self.chat.stream([{"role": m.role, "content": m.content} for m in prompt.messages]):
                self.notify(cid, "narrator.delta", _delta(cid, grant.grant_id, len(parts), delta))
                parts.append(delta)
            text = "".join(parts).strip()
            if text:
                await self.say(cid, grant.grant_id, text)
        except (LLMError, TimeoutError, OSError, SidecarError) as exc:
            log.warning("narrator.failed", conversation_id=cid, error=str(exc))
        except Exception:  # a bug: this turn is lost, the daemon is not
            self.fault("narrator")
            log.exception("narrator.crashed", conversation_id=cid)


def _delta(cid: str, grant_id: str, index: int, delta: str) -> Callable[[int], msgspec.Struct]:
    """The ``narrator.delta`` params for each subscription, as :meth:`Hub.notify` asks."""

    def params(subscription: int) -> NarratorDeltaParams:
        return NarratorDeltaParams(
            subscription=subscription, conversation_id=cid, grant_id=grant_id, index=index, delta=delta
        )

    return params
