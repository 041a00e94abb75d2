"""Sample ingest: heatrec's SampleWriter against a bare asyncpg COPY into the same hypertable.

Run: .venv/bin/python bench/bench_ingest.py [--rows 200000] [--batch 5000]
Starts its own PostgreSQL + TimescaleDB cluster on a free loopback port and removes it after.
The baseline is the ceiling: COPY straight into `samples` of records built beforehand.
heatrec's writer is timed from the first publish on the bus to the last row committed; it COPYs
into `samples` and only takes the idempotent staging path when a batch meets stored readings.
Also measured: spool append (fsync'd per batch) and spool replay into the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.bus import SampleBus
from service.config import DatabaseConfig, StorageConfig, parse_config
from service.localservers import PostgresCluster, free_port
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.storage.points import sync_points
from service.storage.spool import Spool
from service.storage.writer import SampleWriter

N_POINTS = 100


def make_samples(n: int, start: datetime) -> list[Sample]:
    """`n` samples spread over N_POINTS points at 1 s steps (distinct point and time)."""
    return [Sample(f"dev.p{i % N_POINTS}", float(i), Quality.GOOD, start + timedelta(seconds=i // N_POINTS), start)
            for i in range(n)]


async def run(db: DatabaseConfig, rows: int, batch: int, spool_dir: Path) -> dict[str, float]:
    cfg = parse_config({"devices": [{"id": "dev", "protocol": "modbus", "endpoint": "127.0.0.1:502",
                                     "points": [{"id": f"p{i}", "address": i} for i in range(N_POINTS)]}]})
    pool = await connect_pool(db, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, cfg)
    out: dict[str, float] = {}

    # Baseline: bare COPY of the same records straight into the hypertable.
    base = make_samples(rows, datetime(2025, 1, 1, tzinfo=UTC))
    recs = [(s.source_time, keys[s.point], s.value, int(s.quality)) for s in base]
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, rows, batch):
            await conn.copy_records_to_table("samples", records=recs[i:i + batch],
                                             columns=["time", "point_key", "value", "quality"])
    out["baseline"] = rows / (time.perf_counter() - t0)

    # heatrec: the writer (with its spool, unused while the database keeps up), fed through the bus.
    samples = make_samples(rows, datetime(2025, 6, 1, tzinfo=UTC))
    spool = Spool(spool_dir / "live", max_bytes=1 << 32, segment_bytes=16 << 20)
    spool.open()
    bus = SampleBus()
    scfg = StorageConfig(batch_size=batch, batch_max_age_s=0.2, queue_size=rows + 1, spool_above_queue=1.0)
    sub = bus.subscribe("storage", maxsize=rows + 1)
    writer = SampleWriter(pool, sub, scfg, keys, spool)
    t0 = time.perf_counter()
    for s in samples:
        bus.publish(s)
    task = asyncio.create_task(writer.run())
    while writer.stats.rows_written < rows:
        await asyncio.sleep(0.002)
    out["writer"] = rows / (time.perf_counter() - t0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert spool.stats.spooled_samples == 0, "the writer spooled: the benchmark measured the wrong path"
    spool.close()

    # Spool append: what the writer does per batch while the database is away (fsync per batch).
    samples = make_samples(rows, datetime(2025, 9, 1, tzinfo=UTC))
    spool = Spool(spool_dir / "outage", max_bytes=1 << 32, segment_bytes=16 << 20)
    spool.open()
    t0 = time.perf_counter()
    for i in range(0, rows, batch):
        await spool.append(samples[i:i + batch])
    out["spool_write"] = rows / (time.perf_counter() - t0)

    # Replay: the spool fed back into the database (idempotent path) by a writer with an idle bus.
    bus = SampleBus()
    writer = SampleWriter(pool, bus.subscribe("storage", scfg.queue_size), scfg, keys, spool)
    t0 = time.perf_counter()
    task = asyncio.create_task(writer.run())
    while spool.stats.samples:
        await asyncio.sleep(0.002)
    out["replay"] = rows / (time.perf_counter() - t0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    spool.close()
    assert await pool.fetchval("SELECT count(*) FROM samples") == 3 * rows
    await pool.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="samples per side (default %(default)s)")
    ap.add_argument("--batch", type=int, default=20_000, help="rows per COPY batch (default %(default)s)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heatrec-bench-"))
    os.chmod(root, 0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(12))
    try:
        pg.start()
        db = DatabaseConfig(host=pg.host, port=pg.port, name=pg.dbname, user=pg.user, password=pg.password)
        r = asyncio.run(run(db, args.rows, args.batch, root / "spool"))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"ingest, {args.rows} samples, batches of {args.batch}:")
    print(f"  baseline bare COPY into samples  : {r['baseline']:>10,.0f} rows/s")
    print(f"  heatrec bus -> rows committed    : {r['writer']:>10,.0f} rows/s")
    print(f"  ratio heatrec / baseline         : {r['writer'] / r['baseline']:.2f}")
    print(f"  spool append (fsync per batch)   : {r['spool_write']:>10,.0f} samples/s")
    print(f"  spool replay into the database   : {r['replay']:>10,.0f} samples/s")


if __name__ == "__main__":
    main()
