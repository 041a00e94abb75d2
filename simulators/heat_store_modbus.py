"""The heat store's Modbus TCP face (register map in docs/simulators.md), read-only: content and flows."""

from __future__ import annotations

from pymodbus.constants import ExcCodes

from simulators.config import SimHeatStore
from simulators.faults import FaultBoard
from simulators.heat_pump_modbus import float32_registers, int16_register, uint16_register
from simulators.modbus_face import ModbusFace
from simulators.plant import HeatStoreState, PlantModel

# Input registers (function 4), 0-based.
IR_STATE_OF_CHARGE = 0  # uint16, 0.0001: content as a share of full, 0..1
IR_TEMPERATURE = 1  # int16, 0.1 °C: mean water temperature
IR_CONTENT = 2  # float32, 2-3, kWh above the empty temperature
IR_CHARGE = 4  # float32, 4-5, kW into the tank
IR_DISCHARGE = 6  # float32, 6-7, kW out of the tank into the network
IR_LOSS = 8  # float32, 8-9, kW through the shell
INPUT_REGISTER_COUNT = 10

_READ_INPUT = 4


def store_registers(st: HeatStoreState) -> list[int]:
    """The whole input register image of the tank."""
    regs = [0] * INPUT_REGISTER_COUNT
    regs[IR_STATE_OF_CHARGE] = uint16_register(st.state_of_charge, 0.0001)
    regs[IR_TEMPERATURE] = int16_register(st.temperature, 0.1)
    regs[IR_CONTENT:IR_CONTENT + 2] = float32_registers(st.content_kwh)
    regs[IR_CHARGE:IR_CHARGE + 2] = float32_registers(st.charge_kw)
    regs[IR_DISCHARGE:IR_DISCHARGE + 2] = float32_registers(st.discharge_kw)
    regs[IR_LOSS:IR_LOSS + 2] = float32_registers(st.loss_kw)
    return regs


class HeatStoreModbusServer(ModbusFace):
    """Serves the model's heat store over Modbus TCP: input registers only."""

    INPUT_COUNT = INPUT_REGISTER_COUNT

    def __init__(self, cfg: SimHeatStore, model: PlantModel, faults: FaultBoard | None = None) -> None:
        super().__init__(cfg.id, cfg.endpoint, cfg.unit_id, faults)
        self.cfg = cfg
        self._model = model
        self._input: list[int] = [0] * INPUT_REGISTER_COUNT
        self.update()

    async def __aenter__(self) -> HeatStoreModbusServer:
        await self.start()
        return self

    def update(self) -> None:
        """Refresh the register image from the model, as the faults let it."""
        assert self._model.store is not None
        self._input = store_registers(self._faults.view(self.cfg.id, self._model.store))

    def _serve(self, function_code: int, address: int, registers: list[int],
               set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if function_code != _READ_INPUT:
            return ExcCodes.ILLEGAL_FUNCTION  # the tank's sensors take no commands
        registers[:INPUT_REGISTER_COUNT] = self._input
        return None
