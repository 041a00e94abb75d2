"""Plant physics beyond one CDU and one heat pump: energy balance, direct exchange, demand, dynamics, trips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from service.clock import VirtualClock
from service.config import SimulationConfig, load_config
from simulators.plant import PlantModel, SgReady, dh_demand_kw

MakeConfig = Callable[..., SimulationConfig]
PLANTS = Path(__file__).resolve().parents[2] / "config" / "plants"
KWH_PER_GJ = 1e6 / 3600


def run(model: PlantModel, clock: VirtualClock, seconds: int, step: float = 1.0) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)
        model.tick()


def measured_balance(model: PlantModel, clock: VirtualClock, seconds: int) -> tuple[float, float]:
    """(IT heat, delivered by the heat meters - electricity by the pumps' meters + dry coolers + losses), kWh."""
    meters0 = sum(m.energy_gj for m in model.heat_meters.values())
    elec0 = sum(h.electric_energy_kwh for h in model.heat_pumps.values())
    it0, dry0, loss0 = model.ledger.it_heat, model.ledger.dry_cooler, model.ledger.losses
    run(model, clock, seconds)
    delivered = (sum(m.energy_gj for m in model.heat_meters.values()) - meters0) * KWH_PER_GJ
    work = sum(h.electric_energy_kwh for h in model.heat_pumps.values()) - elec0
    dry, losses = model.ledger.dry_cooler - dry0, model.ledger.losses - loss0
    return model.ledger.it_heat - it0, delivered - work + dry + losses


@pytest.mark.parametrize("plant", ["dlc-direct", "aircooled-heatpump", "industrial"])
def test_energy_balance_closes_within_half_a_percent_over_an_hour(plant: str) -> None:
    cfg = load_config(PLANTS / f"{plant}.toml").simulation
    assert cfg is not None
    clock = VirtualClock()
    model = PlantModel(cfg, clock)
    run(model, clock, 600)  # past the start-up transient
    it_heat, accounted = measured_balance(model, clock, 3600)
    assert it_heat > 10_000  # kWh: a real plant's hour, not an idle one
    # Measured by the meters (EN 1434 k-factor, sensor noise), not by the model's own books.
    assert abs(it_heat - accounted) / it_heat < 0.005
    assert abs(model.ledger.imbalance()) < 1e-6 * model.ledger.it_heat


def test_balance_holds_through_trips_load_steps_and_a_watchdog_fallback(plant_config: MakeConfig,
                                                                       clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"dead_time_s": 20.0, "capacity_kw": 700.0},
                                    dh_design_demand_kw=900.0), clock)
    model.heartbeat("hp1", 1)
    run(model, clock, 300)
    model.it_load_scale = 0.4
    run(model, clock, 600)
    model.set_fault("hp1", True)
    run(model, clock, 600)
    model.set_fault("hp1", False)
    model.outdoor_temperature = 15.0
    run(model, clock, 2100)
    led = model.ledger
    assert led.dry_cooler > 0 and led.condenser_heat > 0
    assert abs(led.imbalance()) < 1e-6 * led.it_heat


def test_same_seed_and_inputs_give_identical_output_other_seed_differs(plant_config: MakeConfig) -> None:
    def trace(seed: int) -> list[tuple[float, ...]]:
        clock = VirtualClock()
        model = PlantModel(plant_config(seed=seed, dh_design_demand_kw=700.0), clock)
        out: list[tuple[float, ...]] = []
        for i in range(400):
            if i == 200:
                model.it_load_scale = 0.6
            clock.advance(1.0)
            model.tick()
            hp, meter = model.heat_pumps["hp1"], model.heat_meters["meter1"]
            out.append((model.cdus["cdu1"].it_load_kw, hp.heat_output_kw, hp.electric_energy_kwh,
                        meter.energy_gj, meter.flow_temperature_c, model.dry_cooler_kw))
        return out

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_direct_exchange_only_when_the_source_is_hot_enough(plant_config: MakeConfig, clock: VirtualClock) -> None:
    hot = PlantModel(plant_config(heat_pumps=False, direct_exchange_kw=5000.0,
                                  cdu={"supply_temperature_setpoint": 50.0, "setpoint_max": 55.0}), clock)
    run(hot, clock, 10)
    assert hot.direct_exchange_kw == pytest.approx(hot.cdus["cdu1"].heat_removed_kw)
    assert hot.dry_cooler_kw == pytest.approx(0.0, abs=1e-9)
    # 30/40 °C air-cooled water cannot heat a 35-40 °C return: nothing passes directly.
    cold = PlantModel(plant_config(heat_pumps=False, direct_exchange_kw=5000.0), clock)
    run(cold, clock, 10)
    assert cold.direct_exchange_kw == 0.0
    assert cold.dry_cooler_kw == pytest.approx(cold.cdus["cdu1"].heat_removed_kw)


