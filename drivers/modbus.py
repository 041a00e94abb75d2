"""Generic Modbus TCP driver: polls a declared point map with as few requests as possible.

Over 400 lines because the read planner, the shared gateway links and the driver work on one request queue;
the codec lives apart (drivers/codec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import operator
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers import codec
from drivers.backoff import Backoff
from drivers.base import Driver, describe, raise_if_cancelled, within
from drivers.config import ModbusDevice, ModbusPoint, PointBase
from drivers.errors import (
    CodecError,
    DeviceException,
    DeviceRefused,
    DriverConnectionError,
    DriverError,
    DriverTimeout,
    WriteRejected,
)
from service.bus import SampleSink
from service.clock import SleepingClock
from service.model import Quality, utcnow

MAX_BITS_PER_READ = 2000  # Modbus limit for coils and discrete inputs in one request
# struct formats the block decoder reads straight from a block's big-endian bytes.
_FAST_FORMATS: dict[str, str] = {"bool": ">H", "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I",
                                 "float32": ">f", "float64": ">d"}
_READERS = {"holding": "read_holding_registers", "input": "read_input_registers", "coil": "read_coils",
            "discrete": "read_discrete_inputs"}  # client method per function
MAX_TIMEOUT_S = 120.0  # the largest timeout_s a device may have (drivers.config)

BlockKey = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` registers (or bits) of one function from `address`, and the points in it."""

    function: str
    address: int
    count: int
    points: tuple[ModbusPoint, ...]

    @property
    def key(self) -> BlockKey:
        """Identity of the request, for logging a failing range once."""
        return self.function, self.address, self.count


def plan_reads(points: Iterable[ModbusPoint], max_registers: int, max_gap: int) -> list[ReadBlock]:
    """Coalesce points into as few reads as possible, per function.

    A block grows while the next point starts at most `max_gap` unmapped registers after it and the
    whole block stays within `max_registers` (bits: 16 per register, at most 2000). A point larger
    than the limit gets a block of its own.
    """
    by_function: dict[str, list[ModbusPoint]] = {}
    for p in points:
        by_function.setdefault(p.function, []).append(p)
    blocks: list[ReadBlock] = []
    for function in ("holding", "input", "coil", "discrete"):
        group = sorted(by_function.get(function, []), key=lambda p: (p.address, p.register_count))
        if not group:
            continue
        bits = function in ("coil", "discrete")
        limit = min(MAX_BITS_PER_READ, 16 * max_registers) if bits else max_registers
        gap = 16 * max_gap if bits else max_gap
        start, end, members = group[0].address, group[0].address + group[0].register_count, [group[0]]
        for p in group[1:]:
            p_end = p.address + p.register_count
            if p.address - end <= gap and max(end, p_end) - start <= limit:
                end = max(end, p_end)
                members.append(p)
                continue
            blocks.append(ReadBlock(function, start, end - start, tuple(members)))
            start, end, members = p.address, p_end, [p]
        blocks.append(ReadBlock(function, start, end - start, tuple(members)))
    return blocks


def split_block(block: ReadBlock, max_registers: int) -> list[ReadBlock]:
    """Smaller reads for a block the device refused: first without bridged gaps, then one per point."""
    gapless = plan_reads(block.points, max_registers, 0)
    if len(gapless) > 1:
        return gapless
    return [ReadBlock(block.function, p.address, p.register_count, (p,)) for p in block.points]


