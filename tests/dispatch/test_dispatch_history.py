"""History-based forecasts and COP on synthetic data whose answer is known (no database), and the fallbacks."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.config import ConfigError, DatabaseConfig, load_config
from service.dispatch.history import (
    ANCHOR_DECAY_H,
    BUCKET,
    DispatchHistory,
    HistoryData,
    PumpHistory,
    anchored,
    calibrate_efficiency,
    fit_history,
    sum_series,
)
from service.dispatch.models import CarnotCop, carnot_cop
from service.dispatch.status import dispatch_status
from service.dispatch.task import DispatchTask
from service.storage.database import Database
from tests.dispatch.test_dispatch_task import RUNNING, START, Rig
from tests.dispatch.test_dispatch_task_config import plant

ETA_HP1 = 0.6  # hp1's true Carnot efficiency in the synthetic history
IDEAL = carnot_cop(35.0, 65.0)  # the rig's lift
DAYS = 7  # a whole week: every hour of week the horizon meets has history
POINTS = {"it_heat": ["cdu1.heat_removed"], "demand": ["dh.demand"], "store_state_of_charge": "tank.state_of_charge",
          "electric_power": {"hp1": "hp1.electric_power", "hp2": "hp2.electric_power"}}


def it_heat(t: datetime) -> float:
    """An hour-of-week rhythm: what the profile must give back."""
    return 500.0 + 10.0 * t.hour + 5.0 * t.weekday()


def outdoor(t: datetime) -> float:
    """Constant within a day, different each day (so heating degrees vary independently of the hour)."""
    return 1.0 + 1.5 * (t.toordinal() % DAYS)


def hourly(t: datetime) -> float:
    """The demand's hour-of-day pattern: zero mean over each day."""
    return 30.0 if t.hour % 2 == 0 else -30.0


def demand(t: datetime, outdoor_c: float | None = None) -> float:
    """200 kW + 20 kW per heating degree + the hourly pattern: what the demand model must give back."""
    o = outdoor(t) if outdoor_c is None else outdoor_c
    return 200.0 + 20.0 * max(17.0 - o, 0.0) + hourly(t)


def hp1_running(i: int) -> bool:
    return i % 5 != 0


def samples(start: datetime, days: int, every: timedelta) -> dict[str, list[tuple[datetime, float]]]:
    """The dispatch points' readings over `days` from `start`, one every `every` (values constant per bucket).

    hp1 runs in four of five buckets at its true efficiency, with a power reading four times too high in one
    running bucket of 37 (a glitch the median must ignore); hp2 never runs (standby power only).
    """
    out: dict[str, list[tuple[datetime, float]]] = {p: [] for p in (
        "cdu1.heat_removed", "dh.demand", "hp1.outdoor_temperature", "hp1.heat_output", "hp1.electric_power",
        "hp2.heat_output", "hp2.electric_power")}
    for k in range(int(timedelta(days=days) / every)):
        t = start + every * k
        i = int((t - start) / BUCKET)
        run = hp1_running(i)
        power = 400.0 / (ETA_HP1 * IDEAL) * (4.0 if i % 37 == 1 else 1.0) if run else 0.3
        for point, value in (("cdu1.heat_removed", it_heat(t)), ("dh.demand", demand(t)),
                             ("hp1.outdoor_temperature", outdoor(t)), ("hp1.heat_output", 400.0 if run else 0.0),
                             ("hp1.electric_power", power), ("hp2.heat_output", 0.0), ("hp2.electric_power", 0.3)):
            out[point].append((t, value))
    return out


def history_data(days: int = DAYS) -> HistoryData:
    s = {p: dict(v) for p, v in samples(START - timedelta(days=days), days, BUCKET).items()}
    return HistoryData(s["cdu1.heat_removed"], s["dh.demand"], s["hp1.outdoor_temperature"],
                       {"hp1": PumpHistory(s["hp1.heat_output"], s["hp1.electric_power"]),
                        "hp2": PumpHistory(s["hp2.heat_output"], s["hp2.electric_power"])})


def rig(tmp_path: Path, **over: Any) -> Rig:
    return Rig(tmp_path, points=POINTS, history_days=DAYS, **over)


