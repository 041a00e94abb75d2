"""An EN 1434 heat meter's Modbus TCP face (vendor-style map in docs/simulators.md), read-only."""

from __future__ import annotations

from pymodbus.constants import ExcCodes

from simulators.config import SimHeatMeter
from simulators.faults import FaultBoard
from simulators.heat_pump_modbus import float32_registers, int16_register, uint32_registers
from simulators.modbus_face import ModbusFace
from simulators.plant import HeatMeterState, PlantModel

# Input registers (function 4), 0-based.
IR_ENERGY = 0  # uint32, 0-1, MJ: the non-resettable register, rolls over at 2**32 MJ
IR_VOLUME = 2  # uint32, 2-3, 0.01 m³
IR_POWER = 4  # float32, 4-5, kW
IR_FLOW = 6  # float32, 6-7, m³/h
IR_FLOW_TEMPERATURE = 8  # int16, 0.01 °C
IR_RETURN_TEMPERATURE = 9  # int16, 0.01 °C
IR_SERIAL = 10  # uint32, 10-11: the serial number as an integer (changes on meter replacement)
INPUT_REGISTER_COUNT = 12

_READ_INPUT = 4


def meter_registers(meter: HeatMeterState) -> list[int]:
    """The whole input register image of one meter."""
    regs = [0] * INPUT_REGISTER_COUNT
    regs[IR_ENERGY:IR_ENERGY + 2] = uint32_registers(meter.energy_gj, 0.001)
    regs[IR_VOLUME:IR_VOLUME + 2] = uint32_registers(meter.volume_m3, 0.01)
    regs[IR_POWER:IR_POWER + 2] = float32_registers(meter.power_kw)
    regs[IR_FLOW:IR_FLOW + 2] = float32_registers(meter.flow_m3h)
    regs[IR_FLOW_TEMPERATURE] = int16_register(meter.flow_temperature_c, 0.01)
    regs[IR_RETURN_TEMPERATURE] = int16_register(meter.return_temperature_c, 0.01)
    serial = int(meter.serial) if meter.serial.isdigit() else 0  # M-Bus serials are 8 BCD digits
    regs[IR_SERIAL:IR_SERIAL + 2] = uint32_registers(serial, 1)
    return regs


class HeatMeterModbusServer(ModbusFace):
    """Serves one meter of the model over Modbus TCP: input registers only."""

    INPUT_COUNT = INPUT_REGISTER_COUNT

    def __init__(self, cfg: SimHeatMeter, model: PlantModel, faults: FaultBoard | None = None) -> None:
        super().__init__(cfg.id, cfg.endpoint, cfg.unit_id, faults)
        self.cfg = cfg
        self._model = model
        self._input: list[int] = [0] * INPUT_REGISTER_COUNT
        self.update()

    async def __aenter__(self) -> HeatMeterModbusServer:
        await self.start()
        return self

    def update(self) -> None:
        """Refresh the register image from the model, as the faults let it."""
        self._input = meter_registers(self._faults.view(self.cfg.id, self._model.heat_meters[self.cfg.id]))

    def _serve(self, function_code: int, address: int, registers: list[int],
               set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if function_code != _READ_INPUT:
            return ExcCodes.ILLEGAL_FUNCTION  # a meter takes no commands over Modbus
        registers[:INPUT_REGISTER_COUNT] = self._input
        return None
