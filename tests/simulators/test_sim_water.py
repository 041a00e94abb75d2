"""EN 1434 heat coefficient from the cached IAPWS-IF97 table."""

from __future__ import annotations

import pytest
from iapws import IAPWS97

from simulators.water import METER_PRESSURE_MPA, density, enthalpy, heat_coefficient


@pytest.mark.parametrize(("flow", "ret", "expected"), [(75.0, 40.0, 1.153), (60.0, 30.0, 1.156)])
def test_heat_coefficient_matches_the_published_figures(flow: float, ret: float, expected: float) -> None:
    # EN 1434 / OIML R75: k ≈ 1.153 kWh/(m³·K) at 75/40 °C and 1.156 at 60/30 °C, flow sensor in the return.
    assert heat_coefficient(flow, ret) == pytest.approx(expected, abs=0.0006)


@pytest.mark.parametrize("t", [0.0, 12.34, 37.3, 71.85, 149.99])
def test_table_interpolation_agrees_with_a_direct_iapws_call(t: float) -> None:
    w = IAPWS97(T=t + 273.15, P=METER_PRESSURE_MPA)
    assert density(t) == pytest.approx(w.rho, rel=2e-5)
    assert enthalpy(t) == pytest.approx(w.h, rel=2e-4, abs=0.01)


def test_equal_temperatures_give_rho_cp_not_a_division_by_zero() -> None:
    k = heat_coefficient(50.0, 50.0)
    assert k == pytest.approx(heat_coefficient(50.5, 49.5), rel=1e-3)
    assert 1.14 < k < 1.17


def test_temperatures_outside_the_table_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        heat_coefficient(160.0, 40.0)
