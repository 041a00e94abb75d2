"""A fleet on loopback: a central broker with per-site identities, `heatrec central` processes, sites."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.bus import SampleBus
from service.config import DatabaseConfig, load_central_config
from service.fleet.uplink import Uplink
from service.fleet_config import UplinkConfig
from service.localservers import MosquittoServer, PostgresCluster, free_port
from service.localservers.mosquitto import fleet_broker_users
from service.model import Quality, Sample
from service.token_store import TokenStore

ROOT = Path(__file__).resolve().parents[2]
SITES = ("site-a", "site-b", "site-c")
TOKENS_FILE = "central-tokens.json"


@dataclass
class FleetBroker:
    """The central broker and the passwords of its identities."""

    server: MosquittoServer
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        """mqtt://host:port."""
        return self.server.url


@pytest.fixture
def fleet_broker(shared_tmp_path: Path) -> Iterator[FleetBroker]:
    """Mosquitto with one identity per site (confined to its prefix by the ACL) and one for the centre.

    No persistence: delivery must not rest on the broker's, so a restart loses whatever it held.
    """
    passwords = {name: secrets.token_urlsafe(12) for name in (*SITES, "central")}
    users = fleet_broker_users({s: passwords[s] for s in SITES}, ("central", passwords["central"]))
    server = MosquittoServer(shared_tmp_path / "fleet-broker", free_port(), "admin", secrets.token_urlsafe(12),
                             persistence=False, users=users)
    server.start()
    yield FleetBroker(server, passwords)
    server.stop()


def database_address_lines(db: DatabaseConfig) -> list[str]:
    """[database]'s address keys as TOML lines: host and port, or hosts (and port), and target_session_attrs."""
    if db.hosts is None:
        lines = [f'host = "{db.host}"', f"port = {db.port}"]
    else:
        lines = ["hosts = [" + ", ".join(f'"{h}"' for h in db.hosts) + "]", f"port = {db.port}"]
    if db.target_session_attrs is not None:
        lines.append(f'target_session_attrs = "{db.target_session_attrs}"')
    return lines


def central_toml(path: Path, db: DatabaseConfig, broker: FleetBroker, instance: str, port: int, *,
                 sites: tuple[str, ...] | None = SITES, api_host: str = "127.0.0.1",
                 site_lines: dict[str, list[str]] | None = None) -> Path:
    """A central.toml for one instance, its API on `api_host`:`port`, its tokens in TOKENS_FILE beside it.

    `site_lines`: more keys of a site's `[[sites]]` entry (its KPI registers), as TOML lines.
    """
    lines = [f'instance = "{instance}"',
             "[database]", *database_address_lines(db), f'name = "{db.name}"', f'user = "{db.user}"',
             f'password = "{db.password}"', *([f'sslmode = "{db.sslmode}"'] if db.sslmode else []),
             "[broker]", f'url = "{broker.url}"', 'username = "central"', f'password = "{broker.passwords["central"]}"',
             "keepalive_s = 5", "reconnect_max_s = 1",
             "[api]", f'host = "{api_host}"', f"port = {port}", f'token_store = "{path.parent / TOKENS_FILE}"',
             "[ingest]", "refresh_s = 0.2", "link_timeout_s = 10"]
    for s in sites or ():
        lines += ["[[sites]]", f'id = "{s}"', *(site_lines or {}).get(s, [])]
    path.write_text("\n".join(lines) + "\n")
    return path


class CentralProcess:
    """`heatrec central -c FILE` as a real process."""

    def __init__(self, config: Path, port: int, log: Path, *, host: str = "127.0.0.1",
                 argv_prefix: tuple[str, ...] = ()) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://{host}:{port}"
        self.argv_prefix = argv_prefix  # e.g. `ip netns exec NS` (tests/netns.py)
        # A viewer token in the centre's token store (its [api] token_store, relative to where it runs).
        store = Path(load_central_config(config).api.token_store)
        self.token = TokenStore(store if store.is_absolute() else ROOT / store).create("viewer", "tests")[1]

    @property
    def headers(self) -> dict[str, str]:
        """The bearer-token header of this process's viewer token (the centre's API wants one)."""
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> None:
        """Start it (its log appended to `log`)."""
        with self.log.open("ab") as out:
            argv = [*self.argv_prefix, sys.executable, "-m", "service.cli", "central", "-c", str(self.config)]
            self.proc = subprocess.Popen(argv,
                                         cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no goodbye, whatever it held in memory is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    async def sites(self) -> dict[str, dict[str, Any]]:
        """GET /api/v1/fleet/sites by site ({} while it does not answer)."""
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                r = await client.get(f"{self.url}/api/v1/fleet/sites", headers=self.headers)
        except httpx.HTTPError:
            return {}
        return {s["site"]: s for s in r.json()} if r.status_code == 200 else {}

    async def metrics(self) -> str:
        """The /metrics text."""
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"{self.url}/metrics", headers=self.headers)).text


@pytest.fixture
def start_central(shared_tmp_path: Path, database: DatabaseConfig,
                  fleet_broker: FleetBroker) -> Iterator[Any]:
    """start_central(name, sites=...) -> a running CentralProcess on the test's database; all stopped at the end."""
    procs: list[CentralProcess] = []

    def start(name: str, sites: tuple[str, ...] | None = SITES) -> CentralProcess:
        port = free_port()
        cfg = central_toml(shared_tmp_path / f"{name}.toml", database, fleet_broker, name, port, sites=sites)
        proc = CentralProcess(cfg, port, shared_tmp_path / f"{name}.log")
        proc.start()
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()


