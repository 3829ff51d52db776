"""The ``narrator`` and ``controller`` prompts, built by the daemon's ``narrator.prompt``.

MCP prompt messages have only the roles ``user`` and ``assistant``: the daemon's system
message comes first, as a user message, so nothing of it is lost.
"""

from __future__ import annotations

from typing import Any

import mcp.types as types

from sidecar.mcp.link import DaemonLink
from sidecar.narrator.templates import PromptLibrary

DEFAULT_BUDGET_TOKENS = 3000
DEFAULT_REASON = "an MCP client asked"

_CONVERSATION = types.PromptArgument(name="conversation_id", description="the conversation", required=True)
_BUDGET = types.PromptArgument(
    name="budget_tokens",
    description=f"the most tokens the prompt may take (at least 16; default {DEFAULT_BUDGET_TOKENS})",
    required=False,
)
_REASON = types.PromptArgument(name="reason", description="why it is being considered now", required=False)

PROMPTS = [
    types.Prompt(
        name="narrator",
        title="Narrator",
        description="The narrator's instructions and the conversation's context (summary, recent events, "
        "tasks), within the budget: what to read before saying something to the user.",
        arguments=[_CONVERSATION, _BUDGET, _REASON],
    ),
    types.Prompt(
        name="controller",
        title="Controller",
        description="Whether the narrator should speak now: the controller's question (answer with one JSON "
        "object) and the conversation's context, within the budget.",
        arguments=[_CONVERSATION, _BUDGET, _REASON],
    ),
]


class BadArguments(ValueError):
    """Prompt arguments that cannot be used (said in words)."""


def _arguments(name: str, arguments: dict[str, str] | None) -> tuple[str, int, str | None]:
    args = arguments or {}
    cid = args.get("conversation_id")
    if not cid:
        raise BadArguments(f"prompt {name!r} needs the argument conversation_id")
    raw = args.get("budget_tokens") or str(DEFAULT_BUDGET_TOKENS)
    try:
        budget = int(raw)
    except ValueError:
        raise BadArguments(f"budget_tokens must be a whole number of tokens, not {raw!r}") from None
    return cid, budget, args.get("reason") or None


def _message(text: str) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=types.TextContent(text=text))


def _role(role: str) -> Any:
    return "assistant" if role == "assistant" else "user"


async def get(link: DaemonLink, name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
    """One prompt, rendered from the daemon's state (RpcError and DaemonDown pass through)."""
    if name not in ("narrator", "controller"):
        raise BadArguments(f"no prompt {name!r}: there are narrator and controller")
    cid, budget, reason = _arguments(name, arguments)
    params: dict[str, Any] = {"conversation_id": cid, "budget_tokens": budget}
    if reason is not None:
        params["reason"] = reason
    built = await link.call("narrator.prompt", params)
    if name == "narrator":
        messages = [
            types.PromptMessage(role=_role(m["role"]), content=types.TextContent(text=m["content"]))
            for m in built["messages"]
        ]
        return types.GetPromptResult(
            description=f"narrator prompt for {cid} ({built['tokens']} tokens)", messages=messages
        )
    # The controller template is the daemon's shipped one (an override in the daemon's data
    # directory is not visible from here); the context after it is as the advisor sees it.
    question = PromptLibrary(None).render("controller", conversation_id=cid, reason=reason or DEFAULT_REASON)
    messages = [_message(question)] + [_message(m["content"]) for m in built["messages"][1:]]
    return types.GetPromptResult(description=f"controller prompt for {cid}", messages=messages)
