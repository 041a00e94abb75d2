"""The plan's heat per pump as a capacity limit, cooling first: the mapping, the controller's writes, the task."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.base import WriteResult
from service.bus import SampleBus
from service.clock import VirtualClock
from service.config import ControlConfig, PlantDispatch
from service.control.command import CAPACITY_FULL, SG_NORMAL, DispatchCommand, capacity_limit_percent
from service.control.controller import SG_BLOCKED, Controller
from service.control.loop import ControlLoop
from service.control.model import ProcessImage, Reading
from service.dispatch import prices as price_data
from service.dispatch.optimiser import Inputs, Plan, Step
from service.dispatch.status import dispatch_status
from service.dispatch.task import DispatchTask
from service.model import Quality, Sample

START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
RUNNING, FAULT = 1, 2
LIMITS = ("hp1.capacity_limit", "hp2.capacity_limit")


@pytest.mark.parametrize(("heat_kw", "capacity_kw", "min_load", "percent"), [
    (300.0, 500.0, 0.0, 65.0),  # 60 % of capacity plus the 5-point margin
    (301.0, 500.0, 0.0, 65.2),
    (300.3, 500.0, 0.0, 65.1),  # 65.06 %: rounded up to the register's 0.1 %, never down
    (400.0, 1200.0, 0.0, 38.4),  # 33.33 % + 5
    (20.0, 500.0, 0.3, 30.0),  # at least the pump's minimum load: below it the machine would stop
    (480.0, 500.0, 0.0, 100.0),  # 96 % + 5: no cap
    (500.0, 500.0, 0.0, 100.0),  # the plan runs it at full
    (0.0, 500.0, 0.0, 5.0),
    (100.0, 0.0, 0.0, 100.0),  # no capacity to share: no cap
])
def test_the_plans_heat_maps_to_a_capacity_limit(heat_kw: float, capacity_kw: float, min_load: float,
                                                 percent: float) -> None:
    assert capacity_limit_percent(heat_kw, capacity_kw, min_load) == percent


def control_cfg(**over: Any) -> ControlConfig:
    data: dict[str, Any] = {
        "supply_temperature": "m.flow_temperature", "outdoor_temperature": "hp1.outdoor_temperature",
        "target": "fixed", "fixed_target": 65.0, "setpoint_min": 45.0, "setpoint_max": 85.0,
        "cdu_margin_k": 0.5, "cdu_headroom_alarm_k": 1.5, "frozen_after_s": None, "start_grace_s": 0,
        "heat_pumps": [{"id": f"hp{i}", "setpoint": f"hp{i}.supply_setpoint", "sg_ready": f"hp{i}.sg_ready",
                        "capacity_limit": f"hp{i}.capacity_limit", "status": f"hp{i}.status",
                        "heat_output": f"hp{i}.heat_output", "capacity_kw": 500.0} for i in (1, 2)],
        "cdus": [{"supply_temperature": "cdu1.supply_temperature", "allowable_max_value": 32.0}]}
    data.update(over)
    return ControlConfig.model_validate(data)


def image(t: float, cdu_supply: float | None = 29.0, hp1: int = RUNNING, hp2: int = RUNNING) -> ProcessImage:
    readings = {"m.flow_temperature": Reading(65.0), "hp1.outdoor_temperature": Reading(5.0),
                "hp1.status": Reading(float(hp1)), "hp2.status": Reading(float(hp2)),
                "hp1.heat_output": Reading(300.0), "hp2.heat_output": Reading(300.0)}
    if cdu_supply is not None:
        readings["cdu1.supply_temperature"] = Reading(cdu_supply)
    return ProcessImage(t, readings)


# The step runs both pumps, hp1 part-load (65 %) and hp2 at 80 %.
BOTH_PART_LOAD = DispatchCommand("2026-01-05T00:00:00+00:00", frozenset({"hp1", "hp2"}),
                                 {"hp1": SG_NORMAL, "hp2": SG_NORMAL}, {"hp1": 300.0, "hp2": 375.0},
                                 capacity_limit={"hp1": 65.0, "hp2": 80.0})


def applied(**cfg: Any) -> Controller:
    """A controller that follows BOTH_PART_LOAD in its first cycle."""
    c = Controller(control_cfg(**cfg))
    c.dispatch = BOTH_PART_LOAD
    r = c.step(image(0.0), 1.0)
    assert r.dispatch == "applied"
    assert (r.writes["hp1.capacity_limit"], r.writes["hp2.capacity_limit"]) == (65.0, 80.0)
    assert r.capacity_limits == {"hp1": 65.0, "hp2": 80.0}
    assert r.decisions["hp1.capacity_limit"].winner == "dispatch"
    return c


def released(c: Controller, img: ProcessImage) -> None:
    """In this very cycle every pump's capacity limit goes back to 100 %."""
    r = c.step(img, 1.0)
    assert {p: r.writes.get(p) for p in LIMITS} == {p: CAPACITY_FULL for p in LIMITS}, r.dispatch
    assert r.capacity_limits == {"hp1": CAPACITY_FULL, "hp2": CAPACITY_FULL}


