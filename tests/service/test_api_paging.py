"""Pagination of list endpoints: limit, cursor and `next` walk every item once, even while new ones arrive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.alarms import store
from service.alarms.manager import AlarmManager
from service.alarms.model import AlarmEvent, AlarmState
from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config

POINTS = [f"t{i}" for i in range(4)]
CFG = parse_config({
    "devices": [{"id": dev, "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": p, "unit": "degC", "address": i, "function": "input"} for i, p in enumerate(POINTS)]}
        for dev in ("hp1", "hp2")],
    "alarms": {"limits": [{"point": f"hp1.{p}", "high": 90, "low": 10} for p in POINTS]}})
T0 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
async def env(database: DatabaseConfig) -> AsyncIterator[dict[str, Any]]:
    from service.storage.database import connect_pool
    from service.storage.migrations import migrate

    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        token = await create_token(conn, "viewer", "pager")
    mgr = AlarmManager(CFG.alarms, ["hp1", "hp2"], SampleBus(), pool, lambda: {})
    await mgr.start()
    app = create_app(ServiceState(CFG, SampleBus(), pool, alarms=mgr))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield {"client": client, "mgr": mgr, "pool": pool}
    await pool.close()


async def walk(client: httpx.AsyncClient, url: str, key: str, pages: list[int]) -> list[dict[str, Any]]:
    """Follow `next` links from `url`, recording each page's size."""
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        r = await client.get(next_url)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body[key]
        pages.append(len(body[key]))
        assert (body["next"] is None) == (body["next_cursor"] is None)
        next_url = body["next"]
        assert len(pages) < 50, "pagination does not end"
    return items


async def test_alarm_list_pages_cover_every_alarm_once(env: dict[str, Any]) -> None:
    c = env["client"]
    everything = (await c.get("/api/v1/alarms")).json()
    ids = [a["id"] for a in everything["alarms"]]
    assert len(ids) == 4 * 3 + 2 and ids == sorted(ids)  # high, low, quality per point; offline per device
    assert everything["next"] is None and everything["next_cursor"] is None  # default limit: all of these

    pages: list[int] = []
    paged = await walk(c, "/api/v1/alarms?limit=5", "alarms", pages)
    assert [a["id"] for a in paged] == ids
    assert pages == [5, 5, 4]

    # Filters travel in the `next` link.
    first = (await c.get("/api/v1/alarms", params={"state": "normal", "limit": 2})).json()
    assert "state=normal" in first["next"] and "limit=2" in first["next"]


async def test_alarm_event_pages_are_stable_while_events_arrive(env: dict[str, Any]) -> None:
    c, pool = env["client"], env["pool"]
    alarm = env["mgr"].engine.alarms["hp1.t0:high"]

    def ev(i: int, t: datetime) -> AlarmEvent:
        return AlarmEvent(alarm.id, t, AlarmState.NORMAL, AlarmState.UNACK_ACTIVE, float(i), None, f"e{i}")

    # Pairs of events share a timestamp: the sequence number must break the tie across pages.
    await store.save(pool, [alarm], [ev(i, T0 + timedelta(seconds=i // 2)) for i in range(11)])

    r = (await c.get("/api/v1/alarms/events", params={"limit": 4})).json()
    assert [e["message"] for e in r["events"]] == ["e10", "e9", "e8", "e7"]
    # A new event lands on top between pages; the next page continues where the first one stopped.
    await store.save(pool, [alarm], [ev(99, T0 + timedelta(hours=1))])
    pages: list[int] = []
    rest = await walk(c, r["next"], "events", pages)
    assert [e["message"] for e in rest] == [f"e{i}" for i in range(6, -1, -1)]
    assert pages == [4, 3]

    filtered = (await c.get("/api/v1/alarms/events", params={"alarm_id": "hp1.t1:low", "limit": 1})).json()
    assert filtered == {"events": [], "next": None, "next_cursor": None}


@pytest.mark.parametrize(("params", "status", "fragment"), [
    ({"cursor": "123456"}, 404, "names no alarm event"),
    ({"cursor": "abc"}, 422, "cursor"),
    ({"limit": 1001}, 422, "limit"),
    ({"limit": 0}, 422, "limit"),
])
async def test_bad_event_paging_is_a_json_4xx(env: dict[str, Any], params: dict[str, Any], status: int,
                                              fragment: str) -> None:
    r = await env["client"].get("/api/v1/alarms/events", params=params)
    assert r.status_code == status and fragment in r.json()["error"]


async def test_points_filtered_by_device(env: dict[str, Any]) -> None:
    c = env["client"]
    every = (await c.get("/api/v1/points")).json()["points"]
    assert {p["device"] for p in every} == {"hp1", "hp2"}
    hp2 = (await c.get("/api/v1/points", params={"device": "hp2"})).json()["points"]
    assert [p["id"] for p in hp2] == [f"hp2.{p}" for p in POINTS]
    r = await c.get("/api/v1/points", params={"device": "nope"})
    assert r.status_code == 404 and "no device 'nope'" in r.json()["error"]
