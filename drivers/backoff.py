"""Capped, jittered exponential backoff for reconnect attempts."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double from `initial` up to `cap`, each randomised so fleets do not reconnect in step.

    The n-th delay (n from 0) is drawn uniformly from [(1 - jitter) * d, d] with
    d = min(cap, initial * factor**n): jitter spreads reconnect storms after a shared outage,
    and the cap keeps recovery prompt once the peer is back.
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0, *, factor: float = 2.0,
                 jitter: float = 0.5, rand: Callable[[], float] = random.random) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"need 0 < initial <= cap (got initial={initial}, cap={cap})")
        if factor < 1:
            raise ValueError(f"factor must be >= 1 (got {factor})")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1] (got {jitter})")
        self.initial, self.cap, self.factor, self.jitter = initial, cap, factor, jitter
        self._rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; advances the attempt count."""
        # The exponent is bounded so a device that stays dead for weeks cannot overflow it.
        base = min(self.cap, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rand())

    def reset(self) -> None:
        """Start again from `initial` (after a connection proved healthy)."""
        self.attempt = 0
