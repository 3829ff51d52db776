"""The flush-when-idle thread: what arrives while a batch is at work goes together next."""

from __future__ import annotations

import threading

import pytest

from sidecar.batcher import Batcher


def test_items_queued_while_a_batch_works_go_together_in_order() -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def work(batch: list[int]) -> None:
        batches.append(batch)
        if len(batches) == 1:
            started.set()
            release.wait(10)

    batcher: Batcher[int] = Batcher(work, "test-batcher")
    batcher.put([1])
    assert started.wait(10)  # the first batch is at work...
    for n in range(2, 6):
        batcher.put([n])  # ...so these wait, together
    assert batcher.depth() == 4
    release.set()
    batcher.stop()  # finishes what is queued
    assert batches == [[1], [2, 3, 4, 5]]


def test_a_stopped_batcher_refuses_work_and_says_so() -> None:
    batcher: Batcher[int] = Batcher(lambda batch: None, "test-batcher")
    batcher.stop()
    assert batcher.stopped
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.put([1])
