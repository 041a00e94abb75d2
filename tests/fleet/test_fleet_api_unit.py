"""The centre's API in process (no socket, no database: which it sees as away), its config keys and arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.config import ConfigError, DatabaseConfig, load_central_config
from service.fleet.api import CentralState, create_central_app
from service.fleet.readings import fleet_totals
from service.fleet.view import FleetState
from service.fleet_config import CentralConfig
from service.metrics import build_central_registry
from service.storage.database import Database
from service.token_store import TokenStore
from service.ui.fleet import lag_text

T0, T1 = datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)


def _config(**sites: object) -> CentralConfig:
    return CentralConfig.model_validate({"broker": {"url": "mqtt://127.0.0.1:1"},
                                         "sites": [{"id": "site-a", **sites}, {"id": "site-b"}]})


def test_central_toml_kpi_and_api_keys(tmp_path: Path) -> None:
    cfg = _config(heat_meter_points=["meter1.energy"], it_energy_point="dc.it", timezone="Europe/Copenhagen")
    assert cfg.sites is not None and cfg.sites[0].heat_meter_points == ["meter1.energy"]
    assert cfg.api.token_store == "var/central-tokens.json" and cfg.api.max_query_span_days == 366
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        _config(timezone="Mars/Olympus")
    path = tmp_path / "central.toml"
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1"\n[api]\ntoken_store = "tokens.json"\n'
                    'monitoring_networks = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match=r"central\.toml: api\.monitoring_networks.*not an IP address"):
        load_central_config(path)
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1"\n[api]\ntoken_store = "tokens.json"\n')
    assert load_central_config(path).api.token_store == str(tmp_path / "tokens.json")  # relative to the file


async def test_auth_roles_errors_and_database_away_in_process(tmp_path: Path) -> None:
    cfg = _config(heat_meter_points=["meter1.energy"])
    tokens = TokenStore(tmp_path / "tokens.json")
    viewer = tokens.create("viewer", "grafana")[1]
    fleet = FleetState({"site-a": "", "site-b": ""}, True)
    db = Database(DatabaseConfig(port=1))  # never started: away, as when the central database is down
    app = create_central_app(CentralState(cfg, fleet, db, tokens, lambda: {"database": ("degraded", "away")}),
                             build_central_registry(fleet))
    auth = {"Authorization": f"Bearer {viewer}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://centre") as c:
        r = await c.get("/api/v1/fleet/sites")
        assert r.status_code == 401 and r.json()["status"] == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=auth)).status_code == 200
        assert (await c.get("/health")).json() == {"status": "degraded"}
        assert (await c.get("/health", headers=auth)).json()["components"]["database"]["detail"] == "away"
        r = await c.get("/api/v1/fleet/sites", headers=auth)
        assert r.status_code == 200 and [s["site"] for s in r.json()] == ["site-a", "site-b"]
        r = await c.get("/api/v1/tokens", headers=auth)
        assert r.status_code == 403 and r.json()["status"] == 403
        r = await c.get("/api/v1/fleet/sites/site-z/points", headers=auth)
        assert r.status_code == 404 and "GET /api/v1/fleet/sites" in r.json()["error"]
        r = await c.get("/api/v1/fleet/kpis", headers=auth, params={"start": T1.isoformat(), "end": T0.isoformat()})
        assert r.status_code == 422 and "before start" in r.json()["error"]
        for path in ("/api/v1/fleet/sites/site-a/points", "/api/v1/fleet/sites/site-a/kpis", "/api/v1/fleet/kpis",
                     "/api/v1/fleet/sites/site-a/points/meter1.energy/history"):
            r = await c.get(path, headers=auth)
            assert r.status_code == 503 and r.json()["unavailable"] == "database", path
            assert int(r.headers["retry-after"]) >= 1
        r = await c.get("/ui")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert "Sign in" in (await c.get("/ui/login")).text


def test_fleet_totals_sum_the_metered_sites() -> None:
    a = {"site": "a", "metered": True, "delivered_mwh": 10.0, "homes_heated": 5.0, "co2_avoided_t": 1.0,
         "heat_pump_electricity_mwh": 2.0, "it_energy_mwh": 20.0, "facility_energy_mwh": 25.0}
    b = {"site": "b", "metered": True, "delivered_mwh": 6.0, "homes_heated": 3.0, "co2_avoided_t": 0.5,
         "heat_pump_electricity_mwh": None, "it_energy_mwh": None, "facility_energy_mwh": None}
    c = {"site": "c", "metered": False, "delivered_mwh": 0.0, "homes_heated": 0.0, "co2_avoided_t": 0.0,
         "heat_pump_electricity_mwh": None, "it_energy_mwh": None, "facility_energy_mwh": None}
    t = fleet_totals([a, b, c], T0, T1)
    assert (t["sites"], t["metered_sites"], t["delivered_mwh"], t["homes_heated"], t["co2_avoided_t"]) == (
        3, 2, 16.0, 8.0, 1.5)
    # ERF only of the site that meters its facility: b's heat has no facility energy to be set against.
    assert t["erf"] == pytest.approx(10.0 / 25.0) and t["it_energy_mwh"] == 20.0
    assert fleet_totals([c], T0, T1)["erf"] is None and fleet_totals([c], T0, T1)["homes_heated"] is None


def test_lag_as_the_page_shows_it() -> None:
    assert [lag_text(v) for v in (None, 3.24, 600.0, 9000.0)] == ["—", "3.2 s", "10.0 min", "2.5 h"]