def test_the_cap_is_written_on_the_pumps_the_step_runs_and_none_on_the_others() -> None:
    c = applied()
    c.dispatch = DispatchCommand("2026-01-05T00:15:00+00:00", frozenset({"hp1"}), {"hp1": SG_NORMAL},
                                 {"hp1": 300.0, "hp2": 0.0}, capacity_limit={"hp1": 65.0})
    r = c.step(image(1.0), 1.0)
    assert r.writes["hp1.capacity_limit"] == 65.0
    assert r.writes["hp2.sg_ready"] == SG_BLOCKED and r.writes["hp2.capacity_limit"] == CAPACITY_FULL
    # A command without limits (the safe plan, or pumps the plan does not dispatch) caps nothing.
    c.dispatch = DispatchCommand("x", frozenset({"hp1", "hp2"}))
    released(c, image(2.0))


def test_cooling_first_cdu_headroom_releases_the_cap_at_once_and_it_waits_for_the_recovery() -> None:
    c = applied()
    released(c, image(1.0, cdu_supply=31.7))  # within the 0.5 K margin of the 32 °C maximum
    assert c.last is not None and c.last.dispatch == "yielded:cdu_headroom"
    released(c, image(2.0, cdu_supply=31.0))  # above the margin, not yet by DISPATCH_RECOVERY_K: still none
    t = 2.0
    for _ in range(60):  # the headroom stays wide: the plan, and its cap, are back
        t += 1
        r = c.step(image(t), 1.0)
    assert r.dispatch == "applied" and r.writes["hp1.capacity_limit"] == 65.0


@pytest.mark.parametrize("safe_setpoint", [65.0, None])
def test_any_safe_state_releases_the_cap(safe_setpoint: float | None) -> None:
    c = applied(safe_setpoint=safe_setpoint)
    released(c, image(1.0, cdu_supply=None))  # a CDU input lost: IT cooling cannot be vouched for
    assert c.last is not None and c.last.safe_state and c.last.dispatch == "yielded:safe_state"


def test_an_unknown_status_word_releases_the_cap() -> None:
    c = applied()
    img = image(1.0)
    del img.readings["hp2.status"]  # has hp2 tripped? whether it still cools the CDUs is unknown
    released(c, img)


def test_manual_off_a_cleared_command_and_a_trip_release_the_cap() -> None:
    c = applied()
    c.set_mode("manual")
    released(c, image(1.0))
    c.set_mode("off")
    released(c, image(2.0))  # off writes no setpoints, but leaves no pump capped (like SG-Ready)
    c.set_mode("auto")
    assert c.step(image(3.0), 1.0).writes["hp1.capacity_limit"] == 65.0
    c.dispatch = None  # dispatch switched off
    released(c, image(4.0))
    c.dispatch = BOTH_PART_LOAD
    r = c.step(image(5.0, hp1=FAULT), 1.0)
    assert r.writes["hp1.capacity_limit"] == CAPACITY_FULL and r.writes["hp2.capacity_limit"] == 80.0


def test_a_cap_left_from_before_a_restart_is_released_even_before_the_inputs_were_usable() -> None:
    c = Controller(control_cfg())
    c.dispatch = BOTH_PART_LOAD
    r = c.step(image(0.0, cdu_supply=None), 1.0)  # start-up straight into a safe state: nothing else is written
    assert r.safe_state and not c.seen_inputs
    assert set(r.writes) == set(LIMITS) and set(r.writes.values()) == {CAPACITY_FULL}


def test_without_capacity_limit_points_nothing_changes() -> None:
    cfg = control_cfg()
    plain = ControlConfig.model_validate(cfg.model_dump() | {"heat_pumps": [
        h.model_dump() | {"capacity_limit": None} for h in cfg.heat_pumps]})
    a, b = Controller(plain), Controller(cfg)
    a.dispatch = b.dispatch = BOTH_PART_LOAD
    for t in range(20):
        ra, rb = a.step(image(float(t)), 1.0), b.step(image(float(t)), 1.0)
        assert ra.writes == {k: v for k, v in rb.writes.items() if k not in LIMITS}
        assert ra.capacity_limits == {}


# --- the task: the step in force as limits, and what GET /api/v1/dispatch shows ----------------------------


def dispatch_cfg(tmp_path: Path) -> PlantDispatch:
    return PlantDispatch.model_validate({
        "enabled": True, "price_file": str(tmp_path / "prices.json"), "tariffs": "dk1_10kv_illustrative",
        "heat_price_dkk_per_mwh": "300", "horizon_h": 4, "dry_cooler_capacity_kw": 1000.0,
        "source_temperature": 35.0, "sink_temperature": 65.0, "replan_s": 900, "step_s": 900,
        "heat_pumps": [{"id": "hp1", "capacity_kw": 500.0, "min_run_min": 0, "min_stop_min": 0},
                       {"id": "hp2", "capacity_kw": 400.0, "min_load_fraction": 0.4, "min_run_min": 0,
                        "min_stop_min": 0}],
        "points": {"it_heat": ["cdu1.heat_removed"]}})


