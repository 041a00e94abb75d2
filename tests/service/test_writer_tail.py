"""The writer's tail of a burst, its pending gauge and a connection the server ended, against the real PostgreSQL.

A partial batch is written at once when the queue is empty and no batch is in flight (the tail of a
burst does not wait out `batch_max_age_s`); while a batch is in flight the next one keeps filling, so
batches do not shrink under load. `heatrec_storage_pending` counts what is queued, taken or in flight
and not yet committed or spooled, and goes back to 0 once everything is stored.

A pooled connection whose session the server ended (PostgreSQL's fast shutdown, pg_terminate_backend)
and which the writer takes before asyncpg has read the end of the stream fails in asyncpg with
InternalClientError("cannot switch to state 11; another operation (2) is in progress"): the writer
treats it as the lost connection it is (spools, recovers, replays) instead of stopping the service. So
it does when the connection ends as it goes back to the pool, which asyncpg reports from the release.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.bus import SampleBus
from service.config import DatabaseConfig, HeatrecConfig, StorageConfig
from service.metrics import build_registry
from service.model import Quality, Sample
from service.storage.database import Database, connect_kwargs, connect_pool
from service.storage.migrations import migrate
from service.storage.spool import Spool
from service.storage.writer import SampleWriter
from tests.support import wait_until

T0 = datetime(2026, 3, 1, tzinfo=UTC)
POINTS = 10
AGE_S = 30.0  # far longer than any wait below: a batch that waits out its age fails the test


def sample(i: int) -> Sample:
    return Sample(f"dev.p{i % POINTS}", float(i), Quality.GOOD, T0 + timedelta(milliseconds=i), T0)


@pytest.fixture
async def pool(database: DatabaseConfig) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(database, max_size=4)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


def pending_gauge(writer: SampleWriter) -> float | None:
    """`heatrec_storage_pending` as a scrape of the service's registry reads it."""
    from service.app import Service

    svc = Service(HeatrecConfig())
    svc.writer = writer
    registry, _ = build_registry(svc)
    return registry.get_sample_value("heatrec_storage_pending")


async def count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM samples"))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("with_spool", [False, True], ids=["no-spool", "spool"])
@pytest.mark.parametrize("n", [37, 23_456])
async def test_burst_tail_is_written_without_waiting_out_the_batch_age(pool: asyncpg.Pool, tmp_path: Path,
                                                                      n: int, with_spool: bool) -> None:
    size = 1000
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=4 << 20) if with_spool else None
    if spool is not None:
        spool.open()
    bus = SampleBus()
    cfg = StorageConfig(batch_size=size, batch_max_age_s=AGE_S)
    writer = SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(n):  # a flood, not a multiple of the batch size, arriving at once
            bus.publish(sample(i))
        assert writer.stats.pending == n == pending_gauge(writer)

        async def all_in() -> bool:
            return await count(pool) == n

        await wait_until(all_in, timeout=10, what=f"{n} samples committed with batch_max_age_s = {AGE_S}")
        await wait_until(lambda: writer.stats.pending == 0, timeout=10, what="pending back to 0")
        assert pending_gauge(writer) == 0
        assert writer.stats.rows_written == n
        assert writer.stats.batches <= n // size + 2, writer.stats.batches  # full batches, not tiny ones
        assert writer.stats.write_errors == 0
        if spool is not None:
            assert spool.stats.spooled_samples == 0 and not writer.stats.spooling
    finally:
        await stop(task)
        if spool is not None:
            spool.close()
    assert await count(pool) == n


async def test_next_batch_fills_while_one_is_in_flight_and_pending_counts_it(pool: asyncpg.Pool,
                                                                           tmp_path: Path) -> None:
    size = 1000
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=4 << 20)
    spool.open()
    bus = SampleBus()
    sub = bus.subscribe("storage", 200_000)
    cfg = StorageConfig(batch_size=size, batch_max_age_s=AGE_S, write_timeout_s=60)
    writer = SampleWriter(pool, sub, cfg, {}, spool)
    locker = await pool.acquire()
    lock = locker.transaction()
    await lock.start()
    # Reads go on (COPY looks up the columns first), writes wait for this transaction.
    await locker.execute("LOCK TABLE samples IN EXCLUSIVE MODE")
    task = asyncio.create_task(writer.run())
    try:
        for i in range(size + 300):
            bus.publish(sample(i))

        async def first_batch_blocked() -> bool:
            # Not on `locker`: inside its transaction pg_stat_activity would stay as first read.
            waiting = await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND wait_event_type = 'Lock' AND query ILIKE 'COPY%'")
            return bool(waiting) and sub.queue.empty()

        # One full batch is in flight (its COPY waits for the lock) and the writer holds the 300 after it.
        await wait_until(first_batch_blocked, timeout=10, what="first batch in flight, the rest taken")
        for i in range(size + 300, size + 600):
            bus.publish(sample(i))
        assert writer.stats.pending == size + 600 == pending_gauge(writer)
        assert await count(pool) == 0
        await lock.commit()  # the database answers again

        async def all_in() -> bool:
            return await count(pool) == size + 600

        await wait_until(all_in, timeout=10, what="all samples committed")
        await wait_until(lambda: writer.stats.pending == 0, timeout=10, what="pending back to 0")
        assert pending_gauge(writer) == 0
        # 1,000 then 600: the 300 taken while the first batch was in flight waited for the 300 behind them.
        assert writer.stats.batches == 2
        assert writer.stats.rows_written == size + 600 and spool.stats.spooled_samples == 0
    finally:
        await stop(task)
        await pool.release(locker)
        spool.close()


