"""Sample ingest: heatrec's SampleWriter against bare asyncpg COPY into the same hypertable.

Run: .venv/bin/python bench/bench_ingest.py [--rows 200000] [--batch 20000] [--rounds 7]
Starts its own PostgreSQL + TimescaleDB cluster on a free loopback port and removes it after.

Three sides, each writing `rows` samples into `samples` per round:
- copy-serial: COPY of records built beforehand, one connection, one batch after the other;
- copy-parallel: the same COPY on two connections at once, as many as the writer keeps batches in
  flight (`max_in_flight = 2`): the ceiling heatrec is reported against;
- heatrec: the writer, timed from the first publish on the bus to the last row committed (draining the
  bus, batching, building records, COPY; the idempotent staging path only if a batch met stored rows).
The sides take turns in a different order each round (each goes first, in the middle and last equally
often), into fresh time ranges of their own; the first round only warms the cluster up and is not
counted; the figures are medians of the other rounds. Also measured once, after the rounds: spool
append (fsync'd per batch) and spool replay into the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

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
COLUMNS = ["time", "point_key", "value", "quality"]
SIDES = ("copy-serial", "copy-parallel", "heatrec")
IN_FLIGHT = StorageConfig().max_in_flight  # the writer's connections at once, and so the ceiling's
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
# Each side of each round writes its own 30 days, so each starts its own chunks: no side inherits a warm one.
SLOT = timedelta(days=30)

Record = tuple[datetime, int, float, int]
Side = Callable[[int, int], Awaitable[float]]


def make_samples(n: int, start: datetime) -> list[Sample]:
    """`n` samples spread over N_POINTS points at 1 s steps (distinct point and time)."""
    return [Sample(f"dev.p{i % N_POINTS}", float(i), Quality.GOOD, start + timedelta(seconds=i // N_POINTS), start)
            for i in range(n)]


def records(samples: list[Sample], keys: dict[str, int]) -> list[Record]:
    """What COPY takes, built beforehand (not timed)."""
    return [(s.source_time, keys[s.point], s.value, int(s.quality)) for s in samples]


def chunks(recs: list[Record], batch: int) -> Iterator[list[Record]]:
    return (recs[i:i + batch] for i in range(0, len(recs), batch))


async def copy_serial(pool: asyncpg.Pool, recs: list[Record], batch: int) -> float:
    """Seconds for one connection to COPY every batch, one after the other."""
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for part in chunks(recs, batch):
            await conn.copy_records_to_table("samples", records=part, columns=COLUMNS)
    return time.perf_counter() - t0


async def copy_parallel(pool: asyncpg.Pool, recs: list[Record], batch: int) -> float:
    """Seconds for IN_FLIGHT connections to COPY the batches, each taking the next batch when it is free."""
    todo = chunks(recs, batch)  # shared: a worker's next() runs between awaits, so no batch goes twice

    async def worker() -> None:
        async with pool.acquire() as conn:
            for part in todo:
                await conn.copy_records_to_table("samples", records=part, columns=COLUMNS)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - t0


async def through_writer(pool: asyncpg.Pool, samples: list[Sample], keys: dict[str, int], batch: int,
                         spool_dir: Path) -> float:
    """Seconds from the first publish on the bus to the last row committed by heatrec's writer."""
    rows = len(samples)
    spool = Spool(spool_dir, max_bytes=1 << 32, segment_bytes=16 << 20)
    spool.open()
    bus = SampleBus()
    scfg = StorageConfig(batch_size=batch, batch_max_age_s=0.2, queue_size=rows + 1, spool_above_queue=1.0)
    writer = SampleWriter(pool, bus.subscribe("storage", maxsize=rows + 1), scfg, keys, spool)
    t0 = time.perf_counter()
    for s in samples:
        bus.publish(s)
    task = asyncio.create_task(writer.run())
    while writer.stats.rows_written < rows:
        if task.done():
            task.result()  # the writer stopped: say why
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert spool.stats.spooled_samples == 0, "the writer spooled: the benchmark measured the wrong path"
    spool.close()
    return elapsed


