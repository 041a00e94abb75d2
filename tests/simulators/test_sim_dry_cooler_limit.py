"""Limited dry coolers: heat nobody takes warms the CDU loop; the pumps that can run share the source."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.clock import VirtualClock
from service.config import SimHeatPump, SimulationConfig
from simulators.plant import PlantModel, SgReady

MakeConfig = Callable[..., SimulationConfig]


def run(model: PlantModel, clock: VirtualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        model.step(1.0)


def test_unlimited_dry_coolers_keep_the_cdu_at_its_setpoint(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"capacity_kw": 500.0}), clock)
    run(model, clock, 600)
    assert model.dry_cooler_kw > 100 and model.unremoved_kw == 0.0
    assert model.cdus["cdu1"].supply_temperature == pytest.approx(30.0, abs=1e-6)


def test_heat_nobody_takes_raises_the_cdu_supply_and_a_lower_lift_takes_more(plant_config: MakeConfig,
                                                                             clock: VirtualClock) -> None:
    model = PlantModel(plant_config(heat_pump={"capacity_kw": 900.0, "supply_setpoint": 80.0},
                                    dry_cooler_capacity_kw=0.0), clock)
    model.it_load_scale = 1.3
    run(model, clock, 900)
    hot = model.cdus["cdu1"].supply_temperature
    assert model.unremoved_kw > 10 and hot > 30.5
    model.set_heat_pump_setpoint("hp1", 65.0)  # less lift: higher COP, more heat taken at the evaporator
    run(model, clock, 900)
    assert model.cdus["cdu1"].supply_temperature < hot - 0.3
    led = model.ledger
    assert led.unremoved > 0 and abs(led.imbalance()) < 1e-6 * led.it_heat


def test_a_blocked_pumps_share_goes_to_the_others(plant_config: MakeConfig, clock: VirtualClock) -> None:
    cfg = plant_config().model_copy(update={"heat_pumps": [
        SimHeatPump(id="hp1", endpoint="127.0.0.1:0", capacity_kw=1500.0),
        SimHeatPump(id="hp2", endpoint="127.0.0.1:0", capacity_kw=1500.0)]})
    model = PlantModel(cfg, clock)
    run(model, clock, 300)
    both = model.heat_pumps["hp2"].evaporator_heat_kw
    model.set_sg_ready("hp1", SgReady.BLOCKED)
    run(model, clock, 300)
    assert model.heat_pumps["hp2"].evaporator_heat_kw == pytest.approx(2 * both, rel=0.05)
    assert model.dry_cooler_kw < 1.0, "one 1500 kW pump takes the whole 800 kW load"
