"""A clock that runs X times faster than real time, for `heatrec simulate --speed X`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class ScaledClock:
    """Wall and monotonic time advance `speed` seconds per real second, from the moment of creation."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive (got {speed})")
        self.speed = speed
        self._start_wall = start or datetime.now(UTC)
        self._start_mono = time.monotonic()

    def now(self) -> datetime:
        """Start time plus scaled elapsed time, UTC."""
        return self._start_wall + timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        """Scaled seconds since creation."""
        return (time.monotonic() - self._start_mono) * self.speed
