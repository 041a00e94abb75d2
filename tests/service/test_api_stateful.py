"""Stateful fuzzing along the OpenAPI links, against the real service state on a real database.

Schemathesis chains calls by the links the schema declares: create a token -> revoke it; list the
settlements -> close one -> correct it (again and again); list the alarms -> acknowledge -> shelve ->
unshelve. Every check applies at every step (no 5xx, documented status codes and schemas).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI

from service.accounting.engine import settle_month
from service.accounting.store import save_settlement
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
from tests.accounting.acc_support import MARCH_END, MARCH_START, config_dict, constant_meter, write
from tests.support import api_in_thread, fuzz_is_deterministic, fuzz_settings, new_database, run_schemathesis

# `make test` runs this module through `make fuzz` (tests/deploy/test_make_fuzz.py), not directly: once.
pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def stateful_api(postgres: PostgresCluster) -> Iterator[dict[str, Any]]:
    """uvicorn serving a plant with a metered past month to settle and an active alarm to handle."""
    db = new_database(postgres, "stateful")
    data = config_dict()
    data["alarms"] = {"limits": [{"point": "m1.flow_temperature", "high": 60.0, "on_delay_s": 0}]}
    cfg = parse_config(data)
    info: dict[str, str] = {}

    async def build() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        pool = await connect_pool(db)
        async with pool.acquire() as conn:
            await migrate(conn)
            info["admin"] = await create_token(conn, "admin", "stateful-admin")
            await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1),
                                                  100.0, every_s=3600))
            # March closed already: the list shows it, and the links lead on to its corrections.
            [march] = await settle_month(conn, cfg, "2024-03")
            await save_settlement(conn, march, "fixture", "", False)
        bus = SampleBus()
        t = datetime.now(UTC)
        bus.publish(Sample("m1.flow_temperature", 70.0, Quality.GOOD, t, t))  # above the 60 °C limit
        alarms = AlarmManager(cfg.alarms, ["m1", "hp1"], bus, pool, lambda: {"m1": "connected", "hp1": "connected"})
        await alarms.start()
        await alarms.evaluate_once()
        app = create_app(ServiceState(cfg, bus, pool, alarms=alarms), FailedAuthLimiter(max_failures=10**6))
        return app, pool.close

    with api_in_thread(build) as url:
        yield {**info, "url": url, "db": db}


# Each chain on its own run, so every one of them is walked however the others draw: (paths, links to walk).
# Settlements: list -> correct, correct -> correct, list -> close (409: March is closed); close -> correct needs
# a month that can still be closed, which a random period almost never is.
CHAINS = {"tokens": ("/api/v1/tokens", 1), "settlements": ("settlements", 3), "alarms": ("/api/v1/alarms", 4)}


async def test_linked_operations_hold_their_contract_in_sequence(stateful_api: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    def walk(paths: str, deterministic: bool) -> Any:
        examples = str(max(40, fuzz_settings()[1]))
        return run_schemathesis(stateful_api["url"], stateful_api["admin"], "--phases", "stateful",
                                "--max-examples", examples, "--include-path-regex", paths, "--request-timeout", "20",
                                cwd=tmp_path, deterministic=deterministic)

    for name, (paths, declared) in CHAINS.items():
        r = walk(paths, deterministic=True)
        assert r.returncode == 0, f"{name}: " + r.stdout[-8000:] + r.stderr[-2000:]
        # The stateful phase really walked the declared links (it is skipped when it finds none) ...
        covered = re.search(r"API Links:\s+(\d+) covered", r.stdout)
        assert covered and int(covered.group(1)) >= declared, f"{name}: " + r.stdout[-4000:]
    # ... and the chains reached the real state: a token revoked, a settlement corrected, an alarm acknowledged,
    # each through a link from the answer before.
    db = stateful_api["db"]
    conn = await asyncpg.connect(db.dsn(), password=db.password)
    try:
        assert await conn.fetchval("SELECT count(*) FROM api_tokens WHERE revoked_at IS NOT NULL") >= 1
        assert await conn.fetchval("SELECT max(version) FROM settlements WHERE contract_id = 'c1'") >= 2
        assert await conn.fetchval("SELECT count(*) FROM alarm_events WHERE new_state = 'acked_active'") >= 1
    finally:
        await conn.close()
    if not fuzz_is_deterministic():
        # make fuzz: the random seeds too. Which links a random draw reaches is chance; every check must hold.
        for name, (paths, _) in CHAINS.items():
            r = walk(paths, deterministic=False)
            assert r.returncode == 0, f"{name}: " + r.stdout[-8000:] + r.stderr[-2000:]