def part_load_plan(inputs: Inputs, previous: Plan | None, timeout_s: float) -> Plan:
    """hp1 at 300 of 500 kW, hp2 at 100 of 400 kW (below its 40 % minimum load), over the whole horizon."""
    steps = tuple(Step(inputs.start + timedelta(minutes=15 * i), (300.0, 100.0), (1, 1), 100.0, 0.0, 0.0, 0.0, 0.0,
                       0.0, 400.0, 400.0) for i in range(inputs.steps))
    return Plan(inputs.start, inputs.step_s, ("hp1", "hp2"), steps, "optimal", expected_margin_dkk=Decimal("1"))


async def test_the_task_hands_the_limits_over_and_the_status_shows_them(tmp_path: Path) -> None:
    series = price_data.PriceSeries("DK1", START, tuple(Decimal("100.00") for _ in range(96)))
    (tmp_path / "prices.json").write_text(json.dumps({"records": price_data.to_records(series)}, default=str))
    clock, bus, control = VirtualClock(START), SampleBus(), control_cfg()
    controller = Controller(control)
    task = DispatchTask(dispatch_cfg(tmp_path), control, bus, controller, clock, solver=part_load_plan)
    now = clock.now()
    for point, value in {"cdu1.heat_removed": 400.0, "hp1.outdoor_temperature": 5.0, "hp1.status": RUNNING,
                         "hp2.status": RUNNING}.items():
        bus.publish(Sample(point, value, Quality.GOOD, now, now))
    await task.replan()
    cmd = controller.dispatch
    assert cmd is not None and cmd.capacity_limit == {"hp1": 65.0, "hp2": 40.0}
    r = controller.step(image(0.0), 1.0)
    assert r.writes["hp1.capacity_limit"] == 65.0 and r.writes["hp2.capacity_limit"] == 40.0
    status = dispatch_status(task)
    assert status.command is not None and status.command.capacity_limit_percent == {"hp1": 65.0, "hp2": 40.0}
    assert status.capacity_limit_written == {"hp1": 65.0, "hp2": 40.0}
    await task.set_enabled(False, "op", "operator")
    assert controller.dispatch is None
    controller.step(image(1.0), 1.0)
    assert dispatch_status(task).capacity_limit_written == {"hp1": CAPACITY_FULL, "hp2": CAPACITY_FULL}
    # The cooling-first safe plan (here: the IT heat not measured) caps nothing: every pump may run at full.
    await task.set_enabled(True, "op", "operator")
    clock.advance(60)
    bus.publish(Sample("hp1.status", RUNNING, Quality.GOOD, clock.now(), clock.now()))
    bus.publish(Sample("hp2.status", RUNNING, Quality.GOOD, clock.now(), clock.now()))
    plan = await task.replan()
    assert plan.status == "safe"
    cmd = controller.dispatch
    assert cmd is not None and cmd.in_service == {"hp1", "hp2"} and cmd.capacity_limit == {}


async def test_the_loop_writes_the_cap_on_change_refreshes_it_and_releases_it_in_the_yielding_cycle() -> None:
    clock, bus = VirtualClock(START), SampleBus()
    writes: list[tuple[float, str, float]] = []

    async def write(point: str, value: float) -> WriteResult:
        writes.append((clock.monotonic(), point, value))
        return WriteResult(point, "ok", value, value, value)

    loop = ControlLoop(control_cfg(refresh_s=10.0), bus, write, clock)
    loop.controller.dispatch = BOTH_PART_LOAD

    async def cycles(n: int, cdu_supply: float = 29.0) -> None:
        for k in range(n):
            now = clock.now()
            for point, reading in image(0.0, cdu_supply + 0.01 * (k % 2)).readings.items():
                bus.publish(Sample(point, reading.value, Quality.GOOD, now, now))
            await loop.cycle()
            await loop.flush()
            clock.advance(1.0)

    def written(point: str) -> list[float]:
        return [v for _, p, v in writes if p == point]

    await cycles(25)
    # Written once, then again only as the refresh is due (every 10 s), like the SG-Ready state.
    assert written("hp1.capacity_limit") == [65.0] * 3 and written("hp2.capacity_limit") == [80.0] * 3
    writes.clear()
    await cycles(1, cdu_supply=31.8)  # IT cooling needs every pump: released in this very cycle
    assert written("hp1.capacity_limit") == [CAPACITY_FULL] and written("hp2.capacity_limit") == [CAPACITY_FULL]
    writes.clear()
    await cycles(3, cdu_supply=31.8)
    assert written("hp1.capacity_limit") == [], "unchanged: not written again before the refresh"
