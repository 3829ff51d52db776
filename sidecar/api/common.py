"""The one registry every namespace module adds its methods to, and what they share: the
wording of their errors, example ids, small Structs, and running a read off the event loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import anyio
import msgspec

from sidecar.api.session import Session
from sidecar.log.events import ConversationId
from sidecar.notifications import NOTIFICATIONS
from sidecar.rpc.dispatch import INLINE, NotNow, Registry

registry: Registry[Session] = Registry()
for _name, (_params, _example) in NOTIFICATIONS.items():
    registry.notification(_name, _params, example=_example)

# When each server-defined error happens (the registrations' ``errors=``; see ERROR_CODES).
STORAGE = "the disk refused (full, I/O error) or the file is damaged or not ours; nothing was written"
UNREADABLE = "the conversation's log cannot be read (damaged, or not a regular file)"
GRAPH_UNUSABLE = "tasks.graph.json cannot be used (damaged or not ours) until a valid file is in its place"
TOO_BIG = "the answer would be larger than [server] max_reply_bytes"
SEARCH_OFF = "search is off in this daemon ([search] enabled = false)"
CID = "c1"
EVENT_ID = "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b"

T = TypeVar("T")


class Ok(msgspec.Struct, kw_only=True):
    ok: bool = True


class ConversationRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """A read that may take a while (a scan, a file), off the event loop."""
    if INLINE.get():  # tried in place (an inline method): go where waiting is allowed
        raise NotNow
    return await anyio.to_thread.run_sync(fn, *args)


async def quick_read(fn: Callable[..., T], *args: object) -> T:
    """A small read (tail, get) runs right here when no writer holds the lock, since a
    trip to a worker thread costs more than the read; otherwise it waits in a thread."""
    try:
        return fn(*args, wait=False)
    except BlockingIOError:
        return await in_thread(functools.partial(fn, *args, wait=True))
