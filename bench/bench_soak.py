"""Memory under sustained ingest: bus → SampleWriter → TimescaleDB at a steady rate, RSS sampled as it runs.

Run: .venv/bin/python bench/bench_soak.py [--seconds 600] [--rate 20000]
Starts its own PostgreSQL + TimescaleDB cluster on a free loopback port and removes it after.
Memory is flat when the highest RSS of the last minute is within 5 % of the highest RSS of the first half
(the allocator's arenas and asyncpg's caches grow to their working size early, then stay).
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
from service.config import DatabaseConfig, StorageConfig
from service.localservers import PostgresCluster, free_port
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.storage.spool import Spool
from service.storage.writer import SampleWriter

N_POINTS = 200


def rss_mib() -> float:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def run(db: DatabaseConfig, seconds: float, rate: int, spool_dir: Path) -> None:
    pool = await connect_pool(db, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    spool = Spool(spool_dir, max_bytes=1 << 30, segment_bytes=16 << 20)
    spool.open()
    bus = SampleBus()
    cfg = StorageConfig()
    writer = SampleWriter(pool, bus.subscribe("storage", cfg.queue_size), cfg, {}, spool)
    task = asyncio.create_task(writer.run())
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    loop = asyncio.get_running_loop()
    start, sent, next_report = loop.time(), 0, 10.0
    samples_rss: list[tuple[float, float]] = []
    while (elapsed := loop.time() - start) < seconds:
        due = int(elapsed * rate)
        now = datetime.now(UTC)
        for i in range(sent, due):
            bus.publish(Sample(f"dev.p{i % N_POINTS}", float(i), Quality.GOOD,
                               t0 + timedelta(microseconds=i * 50), now))
        sent = due
        if elapsed >= next_report:
            samples_rss.append((elapsed, rss_mib()))
            print(f"  t={elapsed:5.0f} s  rss={samples_rss[-1][1]:7.1f} MiB  rows={writer.stats.rows_written:,}  "
                  f"queue={bus.subscriptions[0].queue.qsize():,}  spooled={spool.stats.spooled_samples:,}", flush=True)
            next_report += 10
        await asyncio.sleep(0.01)
    deadline = time.monotonic() + 60
    while writer.stats.rows_written + spool.stats.samples < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    spool.close()
    stored = await pool.fetchval("SELECT count(*) FROM samples")
    await pool.close()
    first_half = max((r for t, r in samples_rss if t <= seconds / 2), default=0.0)
    last = max((r for t, r in samples_rss if t >= seconds - 60), default=0.0)
    print(f"soak, {seconds:.0f} s at {rate:,} samples/s: {sent:,} published, {stored:,} stored, "
          f"dropped on the bus {bus.subscriptions[0].dropped:,}")
    first = samples_rss[0][1] if samples_rss else 0.0
    print(f"  rss at 10 s {first:.1f} MiB, max in the first half {first_half:.1f} MiB, "
          f"max in the last minute {last:.1f} MiB ({'flat' if last <= first_half * 1.05 else 'GROWING'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600, help="run length (default %(default)s)")
    ap.add_argument("--rate", type=int, default=20_000, help="samples per second (default %(default)s)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heatrec-soak-"))
    os.chmod(root, 0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(12))
    try:
        pg.start()
        db = DatabaseConfig(host=pg.host, port=pg.port, name=pg.dbname, user=pg.user, password=pg.password)
        asyncio.run(run(db, args.seconds, args.rate, root / "spool"))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
