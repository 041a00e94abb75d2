"""Metering physics: the EN 1434 k-factor (IAPWS-IF97), integrated power, MID error envelope, flags."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from iapws import IAPWS97

PRESSURE_MPA = 1.6  # the nominal 16 bar EN 1434 calculators assume
_GRID_C = 0.5  # table step; water properties are smooth enough that linear interpolation is exact to ~1e-5
_T_LO, _T_HI = 1.0, 140.0

LOW_DT = "low_delta_t"
LOW_FLOW = "low_flow"
DRIFT = "drift"


@functools.cache
def _table() -> tuple[list[float], list[float], list[float]]:
    """Temperature (°C), density (kg/m³), enthalpy (kJ/kg) on a fixed grid, computed once."""
    ts, rho, h = [], [], []
    n = round((_T_HI - _T_LO) / _GRID_C)
    for i in range(n + 1):
        t = _T_LO + i * _GRID_C
        w = IAPWS97(T=t + 273.15, P=PRESSURE_MPA)
        ts.append(t)
        rho.append(float(w.rho))
        h.append(float(w.h))
    return ts, rho, h


def _interp(t: float, values: list[float]) -> float:
    ts = _table()[0]
    t = min(max(t, _T_LO), _T_HI)
    i = min(max(bisect.bisect_right(ts, t), 1), len(ts) - 1)
    return values[i - 1] + (values[i] - values[i - 1]) * (t - ts[i - 1]) / _GRID_C


def k_factor(flow_c: float, return_c: float) -> float:
    """Heat coefficient k in kWh/(m³·K) for a flow sensor in the return pipe (EN 1434)."""
    _, rho, h = _table()
    dt = flow_c - return_c
    if abs(dt) < 0.05:  # the quotient is ill-conditioned: use the local slope rho·cp
        lo = return_c - 0.5
        return _interp(return_c, rho) * (_interp(lo + 1.0, h) - _interp(lo, h)) / 3600.0
    return _interp(return_c, rho) * (_interp(flow_c, h) - _interp(return_c, h)) / dt / 3600.0


def thermal_power_kw(flow_m3h: float, flow_c: float, return_c: float) -> float:
    """P = q · k · Δθ in kW; a heating meter counts nothing for Δθ ≤ 0 or q ≤ 0."""
    dt = flow_c - return_c
    if flow_m3h <= 0 or dt <= 0:
        return 0.0
    return flow_m3h * k_factor(flow_c, return_c) * dt


@dataclass(frozen=True)
class PowerSample:
    """Instantaneous state of a meter's sensors."""

    time: datetime
    flow_m3h: float
    flow_c: float
    return_c: float

    @property
    def delta_t(self) -> float:
        """Flow minus return temperature, K."""
        return self.flow_c - self.return_c

    @property
    def power_kw(self) -> float:
        """Thermal power from the sensors."""
        return thermal_power_kw(self.flow_m3h, self.flow_c, self.return_c)


def _first_at(samples: Sequence[PowerSample], t: datetime) -> int:
    return bisect.bisect_left(samples, t, key=lambda s: s.time)


def integrate_gj(samples: Sequence[PowerSample], start: datetime, end: datetime, max_hold_s: float) -> float:
    """Energy (GJ) in [start, end): each sample's power holds until the next, at most max_hold_s.

    Samples are in time order; only those from max_hold_s before start on are visited.
    """
    total = 0.0
    t0, t_end = start.timestamp(), end.timestamp()
    for i in range(_first_at(samples, start - timedelta(seconds=max_hold_s)), len(samples)):
        s = samples[i]
        ts = s.time.timestamp()
        if ts >= t_end:
            break
        hold_end = ts + max_hold_s
        t1 = min(samples[i + 1].time.timestamp(), hold_end) if i + 1 < len(samples) else hold_end
        lo, hi = max(ts, t0), min(t1, t_end)
        if hi > lo:
            total += s.power_kw * (hi - lo) / 1e6  # kW·s = kJ
    return total


def mid_error_percent(flow_m3h: float, delta_t: float, qp: float, delta_theta_min: float,
                      mid_class: int = 2) -> float:
    """Maximum permissible error of a complete meter, percent (MID MI-004: Ef + Et + Ec)."""
    q = max(flow_m3h, 1e-9)
    dt = max(delta_t, 1e-9)
    base, slope = {1: (1.0, 0.01), 2: (2.0, 0.02), 3: (3.0, 0.05)}[mid_class]  # MI-004 flow-sensor classes
    ef = min(base + slope * qp / q, 5.0)
    et = 0.5 + 3.0 * delta_theta_min / dt
    ec = 0.5 + delta_theta_min / dt
    return ef + et + ec


@dataclass(frozen=True)
class Check:
    """Cross-check of one interval: register against integrated power, and the operating range."""

    integrated_gj: float
    drift_percent: float | None
    envelope_percent: float | None
    flags: frozenset[str]


def check_interval(register_gj: float, samples: Sequence[PowerSample], start: datetime, end: datetime, *,
                   qp: float, qi: float, delta_theta_min: float, mid_class: int, max_hold_s: float) -> Check:
    """Integrated power, drift and flags for [start, end) (samples may extend beyond it)."""
    inside = samples[_first_at(samples, start):_first_at(samples, end)]
    integrated = integrate_gj(samples, start, end, max_hold_s)
    flags: set[str] = set()
    running = [s for s in inside if s.flow_m3h > 0]
    if not running:
        return Check(integrated, None, None, frozenset())
    q = sum(s.flow_m3h for s in running) / len(running)
    dt = sum(s.delta_t for s in running) / len(running)
    if q < qi:
        flags.add(LOW_FLOW)
    if dt < delta_theta_min:
        flags.add(LOW_DT)
    drift = envelope = None
    if integrated > 0 and dt > 0:
        drift = 100.0 * (register_gj - integrated) / integrated
        envelope = mid_error_percent(q, dt, qp, delta_theta_min, mid_class)
        if abs(drift) > envelope:
            flags.add(DRIFT)
    return Check(integrated, drift, envelope, frozenset(flags))
