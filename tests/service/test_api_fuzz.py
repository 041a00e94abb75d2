"""The OpenAPI fuzzed with schemathesis against the real service (real PostgreSQL, real uvicorn).

Every operation gets generated valid and invalid input, with an operator token; the
default checks (no 5xx, documented status codes and content types, responses matching their
schemas, invalid input rejected) must all pass.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.alarms.manager import AlarmManager
from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.app import _ApiServer, bind_api_socket
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig, parse_config
from service.localservers import free_port
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate

CFG = parse_config({
    "devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1}]}],
    "alarms": {"limits": [{"point": "hp1.supply_temperature", "high": 90}]}})


@pytest.fixture(scope="module")
def live_api(postgres: Any) -> Iterator[dict[str, str]]:
    """The API served by uvicorn in a thread of its own, on a fresh database."""
    import secrets

    import uvicorn

    name = f"fuzz_{secrets.token_hex(4)}"
    postgres.psql(f'CREATE DATABASE "{name}"')
    db = DatabaseConfig(host=postgres.host, port=postgres.port, name=name, user=postgres.user,
                        password=postgres.password)
    info: dict[str, str] = {}
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
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
        sock = bind_api_socket("127.0.0.1", free_port())
        info["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = _ApiServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.should_exit = True
        await task
        await pool.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30), "API did not start"
    yield info
    stop.set()
    thread.join(30)


def test_api_conforms_to_its_openapi(live_api: dict[str, str], tmp_path: Path) -> None:
    # The schemathesis CLI: its pytest plugin lags behind pytest's internals.
    st = Path(sys.executable).with_name("st")
    r = subprocess.run([str(st), "run", f"{live_api['url']}/openapi.json", "--checks", "all",
                        "-H", f"Authorization: Bearer {live_api['operator']}", "--max-examples", "15",
                        # The live stream never ends by design; the end-to-end test covers it.
                        "--exclude-path", "/api/v1/stream", "--request-timeout", "10",
                        "--seed", "1", "--generation-deterministic", "--no-color"],
                       capture_output=True, text=True, timeout=400, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
