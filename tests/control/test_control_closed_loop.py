"""Closed loop on simulated time: the controller against the plant model for the five scenarios of issue 6."""

from __future__ import annotations

import pytest

from bench.closed_loop import Metrics, Scenario, control_config, run, suite

SCENARIOS = {s.name: s for s in suite()}


@pytest.fixture(scope="module")
def results() -> dict[str, Metrics]:
    out = {name: run(s, s.config()) for name, s in SCENARIOS.items()}
    for m in out.values():
        print(m.line())
    return out


def test_the_suite_covers_the_scenarios_of_the_issue_and_a_direct_exchange_plant() -> None:
    assert list(SCENARIOS) == ["it_load_steps", "outdoor_ramp", "heat_pump_trip", "frozen_sensor", "cdu_near_limit",
                               "dlc_load_steps"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_cdu_limit_violation_in_any_scenario(results: dict[str, Metrics], name: str) -> None:
    assert results[name].cdu_violations == 0
    assert results[name].min_cdu_headroom_k > 0


@pytest.mark.parametrize("name", ["it_load_steps", "outdoor_ramp", "heat_pump_trip"])
def test_tracking_scenarios_settle_tightly(results: dict[str, Metrics], name: str) -> None:
    m = results[name]
    assert m.settling_time_s is not None and m.settling_time_s < 600
    assert m.max_error_after_settling < 0.5
    assert m.overshoot < 1.0
    assert m.safe_state_s == 0
    # Mean absolute error below 0.1 K over the run after warm-up.
    assert m.iae < 0.1 * SCENARIOS[name].duration_s


def test_a_frozen_sensor_puts_the_loop_in_its_safe_state(results: dict[str, Metrics]) -> None:
    m = results["frozen_sensor"]
    sc = SCENARIOS["frozen_sensor"]
    cfg = control_config()
    assert sc.freeze_at_s is not None and cfg.frozen_after_s is not None and m.first_safe_state_s is not None
    assert m.first_safe_state_s <= sc.freeze_at_s + cfg.frozen_after_s + 2 * cfg.period_s
    assert m.safe_state_s >= sc.duration_s - sc.freeze_at_s - cfg.frozen_after_s - 2


def test_near_its_limit_the_cdu_is_held_by_giving_up_supply_temperature(results: dict[str, Metrics]) -> None:
    sc: Scenario = SCENARIOS["cdu_near_limit"]
    m = results["cdu_near_limit"]
    assert m.constrained_s > 600, "the IT-cooling limit must really bind in this scenario"
    unprotected = run(sc, control_config(cdus=[]))
    print("without the CDU limit:", unprotected.line())
    assert unprotected.cdu_violations > 100, "without the limit the same scenario overheats the CDU"


def test_feedforward_beats_a_plain_pi_on_the_outdoor_ramp(results: dict[str, Metrics]) -> None:
    baseline = run(SCENARIOS["outdoor_ramp"], SCENARIOS["outdoor_ramp"].config(feedforward=False))
    ratio = results["outdoor_ramp"].iae / baseline.iae
    print(f"outdoor ramp IAE: heatrec {results['outdoor_ramp'].iae:.1f} K·s, plain PI {baseline.iae:.1f} K·s, "
          f"ratio {ratio:.2f}")
    assert ratio <= 0.6


def test_heat_feedforward_helps_on_the_direct_exchange_plant(results: dict[str, Metrics]) -> None:
    sc = SCENARIOS["dlc_load_steps"]
    without = run(sc, sc.config(feedforward_heat=[]))
    ratio = results["dlc_load_steps"].iae / without.iae
    print(f"dlc load steps IAE: with heat feedforward {results['dlc_load_steps'].iae:.1f} K·s, "
          f"without {without.iae:.1f} K·s, ratio {ratio:.2f}")
    assert ratio < 0.95
