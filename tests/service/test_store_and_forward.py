"""Store-and-forward against the real PostgreSQL: an outage under load, kill -9 of a spooling process, replay twice.

The issue's full-size outage run (PostgreSQL down 60 s under 5,000 samples/s) is the same test scaled up:
HEATREC_OUTAGE_SECONDS=90 HEATREC_OUTAGE_DOWN=60 HEATREC_OUTAGE_RATE=5000 \
    .venv/bin/python -m pytest -q -k outage tests/service
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from service.bus import SampleBus
from service.config import DatabaseConfig, StorageConfig
from service.localservers import PostgresCluster
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.storage.spool import Spool
from service.storage.writer import SampleWriter
from tests.support import wait_until

T0 = datetime(2026, 2, 1, tzinfo=UTC)
POINTS = 10
ROOT = Path(__file__).resolve().parents[2]


def sample(i: int) -> Sample:
    """Sample number i: its value is i, its source time unique per point."""
    return Sample(f"dev.p{i % POINTS}", float(i), Quality.GOOD, T0 + timedelta(milliseconds=i), T0)


async def prepared_pool(db: DatabaseConfig) -> asyncpg.Pool:
    pool = await connect_pool(db, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


async def assert_exactly(pool: asyncpg.Pool, n: int) -> None:
    """Rows hold the values 0..n-1, each once."""
    row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT value) AS d, min(value) AS lo, max(value) AS hi "
                              "FROM samples")
    assert (row["n"], row["d"], row["lo"], row["hi"]) == (n, n, 0, n - 1)


async def test_postgres_outage_under_load_loses_and_duplicates_nothing(postgres: PostgresCluster,
                                                                       database: DatabaseConfig,
                                                                       tmp_path: Path) -> None:
    seconds = float(os.environ.get("HEATREC_OUTAGE_SECONDS", "10"))
    rate = int(os.environ.get("HEATREC_OUTAGE_RATE", "2000"))
    down = float(os.environ.get("HEATREC_OUTAGE_DOWN", str(seconds * 0.4)))
    total = int(seconds * rate)
    pool = await prepared_pool(database)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=256 * 1024)
    spool.open()
    bus = SampleBus()
    cfg = StorageConfig(batch_size=2000, batch_max_age_s=0.1, write_timeout_s=3, retry_max_s=0.5)
    writer = SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
    task = asyncio.create_task(writer.run())

    async def produce() -> None:
        """Publish at a steady rate: catch up to rate * elapsed every 10 ms."""
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while sent < total:
            due = min(total, int((loop.time() - start) * rate))
            for i in range(sent, due):
                bus.publish(sample(i))
            sent = due
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(produce())
    try:
        await wait_until(lambda: writer.stats.rows_written > rate * seconds * 0.1, timeout=seconds, what="first rows")
        await asyncio.to_thread(postgres.stop)
        await wait_until(lambda: writer.stats.spooling and spool.stats.samples > rate * 0.5, timeout=15,
                         what="samples spooled while PostgreSQL is down")
        await asyncio.sleep(down)  # the outage, while samples keep coming
        assert not producer.done(), "the outage must end while samples are still arriving"
        # On the main thread: the server is tied to the thread that starts it (parent-death signal), and
        # a worker thread of asyncio.to_thread may end. The loop pauses ~1 s; the producer catches up after.
        postgres.start()
        await producer

        async def all_in() -> bool:
            return spool.stats.samples == 0 and await pool.fetchval("SELECT count(*) FROM samples") == total

        await wait_until(all_in, timeout=60, what="all samples committed after the outage")
        await assert_exactly(pool, total)
        assert writer.stats.write_errors > 0 and spool.stats.replayed_samples > 0
        assert not writer.stats.spooling and spool.stats.dropped_samples == 0
        # In order: spooled batches came back oldest first, so no replayed sample is older than an earlier one.
    finally:
        producer.cancel()
        task.cancel()
        await asyncio.gather(producer, task, return_exceptions=True)
        if not postgres.running:
            postgres.start()
        spool.close()
        await pool.close()


SPOOLING_PROCESS = """
import asyncio, sys
from pathlib import Path
import asyncpg
from service.bus import SampleBus
from service.config import StorageConfig
from service.localservers import free_port
from service.storage.spool import Spool
from service.storage.writer import SampleWriter
from tests.service.test_store_and_forward import sample

