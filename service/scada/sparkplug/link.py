"""The edge node's MQTT connection: paho on its own network thread, with the NDEATH will and a clean session.

One link is one MQTT session (Sparkplug ties a session to its bdSeq, carried by the will), so a new link is
made for every connection. Publishing is paho's thread-safe `publish` from the event loop; what arrives
(STATE, NCMD, DCMD) is handed to the loop as (topic, payload) in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from service.errors import HeatrecError

log = logging.getLogger(__name__)


class LinkError(HeatrecError):
    """The broker cannot be reached, refused us, or the connection was lost."""


class SparkplugLink:
    """One connection: open with a will, subscribe, publish, notice the loss, close."""

    def __init__(self, *, host: str, port: int, client_id: str, username: str | None, password: str | None,
                 tls: ssl.SSLContext | None, keepalive: int, timeout_s: float, will: tuple[str, bytes],
                 on_message: Callable[[str, bytes], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._host, self._port, self._keepalive, self._timeout_s = host, port, keepalive, timeout_s
        self._on_message_cb = on_message
        # Sparkplug 3.0: clean session (MQTT 3.1.1), the NDEATH as will with QoS 1, not retained.
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                             protocol=MQTTProtocolVersion.MQTTv311, reconnect_on_failure=False)
        client.connect_timeout = timeout_s
        client.max_queued_messages_set(0)  # unbounded: the node bounds what it publishes itself
        client.max_inflight_messages_set(1000)
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set_context(tls)
        client.will_set(will[0], will[1], qos=1, retain=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._ready = asyncio.Event()
        self.lost = asyncio.Event()
        self.error: LinkError | None = None
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._network_done = threading.Event()
        self._closed = False
        self._opener: threading.Thread | None = None

    async def open(self) -> None:
        """Connect and wait for CONNACK; LinkError when refused or unreachable."""
        self._opener = threading.Thread(target=self._open_blocking, name="heatrec-sparkplug-connect", daemon=True)
        self._opener.start()
        try:
            async with asyncio.timeout(self._timeout_s + 1):
                await self._ready.wait()
        except TimeoutError:
            self._fail(LinkError(f"no CONNACK from {self._host}:{self._port} within {self._timeout_s} s"))
        if self.error is not None:
            raise self.error

    async def subscribe(self, topics: Sequence[str], qos: int) -> list[int]:
        """Subscribe to every topic in one request; the granted QoS (or failure code) per topic."""
        rc, mid = self._client.subscribe([(t, qos) for t in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"cannot subscribe: {paho.error_string(rc)}")
        granted: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[mid] = granted
        if self.error is not None:
            raise self.error
        async with asyncio.timeout(self._timeout_s):
            return await granted

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> paho.MQTTMessageInfo:
        """Queue one message (never retained: Sparkplug forbids it outside STATE); LinkError once lost."""
        if self.lost.is_set():
            raise self.error or LinkError("connection to the broker lost")
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"cannot publish: {paho.error_string(info.rc)}")
        return info

    async def flushed(self, info: paho.MQTTMessageInfo) -> None:
        """Wait until a message (and so every one queued before it) left on the socket; LinkError if lost first."""
        while not info.is_published():
            if self.lost.is_set():
                raise self.error or LinkError("connection to the broker lost")
            await asyncio.sleep(0.002)

    async def close(self, *, graceful: bool = True) -> None:
        """Disconnect (a DISCONNECT suppresses the will) and stop the network thread; safe at any point."""
        self._closed = True
        await asyncio.to_thread(self._close_blocking, graceful)

    # ------------------------------------------------------------------ loop side

    def _fail(self, err: LinkError) -> None:
        if self.error is None:
            self.error = err
        self._ready.set()
        self.lost.set()
        for granted in self._subacks.values():
            if not granted.done():
                granted.set_exception(err)
        self._subacks.clear()

    def _granted(self, mid: int, codes: list[int]) -> None:
        granted = self._subacks.pop(mid, None)
        if granted is not None and not granted.done():
            granted.set_result(codes)

    def _to_loop(self, callback: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    # ------------------------------------------------------------------ network-thread side

    def _open_blocking(self) -> None:
        try:
            self._client.connect(self._host, self._port, self._keepalive)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            what = "TLS handshake with" if isinstance(err, ssl.SSLError) else "connect to"
            self._to_loop(self._fail, LinkError(f"{what} {self._host}:{self._port}: {err}"))
            self._network_done.set()
            return
        if not self._closed:
            self._client.loop_start()

    def _close_blocking(self, graceful: bool) -> None:
        if self._opener is not None:
            self._opener.join()
        client = self._client
        if graceful:
            client.disconnect()
            if not self._network_done.wait(self._timeout_s):
                log.debug("sparkplug: the broker did not take our DISCONNECT; closing the socket")
        # Close the socket and paho's wake-up pair so a network thread inside select() leaves at once.
        client._reset_sockets()
        client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._to_loop(self._fail, LinkError(f"the broker refused the connection: {reason}"))
        else:
            self._to_loop(self._ready.set)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._network_done.set()
        self._to_loop(self._fail, LinkError(f"connection to the broker lost ({reason})"))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        self._to_loop(self._granted, mid, [getattr(r, "value", r) for r in reasons])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if not self._closed:
            self._to_loop(self._on_message_cb, message.topic, bytes(message.payload))
