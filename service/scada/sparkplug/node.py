"""heatrec as a Sparkplug B 3.0 edge node: births, report by exception, deaths, the primary host, commands.

One task owns the session and everything it publishes, so `seq` runs 0..255 without gaps across NBIRTH,
DBIRTH, DDATA and DDEATH. Samples come from the bus; while the primary host is offline or the broker is
away they pass the deadband into a durable spool and are published, in order and flagged `is_historical`,
after the next births (which carry the live values, so history never overwrites them). A DCMD on a
commandable point becomes an operator write request to the arbiter (held `command_hold_s`, audited there)
and is answered with a DDATA of the value in force; anything else a host sends is refused, counted and
audited. With several brokers the node is on one at a time and walks the list (wrapping) when one cannot be
reached, is lost, has the primary host offline, or a host sends `Node Control/Next Server`: each move is a
new session. docs/SPARKPLUG.md describes the behaviour and the quality mapping. Long because the session is
one state machine with one owner of `seq`: births, data, deaths, replay and commands all publish in it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from drivers.backoff import Backoff
from drivers.errors import DriverConnectionError
from drivers.mqtt_link import client_tls_context
from service.bus import SampleBus, Subscription
from service.control.arbiter import Priority
from service.model import Quality, Sample, utcnow
from service.scada.sparkplug import codec
from service.scada.sparkplug.codec import PropertyValue, varint
from service.scada.sparkplug.link import SparkplugLink, sparkplug_link
from service.scada.sparkplug_config import SparkplugConfig
from service.storage.spool import Spool
from service.writes import WriteArbiter, WriteRequest

if TYPE_CHECKING:
    from service.audit import AuditSink
    from service.config import Device, PointBase

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
NEXT_SERVER = "Node Control/Next Server"
BDSEQ = "bdSeq"
REBIRTH_ALIAS = 1
NEXT_SERVER_ALIAS = 2
FIRST_POINT_ALIAS = 3
NODE_CONTROLS = {REBIRTH_ALIAS: REBIRTH, NEXT_SERVER_ALIAS: NEXT_SERVER}  # the NCMDs the node takes, by alias
# The quality as Ignition (MQTT Engine) reads a metric's "Quality" property: the legacy OPC quality codes
# (docs/SPARKPLUG.md says where this comes from).
QUALITY_CODES: dict[Quality, int] = {Quality.GOOD: 192, Quality.UNCERTAIN: 64, Quality.BAD: 0, Quality.STALE: 500}
DRAIN_LIMIT = 50_000
METRICS_PER_MESSAGE = 5_000
SPOOL_FLUSH_SAMPLES = 2_000
SPOOL_FLUSH_S = 0.5
DEVICE_CHECK_S = 0.25
NUMERIC_FIELDS = (10, 11, 12, 13)  # int, long, float, double value fields of a metric


@dataclass
class SparkplugStats:
    """Counters for /metrics and health."""

    connected: bool = False
    host_online: bool = False
    server: str = ""  # the broker the node is on (or trying)
    server_index: int = 0  # its place in the configured list
    server_moves: int = 0  # moves to the next broker in the list
    born: bool = False
    bdseq: int = -1
    connects: int = 0
    node_births: int = 0
    device_births: int = 0
    device_deaths: int = 0
    messages: int = 0
    metrics: int = 0  # data metrics published, live and historical
    historical: int = 0
    spooled: int = 0
    historical_dropped: int = 0  # spooled samples of a device that was dead when they were replayed
    commands_accepted: int = 0
    commands_refused: int = 0
    bad_input: collections.Counter[str] = field(default_factory=collections.Counter)


class _Point:
    """One metric: its identity on both sides, its pre-encoded alias and its report-by-exception state."""

    __slots__ = ("alias", "alias_part", "buf", "commandable", "deadband", "device", "head", "id", "last_quality",
                 "last_value",
                 "name", "point", "seen", "sent_quality")

    def __init__(self, device: str, point: PointBase, alias: int, deadband: float, commandable: bool,
                 buf: list[bytes]) -> None:
        self.buf = buf  # the DDATA being built for the device, shared by its points
        self.device, self.name, self.id, self.point = device, point.id, f"{device}.{point.id}", point
        self.alias, self.alias_part = alias, b"\x10" + varint(alias)
        # Length, tag and alias of the common DDATA metric: alias, a 6-byte-varint timestamp, a double.
        self.head = b"\x12" + varint(len(self.alias_part) + _TS_LEN + 9) + self.alias_part
        self.deadband, self.commandable = deadband, commandable
        self.seen = False
        self.last_value: float | None = None
        self.last_quality = Quality.GOOD
        self.sent_quality = Quality.GOOD  # the quality the host last got live: a change back to GOOD is sent too


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _quality_field(q: Quality) -> bytes:
    body = codec.encode_properties({"Quality": PropertyValue(codec.INT32, QUALITY_CODES[q])})
    return b"\x4a" + varint(len(body)) + body


_QUALITY_FIELD = {q: _quality_field(q) for q in Quality}
_D = codec._D
_TD = struct.Struct("<Bd")  # tag 13 (double_value, fixed64) and the double, in one pack
_TS_LEN = 7  # tag and timestamp in ms: 6 varint bytes from 2004 to 2109


class EdgeNode:
    """The edge node of one plant; `run` until cancelled (a stop publishes NDEATH and disconnects)."""

    def __init__(self, cfg: SparkplugConfig, devices: Sequence[Device], bus: SampleBus, *,
                 device_states: Callable[[], Mapping[str, str]], arbiter: WriteArbiter | None = None,
                 audit: AuditSink | None = None, backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.stats = SparkplugStats()
        self._bus = bus
        self._device_states = device_states
        self._arbiter = arbiter
        self._audit = audit
        self._backoff = backoff or Backoff(0.2, cfg.reconnect_max_s)
        self._points: dict[str, _Point] = {}
        self._devices: dict[str, list[_Point]] = {}
        self._by_alias: dict[int, _Point] = {}
        alias = FIRST_POINT_ALIAS
        wanted = set(cfg.devices) if cfg.devices is not None else None
        for dev in devices:
            if wanted is not None and dev.id not in wanted:
                continue
            for p in dev.points:
                s = cfg.point_settings(f"{dev.id}.{p.id}")
                if not s.publish:
                    continue
                buf = self._devices[dev.id][0].buf if self._devices.get(dev.id) else []
                pt = _Point(dev.id, p, alias, cfg.deadband if s.deadband is None else s.deadband, s.commandable,
                            buf)
                self._points[pt.id] = pt
                self._devices.setdefault(dev.id, []).append(pt)
                self._by_alias[alias] = pt
                alias += 1
        self._group, self._node = cfg.group_id, cfg.edge_node_id
        root = Path(cfg.spool_dir)
        self._bdseq_file = root / "bdseq"
        self._spool = Spool(root / "spool", max_bytes=cfg.spool_max_bytes,
                            segment_bytes=min(4 * 1024 * 1024, cfg.spool_max_bytes // 8))
        self._sub: Subscription | None = None
        self._first: list[Sample] = []
        self._inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._pending: list[Sample] = []
        self._pending_since = 0.0
        self._link: SparkplugLink | None = None
        self._seq = 0
        self._born_devices: set[str] = set()
        self._host_online = self.stats.host_online = cfg.primary_host_id is None
        self._host_stamp = -1
        self._rebirth = False
        self._next_server = False
        self._servers = cfg.servers
        self._server = 0
        self.stats.server = self._servers[0]
        self._logged: set[str] = set()
        self._failures = 0

    # ------------------------------------------------------------------ topics

    def topic(self, verb: str, device: str | None = None) -> str:
        """The Sparkplug topic of a message of this node (or one of its devices)."""
        base = f"{NAMESPACE}/{self._group}/{verb}/{self._node}"
        return base if device is None else f"{base}/{device}"

    @property
    def server(self) -> str:
        """The broker URL the node is on, or trying (for health and /metrics)."""
        return self._servers[self._server]

    @property
    def aliases(self) -> dict[str, int]:
        """Full point id → alias (for tests and docs)."""
        return {pid: p.alias for pid, p in self._points.items()}

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Subscribe to the bus and open the spool (before the drivers start, so no sample is missed)."""
        self._sub = self._bus.subscribe("sparkplug", 100_000)
        self._spool.open()

    async def run(self) -> None:
        """Connect, birth, publish, reconnect; spool while the host or broker is away. Until cancelled."""
        if self._sub is None:
            self.start()
        try:
            while True:
                try:
                    await self._session()
                except DriverConnectionError as err:
                    self._failures += 1
                    level = logging.WARNING if self._failures == 1 else logging.DEBUG
                    log.log(level, "sparkplug: broker %s: %s; samples are spooled until a broker is back",
                            self.server, err)
                except Exception:  # a bug here must not end the service: log, back off, reconnect
                    self._failures += 1
                    log.exception("sparkplug: unexpected error in the session; reconnecting")
                self._move_on()
                await self._offline(self._backoff.next_delay())
        finally:
            if self._pending:
                try:
                    await asyncio.shield(self._spool.append(self._pending))
                except Exception as err:  # a failing disk at shutdown: say what is lost
                    log.error("sparkplug: %d samples not spooled at shutdown: %s", len(self._pending), err)
            self._spool.close()
            if self._sub is not None:
                self._bus.unsubscribe(self._sub)

    def _move_on(self) -> None:
        """After a session, whatever ended it: the next broker of the list (wrapping); one broker stays."""
        if len(self._servers) == 1:
            return
        self._server = (self._server + 1) % len(self._servers)
        self.stats.server, self.stats.server_index = self.server, self._server
        self.stats.server_moves += 1
        log.debug("sparkplug: next broker %s", self.server)

    def _next_bdseq(self) -> int:
        """The bdSeq of a new MQTT session: one more than the last one (0..255), kept across restarts."""
        try:
            last = int(self._bdseq_file.read_text().strip())
        except (OSError, ValueError):
            last = -1
        n = (last + 1) % 256
        self._bdseq_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._bdseq_file.with_suffix(".tmp")
        tmp.write_text(f"{n}\n")
        tmp.replace(self._bdseq_file)
        return n

    def _death_payload(self, bdseq: int) -> bytes:
        metric = codec.encode_metric(name=BDSEQ, timestamp=_ms(utcnow()), datatype=codec.UINT64, value=bdseq)
        return codec.encode_payload(_ms(utcnow()), [metric], None)

    def _new_link(self, bdseq: int) -> SparkplugLink:
        url = urlsplit(self.server)
        tls = client_tls_context(self.cfg.tls_ca_file, self.cfg.tls_cert_file, self.cfg.tls_key_file) \
            if url.scheme == "mqtts" else None
        return sparkplug_link(host=url.hostname or "", port=url.port or (8883 if tls else 1883),
                              client_id=self.cfg.client_id or f"heatrec-{self._group}-{self._node}",
                              username=self.cfg.username, password=self.cfg.password, tls=tls,
                              keepalive=self.cfg.keepalive_s, timeout_s=10.0,
                              will=(self.topic("NDEATH"), self._death_payload(bdseq)), on_message=self._received)

    async def _session(self) -> None:
        self._next_server = False
        bdseq = self._next_bdseq()
        link = self._link = self._new_link(bdseq)
        try:
            await link.open()
            self.stats.connected, self.stats.bdseq = True, bdseq
            self.stats.connects += 1
            topics = [self.topic("NCMD"), self.topic("DCMD", "+")]
            if self.cfg.primary_host_id is not None:
                # Subscribed before any birth: the retained STATE tells whether the host is there (spec 3.0).
                self._host_online = self.stats.host_online = False
                self._host_stamp = -1
                topics.append(f"{NAMESPACE}/STATE/{self.cfg.primary_host_id}")
            await link.subscribe(topics, 1)
            if self._failures:
                log.info("sparkplug: connected to %s again", self.server)
            self._failures = 0
            several = len(self._servers) > 1
            give_up = asyncio.get_running_loop().time() + self.cfg.host_wait_s
            while not self._host_online:
                await self._next_input(DEVICE_CHECK_S, link)
                await self._handle_inbox(link)
                if self._next_server:
                    return
                if self._host_online:
                    break
                # Spec 3.0 (multiple MQTT servers): the primary host OFFLINE on this server: walk to the next.
                # No STATE at all for host_wait_s: it is not here (yet) either; a server it never joined
                # must not strand the node.
                if several and (self._host_stamp >= 0 or asyncio.get_running_loop().time() >= give_up):
                    log.info("sparkplug: primary host %s is not online on %s; moving to the next broker",
                             self.cfg.primary_host_id, self.server)
                    return
                self._take(live=False)
                await self._spool_if_due()
            await self._birth(link)
            # Reset only once born: a broker that takes the connection but never has the host (or all of
            # them saying it is offline) must not make the node walk the list at the first delay for ever.
            self._backoff.reset()
            await self._replay(link)
            next_check = asyncio.get_running_loop().time() + DEVICE_CHECK_S
            while True:
                await self._next_input(DEVICE_CHECK_S, link)
                await self._handle_inbox(link)
                if not self._host_online:
                    log.warning("sparkplug: primary host %s went offline on %s: NDEATH, disconnecting; samples "
                                "are spooled until it is back%s", self.cfg.primary_host_id, self.server,
                                " (trying the next broker)" if len(self._servers) > 1 else "")
                    return
                if self._next_server:
                    log.info("sparkplug: Next Server requested: NDEATH, leaving %s", self.server)
                    return
                if self._rebirth:
                    await self._birth(link)
                now = asyncio.get_running_loop().time()
                if now >= next_check:
                    self._check_devices(link)
                    next_check = now + DEVICE_CHECK_S
                self._take(live=True)
        finally:
            self._link = None
            born = self.stats.born
            self.stats.born = self.stats.connected = False
            self._born_devices.clear()
            if born and not link.lost.is_set():
                # Leaving on purpose (host offline, stop): say so, as the will would have.
                try:
                    info = link.publish(self.topic("NDEATH"), self._death_payload(bdseq), qos=1)
                    async with asyncio.timeout(2):
                        await link.flushed(info)
                except (DriverConnectionError, TimeoutError):
                    pass
            await link.close(graceful=not link.lost.is_set())

    # ------------------------------------------------------------------ input

    def _received(self, topic: str, payload: bytes) -> None:
        """From the network thread, via the loop: keep in order and wake the session."""
        self._inbox.append((topic, payload))
        self._wake.set()

    async def _next_input(self, timeout: float, link: SparkplugLink | None = None) -> None:
        """Return once samples or messages are waiting, the link is lost, or after `timeout`."""
        assert self._sub is not None
        if link is not None and link.lost.is_set():
            raise link.error or DriverConnectionError("connection to the broker lost")
        if self._inbox or self._first or not self._sub.queue.empty():
            return
        # A getter lives only while we wait: one left pending would take a later sample out of order.
        getter = asyncio.ensure_future(self._sub.queue.get())
        self._wake.clear()
        waiters: set[asyncio.Future[Any]] = {getter, asyncio.ensure_future(self._wake.wait())}
        if link is not None:
            waiters.add(asyncio.ensure_future(link.lost.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            (got,) = await asyncio.gather(getter, return_exceptions=True)
            if isinstance(got, Sample):
                self._first.append(got)  # the oldest waiting sample: nothing drained the queue meanwhile
        if link is not None and link.lost.is_set():
            raise link.error or DriverConnectionError("connection to the broker lost")

    def _drain(self) -> list[Sample]:
        """Every sample waiting for us, oldest first."""
        assert self._sub is not None
        # Straight from the queue's deque: get_nowait() per sample costs as much as encoding it. Only
        # put_nowait() feeds this queue and nobody joins it, so no putter or task count needs the slow path.
        items: collections.deque[Sample] = self._sub.queue._queue  # type: ignore[attr-defined]
        if len(items) <= DRAIN_LIMIT:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(DRAIN_LIMIT)]
        if self._first:
            batch = self._first + batch
            self._first = []
        return batch

    def _take(self, *, live: bool) -> None:
        """Samples waiting on the bus through the deadband: published when live, else kept for the spool."""
        batch = self._drain()
        if not batch:
            return
        if live and self._link is not None and self.stats.born:
            self._publish_live(self._link, batch)
            return
        points = self._points
        out: list[Sample] = []
        for s in batch:
            p = points.get(s.point)
            if p is None:
                continue
            v, q = s.value, s.quality
            if p.seen and q is p.last_quality:
                lv = p.last_value
                if v is None:
                    if lv is None:
                        continue
                elif lv is not None and not abs(v - lv) > p.deadband:
                    continue
            p.seen, p.last_value, p.last_quality = True, v, q
            out.append(s)
        if out:
            if not self._pending:
                self._pending_since = asyncio.get_running_loop().time()
            self._pending.extend(out)

    def _publish_live(self, link: SparkplugLink, batch: list[Sample]) -> None:
        """The hot path: deadband and DDATA encoding in one pass, one message per device (and per 5,000 metrics).

        A GOOD value of a point whose host already has it GOOD is three pre-built pieces: the metric's
        length, tag and alias (fixed per point), the timestamp (shared by the samples of one poll) and
        the tagged double; anything else takes the general encoder.
        """
        points, born, tdpack = self._points, self._born_devices, _TD.pack
        touched: list[_Point] = []  # one point per device with metrics waiting in its (shared) buffer
        full = 3 * METRICS_PER_MESSAGE  # every metric is three pieces
        last_t: datetime | None = None
        tpart = b""
        good = Quality.GOOD
        for s in batch:
            p = points.get(s.point)
            if p is None:
                continue
            v, q = s.value, s.quality
            if p.seen and q is p.last_quality:
                lv = p.last_value
                if v is None:
                    if lv is None:
                        continue
                elif lv is not None and not abs(v - lv) > p.deadband:
                    continue
            p.seen, p.last_value, p.last_quality = True, v, q
            if p.device not in born:
                continue  # no DDATA for a dead device: its next DBIRTH carries the values
            t = s.source_time
            if t is not last_t:
                tpart, last_t = b"\x18" + varint(int(t.timestamp() * 1000)), t
            buf = p.buf
            if not buf:
                touched.append(p)
            if q is good and v is not None and p.sent_quality is good and len(tpart) == _TS_LEN:
                buf += (p.head, tpart, tdpack(0x69, v))
            else:
                body = p.alias_part + tpart
                if q is not good or p.sent_quality is not good:
                    body += _QUALITY_FIELD[q]
                    p.sent_quality = q
                body += b"\x38\x01" if v is None else tdpack(0x69, v)
                buf += (b"\x12", varint(len(body)), body)
            if len(buf) >= full:
                self._send_data(link, p.device, buf)
        for p in touched:
            if p.buf:
                self._send_data(link, p.device, p.buf)

    def _send_data(self, link: SparkplugLink, device: str, parts: list[bytes]) -> paho.MQTTMessageInfo:
        """One DDATA of the metrics in `parts` (three pieces each), which it empties."""
        payload = b"".join((b"\x08", varint(_ms(utcnow())), *parts, b"\x18", varint(self._next_seq())))
        self.stats.metrics += len(parts) // 3
        parts.clear()  # in place: the device's points share the list
        return self._send(link, self.topic("DDATA", device), payload)

    async def _spool_if_due(self, force: bool = False) -> None:
        if not self._pending:
            return
        due = len(self._pending) >= SPOOL_FLUSH_SAMPLES or \
            asyncio.get_running_loop().time() - self._pending_since >= SPOOL_FLUSH_S
        if force or due:
            batch, self._pending = self._pending, []
            await self._spool.append(batch)
            self.stats.spooled += len(batch)

    async def _offline(self, seconds: float) -> None:
        """Between sessions: keep taking samples into the spool for `seconds`."""
        self._inbox.clear()  # commands of a session that ended are not answered in another
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            await self._next_input(min(left, DEVICE_CHECK_S))
            self._take(live=False)
            await self._spool_if_due()

    # ------------------------------------------------------------------ publishing

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _send(self, link: SparkplugLink, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
        info = link.publish(topic, payload, qos=0)
        self.stats.messages += 1
        return info

    async def _birth(self, link: SparkplugLink) -> None:
        """NBIRTH (seq 0) with bdSeq and the node controls, then a DBIRTH per device whose driver is connected."""
        self._rebirth = False
        # What was waiting is older than the births' values: on a rebirth it still goes out live, under the
        # old births; at a session's first birth it goes to the spool, and so after the births as history.
        self._take(live=True)
        now = _ms(utcnow())
        metrics = [codec.encode_metric(name=BDSEQ, timestamp=now, datatype=codec.UINT64, value=self.stats.bdseq),
                   codec.encode_metric(name=REBIRTH, alias=REBIRTH_ALIAS, timestamp=now, datatype=codec.BOOLEAN,
                                       value=False),
                   codec.encode_metric(name=NEXT_SERVER, alias=NEXT_SERVER_ALIAS, timestamp=now,
                                       datatype=codec.BOOLEAN, value=False)]
        self._seq = 0
        self._send(link, self.topic("NBIRTH"), codec.encode_payload(now, metrics, 0))
        self.stats.born = True
        self.stats.node_births += 1
        self._born_devices.clear()
        states = self._device_states()
        for device in self._devices:
            if states.get(device) == "connected":
                self._dbirth(link, device)

    def _dbirth(self, link: SparkplugLink, device: str) -> None:
        now = utcnow()
        bodies = []
        for p in self._devices[device]:
            latest = self._bus.latest.get(p.id)
            value, quality, t = (None, Quality.BAD, now) if latest is None else \
                (latest.value, latest.quality, latest.source_time)
            props = {"engUnit": PropertyValue(codec.STRING, p.point.unit),
                     "Quality": PropertyValue(codec.INT32, QUALITY_CODES[quality])}
            if p.point.min is not None:
                props["engLow"] = PropertyValue(codec.DOUBLE, p.point.min)
            if p.point.max is not None:
                props["engHigh"] = PropertyValue(codec.DOUBLE, p.point.max)
            bodies.append(codec.encode_metric(name=p.name, alias=p.alias, timestamp=_ms(t), datatype=codec.DOUBLE,
                                              value=value, properties=props))
            p.seen, p.last_value, p.last_quality, p.sent_quality = True, value, quality, quality
        self._send(link, self.topic("DBIRTH", device), codec.encode_payload(_ms(now), bodies, self._next_seq()))
        self._born_devices.add(device)
        self.stats.device_births += 1

    def _check_devices(self, link: SparkplugLink) -> None:
        """DDEATH for a device whose driver lost it, a new DBIRTH once it is back."""
        states = self._device_states()
        for device in self._devices:
            alive = states.get(device) == "connected"
            if alive and device not in self._born_devices:
                self._take(live=True)  # its samples until now still belong to the old state
                self._dbirth(link, device)
            elif not alive and device in self._born_devices:
                self._take(live=True)
                self._born_devices.discard(device)
                now = _ms(utcnow())
                self._send(link, self.topic("DDEATH", device), codec.encode_payload(now, [], self._next_seq()))
                self.stats.device_deaths += 1

    def _publish_data(self, link: SparkplugLink, samples: list[Sample], *,
                      historical: bool) -> paho.MQTTMessageInfo | None:
        """DDATA per device (aliases only), in sample order; the last message's info, or None."""
        by_device: dict[str, list[Sample]] = {}
        points = self._points
        for s in samples:
            by_device.setdefault(points[s.point].device, []).append(s)
        info = None
        pack = _D.pack
        flags = b"\x28\x01" if historical else b""
        for device, group in by_device.items():
            if device not in self._born_devices:
                if historical:
                    self.stats.historical_dropped += len(group)
                continue  # no DDATA for a device that is dead (its DBIRTH will carry the values)
            for start in range(0, len(group), METRICS_PER_MESSAGE):
                parts: list[bytes] = []
                last_t: datetime | None = None
                tpart = b""
                for s in group[start:start + METRICS_PER_MESSAGE]:
                    t = s.source_time
                    if t is not last_t:
                        tpart, last_t = b"\x18" + varint(int(t.timestamp() * 1000)), t
                    v, q, p = s.value, s.quality, points[s.point]
                    body = p.alias_part + tpart + flags
                    if historical:
                        body += _QUALITY_FIELD[q]
                    elif q is not Quality.GOOD or p.sent_quality is not Quality.GOOD:
                        body += _QUALITY_FIELD[q]
                        p.sent_quality = q
                    body += b"\x38\x01" if v is None else b"\x69" + pack(v)
                    parts.append(b"\x12" + varint(len(body)) + body)
                payload = b"\x08" + varint(_ms(utcnow())) + b"".join(parts) + b"\x18" + varint(self._next_seq())
                info = self._send(link, self.topic("DDATA", device), payload)
                self.stats.metrics += len(parts)
                if historical:
                    self.stats.historical += len(parts)
        return info

    async def _replay(self, link: SparkplugLink) -> None:
        """Everything spooled, oldest first, as historical DDATA; a record is dropped once it left the socket."""
        await self._spool_if_due(force=True)
        await self._spool.seal_active()
        for seq in self._spool.sealed():
            for end, batch in self._spool.read_segment(seq):
                info = self._publish_data(link, batch, historical=True)
                if info is not None:
                    await link.flushed(info)
                self._spool.mark_replayed(seq, end, len(batch))
            self._spool.remove(seq)

    # ------------------------------------------------------------------ what hosts send

    def _bad(self, reason: str, detail: str) -> None:
        """Bad input: counted by reason, logged once per reason (a flood must not flood the log)."""
        self.stats.bad_input[reason] += 1
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("sparkplug: %s (%s); further ones are only counted", detail, reason)

    async def _handle_inbox(self, link: SparkplugLink) -> None:
        while self._inbox:
            topic, payload = self._inbox.popleft()
            try:
                await self._handle(link, topic, payload)
            except DriverConnectionError:
                raise
            except Exception:  # one message must never end the session
                log.exception("sparkplug: cannot handle a message on %s", topic)

    async def _handle(self, link: SparkplugLink, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 3 and parts[1] == "STATE":
            self._state(payload)
            return
        try:
            decoded = codec.decode_payload(payload)
        except codec.DecodeError as err:
            self._bad("malformed", f"undecodable payload on {topic}: {err}")
            return
        if len(parts) == 4 and parts[2] == "NCMD":
            await self._ncmd(decoded)
        elif len(parts) == 5 and parts[2] == "DCMD":
            await self._dcmd(link, parts[4], decoded)

    def _state(self, payload: bytes) -> None:
        """spBv1.0/STATE/<host>: {"online": bool, "timestamp": ms}; an older timestamp than seen is ignored."""
        try:
            doc = json.loads(payload)
            online, stamp = doc["online"], doc["timestamp"]
            if not isinstance(online, bool) or not isinstance(stamp, int):
                raise TypeError("online must be a boolean and timestamp an integer")
        except (ValueError, KeyError, TypeError) as err:
            self._bad("malformed_state", f"STATE message that is not {{online, timestamp}}: {err}")
            return
        if stamp < self._host_stamp:
            return  # a late, stale STATE (spec 3.0): the newer one stands
        self._host_stamp = stamp
        if online != self._host_online:
            log.info("sparkplug: primary host %s is %s", self.cfg.primary_host_id, "online" if online else "offline")
        self._host_online = self.stats.host_online = online

    async def _ncmd(self, payload: codec.Payload) -> None:
        """Node Control/Rebirth and Node Control/Next Server (by name, or alias without a name); nothing else."""
        for m in payload.metrics:
            control = m.name if m.name in NODE_CONTROLS.values() else \
                NODE_CONTROLS.get(m.alias) if m.name is None and m.alias is not None else None
            if control is None:
                self._bad("unknown_metric", f"NCMD of unknown metric {m.name or m.alias}")
                await self._refuse(f"node:{m.name or m.alias}", m.value, "the node takes no such command")
            elif m.value_field != 14:
                self._bad("wrong_datatype", f"NCMD {control} without a boolean value")
                await self._refuse(f"node:{control}", m.value, f"{control} needs a boolean")
            elif m.value and control == REBIRTH:
                log.info("sparkplug: rebirth requested")
                self._rebirth = True
                await self._accept(f"node:{control}", True, "NBIRTH and every DBIRTH again")
            elif m.value:
                after = self._servers[(self._server + 1) % len(self._servers)]
                log.info("sparkplug: Next Server requested: leaving %s for %s", self.server, after)
                self._next_server = True
                await self._accept(f"node:{control}", after, f"a new session, from {self.server} to {after}")
            # false: nothing asked (a host writing the metric back as it was born)

    async def _accept(self, target: str, applied: object, detail: str) -> None:
        """A node control command taken: counted, and in the audit trail like a write."""
        self.stats.commands_accepted += 1
        if self._audit is None:
            return
        from service.audit import AuditEntry

        try:
            await self._audit(AuditEntry(self.cfg.principal, "operator", "write.sparkplug", target, True, applied,
                                         "accepted", detail))
        except Exception:  # the trail must not end the session; the sink logs its own failures
            log.exception("audit entry not recorded for %s", target)

    async def _dcmd(self, link: SparkplugLink, device: str, payload: codec.Payload) -> None:
        if not self.stats.born:  # a command before our births (or after the host left) is not for this session
            for m in payload.metrics:
                await self._refuse(f"{device}.{m.name or m.alias}", m.value, "the edge node is not born")
            return
        for m in payload.metrics:
            p = self._by_alias.get(m.alias) if m.alias is not None else None
            if p is None and m.name is not None:
                p = self._points.get(f"{device}.{m.name}")
            if p is None or p.device != device:
                self._bad("unknown_metric", f"DCMD of unknown metric {m.name or m.alias} on device {device}")
                await self._refuse(f"{device}.{m.name or m.alias}", m.value, "no such metric")
                continue
            if m.value_field not in NUMERIC_FIELDS or (m.datatype is not None and m.datatype != codec.DOUBLE
                                                       and m.datatype not in (codec.FLOAT, codec.INT32, codec.INT64)):
                self._bad("wrong_datatype", f"DCMD on {p.id} with a value of the wrong type")
                await self._refuse(p.id, m.value, "the metric is a Double")
                continue
            if not p.commandable:
                await self._refuse(p.id, m.value, "the point does not accept Sparkplug commands")
                continue
            await self._command(link, p, float(m.value))

    async def _command(self, link: SparkplugLink, p: _Point, value: float) -> None:
        """One accepted DCMD: an operator write request; the answer is the value in force."""
        if self._arbiter is None:
            await self._refuse(p.id, value, "no write path in this service")
            return
        result = await self._arbiter.submit(WriteRequest(p.id, value, Priority.OPERATOR, "sparkplug",
                                                         self.cfg.principal, "operator", self.cfg.command_hold_s))
        if result.ok:
            self.stats.commands_accepted += 1
        else:
            self.stats.commands_refused += 1
            log.warning("sparkplug: DCMD %s = %g not applied: %s", p.id, value, result.message or result.status)
        now = utcnow()
        if result.ok and result.readback is not None and math.isfinite(result.readback):
            answer = Sample(p.id, result.readback, Quality.GOOD, now, now)
        else:
            latest = self._bus.latest.get(p.id)
            answer = latest if latest is not None else Sample.bad(p.id, now)
        self._take(live=True)  # what came before the answer goes first
        p.seen, p.last_value, p.last_quality = True, answer.value, answer.quality
        if p.device in self._born_devices:
            self._publish_data(link, [answer], historical=False)

    async def _refuse(self, target: str, value: object, reason: str) -> None:
        """A command refused before the arbiter: counted, and in the audit trail."""
        self.stats.commands_refused += 1
        if self._audit is None:
            return
        from service.audit import AuditEntry

        shown = value if value is None or isinstance(value, bool | int | float | str) else repr(value)[:200]
        if isinstance(shown, float) and not math.isfinite(shown):
            shown = repr(shown)
        try:
            await self._audit(AuditEntry(self.cfg.principal, "operator", "write.sparkplug", target, shown, None,
                                         "refused", f"Sparkplug command refused: {reason}"))
        except Exception:  # the trail must not end the session; the sink logs its own failures
            log.exception("audit entry not recorded for %s", target)
