"""Generic MQTT driver: subscribes to declared topics, takes values from JSON paths or plain numbers."""

from __future__ import annotations

import contextlib
import json
import math
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import Any
from urllib.parse import urlsplit

from paho.mqtt.client import topic_matches_sub

from drivers.backoff import Backoff
from drivers.base import Driver, raise_if_cancelled
from drivers.config import MqttDevice, MqttPoint, PointBase
from drivers.errors import DriverConnectionError, MalformedPayload
from drivers.mqtt_link import PahoLink, TlsFileError, client_tls_context
from drivers.mqtt_serials import SerialMemory
from service.bus import SampleSink
from service.clock import SleepingClock
from service.model import Quality, Sample, utcnow

KEEPALIVE_S = 30  # a silently dead broker is noticed after about 1.5 keepalives
MATCH_CACHE_SIZE = 10_000  # distinct topics whose matching points are remembered
DEFAULT_STALE_AFTER_S = 60.0  # meters publish on their own schedule: no poll interval to derive it from
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]")
_EPOCH_MS_THRESHOLD = 1e11  # larger epoch numbers are milliseconds (1e11 s is in the year 5138)
SERIAL_ALARM_HOLD_S = 60.0  # a serial mismatch keeps the device's meter_serial condition this long
REFUSAL_REASONS = ("clock_skew", "serial_mismatch")  # why a telegram gave no sample although well-formed

Path = tuple[str | int, ...]
_JSON = json.JSONDecoder()
_NUMBER_TYPES = frozenset({int, float, bool})  # JSON values to_number accepts (bool as 0/1)


def compile_path(path: str) -> Path:
    """`$.a.b[0]` -> ("a", "b", 0)."""
    if not path.startswith("$"):
        raise ValueError(f"'{path}' is not a JSON path like $.a.b")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise ValueError(f"'{path}' is not a JSON path like $.a.b or $.a[0]")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tuple(steps)


def extract(doc: Any, path: Path) -> Any:
    """Follow a compiled path into a JSON document; MalformedPayload when a step is missing."""
    node = doc
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise MalformedPayload(f"no element [{step}]")
        elif not isinstance(node, dict) or step not in node:
            raise MalformedPayload(f"no key '{step}'")
        node = node[step]
    return node


def parse_json(payload: bytes | bytearray) -> Any:
    """Payload bytes -> JSON document; MalformedPayload for anything else."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise MalformedPayload(f"not JSON: {err}") from None


def to_number(value: Any) -> float:
    """A JSON number or boolean -> float; MalformedPayload for text, null, containers, NaN and infinity."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise MalformedPayload(f"{str(value)[:40]}... is too large a number") from None
        if math.isfinite(number):
            return number
    raise MalformedPayload(f"{json.dumps(value)[:40]} is not a finite number")


