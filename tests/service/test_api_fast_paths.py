"""The API's fast paths keep their promises: pre-encoded points equal the model's JSON, cached tokens expire."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram

from service.api.app import PointList, PointOut, create_app
from service.api.points_view import PointsView
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate

CFG = parse_config({"devices": [
    {"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input"},
        {"id": "cop", "address": 1, "function": "input"},
        {"id": "setpoint", "unit": "degC", "address": 2, "function": "holding", "kind": "setpoint", "writable": True,
         "min": 10.0, "max": 95.0},
        {"id": "power", "unit": "kW \"el\"", "address": 3, "function": "input"}]},
    {"id": "meter1", "protocol": "modbus", "endpoint": "127.0.0.1:5021", "points": [
        {"id": "energy", "unit": "GJ", "address": 0, "function": "input", "kind": "counter"}]}]})


def model_json(bus: SampleBus, device: str | None = None) -> bytes:
    out = []
    for d in CFG.devices:
        for p in d.points:
            if device is not None and d.id != device:
                continue
            pid = f"{d.id}.{p.id}"
            s = bus.latest.get(pid)
            out.append(PointOut(id=pid, device=d.id, unit=p.unit, kind=p.kind, writable=p.writable,
                                value=s.value if s else None, quality=s.quality.name if s else None,
                                source_time=s.source_time if s else None, receive_time=s.receive_time if s else None))
    return PointList(points=out).model_dump_json().encode()


def test_points_view_is_byte_identical_to_the_model() -> None:
    bus = SampleBus()
    view = PointsView(CFG, bus)
    assert view.json() == model_json(bus)  # nothing sampled yet
    t = datetime(2026, 3, 1, 12, 0, 0, 42_000, tzinfo=UTC)
    bus.publish(Sample("hp1.supply_temperature", 71.5, Quality.GOOD, t, t + timedelta(microseconds=7)))
    bus.publish(Sample("hp1.cop", math.nan, Quality.BAD, t, t))
    bus.publish(Sample("hp1.power", math.inf, Quality.UNCERTAIN, t, t))
    bus.publish(Sample("meter1.energy", None, Quality.STALE, t, t))
    assert view.json() == model_json(bus)
    # A newer sample replaces the cached encoding of its point.
    bus.publish(Sample("hp1.supply_temperature", 72.25, Quality.GOOD, t + timedelta(seconds=1), t))
    assert view.json() == model_json(bus)
    assert b"72.25" in view.json() and b"71.5" not in view.json()
    assert view.json("meter1") == model_json(bus, "meter1")


async def test_latency_histogram_labels_route_template_and_status(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            token = await create_token(conn, "viewer", "v")
        registry = CollectorRegistry()
        hist = Histogram("lat_seconds", "test", ["method", "route", "status"], registry=registry)
        app = create_app(ServiceState(CFG, SampleBus(), pool, latency=hist))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/api/v1/points", headers={"Authorization": f"Bearer {token}"})).status_code == 200
            assert (await c.get("/api/v1/points")).status_code == 401
            assert (await c.get("/nope/123")).status_code == 404

        def count(route: str, status: str) -> float | None:
            return registry.get_sample_value("lat_seconds_count", {"method": "GET", "route": route, "status": status})

        assert count("/api/v1/points", "200") == 1 and count("/api/v1/points", "401") == 1
        assert count("unmatched", "404") == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("device", ["hp1", "meter1"])
async def test_points_endpoint_serves_the_view(database: DatabaseConfig, device: str) -> None:
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            token = await create_token(conn, "viewer", "v")
        bus = SampleBus()
        t = datetime(2026, 3, 1, 12, tzinfo=UTC)
        bus.publish(Sample("hp1.cop", 4.25, Quality.GOOD, t, t))
        app = create_app(ServiceState(CFG, bus, pool))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/api/v1/points", params={"device": device}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.content == model_json(bus, device)
        PointList.model_validate_json(r.content)
    finally:
        await pool.close()
