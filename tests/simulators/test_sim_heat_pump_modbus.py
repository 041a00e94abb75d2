"""The heat pump's Modbus TCP face, read and written by a real pymodbus client on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from service.clock import VirtualClock
from service.config import ModbusDevice, SimulationConfig, load_config
from simulators.errors import PortInUseError
from simulators.heat_pump_modbus import HeatPumpModbusServer, float32_registers, int16_register
from simulators.plant import PlantModel

UNIT = 7
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_DATA_VALUE, GATEWAY_NO_RESPONSE = 1, 2, 3, 11
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"
DT = AsyncModbusTcpClient.DATATYPE


@pytest.fixture
def model(plant_config: Callable[..., SimulationConfig], clock: VirtualClock) -> PlantModel:
    return PlantModel(plant_config(heat_pump={"unit_id": UNIT, "supply_setpoint": 70.0}), clock)


@pytest.fixture
async def server(model: PlantModel) -> AsyncIterator[HeatPumpModbusServer]:
    async with HeatPumpModbusServer(model.cfg.heat_pumps[0], model) as srv:
        yield srv


@pytest.fixture
async def client(server: HeatPumpModbusServer) -> AsyncIterator[AsyncModbusTcpClient]:
    host, port = server.address
    c = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
    assert await c.connect()
    yield c
    c.close()


def decode_int16(reg: int, scale: float) -> float:
    return float(AsyncModbusTcpClient.convert_from_registers([reg], DT.INT16)) * scale  # type: ignore[arg-type]


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_input_registers_carry_the_model_state(model: PlantModel, client: AsyncModbusTcpClient) -> None:
    rr = await client.read_input_registers(0, count=14, device_id=UNIT)  # one block read incl. reserved 7-9
    assert not rr.isError()
    regs = rr.registers
    hp = model.heat_pumps["hp1"]
    assert decode_int16(regs[0], 0.1) == pytest.approx(hp.supply_temperature, abs=0.05)
    assert decode_int16(regs[1], 0.1) == pytest.approx(hp.return_temperature, abs=0.05)
    assert decode_int16(regs[2], 0.1) == pytest.approx(hp.source_inlet_temperature, abs=0.05)
    assert decode_int16(regs[3], 0.1) == pytest.approx(hp.source_outlet_temperature, abs=0.05)
    assert regs[4] * 0.01 == pytest.approx(hp.cop, abs=0.005)
    assert regs[5] == 0b001  # running, no fault, no fallback
    assert decode_int16(regs[6], 0.1) == pytest.approx(model.outdoor_temperature, abs=0.05)
    assert regs[7:10] == [0, 0, 0]
    heat = client.convert_from_registers(regs[10:12], DT.FLOAT32, word_order="big")
    power = client.convert_from_registers(regs[12:14], DT.FLOAT32, word_order="big")
    assert heat == pytest.approx(hp.heat_output_kw, rel=1e-6)
    assert power == pytest.approx(hp.electric_power_kw, rel=1e-6)
    assert 500 < heat < 1100 and 100 < power < 400  # type: ignore[operator]


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_every_point_of_the_demo_config_is_served(client: AsyncModbusTcpClient) -> None:
    demo = load_config(DEMO_CONFIG)
    device = next(d for d in demo.devices if isinstance(d, ModbusDevice))
    for point in device.points:
        read = client.read_input_registers if point.function == "input" else client.read_holding_registers
        rr = await read(point.address, count=point.register_count, device_id=UNIT)
        assert not rr.isError(), f"{device.id}.{point.id} at {point.function} {point.address}"
        assert len(rr.registers) == point.register_count


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_setpoint_write_takes_effect_and_reads_back(model: PlantModel, client: AsyncModbusTcpClient,
                                                          server: HeatPumpModbusServer,
                                                          clock: VirtualClock) -> None:
    rr = await client.write_register(0, 655, device_id=UNIT)
    assert not rr.isError()
    assert model.heat_pumps["hp1"].remote_setpoint == 65.5
    assert (await client.read_holding_registers(0, count=3, device_id=UNIT)).registers == [655, 0, 0]
    clock.advance(600)
    model.tick()
    server.update()
    rr = await client.read_input_registers(0, count=1, device_id=UNIT)
    assert decode_int16(rr.registers[0], 0.1) == pytest.approx(65.5, abs=0.05)


@pytest.mark.integration  # the heat pump's Modbus server on loopback
@pytest.mark.parametrize("celsius", [39.9, 85.1, -10.0])
async def test_out_of_range_setpoint_gets_illegal_data_value(model: PlantModel, client: AsyncModbusTcpClient,
                                                             celsius: float) -> None:
    rr = await client.write_register(0, int16_register(celsius, 0.1), device_id=UNIT)
    assert rr.isError()
    assert rr.exception_code == ILLEGAL_DATA_VALUE
    assert model.heat_pumps["hp1"].remote_setpoint == 70.0
    assert (await client.read_holding_registers(0, count=1, device_id=UNIT)).registers == [700]


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_a_rejected_multi_register_write_changes_nothing(model: PlantModel,
                                                               client: AsyncModbusTcpClient) -> None:
    rr = await client.write_registers(0, [600, 9, 1], device_id=UNIT)  # SG-Ready 9 does not exist
    assert rr.isError() and rr.exception_code == ILLEGAL_DATA_VALUE
    hp = model.heat_pumps["hp1"]
    assert hp.remote_setpoint == 70.0 and not hp.watchdog_armed
    rr = await client.write_registers(0, [600, 1, 1], device_id=UNIT)
    assert not rr.isError()
    assert hp.remote_setpoint == 60.0 and hp.sg_ready == 1 and hp.watchdog_armed


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_sg_ready_blocked_clears_the_running_bit(
        model: PlantModel, client: AsyncModbusTcpClient, server: HeatPumpModbusServer,
        clock: VirtualClock) -> None:
    assert not (await client.write_register(1, 1, device_id=UNIT)).isError()
    clock.advance(1)
    model.tick()
    server.update()
    regs = (await client.read_input_registers(0, count=14, device_id=UNIT)).registers
    assert regs[5] & 1 == 0
    assert client.convert_from_registers(regs[10:12], DT.FLOAT32) == 0.0


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_watchdog_fallback_shows_in_the_status_word(
        model: PlantModel, client: AsyncModbusTcpClient, server: HeatPumpModbusServer,
        clock: VirtualClock) -> None:
    assert not (await client.write_register(0, 550, device_id=UNIT)).isError()
    assert not (await client.write_register(2, 1, device_id=UNIT)).isError()  # heartbeat arms it
    clock.advance(61)
    model.tick()
    server.update()
    status = (await client.read_input_registers(5, count=1, device_id=UNIT)).registers[0]
    assert status & 0b100
    assert model.effective_setpoint("hp1") == 70.0  # local setpoint while the master is silent
    assert not (await client.write_register(2, 2, device_id=UNIT)).isError()
    server.update()
    status = (await client.read_input_registers(5, count=1, device_id=UNIT)).registers[0]
    assert status & 0b100 == 0
    assert (await client.read_holding_registers(2, count=1, device_id=UNIT)).registers == [2]


@pytest.mark.integration  # the heat pump's Modbus server on loopback
async def test_protocol_errors_name_the_mistake(client: AsyncModbusTcpClient) -> None:
    rr = await client.read_input_registers(14, count=3, device_id=UNIT)  # past register 15, the last
    assert rr.isError() and rr.exception_code == ILLEGAL_ADDRESS
    rr = await client.write_register(4, 1, device_id=UNIT)  # past holding register 3, the last
    assert rr.isError() and rr.exception_code == ILLEGAL_ADDRESS
    rr = await client.read_coils(0, count=1, device_id=UNIT)
    assert rr.isError() and rr.exception_code == ILLEGAL_FUNCTION
    rr = await client.read_input_registers(0, count=1, device_id=UNIT + 1)
    assert rr.isError() and rr.exception_code == GATEWAY_NO_RESPONSE


async def test_a_taken_port_is_a_clear_error(model: PlantModel, busy_port: int) -> None:
    cfg = model.cfg.heat_pumps[0].model_copy(update={"endpoint": f"127.0.0.1:{busy_port}"})
    with pytest.raises(PortInUseError) as err:
        async with HeatPumpModbusServer(cfg, model):
            pass
    assert str(err.value) == f"port {busy_port} for hp1 is already in use"


def test_register_encodings() -> None:
    assert int16_register(70.0, 0.1) == 700
    assert int16_register(-5.3, 0.1) == 0x10000 - 53  # two's complement
    assert int16_register(5000.0, 0.1) == 32767  # saturates instead of wrapping to a negative
    regs = float32_registers(1063.78)
    assert regs[0] == 0x4484  # high word first: 1063.78 = 0x4484F8F6
    assert AsyncModbusTcpClient.convert_from_registers(regs, DT.FLOAT32) == pytest.approx(1063.78, rel=1e-6)