def parse_plain(payload: bytes | bytearray) -> float:
    """A plain-text numeric payload such as b"21.5" -> 21.5."""
    try:
        value = float(payload.decode("utf-8").strip())
    except (ValueError, UnicodeDecodeError):
        raise MalformedPayload(f"{payload[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise MalformedPayload(f"{value} is not a finite number")
    return value


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 text (Z or offset; naive means UTC) or epoch seconds/milliseconds -> aware UTC datetime."""
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise MalformedPayload(f"'{value[:40]}' is not an ISO 8601 time") from None
        else:
            return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedPayload(f"{value!r} is not a time")
    seconds = value / 1000 if abs(value) >= _EPOCH_MS_THRESHOLD else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedPayload(f"{value!r} is not a time") from None


@dataclass(slots=True)
class Route:
    """How one point is fed: the subscription filter it needs and, for {point} topics, the level naming it."""

    point: MqttPoint
    filter: str  # the topic as subscribed: {device} filled in, {point} as '+'
    level: int | None  # index of the {point} level, None for a plain topic


@dataclass(slots=True)
class Plan:
    """What a topic's messages feed, worked out once per topic."""

    steps: list[tuple[MqttPoint, Path | None, Path | None]]  # point, value path, timestamp path
    json: bool  # whether the payload must be parsed as JSON
    unrouted: str | None  # the {point} level's text when no declared point has it
    fast: FastPlan | None = None  # when every point is a top-level key of one JSON object


@dataclass(slots=True)
class FastPlan:
    """The common telegram: each point a top-level key, one timestamp path (or none) for all of them."""

    keys: list[str]
    time_path: Path | None
    pids: list[str]
    full_ids: list[str]


@dataclass(slots=True)
class Telegram:
    """One message decoded on the network thread, waiting to be published on the event loop."""

    topic: str
    pids: list[str]  # the points it gave a value for
    samples: list[Sample]  # their samples, in the same order
    problem: str | None = None  # why some point got no value from it
    unrouted: str | None = None  # the {point} level's text when no declared point has it
    carries: bool = False  # a JSON object that can carry the meter's serial (the device checks serials)
    serial: str | None = None  # the serial it carries, when it does
    skew: str | None = None  # why its source time is implausible (further from arrival than max_clock_skew_s)
    sources: tuple[datetime, ...] = ()  # the distinct source times taken from the payload


def routes_for(device: MqttDevice) -> list[Route]:
    """One route per point; {device} becomes the device id and {point} a single-level wildcard."""
    routes = []
    for p in device.points:
        levels = [device.id if lv == "{device}" else lv for lv in p.topic.split("/")]
        level = levels.index("{point}") if "{point}" in levels else None
        if level is not None:
            levels[level] = "+"
        routes.append(Route(p, "/".join(levels), level))
    return routes


class MqttDriver(Driver[MqttDevice]):
    """Subscribes to every distinct topic filter of its points; each message updates the points it matches.

    The connection runs on paho-mqtt's network thread (drivers.mqtt_link): messages are decoded there
    and published on the event loop in batches, in arrival order.
    """

    protocol = "mqtt"

    def __init__(self, device: MqttDevice, sink: SampleSink, *, backoff: Backoff | None = None,
                 clock: SleepingClock | None = None, serials: SerialMemory | None = None) -> None:
        super().__init__(device, sink, backoff=backoff, clock=clock)
        # Source-time plausibility: a telegram dated far from its arrival (back-dated, or a gateway clock
        # gone wrong) would land in the wrong hour, day or billing month.
        self._max_skew_s = device.max_clock_skew_s or None
        # Meter identity: telegrams of another meter must not continue this one's register.
        self._serial_path: Path | None = compile_path(device.serial_path) if device.serial_path else None
        self._serials = serials
        self._serial: str | None = device.serial or (serials.get(device.id) if serials and device.serial_path
                                                     else None)
        self._serial_fault: str | None = None  # the last mismatch, for the meter_serial alarm
        self._serial_fault_at = -math.inf  # when it was seen, on the driver's clock
        self.refused_telegrams: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)  # by reason, for metrics
        self._refusing: set[str] = set()  # reasons logged in the current episode
        self._paths: dict[str, tuple[Path | None, Path | None]] = {
            p.id: (compile_path(p.json_path) if p.json_path else None,
                   compile_path(p.timestamp_path) if p.timestamp_path else None)
            for p in device.points}
        self._routes = routes_for(device)
        self.topics: list[str] = list(dict.fromkeys(r.filter for r in self._routes))
        self._link: PahoLink[Telegram] | None = None
        self._malformed_topics: set[str] = set()  # topics whose malformed payloads were logged
        self._unrouted_topics: set[str] = set()  # topics without a declared point that were logged
        self._plans: dict[str, Plan] = {}  # topic -> how to decode it; network thread only

    # ------------------------------------------------------------------ lifecycle hooks

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        url = urlsplit(self.device.endpoint)
        tls: ssl.SSLContext | None = None
        if url.scheme == "mqtts":
            tls = self._tls_context()
        # A persistent session needs an id the broker recognises after a reconnect (and a restart of
        # heatrec); without a configured client_id every connect is a fresh session.
        persistent = self.device.client_id is not None and not self.device.clean_session
        link: PahoLink[Telegram] = PahoLink(
            name=self.device_id, host=url.hostname or "", port=url.port or 1883, client_id=self.device.client_id,
            persistent=persistent, username=self.device.username, password=self.device.password, tls=tls,
            keepalive=KEEPALIVE_S, timeout_s=self.device.timeout_s, decode=self._decode, deliver=self._deliver)
        stack.push_async_callback(link.close)
        await link.open()
        raise_if_cancelled()
        # A new session starts with no subscriptions: every reconnect subscribes afresh.
        granted = await link.subscribe(self.topics, self.device.qos)
        raise_if_cancelled()
        # MQTT 3.1.1 grants QoS 0-2 or 0x80 for failure.
        refused = [t for t, code in zip(self.topics, granted, strict=False) if code >= 0x80]
        if refused or len(granted) != len(self.topics):
            raise DriverConnectionError(f"the broker refused the subscription to '{(refused or self.topics)[0]}'")
        self._link = link
        stack.callback(setattr, self, "_link", None)

    def _tls_context(self) -> ssl.SSLContext:
        """Verify the broker against tls_ca_file (or the system CAs); present a client certificate if set."""
        d = self.device
        try:
            return client_tls_context(d.tls_ca_file, d.tls_cert_file, d.tls_key_file)
        except TlsFileError as err:
            raise DriverConnectionError(str(err)) from err

    async def _serve(self) -> None:
        link = self._link
        if link is None:
            raise DriverConnectionError("not connected")
        self._mark_healthy()  # subscribed: silence from here on is the publishers', caught as STALE
        await link.wait_lost()

    # ------------------------------------------------------------------ messages

    def _route(self, topic: str) -> Plan:
        """How to decode a topic's messages: the points it feeds (or the {point} text no point has)."""
        plan = self._plans.get(topic)
        if plan is not None:
            return plan
        if len(self._plans) >= MATCH_CACHE_SIZE:  # wildcards can bring endless distinct topics
            self._plans.clear()
        levels = topic.split("/")
        points: list[MqttPoint] = []
        unrouted: str | None = None
        for r in self._routes:
            if not topic_matches_sub(r.filter, topic):
                continue
            if r.level is None or levels[r.level] == r.point.key:
                points.append(r.point)
            else:
                unrouted = levels[r.level]
        steps = [(p, *self._paths[p.id]) for p in points]
        plan = self._plans[topic] = Plan(steps, any(v is not None or t is not None for _, v, t in steps),
                                         None if points else unrouted)
        time_paths = {t for _, _, t in steps}
        if steps and len(time_paths) == 1 and all(v is not None and len(v) == 1 and isinstance(v[0], str)
                                                  for _, v, _ in steps):
            plan.fast = FastPlan([str(v[0]) for _, v, _ in steps if v is not None], time_paths.pop(),
                                 [p.id for p, _, _ in steps], [self._full_ids[p.id] for p, _, _ in steps])
        return plan

    def _decode(self, topic: str, data: bytes | bytearray) -> Telegram | None:
        """Network thread: one message -> samples for every point it feeds (nothing shared is touched)."""
        plan = self._route(topic)
        received = utcnow()
        if not plan.steps:
            return Telegram(topic, [], [], unrouted=plan.unrouted) if plan.unrouted is not None else None
        doc: Any = None
        doc_error: MalformedPayload | None = None
        if plan.json:
            try:
                doc = _JSON.decode(data.decode("utf-8")) if type(data) is bytes else parse_json(data)
            except (ValueError, UnicodeDecodeError) as err:
                doc_error = MalformedPayload(f"not JSON: {err}")
        telegram: Telegram | None = None
        if plan.fast is not None and type(doc) is dict:
            telegram = self._decode_fast(topic, plan.fast, doc, received)
        if telegram is None:
            telegram = self._decode_careful(topic, plan, data, doc, doc_error, received)
        if self._serial_path is not None and type(doc) is dict:
            telegram.carries = True
            telegram.serial = self._serial_of(doc)
        if self._max_skew_s is not None and telegram.samples and telegram.sources:
            telegram.skew = self._skew(telegram.sources, received)
        return telegram

    def _serial_of(self, doc: dict[str, Any]) -> str | None:
        """The serial a telegram carries (text, or an integer as text); None when it carries none."""
        path = self._serial_path
        assert path is not None
        try:
            step = path[0]
            node = doc.get(step) if len(path) == 1 and type(step) is str else extract(doc, path)
        except MalformedPayload:
            return None
        if type(node) is str:
            return node.strip() or None
        if type(node) is int:
            return str(node)
        return None

    def _skew(self, sources: tuple[datetime, ...], received: datetime) -> str | None:
        """Why the telegram's source time is implausible, or None (every source time within max_clock_skew_s)."""
        limit = self._max_skew_s
        assert limit is not None
        for source in sources:
            ahead = (source - received).total_seconds()
            if abs(ahead) > limit:
                when = f"{-ahead:.0f} s before" if ahead < 0 else f"{ahead:.0f} s after"
                return (f"source time {source.isoformat()} is {when} its arrival (max_clock_skew_s = "
                        f"{limit:g})")
        return None

    def _decode_careful(self, topic: str, plan: Plan, data: bytes | bytearray, doc: Any,
                        doc_error: MalformedPayload | None, received: datetime) -> Telegram:
        """Every point on its own, and the words for whatever is wrong."""
        pids: list[str] = []
        samples: list[Sample] = []
        times: dict[Path, datetime] = {}  # points of one telegram usually share its timestamp path
        problem: str | None = None
        isfinite, new, good, full_ids = math.isfinite, tuple.__new__, Quality.GOOD, self._full_ids
        for p, value_path, time_path in plan.steps:
            try:
                if doc_error is not None and (value_path is not None or time_path is not None):
                    raise doc_error
                if value_path is None:
                    value = parse_plain(data)
                else:
                    # Fast path for the usual case (the key is there, the value a finite number); the
                    # careful extract() runs only to find the words for what is wrong.
                    try:
                        node = doc
                        for step in value_path:
                            node = node[step]
                    except (KeyError, IndexError, TypeError):
                        node = extract(doc, value_path)
                    value = node if type(node) is float and isfinite(node) else to_number(node)
                if time_path is None:
                    source = received
                elif time_path in times:
                    source = times[time_path]
                else:
                    source = times[time_path] = parse_timestamp(extract(doc, time_path))
            except MalformedPayload as err:
                problem = problem or f"point {p.id}: {err}"
                continue
            pids.append(p.id)
            # tuple.__new__ skips the NamedTuple's Python-level __new__ (see Driver._publish_values)
            samples.append(new(Sample, (full_ids[p.id], value, good, source, received)))
        return Telegram(topic, pids, samples, problem, sources=tuple(times.values()))

    @staticmethod
    def _decode_fast(topic: str, fast: FastPlan, doc: dict[str, Any], received: datetime) -> Telegram | None:
        """A well-formed common telegram in a few C-level passes; None to let the careful path judge it."""
        try:
            raw = list(map(doc.__getitem__, fast.keys))
            if not _NUMBER_TYPES.issuperset(map(type, raw)):
                return None  # text, null or a container somewhere
            values = list(map(float, raw))  # OverflowError for an integer beyond float
            if not all(map(math.isfinite, values)):
                return None
            source = received if fast.time_path is None else parse_timestamp(extract(doc, fast.time_path))
        except (KeyError, OverflowError, MalformedPayload):
            return None
        fields = zip(fast.full_ids, values, repeat(Quality.GOOD), repeat(source), repeat(received))
        return Telegram(topic, fast.pids, list(map(tuple.__new__, repeat(Sample), fields)),
                        sources=() if fast.time_path is None else (source,))

    def _deliver(self, batch: list[Telegram]) -> None:
        """Event loop: count, log and publish decoded messages in arrival order, the whole batch at once."""
        pids: list[str] = []
        samples: list[Sample] = []
        for t in batch:
            if t.unrouted is not None:
                self._log_unrouted(t)
                continue
            self.stats.reads += 1
            topic = t.topic
            if t.carries and t.samples and not self._serial_matches(t):
                continue
            if t.skew is not None:
                self._refuse("clock_skew", f"telegram on {topic} refused: {t.skew}; such telegrams give no "
                                           "sample until source times are plausible again")
                continue
            if self._refusing:
                self._accepted_again(t)
            if t.problem is not None:
                # No sample for a value we cannot read: the point turns STALE if this goes on.
                self.stats.malformed_messages += 1
                if topic not in self._malformed_topics:
                    self._malformed_topics.add(topic)
                    self._log.warning("%s: malformed payload on %s (%s); ignoring such messages on this topic "
                                      "until a good one arrives", self.device_id, topic, t.problem)
            elif topic in self._malformed_topics:
                self._malformed_topics.discard(topic)
                self._log.info("%s: payloads on %s are well-formed again", self.device_id, topic)
            pids += t.pids
            samples += t.samples
        if samples:
            self._publish_samples(pids, samples)

    # ------------------------------------------------------------------ refusals

    def _serial_matches(self, t: Telegram) -> bool:
        """Whether the telegram comes from the device's meter; the first serial seen is tracked if none is set."""
        known = self._serial
        if t.serial is None:
            if known is None:
                return True  # nothing known and nothing carried: no meter identity to check
            problem = f"a telegram on {t.topic} carries no serial at {self.device.serial_path}, expected {known}"
        elif known is None:
            if t.skew is not None:
                return True  # judged by its time first: only a plausible telegram names the meter to keep
            self._serial = t.serial
            if self._serials is not None:
                self._serials.remember(self.device_id, t.serial)
            self._log.info("%s: meter serial %s seen first on %s; telegrams of any other meter are refused "
                           "from now on", self.device_id, t.serial, t.topic)
            return True
        elif t.serial == known:
            return True
        else:
            problem = f"a telegram on {t.topic} comes from meter {t.serial[:40]}, expected {known}"
        self._serial_fault, self._serial_fault_at = problem, self._clock.monotonic()
        self._refuse("serial_mismatch", f"{problem}: refused; its values must not continue this meter's "
                                        "registers (if the meter was exchanged, record the replacement and set "
                                        "the device's serial)")
        return False

    @property
    def serial_problem(self) -> str | None:
        """A serial mismatch seen within the last SERIAL_ALARM_HOLD_S (the meter_serial alarm's condition)."""
        if self._serial_fault is not None and self._clock.monotonic() - self._serial_fault_at < SERIAL_ALARM_HOLD_S:
            return self._serial_fault
        return None

    @property
    def serial(self) -> str | None:
        """The meter serial checked: configured, or the first seen (tracked)."""
        return self._serial

    def _refuse(self, reason: str, message: str) -> None:
        """Count a refused telegram; log the first of an episode."""
        self.refused_telegrams[reason] += 1
        if reason not in self._refusing:
            self._refusing.add(reason)
            self._log.warning("%s: %s", self.device_id, message)

    def _accepted_again(self, t: Telegram) -> None:
        """A telegram passed every check: the refusal episodes it ends are over."""
        for reason in list(self._refusing):
            if reason == "serial_mismatch" and not t.carries:
                continue  # a plain payload says nothing about the meter's identity
            self._refusing.discard(reason)
            what = "meter serials match again" if reason == "serial_mismatch" else "source times are plausible again"
            self._log.info("%s: %s (%d telegrams refused so far)", self.device_id, what,
                           self.refused_telegrams[reason])

    def _log_unrouted(self, t: Telegram) -> None:
        if t.topic in self._unrouted_topics:
            return
        if len(self._unrouted_topics) >= MATCH_CACHE_SIZE:
            self._unrouted_topics.clear()
        self._unrouted_topics.add(t.topic)
        self._log.warning("%s: no declared point has the key '%s' (topic %s); such messages are ignored",
                          self.device_id, t.unrouted, t.topic)

    def _stale_after(self, point: PointBase) -> float | None:
        return point.stale_after_s or DEFAULT_STALE_AFTER_S
