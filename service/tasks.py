"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[object], retry_s: float = 1.0) -> None:
    """Cancel `task` and wait for it to end, cancelling again if a cancel gets lost.

    Python 3.11's asyncio.wait_for (used inside aiomqtt, asyncua and pymodbus) can swallow a
    cancellation that races with its inner await completing; a task with a retry loop then just
    carries on and a single cancel-then-await would hang forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
