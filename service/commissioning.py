"""Commissioning without a database: probe every point of a config once, or make one guarded write.

Both run the same generic drivers the service runs, so what a probe shows is what the service will
see; the drivers publish into a local collector instead of the sample bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from drivers.base import ConnectionState, Driver, WriteResult
from drivers.errors import DriverError
from drivers.factory import AnyDriver, create_driver
from drivers.modbus import ModbusLinks
from service.config import (
    ConfigError,
    HeatrecConfig,
    ModbusPoint,
    MqttDevice,
    MqttPoint,
    OpcUaPoint,
    PointBase,
)
from service.control.arbiter import Priority
from service.model import Quality, Sample
from service.writes import WriteArbiter, WriteRequest

# An MQTT device has nothing to read: a probe waits this long for the publishers (meters commonly
# publish every few seconds; retained messages arrive at once).
MQTT_PROBE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class ProbeRow:
    """One point as a probe saw it."""

    id: str
    value: float | None
    unit: str
    quality: str
    source_time: str | None
    source: str  # where the value comes from: endpoint and address, node or topic
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


class _Collector:
    """A SampleSink keeping the latest non-STALE sample per point, waking waiters on each one."""

    def __init__(self) -> None:
        self.samples: dict[str, Sample] = {}
        self.changed = asyncio.Event()

    def publish(self, sample: Sample) -> None:
        if sample.quality is Quality.STALE:
            return  # a probe reports what it read, not the absence of later reads
        self.samples[sample.point] = sample
        self.changed.set()


def point_source(device: Any, point: PointBase) -> str:
    """Human-readable origin of a point: endpoint plus address, node or topic."""
    if isinstance(point, ModbusPoint):
        return f"{device.endpoint} unit {device.unit_id} {point.function} {point.address} {point.type}"
    if isinstance(point, OpcUaPoint):
        return f"{device.endpoint} {point.address}"
    if isinstance(point, MqttPoint):
        return f"{device.endpoint} {point.topic}" + (f" {point.json_path}" if point.json_path else "")
    return str(device.endpoint)


def probe_wait_s(device: Any) -> float:
    """How long a probe of this device may take: connect, then one read (or the publishers' turn)."""
    read_s = MQTT_PROBE_WAIT_S if isinstance(device, MqttDevice) else device.timeout_s
    return device.timeout_s + read_s + 0.5


async def _probe_device(device: Any, wait_s: float | None, links: ModbusLinks) -> list[ProbeRow]:
    collector = _Collector()
    try:
        driver: AnyDriver = create_driver(device, collector, modbus_links=links)
    except DriverError as err:  # e.g. a node id that does not parse: this device's points only are BAD
        return [ProbeRow(f"{device.id}.{p.id}", None, p.unit, Quality.BAD.name, None, point_source(device, p),
                         str(err)) for p in device.points]
    expected = {driver.point_id(p): p for p in device.points}
    deadline = asyncio.get_running_loop().time() + (wait_s if wait_s is not None else probe_wait_s(device))
    task = asyncio.create_task(driver.run(), name=f"probe-{device.id}")
    try:
        while not expected.keys() <= collector.samples.keys() and not task.done():
            collector.changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(collector.changed.wait(), remaining)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    rows = []
    for pid, point in expected.items():
        s = collector.samples.get(pid)
        if s is None:
            missing = driver.last_error or "no value received in time"
            rows.append(ProbeRow(pid, None, point.unit, Quality.BAD.name, None, point_source(device, point),
                                 missing))
            continue
        error: str | None = (driver.last_error or "read failed") if s.quality is Quality.BAD else None
        rows.append(ProbeRow(pid, s.value, point.unit, s.quality.name, s.source_time.isoformat(),
                             point_source(device, point), error))
    return rows


async def probe(cfg: HeatrecConfig, device_id: str | None = None, wait_s: float | None = None) -> list[ProbeRow]:
    """Read every point of every device (or of one) once, all devices at the same time."""
    devices = [d for d in cfg.devices if device_id is None or d.id == device_id]
    if device_id is not None and not devices:
        raise ConfigError(f"no device '{device_id}' in the configuration "
                          f"(devices: {', '.join(d.id for d in cfg.devices) or 'none'})")
    # Concurrent, so a dead device costs its own timeout and nobody else's.
    links = ModbusLinks()  # units behind one gateway share its connection, as in the service
    results = await asyncio.gather(*(_probe_device(d, wait_s, links) for d in devices))
    return [row for rows in results for row in rows]


def format_probe(rows: Sequence[ProbeRow], as_json: bool) -> str:
    """Rows as JSON (list of objects) or an aligned table with an error note per failing point."""
    if as_json:
        return json.dumps([r.as_dict() for r in rows], indent=2)
    header = ("POINT", "VALUE", "UNIT", "QUALITY", "SOURCE TIME", "SOURCE")
    table = [header] + [(r.id, _format_value(r.value), r.unit, r.quality, r.source_time or "-", r.source)
                        for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
             for line in table]
    errors = dict.fromkeys(f"{r.id.split('.')[0]}: {r.error}" for r in rows if r.error)
    lines += [f"error: {e}" for e in errors]
    return "\n".join(lines)


def _format_value(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def parse_value(text: str) -> float:
    """A command-line value: a number, or true/false/on/off for bits."""
    words = {"true": 1.0, "on": 1.0, "false": 0.0, "off": 0.0}
    if text.lower() in words:
        return words[text.lower()]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"'{text}' is not a number (or true/false)") from None
    if not math.isfinite(value):
        raise ConfigError(f"'{text}' is not a finite number")
    return value


def find_point(cfg: HeatrecConfig, point_id: str) -> tuple[Any, PointBase]:
    """The device and point of a full point id `device.point`; ConfigError naming the choices otherwise."""
    device_id, _, name = point_id.partition(".")
    for d in cfg.devices:
        if d.id == device_id:
            for p in d.points:
                if p.id == name:
                    return d, p
            raise ConfigError(f"device '{device_id}' has no point '{name}' "
                              f"(points: {', '.join(p.id for p in d.points)})")
    raise ConfigError(f"no point '{point_id}': point ids are device.point, and there is no device "
                      f"'{device_id}' (devices: {', '.join(d.id for d in cfg.devices) or 'none'})")


async def write_point(cfg: HeatrecConfig, point_id: str, value: float) -> WriteResult:
    """One guarded write with read-back; a value outside the envelope is refused before connecting."""
    device, point = find_point(cfg, point_id)
    reason = Driver.envelope_violation(point, value)
    if reason is not None:
        return WriteResult(point_id, "rejected", value, message=reason)
    # The same gate as the service's writers, at operator priority. A single command has no previous write,
    # so the point's max_rate (a limit between successive writes) has nothing to act on here.
    try:
        driver: AnyDriver = create_driver(device, _Collector())
    except DriverError as err:
        return WriteResult(point_id, "error", value, message=str(err))
    task = asyncio.create_task(driver.run(), name=f"write-{device.id}")
    try:
        connected = asyncio.create_task(driver.wait_for_state(ConnectionState.CONNECTED))
        failed = asyncio.create_task(driver.wait_for_state(ConnectionState.BACKING_OFF))
        done, pending = await asyncio.wait({connected, failed, task}, timeout=device.timeout_s + 1.0,
                                           return_when=asyncio.FIRST_COMPLETED)
        for t in pending - {task}:
            t.cancel()
        if connected not in done:
            why = driver.last_error or f"no connection within {device.timeout_s} s"
            return WriteResult(point_id, "error", value, message=f"cannot connect to {device.endpoint}: {why}")
        arbiter = WriteArbiter({point_id: point}, driver.write)
        return await arbiter.submit(WriteRequest(point_id, value, Priority.OPERATOR, "cli", "commissioning",
                                                 "operator"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def format_write(result: WriteResult, elapsed_s: float) -> str:
    """One line saying what happened to the write."""
    text = f"{result.point}: {result.status}: requested {result.requested}"
    if result.written is not None:
        text += f", wrote {result.written}"
    if result.readback is not None:
        text += f", read back {result.readback}"
    if result.message:
        text += f" ({result.message})"
    return text + f" [{elapsed_s:.2f} s]"
