"""History: the query module and GET /api/v1/points/{id}/history against real TimescaleDB."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.storage.database import connect_pool
from service.storage.history import HistoryError, UnknownPoint, bounded_step, parse_step, point_history
from service.storage.migrations import migrate
from service.storage.points import sync_points

CFG = parse_config({"devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
    {"id": "supply_temperature", "unit": "degC", "address": 0}]}]})
T0 = datetime(2026, 1, 1, tzinfo=UTC)
URL = "/api/v1/points/hp1.supply_temperature/history"


@pytest.fixture
async def seeded(database: DatabaseConfig) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """One hour of readings every 10 s (value = minute of the hour), one BAD reading, and a viewer token."""
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        keys = await sync_points(conn, CFG)
        key = keys["hp1.supply_temperature"]
        rows = [(T0 + timedelta(seconds=10 * i), key, float(i // 6), 0) for i in range(360)]
        rows.append((T0 + timedelta(seconds=5), key, None, 2))
        await conn.copy_records_to_table("samples", records=rows, columns=["time", "point_key", "value", "quality"])
        token = await create_token(conn, "viewer", "v")
    yield pool, token
    await pool.close()


async def test_buckets_avg_min_max_last(seeded: tuple[asyncpg.Pool, str]) -> None:
    pool, _ = seeded
    end = T0 + timedelta(hours=1)
    avg = await point_history(pool, "hp1.supply_temperature", T0, end, timedelta(minutes=10), "avg")
    assert [b.time for b in avg] == [T0 + timedelta(minutes=10 * k) for k in range(6)]
    assert [b.count for b in avg] == [60] * 6  # the BAD reading has no value and is left out
    assert avg[0].value == pytest.approx(4.5) and avg[5].value == pytest.approx(54.5)
    mx = await point_history(pool, "hp1.supply_temperature", T0, end, timedelta(minutes=10), "max")
    mn = await point_history(pool, "hp1.supply_temperature", T0, end, timedelta(minutes=10), "min")
    last = await point_history(pool, "hp1.supply_temperature", T0, end, timedelta(minutes=30), "last")
    assert [b.value for b in mx] == [9, 19, 29, 39, 49, 59] and [b.value for b in mn] == [0, 10, 20, 30, 40, 50]
    assert [b.value for b in last] == [29, 59]
    # Buckets start where the range starts, not at an epoch-aligned boundary.
    shifted = await point_history(pool, "hp1.supply_temperature", T0 + timedelta(minutes=5), end,
                                  timedelta(minutes=10), "min")
    assert shifted[0].time == T0 + timedelta(minutes=5) and shifted[0].value == 5
    assert await point_history(pool, "hp1.supply_temperature", T0, T0, timedelta(minutes=1)) == []  # empty range
    with pytest.raises(UnknownPoint):
        await point_history(pool, "hp1.nope", T0, end, timedelta(minutes=1))
    # 36,000 buckets of 100 ms asked: coarsened to 360 ms, 10,000 buckets at most.
    assert bounded_step(T0, end, timedelta(milliseconds=100)) == timedelta(milliseconds=360)
    fine = await point_history(pool, "hp1.supply_temperature", T0, end, timedelta(milliseconds=100))
    assert len(fine) == 360 and {b.time - T0 for b in fine} <= {timedelta(milliseconds=360 * k) for k in range(10_000)}
    assert parse_step("5m") == timedelta(minutes=5) and parse_step("90") == timedelta(seconds=90)
    assert parse_step(".5s") == timedelta(milliseconds=500) and parse_step("0.0001ms") == timedelta(milliseconds=1)
    with pytest.raises(HistoryError, match="not a duration"):
        parse_step("fast")


@pytest.fixture
async def client(seeded: tuple[asyncpg.Pool, str]) -> AsyncIterator[httpx.AsyncClient]:
    pool, token = seeded
    app = create_app(ServiceState(CFG, SampleBus(), pool))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


async def test_history_endpoint(client: httpx.AsyncClient) -> None:
    r = await client.get(URL, params={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z",
                                      "step": "15m", "agg": "max"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["step_s"] == 900 and body["agg"] == "max"
    assert [b["value"] for b in body["buckets"]] == [14, 29, 44, 59]
    assert [b["count"] for b in body["buckets"]] == [90] * 4
    # Without zone the times are UTC; without step about 500 buckets (8 s) are chosen.
    r = await client.get(URL, params={"start": "2026-01-01T00:00:00", "end": "2026-01-01T01:00:00"})
    # Empty buckets are left out: one reading per 10 s gives 360 buckets of 8 s.
    assert r.status_code == 200 and r.json()["step_s"] == 8 and len(r.json()["buckets"]) == 360


@pytest.mark.parametrize(("params", "status", "fragment"), [
    ({"agg": "median"}, 422, "agg"),
    ({"step": "fast"}, 422, "step"),
    ({"step": "1e400"}, 422, "step"),
    ({"step": "0"}, 422, "step"),
    ({"step": ""}, 422, "step"),
    ({"start": "yesterday"}, 422, "start"),
    ({"step": "99999999999999999d"}, 422, "step"),
])
async def test_history_bad_params_are_json_422(client: httpx.AsyncClient, params: dict[str, str], status: int,
                                               fragment: str) -> None:
    r = await client.get(URL, params=params)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


async def test_history_inverted_range_is_empty(client: httpx.AsyncClient) -> None:
    # Only start given, in the future: end defaults to now, so the range holds nothing.
    r = await client.get(URL, params={"start": "2999-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.json()["buckets"] == []


async def test_history_result_is_bounded(client: httpx.AsyncClient) -> None:
    # A range longer than [api] max_query_span_days (366 by default) is refused: its work grows with it.
    r = await client.get(URL, params={"start": "0001-01-01T00:00:00Z", "end": "9999-01-01T00:00:00Z", "step": "1s"})
    assert r.status_code == 422 and "max_query_span_days" in r.json()["error"], r.text
    # Within it, a step giving more than 10,000 buckets is coarsened.
    r = await client.get(URL, params={"start": "2025-07-01T00:00:00Z", "end": "2026-07-01T00:00:00Z", "step": "1s"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["step_s"] >= 86400 * 365 / 10_000 and len(body["buckets"]) <= 2
    assert sum(b["count"] for b in body["buckets"]) == 360


async def test_history_unknown_point_is_404_and_needs_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/points/hp1.nope/history")
    assert r.status_code == 404 and "hp1.nope" in r.json()["error"]
    r = await client.get(URL, headers={"Authorization": ""})
    assert r.status_code == 401


async def test_retention_drops_only_old_chunks(seeded: tuple[asyncpg.Pool, str]) -> None:
    from service.storage.retention import drop_old_chunks, edition

    pool, _ = seeded
    async with pool.acquire() as conn:
        key = await conn.fetchval("SELECT key FROM points")
        now = datetime.now(UTC)
        await conn.execute("INSERT INTO samples VALUES ($1, $2, 1.0, 0)", now, key)
        dropped = await drop_old_chunks(conn, timedelta(days=30))
        assert len(dropped) == 1  # the 2026-01-01 chunk of the seeded hour, if now is later than that + 30 d
        assert await conn.fetchval("SELECT count(*) FROM samples") == 1
        assert await edition(conn) in ("apache", "timescale")


async def test_rollups_are_optional_on_the_apache_edition(seeded: tuple[asyncpg.Pool, str]) -> None:
    from service.config import StorageConfig
    from service.storage.retention import edition, enable_rollups

    pool, _ = seeded
    async with pool.acquire() as conn:
        enabled = await enable_rollups(conn, StorageConfig())
        assert enabled == (await edition(conn) == "timescale")
        if not enabled:  # nothing was half-created
            assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.continuous_aggregates") == 0
