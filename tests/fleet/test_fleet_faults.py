"""Three sites and two `heatrec central` instances under steady load, through a broker restart, a central
instance SIGKILLed and site restarts: afterwards every sample of every site is in the central database exactly
once, and lag recovers.

Sites a and b are the Uplink component on a bus the test feeds (so the test knows every sample they produced);
site c is a real `heatrec run` of the demo plant with its simulators, whose own local database holds what it
produced: the centre must hold exactly that for site c.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.bus import SampleBus
from service.config import DatabaseConfig, load_config
from service.fleet.uplink import Uplink
from service.localservers import MosquittoServer, PostgresCluster
from service.storage.database import connect_pool
from simulators.runner import Simulation
from tests.fleet.conftest import ROOT, FleetBroker, SimulatedSite, uplink_config
from tests.support import demo_config_text, new_database, wait_until


def site_process_config(tmp: Path, broker: FleetBroker, local_db: DatabaseConfig, mosquitto: MosquittoServer) -> Path:
    """The demo plant as site-c: its own local database, and an [uplink] to the fleet broker."""
    text = demo_config_text({"55432": local_db.port, "1883": mosquitto.port})
    text = text.replace('name = "heatrec"', f'name = "{local_db.name}"', 1)
    text = text.replace("[storage]\n", f'[storage]\nspool_dir = "{tmp / "spool-c"}"\n', 1)
    # Without its SCADA server (not what this test is about; its certificates take seconds to load).
    text = re.sub(r"(?ms)^\[scada\]\n.*?(?=^\[alarms\]\n)", "", text)
    text += (f'\n[uplink]\nurl = "{broker.url}"\nsite = "site-c"\nusername = "site-c"\n'
             f'password = "{broker.passwords["site-c"]}"\noutbox_dir = "{tmp / "outbox-c"}"\n'
             "batch_max_age_s = 0.2\nack_timeout_s = 2.0\nstatus_interval_s = 0.5\nreconnect_max_s = 0.5\n"
             "keepalive_s = 5\n")
    path = tmp / "site-c.toml"
    path.write_text(text)
    return path


def start_site(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`heatrec run` of site c."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "service.cli", "run", "-c", str(config)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def stop_site(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the service stops in order (its writer and its uplink keep what they took)."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


@pytest.mark.integration
async def test_every_sample_of_every_site_arrives_once_through_broker_centre_and_site_restarts(
        fleet_broker: FleetBroker, database: DatabaseConfig, postgres: PostgresCluster, mosquitto: MosquittoServer,
        start_central: Any, simulated_sites: list[SimulatedSite], shared_tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = time.monotonic()

    def phase(what: str) -> None:  # where the wall time goes (shown with -s, or on failure)
        print(f"{time.monotonic() - t0:6.1f} s  {what}")

    c1, c2 = start_central("central-1"), start_central("central-2")
    a = SimulatedSite(uplink_config(fleet_broker, "site-a", shared_tmp_path / "outbox-a"))
    b = SimulatedSite(uplink_config(fleet_broker, "site-b", shared_tmp_path / "outbox-b"))
    simulated_sites += [a, b]
    for s in (a, b):
        await s.start_uplink()
        s.start_producing()

    local_db = new_database(postgres, "site_c")
    site_cfg_path = site_process_config(shared_tmp_path, fleet_broker, local_db, mosquitto)
    monkeypatch.setenv("HEATREC_DB_PASSWORD", local_db.password or "")
    monkeypatch.setenv("HEATREC_MQTT_PASSWORD", mosquitto.password)
    env = dict(os.environ)
    site_cfg = load_config(site_cfg_path)
    assert site_cfg.simulation is not None and site_cfg.uplink is not None
    central: asyncpg.Pool = await connect_pool(database, max_size=2)
    site_c: subprocess.Popen[bytes] | None = None
    try:
        async with Simulation(site_cfg.simulation, tick_s=0.2):
            site_c = start_site(site_cfg_path, env, shared_tmp_path / "site-c.log")

            async def marks() -> dict[str, int]:
                rows = await central.fetch("SELECT site, watermark FROM fleet_sites")
                return {r["site"]: r["watermark"] for r in rows}

            async def all_past(before: dict[str, int], by: int = 3) -> bool:
                now = await marks()
                return all(now.get(s, 0) >= before.get(s, 0) + by for s in ("site-a", "site-b", "site-c"))

            await wait_until(lambda: all_past({}), 40, "every site committed at the centre")

            phase("all committed")
            # 1. The broker restarted (it keeps nothing: persistence is off).
            fleet_broker.server.stop()
            await wait_until(lambda: not (a.uplink and a.uplink.stats.connected), 10, "site a sees the broker go")
            before = await marks()
            fleet_broker.server.start()
            await wait_until(lambda: all_past(before), 30, "every site moving again after the broker restart")

            phase("broker restart done")
            # 2. A central instance SIGKILLed under load: the other carries every site.
            c1.kill()
            before = await marks()
            await wait_until(lambda: all_past(before), 30, "every site moving on central-2 alone")
            c1.start()

            phase("central kill done")
            # 3. Sites restarted: a in place, c as a process (stopped in order, started again).
            await a.stop_producing()
            await a.stop_uplink()
            await a.start_uplink()
            a.start_producing()
            stop_site(site_c)
            site_c = start_site(site_cfg_path, env, shared_tmp_path / "site-c.log")
            before = await marks()
            await wait_until(lambda: all_past(before), 40, "every site moving after the site restarts")

            phase("site restarts done")
            async def lag_recovered() -> bool:
                sites = await c2.sites()
                return all(sites.get(s, {}).get("lag_s") is not None and sites[s]["lag_s"] < 5
                           and sites[s]["link"] == "online" for s in ("site-a", "site-b", "site-c"))
            await wait_until(lag_recovered, 30, "every site online, lag back under 5 s")

            phase("lag recovered")
            # The end: sites a and b stop producing; site c stops, and its outbox is drained by its uplink alone.
            for s in (a, b):
                await s.stop_producing()
            stop_site(site_c)
            site_c = None

            async def c_offline() -> bool:  # an orderly stop says so at once (a lost link: the broker's will)
                return (await c2.sites()).get("site-c", {}).get("link") == "offline"
            await wait_until(c_offline, 10, "site c shown offline")
        phase("site c stopped")
        drain = Uplink(site_cfg.uplink, SampleBus())
        drain_task = asyncio.create_task(drain.run())
        try:
            await wait_until(lambda: drain.opened.is_set() and drain.outbox.backlog_batches == 0, 30,
                             "site c's outbox acknowledged")
        finally:
            drain_task.cancel()
            await asyncio.gather(drain_task, return_exceptions=True)
        for s in (a, b):
            # An empty outbox alone could pass while the batcher still holds the last partial batch: wait for
            # the centre to hold as many as the site produced too (equality is asserted below).
            async def stored(s: SimulatedSite = s) -> bool:
                n = await central.fetchval("SELECT count(*) FROM readings WHERE site = $1", s.cfg.site)
                return n >= len(s.produced) and s.uplink is not None and s.uplink.outbox.backlog_batches == 0
            await wait_until(stored, 30, f"{s.cfg.site}'s samples stored and its outbox acknowledged")

        phase("drained")
        for s in (a, b):
            rows = await central.fetch("SELECT point, time FROM readings WHERE site = $1", s.cfg.site)
            assert len(rows) == len(s.produced), s.cfg.site
            assert {(r["point"], r["time"]) for r in rows} == s.produced, s.cfg.site
        local = await connect_pool(local_db, max_size=1)
        try:
            produced_c = {(r["point"], r["time"]) for r in await local.fetch("SELECT point, time FROM readings")}
        finally:
            await local.close()
        stored_c = await central.fetch("SELECT point, time FROM readings WHERE site = 'site-c'")
        assert len(produced_c) > 100
        assert len(stored_c) == len(produced_c)
        assert {(r["point"], r["time"]) for r in stored_c} == produced_c
        assert await central.fetchval("SELECT count(*) - count(DISTINCT (site, point, time)) FROM readings") == 0
    finally:
        if site_c is not None:
            site_c.kill()
            site_c.wait(10)
        await central.close()
