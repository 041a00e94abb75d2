"""Settlement: one year of 1-minute register data for 10 meters, SQL fast path against a Python loop.

Run: .venv/bin/python bench/bench_settle.py [--meters 10] [--days 365]
Starts its own PostgreSQL + TimescaleDB cluster on a free loopback port and removes it after.
Both sides compute the same thing, each meter's energy per calendar month from register
differences (wrap handled, steps spread over time so month boundaries are exact):
- heatrec: `rollup_total`, the hourly roll-up `heatrec settle` reads for month-aligned ranges when the
  data is clean: built from the raw rows on first use (cold), then only checked for staleness (warm);
  also `sql_register_totals`, one window-function query per month over the raw rows;
- baseline: the same rows fetched with a plain SELECT and run through the Python register logic
  (`register_steps` + `tally`), the path heatrec falls back to when a meter has faults.
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

from service.accounting.registers import Reading, RegisterSpec, register_steps, tally
from service.accounting.store import rollup_total, sql_register_totals
from service.config import DatabaseConfig
from service.localservers import PostgresCluster, free_port
from service.storage.database import connect_pool
from service.storage.migrations import migrate

START = datetime(2025, 1, 1, tzinfo=UTC)
WRAP = 1000.0  # small, so every meter rolls over during the year
SPEC = RegisterSpec(max_rate_per_s=2000 / 1e6, gap_s=900, wrap=WRAP)


def months(days: int) -> list[tuple[datetime, datetime]]:
    out, t = [], START
    end = START + timedelta(days=days)
    while t < end:
        nxt = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
        out.append((t, min(nxt, end)))
        t = nxt
    return out


async def seed(pool: object, meters: int, days: int) -> int:
    """1-minute registers, 800 kW +- a daily swing, one meter per point, a day beyond the settled range."""
    import math

    n = (days + 1) * 1440 + 1
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        await conn.executemany("INSERT INTO points (id, device) VALUES ($1, $2)",
                               [(f"m{i}.energy", f"m{i}") for i in range(meters)])
        keys = {r["id"]: r["key"] for r in await conn.fetch("SELECT id, key FROM points")}
        for i in range(meters):
            key, v, rows = keys[f"m{i}.energy"], 100.0 * i, []
            for j in range(n):
                kw = 800 + 300 * math.sin(2 * math.pi * j / 1440 + i)
                rows.append((START + timedelta(minutes=j), key, v % WRAP, 0))
                v += kw * 60 / 1e6
            await conn.copy_records_to_table("samples", records=rows, columns=["time", "point_key", "value",
                                                                             "quality"])
        await conn.execute("VACUUM ANALYZE samples")  # as autovacuum leaves month-old chunks
    return n * meters


async def run(db: DatabaseConfig, meters: int, days: int) -> dict[str, float]:
    pool = await connect_pool(db, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    t0 = time.perf_counter()
    rows = await seed(pool, meters, days)
    out: dict[str, float] = {"rows": rows, "seed_s": time.perf_counter() - t0}
    ids = [f"m{i}.energy" for i in range(meters)]
    margin = timedelta(hours=1)
    spans = months(days)

    sql_totals: dict[str, float] = dict.fromkeys(ids, 0.0)
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for lo, hi in spans:
            res = await sql_register_totals(conn, [(p, SPEC) for p in ids], lo, hi, margin)
            for p in ids:
                sql_totals[p] += res[p].energy
    out["sql_s"] = time.perf_counter() - t0

    # What `heatrec settle` does for month-aligned ranges: the hourly roll-up, built on first use
    # (cold) and read, after checking it is not stale, on every later settlement (warm).
    for run in ("cold", "warm"):
        rollup: dict[str, float] = dict.fromkeys(ids, 0.0)
        t0 = time.perf_counter()
        async with pool.acquire() as conn:
            for lo, hi in spans:
                for p in ids:
                    total = await rollup_total(conn, p, SPEC, lo, hi, margin)
                    assert total is not None, "the seeded data is clean: the roll-up must serve it"
                    rollup[p] += total.energy
        out[f"rollup_{run}_s"] = time.perf_counter() - t0
        out[f"rollup_{run}_diff"] = max(abs(rollup[p] - sql_totals[p]) for p in ids)

    py_totals: dict[str, float] = dict.fromkeys(ids, 0.0)
    t0 = time.perf_counter()
    fetch_s = 0.0
    async with pool.acquire() as conn:
        for p in ids:
            f0 = time.perf_counter()
            recs = await conn.fetch("SELECT s.time, s.value FROM samples s JOIN points k ON k.key = s.point_key "
                                    "WHERE k.id = $1 AND s.quality <= 1 AND s.value IS NOT NULL AND s.time >= $2 "
                                    "AND s.time <= $3 ORDER BY s.time", p, spans[0][0] - margin,
                                    spans[-1][1] + margin)
            fetch_s += time.perf_counter() - f0
            steps = register_steps([Reading(r["time"], r["value"]) for r in recs], SPEC)
            for lo, hi in spans:
                py_totals[p] += tally(steps, lo, hi).energy
    out["python_s"] = time.perf_counter() - t0
    out["python_fetch_s"] = fetch_s
    out["max_diff_gj"] = max(abs(sql_totals[p] - py_totals[p]) for p in ids)
    out["total_gj"] = sum(sql_totals.values())
    await pool.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=10)
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heatrec-bench-"))
    os.chmod(root, 0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(12),
                         settings={"fsync": "off", "full_page_writes": "off"})
    try:
        pg.start()
        db = DatabaseConfig(host=pg.host, port=pg.port, name=pg.dbname, user=pg.user, password=pg.password)
        r = asyncio.run(run(db, args.meters, args.days))
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"settle {args.meters} meters x {args.days} days of 1-minute registers ({r['rows']:,.0f} rows, "
          f"seeded in {r['seed_s']:.1f} s), per calendar month:")
    print(f"  heatrec settle, hourly roll-up warm (checked)   : {r['rollup_warm_s']:8.2f} s")
    print(f"  heatrec settle, hourly roll-up cold (built)     : {r['rollup_cold_s']:8.2f} s")
    print(f"  heatrec SQL over raw rows (window per month)    : {r['sql_s']:8.2f} s")
    print(f"  baseline Python loop (fetch + register logic)  : {r['python_s']:8.2f} s "
          f"(of which fetching rows {r['python_fetch_s']:.2f} s)")
    print(f"  ratio Python / roll-up warm                     : {r['python_s'] / r['rollup_warm_s']:8.2f}")
    print(f"  ratio Python / SQL over raw rows                : {r['python_s'] / r['sql_s']:8.2f}")
    print(f"  roll-up vs raw SQL: largest difference {max(r['rollup_cold_diff'], r['rollup_warm_diff']):.2e} GJ")
    print(f"  energy {r['total_gj']:,.3f} GJ; largest SQL-Python difference {r['max_diff_gj']:.2e} GJ")


if __name__ == "__main__":
    main()
