"""Sample ingest: heatrec's SampleWriter against a bare asyncpg COPY into the same hypertable.

Run: .venv/bin/python bench/bench_ingest.py [--rows 200000] [--batch 5000]
Starts its own PostgreSQL + TimescaleDB cluster on a free loopback port and removes it after.
The baseline is the ceiling: COPY straight into `samples`, with no staging table and no
duplicate handling. heatrec's writer pays for idempotency (staging + ON CONFLICT DO NOTHING).
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
from service.storage.writer import SampleWriter

N_POINTS = 100


def make_samples(n: int, start: datetime) -> list[Sample]:
    """`n` samples spread over N_POINTS points at 1 s steps (distinct point and time)."""
    return [Sample(f"dev.p{i % N_POINTS}", float(i), Quality.GOOD, start + timedelta(seconds=i // N_POINTS), start)
            for i in range(n)]


async def run(db: DatabaseConfig, rows: int, batch: int) -> tuple[float, float]:
    cfg = parse_config({"devices": [{"id": "dev", "protocol": "modbus", "endpoint": "127.0.0.1:502",
                                     "points": [{"id": f"p{i}", "address": i} for i in range(N_POINTS)]}]})
    pool = await connect_pool(db, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, cfg)

    # Baseline: bare COPY of the same records straight into the hypertable.
    base = make_samples(rows, datetime(2025, 1, 1, tzinfo=UTC))
    recs = [(s.source_time, keys[s.point], s.value, int(s.quality)) for s in base]
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, rows, batch):
            await conn.copy_records_to_table("samples", records=recs[i:i + batch],
                                             columns=["time", "point_key", "value", "quality"])
    baseline = rows / (time.perf_counter() - t0)

    # heatrec: the writer, fed through the bus, batches by size and age.
    samples = make_samples(rows, datetime(2025, 6, 1, tzinfo=UTC))
    bus = SampleBus()
    sub = bus.subscribe("storage", maxsize=rows + 1)
    writer = SampleWriter(pool, sub, StorageConfig(batch_size=batch, batch_max_age_s=0.2, queue_size=rows + 1), keys)
    t0 = time.perf_counter()
    for s in samples:
        bus.publish(s)
    task = asyncio.create_task(writer.run())
    while writer.stats.rows_written < rows:  # noqa: ASYNC110 - the writer exposes a counter, not an event
        await asyncio.sleep(0.01)
    ours = rows / (time.perf_counter() - t0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await pool.fetchval("SELECT count(*) FROM samples") == 2 * rows
    await pool.close()
    return baseline, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="samples per side (default %(default)s)")
    ap.add_argument("--batch", type=int, default=5000, help="rows per COPY batch (default %(default)s)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heatrec-bench-"))
    os.chmod(root, 0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(12))
    try:
        pg.start()
        db = DatabaseConfig(host=pg.host, port=pg.port, name=pg.dbname, user=pg.user, password=pg.password)
        baseline, ours = asyncio.run(run(db, args.rows, args.batch))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"ingest, {args.rows} samples, batches of {args.batch}:")
    print(f"  baseline bare COPY into samples : {baseline:>10,.0f} rows/s")
    print(f"  heatrec SampleWriter (idempotent): {ours:>10,.0f} rows/s")
    print(f"  ratio heatrec / baseline        : {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
