"""A site's uplink: samples from the bus, in numbered batches through the durable outbox, to the central broker.

Two loops. The batcher takes the bus subscription's samples into batches (by size and age) and appends
each to the outbox, where it is durable before anything is published. The link connects (MQTT 5, clean
start: nothing rests on the broker's session), subscribes to its retained acknowledgement topic, and
publishes batches in order from the first unacknowledged one, at most `max_in_flight` beyond the
centre's watermark. A batch leaves the outbox only when the centre acknowledges it as committed. After any
outage (broker, link, either end restarted) or when no acknowledgement comes for `ack_timeout_s`, it
publishes again from the first unacknowledged batch: the same batches, with the same numbers, which the
centre stores once.

A third loop, the record writer, puts the site's alarm transitions, events and audit entries (offered by
the journal, service/fleet/records_feed.py) into the same outbox as batches of records: numbered in the
same sequence, so they are acknowledged, freed and replayed exactly as the sample batches are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from drivers.backoff import Backoff
from drivers.mqtt_link import client_tls_context
from service.bus import SampleBus
from service.fleet import records, wire
from service.fleet.outbox import OutBatch, Outbox
from service.fleet.records import Record
from service.fleet_config import UplinkConfig
from service.model import Sample, utcnow
from service.tasks import raise_if_stopping

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0


@dataclass
class UplinkStats:
    """Counters for /metrics and health."""

    connected: bool = False
    connects: int = 0
    published_batches: int = 0
    resent_batches: int = 0       # published again after an outage or an acknowledgement timeout
    acked_batches: int = 0
    resends: int = 0              # times the link started again from the watermark
    records: int = 0              # alarm, event and audit records put in the outbox
    record_batches: int = 0


class Uplink:
    """The site end of the fleet link; `run` until cancelled."""

    def __init__(self, cfg: UplinkConfig, bus: SampleBus, *, backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.sub = bus.subscribe("uplink", cfg.queue_size)  # now, so nothing published after this is missed
        self.outbox = Outbox(cfg.outbox_dir, max_bytes=cfg.outbox_max_bytes, segment_bytes=cfg.outbox_segment_bytes)
        self.stats = UplinkStats()
        self._wake = asyncio.Event()
        self._batch: list[Sample] = []
        self._backoff = backoff or Backoff(0.2, cfg.reconnect_max_s)
        self._high = 0                 # highest number published since the last start from the watermark
        self.opened = asyncio.Event()
        self._append_lock = asyncio.Lock()  # one outbox append at a time: numbers reach the disk in order
        self._records: list[tuple[Record, asyncio.Future[None]]] = []
        self._records_wake = asyncio.Event()
        self._records_running = False

    @property
    def lag_s(self) -> float:
        """Age of the oldest batch the centre has not acknowledged (0 when none)."""
        oldest = self.outbox.oldest_unacked()
        return max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0

    async def run(self) -> None:
        """Batch and publish until cancelled; on cancellation what was taken from the bus goes to the outbox."""
        self.outbox.open()
        self.opened.set()
        try:
            await _first_failure([self._batcher(), self._link(), self._record_writer()])
        finally:
            self.outbox.close()

    # ---- batches into the outbox -----------------------------------------------------------------

    async def _batcher(self) -> None:
        size, q = self.cfg.batch_size, self.sub.queue
        try:
            while True:
                batch = self._batch = [await q.get()]
                batch.extend(self.sub.drain(size - 1))
                deadline = time.monotonic() + self.cfg.batch_max_age_s
                while len(batch) < size:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(q.get(), left))
                    except TimeoutError:
                        break
                    batch.extend(self.sub.drain(size - len(batch)))
                self._batch = []  # handed over: the outbox owns it from here, also if cancelled mid-append
                await self._append(batch)
                self._wake.set()
        except asyncio.CancelledError:
            rest = self._batch + self.sub.drain(10**9)
            self._batch = []
            for i in range(0, len(rest), size):
                await asyncio.shield(self._append(rest[i:i + size]))
            raise

    async def _append(self, entries: list[Sample]) -> OutBatch:
        async with self._append_lock:
            return await self.outbox.append(entries)

    # ---- records into the outbox -----------------------------------------------------------------

    def offer_record(self, record: Record) -> asyncio.Future[None] | None:
        """Queue a record for the outbox; a future done when it is durable there (None before `run`)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._records.append((record, done))
        self._records_wake.set()
        return done if self._records_running else None

    async def _record_writer(self) -> None:
        self._records_running = True
        try:
            while True:
                await self._records_wake.wait()
                self._records_wake.clear()
                while self._records:
                    await asyncio.shield(self._write_records())
        except asyncio.CancelledError:
            while self._records:
                await asyncio.shield(self._write_records())
            raise
        finally:
            self._records_running = False

    async def _write_records(self) -> None:
        """What is queued (up to MAX_RECORDS) as one batch of records; their futures done when it is durable."""
        taken, self._records = self._records[:records.MAX_RECORDS], self._records[records.MAX_RECORDS:]
        try:
            await self._append(records.to_entries([r for r, _ in taken]))
        except Exception as err:
            for _, done in taken:
                if not done.done():
                    done.set_exception(err)
            raise
        self.stats.records += len(taken)
        self.stats.record_batches += 1
        for _, done in taken:
            if not done.done():
                done.set_result(None)
        self._wake.set()

    # ---- the link --------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        cfg = self.cfg
        url = urlsplit(cfg.url)
        tls = client_tls_context(cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file) \
            if url.scheme == "mqtts" else None
        will = aiomqtt.Will(wire.status_topic(cfg.site), wire.encode_status(cfg.site, False), qos=1, retain=True)
        return aiomqtt.Client(url.hostname or "", url.port or (8883 if tls else 1883), username=cfg.username,
                              password=cfg.password, identifier=cfg.client_id or f"heatrec-site-{cfg.site}",
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, will=will,
                              tls_context=tls, timeout=PUBLISH_TIMEOUT_S, keepalive=cfg.keepalive_s)

    async def _link(self) -> None:
        failures = 0
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(wire.ack_topic(self.cfg.site), qos=1)
                    self.stats.connected = True
                    self.stats.connects += 1
                    if failures:
                        log.info("uplink %s: connected to %s again; sending from batch %d", self.cfg.site,
                                 self.cfg.url, self.outbox.watermark + 1)
                    failures = 0
                    self._backoff.reset()
                    try:
                        await _first_failure([self._receive(client), self._send(client), self._status(client)])
                    except asyncio.CancelledError:
                        # An orderly stop says goodbye (the will is only for a lost connection).
                        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                            await asyncio.shield(client.publish(
                                wire.status_topic(self.cfg.site), wire.encode_status(self.cfg.site, False),
                                qos=1, retain=True, timeout=2.0))
                        raise
            except (aiomqtt.MqttError, OSError) as err:  # ssl.SSLError is an OSError
                raise_if_stopping(err)  # a stop whose goodbye timed out is still a stop
                failures += 1
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "uplink %s: central broker %s unavailable (%s); batches are kept in the outbox "
                        "(%d held)", self.cfg.site, self.cfg.url, err, self.outbox.backlog_batches)
            finally:
                self.stats.connected = False
            await asyncio.sleep(self._backoff.next_delay())

    async def _receive(self, client: aiomqtt.Client) -> None:
        topic = wire.ack_topic(self.cfg.site)
        async for message in client.messages:
            if message.topic.value != topic or not isinstance(message.payload, bytes | bytearray):
                continue
            try:
                ack = wire.decode_ack(bytes(message.payload))
            except wire.Malformed as err:
                log.warning("uplink %s: acknowledgement ignored: %s", self.cfg.site, err)
                continue
            if ack.site != self.cfg.site or ack.epoch != self.outbox.epoch:
                continue  # of an earlier outbox: says nothing about this one's batches
            before = self.outbox.watermark
            if self.outbox.acknowledge(ack.watermark):
                self.stats.acked_batches += ack.watermark - before
                self._wake.set()

    async def _send(self, client: aiomqtt.Client) -> None:
        cfg, box = self.cfg, self.outbox
        cursor = box.watermark + 1
        self._high = box.watermark
        seen, deadline = box.watermark, None
        topic = wire.batch_topic(cfg.site)
        while True:
            now = time.monotonic()
            if box.watermark != seen:
                seen, deadline = box.watermark, None
            cursor = max(cursor, box.watermark + 1)
            if cursor <= box.durable_seq and cursor - box.watermark <= cfg.max_in_flight:
                batch = box.get(cursor)
                if batch is not None:
                    kind, body = wire.KIND_SAMPLES, batch.body
                    if records.is_records(body):  # the outbox's form of records to the wire's
                        kind, body = wire.KIND_RECORDS, _records_body(cfg.site, batch)
                    payload = wire.encode_message(cfg.site, box.epoch, batch.seq, max(box.base, 1), batch.created,
                                                  box.backlog_samples, box.backlog_batches, body, kind=kind)
                    await client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT_S)
                    self.stats.published_batches += 1
                    if batch.seq <= self._high:
                        self.stats.resent_batches += 1
                    self._high = max(self._high, batch.seq)
                cursor += 1
                continue
            outstanding = cursor - 1 > box.watermark
            if outstanding and deadline is None:
                deadline = now + cfg.ack_timeout_s
            if deadline is not None and now >= deadline:
                # The centre may have lost them (an instance killed with them in hand): from the watermark again.
                log.info("uplink %s: no acknowledgement for %.0f s; sending again from batch %d", cfg.site,
                         cfg.ack_timeout_s, box.watermark + 1)
                self.stats.resends += 1
                cursor, deadline = box.watermark + 1, None
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if deadline is None else max(0.0, deadline - now))

    async def _status(self, client: aiomqtt.Client) -> None:
        topic = wire.status_topic(self.cfg.site)
        while True:
            box = self.outbox
            doc = wire.encode_status(self.cfg.site, True, time=utcnow().isoformat(), epoch=box.epoch,
                                     watermark=box.watermark, next_seq=box.next_seq,
                                     backlog_batches=box.backlog_batches, backlog_samples=box.backlog_samples,
                                     lag_s=round(self.lag_s, 3), lost_batches=box.lost_batches,
                                     dropped_samples=self.sub.dropped + box.spool.stats.dropped_samples)
            await client.publish(topic, doc, qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S)
            await asyncio.sleep(self.cfg.status_interval_s)


def _records_body(site: str, batch: OutBatch) -> bytes:
    """A batch of records for the wire; one that does not decode (it cannot: they were checked) goes empty."""
    try:
        return records.wire_body(batch.body)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        log.error("uplink %s: the records of batch %d do not decode (%s): sent empty", site, batch.seq, err)
        return records.encode_body([])


async def _first_failure(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines together until one ends (its error raised) or this is cancelled; the rest are cancelled."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, aiomqtt.MqttError | OSError):
                log.error("uplink task ended with %r", r)
