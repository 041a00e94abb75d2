"""The pure controller: targets, modes, the CDU limit and the safe states, on hand-made process images."""

from __future__ import annotations

import pytest

from bench.closed_loop import METER, control_config
from service.control.controller import Controller
from service.control.model import ProcessImage, Reading

GOOD = {METER: 70.0, "hp1.outdoor_temperature": 0.0, "cdu1.secondary_supply_temperature": 30.0,
        "cdu1.supply_temperature_allowable_max": 35.0, "hp1.status": 1.0, "hp2.status": 1.0,
        "hp1.heat_output": 400.0, "hp2.heat_output": 400.0}
SETPOINTS = ("hp1.supply_setpoint", "hp2.supply_setpoint")


def image(t: float, **changes: float | str | None) -> ProcessImage:
    """GOOD readings with some replaced: a number, or a problem name ("stale", "bad") for no value."""
    readings = {p: Reading(v) for p, v in GOOD.items()}
    readings[METER] = Reading(70.0 + 0.01 * (int(t) % 2))  # a live sensor never repeats for long
    readings["cdu1.secondary_supply_temperature"] = Reading(30.0 + 0.01 * (int(t) % 2))
    for key, value in changes.items():
        point = key.replace("__", ".")
        if point == "cdu1.secondary_supply_temperature" and isinstance(value, float):
            value += 0.01 * (int(t) % 2)  # live, like the network supply (a constant one would be frozen)
        readings[point] = Reading(None, value) if isinstance(value, str) else Reading(value)  # type: ignore[arg-type]
    return ProcessImage(t, readings)


def run(ctl: Controller, seconds: int, start: float = 0.0, **changes: float | str | None) -> None:
    for k in range(seconds):
        ctl.step(image(start + k, **changes), 1.0)


def test_auto_follows_the_curve_and_writes_setpoints_sg_ready_and_heartbeats() -> None:
    ctl = Controller(control_config())
    res = ctl.step(image(0.0), 1.0)
    assert res.target_source == "curve" and not res.safe_state
    assert set(res.writes) >= {*SETPOINTS, "hp1.sg_ready", "hp2.sg_ready", "hp1.heartbeat", "hp2.heartbeat"}
    beat = res.writes["hp1.heartbeat"]
    res = ctl.step(image(1.0), 1.0)
    assert res.writes["hp1.heartbeat"] == beat + 1, "the heartbeat changes every cycle"
    # 0 °C outside on the -12 → 80, 15 → 65 curve: 73.3 °C; the target ramps there from the measured 70 °C.
    assert ctl.curve(0.0) == pytest.approx(73.333, abs=0.01)
    assert 70.0 < res.target < 70.2  # type: ignore[operator]


@pytest.mark.parametrize(("point", "problem"), [(METER, "stale"), (METER, "bad"),
                                                ("cdu1.secondary_supply_temperature", "stale"),
                                                ("cdu1.supply_temperature_allowable_max", "missing")])
def test_an_unusable_input_means_the_safe_state_in_the_same_cycle(point: str, problem: str) -> None:
    ctl = Controller(control_config(safe_setpoint=65.0))
    run(ctl, 30)
    res = ctl.step(image(30.0, **{point.replace(".", "__"): problem}), 1.0)
    assert res.safe_state and res.constraint == f"safe_state:{problem}_input"
    assert point in (res.safe_state_reason or "")
    # Safety priority: the safe setpoint is approached at the point's rate limit, every pump enabled.
    assert res.decisions["hp1.supply_setpoint"].winner == "safe_state"
    assert res.writes["hp1.sg_ready"] == 0.0 and res.writes["hp2.sg_ready"] == 0.0
    assert "hp1.heartbeat" in res.writes, "holding the safe setpoint, heatrec stays the master"
    run(ctl, 60, 31.0, **{point.replace(".", "__"): problem})
    assert ctl.last is not None and ctl.last.writes["hp1.supply_setpoint"] == 65.0


def test_without_a_safe_setpoint_the_loop_releases_the_pumps_to_their_watchdogs() -> None:
    ctl = Controller(control_config(safe_setpoint=None))
    run(ctl, 10)
    res = ctl.step(image(10.0, meter1__flow_temperature="stale"), 1.0)
    # No setpoints, no heartbeats: the device falls back by itself; staging blocks no pump meanwhile.
    assert res.safe_state and res.writes == {"hp1.sg_ready": 0.0, "hp2.sg_ready": 0.0}
    res = ctl.step(image(11.0), 1.0)
    assert not res.safe_state and "hp1.heartbeat" in res.writes