class HoldTheEnd(asyncio.Protocol):
    """Between a connection's transport and asyncpg: data passes at once, the end of the stream is held.

    PostgreSQL ends a session by sending a FATAL ErrorResponse and then closing the socket; asyncpg reads
    the two in different turns of the event loop. Holding the end back keeps the connection in that
    window (message read, end not yet) for as long as the test needs, instead of hoping to hit it.
    """

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.ended = asyncio.Event()
        self._lost: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool:
        self.ended.set()
        return True  # keep the transport open: the loss is delivered by release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()
        self._lost.append(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def release(self) -> None:
        for exc in self._lost:
            self.inner.connection_lost(exc)
        self._lost.clear()


async def test_a_connection_the_server_ended_is_a_lost_connection(database: DatabaseConfig, tmp_path: Path) -> None:
    pool = await connect_pool(database, min_size=1, max_size=1)  # one connection: the writer must take it
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=4 << 20)
    spool.open()
    admin = await asyncpg.connect(**connect_kwargs(database))
    task: asyncio.Task[None] | None = None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            raw = conn._con  # fault injection needs asyncpg's transport: there is no public handle on it
        hold = HoldTheEnd(raw._protocol)
        raw._transport.set_protocol(hold)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)  # what a fast shutdown does to idle sessions
        await wait_until(hold.ended.is_set, timeout=10, what="the server's FATAL and end of stream received")

        bus = SampleBus()
        cfg = StorageConfig(batch_size=1000, batch_max_age_s=AGE_S)
        writer = SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
        task = asyncio.create_task(writer.run())
        for i in range(50):
            bus.publish(sample(i))

        def failed_once() -> bool:
            assert not task.done(), f"the writer stopped: {task.exception()!r}"
            return writer.stats.write_errors >= 1

        await wait_until(failed_once, timeout=10, what="the write on the ended connection failed")
        hold.release()  # asyncpg had aborted the connection; let it see the end too

        async def all_in() -> bool:
            assert not task.done(), f"the writer stopped: {task.exception()!r}"
            return await count(pool) == 50

        await wait_until(all_in, timeout=15, what="the spooled batch replayed on a new connection")
        await wait_until(lambda: writer.stats.pending == 0, timeout=10, what="pending back to 0")
        assert writer.stats.connected and not writer.stats.spooling
    finally:
        if task is not None:
            await stop(task)
        spool.close()
        await admin.close()
        await pool.close()


class EndsAsReleased(Database):
    """The real pool, whose first connection lent out ends one turn of the loop before its release."""

    ends = 1

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:  # type: ignore[override]
        """Lend a connection; end the first one as it goes back (fault injection on asyncpg's own object)."""
        ctx = super().acquire()
        conn = await ctx.__aenter__()
        try:
            yield conn
        finally:
            if self.ends:
                self.ends -= 1
                asyncio.get_running_loop().call_soon(conn._con.terminate)
            await ctx.__aexit__(None, None, None)


async def test_a_connection_that_ends_as_it_is_released_is_a_lost_connection(database: DatabaseConfig,
                                                                             tmp_path: Path) -> None:
    """The writer outlives asyncpg's "release() called on a free connection holder" (a CI failure).

    asyncpg releases a connection in a task of its own; a connection whose end is processed before that
    task runs has gone back to the pool already, and the release raises. Ending the connection in the
    turn between the two puts the writer in that window every time: its batch was committed, its release
    fails, and it must spool the batch and replay it without a duplicate, not stop.
    """
    pool = await connect_pool(database, min_size=1, max_size=2)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=4 << 20)
    spool.open()
    db = EndsAsReleased.from_pool(pool)
    task: asyncio.Task[None] | None = None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        bus = SampleBus()
        cfg = StorageConfig(batch_size=1000, batch_max_age_s=AGE_S)
        writer = SampleWriter(db, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
        task = asyncio.create_task(writer.run())
        for i in range(50):
            bus.publish(sample(i))

        async def all_in() -> bool:
            assert not task.done(), f"the writer stopped: {task.exception()!r}"
            return await count(pool) == 50 and writer.stats.pending == 0 and spool.stats.samples == 0

        await wait_until(all_in, timeout=15, what="every sample stored once, the writer running")
        assert db.ends == 0 and writer.stats.write_errors >= 1, "the release did not fail: the test proved nothing"
        assert await pool.fetchval("SELECT count(DISTINCT (point_key, time)) FROM samples") == 50
    finally:
        if task is not None:
            await stop(task)
        spool.close()
        await pool.close()
