"""What a handler may use: the daemon's services, and its own connection.

Handlers are typed on :class:`Session`, never on the daemon: they cannot reach the
configuration, other connections or the lifecycle, and a test can hand them anything that
has these few members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.context.service import ContextService
from sidecar.controller.loop import Controller
from sidecar.log.aio import Appender
from sidecar.log.groups import Positions
from sidecar.log.store import EventStore
from sidecar.narrator.service import Narrator
from sidecar.playbooks.library import PlaybookLibrary
from sidecar.search.service import SearchService
from sidecar.summary.cache import SummaryCache
from sidecar.tasks.service import TaskService
from sidecar.tokens import TokenCounter

if TYPE_CHECKING:  # defined beside the methods that answer with them
    from sidecar.api.log import SubscribeParams
    from sidecar.api.sys import Health, Stats


@dataclass(frozen=True, slots=True)
class Services:
    """The daemon's services, made once at start-up and shared by every session."""

    store: EventStore  # reads: the log's files, or this daemon's copy of a shared stream
    appender: Appender  # every append (the storage seam: the file backend's or jetstream's)
    tasks: TaskService
    summaries: SummaryCache
    context: ContextService
    counter: TokenCounter
    controller: Controller
    narrator: Narrator
    playbooks: PlaybookLibrary
    groups: Positions  # consumer groups' acked positions
    search: SearchService  # log.search, and the context's related layer
    health: Callable[[], Health]
    stats: Callable[[], Stats]


class Session(Protocol):
    """One connection as its handlers see it."""

    @property
    def services(self) -> Services: ...

    @property
    def stopping(self) -> bool:
        """The daemon is draining: finish what is asked, take nothing new on the fast path."""
        ...

    def subscribe(self, params: SubscribeParams) -> int:
        """Start a subscription on this connection; its id."""
        ...

    def unsubscribe(self, sub_id: int) -> bool:
        """End one of this connection's subscriptions; whether it had it."""
        ...

    def answered(self, reply: bytes | None) -> None:
        """A fast-path request is done: queue its reply (if any) and free its slot."""
        ...
