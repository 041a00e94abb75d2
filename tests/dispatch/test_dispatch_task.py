"""The dispatch task with fakes: inputs from the bus, each fallback visible once, cooling-first execution, off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from service.audit import AuditEntry
from service.bus import SampleBus
from service.clock import VirtualClock
from service.config import ControlConfig, PlantDispatch
from service.control.command import SG_ENCOURAGED, SG_NORMAL, DispatchCommand
from service.control.controller import SG_BLOCKED, SG_RUN, Controller
from service.control.model import ProcessImage, Reading
from service.dispatch import prices as price_data
from service.dispatch.optimiser import Inputs, Plan, keep_previous
from service.dispatch.status import dispatch_status
from service.dispatch.task import DispatchTask, Measurements
from service.model import Quality, Sample

START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday, 01:00 Danish time: the tariffs' low band
RUNNING, FAULT = 1, 2


def control_cfg() -> ControlConfig:
    return ControlConfig.model_validate({
        "supply_temperature": "m.flow_temperature", "outdoor_temperature": "hp1.outdoor_temperature",
        "target": "fixed", "fixed_target": 65.0, "setpoint_min": 45.0, "setpoint_max": 85.0,
        "cdu_margin_k": 0.5, "cdu_headroom_alarm_k": 1.5, "frozen_after_s": None, "start_grace_s": 0,
        "heat_pumps": [{"id": f"hp{i}", "setpoint": f"hp{i}.supply_setpoint", "sg_ready": f"hp{i}.sg_ready",
                        "status": f"hp{i}.status", "heat_output": f"hp{i}.heat_output", "capacity_kw": 500.0}
                       for i in (1, 2)],
        "cdus": [{"supply_temperature": "cdu1.supply_temperature", "allowable_max_value": 32.0}]})


def dispatch_cfg(tmp_path: Path, **over: Any) -> PlantDispatch:
    data: dict[str, Any] = {
        "enabled": True, "price_file": str(tmp_path / "prices.json"), "tariffs": "dk1_10kv_illustrative",
        "heat_price_dkk_per_mwh": "300", "horizon_h": 4, "dry_cooler_capacity_kw": 1000.0,
        "source_temperature": 35.0, "sink_temperature": 65.0, "replan_s": 900, "step_s": 900,
        "heat_pumps": [{"id": "hp1", "capacity_kw": 500.0, "min_run_min": 0, "min_stop_min": 0},
                       {"id": "hp2", "capacity_kw": 500.0, "min_run_min": 0, "min_stop_min": 0}],
        "store": {"volume_m3": 50.0, "min_temperature": 40.0, "max_temperature": 70.0},
        "points": {"it_heat": ["cdu1.heat_removed"], "store_state_of_charge": "tank.state_of_charge"}}
    data.update(over)
    return PlantDispatch.model_validate(data)


def write_prices(path: Path, dkk_per_mwh: list[str], start: datetime = START) -> None:
    series = price_data.PriceSeries("DK1", start, tuple(Decimal(p) for p in dkk_per_mwh))
    path.write_text(json.dumps({"records": price_data.to_records(series)}, default=str))


class Rig:
    """A bus with the plant's latest samples, a controller and the task on a virtual clock."""

    def __init__(self, tmp_path: Path, **over: Any) -> None:
        self.clock = VirtualClock(START)
        self.bus = SampleBus()
        self.control = control_cfg()
        self.controller = Controller(self.control)
        self.events: list[tuple[str, str, str]] = []
        self.audit: list[AuditEntry] = []

        async def audit(entry: AuditEntry) -> None:
            self.audit.append(entry)

        self.cfg = dispatch_cfg(tmp_path, **over)
        self.task = DispatchTask(self.cfg, self.control, self.bus, self.controller, self.clock, audit=audit,
                                 events=lambda *e: self.events.append(e), state_path=tmp_path / "dispatch.json")

    def publish(self, **values: float) -> None:
        now = self.clock.now()
        for point, value in values.items():
            self.bus.publish(Sample(point.replace("__", "."), value, Quality.GOOD, now, now))

    def plant(self, it_heat: float = 600.0, soc: float = 0.5, hp1: int = RUNNING, hp2: int = RUNNING) -> None:
        self.publish(cdu1__heat_removed=it_heat, tank__state_of_charge=soc, hp1__outdoor_temperature=5.0,
                     hp1__status=hp1, hp2__status=hp2, hp1__heat_output=300.0, hp2__heat_output=250.0)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield Rig(tmp_path)


