"""The heat pump's capacity limit (holding register 3): the physics caps the heat output, the supply sags."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from pymodbus.client import AsyncModbusTcpClient

from service.clock import VirtualClock
from service.config import SimulationConfig
from simulators.heat_pump_modbus import HR_CAPACITY_LIMIT, HeatPumpModbusServer
from simulators.plant import PlantModel, dh_return_temperature

MakeConfig = Callable[..., SimulationConfig]
UNIT = 3
ILLEGAL_DATA_VALUE = 3


def run(model: PlantModel, clock: VirtualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        model.tick()


def settled(plant_config: MakeConfig, clock: VirtualClock, **heat_pump: float) -> PlantModel:
    """One 1000 kW heat pump at 70 °C on an unlimited network, 800 kW of IT heat: capacity-bound at full."""
    model = PlantModel(plant_config(heat_pump={"unit_id": UNIT, **heat_pump}), clock)
    run(model, clock, 600)
    assert model.heat_pumps["hp1"].heat_output_kw == pytest.approx(1000.0)
    return model


def test_the_cap_bounds_the_heat_output_and_the_supply_sags(plant_config: MakeConfig, clock: VirtualClock) -> None:
    model = settled(plant_config, clock)
    hp = model.heat_pumps["hp1"]
    dry_at_full = model.dry_cooler_kw
    model.set_capacity_limit("hp1", 50.0)
    run(model, clock, 600)
    assert hp.heat_output_kw == pytest.approx(500.0)
    assert hp.heat_output_kw == pytest.approx(hp.evaporator_heat_kw + hp.electric_power_kw)
    # The same network flow carries half the heat: the condenser's outlet sags towards the return, well below
    # the 70 °C setpoint (a higher COP at the lower lift makes the uncapped heat a little less than 1000 kW).
    dh_return = dh_return_temperature(model.outdoor_temperature)
    assert dh_return + 0.5 * (70.0 - dh_return) < hp.supply_temperature < 60.0
    # IT cooling first: what the capped pump does not take goes to the dry coolers, and the books still close.
    assert model.dry_cooler_kw > dry_at_full + 200.0
    assert abs(model.ledger.imbalance()) < 1e-6 * model.ledger.it_heat
    model.set_capacity_limit("hp1", 100.0)
    run(model, clock, 600)
    assert hp.heat_output_kw == pytest.approx(1000.0)
    assert hp.supply_temperature == pytest.approx(70.0, abs=0.01)


def test_a_cap_below_the_minimum_load_runs_the_pump_at_its_minimum(plant_config: MakeConfig,
                                                                     clock: VirtualClock) -> None:
    model = settled(plant_config, clock, min_load_fraction=0.3)
    model.set_capacity_limit("hp1", 10.0)
    run(model, clock, 600)
    hp = model.heat_pumps["hp1"]
    assert hp.running and hp.heat_output_kw == pytest.approx(300.0)


def test_a_cap_that_does_not_bind_changes_nothing(plant_config: MakeConfig) -> None:
    # Demand-bound at 400 kW: a 60 % cap (600 kW) is above what the pump makes, so the run is the same.
    runs = []
    for cap in (100.0, 60.0):
        clock = VirtualClock()
        model = PlantModel(plant_config(dh_design_demand_kw=400.0, dh_base_demand_fraction=1.0), clock)
        model.set_capacity_limit("hp1", cap)
        run(model, clock, 300)
        hp = model.heat_pumps["hp1"]
        runs.append((hp.heat_output_kw, hp.supply_temperature, hp.cop, model.dry_cooler_kw))
    assert runs[0][0] < 600.0
    assert runs[0] == runs[1]


@pytest.mark.parametrize("bad", [-0.1, 100.1, float("nan")])
def test_a_cap_outside_0_to_100_percent_is_refused(plant_config: MakeConfig, clock: VirtualClock,
                                                   bad: float) -> None:
    model = PlantModel(plant_config(), clock)
    with pytest.raises(ValueError, match="capacity limit"):
        model.set_capacity_limit("hp1", bad)
    assert model.heat_pumps["hp1"].capacity_limit_percent == 100.0


@pytest.fixture
async def client(plant_config: MakeConfig, clock: VirtualClock) -> AsyncIterator[tuple[AsyncModbusTcpClient,
                                                                                      PlantModel]]:
    model = PlantModel(plant_config(heat_pump={"unit_id": UNIT}), clock)
    async with HeatPumpModbusServer(model.cfg.heat_pumps[0], model) as srv:
        host, port = srv.address
        c = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        assert await c.connect()
        yield c, model
        c.close()


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_the_register_defaults_to_100_percent_and_reads_back_what_was_written(
        client: tuple[AsyncModbusTcpClient, PlantModel]) -> None:
    c, model = client
    assert (await c.read_holding_registers(HR_CAPACITY_LIMIT, count=1, device_id=UNIT)).registers == [1000]
    assert not (await c.write_register(HR_CAPACITY_LIMIT, 625, device_id=UNIT)).isError()
    assert model.heat_pumps["hp1"].capacity_limit_percent == 62.5
    assert (await c.read_holding_registers(0, count=4, device_id=UNIT)).registers[3] == 625
    rr = await c.write_register(HR_CAPACITY_LIMIT, 1001, device_id=UNIT)  # 100.1 %: no such thing
    assert rr.isError() and rr.exception_code == ILLEGAL_DATA_VALUE
    # A multi-register write with a bad cap is refused as a whole: the setpoint in it is not applied either.
    rr = await c.write_registers(0, [600, 0, 1, 2000], device_id=UNIT)
    assert rr.isError() and rr.exception_code == ILLEGAL_DATA_VALUE
    hp = model.heat_pumps["hp1"]
    assert hp.capacity_limit_percent == 62.5 and hp.remote_setpoint == 70.0
