"""Batched sample writer: COPY into `samples`, falling back to an idempotent insert; spool when the database is away.

Fast path: COPY a batch straight into the hypertable. The unique (point_key, time) index rejects a
batch holding a reading that is already stored (a re-delivery, a replay); only then is the batch
written again through a staging table with `INSERT … ON CONFLICT DO NOTHING`, so every reading is
stored exactly once and the common case pays nothing for idempotency.

Store-and-forward: with a spool, a batch the database does not take (error, or slower than
`write_timeout_s`) and every batch after it go to the local spool until the database answers
again; a replay task then feeds the spool back, oldest first, at the original timestamps, while
live batches go straight to the database. Batches also go to the spool while the bus queue is more
than `spool_above_queue` full, so a slow database never makes the bus drop samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import asyncpg

from service.bus import Subscription
from service.config import StorageConfig
from service.model import Sample
from service.storage.database import Database, DatabaseDown
from service.storage.points import register_point
from service.storage.spool import Spool

log = logging.getLogger(__name__)

_STAGE = "samples_stage"
_COLUMNS = ["time", "point_key", "value", "quality"]
# What a database that is down, restarting or overloaded raises; anything else is a bug and propagates.
DB_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
_UNFINISHED: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncio.CancelledError)
_Record = tuple[object, int, float | None, int]
_InFlight = deque[tuple[list[Sample], asyncio.Task[int]]]


class ConnectionEnded(ConnectionResetError):
    """The server had ended the pooled connection (a fast shutdown, pg_terminate_backend) when it was used.

    PostgreSQL sends a FATAL ErrorResponse to every idle session before it closes them. If asyncpg reads
    that message and a new query starts on the connection before asyncpg has read the end of the stream
    (one turn of the event loop later), asyncpg fails the query with InternalClientError("cannot switch to
    state N; another operation (2) is in progress") and aborts the connection (asyncpg issue #1069). No
    second coroutine is involved: tests/service/test_writer_tail.py reproduces it with one. It is a lost
    connection, so it is reported as one (a ConnectionError, hence in DB_ERRORS).
    """


@dataclass
class WriterStats:
    """Counters exposed as metrics and in health."""

    rows_written: int = 0
    batches: int = 0
    last_batch_seconds: float = 0.0
    write_errors: int = 0
    connected: bool = False
    fallback_batches: int = 0         # batches that met an existing reading and went the idempotent way
    spooling: bool = False            # live batches are going to the spool (database down or behind)
    # Counts what the writer holds when read (set by the writer); a stored number would go stale.
    held: Callable[[], int] = field(default=lambda: 0, repr=False, compare=False)

    @property
    def pending(self) -> int:
        """Samples queued for the writer or taken by it and not yet committed or spooled: 0 when idle."""
        return self.held()


class SampleWriter:
    """Take samples from a bus subscription and write them in batches by size and age, or at once when idle.

    Without a spool, a batch that fails stays in memory and is retried before anything newer (the
    bus queue bound is then the backpressure limit). With a spool, it goes to disk instead.
    """

    def __init__(self, pool: Database | asyncpg.Pool, sub: Subscription, cfg: StorageConfig, keys: dict[str, int],
                 spool: Spool | None = None) -> None:
        self._pool = pool if isinstance(pool, Database) else Database.from_pool(pool)
        self._sub, self._cfg = sub, cfg
        self._keys = dict(keys)
        self.spool = spool
        self.stats = WriterStats(held=self._held)
        self._failing = False
        self._batch: list[Sample] = []      # taken from the queue, not handed to a write task yet
        self._inflight: _InFlight = deque()  # (batch, write task), oldest first, until settled

    def _held(self) -> int:
        """Queued + being collected (or written/spooled in place) + in flight and not committed yet."""
        busy = sum(len(b) for b, t in self._inflight
                   if not t.done() or t.cancelled() or t.exception() is not None)  # a failed one is spooled next
        return self._sub.queue.qsize() + len(self._batch) + busy

    # ---- the live path -------------------------------------------------------------------------

    async def run(self) -> None:
        """Write until cancelled; on cancellation flush what is taken to the database or the spool."""
        inflight = self._inflight
        replayer = asyncio.create_task(self._replay_loop(), name="storage-replay") if self.spool else None
        try:
            while True:
                if self._sub.queue.empty():
                    while inflight:  # idle: settle what is in flight before blocking on the queue
                        await self._settle_oldest()
                batch: list[Sample] = []
                self._batch = batch
                await self._collect(batch)
                if self.spool is not None and (self._failing or self._backlogged()):
                    while inflight:  # keep order: earlier batches settle (or spool) before this one
                        await self._settle_oldest()
                    self._set_spooling(True)
                    await self._to_spool(batch)
                elif self.spool is None:
                    await self._write_with_retry(batch)
                else:
                    self._set_spooling(False)
                    # Pipelining: the next batch is collected and encoded while this one is in flight.
                    inflight.append((batch, asyncio.create_task(self._write_timed(batch))))
                    self._batch = []
                    while len(inflight) >= self._cfg.max_in_flight:
                        await self._settle_oldest()
                self._batch = []
        except asyncio.CancelledError:
            if replayer is not None:
                replayer.cancel()
                await asyncio.gather(replayer, return_exceptions=True)
            self._batch = self._batch + self._sub.drain(10**9)
            try:
                await asyncio.shield(self._flush_at_shutdown(inflight, self._batch))
            finally:
                self._batch = []
                inflight.clear()
            raise

    async def _collect(self, batch: list[Sample]) -> list[Sample]:
        """Fill `batch` (owned by the caller, so a cancellation mid-wait loses nothing) by size and age.

        A batch is written when it holds `batch_size` samples, when `batch_max_age_s` has passed since its
        first one, or as soon as the queue is empty while no batch is in flight: the database is then idle
        and nothing more is at hand, so the tail of a burst does not wait out the age. While a batch is in
        flight the next one keeps filling from the queue, so under load batches still reach `batch_size`.
        While the database is failing, batches go by size and age only (one spool record, one fsync each).
        """
        size, sub = self._cfg.batch_size, self._sub
        batch.append(await sub.queue.get())
        batch.extend(sub.drain(size - 1))
        deadline = time.monotonic() + self._cfg.batch_max_age_s
        while len(batch) < size:  # and so the queue is empty: the drain stopped short
            left = deadline - time.monotonic()
            if left <= 0:
                break
            busy = [task for _, task in self._inflight if not task.done()]
            if busy:  # take what arrives while the database works on the earlier batch
                await asyncio.wait(busy, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            elif not self._failing:
                break  # nothing queued, nothing in flight: write what is taken now
            else:
                try:
                    batch.append(await asyncio.wait_for(sub.queue.get(), left))
                except TimeoutError:
                    break
            batch.extend(sub.drain(size - len(batch)))
        return batch

    def _backlogged(self) -> bool:
        q = self._sub.queue
        return q.qsize() > self._cfg.spool_above_queue * q.maxsize

    def _set_spooling(self, on: bool) -> None:
        if on and not self.stats.spooling:
            log.warning("storage is spooling to %s (%s)", self.spool.dir if self.spool else "?",
                        "database unreachable" if self._failing else "database behind, bus queue filling")
        self.stats.spooling = on

    async def _write_timed(self, batch: list[Sample]) -> int:
        return await asyncio.wait_for(self.write(batch), self._cfg.write_timeout_s)

    async def _settle_oldest(self) -> None:
        """Settle the oldest batch in flight; it stays listed until then, so a cancellation mid-way leaves it
        to _flush_at_shutdown and it is counted as pending while it is spooled."""
        await self._settle(*self._inflight[0])
        self._inflight.popleft()

    async def _settle(self, batch: list[Sample], task: asyncio.Task[int]) -> None:
        try:
            await asyncio.shield(task)  # a cancelled writer still lets the write finish (see _flush_at_shutdown)
            self._recovered()
        except DB_ERRORS as err:
            self._failed(err, len(batch))
            await self._to_spool(batch)

    async def _to_spool(self, batch: list[Sample]) -> None:
        """Append to the spool; if the disk fails too, hold the batch in memory and retry the database."""
        assert self.spool is not None
        try:
            await self.spool.append(batch)
        except OSError as err:
            self.spool.stats.write_errors += 1
            log.error("spool write failed (%s): holding %d samples in memory until the database takes them",
                      err, len(batch))
            await self._write_with_retry(batch)

    def add_keys(self, keys: dict[str, int]) -> None:
        """Point keys learnt elsewhere (the registry synced when the database came up)."""
        self._keys.update(keys)

    def _failed(self, err: BaseException, n: int) -> None:
        self.stats.write_errors += 1
        self.stats.connected = False
        self._pool.failed(err)
        if not self._failing:
            where = "spooling to disk" if self.spool else "holding them in memory and retrying"
            # A database known to be away has been reported by its supervisor already: once is enough.
            level = logging.INFO if isinstance(err, DatabaseDown) else logging.WARNING
            log.log(level, "database write of %d samples failed, %s: %s", n, where,
                    f"{err.__class__.__name__}: {err}")
            self._failing = True

    def _recovered(self) -> None:
        self.stats.connected = True
        if self._failing:
            held = self.spool.stats.samples if self.spool else 0
            log.info("database writes recovered%s", f"; replaying {held} spooled samples" if held else "")
            self._failing = False

    async def _write_with_retry(self, batch: list[Sample]) -> None:
        delay = 0.5
        while True:
            try:
                await self._write_timed(batch)
                self._recovered()
                return
            except DB_ERRORS as err:
                self._failed(err, len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _flush_at_shutdown(self, inflight: _InFlight, rest: list[Sample]) -> None:
        failed: list[Sample] = []
        for b, task in inflight:
            try:
                await asyncio.wait_for(task, self._cfg.write_timeout_s)
            except _UNFINISHED:
                failed.extend(b)  # in order, ahead of what was never sent
        rest = failed + rest
        if not rest:
            return
        if not self._failing:
            try:
                await asyncio.wait_for(self.write(rest), min(10.0, self._cfg.write_timeout_s))
                return
            except DB_ERRORS as err:
                log.warning("could not write %d samples at shutdown: %s", len(rest), err)
        if self.spool is not None:
            try:
                await self.spool.append(rest)
                log.info("spooled %d samples at shutdown; they are replayed on the next start", len(rest))
            except OSError as err:
                self.spool.stats.write_errors += 1
                log.error("lost %d samples at shutdown: database unavailable and spool write failed: %s",
                          len(rest), err)
        else:
            log.error("could not flush %d samples at shutdown: database unavailable and no spool", len(rest))

    # ---- database writes -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the block; a connection the server had ended arrives as ConnectionEnded.

        One owner per connection, by construction: every query of the writer (live batches, the tail of a
        burst, replay, its probe, the flush at shutdown) runs inside this block on a connection the pool
        lends to that block alone, and no connection object leaves it (none is stored or handed to a
        task). Concurrent writes therefore use different connections; a write that is cancelled (timeout,
        shutdown) goes back to the pool only once asyncpg has settled its cancellation.

        The release can fail too: asyncpg releases in a task of its own (under asyncio.shield), so a
        connection whose end is processed in between has already gone back to the pool through its close
        callback, and the release then raises InternalClientError("called on a free connection holder").
        That is the same lost connection, after the block: the batch is spooled and its replay skips
        whatever had been committed.
        """
        conn: asyncpg.Connection | None = None
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except asyncpg.InternalClientError as err:
                    if not _ended(conn):
                        raise  # asyncpg's own trouble on a live connection: a bug, not the database
                    raise ConnectionEnded(f"the server had ended the connection ({err})") from err
        except asyncpg.InternalClientError as err:
            if conn is None or not _ended(conn):
                raise
            raise ConnectionEnded(f"the connection ended while it went back to the pool ({err})") from err

    async def _ensure_keys(self, conn: asyncpg.Connection, batch: list[Sample]) -> None:
        """Register points not seen before (e.g. a driver's own status points)."""
        keys = self._keys
        for pid in {s.point for s in batch}.difference(keys):
            keys[pid] = await register_point(conn, pid)

    def _records(self, batch: list[Sample]) -> Iterator[_Record]:
        # A generator, not a list: COPY encodes each tuple as it is made, so a batch never holds
        # a second copy of itself in memory and the garbage collector has little to scan.
        keys = self._keys
        return ((s.source_time, keys[s.point], s.value, s.quality) for s in batch)

    async def write(self, batch: list[Sample]) -> int:
        """Write one batch now; return the rows inserted (readings already stored are skipped)."""
        t0 = time.perf_counter()
        async with self._connection() as conn:
            await self._ensure_keys(conn, batch)
            try:
                await conn.copy_records_to_table("samples", records=self._records(batch), columns=_COLUMNS)
                inserted = len(batch)
            except asyncpg.UniqueViolationError:
                self.stats.fallback_batches += 1
                inserted = await self._write_idempotent(conn, self._records(batch))
        self.stats.rows_written += inserted
        self.stats.batches += 1
        self.stats.last_batch_seconds = time.perf_counter() - t0
        return inserted

    async def write_idempotent(self, batch: list[Sample]) -> int:
        """Write a batch that may hold stored readings (a replay) the duplicate-safe way; return rows inserted."""
        async with self._connection() as conn:
            await self._ensure_keys(conn, batch)
            inserted = await self._write_idempotent(conn, self._records(batch))
        self.stats.rows_written += inserted
        self.stats.batches += 1
        return inserted

    @staticmethod
    async def _write_idempotent(conn: asyncpg.Connection, records: Iterator[_Record]) -> int:
        async with conn.transaction():
            await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
                               "(LIKE samples INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            await conn.copy_records_to_table(_STAGE, records=records, columns=_COLUMNS)
            # ON CONFLICT makes re-delivery idempotent: a reading (point, source time) is stored once.
            status = await conn.execute(f"INSERT INTO samples SELECT * FROM {_STAGE} "
                                        "ON CONFLICT (point_key, time) DO NOTHING")
        return int(status.rsplit(" ", 1)[1])

    # ---- replay --------------------------------------------------------------------------------

    async def _probe(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def _replay_loop(self) -> None:
        """Feed spooled batches back to the database, oldest first, whenever it answers."""
        spool = self.spool
        assert spool is not None
        delay = 0.5
        while True:
            sealed = spool.sealed()
            try:
                if not sealed:
                    if self._failing:
                        await asyncio.wait_for(self._probe(), self._cfg.write_timeout_s)
                        self._recovered()
                        delay = 0.5
                    elif spool.stats.samples and not self._backlogged() and await spool.seal_active():
                        continue
                    else:
                        spool.changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(spool.changed.wait(), 1.0)
                    continue
                if self._backlogged() and not self._failing:
                    await asyncio.sleep(0.1)  # the database is behind: live data first, replay after
                    continue
                seq = sealed[0]
                for end, samples in spool.read_segment(seq):
                    # The fast path is safe here too: a record already stored makes COPY fail whole,
                    # and the batch is then written the duplicate-safe way.
                    await asyncio.wait_for(self.write(samples), self._cfg.write_timeout_s)
                    spool.mark_replayed(seq, end, len(samples))
                    self._recovered()
                spool.remove(seq)
                delay = 0.5
            except DB_ERRORS as err:
                self._failed(err, 0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._cfg.retry_max_s)


def _ended(conn: asyncpg.Connection) -> bool:
    """True when asyncpg has closed `conn` (and so, once it ends, the pool has taken it back)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # the pool proxy is detached: the connection was closed and released
        return True
