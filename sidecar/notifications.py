"""What the daemon pushes: one Struct per notification's params.

``rpc.discover`` lists them under ``x-notifications`` (and the reference prints them) from
these definitions; the daemon builds ``sys.shutdown`` from its Struct, and the tests hold every
other notification a real daemon sends against its Struct, so the description cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from sidecar.log.events import Event

SubscriptionId = Annotated[int, Meta(description="The id log.subscribe answered with.")]
ResumeFrom = Annotated[dict[str, int], Meta(description="Per conversation, the seq of the first event not delivered.")]
TheirConversation = Annotated[str, Meta(description="The subscription's conversation, when it named one.")]
ResumeSeq = Annotated[int, Meta(description="The from_seq to subscribe again with, for that conversation.")]


class LogEventParams(msgspec.Struct, kw_only=True):
    """An event for a subscription: the replay from ``from_seq`` first, then live ones, in seq
    order per conversation with no gap and no repeat."""

    subscription: SubscriptionId
    event: Event


class LogOverflowParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A subscription ended: its client fell more than ``[server] subscriber_queue`` events
    behind ("overflow"), or its replay met a log it could not read ("error"). Subscribe again
    from ``resume_from`` to miss nothing."""

    subscription: SubscriptionId
    resume_from: ResumeFrom
    reason: Literal["overflow", "error"]
    conversation_id: TheirConversation | UnsetType = UNSET
    from_seq: ResumeSeq | UnsetType = UNSET


class NarratorDeltaParams(msgspec.Struct, kw_only=True):
    """A piece of the built-in narrator's reply as the LLM streams it (``[llm] narrator =
    true``), to subscribers of the conversation; the whole reply follows as a
    ``narrator.message`` event."""

    subscription: SubscriptionId
    conversation_id: str
    grant_id: Annotated[str, Meta(description="The speak grant this reply is spoken under.")]
    index: Annotated[int, Meta(ge=0, description="0 for the first piece of a reply, then 1, 2, ...")]
    delta: str


class SysShutdownParams(msgspec.Struct, kw_only=True):
    """The daemon is stopping: sent once to each connection with live subscriptions, before it
    closes. Reconnect, and subscribe again from the last seq seen."""

    reason: str


_EXAMPLE_EVENT = {
    "id": "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b",
    "seq": 7,
    "timestamp": "2026-11-23T10:00:00.123456Z",
    "conversation_id": "c1",
    "type": "agent.progress",
    "visibility": "status",
    "level": "action",
    "agent_id": "indexer",
    "caused_by": [],
    "data": {"pct": 40},
}

# Each notification: its params Struct, and the params of a typical one (checked against it).
NOTIFICATIONS: dict[str, tuple[type[msgspec.Struct], dict[str, Any]]] = {
    "log.event": (LogEventParams, {"subscription": 1, "event": _EXAMPLE_EVENT}),
    "log.overflow": (
        LogOverflowParams,
        {
            "subscription": 1,
            "resume_from": {"c1": 1042},
            "reason": "overflow",
            "conversation_id": "c1",
            "from_seq": 1042,
        },
    ),
    "narrator.delta": (
        NarratorDeltaParams,
        {
            "subscription": 1,
            "conversation_id": "c1",
            "grant_id": "5f0c6a1e-2b7d-4c8e-9f10-a1b2c3d4e5f6",
            "index": 0,
            "delta": "The build ",
        },
    ),
    "sys.shutdown": (SysShutdownParams, {"reason": "daemon stopping"}),
}