def test_calibration_is_the_median_over_running_buckets_clamped_and_needs_enough_of_them() -> None:
    times = [START + BUCKET * i for i in range(40)]
    heat = {t: 400.0 for t in times} | {START - BUCKET: 5.0}  # one bucket below 10 % of capacity: not running
    power = {t: 400.0 / (0.55 * IDEAL) for t in times} | {START - BUCKET: 1.0}
    power[times[3]] *= 10  # glitches on both sides: the median does not move
    power[times[7]] /= 10
    eta, n = calibrate_efficiency(heat, power, IDEAL, 500.0, 16)
    assert eta == pytest.approx(0.55) and n == 40
    assert calibrate_efficiency(heat, power, IDEAL, 500.0, 41) == (None, 40), "too few: the configured one"
    high = {t: 400.0 / (0.95 * IDEAL) for t in times}
    assert calibrate_efficiency(heat, high, IDEAL, 500.0, 16)[0] == 0.8, "clamped to a sane range"
    assert calibrate_efficiency(heat, {}, IDEAL, 500.0, 1) == (None, 0), "no electricity measured"


def test_sum_series_keeps_only_buckets_every_part_has() -> None:
    a, b = {START: 1.0, START + BUCKET: 2.0}, {START + BUCKET: 3.0}
    assert sum_series([a, b]) == {START + BUCKET: 5.0} and sum_series([]) == {}


