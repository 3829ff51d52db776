"""Follow a conversation across daemon restarts, with no gap and no repeat."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from sidecar_client.client import Client, NotificationHandler
from sidecar_client.errors import DaemonUnavailable, RpcError


def follow(
    conversation_id: str,
    *,
    from_seq: int = 1,
    socket_path: str | None = None,
    give_up_after_s: float = 60.0,
    on_notification: NotificationHandler | None = None,
    **filters: Any,
) -> Iterator[dict[str, Any]]:
    """Every event of ``conversation_id`` from ``from_seq`` on, forever.

    When the daemon restarts (or drops us for falling behind), this reconnects and
    subscribes again from the seq after the last event it yielded, so nothing is missed
    and nothing repeats. It gives up with :class:`DaemonUnavailable` when no daemon has
    answered for ``give_up_after_s``. ``filters`` are those of ``log.query`` (e.g. ``types``).
    Only events are yielded; ``on_notification(method, params)`` is told the other
    notifications (``narrator.delta``..., see :meth:`Client.subscribe`), the
    ``log.overflow`` and ``sys.shutdown`` that make it resubscribe included.
    """
    next_seq = from_seq
    down_since: float | None = None
    pause = 0.05
    while True:
        try:
            with Client(socket_path) as client:
                events = client.subscribe(
                    {**filters, "conversation_id": conversation_id, "from_seq": next_seq},
                    on_notification=on_notification,
                )
                down_since, pause = None, 0.05
                for event in events:
                    next_seq = event["seq"] + 1
                    yield event
        except RpcError as exc:
            if exc.code != -32005:  # anything but "you fell behind" is the caller's problem
                raise
        except ConnectionError:
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > give_up_after_s:
                raise DaemonUnavailable(f"no sidecar daemon answered for {give_up_after_s:.0f} s") from None
            time.sleep(pause)  # the daemon is restarting: try again, a little later each time
            pause = min(pause * 2, 1.0)
