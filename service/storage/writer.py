"""Batched sample writer: COPY into a staging table, then an idempotent insert into `samples`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

from service.bus import Subscription
from service.config import StorageConfig
from service.model import Sample
from service.storage.points import register_point

log = logging.getLogger(__name__)

_STAGE = "samples_stage"


@dataclass
class WriterStats:
    """Counters exposed as metrics and in health."""

    rows_written: int = 0
    batches: int = 0
    last_batch_seconds: float = 0.0
    write_errors: int = 0
    pending: int = 0
    connected: bool = False


class SampleWriter:
    """Take samples from a bus subscription and write them in batches by size and age.

    A batch that fails stays in memory and is retried (with capped backoff) before anything
    newer, so order and content survive a database restart; the bus subscription's bound is
    the backpressure limit.
    """

    def __init__(self, pool: asyncpg.Pool, sub: Subscription, cfg: StorageConfig, keys: dict[str, int]) -> None:
        self._pool, self._sub, self._cfg = pool, sub, cfg
        self._keys = dict(keys)
        self.stats = WriterStats()
        self._failing = False

    async def run(self) -> None:
        """Write until cancelled; on cancellation flush what is already taken, if the database answers."""
        batch: list[Sample] = []
        try:
            while True:
                if not batch:
                    batch.append(await self._sub.queue.get())
                batch.extend(self._sub.drain(self._cfg.batch_size - len(batch)))
                deadline = time.monotonic() + self._cfg.batch_max_age_s
                while len(batch) < self._cfg.batch_size and time.monotonic() < deadline:
                    try:
                        batch.append(await asyncio.wait_for(self._sub.queue.get(),
                                                            deadline - time.monotonic()))
                    except TimeoutError:
                        break
                    batch.extend(self._sub.drain(self._cfg.batch_size - len(batch)))
                self.stats.pending = len(batch) + self._sub.queue.qsize()
                await self._write_with_retry(batch)
                batch = []
        except asyncio.CancelledError:
            batch.extend(self._sub.drain(10**9))
            if batch:
                try:
                    await asyncio.shield(asyncio.wait_for(self.write(batch), 10))
                except Exception as err:
                    log.error("could not flush %d samples at shutdown: %s", len(batch), err)
            raise

    async def _write_with_retry(self, batch: list[Sample]) -> None:
        delay = 0.5
        while True:
            try:
                await self.write(batch)
                if self._failing:
                    log.info("database writes recovered")
                    self._failing = False
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
                self.stats.write_errors += 1
                self.stats.connected = False
                if not self._failing:
                    log.warning("database write failed, holding %d samples and retrying: %s", len(batch), err)
                    self._failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def write(self, batch: list[Sample]) -> int:
        """Write one batch now; return the rows inserted (duplicates are skipped)."""
        t0 = time.perf_counter()
        async with self._pool.acquire() as conn:
            records = []
            for s in batch:
                key = self._keys.get(s.point)
                if key is None:
                    key = self._keys[s.point] = await register_point(conn, s.point)
                records.append((s.source_time, key, s.value, int(s.quality)))
            async with conn.transaction():
                await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
                                   "(LIKE samples INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                await conn.copy_records_to_table(_STAGE, records=records,
                                                 columns=["time", "point_key", "value", "quality"])
                # ON CONFLICT makes re-delivery idempotent: a reading (point, source time) is stored once.
                status = await conn.execute(f"INSERT INTO samples SELECT * FROM {_STAGE} "
                                            "ON CONFLICT (point_key, time) DO NOTHING")
        inserted = int(status.rsplit(" ", 1)[1])
        self.stats.rows_written += inserted
        self.stats.batches += 1
        self.stats.last_batch_seconds = time.perf_counter() - t0
        self.stats.connected = True
        return inserted
