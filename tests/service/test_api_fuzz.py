"""The OpenAPI fuzzed with schemathesis against the real service (real PostgreSQL, real uvicorn).

Every operation gets generated valid and invalid input, with an operator token; the
default checks (no 5xx, documented status codes and content types, responses matching their
schemas, invalid input rejected) must all pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI

from service.alarms.manager import AlarmManager
from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.config import parse_config
from service.localservers import PostgresCluster
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.support import api_in_thread, new_database, run_schemathesis

# `make test` runs this module through `make fuzz` (tests/deploy/test_make_fuzz.py), not directly: once.
pytestmark = pytest.mark.fuzz

CFG = parse_config({
    "devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1}]}],
    "alarms": {"limits": [{"point": "hp1.supply_temperature", "high": 90}]}})


@pytest.fixture(scope="module")
def live_api(postgres: PostgresCluster) -> Iterator[dict[str, str]]:
    """The API served by uvicorn in a thread of its own, on a fresh database."""
    db = new_database(postgres, "fuzz")
    info: dict[str, str] = {}

    async def build() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        pool = await connect_pool(db)
        async with pool.acquire() as conn:
            await migrate(conn)
            info["viewer"] = await create_token(conn, "viewer", "fuzz-viewer")
            info["operator"] = await create_token(conn, "operator", "fuzz-operator")
        bus = SampleBus()
        t = datetime.now(UTC)
        bus.publish(Sample("hp1.supply_temperature", 95.0, Quality.GOOD, t, t))
        alarms = AlarmManager(CFG.alarms, ["hp1"], bus, pool, lambda: {"hp1": "connected"})
        await alarms.start()
        await alarms.evaluate_once()
        # A generous limit: the fuzzer sends many deliberately bad tokens.
        app = create_app(ServiceState(CFG, bus, pool, alarms=alarms), FailedAuthLimiter(max_failures=10**6))
        return app, pool.close

    with api_in_thread(build) as url:
        yield {**info, "url": url}


def test_api_conforms_to_its_openapi(live_api: dict[str, str], tmp_path: Path) -> None:
    # The live stream never ends by design; the end-to-end test covers it.
    r = run_schemathesis(live_api["url"], live_api["operator"], "--exclude-path", "/api/v1/stream",
                         "--request-timeout", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
