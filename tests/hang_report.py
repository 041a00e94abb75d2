"""Before pytest-timeout fails a hung test, print where each asyncio task of its running loop waits.

pytest-timeout dumps the threads' stacks, and for an async test they all show the event loop in
select(): the awaits that never finish are in the tasks, which only the loop knows. A timer thread
finds the running loop a little before the timeout and prints every task's stack to stderr, which
pytest shows with the failure.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

LEAD_S = 15.0  # how long before the timeout the tasks are printed


def _report() -> None:
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    for loop in loops:
        try:
            tasks = list(asyncio.all_tasks(loop))  # from another thread: a snapshot, good enough for a report
        except RuntimeError:
            continue
        print(f"\n+++ {len(tasks)} asyncio tasks of a running loop, {LEAD_S:.0f} s before the timeout +++",
              file=sys.stderr)
        for task in tasks:
            try:
                task.print_stack(limit=12, file=sys.stderr)
            except Exception as err:  # a task changing under us: skip it, the report is best effort
                print(f"({task.get_name()}: {err!r})", file=sys.stderr)


def start(timeout_s: float) -> threading.Timer | None:
    """A daemon timer that reports the tasks LEAD_S before `timeout_s`; None for short timeouts."""
    if timeout_s <= LEAD_S * 2:
        return None
    timer = threading.Timer(timeout_s - LEAD_S, _report)
    timer.daemon = True
    timer.start()
    return timer
