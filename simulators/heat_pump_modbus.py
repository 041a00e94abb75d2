"""A heat pump controller's Modbus TCP face, with the vendor register map of docs/simulators.md."""

from __future__ import annotations

import logging
import struct
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from service.config import SimHeatPump
from simulators.errors import SimulatorError
from simulators.net import ensure_port_free, split_host_port
from simulators.plant import HeatPumpState, PlantModel

log = logging.getLogger(__name__)

# Input registers (function 4), 0-based.
IR_SUPPLY_TEMPERATURE = 0
IR_RETURN_TEMPERATURE = 1
IR_SOURCE_INLET_TEMPERATURE = 2
IR_SOURCE_OUTLET_TEMPERATURE = 3
IR_COP = 4
IR_STATUS = 5
IR_HEAT_OUTPUT = 10  # float32, 10-11
IR_ELECTRIC_POWER = 12  # float32, 12-13
INPUT_REGISTER_COUNT = 14  # 6-9 are reserved and read 0, so one block read of 0-13 works

# Holding registers (functions 3, 6, 16, 23), 0-based.
HR_SUPPLY_SETPOINT = 0
HR_SG_READY = 1
HR_HEARTBEAT = 2
HOLDING_REGISTER_COUNT = 3

STATUS_RUNNING = 0x0001
STATUS_FAULT = 0x0002
STATUS_WATCHDOG_FALLBACK = 0x0004

_READ_INPUT = 4
_HOLDING = {3, 6, 16, 23}


def int16_register(value: float, scale: float) -> int:
    """value/scale as a two's-complement int16 register, saturating rather than wrapping."""
    raw = max(min(round(value / scale), 32767), -32768)
    return raw & 0xFFFF


def uint16_register(value: float, scale: float) -> int:
    """value/scale as a uint16 register, saturating."""
    return max(min(round(value / scale), 65535), 0)


