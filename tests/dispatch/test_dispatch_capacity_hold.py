"""Anti-windup under the plan's capacity limits: while they bind, the supply setpoint is held where it is.

A small plant in the test: the supply follows the mean setpoint with a lag, but while the plan's caps hold the
heat back it cannot rise above a ceiling (the capped pumps then report their heat output at the cap).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.control.command import DispatchCommand
from service.control.controller import CAPACITY_HOLD_DEADBAND_K, Controller
from service.control.model import ProcessImage, Reading
from tests.dispatch.test_dispatch_capacity_limit import BOTH_PART_LOAD, RUNNING, control_cfg

SETPOINTS = ("hp1.supply_setpoint", "hp2.supply_setpoint")
AT_CAP = {"hp1": 325.0, "hp2": 400.0}  # 65 % and 80 % of 500 kW: BOTH_PART_LOAD's limits
UNDER_CAP = {"hp1": 250.0, "hp2": 250.0}  # room under both caps: the setpoint still has authority
TAU_S = 20.0  # the supply's lag behind the setpoint


def image(t: float, supply: float, heat: dict[str, float] | None, cdu_supply: float = 29.0) -> ProcessImage:
    readings = {"m.flow_temperature": Reading(supply), "hp1.outdoor_temperature": Reading(5.0),
                "hp1.status": Reading(float(RUNNING)), "hp2.status": Reading(float(RUNNING)),
                "cdu1.supply_temperature": Reading(cdu_supply)}
    for hp, kw in (heat or {}).items():
        readings[f"{hp}.heat_output"] = Reading(kw)
    return ProcessImage(t, readings)


@dataclass
class Plant:
    """Supply after a first-order lag on the mean setpoint; while `ceiling` is set it cannot pass it."""

    supply: float
    ceiling: float | None = None
    t: float = 0.0
    peak: float = 0.0

    def run(self, c: Controller, seconds: int, heat: dict[str, float] | None = None,
            cdu_supply: float = 29.0) -> list[float]:
        """`seconds` 1-s cycles; returns the mean setpoint written in each."""
        out: list[float] = []
        for _ in range(seconds):
            r = c.step(image(self.t, self.supply, heat, cdu_supply), 1.0)
            sp = sum(r.writes[p] for p in SETPOINTS) / len(SETPOINTS)
            goal = sp if self.ceiling is None else min(sp, self.ceiling)
            self.supply += (goal - self.supply) / TAU_S
            self.peak = max(self.peak, self.supply)
            self.t += 1.0
            out.append(sp)
        return out


def capped_for(seconds: int, heat: dict[str, float] | None) -> tuple[Controller, Plant, list[float]]:
    """Following BOTH_PART_LOAD with the caps holding the supply at 60 °C, 5 K below the 65 °C target."""
    c = Controller(control_cfg())
    c.dispatch = BOTH_PART_LOAD
    plant = Plant(supply=60.0, ceiling=60.0)
    return c, plant, plant.run(c, seconds, heat)


def test_a_binding_cap_holds_the_setpoint_and_the_integral_does_not_wind_up() -> None:
    held, _, sp_held = capped_for(900, AT_CAP)
    # Without a heat output to show the caps bind, the hold never engages: today's windup, for comparison.
    wound, _, sp_wound = capped_for(900, None)
    assert max(sp_wound) == 85.0, "the setpoint climbs to setpoint_max"
    # The target ramps up from the measured 60 °C at 3 K/min: the setpoint follows until the supply is more
    # than the deadband below it, then holds where it was, however long the caps bind.
    assert max(sp_held) < 62.0 and max(sp_held[300:]) == min(sp_held[300:])
    last = held.last
    assert last is not None and last.constraint == "capacity_limit" and last.dispatch == "applied"
    assert {last.decisions[p].limited_by for p in SETPOINTS} == {"cap:capacity_limit"}
    assert last.caps == {}, "the hold is no safety cap on other writers"
    # Back-calculation keeps the integral next to the output in force, not tens of kelvins above it.
    assert abs(held.pid.integral) < 10.0 < abs(wound.pid.integral)


def test_after_the_release_the_supply_does_not_overshoot_more_than_a_pid_that_never_met_a_cap() -> None:
    peaks: dict[str, float] = {}
    for name, heat in (("held", AT_CAP), ("wound", None)):
        c, plant, _ = capped_for(900, heat)
        c.dispatch, plant.ceiling, plant.peak = None, None, 0.0  # dispatch off: caps released, heat is free
        plant.run(c, 900, UNDER_CAP)
        peaks[name] = plant.peak
    # The reference: the same step, 60 °C with the target at 65 °C, on a PID that never met a cap.
    c = Controller(control_cfg())
    ref = Plant(supply=60.0)
    ref.run(c, 900, UNDER_CAP)
    assert ref.peak < 66.0
    assert peaks["held"] <= ref.peak + 0.5, peaks
    assert peaks["wound"] > ref.peak + 3.0, peaks  # today's windup: the supply overshoots by kelvins


def test_a_cap_that_does_not_bind_changes_nothing() -> None:
    for supply, heat in ((65.0, AT_CAP),  # at the caps but at target: nothing to hold back
                         (65.0 - CAPACITY_HOLD_DEADBAND_K / 2, AT_CAP),  # inside the deadband
                         (60.0, UNDER_CAP)):  # below target, but with room under the caps
        a, b = Controller(control_cfg()), Controller(control_cfg())
        a.dispatch = b.dispatch = BOTH_PART_LOAD
        for t in range(120):
            ra = a.step(image(float(t), supply, heat), 1.0)
            rb = b.step(image(float(t), supply, None), 1.0)  # no heat output: the hold can never engage
            assert ra.writes == rb.writes and ra.constraint == rb.constraint
            assert "cap:capacity_limit" not in {d.limited_by for d in ra.decisions.values()}


def test_a_pump_without_a_cap_leaves_the_setpoint_free() -> None:
    """One running pump at 100 % still answers the setpoint: no hold."""
    c = Controller(control_cfg())
    c.dispatch = DispatchCommand("x", frozenset({"hp1", "hp2"}), capacity_limit={"hp1": 65.0})
    sp = Plant(supply=60.0, ceiling=60.0).run(c, 600, AT_CAP | {"hp2": 500.0})
    assert max(sp) == 85.0


def test_yielding_to_it_cooling_lifts_the_hold() -> None:
    c, plant, sp = capped_for(600, AT_CAP)
    held = sp[-1]
    assert c.last is not None and c.last.constraint == "capacity_limit"
    # The CDU headroom falls below its margin: dispatch yields, every cap is released, and so is the hold.
    sp = plant.run(c, 5, AT_CAP, cdu_supply=31.7)
    assert c.last is not None and c.last.dispatch == "yielded:cdu_headroom"
    assert c.last.capacity_limits == {"hp1": 100.0, "hp2": 100.0}
    assert "cap:capacity_limit" not in {d.limited_by for d in c.last.decisions.values()}
    assert c.last.constraint == "cdu_limit" and max(sp) <= held, "cooling first: the CDU limit lowers it"
    # A safe state (a CDU input lost) and manual mode: no plan, no hold.
    c2, plant2, _ = capped_for(600, AT_CAP)
    r = c2.step(ProcessImage(plant2.t, {k: v for k, v in image(plant2.t, 60.0, AT_CAP).readings.items()
                                        if k != "cdu1.supply_temperature"}), 1.0)
    assert r.safe_state and r.dispatch == "yielded:safe_state"
    assert "cap:capacity_limit" not in {d.limited_by for d in r.decisions.values()}
    c3, plant3, _ = capped_for(600, AT_CAP)
    c3.set_mode("manual")
    c3.manual_setpoint = 70.0
    sp = plant3.run(c3, 60, AT_CAP)
    assert sp[-1] == 70.0 and c3.last is not None and c3.last.dispatch == "inactive:manual"


def test_a_lower_cdu_limit_still_wins_over_the_hold() -> None:
    c, plant, sp = capped_for(600, AT_CAP)
    held = sp[-1]
    assert c.last is not None and c.last.constraint == "capacity_limit"
    # The headroom shrinks fast but is still above the margin: the CDU limit's derivative caps below the hold.
    out = plant.run(c, 1, AT_CAP, cdu_supply=30.8)
    last = c.last
    assert last is not None and last.dispatch == "applied"
    assert {last.decisions[p].limited_by for p in SETPOINTS} == {"cap:cdu_limit"}
    assert out[0] < held and last.constraint == "cdu_limit"
    plant.run(c, 1, AT_CAP, cdu_supply=30.8)
    assert c.last is not None and c.last.dispatch == "yielded:cdu_headroom"  # and cooling first takes over


def test_cooling_first_sees_a_cdu_limit_that_binds_under_the_hold() -> None:
    """The CDU limit above the held setpoint but below what the PID asks: the hold names the decision, yet
    the CDU limit binds too, so cooling first takes over in the next cycle exactly as without the hold."""
    c, plant, sp = capped_for(600, AT_CAP)
    held = sp[-1]
    plant.run(c, 1, AT_CAP, cdu_supply=30.52)
    last = c.last
    assert last is not None and last.dispatch == "applied"
    assert {last.decisions[p].limited_by for p in SETPOINTS} == {"cap:capacity_limit"}
    assert all(held < cap for cap in last.caps.values()) and set(last.caps) == set(SETPOINTS)
    assert last.constraint == "cdu_limit"
    plant.run(c, 1, AT_CAP, cdu_supply=30.52)
    assert c.last is not None and c.last.dispatch == "yielded:cdu_headroom"
    assert c.last.capacity_limits == {"hp1": 100.0, "hp2": 100.0}
