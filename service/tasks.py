"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


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


def raise_if_stopping(err: BaseException) -> None:
    """Re-raise CancelledError when the running task is being cancelled, whatever error replaced it.

    A reconnect loop catches its client's errors; but a cancel that lands inside `async with client`
    makes the client's `__aexit__` disconnect, and when the broker is gone that times out with the
    client's own error (aiomqtt's MqttError) in place of the CancelledError. Caught as an outage, the stop
    would be lost and the loop would reconnect for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from err


class Running:
    """Long-lived tasks started in dependency order on an AsyncExitStack, stopped in reverse when it unwinds."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, name: str, coro: Coroutine[Any, Any, Any],
              stop: Callable[[asyncio.Task[Any]], Awaitable[None]] | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a task; on unwind call `stop(task)` (default: cancel it and wait)."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        self._stack.push_async_callback(self._stopping, [task], stop)
        return task

    def start_together(self, named: list[tuple[str, Coroutine[Any, Any, Any]]]) -> list[asyncio.Task[Any]]:
        """Tasks of one kind (the drivers): started together and stopped together, not one after another."""
        tasks = [asyncio.create_task(c, name=n) for n, c in named]
        self.tasks += tasks
        self._stack.push_async_callback(self._stopping, tasks, None)
        return tasks

    async def until(self, stop: asyncio.Event) -> asyncio.Task[Any] | None:
        """Wait for `stop`, or for a task to fail: that task, or None when stopped.

        A task that simply returns (a part with nothing to do, e.g. retention when unset) is no failure.
        """
        stopper = asyncio.create_task(stop.wait())
        waiting: set[asyncio.Task[Any]] = {stopper, *self.tasks}
        try:
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    return None
                failed = [t for t in done if t.cancelled() or t.exception() is not None]
                if failed:
                    return failed[0]
        finally:
            stopper.cancel()

    @staticmethod
    async def _stopping(tasks: list[asyncio.Task[Any]],
                        stop: Callable[[asyncio.Task[Any]], Awaitable[None]] | None) -> None:
        # Each part's failure is logged, never allowed to keep the parts below it from stopping.
        results = await asyncio.gather(*((stop or cancel_and_wait)(t) for t in tasks), return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("%s ended with an error: %r", task.get_name(), result)
