"""Injected time: the real clock in production, a virtual clock that tests advance by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where every component asks for the time, so tests can run on virtual time."""

    def now(self) -> datetime:
        """Current wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...


class SleepingClock(Clock, Protocol):
    """A clock that can also wait: what the drivers' polling, backoff and staleness run on."""

    async def sleep(self, seconds: float) -> None:
        """Return after `seconds` on this clock."""
        ...


class RealClock:
    """The system clock."""

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep."""
        await asyncio.sleep(seconds)

    def now(self) -> datetime:
        """Current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()


class VirtualClock:
    """A clock that only moves when `advance` is called; wall and monotonic time move together."""

    DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        if start.tzinfo is None:
            # A naive start would silently mix local and UTC times downstream.
            raise ValueError("VirtualClock start must be timezone-aware")
        self._start = start.astimezone(UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []  # (wake time, order, future)
        self._order = itertools.count()

    def now(self) -> datetime:
        """Start time plus everything advanced so far."""
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """Seconds advanced since construction."""
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move time forward; going backwards is refused because monotonic time cannot."""
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative time ({seconds} s)")
        self._elapsed += seconds
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            fut = heapq.heappop(self._sleepers)[2]
            if not fut.done():  # a cancelled sleep is simply dropped
                fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Return once `advance` has moved the clock `seconds` on (a non-positive wait only yields)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), fut))
        await fut