class BlockDecoder:
    """Decodes every point of one read block from its registers in one pass.

    Polling time is dominated by decoding, so the common case (numeric big-endian points that do not
    overlap) is compiled once per block into a single struct format over the block's bytes, gaps as
    pad bytes: one C call yields every raw value. Other layouts go point by point through codec.decode.
    """

    def __init__(self, block: ReadBlock, publishes: Callable[[PointBase], bool],
                 full_id: Callable[[PointBase], str]) -> None:
        self.bits = block.function in ("coil", "discrete")
        self.points = [p for p in sorted(block.points, key=lambda p: p.address) if publishes(p)]
        self.base = block.address
        self.words = struct.Struct(f">{block.count}H")
        self.whole: struct.Struct | None = None
        fmt, pos = ">", block.address
        for p in self.points:
            fast = (p.type in _FAST_FORMATS and p.byte_order == "big"
                    and (p.word_order == "big" or p.register_count == 1))
            if self.bits or not fast or p.address < pos:
                break  # bits, a swapped layout or overlapping points: decode one by one
            fmt += f"{2 * (p.address - pos)}x" if p.address > pos else ""
            fmt += _FAST_FORMATS[p.type][1:]
            pos = p.address + p.register_count
        else:
            if not self.bits:
                self.whole = struct.Struct(fmt)
        # (point, is bool, is float, scale, offset) in format order
        self.post = [(p, p.type == "bool", p.type.startswith("float"), p.scale, p.offset) for p in self.points]
        self.point_ids = [p.id for p in self.points]
        self.full_ids = [full_id(p) for p in self.points]
        self.scales = [p.scale for p in self.points]
        self.offsets = [p.offset for p in self.points]
        self.unshifted = not any(self.offsets)
        self.bool_indexes = [i for i, (_, is_bool, _, _, _) in enumerate(self.post) if is_bool]
        self.has_floats = any(is_float for _, _, is_float, _, _ in self.post)

    def decode_all(self, data: Sequence[int] | Sequence[bool]) -> list[float] | None:
        """Every point's value in `points` order, or None when some point needs decode() to say why not.

        The fast path of a poll: one struct call, one comprehension, no per-point objects.
        """
        if self.whole is None:
            return None
        try:
            raws = self.whole.unpack_from(self.words.pack(*data))
        except struct.error:
            return None  # a word out of range
        # scale and offset are floats (config), so every value is a float already
        if self.unshifted:  # no offsets, the usual case: one C-level map
            values = list(map(operator.mul, raws, self.scales))
        else:
            values = [raw * scale + offset for raw, scale, offset in zip(raws, self.scales, self.offsets, strict=True)]
        for i in self.bool_indexes:
            values[i] = 1.0 if raws[i] else 0.0
        if self.has_floats and not all(map(math.isfinite, values)):
            return None  # a NaN or infinity: decode() reports it per point
        return values

    def decode(self, data: Sequence[int] | Sequence[bool]
               ) -> tuple[list[tuple[PointBase, float]], list[tuple[ModbusPoint, CodecError]]]:
        """(point, value) pairs that decoded, and (point, error) pairs that did not."""
        good: list[tuple[PointBase, float]] = []
        failed: list[tuple[ModbusPoint, CodecError]] = []
        if self.bits:
            return [(p, 1.0 if data[p.address - self.base] else 0.0) for p in self.points], failed
        raws: tuple[Any, ...] | None = None
        if self.whole is not None:
            try:
                raws = self.whole.unpack_from(self.words.pack(*data))
            except struct.error:
                raws = None  # a word out of range: codec.decode says which point it spoils
        if raws is not None:
            for (p, is_bool, is_float, scale, offset), raw in zip(self.post, raws, strict=True):
                if is_bool:
                    good.append((p, 1.0 if raw else 0.0))
                elif is_float and not math.isfinite(raw):
                    failed.append((p, CodecError(f"point '{p.id}' holds {raw}, not a finite number")))
                else:
                    good.append((p, float(raw * scale + offset)))
            return good, failed
        for p in self.points:
            start = p.address - self.base
            try:
                decoded = codec.decode(p, [int(r) for r in data[start:start + p.register_count]])
            except CodecError as err:
                failed.append((p, err))
                continue
            if not isinstance(decoded, str):
                good.append((p, float(decoded)))
        return good, failed


ClientFactory = Callable[..., AsyncModbusTcpClient]  # (host, port=, name=, timeout=, retries=, reconnect_delay=)


class ModbusLinks:
    """The Modbus TCP connections of one owner (the service, a probe), one per endpoint.

    Gateways commonly accept few connections and handle one request at a time, so the devices behind
    one endpoint share a link; whoever builds the drivers owns the registry, so two services (or a
    test and a service) in one process never share a connection by accident.
    """

    def __init__(self, client_factory: ClientFactory = AsyncModbusTcpClient) -> None:
        self._links: dict[tuple[str, int], ModbusLink] = {}
        self.client_factory = client_factory  # pymodbus' client; tests give a scripted fake

    def acquire(self, host: str, port: int) -> ModbusLink:
        """The link to host:port, created on first use; every acquire is matched by a `release`."""
        link = self._links.get((host, port))
        if link is None:
            link = self._links[(host, port)] = ModbusLink(self, host, port)
        link.users += 1
        return link

    def __len__(self) -> int:
        return len(self._links)

    def _forget(self, link: ModbusLink) -> None:
        if self._links.get((link.host, link.port)) is link:
            del self._links[(link.host, link.port)]


