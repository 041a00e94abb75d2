"""One MQTT connection on paho-mqtt's own network thread, reporting back to the asyncio loop.

Messages are decoded on the network thread as paho reads them (many packets per socket read, PUBACKs
written at once) and handed to the event loop in batches: one loop wake-up per batch rather than one
loop turn per packet, which is what caps an asyncio-driven client on a busy feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from drivers.errors import DriverConnectionError, DriverError

R = TypeVar("R")
log = logging.getLogger("drivers.mqtt")
# How long the event loop lets a batch grow after its first message: each wake-up of the loop thread
# costs a GIL hand-over, so a busy feed wakes it about 200 times a second rather than per message.
FLUSH_DELAY_S = 0.005


class PahoLink(Generic[R]):
    """A single connection: open, subscribe, publish, deliver decoded messages, report its loss, close.

    `decode(topic, payload)` runs on the network thread and must only touch state of its own;
    `deliver(batch)` runs on the event loop with the decoded results in arrival order. Nothing is
    delivered after `close()` begins, so a driver never publishes values of a connection it gave up.
    A publisher (the Sparkplug edge node) sets a `will` and `publisher=True`: paho's queue is then
    unbounded and up to 1,000 QoS 1 messages are in flight, because the caller bounds what it sends.
    """

    def __init__(self, *, name: str, host: str, port: int, client_id: str | None, persistent: bool,
                 username: str | None, password: str | None, tls: ssl.SSLContext | None,
                 keepalive: int, timeout_s: float, decode: Callable[[str, bytes | bytearray], R | None],
                 deliver: Callable[[list[R]], None], will: tuple[str, bytes] | None = None,
                 publisher: bool = False) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._host, self._port, self._keepalive, self._timeout_s = host, port, keepalive, timeout_s
        self._decode, self._deliver = decode, deliver
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=not persistent,
                             protocol=MQTTProtocolVersion.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = timeout_s  # bounds the blocking TCP connect and TLS handshake
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set_context(tls)
        if publisher:
            client.max_queued_messages_set(0)
            client.max_inflight_messages_set(1000)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._ready = asyncio.Event()  # CONNACK arrived, or the attempt failed
        self._lost = asyncio.Event()
        self._error: DriverError | None = None
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._pending: list[R] = []
        self._lock = threading.Lock()
        self._flush_scheduled = False
        self._closed = False
        self._network_done = threading.Event()  # paho reported the connection closed
        self._opener: threading.Thread | None = None

    # ------------------------------------------------------------------ event-loop side

    async def open(self) -> None:
        """Connect and wait for the broker's CONNACK; DriverError when refused or lost."""
        self._opener = threading.Thread(target=self._open_blocking, name=f"heatrec-mqtt-{self.name}-connect",
                                        daemon=True)
        self._opener.start()
        try:
            async with asyncio.timeout(self._timeout_s + 1):  # connect_timeout bounds TCP and TLS, not CONNACK
                await self._ready.wait()
        except TimeoutError:
            self._fail(DriverConnectionError(f"no CONNACK from {self._host}:{self._port} within {self._timeout_s} s"))
        if self._error is not None:
            raise self._error

    async def subscribe(self, topics: Sequence[str], qos: int) -> list[int]:
        """Subscribe to every topic in one request; the broker's granted QoS (or failure code) per topic."""
        rc, mid = self._client.subscribe([(t, qos) for t in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise DriverConnectionError(f"cannot subscribe: {paho.error_string(rc)}")
        # on_subscribe reaches the loop through call_soon_threadsafe, so it cannot run before this line.
        granted: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[mid] = granted
        if self._error is not None:
            raise self._error
        async with asyncio.timeout(self._timeout_s):
            return await granted

    @property
    def lost(self) -> asyncio.Event:
        """Set once the connection is lost (or never came up)."""
        return self._lost

    @property
    def error(self) -> DriverError | None:
        """Why the connection was lost, once it was."""
        return self._error

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> paho.MQTTMessageInfo:
        """Queue one message (paho's publish is thread-safe); DriverConnectionError once lost."""
        if self._lost.is_set():
            raise self._error or DriverConnectionError("connection to the broker lost")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise DriverConnectionError(f"cannot publish: {paho.error_string(info.rc)}")
        return info

    async def flushed(self, info: paho.MQTTMessageInfo) -> None:
        """Wait until a message (and every one queued before it) left on the socket; raise if lost first."""
        while not info.is_published():
            if self._lost.is_set():
                raise self._error or DriverConnectionError("connection to the broker lost")
            await asyncio.sleep(0.002)

    async def wait_lost(self) -> None:
        """Return never; raise DriverConnectionError once the connection is lost."""
        await self._lost.wait()
        raise self._error or DriverConnectionError("connection to the broker lost")

    async def close(self, *, graceful: bool = True) -> None:
        """Disconnect and stop the network thread; safe at any point, also during open().

        `graceful=False` drops the socket without a DISCONNECT, so the broker sends the will.
        """
        self._closed = True
        await asyncio.to_thread(self._close_blocking, graceful)

    def _fail(self, err: DriverError) -> None:
        if self._error is None:
            self._error = err
        self._ready.set()
        self._lost.set()
        for granted in self._subacks.values():
            if not granted.done():
                granted.set_exception(err)
        self._subacks.clear()

    def _connected(self) -> None:
        self._ready.set()

    def _granted(self, mid: int, codes: list[int]) -> None:
        granted = self._subacks.pop(mid, None)
        if granted is not None and not granted.done():
            granted.set_result(codes)

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        if not self._closed and batch:
            self._deliver(batch)

    def _to_loop(self, callback: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    # ------------------------------------------------------------------ network-thread side

    def _open_blocking(self) -> None:
        try:
            self._client.connect(self._host, self._port, self._keepalive)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            what = "TLS handshake with" if isinstance(err, ssl.SSLError) else "connect to"
            self._to_loop(self._fail, _connection_error(f"{what} {self._host}:{self._port}", err))
            self._network_done.set()
            return
        if not self._closed:  # close() joins this thread before it touches the client
            self._client.loop_start()

    def _close_blocking(self, graceful: bool) -> None:
        if self._opener is not None:
            self._opener.join()  # the blocking connect ends within connect_timeout
        client = self._client
        if graceful:
            client.disconnect()  # queues DISCONNECT (which suppresses the will) and wakes the network thread
            if not self._network_done.wait(self._timeout_s):
                log.debug("%s: the broker did not take our DISCONNECT; closing the socket", self.name)
        # Close the socket and paho's wake-up socket pair; a network thread still inside select() then
        # leaves at once. There is no public call for this: paho relies on garbage collection.
        client._reset_sockets()
        client.loop_stop()  # joins paho's thread

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._to_loop(self._fail, DriverConnectionError(f"the broker refused the connection: {reason}"))
        else:
            self._to_loop(self._connected)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._network_done.set()
        self._to_loop(self._fail, DriverConnectionError(f"connection to the broker lost ({reason})"))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        self._to_loop(self._granted, mid, [getattr(r, "value", r) for r in reasons])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            result = self._decode(message.topic, message.payload)
        except Exception:  # a bug in decoding must not end paho's network thread
            log.exception("%s: cannot handle a message on %s", self.name, message.topic)
            return
        if result is None:
            return
        with self._lock:
            self._pending.append(result)
            schedule, self._flush_scheduled = not self._flush_scheduled, True
        if schedule:
            self._to_loop(self._loop.call_later, FLUSH_DELAY_S, self._flush)


class TlsFileError(OSError):
    """A CA, certificate or key file that cannot be loaded; the message names the file and its key."""


def client_tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """Verify the broker against ca_file (or the system CAs) and its name; present a client certificate if set."""
    try:
        tls = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as err:
        raise TlsFileError(f"cannot load tls_ca_file '{ca_file}': {err}") from err
    if cert_file:
        try:
            tls.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as err:
            raise TlsFileError(f"cannot load tls_cert_file '{cert_file}' / tls_key_file '{key_file}': {err}") from err
    return tls


def _connection_error(what: str, err: BaseException) -> DriverConnectionError:
    error = DriverConnectionError(f"{what}: {err}")
    error.__cause__ = err
    return error