async def main() -> None:
    # The real writer, its database unreachable (nothing listens on the port): every batch goes to the spool.
    pool = await asyncpg.create_pool(host="127.0.0.1", port=free_port(), min_size=0, timeout=1)
    spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=64 * 1024)
    spool.open()
    bus = SampleBus()
    cfg = StorageConfig(batch_size=500, batch_max_age_s=0.01, write_timeout_s=1)
    asyncio.create_task(SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool).run())
    n = 0
    while True:
        for i in range(n, n + 500):
            bus.publish(sample(i))
        n += 500
        await asyncio.sleep(0.005)
        print(spool.stats.spooled_samples, flush=True)  # acknowledged: fsync'd

asyncio.run(main())
"""


async def test_kill_9_of_a_spooling_writer_then_replay_loses_and_duplicates_nothing(database: DatabaseConfig,
                                                                                   tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    argv = [sys.executable, "-c", SPOOLING_PROCESS, str(spool_dir)]
    # Plain Popen: we read its output line by line while it runs, then kill it.
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    acked = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while acked < 20_000 and time.monotonic() < deadline:
            acked = int(proc.stdout.readline() or 0) or acked
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert acked >= 20_000, "the spooling process did not get going"
    copy = tmp_path / "copy"
    shutil.copytree(spool_dir, copy)

    pool = await prepared_pool(database)
    try:
        for d in (spool_dir, copy):  # the second replay is a crash during replay, redone from the start
            spool = Spool(d, max_bytes=1 << 30, segment_bytes=64 * 1024)
            spool.open()
            held = spool.stats.samples
            assert held >= acked
            bus = SampleBus()
            cfg = StorageConfig(batch_max_age_s=0.05)
            writer = SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
            task = asyncio.create_task(writer.run())
            await wait_until(lambda sp=spool: sp.stats.samples == 0, timeout=30,  # type: ignore[misc]
                             what="spool replayed")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            spool.close()
            await assert_exactly(pool, held)
            assert not list(d.glob("seg-*.spool"))
    finally:
        await pool.close()


async def test_database_behind_diverts_to_spool_then_replays(database: DatabaseConfig, tmp_path: Path) -> None:
    pool = await prepared_pool(database)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=64 * 1024)
    spool.open()
    bus = SampleBus()
    cfg = StorageConfig(batch_size=1000, batch_max_age_s=0.05, queue_size=10_000, spool_above_queue=0.2)
    writer = SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
    for i in range(8000):  # a backlog far above 20 % of the queue, as when the database falls behind
        bus.publish(sample(i))
    task = asyncio.create_task(writer.run())
    try:
        async def all_in() -> bool:
            return spool.stats.samples == 0 and await pool.fetchval("SELECT count(*) FROM samples") == 8000

        await wait_until(all_in, timeout=30, what="backlog written and spool replayed")
        await assert_exactly(pool, 8000)
        assert spool.stats.spooled_samples >= 1000 and spool.stats.replayed_samples == spool.stats.spooled_samples
        assert writer.stats.write_errors == 0 and not writer.stats.spooling
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        spool.close()
        await pool.close()


async def test_full_spool_shows_in_service_health(tmp_path: Path) -> None:
    from service.app import Service
    from service.config import HeatrecConfig

    spool = Spool(tmp_path, max_bytes=8_000, segment_bytes=2_000)
    spool.open()
    for k in range(40):
        await spool.append([sample(i) for i in range(k * 20, k * 20 + 20)])
    svc = Service(HeatrecConfig())
    cfg = StorageConfig()
    svc.writer = SampleWriter(None, SampleBus().subscribe("storage", cfg.queue_size), cfg, {}, spool)  # type: ignore[arg-type]
    status, detail = svc.health()["spool"]
    assert status == "degraded" and f"{spool.stats.dropped_samples} dropped" in detail
    assert spool.stats.dropped_samples > 0
    spool.close()
