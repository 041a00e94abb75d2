"""Alarms through the API against a real database: list, acknowledge, shelve, roles, persistence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.alarms.manager import AlarmManager
from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate

CFG = parse_config({
    "devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1}]}],
    "alarms": {"device_offline_delay_s": 5, "limits": [
        {"point": "hp1.supply_temperature", "high": 90, "deadband": 1, "severity": "high"}]}})
P = "hp1.supply_temperature"


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 2, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
async def env(database: DatabaseConfig) -> AsyncIterator[dict[str, Any]]:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        tokens = {r: await create_token(conn, r, f"{r}-user") for r in ("viewer", "operator")}  # type: ignore[arg-type]
    bus, clock = SampleBus(), Clock()
    states = {"hp1": "connected"}
    mgr = AlarmManager(CFG.alarms, ["hp1"], bus, pool, lambda: states, now=clock)
    await mgr.start()
    app = create_app(ServiceState(CFG, bus, pool, alarms=mgr))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield {"client": client, "tokens": tokens, "bus": bus, "clock": clock, "mgr": mgr, "pool": pool,
               "states": states}
    await pool.close()


def h(env: dict[str, Any], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['tokens'][role]}"}


async def test_alarm_lifecycle_through_the_api(env: dict[str, Any]) -> None:
    c, bus, clock, mgr = env["client"], env["bus"], env["clock"], env["mgr"]
    bus.publish(Sample(P, 93.0, Quality.GOOD, clock.t, clock.t))
    events = await mgr.evaluate_once()
    assert [(e.alarm_id, e.new.value) for e in events] == [(f"{P}:high", "unack_active")]

    r = await c.get("/api/v1/alarms", params={"needs_ack": True}, headers=h(env, "viewer"))
    assert r.status_code == 200, r.text
    assert [(a["id"], a["state"], a["value"]) for a in r.json()["alarms"]] == [(f"{P}:high", "unack_active", 93.0)]

    url = f"/api/v1/alarms/{P}:high/acknowledge"
    assert (await c.post(url)).status_code == 401
    assert (await c.post(url, headers=h(env, "viewer"))).status_code == 403
    r = await c.post(url, headers=h(env, "operator"))
    assert r.status_code == 200 and r.json()["new_state"] == "acked_active" and r.json()["by"] == "operator-user"
    r = await c.post(url, headers=h(env, "operator"))
    assert r.status_code == 409 and "nothing to acknowledge" in r.json()["error"]
    assert (await c.post("/api/v1/alarms/nope/acknowledge", headers=h(env, "operator"))).status_code == 404

    shelve = f"/api/v1/alarms/{P}:high/shelve"
    for bad in ({"duration_s": True}, {"duration_s": "60"}, {"duration_s": -1}, {"duration_s": 60, "x": 1}, {}):
        r = await c.post(shelve, json=bad, headers=h(env, "operator"))
        assert r.status_code == 422, bad
        assert "error" in r.json()
    r = await c.post(shelve, json={"duration_s": 60}, headers=h(env, "operator"))
    assert r.status_code == 200 and r.json()["new_state"] == "shelved"

    r = await c.get("/api/v1/alarms/events", headers=h(env, "viewer"))
    assert [e["new_state"] for e in r.json()["events"]] == ["shelved", "acked_active", "unack_active"]

    # The state survives a restart of the service (a new manager on the same database).
    mgr2 = AlarmManager(CFG.alarms, ["hp1"], bus, env["pool"], lambda: env["states"], now=clock)
    await mgr2.start()
    restored = mgr2.engine.alarms[f"{P}:high"]
    assert restored.state.value == "shelved" and restored.active and restored.shelved_until is not None


async def test_device_offline_alarm(env: dict[str, Any]) -> None:
    mgr, clock, states = env["mgr"], env["clock"], env["states"]
    states["hp1"] = "backing_off"
    assert await mgr.evaluate_once() == []
    clock.t += timedelta(seconds=5)
    events = await mgr.evaluate_once()
    assert [(e.alarm_id, e.new.value) for e in events] == [("device:hp1:offline", "unack_active")]
    stored = await env["pool"].fetchval("SELECT state FROM alarms WHERE id = 'device:hp1:offline'")
    assert stored == "unack_active"
