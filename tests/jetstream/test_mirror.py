"""A daemon's copy of the stream (sidecar.jetstream.mirror) on the real 3-node cluster, in
process: what it holds in memory while it copies a long stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sidecar.jetstream import mirror
from sidecar.jetstream.config import JetStreamConfig
from sidecar.jetstream.log import JetStreamLog
from sidecar.jetstream.mirror import JetStreamAppender
from sidecar.log.aio import AsyncAppender
from sidecar.log.events import as_new_event
from sidecar.log.store import EventStore

pytestmark = pytest.mark.timeout(120)


def test_a_copy_of_a_long_stream_holds_the_feed_back_to_its_backlog(
    nats_urls: list[str], token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror, "COPY_BACKLOG", 20)
    config = JetStreamConfig(servers=nats_urls, stream=token, replicas=3)

    async def test() -> None:
        source = JetStreamLog(config)
        await source.start()
        news = [as_new_event({"conversation_id": f"c{i % 7}", "type": "a.b", "data": {"i": i}}) for i in range(300)]
        await source.append_batch(news)
        await source.close()
        expected = Counter(new.conversation_id for new in news)

        store = EventStore(str(tmp_path / "copy"))
        copier = AsyncAppender(store)
        highest = 0
        hand_over = copier.append_soon

        def watched(*args: Any, **kw: Any) -> Any:
            nonlocal highest
            highest = max(highest, len(appender._busy))
            return hand_over(*args, **kw)

        copier.append_soon = watched  # type: ignore[method-assign]
        appender = JetStreamAppender(JetStreamLog(config), copier, {}, lambda fault: None, str(tmp_path / "copy"))
        try:
            await appender.start()
            assert store.last_seqs() == dict(expected)  # all of it, every conversation gapless
            assert highest == 20  # the feed waited for room: never more in memory than the backlog
        finally:
            await appender.aclose()
            store.close()

    asyncio.run(test())
