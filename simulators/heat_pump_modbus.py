"""A heat pump controller's Modbus TCP face, with the vendor register map of docs/simulators.md."""

from __future__ import annotations

import logging
import struct

from pymodbus.constants import ExcCodes

from simulators.config import SimHeatPump
from simulators.faults import FaultBoard
from simulators.modbus_face import ModbusFace
from simulators.plant import HeatPumpState, PlantModel

log = logging.getLogger(__name__)

# Input registers (function 4), 0-based.
IR_SUPPLY_TEMPERATURE = 0
IR_RETURN_TEMPERATURE = 1
IR_SOURCE_INLET_TEMPERATURE = 2
IR_SOURCE_OUTLET_TEMPERATURE = 3
IR_COP = 4
IR_STATUS = 5
IR_OUTDOOR_TEMPERATURE = 6  # the pump's outdoor sensor (its weather-compensation input)
IR_HEAT_OUTPUT = 10  # float32, 10-11
IR_ELECTRIC_POWER = 12  # float32, 12-13
IR_ELECTRIC_ENERGY = 14  # uint32, 14-15, 0.1 kWh: the pump's electricity meter
INPUT_REGISTER_COUNT = 16  # 7-9 are reserved and read 0, so one block read of 0-15 works

# Holding registers (functions 3, 6, 16, 23), 0-based.
HR_SUPPLY_SETPOINT = 0
HR_SG_READY = 1
HR_HEARTBEAT = 2
HR_CAPACITY_LIMIT = 3  # uint16, 0.1 %: the heat output's cap, share of the nominal capacity (1000 = no cap)
HOLDING_REGISTER_COUNT = 4

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


def uint32_registers(value: float, scale: float) -> list[int]:
    """value/scale as a uint32 counter, high word first; a counter wraps at 2**32 like a real one."""
    raw = int(value / scale) % (1 << 32)
    return [raw >> 16, raw & 0xFFFF]


def float32_registers(value: float) -> list[int]:
    """IEEE 754 float32, high word first (big-endian word and byte order)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def input_registers(hp: HeatPumpState, outdoor_temperature: float = 0.0) -> list[int]:
    """The whole input register image of one heat pump."""
    regs = [0] * INPUT_REGISTER_COUNT
    regs[IR_SUPPLY_TEMPERATURE] = int16_register(hp.supply_temperature, 0.1)
    regs[IR_RETURN_TEMPERATURE] = int16_register(hp.return_temperature, 0.1)
    regs[IR_SOURCE_INLET_TEMPERATURE] = int16_register(hp.source_inlet_temperature, 0.1)
    regs[IR_SOURCE_OUTLET_TEMPERATURE] = int16_register(hp.source_outlet_temperature, 0.1)
    regs[IR_COP] = uint16_register(hp.cop, 0.01)
    regs[IR_STATUS] = hp.status_word
    regs[IR_OUTDOOR_TEMPERATURE] = int16_register(outdoor_temperature, 0.1)
    regs[IR_HEAT_OUTPUT:IR_HEAT_OUTPUT + 2] = float32_registers(hp.heat_output_kw)
    regs[IR_ELECTRIC_POWER:IR_ELECTRIC_POWER + 2] = float32_registers(hp.electric_power_kw)
    regs[IR_ELECTRIC_ENERGY:IR_ELECTRIC_ENERGY + 2] = uint32_registers(hp.electric_energy_kwh, 0.1)
    return regs


def holding_registers(hp: HeatPumpState) -> list[int]:
    """The holding register image: what a read-back of the commands returns."""
    return [int16_register(hp.remote_setpoint, 0.1), int(hp.sg_ready), hp.heartbeat,
            uint16_register(hp.capacity_limit_percent, 0.1)]


class HeatPumpModbusServer(ModbusFace):
    """Serves one heat pump of the model as a Modbus TCP server with one unit id."""

    HOLDING_COUNT = HOLDING_REGISTER_COUNT
    INPUT_COUNT = INPUT_REGISTER_COUNT

    def __init__(self, cfg: SimHeatPump, model: PlantModel, faults: FaultBoard | None = None) -> None:
        super().__init__(cfg.id, cfg.endpoint, cfg.unit_id, faults)
        self.cfg = cfg
        self._model = model
        self._input: list[int] = [0] * INPUT_REGISTER_COUNT
        self._holding: list[int] = [0] * HOLDING_REGISTER_COUNT
        self.update()

    async def __aenter__(self) -> HeatPumpModbusServer:
        await self.start()
        return self

    def update(self) -> None:
        """Refresh the register images from the model (called every tick), as the faults let it."""
        hp = self._faults.view(self.cfg.id, self._model.heat_pumps[self.cfg.id])
        self._input = input_registers(hp, self._model.outdoor_temperature)
        self._holding = holding_registers(self._model.heat_pumps[self.cfg.id])

    def _serve(self, function_code: int, address: int, registers: list[int],
               set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Serve our images, validate and apply writes."""
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
            elif reg == HR_CAPACITY_LIMIT and raw > 1000:
                log.warning("heat pump %s rejected capacity limit %.1f %% (0-100 %%)", hp_id, raw / 10)
                return ExcCodes.ILLEGAL_VALUE
        for reg, raw in commands:
            if reg == HR_SUPPLY_SETPOINT:
                self._model.set_heat_pump_setpoint(hp_id, _signed(raw) / 10)
            elif reg == HR_SG_READY:
                self._model.set_sg_ready(hp_id, raw)
            elif reg == HR_HEARTBEAT:
                self._model.heartbeat(hp_id, raw)
            elif reg == HR_CAPACITY_LIMIT:
                self._model.set_capacity_limit(hp_id, raw / 10)
        self._holding = holding_registers(self._model.heat_pumps[hp_id])
        return None


def _signed(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw
