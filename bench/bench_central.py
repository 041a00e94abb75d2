"""Central ingest: how the centre writes a site's batch exactly once, two ways, measured in the same run.

Run: .venv/bin/python bench/bench_central.py [--rows 200000] [--batch 5000] [--sites 4] [--rounds 5]
Starts its own PostgreSQL + TimescaleDB cluster on a free loopback port and removes it after.

- batch-id + COPY (what heatrec central does): the batch number decides under the site's row lock, then
  COPY straight into `samples` inside a savepoint (the staging path only if a reading is already stored);
- staging + ON CONFLICT: every batch COPYed into a temporary table, then INSERT … ON CONFLICT DO NOTHING,
  with the same bookkeeping;
- bare COPY: the same records COPYed with no bookkeeping at all: the ceiling.
Each side writes `rows` samples per round in batches of `batch` spread over `sites` sites, one connection
per site, into time ranges of its own; the sides take turns in a different order each round; the first
round only warms up; figures are medians of the others, in samples per second.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from service.config import DatabaseConfig
from service.fleet import store, wire
from service.localservers import PostgresCluster, free_port
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate

SIDES = ("batch-id+copy", "staging+on-conflict", "bare-copy")
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
N_POINTS = 100


def batches(site: str, n_batches: int, size: int, start: datetime, first_seq: int) -> list[wire.Batch]:
    """Decoded batches as the centre receives them: distinct (point, time) within the site."""
    out = []
    for b in range(n_batches):
        base = start + timedelta(seconds=b * size // N_POINTS + 1)
        samples = [Sample(f"dev.p{i % N_POINTS}", float(i), Quality.GOOD, base + timedelta(seconds=i // N_POINTS),
                          base) for i in range(size)]
        out.append(wire.Batch(site, 1, first_seq + b, 1, base, 0, 0, samples))
    return out


async def run_side(pool: asyncpg.Pool, side: str, work: dict[str, list[wire.Batch]], keys: store.PointKeys) -> float:
    """Samples per second for one side writing every site's batches, one connection per site."""
    async def one_site(site_batches: list[wire.Batch]) -> None:
        async with pool.acquire() as conn:
            for b in site_batches:
                if side == "bare-copy":
                    key_of = await keys.keys(conn, b.site, {s.point for s in b.samples})
                    await conn.copy_records_to_table(
                        "samples", records=[(s.source_time, key_of[s.point], s.value, int(s.quality))
                                            for s in b.samples], columns=["time", "point_key", "value", "quality"])
                else:
                    await store.write_batch(conn, keys, b, always_stage=side == "staging+on-conflict")

    n = sum(len(b.samples) for bs in work.values() for b in bs)
    t = time.perf_counter()
    await asyncio.gather(*(one_site(bs) for bs in work.values()))
    return n / (time.perf_counter() - t)


async def run(db: DatabaseConfig, rows: int, batch: int, n_sites: int, rounds: int) -> None:
    """Run the rounds on the cluster and print the medians."""
    pool = await connect_pool(db, max_size=n_sites + 1)
    async with pool.acquire() as conn:
        await migrate(conn)
    keys = store.PointKeys()
    per_site = max(1, rows // batch // n_sites)
    results: dict[str, list[float]] = {s: [] for s in SIDES}
    slot = 0
    for r in range(rounds + 1):
        order = SIDES[r % 3:] + SIDES[:r % 3]
        for side in order:
            slot += 1
            start = EPOCH + timedelta(days=30 * slot)
            work = {f"{side}-{i}": batches(f"{side}-{i}", per_site, batch, start, 1 + per_site * r)
                    for i in range(n_sites)}
            async with pool.acquire() as conn:
                for site in work:
                    await store.ensure_site(conn, site)
            rate = await run_side(pool, side, work, keys)
            if r:
                results[side].append(rate)
    await pool.close()
    ceiling = statistics.median(results["bare-copy"])
    print(f"central write, {per_site * batch * n_sites} samples per side per round, batches of {batch}, "
          f"{n_sites} sites, median of {rounds} rounds:")
    for side in SIDES:
        m = statistics.median(results[side])
        print(f"  {side:22s} {m:12,.0f} samples/s   {m / ceiling:5.2f} of bare COPY")


def main(rows: int, batch: int, n_sites: int, rounds: int) -> None:
    """Start a private cluster, run, remove it."""
    root = Path(tempfile.mkdtemp(prefix="bench-central-"))
    root.chmod(0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(16))
    pg.start()
    try:
        pg.create_database("bench")
        db = DatabaseConfig(host=pg.host, port=pg.port, name="bench", user=pg.user, password=pg.password)
        asyncio.run(run(db, rows, batch, n_sites, rounds))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    main(a.rows, a.batch, a.sites, a.rounds)