def test_a_frozen_supply_sensor_is_a_safe_state() -> None:
    ctl = Controller(control_config(frozen_after_s=30.0))
    for k in range(25):
        ctl.step(image(float(k), meter1__flow_temperature=70.0 + 0.01 * (k % 2)), 1.0)
    run(ctl, 29, 25.0, meter1__flow_temperature=70.123)
    assert ctl.last is not None and not ctl.last.safe_state
    res = ctl.step(image(55.0, meter1__flow_temperature=70.123), 1.0)
    assert res.safe_state and res.constraint == "safe_state:frozen_input"


def test_a_lost_outdoor_temperature_holds_the_last_target() -> None:
    ctl = Controller(control_config())
    run(ctl, 300)
    held = ctl.last.target if ctl.last else None
    res = ctl.step(image(300.0, hp1__outdoor_temperature="bad"), 1.0)
    assert not res.safe_state and res.target == held and res.constraint == "target_held:outdoor_bad"


def test_the_cdu_limit_lowers_the_setpoint_even_in_manual() -> None:
    for mode in ("auto", "manual"):
        ctl = Controller(control_config())
        run(ctl, 200)
        ctl.set_mode(mode)  # type: ignore[arg-type]
        ctl.manual_setpoint = 75.0
        before = ctl.last.writes["hp1.supply_setpoint"] if ctl.last else 0.0
        run(ctl, 60, 200.0, cdu1__secondary_supply_temperature=34.9)  # 0.1 K headroom, margin 0.5 K
        assert ctl.last is not None and ctl.last.constraint == "cdu_limit"
        assert ctl.last.target_requested == pytest.approx(ctl.curve(0.0)), "the curve still asks for its target"
        assert ctl.last.writes["hp1.supply_setpoint"] < min(before, 75.0) - 3.0


def test_override_ramps_and_off_writes_nothing() -> None:
    ctl = Controller(control_config(target_ramp_k_per_min=6.0))
    run(ctl, 200)
    ctl.override = 60.0
    res = ctl.step(image(200.0), 1.0)
    start = res.target or 0.0
    run(ctl, 10, 201.0)
    assert ctl.last is not None and ctl.last.target_source == "override"
    assert ctl.last.target == pytest.approx(start - 1.0, abs=1e-6), "6 K/min is 0.1 K per cycle"
    ctl.set_mode("off")
    res = ctl.step(image(211.0), 1.0)
    assert res.writes == {"hp1.sg_ready": 0.0, "hp2.sg_ready": 0.0} and res.constraint == "off"
    assert Controller(control_config(heat_pumps=[{"id": "hp1", "setpoint": "hp1.supply_setpoint"}],
                                     initial_mode="off")).step(image(0.0), 1.0).writes == {}


def test_manual_to_auto_is_bumpless() -> None:
    ctl = Controller(control_config(target_ramp_k_per_min=100.0))
    run(ctl, 100)
    ctl.set_mode("manual")
    ctl.manual_setpoint = 66.0
    run(ctl, 100, 100.0)  # the rate clamp walks the setpoint down to 66
    assert ctl.last is not None and ctl.last.writes["hp1.supply_setpoint"] == 66.0
    ctl.set_mode("auto")
    res = ctl.step(image(200.0), 1.0)
    assert abs(res.writes["hp1.supply_setpoint"] - 66.0) < 0.2


def test_nothing_is_written_before_the_inputs_were_usable_once() -> None:
    ctl = Controller(control_config(safe_setpoint=65.0))
    res = ctl.step(image(0.0, meter1__flow_temperature="missing"), 1.0)
    assert res.safe_state and res.writes == {}
    assert ctl.step(image(1.0), 1.0).writes, "fresh inputs: the loop takes over"


def test_a_tripped_pump_is_staged_out_and_the_lag_pump_carries_on() -> None:
    ctl = Controller(control_config())
    run(ctl, 30)
    res = ctl.step(image(30.0, hp1__status=float(0b010)), 1.0)  # status bit 1: fault/trip
    assert res.running == ["hp2"]
    assert res.writes["hp1.sg_ready"] == 1.0 and res.writes["hp2.sg_ready"] == 0.0


def test_taking_over_after_a_start_up_without_inputs_does_not_jump() -> None:
    """Regression: the integral once kept the whole output while the feedforward (the target) was still unknown."""
    ctl = Controller(control_config(safe_setpoint=65.0))
    for k in range(5):  # drivers not connected yet
        ctl.step(image(float(k), meter1__flow_temperature="missing", hp1__outdoor_temperature="missing"), 1.0)
    res = ctl.step(image(5.0), 1.0)
    assert not res.safe_state
    assert abs(res.writes["hp1.supply_setpoint"] - 70.0) < 1.0, "starts from the measured supply"
    run(ctl, 5, 6.0)  # (the image does not respond, so only the first cycles say anything)
    assert ctl.last is not None and ctl.last.writes["hp1.supply_setpoint"] < 72.0


