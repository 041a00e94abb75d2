"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import DatabaseConfig
from service.localservers import free_port

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.app import Service
    from service.config import HeatrecConfig
    from service.localservers import PostgresCluster

DEMO_PORTS = ("8000", "55432", "4840", "4841", "5020", "1883")
# What every schemathesis run is told besides its options (why: in the file).
SCHEMATHESIS_CONFIG = Path(__file__).resolve().with_name("schemathesis.toml")


def demo_config_text(ports: dict[str, int] | None = None) -> str:
    """config/demo.toml with every port moved to a free one (or to `ports[old] = new`)."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "config" / "demo.toml").read_text()
    # The copy lives elsewhere: keep its certificates where the demo's are, and read no password file (the
    # tests set the environment themselves, and a developer's running demo must not leak into them).
    text = text.replace('"../var/demo/pki/', f'"{root}/var/demo/pki/')
    text = re.sub(r'(?m)^env_file = .*\n', "", text)
    # Each copy keeps its operator requests apart: a restored override must never leak from another test.
    text = text.replace("[control]\n", f'[control]\nstate_file = "{tempfile.mkdtemp(prefix="heatrec-control-")}'
                                        '/control-state.json"\n', 1)
    # And its tokens: a token store shared between copies would mirror one test's tokens into another's database.
    text = re.sub(r'(?m)^token_store = .*$', f'token_store = "{tempfile.mkdtemp(prefix="heatrec-tokens-")}'
                                               '/tokens.json"', text, count=1)
    for old in DEMO_PORTS:
        new = (ports or {}).get(old) or free_port()
        text = text.replace(f":{old}\"", f":{new}\"").replace(f"port = {old}\n", f"port = {new}\n")
    return text



async def wait_until(pred: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Poll `pred` until true; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = pred()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_service(cfg: HeatrecConfig) -> AsyncIterator[Service]:
    """The whole service on a free loopback API port; stopped in its own order on exit."""
    from service.app import Service, bind_api_socket

    sock = bind_api_socket("127.0.0.1", free_port())
    svc = Service(cfg)
    task = asyncio.create_task(svc.run(api_socket=sock))
    try:
        await wait_until(lambda: svc.started.is_set() or task.done(), 30, "service start")
        assert not task.done(), task.exception()
        yield svc
    finally:
        svc.stop()
        done, _ = await asyncio.wait({task}, timeout=60)
        if not done:  # a stop that hangs is a bug of its own: name where, instead of a bare timeout later
            stuck = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
            for t in stuck:
                t.print_stack(limit=8, file=sys.stderr)
            task.cancel()
            await asyncio.wait({task}, timeout=10)
            raise AssertionError(f"the service did not stop within 60 s; {len(stuck)} tasks still running "
                                 "(their stacks are on stderr)")
        task.result()


def new_database(postgres: PostgresCluster, prefix: str) -> DatabaseConfig:
    """A fresh, empty database on the session cluster (for module-scoped fixtures), owned by heatrec's role."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    postgres.create_database(name)
    return DatabaseConfig(host=postgres.host, port=postgres.port, name=name, user=postgres.user,
                          password=postgres.password)


ApiBuilder = Callable[[], Awaitable[tuple["FastAPI", Callable[[], Awaitable[None]]]]]


@contextlib.contextmanager
def api_in_thread(build: ApiBuilder) -> Iterator[str]:
    """Serve the app `build()` makes with uvicorn in a thread with its own event loop; yields its base URL.

    For blocking clients such as the schemathesis CLI. `build` runs in that loop and returns the app and
    an async close function, called after the server has stopped.
    """
    import uvicorn

    from service.app import _ApiServer, bind_api_socket

    url: list[str] = []
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        app, close = await build()
        sock = bind_api_socket("127.0.0.1", free_port())
        url.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
        server = _ApiServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.should_exit = True
        await task
        await close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30), "API did not start"
    try:
        yield url[0]
    finally:
        stop.set()
        thread.join(30)


DETERMINISTIC_FUZZ = ([1], 15)  # `make test`'s case: seed 1, 15 examples per operation, the same cases every run


def fuzz_settings() -> tuple[list[int], int]:
    """(seeds, examples per operation): seed 1 and 15 examples in `make test`; `make fuzz` sets
    HEATREC_FUZZ_SEEDS (comma-separated) and HEATREC_FUZZ_EXAMPLES for a wider randomised run."""
    seeds = [int(x) for x in os.environ.get("HEATREC_FUZZ_SEEDS", "1").split(",") if x.strip()]
    return seeds or [1], int(os.environ.get("HEATREC_FUZZ_EXAMPLES", "15"))


def fuzz_is_deterministic() -> bool:
    """Whether this run is `make test`'s deterministic case (as it is when `make test` runs it through `make fuzz`)."""
    return fuzz_settings() == DETERMINISTIC_FUZZ


def run_schemathesis(url: str, token: str, *options: str, cwd: Path,
                     deterministic: bool = False) -> subprocess.CompletedProcess[str]:
    """The schemathesis CLI (its pytest plugin lags behind pytest) with every check, once per seed.

    Deterministic by default (seed 1); the returned result is the first failing seed's, else the last.
    `deterministic=True` runs the `make test` case (seed 1, the same cases) whatever `make fuzz` asks.
    Each seed's command is printed, so a finding can be replayed as written.
    """
    st = Path(sys.executable).with_name("st")
    seeds, examples = DETERMINISTIC_FUZZ if deterministic else fuzz_settings()
    result: subprocess.CompletedProcess[str] | None = None
    for seed in seeds:
        cmd = [str(st), "--config-file", str(SCHEMATHESIS_CONFIG), "run", f"{url}/openapi.json", "--checks", "all",
               "-H", f"Authorization: Bearer {token}",
               "--max-examples", str(examples), "--seed", str(seed), "--no-color", *options]
        if deterministic or fuzz_is_deterministic():
            cmd.append("--generation-deterministic")  # make test: the same cases every run
        print("schemathesis:", " ".join(c if not c.startswith("Authorization") else "'Authorization: Bearer …'"
                                        for c in cmd[1:]), flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=400 + 20 * examples, cwd=cwd,
                                check=False)
        if result.returncode != 0:
            result.stdout = f"seed {seed}:\n{result.stdout}"
            return result
    assert result is not None
    return result


@contextlib.asynccontextmanager
async def meter_telegrams(broker: Any, topic: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every JSON telegram published to `topic`, collected by a separate MQTT client while in the block."""
    import json

    import aiomqtt

    telegrams: list[dict[str, Any]] = []
    async with aiomqtt.Client(broker.host, broker.port, username=broker.username, password=broker.password) as mqtt:
        await mqtt.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in mqtt.messages:
                assert isinstance(message.payload, bytes)
                telegrams.append(json.loads(message.payload))

        collector = asyncio.create_task(collect())
        try:
            yield telegrams
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)


async def scada_operator_client(scada: Any, endpoint: str, username: str, password: str) -> Any:
    """An asyncua Client that logs in to heatrec's SCADA server as `username` the only way it allows: over a
    signed and encrypted channel, with the demo's own SCADA client identity (made and trusted on first use)."""
    from asyncua import Client

    from service.scada.pki import DEMO_CLIENT_URI, ensure_client_identity

    cert, key = await ensure_client_identity(scada)
    client = Client(endpoint, timeout=10)
    client.application_uri = DEMO_CLIENT_URI
    client.set_user(username)
    client.set_password(password)
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    return client
