"""k-factor, MID error envelope, integrated power and the interval cross-check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.accounting.metering import (
    DRIFT,
    LOW_DT,
    LOW_FLOW,
    PowerSample,
    check_interval,
    integrate_gj,
    k_factor,
    mid_error_percent,
    thermal_power_kw,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_k_factor_matches_en_1434_values() -> None:
    # EN 1434 / OIML R75 tables: about 1.153 kWh/(m3 K) at 75/40 degC and 1.156 at 60/30 (sensor in return).
    assert k_factor(75.0, 40.0) == pytest.approx(1.153, abs=0.002)
    assert k_factor(60.0, 30.0) == pytest.approx(1.156, abs=0.002)
    assert k_factor(40.0, 40.0) == pytest.approx(1.16, abs=0.01)  # the limit rho*cp


def test_thermal_power() -> None:
    # 10 m3/h x k(70, 40) x 30 K: about 10 x 1.154 x 30 = 346 kW; nothing for reversed or zero flow.
    assert thermal_power_kw(10.0, 70.0, 40.0) == pytest.approx(10 * k_factor(70, 40) * 30)
    assert thermal_power_kw(10.0, 40.0, 45.0) == 0.0 and thermal_power_kw(0.0, 70.0, 40.0) == 0.0


def test_mid_class_2_envelope() -> None:
    # qp 10, q 5: Ef = 2 + 0.02 x 10/5 = 2.04; dtmin 3, dt 30: Et = 0.5 + 3 x 3/30 = 0.8, Ec = 0.5 + 3/30 = 0.6.
    assert mid_error_percent(5.0, 30.0, 10.0, 3.0) == pytest.approx(2.04 + 0.8 + 0.6)
    # Ef is capped at 5 %.
    assert mid_error_percent(0.01, 30.0, 10.0, 3.0) == pytest.approx(5.0 + 0.8 + 0.6)


def samples(n: int, q: float, tf: float, tr: float, every_s: int = 60) -> list[PowerSample]:
    return [PowerSample(T0 + timedelta(seconds=i * every_s), q, tf, tr) for i in range(n)]


def test_integration_holds_each_sample_until_the_next() -> None:
    s = samples(60, 10.0, 70.0, 40.0)  # one hour at constant power
    p = s[0].power_kw
    assert integrate_gj(s, T0, T0 + timedelta(hours=1), 900) == pytest.approx(p * 3600 / 1e6)
    # A sample never holds longer than max_hold_s across a gap.
    assert integrate_gj(s[:1], T0, T0 + timedelta(hours=1), 120) == pytest.approx(p * 120 / 1e6)


def test_check_flags_drift_low_flow_and_low_delta_t() -> None:
    s = samples(60, 10.0, 70.0, 40.0)
    end = T0 + timedelta(hours=1)
    true_gj = integrate_gj(s, T0, end, 900)
    ok = check_interval(true_gj * 1.01, s, T0, end, qp=15, qi=0.15, delta_theta_min=3, mid_class=2, max_hold_s=900)
    assert ok.flags == frozenset() and ok.drift_percent == pytest.approx(1.0)
    bad = check_interval(true_gj * 1.10, s, T0, end, qp=15, qi=0.15, delta_theta_min=3, mid_class=2,
                         max_hold_s=900)
    assert DRIFT in bad.flags and bad.envelope_percent is not None and bad.envelope_percent < 10
    low = check_interval(0.0, samples(60, 0.1, 42.0, 40.0), T0, end, qp=15, qi=0.15, delta_theta_min=3,
                         mid_class=2, max_hold_s=900)
    assert {LOW_FLOW, LOW_DT} <= low.flags
