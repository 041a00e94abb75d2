"""Every write endpoint in the OpenAPI refuses a missing token (401) and a viewer token (403).

The list of endpoints comes from the generated schema, so a write endpoint added later is
covered without touching this test. Reads are checked the same way for a missing token.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import httpx

from service.api.app import create_app
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.support import demo_config_text

OPEN = {("GET", "/api/v1/health")}  # its status only: the parts, like /metrics, need a token
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def concrete(path: str) -> str:
    """A template path with every {parameter} filled by a plausible value."""
    return re.sub(r"\{[^}]+\}", lambda m: "2026-01" if m.group(0) == "{period}" else "x1", path)


async def test_write_endpoints_need_an_operator_and_reads_a_token(database: DatabaseConfig) -> None:
    cfg = parse_config(tomllib.loads(demo_config_text()))
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            viewer = await create_token(conn, "viewer", "roles-viewer")
        app = create_app(ServiceState(cfg, SampleBus(), pool))
        spec: dict[str, Any] = app.openapi()
        writes = reads = 0
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for path, item in spec["paths"].items():
                for method in item:
                    method = method.upper()
                    if (method, path) in OPEN:
                        continue
                    url = concrete(path)
                    r = await c.request(method, url, json={})
                    assert r.status_code == 401 and r.json()["error"], (method, path, r.status_code, r.text)
                    if method in WRITES:
                        writes += 1
                        r = await c.request(method, url, json={}, headers={"Authorization": f"Bearer {viewer}"})
                        assert r.status_code == 403 and "role" in r.json()["error"], (method, path, r.text)
                    else:
                        reads += 1
        assert writes >= 5 and reads >= 8, (writes, reads)
    finally:
        await pool.close()
