"""Injected time: the real clock in production, a virtual clock that tests advance by hand."""

from __future__ import annotations

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


class RealClock:
    """The system clock."""

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