def uplink_config(broker: FleetBroker, site: str, outbox: Path, **extra: Any) -> UplinkConfig:
    """An [uplink] for a site of the fleet broker, quick to batch and to resend."""
    return UplinkConfig(url=broker.url, username=site, password=broker.passwords[site], site=site,
                        outbox_dir=str(outbox), batch_size=500, batch_max_age_s=0.2, ack_timeout_s=2.0,
                        status_interval_s=0.5, keepalive_s=5, reconnect_max_s=0.5, outbox_segment_bytes=64 * 1024,
                        **extra)


@dataclass
class SimulatedSite:
    """A site in the test process: its own bus, a producer of distinct samples, the real Uplink."""

    cfg: UplinkConfig
    bus: SampleBus = field(default_factory=SampleBus)
    produced: set[tuple[str, datetime]] = field(default_factory=set)
    uplink: Uplink | None = None
    _uplink_task: asyncio.Task[None] | None = None
    _producer: asyncio.Task[None] | None = None
    _tick: int = 0

    async def start_uplink(self) -> None:
        """A new Uplink (as a restarted site would have) on the same outbox."""
        self.uplink = Uplink(self.cfg, self.bus)
        self._uplink_task = asyncio.create_task(self.uplink.run())
        await self.uplink.opened.wait()

    async def stop_uplink(self) -> None:
        """Stop the Uplink in order (what it took from the bus goes to its outbox)."""
        assert self.uplink is not None and self._uplink_task is not None
        self._uplink_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._uplink_task
        self.bus.unsubscribe(self.uplink.sub)

    def start_producing(self, points: int = 10, per_s: int = 50) -> None:
        """`points` points at `per_s` samples a second each, every (point, time) distinct."""
        base = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(days=SITES.index(self.cfg.site))

        async def produce() -> None:
            while True:
                self._tick += 1
                t = base + timedelta(milliseconds=self._tick * 1000 // per_s)
                for p in range(points):
                    point = f"dev{p % 3}.p{p}"
                    self.bus.publish(Sample(point, float(self._tick), Quality.GOOD, t, t))
                    self.produced.add((point, t))
                await asyncio.sleep(1 / per_s)

        self._producer = asyncio.create_task(produce())

    async def stop_producing(self) -> None:
        """Stop producing."""
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None


@pytest.fixture
async def simulated_sites() -> AsyncIterator[list[SimulatedSite]]:
    """Sites a test makes; stopped at its end."""
    made: list[SimulatedSite] = []
    yield made
    for s in made:
        await s.stop_producing()
        if s._uplink_task is not None and not s._uplink_task.done():
            await s.stop_uplink()


@dataclass
class PostgresPair:
    """A primary and its hot standby, streaming (synchronously unless asked otherwise); heatrec's database on both."""

    primary: PostgresCluster
    standby: PostgresCluster

    def database(self, target_session_attrs: str | None = "read-write") -> DatabaseConfig:
        """[database] for heatrec: both servers in `hosts`, the primary first, as a central.toml would list them."""
        pair = (self.primary, self.standby)
        hosts = [f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}" for c in pair]
        return DatabaseConfig.model_validate({"hosts": hosts, "name": self.primary.dbname, "user": self.primary.user,
                                              "password": self.primary.password,
                                              "target_session_attrs": target_session_attrs})

    def server(self, cluster: PostgresCluster) -> DatabaseConfig:
        """[database] for one of the two alone (to look at the standby, which read-write would skip)."""
        return DatabaseConfig(host=cluster.host, port=cluster.port, name=cluster.dbname, user=cluster.user,
                              password=cluster.password)


@contextlib.contextmanager
def postgres_pair(base: Path, *, host: str = "127.0.0.1", standby_host: str | None = None,
                  networks: tuple[str, ...] = (), synchronous: bool = True,
                  settings: dict[str, str] | None = None) -> Iterator[PostgresPair]:
    """A new primary on `host` and a hot standby of it on `standby_host` (default: `host`), both started.

    For a test on other addresses (network namespaces): `networks` are the CIDRs pg_hba.conf lets in besides
    loopback, for heatrec's role and for the standby's streaming, so they must cover the standby's address and
    every client's. synchronous: the primary commits only once the standby has the WAL (synchronous_standby_names
    = the standby's application_name, synchronous_commit on). Both are stopped (fast) at the end.
    """
    primary = PostgresCluster(base / "primary", free_port(), secrets.token_urlsafe(16), host=host,
                              networks=networks, settings=settings)
    standby: PostgresCluster | None = None
    try:
        primary.start()
        standby = primary.make_standby(base / "standby", free_port(), host=standby_host, application_name="standby1")
        standby.start()
        primary.wait_streaming(standby)
        if synchronous:
            primary.set_synchronous_standby(standby.application_name)
        yield PostgresPair(primary, standby)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


@pytest.fixture
def replicated_postgres(shared_tmp_path: Path) -> Iterator[PostgresPair]:
    """A primary and a synchronous hot standby of it on loopback, new for the test (`postgres_pair`).

    Without fsync, as the session's cluster: the tests end a server process, never the machine, and a standby
    that is sent the WAL holds it whether or not either wrote it to the disk.
    """
    with postgres_pair(shared_tmp_path / "pg-pair", settings={"fsync": "off", "full_page_writes": "off"}) as pair:
        yield pair
