"""Running: long-lived parts start in order on an AsyncExitStack and stop in reverse; a failure is noticed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from service.tasks import Running


async def _forever(name: str, log: list[str]) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        log.append(f"stop {name}")


async def test_parts_stop_in_reverse_order_of_their_start() -> None:
    log: list[str] = []
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        running = Running(stack)
        running.start("writer", _forever("writer", log))
        running.start_together([("d1", _forever("d1", log)), ("d2", _forever("d2", log))])
        running.start("control", _forever("control", log))
        stop.set()
        assert await running.until(stop) is None
    assert log[0] == "stop control" and set(log[1:3]) == {"stop d1", "stop d2"} and log[3] == "stop writer"


async def test_a_failing_part_is_returned_and_one_that_just_returns_is_not() -> None:
    async def nothing_to_do() -> None:
        return None

    async def broken() -> None:
        await asyncio.sleep(0)
        raise OSError("disk gone")

    log: list[str] = []
    with pytest.raises(OSError, match="disk gone"):
        async with contextlib.AsyncExitStack() as stack:
            running = Running(stack)
            running.start("writer", _forever("writer", log))
            running.start("retention", nothing_to_do())
            running.start("spool", broken())
            failed = await running.until(asyncio.Event())
            assert failed is not None and failed.get_name() == "spool"
            failed.result()
    assert log == ["stop writer"], "the others were stopped while the error propagated"
