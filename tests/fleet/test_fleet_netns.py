"""The fleet across network namespaces (tests/netns.py): three sites and a centre, each in its own namespace on
one private bridge, under steady load, through faults one after the other: site a's link down for 60 s, the
central broker restarted, a central instance SIGKILLed, the central primary PostgreSQL stopped (immediate mode)
and its synchronous standby promoted. After each, every site moves on and its lag is back under 30 s;
during site a's outage the other sites' lag stays low, sampled every second; at the end every sample of every
site is in the central database exactly once.

The central namespace holds the fleet's Mosquitto (per-site identities and ACL), two `heatrec central` processes
and the PostgreSQL pair (tests/fleet/conftest.py's `postgres_pair`), all on the namespace's address. Site a
is a real `heatrec run` of the demo plant with its simulators (`heatrec simulate`), its own PostgreSQL and
Mosquitto, all inside its namespace: the centre must hold exactly what its local database holds. Sites b and c
are the real Uplink on a bus fed with distinct samples, each a process in its namespace
(tests/fleet/netns_site.py), which says how many it made. (Three full plants, each with its own PostgreSQL,
are more than two cores carry next to the centre.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.config import DatabaseConfig
from service.localservers import MosquittoServer, PostgresCluster
from service.localservers.mosquitto import BrokerUser, fleet_broker_users
from service.storage.database import connect_kwargs, connect_pool
from tests.fleet.conftest import ROOT, SITES, CentralProcess, FleetBroker, central_toml, postgres_pair
from tests.fleet.netns_site import produced, spec_for
from tests.netns import SUBNET, NetnsLab
from tests.support import demo_config_text, wait_until

pytestmark = pytest.mark.integration

NAMES = ("central", *SITES)
OUTAGE_S = 60.0
RECOVERED_LAG_S = 30.0
STEADY_LAG_S = 3.0  # every site's lag before the outage
OTHERS_LAG_BOUND_S = 10.0  # the other sites' lag while site a is cut off (it reaches the outage's length)
MAX_IN_FLIGHT = 16
BROKER_PORT, PG_PORT = 1883, 5432  # every namespace has its own ports: the defaults are free in each


@dataclass
class CentralDb:
    """The centre's database: its connection settings, how to fail it over, and the promoted server's port."""

    config: DatabaseConfig
    stop: Callable[[], None]
    fail_over: Callable[[], None]
    standby_port: int


def central_database(lab: NetnsLab, tmp: Path) -> CentralDb:
    """The centre's PostgreSQL pair (a primary and its synchronous hot standby) on the central namespace's
    address (call with the thread inside that namespace); [database] lists both, target_session_attrs read-write."""
    addr = lab.address("central")
    stack = contextlib.ExitStack()
    pair = stack.enter_context(postgres_pair(tmp / "central-pg", host=addr, networks=(f"{addr}/32",),
                                             settings={"fsync": "off", "full_page_writes": "off"}))

    def fail_over() -> None:
        pair.primary.stop(immediate=True)  # as near a crash as a server gets: no checkpoint, every session cut
        pair.standby.promote()

    # TLS is not what this test is about (a non-loopback host would default to verify-full).
    return CentralDb(pair.database().model_copy(update={"sslmode": "disable"}), stack.close, fail_over,
                     pair.standby.port)


def uplink_fields(broker: FleetBroker, site: str, outbox: Path) -> dict[str, Any]:
    """[uplink] settings of a site (as tests/fleet/conftest.py's uplink_config: quick to batch and to resend)."""
    return {"url": broker.url, "site": site, "username": site, "password": broker.passwords[site],
            "outbox_dir": str(outbox), "batch_size": 500, "batch_max_age_s": 0.2, "ack_timeout_s": 2.0,
            "status_interval_s": 0.5, "keepalive_s": 5, "reconnect_max_s": 0.5, "max_in_flight": MAX_IN_FLIGHT,
            "outbox_segment_bytes": 64 * 1024}


def site_a_config(tmp: Path, broker: FleetBroker) -> Path:
    """The demo plant as site a: its database and broker on its own namespace's loopback, an [uplink] to the centre."""
    text = demo_config_text({"55432": PG_PORT, "1883": BROKER_PORT})
    text = text.replace("[storage]\n", f'[storage]\nspool_dir = "{tmp / "spool-a"}"\n', 1)
    # Without its SCADA server (not what this test is about; its certificates take seconds to load).
    text = re.sub(r"(?ms)^\[scada\]\n.*?(?=^\[alarms\]\n)", "", text)
    text += "\n[uplink]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                     for k, v in uplink_fields(broker, "site-a", tmp / "outbox-a").items())
    path = tmp / "site-a.toml"
    path.write_text(text)
    return path


@dataclass
class Processes:
    """Processes the test started in the namespaces; whatever still runs is killed at the end."""

    lab: NetnsLab
    tmp: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, ns: str, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """argv inside namespace `ns`, its output in tmp/NAME.log."""
        with (self.tmp / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(self.lab.exec_argv(ns, argv), cwd=ROOT, env=env or self.env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        """SIGKILL whatever still runs."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """The namespaces: central and one per site, on one bridge; torn down at the end, also after a failure."""
    with NetnsLab(NAMES) as made:
        yield made


def test_the_lab_connects_its_namespaces_only_and_is_gone_after_a_failure() -> None:
    made: list[str] = []
    with pytest.raises(RuntimeError, match="the test failed"), NetnsLab(("x", "y")) as small:
        made = [small.ns("x"), small.ns("y"), small.bridge_ns]
        with small.entered("x"), socket.create_server((small.address("x"), 0)) as server:
            port = server.getsockname()[1]
            with small.entered("y"), socket.create_connection((small.address("x"), port), timeout=2):
                server.accept()[0].close()
            small.link("y", False)
            with small.entered("y"), pytest.raises(OSError):
                socket.create_connection((small.address("x"), port), timeout=2)
        inside = subprocess.run(small.exec_argv("y", ["ip", "-4", "-o", "addr", "show"]), capture_output=True,
                                text=True, timeout=10, check=True).stdout
        assert small.address("y") in inside
        assert SUBNET not in subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                                            timeout=10, check=True).stdout  # nothing in the root namespace
        raise RuntimeError("the test failed")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout
    assert made and not [ns for ns in made if ns in left]


async def test_fleet_across_network_namespaces_through_link_broker_centre_and_database_faults(
        lab: NetnsLab, shared_tmp_path: Path) -> None:
    tmp = shared_tmp_path
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def phase(what: str) -> None:  # where the wall time goes (shown with -s, or on failure)
        print(f"{time.monotonic() - t0:6.1f} s  {what}", flush=True)

    passwords = {name: secrets.token_urlsafe(12) for name in (*SITES, "central")}
    procs = Processes(lab, tmp, dict(os.environ))
    stops: dict[str, list[Callable[[], None]]] = {"central": [], "site-a": []}  # servers started, by namespace
    central_db: CentralDb | None = None
    centrals: list[CentralProcess] = []
    try:
        # --- site a: its own PostgreSQL and Mosquitto on its namespace's loopback, then simulators and heatrec.
        gateway = BrokerUser("mbus-gateway", secrets.token_urlsafe(16), write=("mbus/heatmeter/#",),
                             role="the demo's simulated M-Bus gateway")
        local_pg = PostgresCluster(tmp / "pg-a", PG_PORT, secrets.token_urlsafe(16),
                                   settings={"fsync": "off", "full_page_writes": "off"})
        local_mq = MosquittoServer(tmp / "mq-a", BROKER_PORT, "heatrec", secrets.token_urlsafe(16),
                                   persistence=False, users=[gateway])
        with lab.entered("site-a"):
            local_pg.start()
            stops["site-a"].append(local_pg.stop)
            local_mq.start()
            stops["site-a"].append(local_mq.stop)
        phase("site a's servers")
        with lab.entered("central"):
            users = fleet_broker_users({s: passwords[s] for s in SITES}, ("central", passwords["central"]))
            broker = FleetBroker(MosquittoServer(tmp / "fleet-broker", BROKER_PORT, "admin",
                                                 secrets.token_urlsafe(12), host=lab.address("central"),
                                                 persistence=False, users=users), passwords)
        site_a_cfg = site_a_config(tmp, broker)
        env_a = {**procs.env, "HEATREC_DB_PASSWORD": local_pg.password, "HEATREC_MQTT_PASSWORD": local_mq.password,
                 "HEATREC_MQTT_GATEWAY_PASSWORD": gateway.password}
        cli = [sys.executable, "-m", "service.cli"]
        sim_a = procs.start("site-a", "sim-a", [*cli, "simulate", "-c", str(site_a_cfg)], env_a)
        site_a = procs.start("site-a", "site-a", [*cli, "run", "-c", str(site_a_cfg)], env_a)

        # --- the centre: its broker, PostgreSQL and two instances, all on the central namespace's address.
        with lab.entered("central"):
            broker.server.start()
            stops["central"].append(broker.server.stop)
            # --- sites b and c: the Uplink on a fed bus, each in its namespace; started before the centre's
            # database, so their start overlaps its making (meanwhile they fill their outboxes).
            specs: dict[str, dict[str, Any]] = {}
            feeders: dict[str, subprocess.Popen[bytes]] = {}
            for day, s in ((2, "site-b"), (3, "site-c")):
                # 10 points at 20 samples a second each: steady load, light enough to leave the cores to the rest.
                specs[s] = spec_for(s, uplink_fields(broker, s, tmp / f"outbox-{s}"), tmp / f"{s}.ticks", day=day,
                                    points=10, per_s=20)
                (tmp / f"{s}.json").write_text(json.dumps(specs[s]))
                feeders[s] = procs.start(s, s, [sys.executable, "-m", "tests.fleet.netns_site", "produce",
                                                str(tmp / f"{s}.json")])
            central_db = central_database(lab, tmp)
            stops["central"].append(central_db.stop)
        for i in (1, 2):
            port = 8090 + i
            cfg = central_toml(tmp / f"central-{i}.toml", central_db.config, broker, f"central-{i}", port,
                               api_host=lab.address("central"))
            c = CentralProcess(cfg, port, tmp / f"central-{i}.log", host=lab.address("central"),
                               argv_prefix=tuple(lab.exec_argv("central", [])))
            c.start()
            centrals.append(c)
        c1, c2 = centrals
        phase("everything started")

        with lab.entered("central"):
            central: asyncpg.Pool = await connect_pool(central_db.config, max_size=2)
            try:
                await _faults(lab, broker, central, central_db, c1, c2, phase, timings)
                # --- the end: every site stops, and what it holds reaches the centre.
                for f in feeders.values():
                    f.terminate()
                site_a.terminate()
                assert await asyncio.to_thread(site_a.wait, 60) == 0, "site a did not stop in order"
                for s, f in feeders.items():
                    assert await asyncio.to_thread(f.wait, 60) == 0, f"{s} did not drain its outbox"
                sim_a.terminate()
                drain = procs.start("site-a", "drain-a", [sys.executable, "-m", "tests.fleet.netns_site", "drain",
                                                          str(site_a_cfg)], env_a)
                assert await asyncio.to_thread(drain.wait, 60) == 0, "site a's outbox was not acknowledged"
                phase("every outbox drained")

                for s in ("site-b", "site-c"):
                    made = produced(specs[s], int((tmp / f"{s}.ticks").read_text()))
                    rows = await central.fetch("SELECT point, time FROM readings WHERE site = $1", s)
                    assert len(made) > 5_000, s
                    assert len(rows) == len(made), s
                    assert {(r["point"], r["time"]) for r in rows} == made, s
                with lab.entered("site-a"):
                    local = await asyncpg.connect(host="127.0.0.1", port=PG_PORT, user=local_pg.user,
                                                  password=local_pg.password, database=local_pg.dbname)
                try:
                    made_a = {(r["point"], r["time"]) for r in await local.fetch("SELECT point, time FROM readings")}
                finally:
                    await local.close()
                stored_a = await central.fetch("SELECT point, time FROM readings WHERE site = 'site-a'")
                assert len(made_a) > 1000
                assert len(stored_a) == len(made_a)
                assert {(r["point"], r["time"]) for r in stored_a} == made_a
                assert await central.fetchval(
                    "SELECT count(*) - count(DISTINCT (site, point, time)) FROM readings") == 0
                phase("compared")
            finally:
                await central.close()
        print("timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}), flush=True)
    except BaseException:
        for log in sorted(tmp.glob("*.log")):  # the processes' own words, for the failure report
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        raise
    finally:
        procs.kill_all()
        for c in centrals:  # both told at once, then waited for
            if c.proc is not None and c.proc.poll() is None:
                c.proc.terminate()
        for c in centrals:
            c.stop()
        phase("processes stopped")
        for ns, server_stops in stops.items():
            with lab.entered(ns):
                for stop in reversed(server_stops):
                    stop()
        phase("servers stopped")


async def _faults(lab: NetnsLab, broker: FleetBroker, central: asyncpg.Pool, db: CentralDb,
                  c1: CentralProcess, c2: CentralProcess, phase: Callable[[str], None],
                  timings: dict[str, float]) -> None:
    """The faults one after the other, each followed by its checks (the thread is inside the central namespace)."""
    loop = asyncio.get_running_loop()

    async def marks() -> dict[str, int]:
        try:
            rows = await central.fetch("SELECT site, watermark FROM fleet_sites")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
            return {}  # the primary just went: the pool connects again (to the promoted standby) on the next query
        return {r["site"]: r["watermark"] for r in rows}

    async def all_past(before: dict[str, int], sites: tuple[str, ...] = SITES, by: int = 3) -> bool:
        now = await marks()
        return all(now.get(s, 0) >= before.get(s, 0) + by for s in sites)

    async def lags() -> dict[str, float | None]:
        view = await c2.sites()
        return {s: view.get(s, {}).get("lag_s") for s in SITES}

    async def recovered(sites: tuple[str, ...] = SITES) -> bool:
        now = await lags()
        return all((lag := now[s]) is not None and lag < RECOVERED_LAG_S for s in sites)

    async def exactly_once_so_far() -> None:
        # Nothing stored twice, and the centre's count of each site's samples is what it holds (nothing counted
        # that is not stored, nothing stored uncounted); no batch given up as lost.
        assert await central.fetchval("SELECT count(*) - count(DISTINCT (site, point, time)) FROM readings") == 0
        rows = await central.fetch("SELECT f.site, f.samples, f.lost_batches, "
                                   "(SELECT count(*) FROM readings r WHERE r.site = f.site) AS stored "
                                   "FROM fleet_sites f")
        assert {r["site"] for r in rows} == set(SITES)
        for r in rows:
            assert (r["site"], r["samples"], r["lost_batches"]) == (r["site"], r["stored"], 0)

    async def after(what: str, started: float, before: dict[str, int]) -> None:
        await wait_until(lambda: all_past(before), 40, f"every site moving again after {what}")
        timings[f"{what}: every site moving (s)"] = loop.time() - started
        await wait_until(recovered, 40, f"every site's lag under {RECOVERED_LAG_S:.0f} s after {what}")
        timings[f"{what}: lag < 30 s (s)"] = loop.time() - started
        await exactly_once_so_far()
        phase(f"{what}: recovered")

    async def both_answer() -> bool:  # so the schema is there (each instance migrates before it serves)
        return bool(await c1.sites()) and bool(await c2.sites())
    try:
        await wait_until(both_answer, 60, "both central instances answering")
    except AssertionError:
        for c in (c1, c2):  # what it says instead, for the failure report
            state = "running" if c.proc and c.proc.poll() is None else "exited"
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    r = await client.get(f"{c.url}/api/v1/fleet/sites", headers=c.headers)
                print(c.url, state, r.status_code, r.text[:300])
            except httpx.HTTPError as err:
                print(c.url, state, repr(err))
        raise
    await wait_until(lambda: all_past({}), 60, "every site committed at the centre")
    phase("all committed")
    async def steady() -> bool:  # the start's catching up done: what the outage is measured against
        now = await lags()
        return all((lag := now[s]) is not None and lag < STEADY_LAG_S for s in SITES)
    await wait_until(steady, 40, f"every site's lag under {STEADY_LAG_S:.0f} s")
    phase("lag steady")

    # 1. Site a's cable pulled for 60 s: the others go on as if nothing happened.
    before, t_down = await marks(), loop.time()
    lab.link("site-a", False)
    seen: list[dict[str, float | None]] = []
    links_a: set[str] = set()
    while loop.time() < t_down + OUTAGE_S:
        view = await c2.sites()
        seen.append({s: view.get(s, {}).get("lag_s") for s in SITES})
        links_a.add(view.get("site-a", {}).get("link", "unknown"))
        await asyncio.sleep(max(0.0, t_down + len(seen) - loop.time()))  # one sample a second, on the clock
    during = await marks()
    lab.link("site-a", True)
    t_up = loop.time()
    others = [lag for s in seen for site, lag in s.items() if site != "site-a"]
    assert len(seen) >= OUTAGE_S * 0.8 and None not in others, seen
    peak_a = max(s["site-a"] or 0.0 for s in seen)
    print("lag during the outage, a second apart:",
          [tuple(round(x, 1) if x is not None else None for x in v.values()) for v in seen], flush=True)
    timings["outage: samples"] = len(seen)
    timings["outage: max lag of sites b, c (s)"] = max(o for o in others if o is not None)
    timings["outage: peak lag of site a (s)"] = peak_a
    assert max(o for o in others if o is not None) < OTHERS_LAG_BOUND_S, seen
    assert peak_a > OUTAGE_S * 0.75, seen  # the centre saw site a stall...
    assert links_a & {"offline", "stale"}, links_a  # ...and its link go (its will, or its silence)
    assert all(during[s] >= before[s] + 100 for s in ("site-b", "site-c")), (before, during)
    await wait_until(lambda: recovered(("site-a",)), 40, "site a's lag under 30 s after its link is back")
    timings["link up: site a's lag < 30 s (s)"] = loop.time() - t_up

    backlog_a: list[int] = []

    async def a_drained() -> bool:
        a = (await c2.sites()).get("site-a", {})
        backlog_a.append(a.get("backlog_batches") or 0)
        return a.get("lag_s") is not None and a["lag_s"] < 5 and a.get("backlog_batches", 10**9) <= MAX_IN_FLIGHT
    await wait_until(a_drained, 40, "site a's backlog drained")
    timings["link up: site a's backlog drained (s)"] = loop.time() - t_up
    timings["link up: site a's largest reported backlog (batches)"] = max(backlog_a)
    await after("link outage", t_up, during)

    # 2. The central broker restarted (it keeps nothing: persistence is off).
    broker.server.stop()
    before, started = await marks(), loop.time()
    broker.server.start()
    await after("broker restart", started, before)

    # 3. A central instance SIGKILLed under load: the other carries every site; then it comes back.
    c1.kill()
    before, started = await marks(), loop.time()
    await wait_until(lambda: all_past(before), 40, "every site moving on central-2 alone")
    c1.start()
    await after("central SIGKILL", started, before)

    # 4. The primary PostgreSQL stopped (immediate mode) under load, the standby promoted. Synchronous in the
    # loop on purpose: its psql children must start from this thread, inside the central namespace.
    before, started = await marks(), loop.time()
    db.fail_over()
    await after("database failover", started, before)
    promoted = await asyncpg.connect(**connect_kwargs(db.config))  # where [database]'s hosts lead now
    try:
        assert await promoted.fetchval("SELECT inet_server_port()") == db.standby_port
        assert await promoted.fetchval("SELECT pg_is_in_recovery()") is False
    finally:
        await promoted.close()
