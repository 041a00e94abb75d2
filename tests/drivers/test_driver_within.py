"""drivers.base.within, the light per-request time limit: same contract as asyncio.timeout."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import within


async def answer_after(event: asyncio.Event, value: int) -> int:
    await event.wait()
    return value


async def test_a_timely_answer_is_returned_and_leaves_no_cancel_behind() -> None:
    event = asyncio.Event()
    event.set()
    assert await within(5, answer_after(event, 7)) == 7
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no stray cancellation arrives later


async def test_no_answer_is_a_timeout_and_the_task_goes_on() -> None:
    with pytest.raises(TimeoutError):
        await within(0.02, answer_after(asyncio.Event(), 1))
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.03)  # the expired timer does not cancel anything later


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    started = asyncio.Event()

    async def waiter() -> int:
        started.set()
        return await within(10, answer_after(asyncio.Event(), 1))

    task = asyncio.create_task(waiter())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_result_that_swallowed_our_cancel_stands() -> None:
    async def stubborn() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # a library that swallows the cancel (3.11 wait_for can)
            return 5
        return 0

    assert await within(0.02, stubborn()) == 5
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)
