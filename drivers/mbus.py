"""M-Bus driver (EN 13757-2/-3) over a transparent TCP gateway or a serial master: one meter per device.

Each poll initialises the meter (SND_NKE, or selection by secondary address) and reads its telegrams with
REQ_UD2, toggling FCB while the meter says more records follow. A request unanswered within `timeout_s`, or
answered with a frame that fails the link layer's checks (checksum, length, address), is repeated with the
same FCB up to `retries` times; bad frames are counted and logged once per meter and problem, never read.
The meters on one bus share its connection (drivers/mbus_link.py) and take turns per request, so a silent meter delays
the others by its timeouts but never makes them fail. The meter's identification number, manufacturer and
version are tracked: a new identification number is a meter exchange, handed to `on_exchange` with the old
meter's last and the new meter's first register values. Error flags (status byte, VIF FD 17) make the
telegram's values UNCERTAIN; an `error_flags` point carries the flags themselves for a state alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

from drivers.backoff import Backoff
from drivers.base import Driver
from drivers.config import MbusDevice, MbusPoint, PointBase
from drivers.errors import DriverConnectionError, DriverError, DriverTimeout
from drivers.mbus_frame import ADDRESS_SECONDARY, Frame, FrameError, req_ud2, select_secondary, snd_nke
from drivers.mbus_link import MbusLink, MbusLinks
from drivers.mbus_records import Header, Record, RecordError, Telegram, decode
from drivers.mqtt_serials import SerialMemory
from service.bus import SampleSink
from service.clock import SleepingClock
from service.model import Quality, Sample, utcnow

log = logging.getLogger(__name__)

# Factor from each record unit (as the decoder gives it) and each point unit to one base unit per quantity.
_TO_BASE: dict[str, float] = {
    "Wh": 3600.0, "kWh": 3.6e6, "MWh": 3.6e9, "J": 1.0, "kJ": 1e3, "MJ": 1e6, "GJ": 1e9,  # energy: J
    "m3": 1.0, "l": 1e-3,  # volume: m3
    "W": 1.0, "kW": 1e3, "MW": 1e6, "J/h": 1 / 3600,  # power: W
    "m3/h": 1.0, "l/h": 1e-3, "m3/min": 60.0, "m3/s": 3600.0,  # volume flow: m3/h
    "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0,  # time: s
    "degC": 1.0, "K": 1.0, "": 1.0,
}


_SELF_REPORTS = frozenset({"error_flags", "fabrication_number"})  # what a meter says about itself


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """A record's value in the point's unit (both units of one quantity; drivers.config checks the point's)."""
    if from_unit == to_unit:
        return value
    return value * _TO_BASE[from_unit] / _TO_BASE[to_unit]


@dataclass(frozen=True, slots=True)
class MeterIdentity:
    """Who the meter says it is: the fixed header's identification number, manufacturer, version, medium."""

    identification: str
    manufacturer: str
    version: int
    medium: int

    @classmethod
    def of(cls, header: Header) -> MeterIdentity:
        """The identity a telegram's header carries."""
        return cls(header.identification, header.manufacturer, header.version, header.medium)

    def __str__(self) -> str:
        return f"{self.manufacturer} {self.identification} v{self.version}"


@dataclass(frozen=True, slots=True)
class MeterExchange:
    """A new meter answers where another did: its identity and the registers either side of the exchange.

    `registers` maps counter point ids (of the device) to (old meter's last value or None when unknown,
    new meter's first value, unit). `time` is the source time of the new meter's first values.
    """

    device: str
    time: datetime
    old: MeterIdentity | None
    old_identification: str
    new: MeterIdentity
    registers: dict[str, tuple[float | None, float, str]] = field(default_factory=dict)


ExchangeSink = Callable[[MeterExchange], None]


class MbusDriver(Driver[MbusDevice]):
    """Reads one M-Bus meter every `poll_interval_s` through a (shared) gateway connection."""

    protocol = "mbus"

    def __init__(self, device: MbusDevice, sink: SampleSink, *, backoff: Backoff | None = None,
                 links: MbusLinks | None = None, clock: SleepingClock | None = None,
                 identities: SerialMemory | None = None, on_exchange: ExchangeSink | None = None) -> None:
        super().__init__(device, sink, backoff=backoff, clock=clock)
        self._links = links if links is not None else MbusLinks()
        self._link: MbusLink | None = None
        self._identities = identities
        self._on_exchange = on_exchange
        self.identity: MeterIdentity | None = None  # the meter answering now
        self.frame_errors: Counter[str] = Counter()  # bad frames by problem (checksum, length, address, ...)
        self.exchanges = 0
        self.telegrams: list[Telegram] = []  # the latest poll's telegrams, for a probe
        self._logged_problems: set[str] = set()
        self._missing_logged: set[str] = set()
        self._last: dict[str, float] = {}  # counter point id -> latest value of the current meter
        self.address = (device.primary_address if device.primary_address is not None else ADDRESS_SECONDARY)

    # ------------------------------------------------------------------ lifecycle hooks

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        link = self._links.acquire(self.device)
        stack.callback(self._let_go, link)
        await link.connect()
        self._link = link

    def _let_go(self, link: MbusLink) -> None:
        self._link = None
        link.release()

    async def _serve(self) -> None:
        await self._poll_forever(self._poll_once)

    # ------------------------------------------------------------------ polling

    async def _poll_once(self) -> None:
        telegrams = await self.read_telegrams()
        self.stats.reads += 1
        self._publish_telegrams(telegrams)

    async def read_telegrams(self) -> list[Telegram]:
        """Initialise the meter and read every telegram it has (up to max_telegrams)."""
        primary = self.device.primary_address is not None
        if primary:
            await self._transact(snd_nke(self.address), "SND_NKE", expect="ack")
        telegrams: list[Telegram] = []
        fcb = True  # the first request after a reset carries FCB = 1; each next telegram toggles it
        for _ in range(self.device.max_telegrams):
            telegram = await self._transact(req_ud2(self.address, fcb), "REQ_UD2", expect="data",
                                            select=not primary)
            assert telegram is not None
            telegrams.append(telegram)
            if not telegram.more_follows:
                break
            fcb = not fcb
        self.telegrams = telegrams
        return telegrams

    async def _transact(self, frame: bytes, what: str, *, expect: str, select: bool = False) -> Telegram | None:
        """One request with its retries; each attempt takes its own turn on the shared link."""
        link = self._link
        if link is None:
            raise DriverConnectionError(f"not connected to {self.device.endpoint}")
        timeout = self.device.timeout_s
        last: DriverError | None = None
        for _ in range(self.device.retries + 1):
            try:
                async with link.lock:  # only this request is timed, not the wait for our turn
                    if select:
                        assert self.device.secondary_address is not None
                        ack = await link.request(select_secondary(self.device.secondary_address), timeout)
                        self._check_ack(ack, "selection")
                    answer = await link.request(frame, timeout)
                if expect == "ack":
                    self._check_ack(answer, what)
                    return None
                return self._check_data(answer, what)
            except DriverTimeout as err:
                last = DriverTimeout(f"{self.device.address_text}: {what}: {err}")
            except FrameError as err:
                self._bad_frame(err.problem, f"{what}: {err}")
                last = DriverError(f"{self.device.address_text}: {what}: bad frame ({err})")
        assert last is not None
        raise last

    def _check_ack(self, frame: Frame | None, what: str) -> None:
        if frame is None or frame.kind != "ack":
            kind = frame.kind if frame is not None else "nothing"
            raise FrameError("length", f"{what} answered with a {kind} frame, not E5")

    def _check_data(self, frame: Frame | None, what: str) -> Telegram:
        if frame is None or frame.kind != "long":
            kind = frame.kind if frame is not None else "nothing"
            raise FrameError("length", f"answered with a {kind} frame, not RSP_UD")
        if frame.control & 0xCF != 0x08:
            raise FrameError("length", f"C field {frame.control:02X} is not RSP_UD")
        if self.device.primary_address is not None and frame.address != self.address:
            raise FrameError("address", f"answer from address {frame.address}, not {self.address}")
        try:
            telegram = decode(frame.ci, frame.data)
        except RecordError as err:
            raise FrameError("length", f"user data: {err}") from err
        secondary = self.device.secondary_address
        if secondary is not None and telegram.header is not None and not _matches(telegram.header, secondary):
            raise FrameError("address", f"answer from meter {telegram.header.identification}, not {secondary}")
        return telegram

    def _bad_frame(self, problem: str, message: str) -> None:
        """Count a frame refused by the link layer; log once per meter and problem (then at debug level)."""
        self.frame_errors[problem] += 1
        self.stats.read_errors += 1
        if problem not in self._logged_problems:
            self._logged_problems.add(problem)
            self._log.warning("%s: %s; refused (logged once per problem, counted in frame_errors)",
                              self.device_id, message)
        else:
            self._log.debug("%s: %s", self.device_id, message)

    # ------------------------------------------------------------------ values

    def _publish_telegrams(self, telegrams: list[Telegram]) -> None:
        now = utcnow()
        records = [r for t in telegrams for r in t.records]
        header = next((t.header for t in telegrams if t.header is not None), None)
        exchange = self._check_identity(header) if header is not None else None
        flagged = any(t.error_flags for t in telegrams) or (header is not None and header.status_errors != 0)
        quality = Quality.UNCERTAIN if flagged else Quality.GOOD
        values: dict[str, float] = {}
        for point in self._points.values():
            assert isinstance(point, MbusPoint)
            record = find_record(records, point)
            if record is None or not isinstance(record.value, int | float):
                if point.id not in self._missing_logged:
                    self._missing_logged.add(point.id)
                    self._log.warning("%s: no %s record for point %s in the meter's telegrams", self.device_id,
                                      describe_selection(point), point.id)
                self._publish(point, None, Quality.BAD, now, now)
                continue
            self._missing_logged.discard(point.id)
            value = convert(float(record.value), record.unit, point.unit)
            values[point.id] = value
        if exchange is not None:
            self._exchange(exchange, values, now)
        for pid, value in values.items():
            point = self._points[pid]
            assert isinstance(point, MbusPoint)
            # The flags themselves are a valid reading (GOOD, so a state alarm can act on them); the measured
            # values of a meter reporting an error are not to be trusted as they are.
            self._publish(point, value, Quality.GOOD if point.record in _SELF_REPORTS else quality, now, now)
            if point.kind == "counter":
                self._last[pid] = value

    def _check_identity(self, header: Header) -> tuple[MeterIdentity | None, str] | None:
        """Track the meter's identity; (old identity, old identification) when a new meter answers."""
        new = MeterIdentity.of(header)
        known = self.identity.identification if self.identity is not None else None
        if known is None:
            known = (self._identities.get(self.device_id) if self._identities is not None else None) \
                or self.device.identification
        old = self.identity
        self.identity = new
        if known is None:
            self._remember(new)
            return None
        if known == new.identification:
            if old is not None and old != new:
                self._log.warning("%s: meter %s now reports %s", self.device_id, old, new)
            if self._identities is not None and self._identities.get(self.device_id) is None:
                self._remember(new)
            return None
        return old, known

    def _remember(self, identity: MeterIdentity) -> None:
        if self._identities is not None:
            self._identities.remember(self.device_id, identity.identification)

    def _exchange(self, change: tuple[MeterIdentity | None, str], values: dict[str, float], now: datetime) -> None:
        old, old_id = change
        assert self.identity is not None
        registers = {pid: (self._last.get(pid), v, self._points[pid].unit) for pid, v in values.items()
                     if self._points[pid].kind == "counter"}
        self._last.clear()
        self.exchanges += 1
        self._remember(self.identity)
        event = MeterExchange(self.device_id, now, old, old_id, self.identity, registers)
        self._log.warning("%s: meter exchange: %s answers where %s did (registers %s)", self.device_id,
                          self.identity, old or old_id, registers)
        if self._on_exchange is not None:
            try:
                self._on_exchange(event)
            except Exception:  # the recorder's failure must not stop the readings
                self._log.exception("%s: recording the meter exchange failed", self.device_id)


def _matches(header: Header, secondary: str) -> bool:
    pattern = secondary.upper().replace("*", "F")
    return all(p == "F" or p == c for p, c in zip(pattern, header.identification, strict=True))


def find_record(records: list[Record], point: MbusPoint) -> Record | None:
    """The record a point names: meaning, function, storage, tariff, subunit, no VIF extension; nth match."""
    n = 0
    for r in records:
        if (r.meaning == point.record and r.function == point.function and r.storage == point.storage
                and r.tariff == point.tariff and r.subunit == point.subunit and not r.extensions):
            if n == point.occurrence:
                return r
            n += 1
    return None


def describe_selection(point: PointBase) -> str:
    """The record a point asks for, in words."""
    assert isinstance(point, MbusPoint)
    text = f"{point.record} ({point.function}, storage {point.storage}, tariff {point.tariff}, " \
           f"subunit {point.subunit}"
    return text + (f", occurrence {point.occurrence})" if point.occurrence else ")")


async def read_records(device: MbusDevice) -> list[Telegram]:
    """Read a meter's telegrams once over a connection of its own (heatrec probe lists their records)."""
    driver = MbusDriver(device, _Discard())
    async with contextlib.AsyncExitStack() as stack:
        try:
            async with asyncio.timeout(device.timeout_s):
                await driver._connect(stack)
        except TimeoutError as err:
            raise DriverTimeout(f"no connection to {device.endpoint} within {device.timeout_s} s") from err
        return await driver.read_telegrams()


def format_records(telegrams: list[Telegram], as_json: bool) -> str:
    """A probe's listing: each telegram's header, then one line (or JSON object) per record."""
    if as_json:
        out = []
        for n, t in enumerate(telegrams):
            header = None if t.header is None else {
                "identification": t.header.identification, "manufacturer": t.header.manufacturer,
                "version": t.header.version, "medium": t.header.medium_name, "status": t.header.status}
            records = [{"index": r.index, "meaning": r.meaning, "function": r.function, "storage": r.storage,
                        "tariff": r.tariff, "subunit": r.subunit, "unit": r.unit,
                        "value": r.value.isoformat() if isinstance(r.value, date) else r.value,
                        "vife": list(r.extensions), "dif_vif": (r.dif + r.vif).hex(" ")} for r in t.records]
            out.append({"telegram": n + 1, "header": header, "error_flags": t.error_flags,
                        "more_follows": t.more_follows, "records": records})
        return json.dumps(out, indent=2)
    lines: list[str] = []
    for n, t in enumerate(telegrams):
        h = t.header
        who = "no header" if h is None else (f"{h.manufacturer} {h.identification} version {h.version}, "
                                             f"{h.medium_name}, status {h.status:02X}")
        lines.append(f"telegram {n + 1}: {who}" + (", more records follow" if t.more_follows else ""))
        lines += [f"  {r.describe()}" for r in t.records]
    lines.append("record units are as the meter sends them (Wh or J for energy); a point converts to its own unit")
    return "\n".join(lines)


class _Discard:
    def publish(self, sample: Sample) -> None:
        """Probing records publishes nothing."""
