"""Physics of the plant model, on virtual time."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from service.clock import VirtualClock
from service.config import SimCdu, SimulationConfig
from simulators.faults import FaultBoard
from simulators.plant import (
    CDU_LOOP_DENSITY,
    CDU_TEMPERATURE_NOISE_K,
    CP_WATER,
    PlantModel,
    SgReady,
    carnot_cop,
    dh_return_temperature,
)

MakeConfig = Callable[..., SimulationConfig]


def run(model: PlantModel, clock: VirtualClock, seconds: float, dt: float = 1.0) -> None:
    for _ in range(round(seconds / dt)):
        clock.advance(dt)
        model.tick()


def snapshot(model: PlantModel) -> dict[str, object]:
    return {"cdus": {k: asdict(v) for k, v in model.cdus.items()},
            "heat_pumps": {k: asdict(v) for k, v in model.heat_pumps.items()},
            "heat_meters": {k: asdict(v) for k, v in model.heat_meters.items()}}


# --- clock ------------------------------------------------------------------------------------

def test_virtual_clock_moves_only_when_advanced() -> None:
    clock = VirtualClock(datetime(2025, 6, 1, 12, tzinfo=UTC))
    assert clock.monotonic() == 0.0
    clock.advance(90.5)
    assert clock.monotonic() == 90.5
    assert clock.now() == datetime(2025, 6, 1, 12, tzinfo=UTC) + timedelta(seconds=90.5)
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2025, 1, 1))


def test_tick_steps_by_the_clock_and_stamps_its_time(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    clock.advance(12.5)
    assert model.tick() == 12.5
    assert model.elapsed_s == 12.5
    assert model.time == clock.now()
    assert model.tick() == 0.0  # nothing advanced, nothing stepped


# --- CDU ----------------------------------------------------------------------------------------

def test_cdu_return_closes_the_energy_balance(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(cdu={"it_load_kw": 800.0}), clock)
    run(model, clock, 30)
    cdu = model.cdus["cdu1"]
    mass_flow = cdu.flow_liters_per_minute / 60 / 1000 * CDU_LOOP_DENSITY
    assert cdu.return_temperature == pytest.approx(
        cdu.supply_temperature + cdu.heat_removed_kw / (mass_flow * CP_WATER), rel=1e-9)
    assert 750 < cdu.heat_removed_kw < 850  # IT load ±3 % swing plus noise
    assert 0 < cdu.pump_speed_percent <= 100 and 0 < cdu.valve_position_percent <= 100


def test_cdu_supply_follows_a_new_setpoint(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    model.set_cdu_setpoint("cdu1", 33.0)
    run(model, clock, 300)
    assert model.cdus["cdu1"].supply_temperature == pytest.approx(33.0, abs=0.01)
    with pytest.raises(ValueError, match="outside"):
        model.set_cdu_setpoint("cdu1", 60.0)
    assert model.cdus["cdu1"].supply_temperature_setpoint == 33.0


# --- heat pump ------------------------------------------------------------------------------

def test_cop_of_a_30_to_70_lift_is_plausible(plant_config: MakeConfig, clock: VirtualClock) -> None:
    assert carnot_cop(70.0, 30.0, 0.5) == pytest.approx(0.5 * 343.15 / 40.0)
    assert 2.0 < carnot_cop(70.0, 30.0, 0.5) < 6.0
    model = PlantModel(plant_config(cdu={"supply_temperature_setpoint": 30.0},
                                    heat_pump={"supply_setpoint": 70.0}), clock)
    run(model, clock, 10)
    hp = model.heat_pumps["hp1"]
    assert 2.0 < hp.cop < 6.0
    # The lift seen by the heat pump is what the hot side and the CDU loop make of it.
    assert hp.cop == pytest.approx(carnot_cop(hp.supply_temperature, hp.source_outlet_temperature, 0.5),
                                   rel=0.02)


def test_a_higher_lift_costs_cop(plant_config: MakeConfig, clock: VirtualClock) -> None:
    assert carnot_cop(85.0, 30.0, 0.5) < carnot_cop(70.0, 30.0, 0.5) < carnot_cop(55.0, 30.0, 0.5)


def test_heat_pump_energy_balance_and_capacity_limit(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(cdu={"it_load_kw": 800.0}, heat_pump={"capacity_kw": 600.0}), clock)
    run(model, clock, 10)
    hp, cdu = model.heat_pumps["hp1"], model.cdus["cdu1"]
    assert hp.heat_output_kw == pytest.approx(600.0)
    assert hp.heat_output_kw == pytest.approx(hp.evaporator_heat_kw + hp.electric_power_kw)
    assert hp.electric_power_kw == pytest.approx(hp.heat_output_kw / hp.cop)
    # IT cooling first: the heat the pump cannot take goes to the dry coolers.
    assert model.dry_cooler_kw == pytest.approx(cdu.heat_removed_kw - hp.evaporator_heat_kw)
    assert model.dry_cooler_kw > 100


def test_supply_temperature_follows_a_new_setpoint_with_a_first_order_lag(
        plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"supply_setpoint": 70.0, "time_constant_s": 60.0}), clock)
    run(model, clock, 10)
    start = model.heat_pumps["hp1"].supply_temperature
    model.set_heat_pump_setpoint("hp1", 60.0)
    seen = []
    for _ in range(60):
        run(model, clock, 1)
        seen.append(model.heat_pumps["hp1"].supply_temperature)
    assert all(a > b for a, b in itertools.pairwise(seen))  # monotonic, no overshoot
    moved = (start - seen[-1]) / (start - 60.0)
    assert moved == pytest.approx(1 - math.exp(-1), abs=0.01)  # one time constant: 63 %
    run(model, clock, 540)
    assert model.heat_pumps["hp1"].supply_temperature == pytest.approx(60.0, abs=0.01)


def test_remote_setpoints_outside_the_accepted_range_are_refused(
        plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    for bad in (39.9, 85.1, float("nan")):
        with pytest.raises(ValueError):
            model.set_heat_pump_setpoint("hp1", bad)
    assert model.heat_pumps["hp1"].remote_setpoint == 70.0
    with pytest.raises(ValueError, match=r"0\.\.3"):
        model.set_sg_ready("hp1", 4)


def test_sg_ready_blocked_stops_the_heat_pump_and_forced_raises_the_setpoint(
        plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    model.set_sg_ready("hp1", SgReady.BLOCKED)
    run(model, clock, 5)
    hp = model.heat_pumps["hp1"]
    assert not hp.running and hp.status_word & 1 == 0
    assert hp.heat_output_kw == hp.electric_power_kw == 0.0
    assert model.dry_cooler_kw == pytest.approx(model.cdus["cdu1"].heat_removed_kw)
    model.set_sg_ready("hp1", SgReady.FORCED)
    run(model, clock, 5)
    assert hp.running and hp.status_word & 1 == 1
    assert model.effective_setpoint("hp1") > hp.remote_setpoint


def test_watchdog_is_armed_by_the_first_heartbeat_and_falls_back_after_the_timeout(
        plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"supply_setpoint": 70.0, "watchdog_timeout_s": 60.0}), clock)
    model.set_heat_pump_setpoint("hp1", 55.0)
    run(model, clock, 120)
    hp = model.heat_pumps["hp1"]
    assert not hp.watchdog_fallback, "never armed: no heartbeat master, no fallback"
    model.heartbeat("hp1", 1)
    run(model, clock, 59)
    assert not hp.watchdog_fallback and model.effective_setpoint("hp1") == 55.0
    run(model, clock, 2)
    assert hp.watchdog_fallback and hp.status_word & 0b100
    assert model.effective_setpoint("hp1") == 70.0  # the local setpoint
    run(model, clock, 300)
    assert hp.supply_temperature == pytest.approx(70.0, abs=0.1)
    model.heartbeat("hp1", 2)
    assert not hp.watchdog_fallback and model.effective_setpoint("hp1") == 55.0


def test_a_trip_shows_in_the_status_word(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    model.set_fault("hp1", True)
    run(model, clock, 1)
    assert model.heat_pumps["hp1"].status_word == 0b010
    model.set_fault("hp1", False)
    run(model, clock, 1)
    assert model.heat_pumps["hp1"].status_word == 0b001


# --- district heating and the meter ------------------------------------------------------------

def test_dh_return_stays_in_the_35_to_40_band() -> None:
    assert dh_return_temperature(-20.0) == 35.0
    assert dh_return_temperature(30.0) == 40.0
    assert 35.0 < dh_return_temperature(5.0) < 40.0
    assert dh_return_temperature(0.0) < dh_return_temperature(10.0)


def test_meter_measures_the_heat_pump_output(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    run(model, clock, 10)
    meter, hp = model.heat_meters["meter1"], model.heat_pumps["hp1"]
    assert meter.power_kw == pytest.approx(hp.heat_output_kw, rel=0.01)
    assert meter.flow_temperature_c == pytest.approx(hp.supply_temperature, abs=0.1)
    assert meter.return_temperature_c == pytest.approx(hp.return_temperature, abs=0.1)
    # q = P / (k·Δθ): ~1000 kW over ~32 K is about 27 m³/h.
    assert 20 < meter.flow_m3h < 35


def test_energy_register_is_monotonic_and_integrates_power(plant_config: MakeConfig,
                                                           clock: VirtualClock) -> None:
    model = PlantModel(plant_config(meter={"initial_energy_gj": 1234.5}), clock)
    meter = model.heat_meters["meter1"]
    assert meter.energy_gj == 1234.5
    registers, integrated = [meter.energy_gj], 0.0
    for i in range(600):
        if i == 200:
            model.set_sg_ready("hp1", SgReady.BLOCKED)  # no heat for a while: the register must hold
        if i == 400:
            model.set_sg_ready("hp1", SgReady.NORMAL)
        clock.advance(1.0)
        model.tick()
        integrated += meter.power_kw * 1.0 / 1e6
        registers.append(meter.energy_gj)
    assert all(b >= a for a, b in itertools.pairwise(registers))
    assert registers[300] == registers[250], "blocked heat pump: no energy counted"
    assert registers[-1] - registers[0] == pytest.approx(integrated, rel=1e-9)
    assert registers[-1] - registers[0] > 0.3  # ~400 s at ~1 MW = ~0.4 GJ
    assert meter.volume_m3 > 0


def test_same_seed_same_outputs_other_seed_other_noise(plant_config: MakeConfig) -> None:
    def trajectory(seed: int) -> list[dict[str, object]]:
        clock = VirtualClock()
        model = PlantModel(plant_config(seed=seed), clock)
        out = []
        for _ in range(50):
            clock.advance(0.5)
            model.tick()
            out.append(snapshot(model))
        return out

    assert trajectory(7) == trajectory(7)
    assert trajectory(7) != trajectory(8)


def test_negative_steps_are_refused(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    with pytest.raises(ValueError, match="non-negative"):
        model.step(-1.0)


# --- CDU sensors, time constant and panel ------------------------------------------------------------

def test_a_settled_cdu_reports_live_noisy_temperatures_while_the_physics_stays_true(
        plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    run(model, clock, 300)
    true_supply, served_supply, served_return = [], [], []
    for _ in range(200):
        run(model, clock, 1)
        reading = model.reported_cdu("cdu1")
        true_supply.append(model.cdus["cdu1"].supply_temperature)
        served_supply.append(reading.supply_temperature)
        served_return.append(reading.return_temperature - model.cdus["cdu1"].return_temperature)
        assert reading.heat_removed_kw == model.cdus["cdu1"].heat_removed_kw  # only the temperatures are noisy
    assert set(true_supply) == {30.0}, "the physics state settles exactly at its setpoint"
    assert len(set(served_supply)) == len(served_supply), "every served reading differs from the one before"
    for noise in ([t - 30.0 for t in served_supply], served_return):
        assert abs(statistics.fmean(noise)) < 0.01
        assert 0.5 * CDU_TEMPERATURE_NOISE_K < statistics.stdev(noise) < 1.5 * CDU_TEMPERATURE_NOISE_K
    assert model.cdus["cdu1"].supply_temperature == 30.0, "reading the sensors changes nothing"


def test_reading_the_sensors_does_not_perturb_the_seeded_run(plant_config: MakeConfig) -> None:
    def trajectory(read: bool) -> list[object]:
        clock = VirtualClock()
        model = PlantModel(plant_config(seed=3), clock)
        out: list[object] = []
        for _ in range(50):
            clock.advance(1.0)
            model.tick()
            if read:
                for _ in range(3):
                    model.reported_cdu("cdu1")
            out.append((snapshot(model), model.reported_cdu("cdu1")))
        return out

    assert trajectory(read=False) == trajectory(read=True)


def test_a_frozen_cdu_temperature_serves_exactly_the_captured_reading(plant_config: MakeConfig,
                                                                       clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    run(model, clock, 60)
    board = FaultBoard()
    board.add("cdu1", "frozen", point="supply_temperature")
    first = board.view("cdu1", model.reported_cdu("cdu1"))
    served = []
    for _ in range(50):
        run(model, clock, 1)
        served.append(board.view("cdu1", model.reported_cdu("cdu1")))
    assert {s.supply_temperature for s in served} == {first.supply_temperature}
    assert len({s.return_temperature for s in served}) == len(served), "the other sensor stays live"


@pytest.mark.parametrize("tau", [30.0, 120.0])
def test_cdu_supply_lag_follows_its_configured_time_constant(plant_config: MakeConfig, clock: VirtualClock,
                                                             tau: float) -> None:
    keys = {} if tau == 30.0 else {"time_constant_s": tau}  # 30 s is the default
    model = PlantModel(plant_config(cdu=keys), clock)
    run(model, clock, 10)
    model.set_cdu_setpoint("cdu1", 35.0)
    run(model, clock, tau)
    moved = (model.cdus["cdu1"].supply_temperature - 30.0) / 5.0
    assert moved == pytest.approx(1 - math.exp(-1), abs=1e-9)  # one time constant: 63 %
    run(model, clock, 10 * tau)
    assert model.cdus["cdu1"].supply_temperature == pytest.approx(35.0, abs=1e-3)


def test_cdu_time_constant_must_be_positive() -> None:
    assert SimCdu(id="cdu1").time_constant_s == 30.0
    with pytest.raises(ValidationError, match="time_constant_s"):
        SimCdu(id="cdu1", time_constant_s=0.0)


def test_the_allowable_max_set_on_the_cdu_panel_is_range_checked(plant_config: MakeConfig,
                                                                 clock: VirtualClock) -> None:
    model = PlantModel(plant_config(), clock)
    assert model.cdus["cdu1"].supply_temperature_allowable_max == 35.0
    model.set_cdu_allowable_max("cdu1", 31.5)
    assert model.cdus["cdu1"].supply_temperature_allowable_max == 31.5
    assert model.reported_cdu("cdu1").supply_temperature_allowable_max == 31.5
    model.set_cdu_allowable_max("cdu1", 0.0)
    model.set_cdu_allowable_max("cdu1", 100.0)
    for bad in (-0.1, 100.5, math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="cdu1 supply temperature allowable maximum"):
            model.set_cdu_allowable_max("cdu1", bad)
    assert model.cdus["cdu1"].supply_temperature_allowable_max == 100.0
    run(model, clock, 10)
    assert model.cdus["cdu1"].supply_temperature_allowable_max == 100.0, "the physics leaves the setting alone"


# --- compressor power limit ------------------------------------------------------------------------

def settled_heat_pump(plant_config: MakeConfig, supply_setpoint: float, compressor_power_kw: float | None
                      ) -> PlantModel:
    clock = VirtualClock()
    model = PlantModel(plant_config(heat_pump={"supply_setpoint": supply_setpoint,
                                               "compressor_power_kw": compressor_power_kw}), clock)
    run(model, clock, 600)
    return model


def test_with_a_compressor_limit_a_lower_supply_takes_more_heat_from_the_source(plant_config: MakeConfig) -> None:
    high = settled_heat_pump(plant_config, 70.0, 150.0).heat_pumps["hp1"]
    low = settled_heat_pump(plant_config, 60.0, 150.0).heat_pumps["hp1"]
    for hp in (high, low):
        assert hp.electric_power_kw == pytest.approx(150.0), "the compressor is what limits"
        assert hp.heat_output_kw == pytest.approx(150.0 * hp.cop)
        assert hp.heat_output_kw < 1000.0  # not the capacity
    assert low.cop > high.cop + 0.5
    assert low.evaporator_heat_kw > high.evaporator_heat_kw + 100.0  # the lever a CDU limit pulls


def test_without_a_compressor_limit_nothing_changes(plant_config: MakeConfig) -> None:
    for setpoint in (70.0, 60.0):
        unset = settled_heat_pump(plant_config, setpoint, None)
        never_binding = settled_heat_pump(plant_config, setpoint, 1e9)
        assert snapshot(unset) == snapshot(never_binding)
        assert unset.ledger == never_binding.ledger
        hp = unset.heat_pumps["hp1"]
        assert hp.heat_output_kw == pytest.approx(1000.0), "bounded by capacity_kw only, as before"
        assert hp.electric_power_kw == pytest.approx(hp.heat_output_kw / hp.cop)