def test_inputs_come_from_the_measurements_the_status_words_and_the_prices(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["100.00"] * 96)
    rig.plant(it_heat=640.0, soc=0.25, hp1=RUNNING, hp2=RUNNING | FAULT)
    m = rig.task.measure()
    assert m.it_heat_kw == 640.0 and m.store_share == 0.25 and m.outdoor == 5.0
    assert m.heat_output_kw == 550.0 and not m.missing
    series, why = rig.task.read_prices()
    assert series is not None and why == ""
    inputs = rig.task.build_inputs(m, series, START)
    assert inputs.steps == 16 and inputs.it_heat_kw == (640.0,) * 16
    assert inputs.heat_price_dkk_per_kwh == Decimal("0.3")
    hp1, hp2 = inputs.units
    assert hp1.available and hp1.was_on and not hp2.available, "a set fault bit takes the pump out of the plan"
    assert inputs.store is not None and inputs.store.initial_kwh == pytest.approx(0.25 * inputs.store.capacity_kwh)
    # 100 DKK/MWh spot is 0.1 DKK/kWh, plus the tariffs and taxes of the hour.
    assert inputs.electricity_dkk_per_kwh is not None
    addon = rig.task.tariffs.addon_dkk_per_kwh(START)
    assert inputs.electricity_dkk_per_kwh[0] == Decimal("0.1") + addon
    # Outdoor 5 °C is below the dry coolers' design temperature: full capacity.
    assert inputs.dry_cooler_kw[0] == 1000.0


def test_stale_or_missing_measurements_are_named(rig: Rig) -> None:
    rig.plant()
    rig.clock.advance(60)  # older than stale_after_s
    m = rig.task.measure()
    assert m.it_heat_kw is None and "cdu1.heat_removed" in m.missing


async def test_missing_prices_fall_back_to_todays_control_once_per_episode(rig: Rig, tmp_path: Path) -> None:
    rig.plant()
    plan = await rig.task.replan()
    assert plan.status == "follow_demand" and "missing prices" in plan.reason and "prices.json" in plan.reason
    assert rig.controller.dispatch is None, "no prices: the controller is exactly today's"
    await rig.task.replan()
    kinds = [e[0] for e in rig.events]
    assert kinds == ["fallback_follow_demand"], "logged and recorded once per episode"
    status = dispatch_status(rig.task)
    assert status.fallback and status.status == "follow_demand" and status.command is None
    assert rig.task.stats.fallbacks == {"follow_demand": 2} and rig.task.stats.episodes == 1
    # Prices come back: a fresh plan, and the end of the episode is recorded too.
    write_prices(tmp_path / "prices.json", ["100.00"] * 96)
    plan = await rig.task.replan()
    assert plan.status == "optimal"
    assert [e[0] for e in rig.events] == ["fallback_follow_demand", "fallback_ended"]
    assert not dispatch_status(rig.task).fallback


async def test_a_solver_timeout_keeps_the_last_plan(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["100.00"] * 96)
    rig.plant()
    first = await rig.task.replan()
    assert first.status == "optimal"
    rig.clock.advance(900)
    rig.plant()
    limits: list[float] = []

    def timed_out(inputs: Inputs, previous: Plan | None, timeout_s: float) -> Plan:
        # What optimise returns when HiGHS hits its time limit (its own tests prove that part).
        limits.append(timeout_s)
        kept = keep_previous(previous, inputs.start, f"solver timeout after {timeout_s:.2f} s (limit {timeout_s:g} s)")
        assert kept is not None
        return kept

    rig.task._solver = timed_out
    kept = await rig.task.replan()
    assert limits == [rig.cfg.solver_time_limit_s], "the configured time limit is passed on"
    assert kept.status == "kept_previous" and "timeout" in kept.reason
    assert kept.steps == first.steps[1:], "the last plan, from now on"
    assert rig.controller.dispatch is not None and rig.controller.dispatch.status == "kept_previous"
    assert [e[0] for e in rig.events] == ["fallback_kept_previous"]
    assert dispatch_status(rig.task).reason == kept.reason


async def test_an_infeasible_plan_falls_back_to_the_cooling_first_safe_plan(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["100.00"] * 96)
    rig.plant(it_heat=5000.0)  # more than the pumps and the dry coolers can take
    plan = await rig.task.replan()
    assert plan.status == "safe" and "infeasible" in plan.reason
    cmd = rig.controller.dispatch
    assert cmd is not None and cmd.in_service == {"hp1", "hp2"}, "every available pump in service"
    assert [e[0] for e in rig.events] == ["fallback_safe"]