def test_entering_manual_again_holds_the_present_output_not_an_old_manual_value() -> None:
    ctl = Controller(control_config())
    run(ctl, 50)
    ctl.set_mode("manual")
    ctl.manual_setpoint = 60.0
    run(ctl, 60, 50.0)
    ctl.set_mode("auto")
    run(ctl, 60, 110.0)
    now = ctl.last.writes["hp1.supply_setpoint"] if ctl.last else 0.0
    ctl.set_mode("manual")
    assert ctl.manual_setpoint == pytest.approx(now, abs=0.01)


def test_status_lists_pumps_by_their_own_status_word_with_the_reason() -> None:
    ctl = Controller(control_config())
    res = ctl.step(image(0.0), 1.0)
    assert res.reported_running == ["hp1", "hp2"] and res.not_running == {}
    # hp1 tripped (bit 1), hp2 offline (its status is BAD): neither runs, whatever the command says.
    res = ctl.step(image(1.0, hp1__status=3.0, hp2__status="bad"), 1.0)
    assert res.reported_running == []
    assert res.not_running["hp1"].startswith("tripped") and "bit 1" in res.not_running["hp1"]
    assert res.not_running["hp2"].startswith("status unknown") and "bad" in res.not_running["hp2"]
    # A tripped pump is left out by staging from then on; its own word still says why first.
    res = ctl.step(image(2.0, hp1__status=3.0), 1.0)
    assert res.not_running["hp1"].startswith("tripped")
    # Commanded to run but stopped (bit 0 clear), and running on the watchdog fallback (bits 0 and 2).
    res = Controller(control_config()).step(image(0.0, hp1__status=0.0, hp2__status=5.0), 1.0)
    assert res.reported_running == ["hp2"] and res.not_running["hp1"].startswith("stopped")
    assert "watchdog fallback" in res.not_running["hp2"]


def test_a_frozen_cdu_sensor_and_an_unknown_heat_pump_status_are_safe_states() -> None:
    ctl = Controller(control_config(frozen_after_s=30.0, safe_setpoint=65.0))
    run(ctl, 20)
    # The CDU supply sticks at one value: 30 s later the loop cannot vouch for IT cooling any more.
    def stuck(t: float) -> ProcessImage:
        return ProcessImage(t, {**image(t).readings, "cdu1.secondary_supply_temperature": Reading(30.25)})

    for k in range(29):
        assert not ctl.step(stuck(20.0 + k), 1.0).safe_state
    res = ctl.step(stuck(50.0), 1.0)
    assert res.safe_state and res.constraint == "safe_state:frozen_input"
    assert "cdu1.secondary_supply_temperature" in (res.safe_state_reason or "")
    assert not ctl.step(image(51.0), 1.0).safe_state, "a live value again ends it at once"
    # A heat pump's status word goes stale (its Modbus link lost): tripped or not is unknown.
    res = ctl.step(image(52.0, hp2__status="stale"), 1.0)
    assert res.safe_state and res.constraint == "safe_state:stale_input" and "hp2.status" in (res.safe_state_reason
                                                                                               or "")
    assert res.writes["hp1.supply_setpoint"] <= res.setpoints["hp1"]  # type: ignore[operator]
    assert not ctl.step(image(53.0), 1.0).safe_state


def test_the_cdu_limit_stops_at_its_floor() -> None:
    """Below cdu_limit_setpoint_min a lower setpoint takes less heat: however short the headroom, no lower."""
    ctl = Controller(control_config(cdu_limit_setpoint_min=60.0))
    run(ctl, 200)
    run(ctl, 600, 200.0, cdu1__secondary_supply_temperature=36.0)  # 1 K above the maximum, for 10 minutes
    assert ctl.last is not None and ctl.last.constraint == "cdu_limit"
    assert ctl.last.writes["hp1.supply_setpoint"] == pytest.approx(60.0)
    # Released: the setpoint climbs back from the floor at the rate clamp, not from a wound-down integral.
    run(ctl, 20, 800.0)
    assert 60.0 < ctl.last.writes["hp1.supply_setpoint"] <= 60.0 + 20 * 0.5 + 1e-6


def test_a_floor_outside_the_setpoint_range_is_refused() -> None:
    with pytest.raises(ValueError, match="cdu_limit_setpoint_min"):
        control_config(cdu_limit_setpoint_min=30.0)
    with pytest.raises(ValueError, match="cdu_headroom_alarm_k"):
        control_config(cdu_headroom_alarm_k=0.4)
