"""The accounting endpoints fuzzed with schemathesis on a plant that has [accounting] and metered data.

The project-wide fuzz test (tests/service/test_api_fuzz.py) runs a plant without accounting, where these
endpoints only answer 404; here they reach their real logic against a real database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.auth import create_token
from service.bus import SampleBus
from service.localservers import PostgresCluster
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_START, config, constant_meter, write
from tests.support import api_in_thread, new_database, run_schemathesis

# `make test` runs this module through `make fuzz` (tests/deploy/test_make_fuzz.py), not directly: once.
pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def accounting_api(postgres: PostgresCluster) -> Iterator[dict[str, str]]:
    """uvicorn in a thread, serving a plant with accounting and two days of meter data."""
    db = new_database(postgres, "accfuzz")
    info: dict[str, str] = {}

    async def build() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        pool = await connect_pool(db)
        cfg = config()
        async with pool.acquire() as conn:
            await migrate(conn)
            info["operator"] = await create_token(conn, "operator", "fuzz-operator")
            await write(conn, cfg, constant_meter(MARCH_START, MARCH_START + timedelta(days=2), 100.0))
        app = create_app(ServiceState(cfg, SampleBus(), pool), FailedAuthLimiter(max_failures=10**6))
        return app, pool.close

    with api_in_thread(build) as url:
        yield {**info, "url": url}


def test_accounting_endpoints_conform_to_the_openapi(accounting_api: dict[str, str], tmp_path: Path) -> None:
    r = run_schemathesis(accounting_api["url"], accounting_api["operator"], "--include-tag", "accounting",
                         "--request-timeout", "20", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