async def test_expensive_hours_stop_the_pumps(rig: Rig, tmp_path: Path) -> None:
    # The first hour costs 3000 DKK/MWh (3 DKK/kWh + tariffs): the pumps lose money; then 0 DKK/MWh.
    write_prices(tmp_path / "prices.json", ["3000.00"] * 4 + ["0.00"] * 92)
    rig.plant(it_heat=400.0, soc=0.5)
    plan = await rig.task.replan()
    assert plan.status == "optimal"
    cmd = rig.controller.dispatch
    assert cmd is not None and cmd.in_service == frozenset(), "the expensive step runs no pump"
    assert plan.steps[0].discharge_kw > 0 and plan.steps[0].rejected_kw == pytest.approx(400.0)
    rig.clock.advance(3600)
    rig.task.apply()
    cmd = rig.controller.dispatch
    assert cmd is not None and len(cmd.in_service) == 1, "the cheap hour runs a pump"
    assert set(cmd.sg_ready.values()) == {SG_NORMAL}, "all its heat goes to the network: nothing to store"


async def test_cheap_hours_before_expensive_ones_charge_the_store(tmp_path: Path) -> None:
    rig = Rig(tmp_path, points={"it_heat": ["cdu1.heat_removed"], "demand": ["m.power"],
                                "store_state_of_charge": "tank.state_of_charge"})
    write_prices(tmp_path / "prices.json", ["0.00"] * 4 + ["3000.00"] * 92)
    rig.plant(it_heat=400.0, soc=0.0)
    rig.publish(m__power=300.0)  # the network takes less than a pump makes
    plan = await rig.task.replan()
    assert plan.status == "optimal" and plan.steps[0].charge_kw > 0
    cmd = rig.controller.dispatch
    assert cmd is not None and len(cmd.in_service) == 1
    assert set(cmd.sg_ready.values()) == {SG_ENCOURAGED}, "charging: the pump is encouraged beyond demand"
    assert plan.steps[4].discharge_kw > 0 and not any(plan.steps[4].on), "the store covers the expensive hour"


async def test_the_off_switch_is_audited_kept_and_leaves_todays_control(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["3000.00"] * 96)
    rig.plant()
    await rig.task.replan()
    assert rig.controller.dispatch is not None
    assert await rig.task.set_enabled(False, "shift-operator", "operator") is False
    assert rig.controller.dispatch is None
    entry = rig.audit[-1]
    assert (entry.principal, entry.action, entry.target, entry.applied, entry.outcome) == (
        "shift-operator", "dispatch.set", "dispatch.enabled", False, "accepted")
    await rig.task.replan()
    assert rig.controller.dispatch is None, "a new plan does not switch it back on"
    # Restarted: the operator's switch holds, not the configuration's enabled = true.
    again = Rig(tmp_path)
    assert again.task.enabled is False and again.task.enabled_by == "shift-operator"
    status = dispatch_status(again.task)
    assert status.enabled is False and status.enabled_by == "shift-operator"


# --- execution in the controller -----------------------------------------------------------------


def image(t: float, cdu_supply: float, hp1: int = RUNNING, hp2: int = RUNNING) -> ProcessImage:
    return ProcessImage(t, {"m.flow_temperature": Reading(65.0), "hp1.outdoor_temperature": Reading(5.0),
                            "cdu1.supply_temperature": Reading(cdu_supply), "hp1.status": Reading(float(hp1)),
                            "hp2.status": Reading(float(hp2)), "hp1.heat_output": Reading(300.0),
                            "hp2.heat_output": Reading(300.0)})


STOP_HP2 = DispatchCommand("2026-01-05T00:00:00+00:00", frozenset({"hp1"}), {"hp1": SG_ENCOURAGED})


def test_the_controller_follows_the_step_while_cooling_has_room() -> None:
    c = Controller(control_cfg())
    c.dispatch = STOP_HP2
    r = c.step(image(0.0, 29.0), 1.0)
    assert r.dispatch == "applied"
    assert r.writes["hp2.sg_ready"] == SG_BLOCKED and r.writes["hp1.sg_ready"] == SG_ENCOURAGED
    assert r.running == ["hp1"]
    assert c.arbiter.last  # the writes went through the arbiter's clamps like any other
    assert r.decisions["hp2.sg_ready"].winner == "dispatch"


def test_cooling_first_overrides_the_plan_until_the_headroom_recovers() -> None:
    c = Controller(control_cfg())
    c.dispatch = STOP_HP2
    t = 0.0
    assert c.step(image(t, 29.0), 1.0).dispatch == "applied"
    # The CDU supply rises within the margin of its allowable maximum (32 °C, margin 0.5 K).
    t += 1
    r = c.step(image(t, 31.7), 1.0)
    assert r.dispatch == "yielded:cdu_headroom"
    assert r.writes["hp1.sg_ready"] == SG_RUN and r.writes["hp2.sg_ready"] == SG_RUN, "every pump back in service"
    # Headroom back above the margin but not by DISPATCH_RECOVERY_K: the plan still waits.
    t += 1
    r = c.step(image(t, 31.0), 1.0)
    assert r.dispatch == "yielded:cdu_headroom" and r.writes["hp2.sg_ready"] == SG_RUN
    for _ in range(60):  # the CDU limit's cap lets go as the headroom stays wide
        t += 1
        r = c.step(image(t, 29.0), 1.0)
    assert r.dispatch == "applied" and r.writes["hp2.sg_ready"] == SG_BLOCKED


