"""Simulated heat meters' wired M-Bus face behind a transparent M-Bus-to-TCP gateway (EN 13757-2/-3).

One gateway port serves every simulated meter configured with the same endpoint, each at its primary
address and selectable by its secondary address (its identification number). A meter answers SND_NKE and
selection with E5 and REQ_UD2 with RSP_UD telegrams laid out like a MULTICAL's: the fixed header (KAM,
heat outlet), then fabrication number, energy (MJ), volume, on time, power, flow, flow and return
temperature, their difference, date and time and error flags in the first telegram, which ends "more
records follow" (DIF 1F); the second holds the due-date registers (storage 1) and a tariff register.
FCB toggles to the next telegram, a repeated FCB repeats the last one, SND_NKE starts again from the first.

Faults per meter: offline or no_answer (silent), bad_checksum, truncated (half a frame, then nothing),
slow, meter_error (error flags and the status byte's temporary-error bit), frozen, out_of_range, and the
runner's replace (a new identification number, registers from 0) and wrap. The frame code is the
simulator's own: a simulator never borrows the driver's idea of the protocol it is meant to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

from simulators.config import SimHeatMeter
from simulators.errors import SimulatorError
from simulators.faults import FaultBoard
from simulators.net import ensure_port_free, listen_error, split_host_port
from simulators.plant import HeatMeterState, PlantModel

log = logging.getLogger(__name__)

_SECONDARY = 0xFD
_KAM = ((ord("K") - 64) << 10) | ((ord("A") - 64) << 5) | (ord("M") - 64)
_MEDIUM_HEAT_OUTLET = 0x04
_STATUS_TEMPORARY_ERROR = 0x10
TELEGRAMS = 2


def _frame(control: int, address: int, ci: int, data: bytes) -> bytes:
    body = bytes((control, address, ci)) + data
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


def _bcd(number: int, size: int) -> bytes:
    digits = f"{number % 10 ** (2 * size):0{2 * size}d}"
    return bytes(int(digits[i:i + 2], 16) for i in range(2 * size - 2, -1, -2))


def _int(value: float, size: int) -> bytes:
    raw = math.floor(value) if math.isfinite(value) else 0
    limit = 1 << (8 * size - 1)
    raw = max(-limit, min(limit - 1, raw))
    return raw.to_bytes(size, "little", signed=True)


def _type_f(t: datetime) -> bytes:
    y = t.year % 100
    return bytes((t.minute & 0x3F, t.hour & 0x1F, (t.day & 0x1F) | ((y & 0x07) << 5),
                  (t.month & 0x0F) | ((y & 0x78) << 1)))


def _type_g(t: datetime) -> bytes:
    y = t.year % 100
    return bytes(((t.day & 0x1F) | ((y & 0x07) << 5), (t.month & 0x0F) | ((y & 0x78) << 1)))


@dataclass
class _Meter:
    """One meter on the simulated bus: its link-layer state and the registers of its last due date."""

    cfg: SimHeatMeter
    next_telegram: int = 0
    last_fcb: bool | None = None  # None after SND_NKE: the next REQ_UD2 gets the first telegram
    last_sent: int = 0
    access: int = 0
    due_energy_gj: float = 0.0
    due_volume_m3: float = 0.0
    serial: str = field(default="")


class MbusGateway:
    """A transparent gateway's TCP port with the simulated meters of one endpoint on its bus."""

    def __init__(self, meters: list[SimHeatMeter], model: PlantModel, faults: FaultBoard | None = None) -> None:
        if not meters:
            raise SimulatorError("an M-Bus gateway needs at least one meter")
        self.device_id = meters[0].id
        self._host, self._port = split_host_port(meters[0].endpoint, meters[0].id)
        self._model = model
        self._faults = faults or FaultBoard()
        self.meters = {m.id: _Meter(m, due_energy_gj=model.heat_meters[m.id].energy_gj,
                                    due_volume_m3=model.heat_meters[m.id].volume_m3,
                                    serial=model.heat_meters[m.id].serial) for m in meters}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._selected: str | None = None
        self.requests = 0

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) clients connect to, with the real port when configured with port 0."""
        if self._server is not None and self._server.sockets:
            return self._host, int(self._server.sockets[0].getsockname()[1])
        return self._host, self._port

    @property
    def running(self) -> bool:
        """Whether the port is open."""
        return self._server is not None

    async def __aenter__(self) -> MbusGateway:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the port (again on the same port after `stop`)."""
        if self._server is not None:
            return
        ensure_port_free(self._host, self._port, self.device_id)
        try:
            self._server = await asyncio.start_server(self._client, self._host, self._port)
        except OSError as err:
            raise listen_error(err, self._host, self._port, self.device_id) from err
        self._port = self.address[1]
        log.info("M-Bus gateway for %s serving at %s:%d", ", ".join(self.meters), *self.address)

    async def stop(self) -> None:
        """Close the port and every connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        self.drop_connections()
        await server.wait_closed()

    def drop_connections(self) -> int:
        """Reset every client connection (the listener stays); returns how many."""
        writers = list(self._writers)
        for w in writers:
            w.transport.abort()
        return len(writers)

    # ------------------------------------------------------------------ the bus

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                answer = await self._answer(*request)
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _by_address(self, address: int) -> list[_Meter]:
        if address == _SECONDARY:
            return [self.meters[self._selected]] if self._selected in self.meters else []
        return [m for m in self.meters.values() if m.cfg.primary_address == address]

    async def _answer(self, control: int, address: int, ci: int | None, data: bytes) -> bytes:
        """What the bus sends back to one request (b"" when no meter answers)."""
        self.requests += 1
        function = control & 0x4F
        if ci == 0x52 and address == _SECONDARY:  # SND_UD: selection by secondary address
            matching = [m for m in self.meters.values() if self._matches(m, data)]
            self._selected = matching[0].cfg.id if matching else None
            if not matching or self._silent(matching[0]):
                return b""
            return b"\xe5"
        meters = self._by_address(address)
        if len(meters) != 1:
            return b""  # nobody there, or a collision that no master could read
        meter = meters[0]
        if self._silent(meter):
            return b""
        slow = self._faults.first(meter.cfg.id, "slow")
        if slow is not None:
            await asyncio.sleep(slow.delay_s)
        if function == 0x40:  # SND_NKE
            meter.last_fcb, meter.next_telegram = None, 0
            if address == _SECONDARY:
                self._selected = None
            return b"\xe5"
        if function == 0x4B:  # REQ_UD2
            fcv, fcb = bool(control & 0x10), bool(control & 0x20)
            if fcv and meter.last_fcb is not None and fcb == meter.last_fcb:
                index = meter.last_sent  # the master did not get it: repeat
            else:
                index = meter.next_telegram
                meter.next_telegram = (index + 1) % TELEGRAMS
            meter.last_fcb = fcb if fcv else None
            meter.last_sent = index
            return self._corrupt(meter, self._telegram(meter, index, address))
        return b""

    def _silent(self, meter: _Meter) -> bool:
        return (self._faults.first(meter.cfg.id, "no_answer") is not None
                or self._faults.first(meter.cfg.id, "offline") is not None)

    def _matches(self, meter: _Meter, data: bytes) -> bool:
        if len(data) < 4:
            return False
        pattern = data[3::-1].hex().upper()
        serial = self._model.heat_meters[meter.cfg.id].serial.zfill(8)[-8:]
        return all(p == "F" or p == c for p, c in zip(pattern, serial, strict=True))

    def _corrupt(self, meter: _Meter, frame: bytes) -> bytes:
        if self._faults.first(meter.cfg.id, "bad_checksum") is not None:
            return frame[:-2] + bytes(((frame[-2] + 1) & 0xFF,)) + frame[-1:]
        if self._faults.first(meter.cfg.id, "truncated") is not None:
            return frame[:len(frame) // 2]
        return frame

    # ------------------------------------------------------------------ telegrams

    def state(self, meter_id: str) -> HeatMeterState:
        """The meter's values as it reports them (faults applied)."""
        return self._faults.view(meter_id, self._model.heat_meters[meter_id])

    def _telegram(self, meter: _Meter, index: int, address: int) -> bytes:
        true = self._model.heat_meters[meter.cfg.id]
        if true.serial != meter.serial:  # exchanged: the new meter's due-date registers start at zero too
            meter.serial, meter.due_energy_gj, meter.due_volume_m3 = true.serial, 0.0, 0.0
        s = self.state(meter.cfg.id)
        error = self._faults.first(meter.cfg.id, "meter_error")
        flags = int(error.value) if error is not None and error.value is not None else (1 if error else 0)
        meter.access = (meter.access + 1) & 0xFF
        serial = int(s.serial) if s.serial.isdigit() else 0
        header = (_bcd(serial, 4) + _KAM.to_bytes(2, "little")
                  + bytes((0x01, _MEDIUM_HEAT_OUTLET, meter.access, _STATUS_TEMPORARY_ERROR if flags else 0))
                  + b"\x00\x00")
        now = self._model.time
        if index == 0:
            records = (
                b"\x0c\x78" + _bcd(serial, 4)  # fabrication number, 8 BCD digits
                + b"\x04\x0e" + _int(s.energy_gj * 1000.0, 4)  # energy, MJ (10^6 J)
                + b"\x04\x13" + _int(s.volume_m3 * 1000.0, 4)  # volume, litres (10^-3 m3)
                + b"\x04\x22" + _int(self._model.elapsed_s / 3600.0, 4)  # on time, hours
                + b"\x04\x2d" + _int(s.power_kw * 10.0, 4)  # power, 100 W
                + b"\x04\x3b" + _int(s.flow_m3h * 1000.0, 4)  # volume flow, l/h (10^-3 m3/h)
                + b"\x02\x59" + _int(round(s.flow_temperature_c * 100.0), 2)  # flow temperature, 0.01 degC
                + b"\x02\x5d" + _int(round(s.return_temperature_c * 100.0), 2)  # return temperature, 0.01 degC
                + b"\x02\x61" + _int(round((s.flow_temperature_c - s.return_temperature_c) * 100.0), 2)  # 0.01 K
                + b"\x04\x6d" + _type_f(now)  # date and time, type F
                + b"\x01\xfd\x17" + bytes((flags & 0xFF,))  # error flags
                + b"\x1f"  # more records follow in the next telegram
            )
        else:
            records = (
                b"\x44\x0e" + _int(meter.due_energy_gj * 1000.0, 4)  # energy at the due date (storage 1), MJ
                + b"\x44\x13" + _int(meter.due_volume_m3 * 1000.0, 4)  # volume at the due date, litres
                + b"\x42\x6c" + _type_g(now)  # the due date, type G (storage 1)
                + b"\x84\x10\x0e" + _int(0.0, 4)  # tariff 1 energy register, MJ
                + b"\x0f\x01\x00"  # manufacturer-specific tail
            )
        return _frame(0x08, address if address != _SECONDARY else _SECONDARY, 0x72, header + records)


async def _read_request(reader: asyncio.StreamReader) -> tuple[int, int, int | None, bytes] | None:
    """The next frame the master sends: (C, A, CI or None, data); frames that fail their checks are skipped."""
    while True:
        try:
            first = (await reader.readexactly(1))[0]
        except asyncio.IncompleteReadError:
            return None
        if first == 0x10:
            rest = await reader.readexactly(4)
            if rest[3] == 0x16 and (rest[0] + rest[1]) & 0xFF == rest[2]:
                return rest[0], rest[1], None, b""
        elif first == 0x68:
            head = await reader.readexactly(3)
            if head[0] != head[1] or head[2] != 0x68 or head[0] < 3:
                continue
            rest = await reader.readexactly(head[0] + 2)
            body = rest[:-2]
            if rest[-1] == 0x16 and sum(body) & 0xFF == rest[-2]:
                return body[0], body[1], body[2], bytes(body[3:])
        # anything else is line noise: a real slave ignores it too
