"""The history fit against real TimescaleDB: a week of synthetic samples in, the plan's inputs follow them."""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import timedelta
from pathlib import Path

import pytest

from service.config import DatabaseConfig
from service.dispatch.history import ANCHOR_DECAY_H, BUCKET, DispatchHistory
from service.dispatch.models import CarnotCop
from service.dispatch.status import dispatch_status
from service.dispatch.task import DispatchTask
from service.storage.database import Database, connect_pool
from service.storage.migrations import migrate
from service.storage.points import register_point
from tests.dispatch.test_dispatch_history import DAYS, ETA_HP1, demand, it_heat, rig, samples
from tests.dispatch.test_dispatch_task import START
from tests.support import wait_until


async def seed(database: DatabaseConfig) -> None:
    """Migrate, register the points and store a week of readings, one every 5 minutes, up to START."""
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            for point, readings in samples(START - timedelta(days=DAYS), DAYS, timedelta(minutes=5)).items():
                key = await register_point(conn, point)
                await conn.copy_records_to_table("samples", records=[(t, key, v, 0) for t, v in readings],
                                                 columns=["time", "point_key", "value", "quality"])
    finally:
        await pool.close()


async def test_the_inputs_follow_the_fitted_history_and_the_calibrated_cop(tmp_path: Path,
                                                                           database: DatabaseConfig) -> None:
    await seed(database)
    r = rig(tmp_path)
    pool = await connect_pool(database)
    try:
        history = DispatchHistory(r.cfg, r.control, Database.from_pool(pool, database), r.clock)
        task = DispatchTask(r.cfg, r.control, r.bus, r.controller, r.clock, history=history)
        fit = await history.refresh()
        assert fit is not None and fit.buckets == DAYS * 96 and history.error == ""
        r.plant(it_heat=it_heat(START) + 60.0)
        r.publish(dh__demand=demand(START, 5.0))
        inputs = task.build_inputs(task.measure(), None, START)
    finally:
        await pool.close()
    for k in range(inputs.steps):
        t = START + BUCKET * k
        assert inputs.it_heat_kw[k] == pytest.approx(it_heat(t) + 60.0 * math.exp(-k * 0.25 / ANCHOR_DECAY_H))
        assert inputs.demand_kw[k] == pytest.approx(demand(t, 5.0))
    assert inputs.units[0].cop[0] == pytest.approx(CarnotCop(ETA_HP1).cop(35.0, 65.0))
    st = dispatch_status(task)
    assert st.forecast == "history" and st.cop_source["hp1"] == "calibrated" and st.cop_source["hp2"] == "configured"


async def test_the_refresh_task_fits_as_soon_as_the_database_appears(tmp_path: Path,
                                                                     database: DatabaseConfig) -> None:
    await seed(database)
    r = rig(tmp_path)
    db = Database(database, probe_interval_s=0.2)
    history = DispatchHistory(r.cfg, r.control, db, r.clock)
    refreshing = asyncio.create_task(history.run())
    supervising: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: history.refreshes >= 1, what="a first refresh, the database not yet connected")
        assert history.forecast == "persistence" and "database unavailable" in history.error
        supervising = asyncio.create_task(db.run())
        await wait_until(lambda: history.fit is not None, what="a fit once the database is up")
        assert history.forecast == "history" and history.cop_source("hp1") == "calibrated"
    finally:
        for task in (refreshing, supervising):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await db.close()
