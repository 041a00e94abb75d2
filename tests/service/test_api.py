"""HTTP API: health's status without auth (its parts with a token), points with a viewer token, JSON errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate

CFG = parse_config({"plant": {"name": "test plant"}, "devices": [
    {"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1},
        {"id": "cop", "address": 4, "function": "input"}]}]})


@pytest.fixture
async def api(database: DatabaseConfig) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], SampleBus]]:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        tokens = {"viewer": await create_token(conn, "viewer", "v"),
                  "operator": await create_token(conn, "operator", "o")}
    bus = SampleBus()
    health = {"database": ("ok", ""), "driver:hp1": ("degraded", "backing_off")}
    app = create_app(ServiceState(CFG, bus, pool, lambda: health), FailedAuthLimiter(max_failures=5, delay_s=0.01,
                                                                                   max_held=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client, tokens, bus
    await pool.close()


async def test_health_needs_no_token_and_reports_degraded(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens, _ = api
    r = await client.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "degraded"}  # for load balancers: the status alone, no detail
    r = await client.get("/api/v1/health", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    body = r.json()
    assert body["status"] == "degraded" and body["plant"] == "test plant"
    assert body["components"]["driver:hp1"] == {"status": "degraded", "detail": "backing_off"}
    assert (await client.get("/api/v1/health", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_points_with_viewer_token(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens, bus = api
    t = datetime(2026, 3, 1, 12, tzinfo=UTC)
    bus.publish(Sample("hp1.supply_temperature", 71.5, Quality.GOOD, t, t))
    r = await client.get("/api/v1/points", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert r.status_code == 200
    pts = {p["id"]: p for p in r.json()["points"]}
    assert pts["hp1.supply_temperature"]["value"] == 71.5
    assert pts["hp1.supply_temperature"]["quality"] == "GOOD"
    assert pts["hp1.supply_temperature"]["unit"] == "degC"
    assert pts["hp1.supply_temperature"]["source_time"].startswith("2026-03-01T12:00:00")
    assert pts["hp1.cop"]["value"] is None and pts["hp1.cop"]["quality"] is None


@pytest.mark.parametrize(("header", "status", "fragment"), [
    (None, 401, "missing bearer token"),
    ("Basic abc", 401, "missing bearer token"),
    ("Bearer not-a-token", 401, "invalid or revoked token"),
])
async def test_points_auth_errors_are_json(api, header: str | None, status: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    r = await client.get("/api/v1/points", headers={"Authorization": header} if header else {})
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert fragment in r.json()["error"]


async def test_unknown_path_is_json_404(api) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    r = await client.get("/api/v1/nope")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"


async def test_guessing_tokens_is_slowed_down_and_a_good_token_still_passes(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens, _ = api
    limiter = client._transport.app.state.auth_limiter  # type: ignore[attr-defined]
    statuses = [(await client.get("/api/v1/points", headers={"Authorization": f"Bearer guess-{i}"})).status_code
                for i in range(7)]
    assert statuses == [401] * 7 and limiter.total_delayed == 2  # the 6th and 7th were held before their 401
    # Guessing in parallel: one held answer per client at most, the others get 429 at once.
    answers = await asyncio.gather(*(client.get("/api/v1/points", headers={"Authorization": f"Bearer par-{i}"})
                                     for i in range(4)))
    refused = [r for r in answers if r.status_code == 429]
    assert sorted(r.status_code for r in answers) == [401, 429, 429, 429], [r.status_code for r in answers]
    assert int(refused[0].headers["retry-after"]) >= 1 and "too many failed authentications" in refused[0].json()[
        "error"]
    r = await client.get("/api/v1/points", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert r.status_code == 200  # a valid token is never refused, whatever else came from its address
