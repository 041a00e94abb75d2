"""Accounting endpoints against a real database: energy, settlements (close, correct, CSV), readings, KPIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_END, MARCH_START, config, constant_meter, write

MARCH_GJ = 267.48  # 100 kW x 743 h x 0.0036 GJ/kWh


@pytest.fixture
async def env(database: DatabaseConfig) -> AsyncIterator[dict[str, Any]]:
    pool = await connect_pool(database)
    cfg = config()
    async with pool.acquire() as conn:
        await migrate(conn)
        tokens = {r: await create_token(conn, r, f"{r}-user") for r in ("viewer", "operator")}  # type: ignore[arg-type]
        await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1),
                                              100.0))
    app = create_app(ServiceState(cfg, SampleBus(), pool))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield {"client": client, "tokens": tokens, "pool": pool}
    await pool.close()


def h(env: dict[str, Any], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['tokens'][role]}"}


async def test_energy_per_interval(env: dict[str, Any]) -> None:
    c = env["client"]
    q = {"start": MARCH_START.isoformat(), "end": (MARCH_START + timedelta(hours=3)).isoformat(),
         "interval_s": 3600}
    r = await c.get("/api/v1/energy", params=q, headers=h(env, "viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    # 100 kW for an hour = 0.36 GJ per interval, three intervals.
    assert [i["energy_gj"] for i in body["intervals"]] == [pytest.approx(0.36)] * 3
    assert all(i["estimated"] is False and i["manual"] is False for i in body["intervals"])
    assert body["energy_gj"] == {"m1": pytest.approx(1.08), "total": pytest.approx(1.08)}
    assert body["intervals"][0]["drift_percent"] == pytest.approx(0.0, abs=1e-6)


async def test_energy_rejects_bad_input_with_json(env: dict[str, Any]) -> None:
    c = env["client"]
    bad = [({"meter": "nope"}, 404), ({"interval_s": 5}, 422), ({"meter": "Bad-Id"}, 422),
           ({"start": "0.5"}, 422)]  # epoch numbers are not the ISO 8601 the schema promises
    for params, status in bad:
        r = await c.get("/api/v1/energy", params=params, headers=h(env, "viewer"))
        assert r.status_code == status, (params, r.text)
        assert r.json()["status"] == status and r.json()["error"]
    assert (await c.get("/api/v1/energy")).status_code == 401
    # Valid but awkward requests get an answer, not an error: an inverted range is empty, too many
    # intervals are coarsened to 10,000 at most (here 335 days: 335 x 86,400 s / 10,000 -> 2,895 s steps).
    inverted = await c.get("/api/v1/energy", params={"start": "2024-03-02T00:00:00Z", "end": "2024-03-01T00:00:00Z"},
                           headers=h(env, "viewer"))
    assert inverted.status_code == 200 and inverted.json()["intervals"] == []
    wide = await c.get("/api/v1/energy", params={"start": "2024-01-01T00:00:00Z", "end": "2024-12-01T00:00:00Z",
                                                 "interval_s": 60}, headers=h(env, "viewer"))
    assert wide.status_code == 200 and wide.json()["interval_s"] == 2895
    assert len(wide.json()["intervals"]) <= 10_000
    # A month the rule set has no figures for (no 2031 rate): 409 naming what is missing.
    r = await c.get("/api/v1/settlements", params={"period": "2031-01"}, headers=h(env, "viewer"))
    assert r.status_code == 409 and "2031" in r.json()["error"]


async def test_settlement_close_correct_and_export(env: dict[str, Any]) -> None:
    c = env["client"]
    draft = await c.get("/api/v1/settlements", params={"period": "2024-03"}, headers=h(env, "viewer"))
    assert draft.status_code == 200
    [doc] = draft.json()["settlements"]
    assert doc["status"] == "open" and doc["delivered_gj"] == pytest.approx(MARCH_GJ)
    # 2024, industrial contract: charge 267.48 x 28.2 = 7,542.936 DKK; agreed 100 under the 110 cap.
    assert doc["charge_dkk"] == pytest.approx(7542.94) and doc["amount_dkk"] == pytest.approx(26748.0)

    url = "/api/v1/settlements/c1/2024-03"
    assert (await c.post(f"{url}/close", json={}, headers=h(env, "viewer"))).status_code == 403
    closed = await c.post(f"{url}/close", json={"note": "March"}, headers=h(env, "operator"))
    assert closed.status_code == 200, closed.text
    assert closed.json()["version"] == 1 and closed.json()["closed_by"] == "operator-user"
    again = await c.post(f"{url}/close", json={}, headers=h(env, "operator"))
    assert again.status_code == 409 and "correction" in again.json()["error"]
    assert (await c.post(f"{url}/correct", json={}, headers=h(env, "operator"))).status_code == 422
    assert (await c.post(f"{url}/correct", json={"reason": "   "}, headers=h(env, "operator"))).status_code == 422
    assert (await c.post(f"{url}/close", json={"x": 1}, headers=h(env, "operator"))).status_code == 422
    fixed = await c.post(f"{url}/correct", json={"reason": "on-site reading"}, headers=h(env, "operator"))
    assert fixed.status_code == 200 and fixed.json()["version"] == 2

    latest = (await c.get("/api/v1/settlements", params={"period": "2024-03"}, headers=h(env, "viewer"))).json()
    assert [(d["version"], d["status"]) for d in latest["settlements"]] == [(2, "closed")]
    every = (await c.get("/api/v1/settlements", params={"all_versions": "true"}, headers=h(env, "viewer"))).json()
    assert [d["version"] for d in every["settlements"]] == [1, 2]

    csv = await c.get("/api/v1/settlements", params={"period": "2024-03", "format": "csv"}, headers=h(env, "viewer"))
    assert csv.headers["content-type"].startswith("text/csv")
    header, row = csv.text.strip().splitlines()
    assert header.startswith("contract,period,version") and row.startswith("c1,2024-03,2,")
    by_accept = await c.get("/api/v1/settlements", headers=h(env, "viewer") | {"Accept": "text/csv"})
    assert by_accept.text.startswith("contract,")

    assert (await c.post("/api/v1/settlements/zz/2024-03/close", json={},
                         headers=h(env, "operator"))).status_code == 404
    assert (await c.post("/api/v1/settlements/c1/2024-13/close", json={},
                         headers=h(env, "operator"))).status_code == 422


async def test_manual_readings_and_replacements(env: dict[str, Any]) -> None:
    c = env["client"]
    body = {"time": "2024-03-05T12:05:00Z", "value_gj": 42.5, "note": "read on site"}
    assert (await c.post("/api/v1/meters/m1/readings", json=body, headers=h(env, "viewer"))).status_code == 403
    r = await c.post("/api/v1/meters/m1/readings", json=body, headers=h(env, "operator"))
    assert r.status_code == 200 and r.json()["meter"] == "m1"
    assert (await c.post("/api/v1/meters/m1/readings", json=body, headers=h(env, "operator"))).status_code == 409
    assert (await c.post("/api/v1/meters/zz/readings", json=body, headers=h(env, "operator"))).status_code == 404
    for bad in (body | {"value_gj": -1}, body | {"time": 0.5}, body | {"extra": 1}):
        r = await c.post("/api/v1/meters/m1/readings", json=bad, headers=h(env, "operator"))
        assert r.status_code == 422 and r.json()["error"], bad
    rep = {"time": "2024-03-10T00:05:00Z", "new_serial": "80000001", "old_final_gj": 12.0}
    r = await c.post("/api/v1/meters/m1/replacements", json=rep, headers=h(env, "operator"))
    assert r.status_code == 200, r.text


async def test_kpis_and_annual_report(env: dict[str, Any]) -> None:
    c = env["client"]
    r = await c.get("/api/v1/kpis", params={"period": "2024-03"}, headers=h(env, "viewer"))
    assert r.status_code == 200, r.text
    k = r.json()
    # 267.48 GJ / 3.6 = 74.3 MWh; homes at 14 MWh/year over 743 of 8766 hours: 74.3 / 14 / (743 / 8766).
    assert k["delivered_mwh"] == pytest.approx(74.3)
    assert k["homes_heated"] == pytest.approx(74.3 / 14 / (743 / 8766), abs=0.05)
    # No site meters and no heat-pump electricity recorded: those KPIs are null, not guessed.
    assert k["erf"] is None and k["pue"] is None and k["seasonal_cop"] is None
    assert k["heat_pump_electricity_mwh"] == 0.0
    a = await c.get("/api/v1/reports/annual", params={"year": 2024, "commissioned": "2027-08-01"},
                    headers=h(env, "viewer"))
    assert a.status_code == 200
    doc = a.json()
    assert doc["due"] == "2025-05-15" and doc["enefg"]["erf_target"] == 0.15
    # The year holds the data from 1 h before March to 1 h after: 745 h x 100 kW = 74,500 kWh from the register,
    # plus the last sensor sample held for gap_s (900 s) where no register follows: 100 kW x 0.25 h = 25 kWh.
    assert doc["eu_data_centre_database"]["waste_heat_reused_kwh"] == pytest.approx(74_525.0)


async def test_routes_answer_404_without_accounting(database: DatabaseConfig) -> None:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        token = await create_token(conn, "viewer", "v")
    app = create_app(ServiceState(parse_config({}), SampleBus(), pool))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/api/v1/kpis", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404 and "accounting" in r.json()["error"]
    await pool.close()
