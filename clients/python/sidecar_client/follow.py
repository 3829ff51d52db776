"""Follow a conversation across daemon restarts, with no gap and no repeat."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any

from sidecar_client.client import Client, NotificationHandler
from sidecar_client.errors import DaemonUnavailable, RpcError

BUSY = -32001  # log.subscribe with a group: another connection is its live subscriber
OVERFLOW = -32005  # the daemon dropped the subscription for falling behind


def follow(
    conversation_id: str,
    *,
    from_seq: int | None = None,
    group: str | None = None,
    socket_path: str | None = None,
    give_up_after_s: float = 60.0,
    on_notification: NotificationHandler | None = None,
    **filters: Any,
) -> Generator[dict[str, Any], None, None]:
    """Every event of ``conversation_id`` from ``from_seq`` (default 1) on, forever.

    When the daemon restarts (or drops us for falling behind), this reconnects and
    subscribes again from the seq after the last event it yielded, so nothing is missed
    and nothing repeats. It gives up with :class:`DaemonUnavailable` when no daemon has
    answered for ``give_up_after_s``. ``filters`` are those of ``log.query`` (e.g. ``types``).
    Only events are yielded; ``on_notification(method, params)`` is told the other
    notifications (``narrator.delta``..., see :meth:`Client.subscribe`), the
    ``log.overflow`` and ``sys.shutdown`` that make it resubscribe included.

    **With a** ``group`` (a durable consumer group, CONTRACT §14), the position lives in the
    daemon, so a consumer that stops, crashes or restarts goes on where the group left off:

    - Each subscription names the group, and the daemon replays from just after the group's
      acked seq. ``from_seq`` only places a *new* group (one that has never acked this
      conversation); a group that has acked ignores it.
    - Acks are at-least-once: an event is acked (``log.ack``, one call per event) when you ask
      for the next one, i.e. when the generator is resumed after yielding it. An event whose
      processing raised, or after which you stopped (``break``, ``close()``), is *not* acked: the
      group's next consumer gets it again; every event before it is acked and never repeats.
      (To count the last one as done before stopping, ack it yourself:
      ``client.call("log.ack", {"group", "conversation_id", "seq"})``.)
    - The daemon keeps acks on disk within a second. An ack that could not be sent (the daemon
      went away) is sent again on the next connection before resubscribing; and within one
      ``follow()`` no event is yielded twice, even if the daemon lost its last acks (kill -9).
    - At most one live subscriber per group and conversation: while another connection holds
      the group, ``log.subscribe`` answers -32001 and this waits and tries again (backing off
      as for a restart) until that one goes away, raising that :class:`RpcError` after
      ``give_up_after_s``.
    """
    if group is None:
        yield from _follow_plain(conversation_id, from_seq or 1, socket_path, give_up_after_s, on_notification, filters)
    else:
        yield from _follow_group(
            conversation_id, group, from_seq, socket_path, give_up_after_s, on_notification, filters
        )


class _Backoff:
    """Waits between attempts, 50 ms doubling to 1 s, until ``give_up_after_s`` of failures."""

    def __init__(self, give_up_after_s: float) -> None:
        self.give_up_after_s = give_up_after_s
        self.reset()

    def reset(self) -> None:
        self.since: float | None = None
        self.pause = 0.05

    def wait(self) -> bool:
        """Sleep before the next attempt; False once the failures have lasted too long."""
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since > self.give_up_after_s:
            return False
        time.sleep(self.pause)
        self.pause = min(self.pause * 2, 1.0)
        return True


def _unavailable(give_up_after_s: float) -> DaemonUnavailable:
    return DaemonUnavailable(f"no sidecar daemon answered for {give_up_after_s:.0f} s")


def _follow_plain(
    conversation_id: str,
    from_seq: int,
    socket_path: str | None,
    give_up_after_s: float,
    on_notification: NotificationHandler | None,
    filters: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    next_seq = from_seq
    backoff = _Backoff(give_up_after_s)
    while True:
        try:
            with Client(socket_path) as client:
                events = client.subscribe(
                    {**filters, "conversation_id": conversation_id, "from_seq": next_seq},
                    on_notification=on_notification,
                )
                backoff.reset()
                for event in events:
                    next_seq = event["seq"] + 1
                    yield event
        except RpcError as exc:
            if exc.code != OVERFLOW:  # anything but "you fell behind" is the caller's problem
                raise
        except ConnectionError:
            if not backoff.wait():  # the daemon is restarting: try again, a little later each time
                raise _unavailable(give_up_after_s) from None


def _follow_group(
    conversation_id: str,
    group: str,
    from_seq: int | None,
    socket_path: str | None,
    give_up_after_s: float,
    on_notification: NotificationHandler | None,
    filters: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    last_yielded = 0  # within this follow(), never yield a seq twice
    acked = 0  # the highest seq the daemon has confirmed for us
    backoff = _Backoff(give_up_after_s)
    while True:
        try:
            with Client(socket_path) as client:

                def ack(seq: int) -> None:
                    nonlocal acked
                    client.log_ack(group=group, conversation_id=conversation_id, seq=seq)
                    acked = max(acked, seq)

                if last_yielded > acked:  # resumed past it, but the ack did not get through
                    ack(last_yielded)
                params: dict[str, Any] = {**filters, "conversation_id": conversation_id, "group": group}
                if from_seq is not None and acked == 0:
                    # Until our first ack the group may still be new (the daemon keeps no position
                    # for it), so each resubscription places it again; once acked, it is ignored.
                    params["from_seq"] = max(from_seq, last_yielded + 1)
                try:
                    events = client.subscribe(params, on_notification=on_notification)
                except RpcError as exc:
                    if exc.code != BUSY:
                        raise
                    if not backoff.wait():  # another consumer of the group is live: wait for it
                        raise
                    continue
                backoff.reset()
                for event in events:
                    seq = event["seq"]
                    if seq <= last_yielded:
                        continue  # the daemon lost an ack of ours (kill -9 within the second)
                    last_yielded = seq
                    yield event
                    ack(seq)  # the caller asked for the next one: this one is done
        except RpcError as exc:
            if exc.code != OVERFLOW:
                raise
        except ConnectionError:
            if not backoff.wait():
                raise _unavailable(give_up_after_s) from None
