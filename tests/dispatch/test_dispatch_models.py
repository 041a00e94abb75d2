"""Tariff bands by date, the heat store, COP calibration, dry coolers, forecasts and the [dispatch] model."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from service.dispatch.config import DispatchConfig
from service.dispatch.forecast import fit_demand, fit_profile
from service.dispatch.models import (
    CarnotCop,
    DryCoolers,
    HeatStore,
    calibrate_carnot,
    calibrate_linear,
    carnot_cop,
)
from service.dispatch.tariffs import TariffError, load_tariffs, parse_tariffs
from service.errors import InvalidRequest


def _tariffs(periods: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "t", "timezone": "Europe/Copenhagen", "periods": periods}


def _period(pid: str, start: date, end: date | None = None, peak: str = "0.30") -> dict[str, Any]:
    p: dict[str, Any] = {"id": pid, "valid_from": start, "source": "test",
                         "charges": [{"name": "tax", "dkk_per_kwh": "0.01"}],
                         "bands": [{"start_hour": 0, "end_hour": 17, "dkk_per_kwh": "0.10"},
                                   {"start_hour": 17, "end_hour": 21, "dkk_per_kwh": peak},
                                   {"start_hour": 21, "end_hour": 24, "dkk_per_kwh": "0.10"}]}
    if end is not None:
        p["valid_to"] = end
    return p


def test_tariff_bands_by_local_hour_and_date() -> None:
    """17:00 Danish time is the peak (16:00 UTC in winter); the entry in force changes on its date."""
    t = parse_tariffs(_tariffs([_period("a", date(2025, 1, 1), date(2026, 1, 1)),
                                _period("b", date(2026, 1, 1), peak="0.50")]), "t.toml")
    assert t.addon_dkk_per_kwh(datetime(2025, 12, 31, 16, 0, tzinfo=UTC)) == Decimal("0.31")
    assert t.addon_dkk_per_kwh(datetime(2025, 12, 31, 15, 59, tzinfo=UTC)) == Decimal("0.11")
    # 2026-01-01 00:30 local is still 2025-12-31 in UTC: the local date picks the entry.
    assert t.period_on(date(2026, 1, 1)).id == "b"
    assert t.addon_dkk_per_kwh(datetime(2026, 1, 1, 16, 0, tzinfo=UTC)) == Decimal("0.51")
    # Summer time: 17:00 local is 15:00 UTC.
    assert t.addon_dkk_per_kwh(datetime(2026, 7, 1, 15, 0, tzinfo=UTC)) == Decimal("0.51")
    assert t.electricity_dkk_per_kwh(datetime(2026, 7, 1, 15, 0, tzinfo=UTC), Decimal("-100")) == Decimal("0.41")
    with pytest.raises(TariffError, match="has no period covering 2024-12-31"):
        t.period_on(date(2024, 12, 31))


@pytest.mark.parametrize(("periods", "message"), [
    ([_period("a", date(2025, 1, 1), date(2025, 6, 1)), _period("b", date(2025, 7, 1))],
     "period 'a' ends 2025-06-01 but 'b' starts 2025-07-01"),
    ([{**_period("a", date(2025, 1, 1)), "bands": [{"start_hour": 0, "end_hour": 20, "dkk_per_kwh": "0.1"}]}],
     "month 1 hour 20 falls in 0 bands"),
    ([{**_period("a", date(2025, 1, 1)), "bands": [{"start_hour": 0, "end_hour": 24, "dkk_per_kwh": "0.1"},
                                                  {"start_hour": 5, "end_hour": 6, "dkk_per_kwh": "0.1"}]}],
     "month 1 hour 5 falls in 2 bands"),
    ([{**_period("a", date(2025, 1, 1)), "charges": [{"name": "x", "dkk_per_kwh": 0.1}]}],
     "write money as a string"),
    ([{k: v for k, v in _period("a", date(2025, 1, 1)).items() if k != "source"}], "missing key 'source'"),
    ([], "no [[periods]]"),
])
def test_bad_tariff_files_are_refused(periods: list[dict[str, Any]], message: str) -> None:
    """Gaps between entries, hours in no band or two, float money, missing keys."""
    with pytest.raises(TariffError) as err:
        parse_tariffs(_tariffs(periods), "t.toml")
    assert message in str(err.value)


def test_the_shipped_tariff_file_loads_and_has_a_winter_peak() -> None:
    """service/dispatch/tariffs/dk1_10kv_illustrative.toml: winter peak 17-21 local is the dearest band."""
    t = load_tariffs("dk1_10kv_illustrative")
    peak = t.addon_dkk_per_kwh(datetime(2026, 1, 15, 17, 0, tzinfo=UTC))
    night = t.addon_dkk_per_kwh(datetime(2026, 1, 15, 2, 0, tzinfo=UTC))
    assert peak == Decimal("0.528") and night == Decimal("0.198")
    with pytest.raises(TariffError, match="cannot read tariff file"):
        load_tariffs("no_such_tariffs")


def test_heat_store_capacity_and_losses() -> None:
    """1000 m³ from 40 to 75 °C holds about 40.6 MWh; UA 300 W/K at 75 °C over 10 °C loses 19.5 kW full."""
    store = HeatStore(volume_m3=1000.0, min_temperature=40.0, max_temperature=75.0, loss_w_per_k=300.0)
    assert store.capacity_kwh == pytest.approx(1000 * 4.18 * 998 / 3600 * 35)
    assert store.full_loss_kw == pytest.approx(19.5)
    assert store.loss_per_hour == pytest.approx(19.5 / store.capacity_kwh)
    assert store.temperature_at(store.capacity_kwh / 2) == pytest.approx(57.5)


def test_carnot_calibration_recovers_the_efficiency() -> None:
    """Measurements made with η = 0.52 (noise ±1 %) give back η within 0.005."""
    rng = random.Random(4)
    samples = []
    for _ in range(200):
        source, sink = rng.uniform(20, 35), rng.uniform(65, 85)
        samples.append((source, sink, 0.52 * carnot_cop(source, sink) * rng.uniform(0.99, 1.01)))
    fit = calibrate_carnot(samples)
    assert fit.model.efficiency == pytest.approx(0.52, abs=0.005)
    assert fit.samples == 200 and fit.rms < 0.05


def test_linear_calibration_recovers_intercept_and_slope_exactly() -> None:
    """Noise-free points on COP = 8 - 0.1·lift give back 8 and 0.1; bad points are left out."""
    samples = [(30.0, 30.0 + lift, 8.0 - 0.1 * lift) for lift in (20.0, 35.0, 50.0)]
    fit = calibrate_linear([*samples, (30.0, 20.0, 3.0), (30.0, 70.0, float("nan"))])
    assert (round(fit.model.intercept, 9), round(fit.model.slope, 9), fit.samples) == (8.0, 0.1, 3)
    assert fit.model.cop(30.0, 70.0) == pytest.approx(4.0)
    with pytest.raises(InvalidRequest, match="at least 2 measurements"):
        calibrate_carnot([(30.0, 70.0, 3.0)])
    with pytest.raises(InvalidRequest, match="more than one lift"):
        calibrate_linear([(30.0, 70.0, 3.0), (31.0, 71.0, 3.1)])


def test_carnot_cop_model_and_dry_coolers() -> None:
    """η 0.5 from 27 to 75 °C is 3.63; the dry coolers lose 3 %/K above 20 °C."""
    assert CarnotCop(0.5).cop(27.0, 75.0) == pytest.approx(0.5 * 348.15 / 48)
    with pytest.raises(InvalidRequest, match="no lift"):
        carnot_cop(60.0, 60.0)
    coolers = DryCoolers(18000.0)
    assert (coolers.capacity_at(10.0), coolers.capacity_at(30.0)) == (18000.0, pytest.approx(12600.0))


def test_forecasts_learn_the_weekly_profile_and_the_heating_slope() -> None:
    """IT heat higher on weekdays is learnt by hour of week; demand = 1000 + 300/K below 17 °C + hourly shape."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    times = [t0 + timedelta(hours=h) for h in range(24 * 28)]
    it = [900.0 if t.weekday() < 5 else 700.0 for t in times]
    profile = fit_profile(times, it)
    assert profile.at(datetime(2026, 3, 4, 12, tzinfo=UTC)) == 900.0
    assert profile.at(datetime(2026, 3, 8, 12, tzinfo=UTC)) == 700.0
    outdoor = [5.0 + 10.0 * ((h * 7919) % 13) / 13 for h in range(len(times))]
    shape = [50.0 if 6 <= t.hour < 9 else -10.0 for t in times]
    demand = [1000.0 + 300.0 * max(17.0 - o, 0.0) + s for o, s in zip(outdoor, shape, strict=True)]
    model = fit_demand(times, outdoor, demand)
    assert model.slope_kw_per_k == pytest.approx(300.0, abs=1.0)
    assert model.at(datetime(2026, 3, 4, 7, tzinfo=UTC), 7.0) == pytest.approx(1000 + 3000 + 50, abs=5)
    assert model.at(datetime(2026, 3, 4, 7, tzinfo=UTC), 30.0) == pytest.approx(1050, abs=5)
    with pytest.raises(InvalidRequest):
        fit_profile([], [])