class ModbusLink:
    """One TCP connection to a Modbus endpoint, shared by every device (unit id) behind it; they take
    turns through `lock`, and the connection closes when the last device lets go of it."""

    def __init__(self, owner: ModbusLinks, host: str, port: int) -> None:
        self._owner = owner
        self.host, self.port = host, port
        self.client: AsyncModbusTcpClient | None = None
        self.lock = asyncio.Lock()  # one request at a time on the wire, across all units
        self.users = 0
        self.last_request_end = 0.0  # loop time the previous request finished, for request pauses
        self._connecting = asyncio.Lock()

    async def connect(self, name: str) -> AsyncModbusTcpClient:
        """The connected client, connecting (or re-connecting a dropped one) if needed."""
        async with self._connecting:
            if self.client is not None and self.client.connected:
                return self.client
            if self.client is not None:
                self.client.close()
            host, port = self.host, self.port
            # Our own timeouts (asyncio.timeout per request, per device) decide; pymodbus' timer is
            # set beyond any device's so it never cuts in, and its reconnect and retries are off
            # because our backoff re-creates the connection.
            self.client = self._owner.client_factory(host, port=port, name=name, timeout=MAX_TIMEOUT_S + 1.0,
                                                     retries=0, reconnect_delay=0)
            if not await self.client.connect():
                self.client.close()
                self.client = None
                raise DriverConnectionError(f"cannot connect to {host}:{port}")
            return self.client

    def release(self) -> None:
        """A device stops using the link; the last one closes the connection."""
        self.users -= 1
        if self.users <= 0:
            self._owner._forget(self)
            if self.client is not None:
                self.client.close()
                self.client = None

    def drop(self) -> None:
        """Close a connection that is broken (the next user re-connects)."""
        if self.client is not None:
            self.client.close()
            self.client = None


