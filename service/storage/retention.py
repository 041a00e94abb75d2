"""Retention and rollups: drop old `samples` chunks from a periodic task; compress and roll up when the edition can.

`add_retention_policy` is a TimescaleDB community-edition feature; `drop_chunks` is in the Apache
edition too, so heatrec schedules it itself and works on both. Compression and continuous
aggregates exist only in the community edition (`timescaledb.license = timescale`, e.g. TimescaleDB's
docker image): `enable_rollups` turns them on there and does nothing on Apache builds.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg

from service.config import StorageConfig
from service.storage.database import DB_ERRORS

log = logging.getLogger(__name__)


async def drop_old_chunks(conn: asyncpg.Connection, older_than: timedelta) -> list[str]:
    """Drop the samples chunks wholly older than `older_than`; return their names."""
    rows = await conn.fetch("SELECT drop_chunks('samples', older_than => $1::interval)", older_than)
    return [r[0] for r in rows]


async def edition(conn: asyncpg.Connection) -> str:
    """TimescaleDB license: 'apache' (no compression or continuous aggregates) or 'timescale'."""
    return str(await conn.fetchval("SELECT current_setting('timescaledb.license', true)") or "apache")


async def enable_rollups(conn: asyncpg.Connection, cfg: StorageConfig) -> bool:
    """On the community edition: compress old chunks and keep an hourly rollup `samples_hourly`; True if enabled."""
    if await edition(conn) != "timescale":
        return False
    if cfg.compress_after_days is not None:
        await conn.execute("ALTER TABLE samples SET (timescaledb.compress, "
                           "timescaledb.compress_segmentby = 'point_key', timescaledb.compress_orderby = 'time DESC')")
        await conn.execute("SELECT add_compression_policy('samples', $1::interval, if_not_exists => true)",
                           timedelta(days=cfg.compress_after_days))
    exists = await conn.fetchval("SELECT 1 FROM timescaledb_information.continuous_aggregates "
                                 "WHERE view_name = 'samples_hourly'")
    if not exists:
        await conn.execute(
            """CREATE MATERIALIZED VIEW samples_hourly WITH (timescaledb.continuous) AS
               SELECT time_bucket('1 hour', time) AS bucket, point_key, avg(value) AS avg, min(value) AS min,
                      max(value) AS max, last(value, time) AS last, count(value) AS n
               FROM samples WHERE value IS NOT NULL GROUP BY bucket, point_key WITH NO DATA""")
        await conn.execute("SELECT add_continuous_aggregate_policy('samples_hourly', start_offset => '3 days', "
                           "end_offset => '1 hour', schedule_interval => '1 hour', if_not_exists => true)")
    log.info("TimescaleDB community edition: compression and the samples_hourly rollup are on")
    return True


async def run_retention(pool: asyncpg.Pool, cfg: StorageConfig) -> None:
    """Apply retention every `retention_interval_s` until cancelled; do nothing when retention is unset."""
    if cfg.retention_days is None:
        return
    age = timedelta(days=cfg.retention_days)
    while True:
        try:
            async with pool.acquire() as conn:
                dropped = await drop_old_chunks(conn, age)
            if dropped:
                log.info("retention: dropped %d chunks older than %s days", len(dropped), cfg.retention_days)
        except DB_ERRORS as err:
            # The database being away is the writer's problem to report; retention just tries again later.
            log.debug("retention run skipped: %s", err)
        await asyncio.sleep(cfg.retention_interval_s)
