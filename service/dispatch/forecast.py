"""Forecasts of IT heat and network demand from history: hour-of-week profiles and a heating-degree regression.

Deliberately simple: IT load is flat with a weekly rhythm (mean by hour of week); network demand is a base
plus a slope per heating degree (base temperature 17 °C) plus the mean residual of the hour of day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from service.errors import InvalidRequest

HEATING_BASE_C = 17.0


def _hour_of_week(t: datetime) -> int:
    return t.weekday() * 24 + t.hour


@dataclass(frozen=True)
class HourOfWeekProfile:
    """Mean of the history by hour of week; hours without history take the overall mean."""

    means: tuple[float, ...]

    def at(self, t: datetime) -> float:
        """The forecast for the hour containing t."""
        return self.means[_hour_of_week(t)]


def fit_profile(times: Sequence[datetime], values: Sequence[float]) -> HourOfWeekProfile:
    """Fit an hour-of-week profile."""
    if len(times) != len(values) or not times:
        raise InvalidRequest("a profile needs the same number (at least one) of times and values")
    sums, counts = [0.0] * 168, [0] * 168
    for t, v in zip(times, values, strict=True):
        h = _hour_of_week(t)
        sums[h] += v
        counts[h] += 1
    overall = sum(values) / len(values)
    return HourOfWeekProfile(tuple(s / c if c else overall for s, c in zip(sums, counts, strict=True)))


@dataclass(frozen=True)
class DemandModel:
    """demand = base + slope * max(0, 17 °C - outdoor) + hour-of-day residual, at least 0."""

    base_kw: float
    slope_kw_per_k: float
    hourly_kw: tuple[float, ...]

    def at(self, t: datetime, outdoor_temperature: float) -> float:
        """Forecast demand, kW."""
        degrees = max(HEATING_BASE_C - outdoor_temperature, 0.0)
        return max(self.base_kw + self.slope_kw_per_k * degrees + self.hourly_kw[t.hour], 0.0)


def fit_demand(times: Sequence[datetime], outdoor: Sequence[float], demand: Sequence[float]) -> DemandModel:
    """Least-squares base and slope on heating degrees, then the mean residual by hour of day."""
    n = len(times)
    if n < 2 or len(outdoor) != n or len(demand) != n:
        raise InvalidRequest("a demand model needs at least 2 samples of time, outdoor temperature and demand")
    degrees = [max(HEATING_BASE_C - t, 0.0) for t in outdoor]
    mean_x, mean_y = sum(degrees) / n, sum(demand) / n
    var = sum((x - mean_x) ** 2 for x in degrees)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(degrees, demand, strict=True)) / var if var else 0.0
    base = mean_y - slope * mean_x
    sums, counts = [0.0] * 24, [0] * 24
    for t, x, y in zip(times, degrees, demand, strict=True):
        sums[t.hour] += y - (base + slope * x)
        counts[t.hour] += 1
    return DemandModel(base, slope, tuple(s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)))