def test_demand_follows_outdoor_temperature_and_limits_recovery(plant_config: MakeConfig,
                                                               clock: VirtualClock) -> None:
    cfg = plant_config(dh_design_demand_kw=1000.0)
    assert dh_demand_kw(cfg, -12.0) == pytest.approx(1000.0)
    assert dh_demand_kw(cfg, -30.0) == pytest.approx(1000.0)
    assert dh_demand_kw(cfg, 2.5) == pytest.approx(1000.0 * 14.5 / 29)
    assert dh_demand_kw(cfg, 25.0) == pytest.approx(150.0)  # summer: hot water only
    model = PlantModel(plant_config(dh_design_demand_kw=1000.0, outdoor_temperature=10.0), clock)
    run(model, clock, 600)
    demand = dh_demand_kw(model.cfg, 10.0)
    assert model.delivered_kw == pytest.approx(demand, rel=1e-6)  # modulated down to the network's demand
    assert model.dry_cooler_kw > 100


def test_below_the_modulation_floor_the_pump_stops(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(dh_design_demand_kw=1000.0, outdoor_temperature=25.0,
                                    heat_pump={"min_load_fraction": 0.3, "capacity_kw": 1000.0}), clock)
    run(model, clock, 10)
    assert not model.heat_pumps["hp1"].running  # 150 kW of summer demand < 300 kW floor
    model.outdoor_temperature = 0.0
    run(model, clock, 10)
    assert model.heat_pumps["hp1"].running


def test_dead_time_then_first_order_response(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"supply_setpoint": 70.0, "dead_time_s": 30.0,
                                               "time_constant_s": 60.0}), clock)
    run(model, clock, 600)
    model.set_heat_pump_setpoint("hp1", 60.0)
    run(model, clock, 29)
    assert model.heat_pumps["hp1"].supply_temperature == pytest.approx(70.0, abs=0.01)  # nothing yet
    run(model, clock, 61)  # 90 s after the command: 30 s dead time + one time constant
    moved = (70.0 - model.heat_pumps["hp1"].supply_temperature) / 10.0
    assert moved == pytest.approx(0.63, abs=0.03)  # one time constant after the dead time


def test_high_condenser_temperature_trips_and_latches(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"supply_setpoint": 70.0, "trip_temperature": 73.0,
                                               "time_constant_s": 30.0}), clock)
    run(model, clock, 120)
    assert model.heat_pumps["hp1"].running
    model.set_sg_ready("hp1", SgReady.FORCED)  # +5 K: the target is now above the trip point
    run(model, clock, 120)
    hp = model.heat_pumps["hp1"]
    assert hp.fault and hp.tripped_on_temperature and not hp.running
    assert hp.status_word & 0b010
    assert hp.heat_output_kw == 0.0
    model.set_sg_ready("hp1", SgReady.NORMAL)
    run(model, clock, 300)
    assert not model.heat_pumps["hp1"].running, "a trip latches until it is reset"
    model.set_fault("hp1", False)
    run(model, clock, 10)
    assert model.heat_pumps["hp1"].running and not model.heat_pumps["hp1"].tripped_on_temperature


def test_electricity_meter_integrates_compressor_power(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"initial_electric_energy_kwh": 5000.0}), clock)
    run(model, clock, 300)
    hp = model.heat_pumps["hp1"]
    before, power = hp.electric_energy_kwh, hp.electric_power_kw
    run(model, clock, 360)
    assert before > 5000.0
    assert hp.electric_energy_kwh - before == pytest.approx(power * 0.1, rel=0.05)


def test_meter_register_rolls_over_and_replacement_restarts_it(plant_config: MakeConfig,
                                                              clock: VirtualClock) -> None:
    model = PlantModel(plant_config(meter={"register_wrap_gj": 100.0}), clock)
    run(model, clock, 60)
    model.preset_meter_register("meter1", 99.999)
    run(model, clock, 60)
    meter = model.heat_meters["meter1"]
    assert 0 < meter.energy_gj < 1.0
    model.replace_meter("meter1", "81234567")
    assert (meter.serial, meter.energy_gj, meter.volume_m3) == ("81234567", 0.0, 0.0)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        model.preset_meter_register("meter1", 100.0)
