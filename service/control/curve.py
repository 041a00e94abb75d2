"""Outdoor compensation curve: piecewise linear between breakpoints, flat outside, clamped to min/max."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


class CompensationCurve:
    """Supply target as a function of outdoor temperature."""

    def __init__(self, points: Sequence[tuple[float, float]], low: float, high: float) -> None:
        if len(points) < 2:
            raise ValueError("a compensation curve needs at least two breakpoints")
        xs = [x for x, _ in points]
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError("curve breakpoints must have strictly ascending outdoor temperatures")
        if low > high:
            raise ValueError(f"curve minimum {low} is above its maximum {high}")
        self._points = list(points)
        self.low = low
        self.high = high

    def __call__(self, outdoor: float) -> float:
        """Target at this outdoor temperature, °C."""
        pts = self._points
        if outdoor <= pts[0][0]:
            value = pts[0][1]
        elif outdoor >= pts[-1][0]:
            value = pts[-1][1]
        else:
            value = pts[-1][1]
            for (x0, y0), (x1, y1) in itertools.pairwise(pts):
                if x0 <= outdoor <= x1:
                    value = y0 + (y1 - y0) * (outdoor - x0) / (x1 - x0)
                    break
        return min(max(value, self.low), self.high)


def ramp(current: float, goal: float, max_step: float) -> float:
    """Move current toward goal by at most max_step."""
    if goal > current + max_step:
        return current + max_step
    if goal < current - max_step:
        return current - max_step
    return goal
