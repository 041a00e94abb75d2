"""What every simulated Modbus TCP device shares: listening, restarting, and request-level faults."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.errors import SimulatorError
from simulators.faults import FaultBoard
from simulators.net import ensure_port_free, split_host_port

log = logging.getLogger(__name__)

Blocks = tuple[list[SimData], list[SimData], list[SimData], list[SimData]]


class ModbusFace(ABC):
    """A Modbus TCP server for one unit id; subclasses answer requests in `_serve`."""

    HOLDING_COUNT = 1
    INPUT_COUNT = 1

    def __init__(self, device_id: str, endpoint: str, unit_id: int, faults: FaultBoard | None) -> None:
        self.device_id = device_id
        self.unit_id = unit_id
        self._faults = faults or FaultBoard()
        self._host, self._port = split_host_port(endpoint, device_id)
        self._server: ModbusTcpServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) clients connect to, with the real port when configured with port 0."""
        transport = self._server.transport if self._server else None
        sockets = getattr(transport, "sockets", None)
        if sockets:
            return self._host, int(sockets[0].getsockname()[1])
        return self._host, self._port

    @property
    def running(self) -> bool:
        """Whether the port is open."""
        return self._server is not None

    async def __aenter__(self) -> ModbusFace:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the port (again on the same port after `stop`, so clients can reconnect)."""
        if self._server is not None:
            return
        ensure_port_free(self._host, self._port, self.device_id)
        devices = [SimDevice(id=self.unit_id, simdata=self._blocks(), action=self._action)]
        if self.unit_id != 0:
            # Unit id 0 catches every other unit id (pymodbus would fail with an internal error):
            # answer like a gateway whose target does not respond, which names the mistake.
            devices.append(SimDevice(id=0, simdata=self._blocks(), action=_no_such_unit))
        server = ModbusTcpServer(devices, address=(self._host, self._port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:
            # pymodbus reports a failed bind only as RuntimeError (the port was taken since our
            # check, a race): probe once more to say what actually happened.
            await server.shutdown()
            ensure_port_free(self._host, self._port, self.device_id)
            raise SimulatorError(f"cannot listen on {self._host}:{self._port} for {self.device_id}") from err
        self._server = server
        self._port = self.address[1]  # keep an ephemeral port across restarts
        log.info("%s serving Modbus TCP at %s:%d unit %d", self.device_id, *self.address, self.unit_id)

    async def stop(self) -> None:
        """Close the port and every connection."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()

    def drop_connections(self) -> int:
        """Reset every client connection (the listener stays); returns how many."""
        if self._server is None:
            return 0
        conns = list(self._server.active_connections.values())
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()  # type: ignore[attr-defined]
        return len(conns)

    def _blocks(self) -> Blocks:
        """Separate blocks (coils, discrete inputs, holding, input), so input 0 and holding 0 differ."""
        return (
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=self.HOLDING_COUNT, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=self.INPUT_COUNT, values=0, datatype=DataType.REGISTERS, readonly=True)],
        )

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus calls this before every access: faults first, then the device's own answer."""
        slow = self._faults.first(self.device_id, "slow")
        if slow is not None:
            await asyncio.sleep(slow.delay_s)
        failing = self._faults.first(self.device_id, "exception")
        if failing is not None:
            return ExcCodes(failing.code)
        return self._serve(function_code, address, registers, set_values)

    @abstractmethod
    def _serve(self, function_code: int, address: int, registers: list[int],
               set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Answer one request from the device's own registers (each face defines its map)."""


async def _no_such_unit(function_code: int, start_address: int, address: int, count: int,
                        registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE
