"""The accounting endpoints fuzzed with schemathesis on a plant that has [accounting] and metered data.

The project-wide fuzz test (tests/service/test_api_fuzz.py) runs a plant without accounting, where these
endpoints only answer 404; here they reach their real logic against a real database.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.app import _ApiServer, bind_api_socket
from service.auth import create_token
from service.bus import SampleBus
from service.config import DatabaseConfig
from service.localservers import free_port
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_START, config, constant_meter, write


@pytest.fixture(scope="module")
def accounting_api(postgres: Any) -> Iterator[dict[str, str]]:
    """uvicorn in a thread, serving a plant with accounting and two days of meter data."""
    import uvicorn

    name = f"accfuzz_{secrets.token_hex(4)}"
    postgres.psql(f'CREATE DATABASE "{name}"')
    db = DatabaseConfig(host=postgres.host, port=postgres.port, name=name, user=postgres.user,
                        password=postgres.password)
    info: dict[str, str] = {}
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        pool = await connect_pool(db)
        cfg = config()
        async with pool.acquire() as conn:
            await migrate(conn)
            info["operator"] = await create_token(conn, "operator", "fuzz-operator")
            await write(conn, cfg, constant_meter(MARCH_START, MARCH_START + timedelta(days=2), 100.0))
        app = create_app(ServiceState(cfg, SampleBus(), pool), FailedAuthLimiter(max_failures=10**6))
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


def test_accounting_endpoints_conform_to_the_openapi(accounting_api: dict[str, str], tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    r = subprocess.run([str(st), "run", f"{accounting_api['url']}/openapi.json", "--checks", "all",
                        "-H", f"Authorization: Bearer {accounting_api['operator']}", "--max-examples", "15",
                        "--include-tag", "accounting", "--request-timeout", "20",
                        "--seed", "1", "--generation-deterministic", "--no-color"],
                       capture_output=True, text=True, timeout=400, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
