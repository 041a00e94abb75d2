"""The durable journal and the database supervisor, against a real PostgreSQL (and a closed port for 'away')."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.audit import AuditEntry, AuditLog, apply_audit
from service.config import DatabaseConfig
from service.localservers import free_port
from service.storage.database import Database, DatabaseDown, connect_pool
from service.storage.journal import Journal
from service.storage.migrations import migrate
from tests.support import wait_until


def away() -> Database:
    """A database on a port where nothing listens, never connected."""
    return Database(DatabaseConfig(port=free_port(), connect_timeout_s=1.0), retry_max_s=1.0)


def entry(n: int) -> AuditEntry:
    return AuditEntry("alice", "operator", "control.target", f"target-{n}", n, n, "accepted")


async def insert_reading(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    await conn.execute("INSERT INTO manual_readings (meter_id, time, value_gj, entered_by) VALUES ($1, $2, $3, $4)",
                       data["meter"], datetime.fromisoformat(data["time"]), data["gj"], "alice")


@contextlib.asynccontextmanager
async def up(database: DatabaseConfig) -> AsyncIterator[tuple[asyncpg.Pool, Database]]:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
    try:
        yield pool, Database.from_pool(pool, database)
    finally:
        await pool.close()


@pytest.mark.integration  # connects to a closed loopback port
async def test_a_database_that_is_away_is_refused_at_once_with_a_reason() -> None:
    db = away()
    task = asyncio.create_task(db.run())
    try:
        await wait_until(lambda: db.stats.since is not None, 10, "the first failed probe")
        assert not db.up and "ConnectionRefusedError" in db.stats.last_error
        t0 = time.perf_counter()
        with pytest.raises(DatabaseDown) as err:
            async with db.acquire():
                pass
        assert time.perf_counter() - t0 < 0.5, "no connection attempt while known to be away"
        assert isinstance(err.value, OSError), "the loops that ride out a lost connection treat it the same"
        assert err.value.retry_after_s == 1 and "unavailable since" in str(err.value)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_the_supervisor_connects_and_prepares_once(database: DatabaseConfig) -> None:
    calls: list[int] = []

    async def prepare(conn: asyncpg.Connection) -> None:
        await migrate(conn)
        calls.append(1)

    db = Database(database, prepare, probe_interval_s=0.1)
    task = asyncio.create_task(db.run())
    try:
        await asyncio.wait_for(db.ready.wait(), 20)
        assert db.up and await db.fetchval("SELECT count(*) FROM schema_migrations") >= 1
        probes = db.stats.next_attempt_s
        await asyncio.sleep(0.5)  # the scenario: several probes go by while up
        assert calls == [1] and probes == 0.1, "prepared once, however often it is probed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_records_made_while_away_survive_a_restart_and_are_stored_once_in_order(
        tmp_path: Path, database: DatabaseConfig) -> None:
    journal = Journal(tmp_path, away(), {"audit": apply_audit})
    journal.open()
    log = AuditLog(away(), journal)
    for n in range(5):
        await log.record(entry(n))  # the database is away: accepted, durable, not stored
    assert journal.stats.pending == 5
    journal.close()  # as after a SIGKILL: nothing but the file remains

    async with up(database) as (pool, db):
        again = Journal(tmp_path, db, {"audit": apply_audit})
        again.open()
        assert again.stats.pending == 5
        # A crash right after the records were applied, before the cursor moved: the same records again.
        copy = (tmp_path / "journal.jsonl").read_bytes()
        assert await again.drain() == 5 and again.stats.pending == 0
        rows = await pool.fetch("SELECT target, time FROM audit_log WHERE target LIKE 'target-%' "
                                "AND principal = 'alice' ORDER BY seq DESC LIMIT 5")
        assert [r["target"] for r in reversed(rows)] == [f"target-{n}" for n in range(5)], "in order"
        assert (tmp_path / "journal.jsonl").stat().st_size == 0, "emptied once everything is stored"
        (tmp_path / "journal.jsonl").write_bytes(copy)
        (tmp_path / "cursor").write_text("0")
        again.close()
        replay = Journal(tmp_path, db, {"audit": apply_audit})
        replay.open()
        assert await replay.drain() == 5
        assert replay.stats.skipped == 5 and replay.stats.applied == 0, "recognised as stored: never twice"
        first = rows[-1]["time"]
        assert first < datetime.now(UTC), "stored at the time the entry was made"
        replay.close()


async def test_a_torn_last_record_is_cut_and_a_refused_one_does_not_block_the_rest(
        tmp_path: Path, database: DatabaseConfig) -> None:
    refused: list[str] = []

    async def on_refused(kind: str, data: dict[str, Any], err: BaseException) -> None:
        refused.append(f"{kind}:{data['meter']}")

    async with up(database) as (pool, db):
        meter = f"m{time.time_ns()}"
        journal = Journal(tmp_path, away(), {"reading": insert_reading}, refused=on_refused)
        journal.open()
        t = datetime(2026, 3, 1, tzinfo=UTC).isoformat()
        await journal.append("reading", {"meter": meter, "time": t, "gj": 1.0})
        await journal.append("reading", {"meter": meter, "time": t, "gj": 2.0})  # same meter and time: refused
        await journal.append("reading", {"meter": meter + "b", "time": t, "gj": 3.0})
        journal.close()
        with (tmp_path / "journal.jsonl").open("ab") as f:
            f.write(b'{"id": "torn')  # a crash mid-append
        stored = Journal(tmp_path, db, {"reading": insert_reading}, refused=on_refused)
        stored.open()
        assert stored.stats.pending == 3 and stored.stats.corrupt == 1
        assert await stored.drain() == 3
        assert refused == [f"reading:{meter}"] and stored.stats.refused == 1
        values = await pool.fetch("SELECT meter_id, value_gj FROM manual_readings WHERE meter_id LIKE $1 "
                                  "ORDER BY meter_id", meter + "%")
        assert [(r["meter_id"], r["value_gj"]) for r in values] == [(meter, 1.0), (meter + "b", 3.0)]
        stored.close()