def float32_registers(value: float) -> list[int]:
    """IEEE 754 float32, high word first (big-endian word and byte order)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def input_registers(hp: HeatPumpState) -> list[int]:
    """The whole input register image of one heat pump."""
    regs = [0] * INPUT_REGISTER_COUNT
    regs[IR_SUPPLY_TEMPERATURE] = int16_register(hp.supply_temperature, 0.1)
    regs[IR_RETURN_TEMPERATURE] = int16_register(hp.return_temperature, 0.1)
    regs[IR_SOURCE_INLET_TEMPERATURE] = int16_register(hp.source_inlet_temperature, 0.1)
    regs[IR_SOURCE_OUTLET_TEMPERATURE] = int16_register(hp.source_outlet_temperature, 0.1)
    regs[IR_COP] = uint16_register(hp.cop, 0.01)
    regs[IR_STATUS] = hp.status_word
    regs[IR_HEAT_OUTPUT:IR_HEAT_OUTPUT + 2] = float32_registers(hp.heat_output_kw)
    regs[IR_ELECTRIC_POWER:IR_ELECTRIC_POWER + 2] = float32_registers(hp.electric_power_kw)
    return regs


def holding_registers(hp: HeatPumpState) -> list[int]:
    """The holding register image: what a read-back of the commands returns."""
    return [int16_register(hp.remote_setpoint, 0.1), int(hp.sg_ready), hp.heartbeat]


class HeatPumpModbusServer:
    """Serves one heat pump of the model as a Modbus TCP server with one unit id."""

    def __init__(self, cfg: SimHeatPump, model: PlantModel) -> None:
        self.cfg = cfg
        self._model = model
        self._owner = cfg.id
        self._host, self._port = split_host_port(cfg.endpoint, cfg.id)
        self._server: ModbusTcpServer | None = None
        self._input: list[int] = [0] * INPUT_REGISTER_COUNT
        self._holding: list[int] = [0] * HOLDING_REGISTER_COUNT
        self.update()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) clients connect to, with the real port when configured with port 0."""
        transport = self._server.transport if self._server else None
        sockets = getattr(transport, "sockets", None)
        if sockets:
            return self._host, int(sockets[0].getsockname()[1])
        return self._host, self._port

    async def __aenter__(self) -> HeatPumpModbusServer:
        ensure_port_free(self._host, self._port, self._owner)
        devices = [SimDevice(id=self.cfg.unit_id, simdata=_register_blocks(), action=self._action)]
        if self.cfg.unit_id != 0:
            # Unit id 0 catches every other unit id (pymodbus would fail with an internal error):
            # answer like a gateway whose target does not respond, which names the mistake.
            devices.append(SimDevice(id=0, simdata=_register_blocks(), action=_no_such_unit))
        server = ModbusTcpServer(devices, address=(self._host, self._port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:
            # pymodbus reports a failed bind only as RuntimeError (the port was taken since our
            # check, a race): probe once more to say what actually happened.
            await server.shutdown()
            ensure_port_free(self._host, self._port, self._owner)
            raise SimulatorError(f"cannot listen on {self._host}:{self._port} for {self._owner}") from err
        self._server = server
        log.info("heat pump %s serving Modbus TCP at %s:%d unit %d", self.cfg.id, *self.address,
                 self.cfg.unit_id)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def update(self) -> None:
        """Refresh the register images from the model (called every tick)."""
        hp = self._model.heat_pumps[self.cfg.id]
        self._input = input_registers(hp)
        self._holding = holding_registers(hp)

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus calls this before every access: serve our images, validate and apply writes."""
        # Both blocks start at address 0, so block offsets equal register addresses.
        if function_code == _READ_INPUT:
            registers[:INPUT_REGISTER_COUNT] = self._input
            return None
        if function_code not in _HOLDING:
            return ExcCodes.ILLEGAL_FUNCTION  # a heat pump controller without coils or discrete inputs
        if set_values is not None:
            error = self._write(address, [int(v) for v in set_values])
            if error is not None:
                return error
        registers[:HOLDING_REGISTER_COUNT] = self._holding
        return None

    def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        """Validate every register of the write first, so a rejected write changes nothing."""
        hp_id = self.cfg.id
        commands: list[tuple[int, int]] = list(enumerate(values, start=address))
        for reg, raw in commands:
            if reg == HR_SUPPLY_SETPOINT:
                value = _signed(raw) / 10
                if not self.cfg.setpoint_min <= value <= self.cfg.setpoint_max:
                    log.warning("heat pump %s rejected setpoint %.1f (accepted %.1f..%.1f)", hp_id, value,
                                self.cfg.setpoint_min, self.cfg.setpoint_max)
                    return ExcCodes.ILLEGAL_VALUE
            elif reg == HR_SG_READY and raw > 3:
                log.warning("heat pump %s rejected SG-Ready state %d", hp_id, raw)
                return ExcCodes.ILLEGAL_VALUE
        for reg, raw in commands:
            if reg == HR_SUPPLY_SETPOINT:
                self._model.set_heat_pump_setpoint(hp_id, _signed(raw) / 10)
            elif reg == HR_SG_READY:
                self._model.set_sg_ready(hp_id, raw)
            elif reg == HR_HEARTBEAT:
                self._model.heartbeat(hp_id, raw)
        self._holding = holding_registers(self._model.heat_pumps[hp_id])
        return None


def _register_blocks() -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """Separate blocks (coils, discrete inputs, holding, input), so input 0 and holding 0 differ.

    The heat pump has no bits, but pymodbus needs a non-empty block for each kind;
    the action refuses bit access with ILLEGAL_FUNCTION.
    """
    return (
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=HOLDING_REGISTER_COUNT, values=0, datatype=DataType.REGISTERS)],
        [SimData(0, count=INPUT_REGISTER_COUNT, values=0, datatype=DataType.REGISTERS, readonly=True)],
    )


async def _no_such_unit(function_code: int, start_address: int, address: int, count: int,
                        registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE


def _signed(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw
