"""The OpenAPI says what the server does: regressions of fuzzing findings, and the token life cycle.

Each finding of a randomised schemathesis run (`make fuzz`) becomes a test here, fixed at its cause.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bench.closed_loop import control_config
from drivers.base import WriteResult
from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.clock import VirtualClock
from service.config import DatabaseConfig
from service.control.loop import ControlLoop
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.storage.points import sync_points
from tests.accounting.acc_support import config


async def _no_write(point: str, value: float) -> WriteResult:
    raise AssertionError("nothing may be written for a refused request")


@pytest.fixture
async def api(database: DatabaseConfig) -> AsyncIterator[dict[str, Any]]:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        await sync_points(conn, config())
        tokens = {r: await create_token(conn, r, f"{r}-user") for r in ("viewer", "operator", "admin")}  # type: ignore[arg-type]
    control = ControlLoop(control_config(), SampleBus(), _no_write, VirtualClock())
    app = create_app(ServiceState(config(), SampleBus(), pool, control=control))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield {"client": client, "tokens": tokens, "app": app}
    await pool.close()


def auth(api: dict[str, Any], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api['tokens'][role]}"}


async def test_history_refuses_an_epoch_number_for_a_date_time(api: dict[str, Any]) -> None:
    # Finding: ?start=0.5 was answered 200, read as 0.5 s after 1970, while the schema says date-time.
    c = api["client"]
    for name in ("start", "end"):
        r = await c.get("/api/v1/points/m1.energy/history", params={name: "0.5"}, headers=auth(api, "viewer"))
        assert r.status_code == 422 and "ISO 8601" in r.json()["error"], r.text
    ok = await c.get("/api/v1/points/m1.energy/history",
                     params={"start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z"},
                     headers=auth(api, "viewer"))
    assert ok.status_code == 200, ok.text


async def test_an_empty_control_request_is_refused_as_the_schema_says(api: dict[str, Any]) -> None:
    # Finding: PUT /api/v1/control {} was refused with 422 while the schema allowed an empty object.
    schema = api["app"].openapi()["components"]["schemas"]["ControlRequest"]
    assert schema["minProperties"] == 1
    r = await api["client"].put("/api/v1/control", json={}, headers=auth(api, "operator"))
    assert r.status_code == 422 and "empty request" in r.json()["error"]


async def test_a_body_sent_as_a_form_is_refused_naming_the_content_type(api: dict[str, Any]) -> None:
    # Finding: `curl -X PUT -d '{...}'` (no -H) got "Input should be a valid dictionary", which hides the cause.
    body = '{"supply_temperature_target": 73.5}'
    for headers, got in (({"Content-Type": "application/x-www-form-urlencoded"}, "application/x-www-form-urlencoded"),
                         ({"Content-Type": "text/plain"}, "text/plain")):
        r = await api["client"].put("/api/v1/control", content=body, headers=auth(api, "operator") | headers)
        assert r.status_code == 422, r.text
        assert "Content-Type: application/json" in r.json()["error"] and got in r.json()["error"]
    ok = await api["client"].put("/api/v1/control", content=body,
                                 headers=auth(api, "operator") | {"Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text
    # The answer shows the request taking effect: requested now, the target ramping towards it.
    assert ok.json()["override"] == 73.5 and ok.json()["target_requested"] == 73.5


async def test_token_create_use_revoke(api: dict[str, Any]) -> None:
    c = api["client"]
    body = {"role": "viewer", "name": "grafana"}
    assert (await c.post("/api/v1/tokens", json=body, headers=auth(api, "operator"))).status_code == 403
    made = await c.post("/api/v1/tokens", json=body, headers=auth(api, "admin"))
    assert made.status_code == 201, made.text
    doc = made.json()
    assert doc["token"].startswith("hr_") and doc["role"] == "viewer" and doc["revoked_at"] is None
    new = {"Authorization": f"Bearer {doc['token']}"}
    assert (await c.get("/api/v1/points", headers=new)).status_code == 200
    listed = (await c.get("/api/v1/tokens", headers=auth(api, "admin"))).json()["tokens"]
    assert [t["name"] for t in listed if t["id"] == doc["id"]] == ["grafana"]
    assert all(t["token"] is None for t in listed), "a token is shown only once"
    gone = await c.delete(f"/api/v1/tokens/{doc['id']}", headers=auth(api, "admin"))
    assert gone.status_code == 200 and gone.json()["revoked_at"] is not None
    again = await c.delete(f"/api/v1/tokens/{doc['id']}", headers=auth(api, "admin"))
    assert again.status_code == 404 and again.json()["error"]
    bad = await c.post("/api/v1/tokens", json={"role": "root", "name": "x"}, headers=auth(api, "admin"))
    assert bad.status_code == 422
    audit = (await c.get("/api/v1/audit", headers=auth(api, "viewer"))).json()["entries"]
    assert {"token.create", "token.revoke"} <= {e["action"] for e in audit}
    # The OpenAPI links the created token to its revocation, for clients and the stateful fuzzer.
    links = api["app"].openapi()["paths"]["/api/v1/tokens"]["post"]["responses"]["201"]["links"]
    assert links["RevokeToken"]["parameters"] == {"token_id": "$response.body#/id"}


async def test_text_with_a_nul_character_is_refused_by_the_schema(api: dict[str, Any]) -> None:
    # Finding (stateful run): a correction reason with U+0000 passed the schema, then PostgreSQL refused to store
    # it ("\u0000 cannot be converted to text"): the schema now says so and the answer is a plain 422.
    c = api["client"]
    schema = api["app"].openapi()["components"]["schemas"]["CorrectIn"]["properties"]["reason"]
    assert schema["pattern"] == "^[^\\x00]*$"
    r = await c.post("/api/v1/settlements/c1/2024-03/correct", json={"reason": "read\u0000on site"},
                     headers=auth(api, "operator"))
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "body.reason"


async def test_a_token_id_beyond_the_column_is_a_422_not_a_503(api: dict[str, Any]) -> None:
    # Finding (stateful run): DELETE /api/v1/tokens/8589934592 answered 503 (the int4 id column overflowed).
    r = await api["client"].delete("/api/v1/tokens/8589934592", headers=auth(api, "admin"))
    assert r.status_code == 422, r.text
    assert (await api["client"].delete("/api/v1/tokens/2147483647", headers=auth(api, "admin"))).status_code == 404


async def test_a_database_gone_mid_request_is_a_json_503_with_retry_after(api: dict[str, Any]) -> None:
    # One handler maps heatrec's error tree: storage errors translated in storage/ arrive as 503 + Retry-After.
    c, viewer, admin = api["client"], auth(api, "viewer"), auth(api, "admin")
    assert (await c.get("/api/v1/tokens", headers=admin)).status_code == 200  # the tokens are in the store now
    await api["app"].state.heatrec.db.close()
    for path in ("/api/v1/points/m1.energy/history", "/api/v1/audit"):
        r = await c.get(path, headers=viewer)
        assert r.status_code == 503, (path, r.text)
        body = r.json()
        assert int(r.headers["retry-after"]) >= 1 and body["retry_after_s"] == int(r.headers["retry-after"])
        assert body["unavailable"] == "database" and body["error"].startswith(f"GET {path} needs the database")
    # Tokens are checked and administered at the plant: no database needed.
    assert (await c.get("/api/v1/tokens", headers=admin)).status_code == 200


async def test_an_untranslated_error_is_a_json_500_with_an_id_logged_once(
        api: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    app = api["app"]

    @app.get("/api/v1/test-only-boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("a bug nobody translated")

    r = await api["client"].get("/api/v1/test-only-boom")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    error_id = r.json()["error_id"]
    assert error_id in r.json()["error"] and "a bug" not in r.text  # the client gets the id, not the internals
    logged = [rec for rec in caplog.records if rec.exc_info and error_id in rec.getMessage()]
    assert len(logged) == 1 and not [rec for rec in caplog.records if rec.exc_info and rec not in logged]
