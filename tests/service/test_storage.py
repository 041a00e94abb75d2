"""Storage against a real PostgreSQL + TimescaleDB: migrations, point registry, COPY writer, tokens."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from service.auth import create_token, hash_token, lookup_token
from service.bus import SampleBus
from service.config import DatabaseConfig, StorageConfig, parse_config
from service.model import Quality, Sample
from service.storage.database import DatabaseUnavailable, connect_pool
from service.storage.migrations import available_migrations, migrate
from service.storage.points import sync_points
from service.storage.writer import SampleWriter

CFG = parse_config({"devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
    {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1},
    {"id": "supply_setpoint", "unit": "degC", "address": 0, "writable": True, "min": 40, "max": 85}]}]})
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def wait_until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_migrations_apply_once_and_build_schema(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        first = await migrate(conn)
        second = await migrate(conn)
        assert first == [name for _, name, _ in available_migrations()]
        assert second == []
        assert await conn.fetchval("SELECT hypertable_name FROM timescaledb_information.hypertables") == "samples"
        cols = [r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'readings' "
            "ORDER BY ordinal_position")]
        assert cols == ["time", "point", "value", "quality", "site"]  # site: the fleet's dimension (0016)
        tables = {r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"points", "samples", "events", "audit_log", "api_tokens"} <= tables
    await pool.close()


async def test_writer_batches_copy_and_is_idempotent(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, CFG)
    assert set(keys) == {"hp1.supply_temperature", "hp1.supply_setpoint"}
    bus = SampleBus()
    sub = bus.subscribe("storage")
    writer = SampleWriter(pool, sub, StorageConfig(batch_size=1000, batch_max_age_s=0.05), keys)
    task = asyncio.create_task(writer.run())
    samples = [Sample("hp1.supply_temperature", 60 + i / 100, Quality.GOOD, T0 + timedelta(seconds=i), T0)
               for i in range(2500)]
    samples.append(Sample("hp1.unknown_point", None, Quality.BAD, T0, T0))  # registered on first sight
    for s in samples:
        bus.publish(s)
    for s in samples[:100]:  # re-delivery of the same readings must not duplicate rows
        bus.publish(s)

    async def all_in() -> bool:
        return await pool.fetchval("SELECT count(*) FROM samples") >= 2501 and sub.queue.empty()

    await wait_until(all_in)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await pool.fetchval("SELECT count(*) FROM samples") == 2501
    assert writer.stats.rows_written == 2501
    assert writer.stats.batches >= 3  # 2,600 samples at 1,000 per batch
    row = await pool.fetchrow("SELECT point, value, quality FROM readings WHERE point = 'hp1.supply_temperature' "
                              "ORDER BY time DESC LIMIT 1")
    assert row["point"] == "hp1.supply_temperature" and row["value"] == pytest.approx(84.99)
    assert row["quality"] == "GOOD"
    assert await pool.fetchval("SELECT quality FROM readings WHERE point = 'hp1.unknown_point'") == "BAD"
    await pool.close()


async def test_writer_flushes_on_shutdown(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, CFG)
    bus = SampleBus()
    sub = bus.subscribe("storage")
    writer = SampleWriter(pool, sub, StorageConfig(batch_size=10_000, batch_max_age_s=30), keys)
    task = asyncio.create_task(writer.run())
    for i in range(50):
        bus.publish(Sample("hp1.supply_temperature", float(i), Quality.GOOD, T0 + timedelta(seconds=i), T0))
    await asyncio.sleep(0)  # let the writer take the first sample and start its 30 s batch window
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await pool.fetchval("SELECT count(*) FROM samples") == 50
    await pool.close()


async def test_tokens_are_stored_hashed(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        token = await create_token(conn, "operator", "alice")
        stored = await conn.fetchval("SELECT token_hash FROM api_tokens WHERE name = 'alice'")
        assert stored == hash_token(token) and token not in stored
        principal = await lookup_token(conn, token)
        assert principal is not None and principal.role == "operator" and principal.allows("viewer")
        assert not principal.allows("admin")
        assert await lookup_token(conn, token + "x") is None
        await conn.execute("UPDATE api_tokens SET revoked_at = now()")
        assert await lookup_token(conn, token) is None
    await pool.close()


async def test_unreachable_database_says_what_to_check(database: DatabaseConfig) -> None:
    from service.localservers import free_port

    bad = database.model_copy(update={"port": free_port(), "connect_timeout_s": 2})
    with pytest.raises(DatabaseUnavailable, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:\d+.*check \[database\]"):
        await connect_pool(bad)
    wrong_pw = database.model_copy(update={"password": "wrong"})
    with pytest.raises(DatabaseUnavailable, match="wrong password"):
        await connect_pool(wrong_pw)

