"""GET/PUT /api/v1/dispatch in process, with the database away: roles, the switch audited, the plan shown."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.api.app import create_app
from service.api.state import ServiceState
from service.config import parse_config
from tests.dispatch.test_dispatch_task import RUNNING, Rig, write_prices


async def test_dispatch_routes_work_without_the_database(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write_prices(tmp_path / "prices.json", ["3000.00"] * 96)
    rig.plant(hp1=RUNNING, hp2=RUNNING)
    await rig.task.replan()
    state = ServiceState(parse_config({}), rig.bus, None, dispatch=rig.task)
    _, viewer = state.tokens.create("viewer", "v")
    _, operator = state.tokens.create("operator", "o")
    app = create_app(state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/api/v1/dispatch")).status_code == 401
        r = await http.get("/api/v1/dispatch", headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 200, r.text  # the database is away: the live plan needs none of it
        body = r.json()
        assert body["status"] == "optimal" and body["enabled"] and len(body["steps"]) == 16
        assert body["command"]["in_service"] == [], "3 DKK/kWh: no pump runs"
        assert body["steps"][0]["electricity_dkk_per_kwh"] is not None
        put = {"enabled": False}
        assert (await http.put("/api/v1/dispatch", json=put,
                               headers={"Authorization": f"Bearer {viewer}"})).status_code == 403
        r = await http.put("/api/v1/dispatch", json={"enabled": "no"},
                           headers={"Authorization": f"Bearer {operator}"})
        assert r.status_code == 422
        r = await http.put("/api/v1/dispatch", json=put, headers={"Authorization": f"Bearer {operator}"})
        assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["command"] is None
        assert rig.controller.dispatch is None
        assert rig.audit[-1].action == "dispatch.set" and rig.audit[-1].principal == "o"
        spec = (await http.get("/openapi.json")).json()
        assert {"get", "put"} <= set(spec["paths"]["/api/v1/dispatch"])
        assert "503" not in spec["paths"]["/api/v1/dispatch"]["get"]["responses"]


async def test_without_dispatch_the_route_says_how_to_enable_it(tmp_path: Path) -> None:
    state = ServiceState(parse_config({}), Rig(tmp_path).bus, None)
    _, viewer = state.tokens.create("viewer", "v")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://t") as http:
        r = await http.get("/api/v1/dispatch", headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 404 and "[dispatch]" in r.json()["error"]
