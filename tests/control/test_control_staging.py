"""Lead/lag staging: minimum run and stop times, load-based stages, trips, direct exchange."""

from __future__ import annotations

from service.control.staging import PumpStage, Staging, StagingInputs


def staging() -> Staging:
    return Staging([PumpStage("hp1", 600.0), PumpStage("hp2", 600.0)], min_run_s=300.0, min_stop_s=200.0,
                   up_delay_s=60.0, down_delay_s=120.0, up_load=0.9, down_load=0.4)


def inputs(t: float, heat: float | None, *, need: bool = False, direct: bool = False,
           available: dict[str, bool] | None = None) -> StagingInputs:
    return StagingInputs(t, available or {}, heat, need, direct)


def test_low_load_stops_the_lag_pump_after_the_delay_and_min_run() -> None:
    s = staging()
    t = 0.0
    while t < 119:
        assert s.step(inputs(t, 200.0)) == ["hp1", "hp2"], "the stage-down delay is not over"
        t += 1
    assert s.step(inputs(120.0, 200.0)) == ["hp1"]


def test_a_stopped_pump_waits_min_stop_before_it_starts_again() -> None:
    s = staging()
    s.step(inputs(0.0, 100.0))
    assert s.step(inputs(120.0, 100.0)) == ["hp1"]
    t = 121.0
    while t < 320.0:  # need for more heat, but hp2 stopped at 120 s
        assert s.step(inputs(t, 590.0)) == ["hp1"]
        t += 1
    assert s.step(inputs(320.0, 590.0)) == ["hp1", "hp2"]


def test_a_tripped_pump_is_dropped_at_once_and_the_other_one_stays() -> None:
    s = staging()
    assert s.step(inputs(0.0, 300.0, available={"hp1": False})) == ["hp2"]
    # hp1 is not started while unavailable, even when more heat is wanted.
    assert s.step(inputs(1000.0, 590.0, need=True, available={"hp1": False})) == ["hp2"]


def test_direct_exchange_stages_the_pumps_off_one_by_one() -> None:
    s = staging()
    s.step(inputs(0.0, None, direct=True))
    assert s.step(inputs(120.0, None, direct=True)) == ["hp1"]
    assert s.step(inputs(121.0, None, direct=True)) == ["hp1"], "the delay starts again after each stage"
    assert s.step(inputs(241.0, None, direct=True)) == []
    # The source cools: the direct exchanger no longer suffices and the lead starts after the delay.
    assert s.step(inputs(600.0, None)) == []
    assert s.step(inputs(660.0, None)) == ["hp1"]


def test_force_all_on_ignores_timers() -> None:
    s = staging()
    s.step(inputs(0.0, 100.0))
    s.step(inputs(120.0, 100.0))
    s.force_all_on(121.0)
    assert s.running() == ["hp1", "hp2"]