async def run(db: DatabaseConfig, rows: int, batch: int, rounds: int, spool_dir: Path) -> dict[str, float]:
    cfg = parse_config({"devices": [{"id": "dev", "protocol": "modbus", "endpoint": "127.0.0.1:502",
                                     "points": [{"id": f"p{i}", "address": i} for i in range(N_POINTS)]}]})
    pool = await connect_pool(db, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, cfg)
    slot = 0
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        order = SIDES[r % len(SIDES):] + SIDES[:r % len(SIDES)]  # each side first, in the middle, last in turn
        for side in order:
            samples = make_samples(rows, EPOCH + slot * SLOT)
            slot += 1
            if side == "heatrec":
                seconds = await through_writer(pool, samples, keys, batch, spool_dir / f"live-{r}")
            else:
                measure = copy_serial if side == "copy-serial" else copy_parallel
                seconds = await measure(pool, records(samples, keys), batch)
            if r > 0:  # round 0 warms the cluster up (caches, WAL segments, the first chunks)
                times[side].append(seconds)
        print(f"  round {r}{' (warm-up, not counted)' if r == 0 else ''}: "
              + ", ".join(f"{side} {rows / times[side][-1]:,.0f}" if r else side for side in order), flush=True)
    out = {side: rows / statistics.median(t) for side, t in times.items()}
    # Paired within each round too: the sides of one round ran seconds apart, so a change in the machine's
    # load between rounds moves both, and the ratio less than either figure.
    for base in ("copy-serial", "copy-parallel"):
        out[f"paired/{base}"] = statistics.median(b / h for b, h in zip(times[base], times["heatrec"], strict=True))

    # Spool append: what the writer does per batch while the database is away (fsync per batch).
    samples = make_samples(rows, EPOCH + slot * SLOT)
    spool = Spool(spool_dir / "outage", max_bytes=1 << 32, segment_bytes=16 << 20)
    spool.open()
    t0 = time.perf_counter()
    for i in range(0, rows, batch):
        await spool.append(samples[i:i + batch])
    out["spool_write"] = rows / (time.perf_counter() - t0)

    # Replay: the spool fed back into the database by a writer with an idle bus.
    scfg = StorageConfig(batch_size=batch, batch_max_age_s=0.2, queue_size=rows + 1, spool_above_queue=1.0)
    writer = SampleWriter(pool, SampleBus().subscribe("storage", scfg.queue_size), scfg, keys, spool)
    t0 = time.perf_counter()
    task = asyncio.create_task(writer.run())
    while spool.stats.samples:
        await asyncio.sleep(0.002)
    out["replay"] = rows / (time.perf_counter() - t0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    spool.close()
    stored = await pool.fetchval("SELECT count(*) FROM samples")
    assert stored == (slot + 1) * rows, f"{stored} rows stored, {(slot + 1) * rows} written"
    await pool.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="samples per side and round (default %(default)s)")
    ap.add_argument("--batch", type=int, default=20_000, help="rows per COPY batch (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=7,
                    help="rounds, the first a warm-up not counted (default %(default)s: each order twice)")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2: the first round is a warm-up")
    root = Path(tempfile.mkdtemp(prefix="heatrec-bench-"))
    os.chmod(root, 0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(12))
    print(f"ingest, {args.rows} samples per side and round, batches of {args.batch}, {args.rounds} rounds "
          "(rows/s):", flush=True)
    try:
        pg.start()
        db = DatabaseConfig(host=pg.host, port=pg.port, name=pg.dbname, user=pg.user, password=pg.password)
        r = asyncio.run(run(db, args.rows, args.batch, args.rounds, root / "spool"))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"medians of {args.rounds - 1} rounds:")
    lines = [("bare COPY, 1 connection, serial", f"{r['copy-serial']:>10,.0f} rows/s"),
             (f"bare COPY, {IN_FLIGHT} connections, parallel", f"{r['copy-parallel']:>10,.0f} rows/s  (the ceiling)"),
             ("heatrec bus -> rows committed", f"{r['heatrec']:>10,.0f} rows/s")]
    for base, what in (("copy-parallel", "parallel COPY (ceiling)"), ("copy-serial", "serial COPY")):
        lines.append((f"ratio heatrec / {what}", f"{r['heatrec'] / r[base]:>10.2f}  "
                      f"(median of the rounds' own ratios: {r[f'paired/{base}']:.2f})"))
    lines += [("spool append (fsync per batch)", f"{r['spool_write']:>10,.0f} samples/s"),
              ("spool replay into the database", f"{r['replay']:>10,.0f} samples/s")]
    for label, value in lines:
        print(f"  {label:<40}: {value}")


if __name__ == "__main__":
    main()
