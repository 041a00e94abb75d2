"""Generic MQTT driver: subscribes to declared topics, takes values from JSON paths or plain numbers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import ssl
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiomqtt

from drivers.backoff import Backoff
from drivers.base import Driver, raise_if_cancelled
from drivers.errors import DriverConnectionError, DriverTimeout, MalformedPayload
from service.bus import SampleSink
from service.config import MqttDevice, MqttPoint, PointBase
from service.model import utcnow

T = TypeVar("T")

KEEPALIVE_S = 30  # a silently dead broker is noticed after about 1.5 keepalives
MATCH_CACHE_SIZE = 10_000  # distinct topics whose matching points are remembered
DEFAULT_STALE_AFTER_S = 60.0  # meters publish on their own schedule: no poll interval to derive it from
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]")
_EPOCH_MS_THRESHOLD = 1e11  # larger epoch numbers are milliseconds (1e11 s is in the year 5138)

Path = tuple[str | int, ...]


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


def parse_json(payload: bytes) -> Any:
    """Payload bytes -> JSON document; MalformedPayload for anything else."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise MalformedPayload(f"not JSON: {err}") from None


def to_number(value: Any) -> float:
    """A JSON number or boolean -> float; MalformedPayload for text, null, containers, NaN and infinity."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    raise MalformedPayload(f"{json.dumps(value)[:40]} is not a finite number")


def parse_plain(payload: bytes) -> float:
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


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")


class MqttDriver(Driver[MqttDevice]):
    """Subscribes to every distinct topic of its points; each message updates the points it matches."""

    protocol = "mqtt"

    def __init__(self, device: MqttDevice, sink: SampleSink, *, backoff: Backoff | None = None) -> None:
        super().__init__(device, sink, backoff=backoff)
        self._paths: dict[str, tuple[Path | None, Path | None]] = {
            p.id: (compile_path(p.json_path) if p.json_path else None,
                   compile_path(p.timestamp_path) if p.timestamp_path else None)
            for p in device.points}
        self.topics: list[str] = list(dict.fromkeys(p.topic for p in device.points))
        self._client: aiomqtt.Client | None = None
        self._malformed_topics: set[str] = set()  # topics whose malformed payloads were logged
        self._matches: dict[str, list[MqttPoint]] = {}  # topic -> points it feeds

    # ------------------------------------------------------------------ lifecycle hooks

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        url = urlsplit(self.device.endpoint)
        tls: ssl.SSLContext | None = None
        if url.scheme == "mqtts":
            tls = self._tls_context()
        # A persistent session needs an id the broker recognises after a reconnect (and a restart of
        # heatrec); without a configured client_id every connect is a fresh session.
        persistent = self.device.client_id is not None and not self.device.clean_session
        client = aiomqtt.Client(url.hostname or "", url.port or 1883,
                                username=self.device.username, password=self.device.password,
                                identifier=self.device.client_id, timeout=self.device.timeout_s,
                                keepalive=KEEPALIVE_S, tls_context=tls, clean_session=not persistent,
                                queue_type=self._inline_queue())
        entered = False

        def abandon() -> None:
            # aiomqtt leaves paho's socket open when CONNACK never comes (or our timeout comes first);
            # without this every retry against a mute broker leaks a socket. There is no public API
            # for it: paho's disconnect() only queues a DISCONNECT, which does not close it here.
            if not entered:
                with contextlib.suppress(Exception):
                    client._client._sock_close()  # unregisters from the loop, then closes

        stack.callback(abandon)
        await self._mqtt(stack.enter_async_context(client), f"connect to {self.device.endpoint}")
        entered = True
        stack.callback(setattr, self, "_client", None)
        # A new session starts with no subscriptions: every reconnect subscribes afresh.
        for topic in self.topics:
            request = client.subscribe(topic, qos=self.device.qos, timeout=self.device.timeout_s)
            granted = await self._mqtt(request, f"subscribe to {topic}")
            # MQTT 3.1.1 grants QoS 0-2 or 0x80 for failure; v5 reason codes >= 0x80 are failures too.
            if any((code if isinstance(code, int) else code.value) >= 0x80 for code in granted):
                raise DriverConnectionError(f"the broker refused the subscription to '{topic}'")
        self._client = client

    def _tls_context(self) -> ssl.SSLContext:
        """Verify the broker against tls_ca_file (or the system CAs); present a client certificate if set."""
        ca_file = self.device.tls_ca_file
        try:
            tls = ssl.create_default_context(cafile=ca_file)  # verifies the broker's name as well
        except (OSError, ssl.SSLError) as err:
            raise DriverConnectionError(f"cannot load tls_ca_file '{ca_file}': {err}") from err
        if self.device.tls_cert_file:
            try:
                tls.load_cert_chain(self.device.tls_cert_file, self.device.tls_key_file)
            except (OSError, ssl.SSLError) as err:
                raise DriverConnectionError(f"cannot load tls_cert_file '{self.device.tls_cert_file}' / "
                                            f"tls_key_file '{self.device.tls_key_file}': {err}") from err
        return tls

    def _inline_queue(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """A queue class for aiomqtt whose put handles the message on the spot.

        aiomqtt's message iterator costs a task and an asyncio.wait per message, which halves the
        throughput of a busy broker feed; decoding is synchronous and quick, so messages are decoded
        as paho hands them over and nothing is ever queued.
        """
        driver = self

        class InlineQueue(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                try:
                    driver._handle_message(str(item.topic), item.payload)
                except Exception:  # a bug in decoding must not break paho's network loop
                    driver._log.exception("%s: cannot handle a message on %s", driver.device_id, item.topic)

        return InlineQueue

    async def _serve(self) -> None:
        client = self._client
        if client is None:
            raise DriverConnectionError("not connected")
        self._mark_healthy()  # subscribed: silence from here on is the publishers', caught as STALE
        try:
            # Messages are handled as they arrive (_inline_queue): this only waits for a disconnect.
            async for message in client.messages:
                raise_if_cancelled()
                self._handle_message(str(message.topic), message.payload)
        except aiomqtt.MqttError as err:
            raise DriverConnectionError(f"connection to the broker lost: {err}") from err

    async def _mqtt(self, request: Awaitable[T], what: str) -> T:
        """Await one aiomqtt call within the device timeout; translate its errors into ours."""
        try:
            async with asyncio.timeout(self.device.timeout_s):
                result = await request
                raise_if_cancelled()
                return result
        except TimeoutError as err:
            raise DriverTimeout(f"{what}: no answer within {self.device.timeout_s} s") from err
        except aiomqtt.MqttError as err:
            raise DriverConnectionError(f"{what}: {err}") from err
        except OSError as err:
            raise DriverConnectionError(f"{what}: {err}") from err

    # ------------------------------------------------------------------ messages

    def _handle_message(self, topic: str, payload: Any) -> None:
        """Decode one message into samples for every point whose topic (or wildcard) matches."""
        matched = self._matches.get(topic)
        if matched is None:
            if len(self._matches) >= MATCH_CACHE_SIZE:  # wildcards can bring endless distinct topics
                self._matches.clear()
            matched = self._matches[topic] = [p for p in self.device.points
                                              if aiomqtt.Topic(topic).matches(p.topic)]
        if not matched:
            return
        self.stats.reads += 1
        received = utcnow()
        data = _payload_bytes(payload)
        doc: Any = None
        doc_error: MalformedPayload | None = None
        if any(p.json_path or p.timestamp_path for p in matched):
            try:
                doc = parse_json(data)
            except MalformedPayload as err:
                doc_error = err
        decoded: dict[datetime, list[tuple[PointBase, float]]] = {}  # by source time: usually one
        times: dict[Path, datetime] = {}  # points of one telegram usually share its timestamp path
        problem: str | None = None
        for p in matched:
            value_path, time_path = self._paths[p.id]
            try:
                if doc_error is not None and (value_path is not None or time_path is not None):
                    raise doc_error
                value = to_number(extract(doc, value_path)) if value_path is not None else parse_plain(data)
                if time_path is None:
                    source = received
                elif time_path in times:
                    source = times[time_path]
                else:
                    source = times[time_path] = parse_timestamp(extract(doc, time_path))
            except MalformedPayload as err:
                problem = problem or f"point {p.id}: {err}"
                continue
            decoded.setdefault(source, []).append((p, value))
        if problem is not None:
            # No sample for a value we cannot read: the point turns STALE if this goes on.
            self.stats.malformed_messages += 1
            if topic not in self._malformed_topics:
                self._malformed_topics.add(topic)
                self._log.warning("%s: malformed payload on %s (%s); ignoring such messages on this topic "
                                  "until a good one arrives", self.device_id, topic, problem)
        elif topic in self._malformed_topics:
            self._malformed_topics.discard(topic)
            self._log.info("%s: payloads on %s are well-formed again", self.device_id, topic)
        for source, values in decoded.items():
            self._publish_good(values, source, received)

    def _stale_after(self, point: PointBase) -> float | None:
        return point.stale_after_s or DEFAULT_STALE_AFTER_S
