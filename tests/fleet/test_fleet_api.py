"""The centre's API against a real `heatrec central` fed by a real site uplink: auth, points, history, KPIs.

One site sends known registers (heat meter, IT, facility and heat-pump electricity) and a temperature
through its Uplink and the fleet broker; the centre's answers are checked against what was sent: the
history's buckets, and the KPI document the site's own compute_kpis makes of the registers' increases.
Then the central database is taken away (connections refused and ended) and brought back: 503 with
Retry-After, the sites list still answering, 200 again.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from service.accounting.kpis import KpiInputs, compute_kpis
from service.config import AccountingConfig, DatabaseConfig
from service.localservers import PostgresCluster, free_port
from service.model import Quality, Sample
from tests.fleet.conftest import ROOT, CentralProcess, FleetBroker, SimulatedSite, central_toml, uplink_config
from tests.support import wait_until

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
STEPS = 120  # one reading a minute for two hours, 121 per point
REGISTERS = {"meter1.energy": (100.0, 0.01), "dc.it_energy": (5000.0, 5.0), "dc.facility_energy": (8000.0, 6.0),
             "hp1.electricity": (10.0, 1.0)}
SITE_A_KPI = ['heat_meter_points = ["meter1.energy"]', 'heat_pump_points = ["hp1.electricity"]',
              'it_energy_point = "dc.it_energy"', 'facility_energy_point = "dc.facility_energy"',
              'timezone = "Europe/Copenhagen"']


def site_a_samples(t0: datetime = T0) -> list[Sample]:
    """The registers and a temperature (60 + i mod 10 °C), every minute from t0."""
    out = []
    for i in range(STEPS + 1):
        t = t0 + timedelta(minutes=i)
        out += [Sample(p, base + step * i, Quality.GOOD, t, t) for p, (base, step) in REGISTERS.items()]
        out.append(Sample("hp1.supply_temperature", 60.0 + i % 10, Quality.GOOD, t, t))
    return out


@pytest.fixture
def central(shared_tmp_path: Path, database: DatabaseConfig, fleet_broker: FleetBroker) -> Iterator[CentralProcess]:
    """`heatrec central` for site-a (its KPI registers named), site-b and site-c."""
    port = free_port()
    cfg = central_toml(shared_tmp_path / "central-api.toml", database, fleet_broker, "central-api", port,
                       site_lines={"site-a": SITE_A_KPI})
    proc = CentralProcess(cfg, port, shared_tmp_path / "central-api.log")
    proc.start()
    yield proc
    proc.stop()


async def _get(client: httpx.AsyncClient, url: str, token: str | None = None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.get(url, headers=headers, params=params)


async def test_fleet_api_auth_points_history_kpis_and_outage(
        central: CentralProcess, fleet_broker: FleetBroker, shared_tmp_path: Path, database: DatabaseConfig,
        postgres: PostgresCluster, simulated_sites: list[SimulatedSite]) -> None:
    site_a = SimulatedSite(uplink_config(fleet_broker, "site-a", shared_tmp_path / "outbox-a"))
    site_b = SimulatedSite(uplink_config(fleet_broker, "site-b", shared_tmp_path / "outbox-b"))
    simulated_sites += [site_a, site_b]
    await wait_until(central.sites, 30, "central API up")
    for s in (site_a, site_b):
        await s.start_uplink()
    sent = site_a_samples()
    for sample in sent:
        site_a.bus.publish(sample)
    site_b.bus.publish(Sample("dev0.p0", 1.0, Quality.GOOD, T0, T0))

    async def stored() -> bool:
        sites = await central.sites()
        return sites.get("site-a", {}).get("samples") == len(sent) and sites.get("site-b", {}).get("samples") == 1
    await wait_until(stored, 30, "every sample in the central database")

    base, tok = central.url, central.token
    async with httpx.AsyncClient(timeout=10) as client, httpx.AsyncClient(base_url=base, timeout=10) as ui:
        # --- auth: the site's model --------------------------------------------------------------------------
        r = await _get(client, f"{base}/api/v1/fleet/sites")
        assert r.status_code == 401 and r.json()["status"] == 401 and "bearer token" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = await _get(client, f"{base}/api/v1/fleet/sites/site-a/kpis", "hr_not-a-token")
        assert r.status_code == 401 and r.json()["error"] == "invalid or revoked token"
        assert (await _get(client, f"{base}/metrics")).status_code == 401
        metrics = await _get(client, f"{base}/metrics", tok)
        assert metrics.status_code == 200 and 'heatrec_fleet_site_watermark{site="site-a"}' in metrics.text
        assert (await _get(client, f"{base}/health")).json() == {"status": "ok"}
        assert set((await _get(client, f"{base}/health", tok)).json()["components"]) == {"database", "broker"}
        r = await _get(client, f"{base}/api/v1/tokens", tok)
        assert r.status_code == 403 and r.json() == {
            "error": "this needs the admin role; the token has the viewer role", "status": 403}
        # A token made with the CLI on central.toml is in force at once (the centre re-reads its store).
        made = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "service.cli", "token", "create", "-c", str(central.config), "--role", "admin",
            "--name", "ops"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        r = await _get(client, f"{base}/api/v1/tokens", made.stdout.strip())
        assert r.status_code == 200 and {"ops", "tests"} <= {t["name"] for t in r.json()["tokens"]}

        # --- points and history -------------------------------------------------------------------------------
        r = await _get(client, f"{base}/api/v1/fleet/sites/site-a/points", tok)
        assert r.status_code == 200
        points = {p["id"]: p for p in r.json()["points"]}
        assert set(points) == {*REGISTERS, "hp1.supply_temperature"}
        last = T0 + timedelta(minutes=STEPS)
        assert points["hp1.supply_temperature"]["value"] == 60.0
        assert datetime.fromisoformat(points["hp1.supply_temperature"]["time"]) == last
        assert points["meter1.energy"]["quality"] == "GOOD"
        window = {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=10)).isoformat(), "step": "5m"}
        r = await _get(client, f"{base}/api/v1/fleet/sites/site-a/points/hp1.supply_temperature/history", tok,
                       **window)
        assert r.status_code == 200, r.text
        h = r.json()
        assert h["step_s"] == 300 and [(b["value"], b["count"]) for b in h["buckets"]] == [(62.0, 5), (67.0, 5)]
        r = await _get(client, f"{base}/api/v1/fleet/sites/site-a/points/hp1.supply_temperature/history", tok,
                       agg="max", **window)
        assert [b["value"] for b in r.json()["buckets"]] == [64.0, 69.0]

        # --- KPIs: the site's compute_kpis of the registers' increases -----------------------------------------
        t1 = T0 + timedelta(minutes=STEPS)
        r = await _get(client, f"{base}/api/v1/fleet/sites/site-a/kpis", tok, start=T0.isoformat(), end=t1.isoformat())
        assert r.status_code == 200, r.text
        doc = r.json()
        expected = compute_kpis(KpiInputs(T0, t1, 0.01 * STEPS, 1.0 * STEPS * 0.0036, 5.0 * STEPS * 0.0036,
                                          6.0 * STEPS * 0.0036), AccountingConfig(), ZoneInfo("Europe/Copenhagen"))
        assert doc["site"] == "site-a" and doc["metered"] is True
        numbers = {k for k, v in expected.items() if isinstance(v, float)}
        assert {k: doc[k] for k in numbers} == pytest.approx({k: expected[k] for k in numbers}, rel=1e-5)
        assert {k: doc[k] for k in expected.keys() - numbers} == {k: expected[k] for k in expected.keys() - numbers}
        assert doc["delivered_gj"] == pytest.approx(1.2) and doc["erf"] == pytest.approx(1.2 / (720 * 0.0036), rel=1e-5)
        r = await _get(client, f"{base}/api/v1/fleet/kpis", tok, start=T0.isoformat(), end=t1.isoformat())
        fleet = r.json()
        assert [s["site"] for s in fleet["sites"]] == ["site-a", "site-b", "site-c"]
        assert [s["metered"] for s in fleet["sites"]] == [True, False, False]
        assert fleet["fleet"]["metered_sites"] == 1 and fleet["fleet"]["sites"] == 3
        assert fleet["fleet"]["delivered_mwh"] == pytest.approx(doc["delivered_mwh"], rel=1e-5)
        assert fleet["fleet"]["homes_heated"] == pytest.approx(doc["homes_heated"], rel=1e-5)
        assert fleet["fleet"]["co2_avoided_t"] == pytest.approx(doc["co2_avoided_t"])
        assert fleet["fleet"]["erf"] == pytest.approx(doc["erf"], rel=1e-5)

        # --- 404 and 422, as JSON ----------------------------------------------------------------------------
        for path in ("sites/nowhere/points", "sites/nowhere/kpis", "sites/nowhere/points/x.y/history",
                     "sites/site-a/points/no.such/history"):
            r = await _get(client, f"{base}/api/v1/fleet/{path}", tok)
            assert r.status_code == 404 and r.json()["status"] == 404, (path, r.text)
        hist = f"{base}/api/v1/fleet/sites/site-a/points/hp1.supply_temperature/history"
        for params in ({"start": t1.isoformat(), "end": T0.isoformat()}, {"start": "0.5"},
                       {"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
                       {"start": "1900-01-01T00:00:00Z", "end": "1900-01-02T00:00:00Z"}, {"step": "0"},
                       {"agg": "median"}):
            for url in (hist, f"{base}/api/v1/fleet/kpis") if "step" not in params and "agg" not in params \
                    else (hist,):
                r = await _get(client, url, tok, **params)
                assert r.status_code == 422 and r.json()["status"] == 422, (url, params, r.text)

        # --- the console, signed in as a browser would (the browser itself: tests/ui/test_console_fleet.py) -----
        form = (await ui.get("/ui/login")).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        r = await ui.post("/ui/login", data={"csrf": csrf.group(1), "token": tok})
        assert r.status_code == 303 and r.headers["location"] == "/ui"
        page = await ui.get("/ui")
        assert page.status_code == 200 and 'data-site="site-a"' in page.text and 'id="k-delivered"' in page.text

        # --- the central database away: 503 with Retry-After; the sites list answers on ----------------------
        postgres.psql(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
        try:
            postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                          f"'{database.name}'")

            async def refused() -> bool:
                return (await _get(client, f"{base}/api/v1/fleet/sites/site-a/points", tok)).status_code == 503
            await wait_until(refused, 20, "503 while the central database is away")
            for url in ("sites/site-a/points", "sites/site-a/kpis", "kpis",
                        "sites/site-a/points/hp1.supply_temperature/history"):
                r = await _get(client, f"{base}/api/v1/fleet/{url}", tok)
                assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (url, r.text)
                assert r.json()["unavailable"] == "database"
            assert (await _get(client, f"{base}/api/v1/fleet/sites", tok)).status_code == 200
            page = await ui.get("/ui")  # the sites from memory, the KPIs' outage said
            assert page.status_code == 503 and 'data-site="site-a"' in page.text and "kpi-outage" in page.text
        finally:
            postgres.psql(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')

        async def back() -> bool:
            return (await _get(client, f"{base}/api/v1/fleet/sites/site-a/points", tok)).status_code == 200
        await wait_until(back, 30, "the API answering again once the database is back")
        assert (await ui.get("/ui")).status_code == 200