def _config(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tariffs": "dk1_10kv_illustrative", "heat_price_dkk_per_mwh": "350.00",
                            "price_url": "http://prices.test/dataset/DayAheadPrices", "dry_cooler_capacity_kw": 1e4,
                            "source_temperature": 27.0, "sink_temperature": 75.0,
                            "heat_pumps": [{"id": "hp1", "capacity_kw": 2400.0, "start_cost_dkk": "50"}],
                            "store": {"volume_m3": 1000.0, "min_temperature": 40.0, "max_temperature": 75.0}}
    base.update(kw)
    return base


def test_dispatch_config_is_strict_and_money_is_exact() -> None:
    """Money from a string or an integer, never a float; exactly one price source; no unknown keys."""
    cfg = DispatchConfig.model_validate(_config())
    assert cfg.heat_price_dkk_per_mwh == Decimal("350.00") and cfg.heat_pumps[0].start_cost_dkk == Decimal(50)
    for bad, message in [({"heat_price_dkk_per_mwh": 350.0}, "never a float"),
                         ({"price_file": "p.json"}, "exactly one of price_url and price_file"),
                         ({"store": {"volume_m3": 1.0, "min_temperature": 70.0, "max_temperature": 40.0}},
                          "max_temperature must be above"),
                         ({"horizon": 36}, "Extra inputs are not permitted"),
                         ({"heat_pumps": [{"id": "hp1", "capacity_kw": 1.0}, {"id": "hp1", "capacity_kw": 1.0}]},
                          "unique")]:
        with pytest.raises(ValidationError, match=message):
            DispatchConfig.model_validate(_config(**bad))