def test_any_safe_state_sets_the_plan_aside() -> None:
    c = Controller(control_cfg())
    c.dispatch = STOP_HP2
    c.step(image(0.0, 29.0), 1.0)
    lost = ProcessImage(1.0, {k: v for k, v in image(1.0, 29.0).readings.items() if k != "cdu1.supply_temperature"})
    r = c.step(lost, 1.0)
    assert r.safe_state and r.dispatch == "yielded:safe_state"
    assert r.running == ["hp1", "hp2"]


def test_a_tripped_pump_is_not_counted_in_service() -> None:
    c = Controller(control_cfg())
    c.dispatch = DispatchCommand("x", frozenset({"hp1", "hp2"}))
    r = c.step(image(0.0, 29.0, hp2=FAULT), 1.0)
    assert r.running == ["hp1"] and r.writes["hp2.sg_ready"] == SG_BLOCKED


def test_without_a_command_or_outside_auto_the_controller_is_exactly_todays() -> None:
    plain, dispatched = Controller(control_cfg()), Controller(control_cfg())
    dispatched.dispatch = STOP_HP2
    dispatched.set_mode("manual")
    plain.set_mode("manual")
    for t in range(30):
        a, b = plain.step(image(float(t), 29.0 + t / 30), 1.0), dispatched.step(image(float(t), 29.0 + t / 30), 1.0)
        assert a.writes == b.writes
    assert b.dispatch == "inactive:manual"
    dispatched.dispatch = None
    plain.set_mode("auto")
    dispatched.set_mode("auto")
    for t in range(30, 60):
        a, b = plain.step(image(float(t), 29.5), 1.0), dispatched.step(image(float(t), 29.5), 1.0)
        assert a.writes == b.writes and b.dispatch is None


def test_a_compressed_run_replays_the_prices_one_interval_per_step(tmp_path: Path) -> None:
    rig = Rig(tmp_path, step_s=2.0, replan_s=2.0)
    later = START + timedelta(days=3)
    write_prices(tmp_path / "prices.json", ["100.00"] * 96, start=later)
    rig.plant()
    series, _ = rig.task.read_prices()
    assert series is not None
    plan, inputs = rig.task._solve(rig.task.measure())
    assert plan.status == "optimal"
    assert inputs.start == later, "the replay starts at the price data's first interval"
    rig.clock.advance(4.0)  # two plant steps of 2 s
    assert rig.task.plan_time() == later + timedelta(minutes=30)
    assert isinstance(rig.task.measure(), Measurements)


async def test_a_change_the_plan_commanded_dates_from_its_step_not_from_when_it_was_seen(rig: Rig,
                                                                                          tmp_path: Path) -> None:
    # Cheap for an hour, then dear: the plan starts the pumps now and stops them at 01:00.
    write_prices(tmp_path / "prices.json", ["0.00"] * 4 + ["3000.00"] * 92)
    rig.plant(it_heat=400.0, hp1=0, hp2=0)
    await rig.task.replan()
    cmd = rig.controller.dispatch
    assert cmd is not None and cmd.in_service
    started = next(iter(cmd.in_service))
    # The pump's status word shows it running only at the next step: the poll and the pump lag the command.
    rig.clock.advance(900)
    rig.plant(it_heat=400.0, **{started: RUNNING, ("hp2" if started == "hp1" else "hp1"): 0})
    await rig.task.replan()
    assert rig.task.inputs is not None
    unit = next(u for u in rig.task.inputs.units if u.id == started)
    assert unit.was_on and unit.steps_in_state == 1, "running since the step that started it"


async def test_an_unknown_status_word_gives_the_safe_plan_not_a_guess(rig: Rig, tmp_path: Path) -> None:
    write_prices(tmp_path / "prices.json", ["3000.00"] * 96)
    rig.plant()
    rig.clock.advance(10)
    rig.publish(cdu1__heat_removed=600.0, tank__state_of_charge=0.5, hp1__outdoor_temperature=5.0, hp1__status=1)
    plan = await rig.task.replan()  # hp2's status word is stale
    assert plan.status == "safe" and "hp2.status" in plan.reason
    cmd = rig.controller.dispatch
    assert cmd is not None and cmd.in_service == {"hp1", "hp2"}