class ModbusDriver(Driver[ModbusDevice]):
    """Polls a Modbus TCP device every `poll_interval_s` and writes its holding registers and coils."""

    protocol = "modbus"

    def __init__(self, device: ModbusDevice, sink: SampleSink, *, backoff: Backoff | None = None,
                 links: ModbusLinks | None = None, clock: SleepingClock | None = None) -> None:
        super().__init__(device, sink, backoff=backoff, clock=clock)
        self._links = links if links is not None else ModbusLinks()  # alone: a connection of its own
        self._initial_plan = plan_reads(device.points, device.max_registers_per_read,
                                        device.max_gap_registers)
        self._plan = list(self._initial_plan)
        self._client: AsyncModbusTcpClient | None = None
        self._link: ModbusLink | None = None
        self._link_broken = False  # the connection itself failed (not just this unit's request)
        self._failing_ranges: set[BlockKey] = set()  # logged as failing, not yet recovered
        self._decoders: dict[BlockKey, BlockDecoder] = {}

    @property
    def plan(self) -> list[ReadBlock]:
        """The reads one poll makes now (refused coalesced reads are split until the next connection)."""
        return list(self._plan)

    # ------------------------------------------------------------------ lifecycle hooks

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        host, port = self.device.host_port
        link = self._links.acquire(host, port)
        stack.callback(self._let_go, link)
        self._client = await link.connect(self.device_id)
        self._link = link
        self._plan = list(self._initial_plan)  # a new connection gets a new chance to coalesce

    def _let_go(self, link: ModbusLink) -> None:
        if self._link_broken:
            link.drop()  # a lost connection is lost for every unit behind it: re-create it
        self._link_broken = False
        self._client = None
        self._link = None
        link.release()

    async def _serve(self) -> None:
        await self._poll_forever(self._poll_once)

    # ------------------------------------------------------------------ polling

    async def _poll_once(self) -> None:
        """Read every block and publish its points; a refused block only affects its own points."""
        plan: list[ReadBlock] = []
        pending = list(self._plan)
        while pending:
            block = pending.pop(0)
            try:
                data = await self._read_block(block)
            except DeviceException as err:
                if len(block.points) > 1:
                    # A bridged gap or one bad address spoils the whole request: retry it in pieces now.
                    pieces = split_block(block, self.device.max_registers_per_read)
                    self._log.info("%s: %s refused (%s); reading it in %d requests from now on",
                                   self.device_id, _describe_block(block), err, len(pieces))
                    pending[:0] = pieces
                    continue
                plan.append(block)
                self.stats.read_errors += 1
                self._range_failed(block, err)
                now = utcnow()
                for p in block.points:
                    self._publish(p, None, Quality.BAD, now, now)
                continue
            plan.append(block)
            self.stats.reads += 1
            self._range_ok(block)
            self._publish_block(block, data)
        self._plan = plan

    def _publish_block(self, block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> None:
        now = utcnow()
        decoder = self._decoders.get(block.key)
        if decoder is None:
            decoder = self._decoders[block.key] = BlockDecoder(block, self._publishes, self.point_id)
        values = decoder.decode_all(data)
        if values is not None:  # the usual case: every point decoded in one go
            self._publish_values(decoder.point_ids, decoder.full_ids, values, now)
            return
        good, failed = decoder.decode(data)
        if good:
            self._publish_good(good, now)
        for p, err in failed:
            self.stats.read_errors += 1
            self._log.debug("%s: %s", self.device_id, err)
            self._publish(p, None, Quality.BAD, now, now)

    async def _read_block(self, block: ReadBlock) -> Sequence[int] | Sequence[bool]:
        client = self._require_client()
        reader = getattr(client, _READERS[block.function])
        response = await self._call(_describe_block(block), functools.partial(
            reader, block.address, count=block.count, device_id=self.device.unit_id))
        if block.function in ("coil", "discrete"):
            bits = response.bits[:block.count]  # bits arrive padded to whole bytes
            if len(bits) < block.count:
                raise DriverError(f"{_describe_block(block)}: got {len(bits)} bits")
            return bits
        if len(response.registers) != block.count:
            raise DriverError(f"{_describe_block(block)}: got {len(response.registers)} registers")
        return response.registers

    def _range_failed(self, block: ReadBlock, err: DeviceException) -> None:
        if block.key not in self._failing_ranges:
            self._failing_ranges.add(block.key)
            self._log.warning("%s: %s refused (%s); its points are BAD",
                              self.device_id, _describe_block(block), err)

    def _range_ok(self, block: ReadBlock) -> None:
        if block.key in self._failing_ranges:
            self._failing_ranges.discard(block.key)
            self._log.info("%s: %s readable again", self.device_id, _describe_block(block))

    # ------------------------------------------------------------------ the wire

    def _require_client(self) -> AsyncModbusTcpClient:
        if self._client is None:
            raise DriverConnectionError(f"not connected to {self.device.endpoint}")
        return self._client

    async def _call(self, what: str, request: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Run one request within the device timeout, taking turns on the shared connection."""
        link = self._link
        if link is None:
            raise DriverConnectionError(f"not connected to {self.device.endpoint}")
        loop = asyncio.get_running_loop()
        # The wait for our turn is bounded by the other units' own timeouts; only our request is timed,
        # so a slow unit behind the same gateway delays this one but never makes it fail.
        async with link.lock:
            try:
                # Slow gateways and serial bridges need a quiet moment between requests.
                pause = link.last_request_end + self.device.request_pause_s - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                # pymodbus raises before awaiting when not connected
                response = await within(self.device.timeout_s, request())
                raise_if_cancelled()
            except TimeoutError as err:
                raise DriverTimeout(f"{what}: no answer within {self.device.timeout_s} s") from err
            except (ConnectionException, ModbusIOException) as err:
                self._link_broken = True
                raise DriverConnectionError(f"{what}: {err}") from err
            except ModbusException as err:
                raise DriverError(f"{what}: {err}") from err
            finally:
                link.last_request_end = loop.time()
        if response.isError():
            code = response.exception_code
            try:
                name = ExcCodes(code).name
            except ValueError:
                name = "unknown"
            raise DeviceException(f"exception {code} {name}", code)
        return response

    # ------------------------------------------------------------------ writes

    async def _write_and_read_back(self, point: PointBase, value: float) -> tuple[float, float]:
        assert isinstance(point, ModbusPoint)
        client = self._require_client()
        unit = self.device.unit_id
        single = ReadBlock(point.function, point.address, point.register_count, (point,))
        if point.function == "coil":
            bit = codec.encode_bit(point, value)
            await self._write(f"write coil {point.address}",
                              lambda: client.write_coil(point.address, bit, device_id=unit))
            return codec.decode_bit(bit), codec.decode_bit(bool((await self._read_block(single))[0]))
        registers = codec.encode(point, value)  # CodecError: the value does not fit, nothing is sent
        written = codec.decode(point, registers)
        if len(registers) == 1:
            await self._write(f"write register {point.address}",
                              lambda: client.write_register(point.address, registers[0], device_id=unit))
        else:
            await self._write(f"write registers {point.address}+{len(registers)}",
                              lambda: client.write_registers(point.address, registers, device_id=unit))
        readback = codec.decode(point, [int(r) for r in await self._read_block(single)])
        if isinstance(written, str) or isinstance(readback, str):
            raise WriteRejected(f"point '{point.id}' is a string")
        return written, readback

    async def _write(self, what: str, request: Callable[[], Awaitable[ModbusPDU]]) -> None:
        try:
            await self._call(what, request)
        except DeviceException as err:
            raise DeviceRefused(f"device refused the {what}: {describe(err)}") from err

    def _tolerance(self, point: PointBase, written: float) -> float:
        assert isinstance(point, ModbusPoint)
        return codec.readback_tolerance(point, written)

    def _publishes(self, point: PointBase) -> bool:
        # Text points are for probing and commissioning; the sample stream carries numbers only.
        return not (isinstance(point, ModbusPoint) and point.type == "string")


def _describe_block(block: ReadBlock) -> str:
    return f"{block.function} {block.address}..{block.address + block.count - 1}"
