"""The demo's control points on the wire: ControlLoop → Modbus driver → the simulated heat pump, and its watchdog."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.base import ConnectionState
from drivers.factory import create_driver
from service.bus import SampleBus
from service.clock import RealClock, VirtualClock
from service.config import ModbusDevice, load_config
from service.control.loop import ControlLoop
from service.model import Quality, Sample
from service.tasks import cancel_and_wait
from simulators.heat_pump_modbus import HeatPumpModbusServer
from simulators.plant import PlantModel
from tests.support import wait_until

pytestmark = pytest.mark.integration  # the simulated heat pump's Modbus server on loopback

DEMO = load_config(Path(__file__).resolve().parents[2] / "config" / "demo.toml")


async def test_the_loop_drives_the_simulated_heat_pump_and_its_watchdog_takes_over_when_it_stops() -> None:
    assert DEMO.simulation is not None and DEMO.control is not None
    sim = DEMO.simulation.model_copy(update={"heat_pumps": [
        DEMO.simulation.heat_pumps[0].model_copy(update={"endpoint": "127.0.0.1:0"})]})
    model = PlantModel(sim, VirtualClock())
    model.outdoor_temperature = -5.0  # the curve then asks for about 76 °C; the pump holds 70 °C locally
    async with HeatPumpModbusServer(sim.heat_pumps[0], model) as server:
        host, port = server.address
        device = next(d for d in DEMO.devices if d.id == "hp1")
        assert isinstance(device, ModbusDevice)
        bus = SampleBus()
        driver = create_driver(device.model_copy(update={"endpoint": f"{host}:{port}"}), bus)
        task = asyncio.create_task(driver.run())
        try:
            async with asyncio.timeout(10):
                await driver.wait_for_state(ConnectionState.CONNECTED)
            await wait_until(lambda: "hp1.outdoor_temperature" in bus.latest, 10, "the outdoor temperature")
            assert bus.latest["hp1.outdoor_temperature"].value == -5.0
            loop = ControlLoop(DEMO.control, bus, driver.write, RealClock())
            clock = RealClock()
            for k in range(5):  # the meter and the CDU are not served here: fresh values straight onto the bus
                now = clock.now()
                for point, value in (("meter1.flow_temperature", 70.0 + 0.01 * k),
                                     ("cdu1.secondary_supply_temperature", 30.0),
                                     ("cdu1.supply_temperature_allowable_max", 35.0)):
                    bus.publish(Sample(point, value, Quality.GOOD, now, now))
                await loop.cycle()
                await loop.flush()
                await asyncio.sleep(0.05)
            hp = model.heat_pumps["hp1"]
            assert loop.stats.write_failures == 0 and loop.health()[0] == "ok", loop.health()
            assert hp.watchdog_armed and hp.heartbeat == 5, "a heartbeat per cycle"
            assert 70.0 < hp.remote_setpoint <= 72.5, "ramping towards the curve at the rate limit"
        finally:
            await cancel_and_wait(task)
    # heatrec stops: no more heartbeats; after the watchdog timeout the pump holds its local setpoint.
    model.step(sim.heat_pumps[0].watchdog_timeout_s + 1.0)
    model.step(1.0)
    assert hp.watchdog_fallback and model.effective_setpoint("hp1") == sim.heat_pumps[0].supply_setpoint
