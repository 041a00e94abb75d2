"""A restarted heat pump (the simulator's Modbus face) is read again within 10 s, heatrec never restarted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from drivers.base import ConnectionState
from drivers.modbus import ModbusDriver
from service.clock import VirtualClock
from service.config import ModbusDevice, SimHeatPump, SimulationConfig
from service.model import Quality
from simulators.heat_pump_modbus import HeatPumpModbusServer
from simulators.plant import PlantModel

pytestmark = pytest.mark.integration  # the simulated heat pump's Modbus server on loopback

if TYPE_CHECKING:
    from conftest import RecordingSink, WaitFor

UNIT = 3
RESUME_WITHIN_S = 10.0  # the bound on recovery after the device is back


@pytest.fixture
def model() -> PlantModel:
    cfg = SimulationConfig(mqtt_broker="mqtt://127.0.0.1:1", cdus=[], heat_meters=[],
                           heat_pumps=[SimHeatPump(id="hp1", endpoint="127.0.0.1:0", unit_id=UNIT)])
    return PlantModel(cfg, VirtualClock())


@pytest.fixture
async def heat_pump(model: PlantModel) -> AsyncIterator[HeatPumpModbusServer]:
    async with HeatPumpModbusServer(model.cfg.heat_pumps[0], model) as server:
        yield server


def expected_supply(model: PlantModel) -> float:
    return round(model.heat_pumps["hp1"].supply_temperature, 1)


async def test_restarted_heat_pump_is_read_again_without_restarting_heatrec(
        heat_pump: HeatPumpModbusServer, model: PlantModel, sink: RecordingSink, wait_for: WaitFor,
        run_driver: Any) -> None:
    host, port = heat_pump.address
    # Production reconnect settings (backoff 0.5 s doubling to 30 s): only the poll interval is short.
    device = ModbusDevice.model_validate({
        "id": "hp", "protocol": "modbus", "endpoint": f"{host}:{port}", "unit_id": UNIT, "poll_interval_s": 0.1,
        "timeout_s": 1.0, "points": [
            {"id": "supply", "address": 0, "function": "input", "type": "int16", "scale": 0.1},
            {"id": "heat", "address": 10, "function": "input", "type": "float32"}]})
    drv = ModbusDriver(device, sink)
    run_driver(drv)
    await wait_for(lambda: sink.quality("hp.supply") is Quality.GOOD and sink.quality("hp.heat") is Quality.GOOD,
                   what="first values")
    assert sink.value("hp.supply") == pytest.approx(expected_supply(model), abs=0.051)

    await heat_pump.stop()
    await wait_for(lambda: sink.quality("hp.supply") is Quality.BAD and sink.quality("hp.heat") is Quality.BAD,
                   what="BAD while the heat pump is down")
    await wait_for(lambda: drv.stats.failures >= 2 and drv.state is ConnectionState.BACKING_OFF,
                   what="reconnect attempts fail")

    model.heat_pumps["hp1"].supply_temperature = 47.3  # the restarted controller reports something new
    heat_pump.update()
    await heat_pump.start()  # same port
    assert heat_pump.address == (host, port)
    await wait_for(lambda: sink.quality("hp.supply") is Quality.GOOD and sink.quality("hp.heat") is Quality.GOOD,
                   timeout=RESUME_WITHIN_S, what="values again within 10 s of the restart")
    assert sink.value("hp.supply") == pytest.approx(47.3)
    assert drv.stats.reconnects == 1 and drv.state is ConnectionState.CONNECTED
