"""The circuit breaker on its own, on a manual clock: no sleeps, every transition by hand."""

from __future__ import annotations

from sidecar.breaker import Breaker
from sidecar.clock import ManualClock


def fail(breaker: Breaker) -> None:
    ticket = breaker.allow()
    assert ticket is not None
    breaker.settle(ticket, False)


def test_opens_after_consecutive_failures_and_backs_off_exponentially() -> None:
    clock = ManualClock()
    breaker = Breaker("t", clock, failures=3, backoff_s=1.0, max_backoff_s=5.0)
    fail(breaker)
    ok = breaker.allow()
    assert ok == "call"
    breaker.settle(ok, True)  # a success in between: the count starts again
    fail(breaker)
    fail(breaker)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open" and breaker.allow() is None and breaker.retry_in() == 1.0

    for backoff in (1.0, 2.0, 4.0, 5.0, 5.0):  # doubles with each failed trial, up to the cap
        clock.advance(backoff - 0.25)
        assert breaker.allow() is None, backoff
        clock.advance(0.25)  # (quarters: exact in binary, so the clock lands on the edge)
        assert breaker.state == "half-open"
        fail(breaker)  # the trial fails: open again, for longer
        assert breaker.state == "open"

    clock.advance(5.0)
    trial = breaker.allow()
    assert trial == "trial"
    breaker.settle(trial, True)
    assert breaker.state == "closed" and breaker.retry_in() == 0.0
    fail(breaker)
    fail(breaker)
    assert breaker.state == "closed"  # the success reset the count...
    fail(breaker)
    assert breaker.retry_in() == 1.0  # ...and the back-off


def test_half_open_lets_exactly_one_trial_through_and_an_abandoned_trial_frees_it() -> None:
    clock = ManualClock()
    breaker = Breaker("t", clock, failures=1, backoff_s=1.0)
    fail(breaker)
    clock.advance(1.0)
    trial = breaker.allow()
    assert trial == "trial"
    assert breaker.allow() is None  # a second caller fails fast while the trial is out
    breaker.settle(trial, None)  # cancelled: no verdict, but the trial slot is free again
    again = breaker.allow()
    assert again == "trial"
    breaker.settle(again, True)
    assert breaker.allow() == "call"


def test_a_late_ordinary_call_does_not_free_the_trial() -> None:
    clock = ManualClock()
    breaker = Breaker("t", clock, failures=1, backoff_s=1.0)
    early = breaker.allow()  # allowed while closed, answers late
    fail(breaker)
    clock.advance(1.0)
    trial = breaker.allow()
    assert trial == "trial"
    assert early is not None
    breaker.settle(early, None)
    assert breaker.allow() is None  # the trial is still out
