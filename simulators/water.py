"""Water properties for heat metering: the EN 1434 heat coefficient k from IAPWS-IF97 at 16 bar."""

from __future__ import annotations

import bisect
import functools

from iapws import IAPWS97

METER_PRESSURE_MPA = 1.6  # EN 1434 calculators use a fixed nominal pressure; 16 bar is the usual one
_T_MIN_C, _T_MAX_C, _STEP_C = 0.0, 150.0, 1.0


@functools.cache
def _table() -> tuple[list[float], list[float], list[float]]:
    """Density and enthalpy on a 1 K grid, built once (about 150 IAPWS calls, ~50 ms).

    Both are smooth in liquid water, so linear interpolation on 1 K is far inside the
    0.01 % that matters here, while a direct IAPWS call per sample would cost ~0.4 ms.
    """
    temps, rho, h = [], [], []
    n = int((_T_MAX_C - _T_MIN_C) / _STEP_C) + 1
    for i in range(n):
        t = _T_MIN_C + i * _STEP_C
        w = IAPWS97(T=t + 273.15, P=METER_PRESSURE_MPA)
        temps.append(t)
        rho.append(float(w.rho))  # kg/m³
        h.append(float(w.h))  # kJ/kg
    return temps, rho, h


def _interp(t_c: float, values: list[float]) -> float:
    temps = _table()[0]
    if not _T_MIN_C <= t_c <= _T_MAX_C:
        raise ValueError(f"water temperature {t_c} °C is outside {_T_MIN_C}..{_T_MAX_C} °C")
    i = min(bisect.bisect_right(temps, t_c), len(temps) - 1)
    t0, t1 = temps[i - 1], temps[i]
    v0, v1 = values[i - 1], values[i]
    return v0 + (v1 - v0) * (t_c - t0) / (t1 - t0)


def density(t_c: float) -> float:
    """Density of water at 16 bar, kg/m³."""
    return _interp(t_c, _table()[1])


def enthalpy(t_c: float) -> float:
    """Specific enthalpy of water at 16 bar, kJ/kg."""
    return _interp(t_c, _table()[2])


def heat_coefficient(flow_c: float, return_c: float) -> float:
    """EN 1434 k-factor in kWh/(m³·K), volume measured in the return pipe.

    k = rho(θr) · (h(θf) - h(θr)) / (θf - θr); for θf ≈ θr the limit rho·cp is used.
    """
    rho = density(return_c)
    dt = flow_c - return_c
    if abs(dt) < 1e-3:
        # The difference quotient is numerically useless here; take the local slope instead.
        lo = max(return_c - 0.5, _T_MIN_C)
        hi = min(lo + 1.0, _T_MAX_C)
        return rho * (enthalpy(hi) - enthalpy(lo)) / (hi - lo) / 3600.0
    return rho * (enthalpy(flow_c) - enthalpy(return_c)) / dt / 3600.0
