"""Plant models for the plan: the heat store, the heat pumps' COP (calibrated from measurements), dry coolers.

Kept linear where the MILP needs them: the store's standing loss is a fixed share of its content per hour,
the COP is fixed per step (it depends on forecast temperatures, not on the decision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.errors import InvalidRequest

WATER_KWH_PER_M3_K = 4.18 * 998.0 / 3600.0  # cp*rho of water near 60 °C, kWh per m³ and K
KELVIN = 273.15


@dataclass(frozen=True)
class HeatStore:
    """An accumulator tank between the network's return (empty) and supply (full) temperatures."""

    volume_m3: float
    min_temperature: float
    max_temperature: float
    loss_w_per_k: float = 0.0
    ambient_temperature: float = 10.0
    max_charge_kw: float | None = None
    max_discharge_kw: float | None = None

    @property
    def capacity_kwh(self) -> float:
        """Heat held between empty and full."""
        return self.volume_m3 * WATER_KWH_PER_M3_K * (self.max_temperature - self.min_temperature)

    @property
    def full_loss_kw(self) -> float:
        """Standing loss of a full tank."""
        return self.loss_w_per_k * (self.max_temperature - self.ambient_temperature) / 1000.0

    @property
    def loss_per_hour(self) -> float:
        """Share of the content lost per hour: the full tank's loss, scaled to the content.

        Linear in the content (what a MILP can carry); at a full tank it is exact, below it errs high,
        which keeps the plan from overrating storage.
        """
        return self.full_loss_kw / self.capacity_kwh if self.capacity_kwh > 0 else 0.0

    def temperature_at(self, content_kwh: float) -> float:
        """Mean tank temperature for a content (fully mixed view)."""
        share = min(max(content_kwh / self.capacity_kwh, 0.0), 1.0)
        return self.min_temperature + share * (self.max_temperature - self.min_temperature)


def carnot_cop(source_temperature: float, sink_temperature: float) -> float:
    """The ideal COP of a lift from source to sink (°C)."""
    lift = sink_temperature - source_temperature
    if lift <= 0:
        raise InvalidRequest(f"no lift: sink {sink_temperature} °C is not above source {source_temperature} °C")
    return (sink_temperature + KELVIN) / lift


@dataclass(frozen=True)
class CarnotCop:
    """COP = efficiency * Carnot COP of (source + approach) → (sink + approach), capped."""

    efficiency: float
    approach_k: float = 0.0
    max_cop: float = 12.0

    def cop(self, source_temperature: float, sink_temperature: float) -> float:
        """COP at a source and sink temperature, °C."""
        ideal = carnot_cop(source_temperature - self.approach_k, sink_temperature + self.approach_k)
        return min(self.efficiency * ideal, self.max_cop)


@dataclass(frozen=True)
class LinearCop:
    """COP = intercept - slope * lift (K), at least min_cop."""

    intercept: float
    slope: float
    min_cop: float = 1.0

    def cop(self, source_temperature: float, sink_temperature: float) -> float:
        """COP at a source and sink temperature, °C."""
        return max(self.intercept - self.slope * (sink_temperature - source_temperature), self.min_cop)


M = TypeVar("M")


@dataclass(frozen=True)
class Calibration(Generic[M]):
    """A fitted model and how well it fits (root mean square of the COP residuals)."""

    model: M
    rms: float
    samples: int


Sample = tuple[float, float, float]  # (source °C, sink °C, measured COP)


def _usable(samples: Sequence[Sample]) -> list[Sample]:
    usable = [s for s in samples if all(math.isfinite(v) for v in s) and s[1] > s[0] and s[2] > 0]
    if len(usable) < 2:
        raise InvalidRequest(f"COP calibration needs at least 2 measurements with a lift and a COP > 0, "
                             f"got {len(usable)} of {len(samples)}")
    return usable


def calibrate_carnot(samples: Sequence[Sample], approach_k: float = 0.0) -> Calibration[CarnotCop]:
    """Least-squares Carnot efficiency from measured (source, sink, COP): η = Σ COP·c / Σ c²."""
    usable = _usable(samples)
    ideal = [carnot_cop(s - approach_k, k + approach_k) for s, k, _ in usable]
    eta = sum(c * m for c, (_, _, m) in zip(ideal, usable, strict=True)) / sum(c * c for c in ideal)
    model = CarnotCop(eta, approach_k, max_cop=math.inf)
    rms = math.sqrt(sum((model.cop(s, k) - m) ** 2 for s, k, m in usable) / len(usable))
    return Calibration(model, rms, len(usable))


def calibrate_linear(samples: Sequence[Sample]) -> Calibration[LinearCop]:
    """Least-squares line COP = a - b·lift from measured (source, sink, COP)."""
    usable = _usable(samples)
    lifts = [k - s for s, k, _ in usable]
    cops = [m for _, _, m in usable]
    n = len(usable)
    mean_l, mean_c = sum(lifts) / n, sum(cops) / n
    var = sum((x - mean_l) ** 2 for x in lifts)
    if var == 0:
        raise InvalidRequest("COP calibration needs measurements at more than one lift for a line")
    slope = -sum((x - mean_l) * (y - mean_c) for x, y in zip(lifts, cops, strict=True)) / var
    model = LinearCop(mean_c + slope * mean_l, slope, min_cop=0.0)
    rms = math.sqrt(sum((model.cop(s, k) - m) ** 2 for s, k, m in usable) / n)
    return Calibration(model, rms, n)


@dataclass(frozen=True)
class DryCoolers:
    """Capacity at and below a design outdoor temperature, derated linearly above it."""

    capacity_kw: float
    design_outdoor_temperature: float = 20.0
    derating_per_k: float = 0.03

    def capacity_at(self, outdoor_temperature: float) -> float:
        """What the dry coolers can reject at an outdoor temperature, kW."""
        above = max(outdoor_temperature - self.design_outdoor_temperature, 0.0)
        return self.capacity_kw * max(1.0 - self.derating_per_k * above, 0.0)
