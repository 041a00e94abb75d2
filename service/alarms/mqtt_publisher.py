"""Alarm state changes published to an MQTT broker as retained JSON, one topic per alarm.

Alarm handling only ever appends to a bounded in-memory queue (`offer`); a background task owns
the connection, reconnects with backoff and drops the oldest changes when the broker stays away
longer than the queue lasts. After every (re)connect the current state of every alarm is
published again, so the retained topics are right even when changes were dropped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from drivers.backoff import Backoff
from drivers.mqtt_link import client_tls_context
from service.alarms.model import Alarm, AlarmEvent
from service.config import AlarmsMqttConfig
from service.tasks import raise_if_stopping

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0  # a broker that takes the TCP connection but never acknowledges counts as down


@dataclass
class PublisherStats:
    """Counters for /metrics."""

    published: int = 0
    dropped: int = 0  # changes lost because the queue was full while the broker was away
    connects: int = 0
    connected: bool = False


def alarm_payload(alarm: Alarm, event: AlarmEvent | None) -> bytes:
    """The JSON published for an alarm: its whole current state, and the change that caused it (if any)."""

    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    doc: dict[str, object] = {
        "id": alarm.id, "source": alarm.source, "kind": alarm.kind, "severity": alarm.severity.value,
        "message": alarm.message, "state": alarm.state.value, "active": alarm.active, "needs_ack": alarm.needs_ack,
        "value": alarm.value, "since": iso(alarm.since), "shelved_until": iso(alarm.shelved_until),
        "acked_by": alarm.acked_by,
        "event": None if event is None else {
            "time": event.time.isoformat(), "old_state": event.old.value, "new_state": event.new.value,
            "by": event.by, "message": event.message},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class AlarmPublisher:
    """Never blocks its caller: `offer` is O(1); `run` does the network work until cancelled."""

    def __init__(self, cfg: AlarmsMqttConfig, alarms: Callable[[], Iterable[Alarm]], *,
                 backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.stats = PublisherStats()
        self._alarms = alarms  # current states, for the snapshot after each connect
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._backoff = backoff or Backoff(0.5, 30.0)

    def topic(self, alarm_id: str) -> str:
        """The topic an alarm is published to."""
        return f"{self.cfg.topic_prefix}/{alarm_id}"

    @property
    def queue_depth(self) -> int:
        """Changes waiting to be published."""
        return len(self._queue)

    def offer(self, event: AlarmEvent, alarm: Alarm) -> None:
        """Queue one change (the payload is built now: the alarm keeps changing)."""
        if len(self._queue) >= self.cfg.queue_size:
            self._queue.popleft()  # the oldest goes: the snapshot after reconnect restores the state anyway
            self.stats.dropped += 1
        self._queue.append((self.topic(alarm.id), alarm_payload(alarm, event)))
        self._wake.set()

    def _client(self) -> aiomqtt.Client:
        url = urlsplit(self.cfg.url)
        tls = client_tls_context(self.cfg.tls_ca_file, self.cfg.tls_cert_file, self.cfg.tls_key_file) \
            if url.scheme == "mqtts" else None
        return aiomqtt.Client(url.hostname or "", url.port or (8883 if tls else 1883), username=self.cfg.username,
                              password=self.cfg.password, identifier=self.cfg.client_id, tls_context=tls,
                              timeout=PUBLISH_TIMEOUT_S, keepalive=30)

    async def run(self) -> None:
        """Connect, publish, and on any failure reconnect with backoff; until cancelled."""
        failures = 0
        while True:
            client: aiomqtt.Client | None = None
            try:
                client = self._client()
                async with client:
                    self.stats.connected = True
                    self.stats.connects += 1
                    self._backoff.reset()
                    if failures:
                        log.info("alarm MQTT: connected to %s again", self.cfg.url)
                    failures = 0
                    await self._serve(client)
            except (aiomqtt.MqttError, OSError) as err:  # ssl.SSLError is an OSError
                raise_if_stopping(err)  # a stop whose goodbye timed out is still a stop
                failures += 1
                # Logged once per outage, not at every retry.
                log_at = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(log_at, "alarm MQTT: broker %s unavailable (%s); alarm changes are queued, at most %d",
                        self.cfg.url, err, self.cfg.queue_size)
            except Exception:  # a bug here must not end the service's task group: log, back off, retry
                failures += 1
                log.exception("alarm MQTT: unexpected error; retrying")
            finally:
                self.stats.connected = False
                if client is not None:
                    _consume_loss(client)
            await asyncio.sleep(self._backoff.next_delay())

    async def _serve(self, client: aiomqtt.Client) -> None:
        # Queued changes first (they are older), then every alarm's current state, then live changes.
        await self._drain(client)
        for alarm in list(self._alarms()):
            await self._publish(client, self.topic(alarm.id), alarm_payload(alarm, None))
        lost = _lost(client)
        while True:
            await self._drain(client)
            self._wake.clear()
            if not self._queue:
                waker: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait((waker, lost), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                if lost.done():  # noticed while idle: reconnect now rather than at the next change
                    raise aiomqtt.MqttError(f"connection to {self.cfg.url} lost")

    async def _drain(self, client: aiomqtt.Client) -> None:
        while self._queue:
            item = self._queue[0]
            await self._publish(client, *item)
            # `offer` may have dropped it meanwhile; remove it only if it is still at the head.
            if self._queue and self._queue[0] is item:
                self._queue.popleft()

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=self.cfg.qos, retain=self.cfg.retain, timeout=PUBLISH_TIMEOUT_S)
        self.stats.published += 1


def _lost(client: aiomqtt.Client) -> asyncio.Future[None]:
    """Resolves when the connection drops; aiomqtt has no public way to notice that while idle."""
    return client._disconnected


def _consume_loss(client: aiomqtt.Client) -> None:
    # aiomqtt leaves the loss error unretrieved when the connection dropped; asyncio would log it as lost.
    lost = _lost(client)
    if lost.done() and not lost.cancelled():
        lost.exception()
