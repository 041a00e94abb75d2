"""The one path to writes: priorities safety > operator > automatic, then envelope and rate clamps."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Priority(enum.IntEnum):
    """Who asks; a higher value wins."""

    AUTOMATIC = 0
    OPERATOR = 1
    SAFETY = 2


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a point may be set to: range and largest change per second (None = unlimited)."""

    low: float
    high: float
    max_rate: float | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A value asked for one point."""

    point: str
    value: float
    priority: Priority
    source: str


@dataclass(frozen=True, slots=True)
class Cap:
    """An upper bound a safety function puts on a point (the IT-cooling limit)."""

    point: str
    high: float
    source: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What the arbiter lets through for one point, and what shaped it."""

    point: str
    value: float
    winner: str  # source of the request that won
    limited_by: str | None  # "cap:<source>", "envelope", "rate" or None


class Arbiter:
    """Resolves competing requests per point; remembers the last value per point for the rate clamp."""

    def __init__(self, envelopes: dict[str, Envelope]) -> None:
        self.envelopes = envelopes
        self.last: dict[str, float] = {}

    def forget(self, point: str) -> None:
        """Drop the rate memory (after writes stopped, the device may hold anything)."""
        self.last.pop(point, None)

    def seed(self, point: str, value: float) -> None:
        """Start the rate clamp from a value read from the device."""
        self.last.setdefault(point, value)

    def resolve(self, requests: Iterable[Request], caps: Iterable[Cap], dt: float) -> dict[str, Decision]:
        """One decision per requested point."""
        best: dict[str, Request] = {}
        for r in requests:
            cur = best.get(r.point)
            if cur is None or r.priority > cur.priority:
                best[r.point] = r
        bounds: dict[str, Cap] = {}
        for c in caps:
            if c.point not in bounds or c.high < bounds[c.point].high:
                bounds[c.point] = c
        out: dict[str, Decision] = {}
        for point, req in best.items():
            value, limited = req.value, None
            cap = bounds.get(point)
            if cap is not None and value > cap.high and req.priority < Priority.SAFETY:
                value, limited = cap.high, f"cap:{cap.source}"
            env = self.envelopes.get(point)
            if env is not None:
                clamped = min(max(value, env.low), env.high)
                if clamped != value:
                    value, limited = clamped, limited or "envelope"
                prev = self.last.get(point)
                if env.max_rate is not None and prev is not None and dt > 0:
                    step = env.max_rate * dt
                    ramped = min(max(value, prev - step), prev + step)
                    if ramped != value:
                        value, limited = ramped, limited or "rate"
            self.last[point] = value
            out[point] = Decision(point, value, req.source, limited)
        return out
