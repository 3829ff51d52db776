"""Registry.call_now: requests answered in place (no task), and the ones it gives back."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from sidecar.errors import NotFoundError
from sidecar.rpc.dispatch import INLINE, NotNow, Registry
from sidecar.rpc.protocol import INVALID_PARAMS, METHOD_NOT_FOUND, Request

reg: Registry[list[str]] = Registry()


class P(msgspec.Struct, forbid_unknown_fields=True):
    n: int = 0


@reg.method("quick", P, int, "answers at once", errors={}, inline=True)
async def quick(p: P, log: list[str]) -> int:
    log.append("quick")
    return p.n + 1


@reg.method("waits", P, int, "suspends: tried in place, then given up", errors={}, inline=True)
async def waits(p: P, log: list[str]) -> int:
    log.append("waits started")
    await anyio.sleep(0)
    log.append("waits resumed")
    return p.n


@reg.method("not_now", P, int, "says it would wait", errors={}, inline=True)
async def not_now(p: P, log: list[str]) -> int:
    log.append(f"inline={INLINE.get()}")
    if INLINE.get():
        raise NotNow
    return 7


@reg.method("missing", P, int, "a handler's own error", errors={-32002: "never there"}, inline=True)
async def missing(p: P, log: list[str]) -> int:
    raise NotFoundError("no such thing")


@reg.method("general", P, int, "not inline: always a task", errors={})
async def general(p: P, log: list[str]) -> int:
    log.append("general")
    return 0


def req(method: str, params: bytes = b"{}") -> Request:
    return Request(method, msgspec.Raw(params), 1)


def test_an_inline_handler_that_does_not_wait_is_answered_in_place() -> None:
    log: list[str] = []
    assert reg.call_now(req("quick", b'{"n": 41}'), log) == {"jsonrpc": "2.0", "id": 1, "result": 42}
    assert log == ["quick"]


def test_one_that_suspends_is_given_back_and_its_rest_never_runs() -> None:
    log: list[str] = []
    assert reg.call_now(req("waits"), log) is None
    assert log == ["waits started"]  # closed where it stopped: it is run again, whole, in a task


def test_not_now_is_given_back_and_the_task_runs_it_without_the_flag() -> None:
    log: list[str] = []
    assert reg.call_now(req("not_now"), log) is None
    assert anyio.run(reg.call, req("not_now"), log)["result"] == 7
    assert log == ["inline=True", "inline=False"]


def test_errors_are_answered_in_place_whatever_the_method() -> None:
    log: list[str] = []
    assert reg.call_now(req("missing"), log)["error"]["code"] == -32002
    assert reg.call_now(req("nope"), log)["error"]["code"] == METHOD_NOT_FOUND
    assert reg.call_now(req("quick", b'{"n": "x"}'), log)["error"]["code"] == INVALID_PARAMS
    assert reg.call_now(req("general", b'{"n": "x"}'), log) is None  # not inline: the task words it
    assert log == []


def test_a_method_that_is_not_inline_is_never_tried() -> None:
    log: list[str] = []
    assert reg.call_now(req("general"), log) is None
    assert log == []


@pytest.mark.parametrize("method", ["quick", "waits", "not_now", "missing", "general"])
def test_the_task_path_answers_every_one(method: str) -> None:
    reply = anyio.run(reg.call, req(method), [])
    assert ("result" in reply) != ("error" in reply)


def test_in_a_running_loop_without_a_task_a_handler_that_waits_is_given_back() -> None:
    """As in the daemon: call_now runs in a transport's callback, on the loop, in no task."""
    import asyncio

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[object]] = loop.create_future()
        log: list[str] = []
        loop.call_soon(lambda: done.set_result([reg.call_now(req("waits"), log), reg.call_now(req("quick"), log)]))
        return await done

    given_back, answered = asyncio.run(main())
    assert given_back is None
    assert answered == {"jsonrpc": "2.0", "id": 1, "result": 1}
