"""Every injectable fault, observed on the wire by plain protocol clients (pymodbus, aiomqtt, asyncua, httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import httpx
import pytest
from asyncua import Client as OpcUaClient
from asyncua import ua
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from service.clock import VirtualClock
from service.config import SimCdu, SimHeatMeter, SimHeatPump, SimulationConfig
from simulators.cdu_opcua import node_id
from simulators.errors import SimulatorError
from simulators.heat_meter_mqtt import MALFORMED_PAYLOAD
from simulators.runner import Simulation
from simulators.scenario import FaultSpec

pytestmark = pytest.mark.integration  # the simulators' servers on loopback

DT = AsyncModbusTcpClient.DATATYPE
DEVICE_FAILURE = 4


def modbus_plant(**top: Any) -> SimulationConfig:
    """A heat pump and a Modbus heat meter on ephemeral ports; no OPC UA (slow start) and no broker.

    The heat comes from a 40 °C surplus source instead of a CDU, so no OPC UA server is needed.
    """
    return SimulationConfig(surplus_heat_kw=800.0, surplus_heat_temperature=40.0,
        heat_pumps=[SimHeatPump(id="hp1", endpoint="127.0.0.1:0", unit_id=1)],
        heat_meters=[SimHeatMeter(id="meter1", protocol="modbus", endpoint="127.0.0.1:0", unit_id=2,
                                  serial="71234567", initial_energy_gj=500.0)],
        **top)


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulation]:
    async with Simulation(modbus_plant(), clock=clock, tick_s=None, control_port=0) as s:
        await advance(s, clock, 60)
        yield s


async def advance(sim: Simulation, clock: VirtualClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1.0)
        await sim.refresh()


async def connect(sim: Simulation, device: str) -> AsyncModbusTcpClient:
    face = sim.face(device)
    assert face is not None
    host, port = face.address  # type: ignore[union-attr]
    client = AsyncModbusTcpClient(host, port=port, timeout=1, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def read_ir(client: AsyncModbusTcpClient, address: int, count: int, unit: int = 1) -> list[int]:
    rr = await client.read_input_registers(address, count=count, device_id=unit)
    assert not rr.isError(), rr
    return list(rr.registers)


def int16(reg: int, scale: float) -> float:
    return float(AsyncModbusTcpClient.convert_from_registers([reg], DT.INT16)) * scale  # type: ignore[arg-type]


def uint32(regs: list[int], scale: float) -> float:
    return float(AsyncModbusTcpClient.convert_from_registers(regs, DT.UINT32)) * scale  # type: ignore[arg-type]


async def test_exception_responses_and_slow_answers(sim: Simulation) -> None:
    client = await connect(sim, "hp1")
    fault = await sim.inject(FaultSpec(device="hp1", kind="exception", code=DEVICE_FAILURE))
    rr = await client.read_input_registers(0, count=1, device_id=1)
    assert rr.isError() and rr.exception_code == DEVICE_FAILURE
    await sim.clear_fault(fault.id)
    await read_ir(client, 0, 1)
    await sim.inject(FaultSpec(device="hp1", kind="slow", delay_s=0.3))
    loop = asyncio.get_running_loop()
    start = loop.time()
    await read_ir(client, 0, 1)
    assert loop.time() - start >= 0.3
    await sim.clear_faults("hp1")
    start = loop.time()
    await read_ir(client, 0, 1)
    assert loop.time() - start < 0.3
    client.close()


async def test_offline_closes_the_port_and_clearing_reopens_it(sim: Simulation) -> None:
    face = sim.face("hp1")
    assert face is not None
    host, port = face.address  # type: ignore[union-attr]
    fault = await sim.inject(FaultSpec(device="hp1", kind="offline"))
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)
    await sim.clear_fault(fault.id)
    client = await connect(sim, "hp1")
    assert face.address == (host, port)  # type: ignore[union-attr]
    await read_ir(client, 0, 1)
    client.close()


@pytest.mark.parametrize("kind", ["drop", "restart"])
async def test_drop_and_restart_end_the_session_and_the_device_comes_back(sim: Simulation, kind: str) -> None:
    client = await connect(sim, "hp1")
    await read_ir(client, 0, 1)
    await sim.inject(FaultSpec(device="hp1", kind=kind))  # type: ignore[arg-type]
    with pytest.raises((ConnectionException, ModbusIOException)):
        rr = await client.read_input_registers(0, count=1, device_id=1)
        if rr.isError():
            raise ModbusIOException("error response")
    client.close()
    again = await connect(sim, "hp1")
    await read_ir(again, 0, 1)
    again.close()


async def test_frozen_and_out_of_range_values(sim: Simulation, clock: VirtualClock) -> None:
    client = await connect(sim, "hp1")
    before = int16((await read_ir(client, 0, 1))[0], 0.1)
    await sim.inject(FaultSpec(device="hp1", kind="frozen", point="supply_temperature"))
    sim.model.set_heat_pump_setpoint("hp1", 50.0)
    await advance(sim, clock, 120)
    assert sim.model.heat_pumps["hp1"].supply_temperature < before - 10
    assert int16((await read_ir(client, 0, 1))[0], 0.1) == pytest.approx(before, abs=0.05)
    await sim.inject(FaultSpec(device="hp1", kind="out_of_range", point="return_temperature", value=-80.0))
    assert int16((await read_ir(client, 1, 1))[0], 0.1) == pytest.approx(-80.0)
    await sim.clear_faults("hp1")
    regs = await read_ir(client, 0, 2)
    assert int16(regs[0], 0.1) == pytest.approx(sim.model.heat_pumps["hp1"].supply_temperature, abs=0.05)
    assert 30 < int16(regs[1], 0.1) < 45
    client.close()


async def test_trip_shows_in_status_and_output(sim: Simulation, clock: VirtualClock) -> None:
    client = await connect(sim, "hp1")
    assert (await read_ir(client, 5, 1))[0] == 0b001
    fault = await sim.inject(FaultSpec(device="hp1", kind="trip"))
    await advance(sim, clock, 1)
    regs = await read_ir(client, 0, 16)
    assert regs[5] == 0b010
    assert AsyncModbusTcpClient.convert_from_registers(regs[10:12], DT.FLOAT32) == 0.0
    await sim.clear_fault(fault.id)
    await advance(sim, clock, 1)
    assert (await read_ir(client, 5, 1))[0] == 0b001
    client.close()


async def test_modbus_meter_registers_wrap_and_replacement(sim: Simulation, clock: VirtualClock) -> None:
    client = await connect(sim, "meter1")
    regs = await read_ir(client, 0, 12, unit=2)
    meter = sim.model.heat_meters["meter1"]
    assert uint32(regs[0:2], 0.001) == pytest.approx(meter.energy_gj, abs=0.001)
    assert uint32(regs[10:12], 1) == 71234567
    assert int16(regs[8], 0.01) == pytest.approx(meter.flow_temperature_c, abs=0.01)
    assert AsyncModbusTcpClient.convert_from_registers(regs[4:6], DT.FLOAT32) == pytest.approx(
        meter.power_kw, rel=1e-6)
    await sim.inject(FaultSpec(device="meter1", kind="wrap"))
    high = uint32((await read_ir(client, 0, 2, unit=2)), 0.001)
    assert high > 4_294_967.0
    await advance(sim, clock, 10)
    low = uint32((await read_ir(client, 0, 2, unit=2)), 0.001)
    assert 0 < low < 10, "the uint32 MJ register rolled over"
    fault = await sim.inject(FaultSpec(device="meter1", kind="replace"))
    assert fault.serial == "71234568"
    regs = await read_ir(client, 0, 12, unit=2)
    assert uint32(regs[10:12], 1) == 71234568 and uint32(regs[0:2], 0.001) == 0.0
    client.close()


async def test_faults_a_device_cannot_have_are_refused(sim: Simulation) -> None:
    with pytest.raises(SimulatorError, match="no simulated device 'hp9'"):
        await sim.inject(FaultSpec(device="hp9", kind="trip"))
    with pytest.raises(SimulatorError, match="cannot have fault 'malformed'"):
        await sim.inject(FaultSpec(device="hp1", kind="malformed"))
    with pytest.raises(SimulatorError, match="exception code 9 does not exist"):
        await sim.inject(FaultSpec(device="hp1", kind="exception", code=9))
    with pytest.raises(SimulatorError, match="no numeric point 'colour'"):
        await sim.inject(FaultSpec(device="hp1", kind="frozen", point="colour"))


async def test_http_control_endpoint(sim: Simulation) -> None:
    assert sim.control_url is not None
    client = await connect(sim, "hp1")
    async with httpx.AsyncClient(base_url=sim.control_url) as http:
        r = await http.post("/faults", json={"device": "hp1", "kind": "exception", "code": 6})
        assert r.status_code == 201
        fault_id = r.json()["id"]
        rr = await client.read_input_registers(0, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == 6
        listed = (await http.get("/faults")).json()["faults"]
        assert [(f["id"], f["kind"]) for f in listed] == [(fault_id, "exception")]
        assert (await http.delete(f"/faults/{fault_id}")).status_code == 200
        await read_ir(client, 0, 1)
        assert (await http.delete(f"/faults/{fault_id}")).status_code == 404
        bad = await http.post("/faults", json={"device": "hp1", "kind": "meltdown"})
        assert bad.status_code == 400 and "kind" in bad.json()["error"]
        assert (await http.post("/faults", content=b"{not json")).status_code == 400
        missing = await http.post("/faults", json={"device": "hp7", "kind": "trip"})
        assert missing.status_code == 409 and "hp7" in missing.json()["error"]
        state = (await http.get("/state")).json()
        assert state["elapsed_s"] == 60.0
        assert state["energy_kwh"]["it_heat"] == pytest.approx(800.0 * 60 / 3600)
        assert (await http.get("/nowhere")).status_code == 404
    client.close()


async def test_mqtt_meter_faults_on_the_wire(mosquitto: Any, clock: VirtualClock) -> None:
    topic = "mbus/heatmeter/fault-test"
    cfg = SimulationConfig(
        mqtt_broker=f"mqtt://{mosquitto.host}:{mosquitto.port}", mqtt_username=mosquitto.username,
        mqtt_password=mosquitto.password, heat_pumps=[SimHeatPump(id="hp1", endpoint="127.0.0.1:0")],
        heat_meters=[SimHeatMeter(id="meter1", topic=topic, serial="71234567", publish_interval_s=0.05)])
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, username=mosquitto.username,
                              password=mosquitto.password) as sub:
        await sub.subscribe(topic, qos=1)
        messages: asyncio.Queue[bytes] = asyncio.Queue()
        pump = asyncio.create_task(collect(sub, messages))
        async with Simulation(cfg, clock=clock, tick_s=None) as sim:
            await advance(sim, clock, 30)
            assert json.loads(await next_payload(messages))["serial"] == "71234567"
            fault = await sim.inject(FaultSpec(device="meter1", kind="malformed"))
            assert await next_payload(messages, skip_valid=True) == MALFORMED_PAYLOAD
            await sim.clear_fault(fault.id)
            await sim.inject(FaultSpec(device="meter1", kind="replace", serial="99000001"))
            telegram = await next_json(messages, lambda t: t["serial"] == "99000001")
            assert telegram["energy_gj"] == 0.0
            failures = sim.meter_gateway.connection_failures if sim.meter_gateway else -1
            await sim.inject(FaultSpec(device="meter1", kind="drop"))
            await next_json(messages, lambda t: True)
            assert sim.meter_gateway is not None and sim.meter_gateway.connection_failures == failures + 1
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)


async def collect(client: aiomqtt.Client, queue: asyncio.Queue[bytes]) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        queue.put_nowait(message.payload)


async def next_payload(queue: asyncio.Queue[bytes], skip_valid: bool = False) -> bytes:
    while True:
        payload = await asyncio.wait_for(queue.get(), 5)
        if not skip_valid:
            return payload
        try:
            json.loads(payload)
        except ValueError:
            return payload


async def next_json(queue: asyncio.Queue[bytes], match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        payload = await asyncio.wait_for(queue.get(), 5)
        try:
            telegram: dict[str, Any] = json.loads(payload)
        except ValueError:
            continue
        if match(telegram):
            return telegram


async def test_opcua_cdu_frozen_value_and_offline(clock: VirtualClock) -> None:
    cfg = SimulationConfig(cdus=[SimCdu(id="cdu1", endpoint="opc.tcp://127.0.0.1:0")])
    async with Simulation(cfg, clock=clock, tick_s=None) as sim:
        await advance(sim, clock, 10)
        url = sim.cdus["cdu1"].endpoint
        nid = node_id("cdu1", "secondary_supply_temperature")
        async with OpcUaClient(url, timeout=5) as client:
            await sim.inject(FaultSpec(device="cdu1", kind="frozen", point="supply_temperature"))
            frozen = await client.get_node(nid).read_value()
            sim.model.set_cdu_setpoint("cdu1", 40.0)
            await advance(sim, clock, 120)
            assert sim.model.cdus["cdu1"].supply_temperature > frozen + 5
            assert await client.get_node(nid).read_value() == frozen
        client = OpcUaClient(url, timeout=2)
        await client.connect()
        await sim.inject(FaultSpec(device="cdu1", kind="drop"))
        with pytest.raises((ConnectionError, asyncio.TimeoutError, ua.UaError)):
            await client.get_node(nid).read_value()
        with contextlib.suppress(Exception):  # the session is gone; closing it can only fail
            await client.disconnect()
        fault = await sim.inject(FaultSpec(device="cdu1", kind="offline"))
        host, port = url.removeprefix("opc.tcp://").split(":")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, int(port))
        await sim.clear_fault(fault.id)
        assert sim.cdus["cdu1"].endpoint == url
        await sim.clear_faults()
        async with OpcUaClient(url, timeout=5) as client:
            assert await client.get_node(nid).read_value() == pytest.approx(
                sim.model.reported_cdu("cdu1").supply_temperature)
