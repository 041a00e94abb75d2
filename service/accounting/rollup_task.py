"""Keep the hourly register roll-up warm while the service runs, so settlements read it instead of raw rows."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from service.accounting.engine import margin_for, meter_spec
from service.accounting.store import build_register_hours, point_key
from service.clock import Clock, RealClock
from service.config import HeatrecConfig
from service.storage.database import DB_ERRORS, DatabaseDown

log = logging.getLogger(__name__)
LOOKBACK = timedelta(hours=3)  # recent hours are rebuilt each round: readings of the last hours still arrive


def _floor_hour(t: datetime) -> datetime:
    ts = t.timestamp()
    return datetime.fromtimestamp(ts - ts % 3600, UTC)


async def refresh_rollups(pool: asyncpg.Pool, cfg: HeatrecConfig, now: datetime) -> int:
    """Build the roll-up of every billing meter for the complete hours of the last LOOKBACK; meters done."""
    if cfg.accounting is None:
        return 0
    end = _floor_hour(now)
    done = 0
    async with pool.acquire() as conn:
        for m in cfg.accounting.meters:
            key = await point_key(conn, m.energy_point)
            if key is None or m.gap_s > 3600:
                continue
            await build_register_hours(conn, key, meter_spec(m), end - LOOKBACK, end, margin_for(m.gap_s))
            done += 1
    return done


async def run_rollups(pool: asyncpg.Pool, cfg: HeatrecConfig, clock: Clock | None = None,
                      interval_s: float = 600.0) -> None:
    """Refresh the roll-up every interval_s until cancelled; database trouble is logged and retried."""
    clock = clock or RealClock()
    while True:
        try:
            await refresh_rollups(pool, cfg, clock.now())
        except DatabaseDown:
            pass  # its supervisor reports the database away, once; the roll-up catches up when it is back
        except DB_ERRORS as err:
            log.warning("accounting roll-up not refreshed (%s); retrying in %.0f s", err, interval_s)
        await asyncio.sleep(interval_s)

