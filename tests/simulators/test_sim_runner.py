"""The Simulation runner: every face up together, clean stop, clear start-up errors, face isolation."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from service.clock import VirtualClock
from service.config import SimulationConfig
from simulators.errors import PortInUseError, SimulatorError
from simulators.runner import Simulation
from tests.support import meter_telegrams

MakeConfig = Callable[..., SimulationConfig]
TOPIC = "mbus/heatmeter/71234567"


def refuses_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


async def test_all_faces_run_together_and_stop_cleanly(mosquitto: Any, plant_config: MakeConfig,
                                                       eventually: Callable[..., Any]) -> None:
    cfg = plant_config(broker=f"mqtt://{mosquitto.host}:{mosquitto.port}", mqtt_username=mosquitto.username,
                       mqtt_password=mosquitto.password, meter={"publish_interval_s": 0.1})
    async with meter_telegrams(mosquitto, TOPIC) as telegrams:
        async with Simulation(cfg, tick_s=0.1) as sim:
            assert set(sim.endpoints()) == {"cdu1", "hp1", "meter1"}
            opc_url = sim.cdus["cdu1"].endpoint
            mb_host, mb_port = sim.heat_pumps["hp1"].address
            async with Client(opc_url, timeout=5) as opc:
                heat = opc.get_node("ns=2;s=cdu1.heat_removed_kw")
                first = await heat.read_data_value()
                assert first.Value is not None and first.Value.Value > 0

                async def stamp_moved() -> bool:
                    return (await heat.read_data_value()).SourceTimestamp != first.SourceTimestamp

                await eventually(stamp_moved, message="the ticker refreshing the OPC UA face")

            modbus = AsyncModbusTcpClient(mb_host, port=mb_port, timeout=2, retries=0)
            assert await modbus.connect()
            status = await modbus.read_input_registers(5, count=1, device_id=1)
            assert status.registers[0] & 1, "running"
            await eventually(lambda: telegrams and telegrams[-1]["power_kw"] > 500, message="heat metered")
            # Across faces: SG-Ready 'blocked' over Modbus stops the heat the MQTT meter reports.
            assert not (await modbus.write_register(1, 1, device_id=1)).isError()
            await eventually(lambda: telegrams[-1]["power_kw"] == 0.0, message="meter seeing no heat")
            modbus.close()
    assert sim.meter_gateway is not None and not sim.meter_gateway.connected
    assert refuses_connections("127.0.0.1", int(opc_url.rsplit(":", 1)[1]))
    assert refuses_connections(mb_host, mb_port)


async def test_a_taken_cdu_port_fails_fast_with_a_clear_error(plant_config: MakeConfig,
                                                              busy_port: int) -> None:
    cfg = plant_config(cdu={"endpoint": f"opc.tcp://127.0.0.1:{busy_port}"}, meters=False)
    started = time.monotonic()
    with pytest.raises(SimulatorError) as err:
        async with Simulation(cfg):
            pytest.fail("must not start")
    assert isinstance(err.value, PortInUseError)
    assert str(err.value) == f"port {busy_port} for cdu1 is already in use"
    assert time.monotonic() - started < 1.0


async def test_a_taken_heat_pump_port_stops_start_up_before_any_face(plant_config: MakeConfig,
                                                                      busy_port: int) -> None:
    cfg = plant_config(heat_pump={"endpoint": f"127.0.0.1:{busy_port}"})
    started = time.monotonic()
    sim = Simulation(cfg)
    with pytest.raises(PortInUseError, match=f"^port {busy_port} for hp1 is already in use$"):
        async with sim:
            pass
    assert time.monotonic() - started < 1.0, "the CDU's slow OPC UA start must not have begun"
    assert sim.cdus == {} and sim.meter_gateway is None


async def test_configuration_mistakes_are_refused(plant_config: MakeConfig) -> None:
    cfg = plant_config(cdu={"endpoint": "opc.tcp://127.0.0.1:15020"},
                       heat_pump={"endpoint": "127.0.0.1:15020"})
    with pytest.raises(SimulatorError, match="port 15020 is configured for both cdu1 and hp1"):
        async with Simulation(cfg):
            pass
    dup = plant_config()
    dup = dup.model_copy(update={"heat_meters": [*dup.heat_meters, dup.heat_meters[0]]})
    with pytest.raises(SimulatorError, match="meter1 appear more than once"):
        Simulation(dup)


async def test_an_unreachable_broker_does_not_stop_the_other_faces(
        mosquitto: Any, broker_proxy: Any, plant_config: MakeConfig, clock: VirtualClock,
        eventually: Callable[..., Any]) -> None:
    await broker_proxy.cut()  # the broker's port exists in the config but nobody listens yet
    # No CDU face: keeps this test fast (no OPC UA address space); the heat pump then idles.
    cfg = plant_config(cdus=False, broker=f"mqtt://127.0.0.1:{broker_proxy.port}",
                       mqtt_username=mosquitto.username, mqtt_password=mosquitto.password,
                       meter={"publish_interval_s": 0.05})
    async with Simulation(cfg, clock=clock, tick_s=None, mqtt_backoff_max_s=0.2) as sim:
        gateway = sim.meter_gateway
        assert gateway is not None
        await eventually(lambda: gateway.connection_failures >= 2, message="retries, broker absent")
        host, port = sim.heat_pumps["hp1"].address
        modbus = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        assert await modbus.connect()
        assert not (await modbus.write_register(0, 600, device_id=1)).isError()
        assert sim.model.heat_pumps["hp1"].remote_setpoint == 60.0
        before = (await modbus.read_input_registers(0, count=1, device_id=1)).registers[0]
        clock.advance(30)
        assert await sim.refresh() == 30
        after = (await modbus.read_input_registers(0, count=1, device_id=1)).registers[0]
        assert after < before, "the Modbus face shows the model moving on"
        modbus.close()
        await broker_proxy.start()
        await eventually(lambda: gateway.connected and gateway.published > 0, message="publishing once up")