def test_the_fit_gives_back_the_profile_the_demand_model_and_the_efficiency(tmp_path: Path) -> None:
    cfg = rig(tmp_path).cfg
    fit = fit_history(history_data(), cfg, START)
    assert fit.buckets == DAYS * 96 and fit.demand_buckets == DAYS * 96
    assert fit.it_heat is not None and fit.demand is not None
    for h in range(168):
        t = START + timedelta(hours=h)
        assert fit.it_heat.at(t) == pytest.approx(it_heat(t))
    assert fit.demand.base_kw == pytest.approx(200.0) and fit.demand.slope_kw_per_k == pytest.approx(20.0)
    assert fit.demand.at(START + timedelta(hours=3), 5.0) == pytest.approx(200.0 + 20 * 12 - 30)
    assert fit.efficiency == {"hp1": pytest.approx(ETA_HP1)}, "hp2 never ran: no calibration"
    assert fit.running_buckets == {"hp1": DAYS * 96 * 4 // 5, "hp2": 0}
    assert fit.last_outdoor == outdoor(START - BUCKET)
    assert "hp2 COP: ran in 0 of 16 buckets" in fit.reason


def test_too_little_history_keeps_persistence(tmp_path: Path) -> None:
    cfg = rig(tmp_path).cfg
    fit = fit_history(history_data(days=1), cfg, START)  # 96 buckets of the 192 needed
    assert fit.it_heat is None and fit.demand is None and fit.efficiency == {"hp1": pytest.approx(ETA_HP1)}
    assert "IT heat: 96 of 192 buckets" in fit.reason


def test_the_measurement_anchors_the_first_step_and_its_offset_fades() -> None:
    series = anchored(lambda t: 100.0, START, 16, BUCKET, 140.0)
    assert series[0] == 140.0
    assert series[8] == pytest.approx(100.0 + 40.0 * math.exp(-2.0 / ANCHOR_DECAY_H))
    assert anchored(lambda t: 100.0, START, 3, BUCKET, None) == (100.0,) * 3
    assert anchored(lambda t: 10.0, START, 2, BUCKET, -50.0) == (0.0, 0.0), "never below zero"


def test_inputs_follow_the_history_and_the_status_says_so(tmp_path: Path) -> None:
    r = rig(tmp_path)
    history = DispatchHistory(r.cfg, r.control, None)
    history.fit = fit_history(history_data(), r.cfg, START)
    history.error = ""
    task = DispatchTask(r.cfg, r.control, r.bus, r.controller, r.clock, history=history)
    r.plant()
    r.publish(dh__demand=demand(START, 5.0))  # at the model: no offset; IT heat 600 is 100 above the profile
    inputs = task.build_inputs(task.measure(), None, START)
    offset = 600.0 - it_heat(START)
    for k in range(inputs.steps):
        t = START + BUCKET * k
        fade = math.exp(-k * 0.25 / ANCHOR_DECAY_H)
        assert inputs.it_heat_kw[k] == pytest.approx(it_heat(t) + offset * fade)
        assert inputs.demand_kw[k] == pytest.approx(demand(t, 5.0)), "the model at today's outdoor temperature"
    hp1, hp2 = inputs.units
    assert hp1.cop[0] == pytest.approx(CarnotCop(ETA_HP1).cop(35.0, 65.0))
    assert hp2.cop[0] == pytest.approx(CarnotCop(0.5).cop(35.0, 65.0)), "configured"
    st = dispatch_status(task)
    assert st.forecast == "history" and st.demand_forecast == "history" and st.history_buckets == DAYS * 96
    assert st.cop_source == {"hp1": "calibrated", "hp2": "configured"}
    assert st.carnot_efficiency == {"hp1": pytest.approx(ETA_HP1, abs=1e-4), "hp2": 0.5}
    assert st.cop_running_buckets["hp1"] == DAYS * 96 * 4 // 5 and "hp2 COP" in st.forecast_reason


async def test_database_away_keeps_persistence_and_says_so_once(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    r = rig(tmp_path)
    db = Database(DatabaseConfig(host="127.0.0.1", port=1, name="nowhere"))  # never connected: away
    history = DispatchHistory(r.cfg, r.control, db, r.clock)
    task = DispatchTask(r.cfg, r.control, r.bus, r.controller, r.clock, history=history)
    with caplog.at_level(logging.INFO, logger="service.dispatch.history"):
        assert await history.refresh() is None
        await history.refresh()
    said = [rec for rec in caplog.records if "dispatch forecasts" in rec.getMessage()]
    assert len(said) == 1 and "persistence" in said[0].getMessage(), "logged once per change"
    r.plant(it_heat=640.0)
    r.publish(dh__demand=700.0)
    inputs = task.build_inputs(task.measure(), None, START)
    assert inputs.it_heat_kw == (640.0,) * 16 and inputs.demand_kw == (700.0,) * 16
    assert inputs.units[0].cop[0] == pytest.approx(CarnotCop(0.5).cop(35.0, 65.0))
    st = dispatch_status(task)
    assert st.forecast == "persistence" and st.demand_forecast == "persistence"
    assert st.cop_source == {"hp1": "configured", "hp2": "configured"} and st.history_fitted_at is None
    assert "database unavailable" in st.forecast_reason and "127.0.0.1:1" in st.forecast_reason


def test_without_history_the_task_plans_on_persistence(tmp_path: Path) -> None:
    r = Rig(tmp_path)  # no history given: no database, as in the bench
    r.plant(it_heat=640.0, hp1=RUNNING)
    st = dispatch_status(r.task)
    assert st.forecast == "persistence" and st.demand_forecast == "none" and st.forecast_reason == "no database"
    assert r.task.build_inputs(r.task.measure(), None, START).it_heat_kw == (640.0,) * 16


def test_electric_power_points_name_dispatched_pumps_and_known_points(tmp_path: Path) -> None:
    path = plant(tmp_path)
    path.write_text(path.read_text() + 'electric_power = {hp1 = "hp1.electric_power"}\n')
    cfg = load_config(path)
    assert cfg.dispatch is not None and cfg.dispatch.points.electric_power == {"hp1": "hp1.electric_power"}
    assert cfg.dispatch.history_days == 14 and cfg.dispatch.history_refresh_s == 3600
    path.write_text(plant(tmp_path).read_text() + 'electric_power = {hp2 = "hp1.electric_power"}\n')
    with pytest.raises(ConfigError, match=r"dispatch\.points\.electric_power\.hp2: not a dispatched heat pump"):
        load_config(path)
    path.write_text(plant(tmp_path).read_text() + 'electric_power = {hp1 = "hp1.nope"}\n')
    with pytest.raises(ConfigError, match=r"dispatch\.points\.electric_power\.hp1: no point 'hp1\.nope'"):
        load_config(path)


async def test_an_outage_after_a_fit_keeps_the_fit_in_force(tmp_path: Path) -> None:
    r = rig(tmp_path)
    history = DispatchHistory(r.cfg, r.control, Database(DatabaseConfig(host="127.0.0.1", port=1)), r.clock)
    history.fit = fit = fit_history(history_data(), r.cfg, START)
    await history.refresh()
    assert history.fit is fit and history.forecast == "history" and history.cop_source("hp1") == "calibrated"
    assert history.reason().startswith("database unavailable"), "and the status says why nothing is fresher"


async def test_history_off_reads_nothing_and_says_so(tmp_path: Path) -> None:
    r = Rig(tmp_path, history_days=0)
    history = DispatchHistory(r.cfg, r.control, Database(DatabaseConfig(host="127.0.0.1", port=1)), r.clock)
    await history.run()  # returns at once: no task to keep
    assert history.fit is None and history.refreshes == 0 and "history_days = 0" in history.reason()
