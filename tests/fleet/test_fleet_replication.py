"""The central database as a streaming-replication pair: the primary stops (immediate mode) under load, the
standby is promoted, and `heatrec central` carries on through its multi-host [database] (`hosts`,
`target_session_attrs = "read-write"`).

Afterwards every sample each site produced is in the promoted database exactly once (what failed in the outage
the sites sent again), and every batch the centre had acknowledged before the stop was already on the standby:
the primary committed only once the standby had the WAL (synchronous replication).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.localservers import free_port
from service.storage.database import connect_kwargs, connect_pool
from tests.fleet.conftest import CentralProcess, FleetBroker, PostgresPair, SimulatedSite, central_toml, uplink_config
from tests.support import wait_until

pytestmark = pytest.mark.integration

SITE_IDS = ("site-a", "site-b")


def _counter(metrics: str, site: str, outcome: str) -> float:
    """heatrec_fleet_batches_total{site, outcome} from the /metrics text (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("heatrec_fleet_batches_total{") and f'site="{site}"' in line \
                and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _health(central: CentralProcess) -> dict[str, str]:
    """The centre's detailed health: component -> status ({} while it does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            r = await client.get(f"{central.url}/health", headers=central.headers)
    except httpx.HTTPError:
        return {}
    if r.status_code != 200:
        return {}
    return {k: v["status"] for k, v in r.json().get("components", {}).items()}


async def test_central_carries_on_through_a_promoted_standby_and_loses_nothing_it_acknowledged(
        replicated_postgres: PostgresPair, fleet_broker: FleetBroker, simulated_sites: list[SimulatedSite],
        shared_tmp_path: Path) -> None:
    t0 = time.monotonic()

    def phase(what: str) -> None:  # where the wall time goes (shown with -s, or on failure)
        print(f"{time.monotonic() - t0:6.1f} s  {what}")

    pair = replicated_postgres
    port = free_port()
    cfg = central_toml(shared_tmp_path / "central.toml", pair.database(), fleet_broker, "central-r", port,
                       sites=SITE_IDS)
    assert re.search(r'(?m)^hosts = \[".+", ".+"\]$', cfg.read_text())
    assert 'target_session_attrs = "read-write"' in cfg.read_text()
    central = CentralProcess(cfg, port, shared_tmp_path / "central.log")
    central.start()
    sites = [SimulatedSite(uplink_config(fleet_broker, s, shared_tmp_path / f"outbox-{s}")) for s in SITE_IDS]
    simulated_sites += sites
    for s in sites:
        await s.start_uplink()
        s.start_producing()

    def acked() -> dict[str, int]:  # what each site has had acknowledged (and deleted from its outbox)
        return {s.cfg.site: s.uplink.outbox.watermark if s.uplink else 0 for s in sites}

    try:
        await wait_until(lambda: all(w >= 5 for w in acked().values()), 30, "both sites acknowledged")
        assert (await _health(central)).get("database") == "ok"
        phase("both sites acknowledged")
        stored_before = await central.metrics()

        # The primary goes as in a crash, under load: no checkpoint, every session cut.
        pair.primary.stop(immediate=True)
        before_stop = acked()  # every acknowledgement a site has now was published before the stop
        # The standby, still read-only, already holds each of those batches: synchronous replication.
        standby = await asyncpg.connect(**connect_kwargs(pair.server(pair.standby)))
        try:
            assert await standby.fetchval("SELECT pg_is_in_recovery()")
            on_standby = {r["site"]: r["watermark"] for r in await standby.fetch(
                "SELECT site, watermark FROM fleet_sites")}
        finally:
            await standby.close()
        for site, mark in before_stop.items():
            assert on_standby.get(site, 0) >= mark, (site, on_standby, before_stop)

        # The centre sees the database go (the standby is no read-write server), and the sites' batches fail.
        await wait_until(lambda: _not_ok(central), 20, "the centre reports its database away")
        phase("primary stopped, the centre reports its database away")
        pair.standby.promote()
        phase("standby promoted")

        # The centre reaches the promoted standby through its multi-host [database] and every site moves again.
        await wait_until(lambda: all(acked()[s] >= before_stop[s] + 5 for s in SITE_IDS), 30,
                         "both sites acknowledged on the promoted standby")
        await wait_until(lambda: _ok(central), 10, "the centre reports its database back")
        phase("both sites moving again")

        async def lag_recovered() -> bool:
            seen = await central.sites()
            return all(seen.get(s, {}).get("lag_s") is not None and seen[s]["lag_s"] < 5
                       and seen[s]["link"] == "online" for s in SITE_IDS)
        await wait_until(lag_recovered, 20, "both sites online, lag back under 5 s")
        phase("lag recovered")

        for s in sites:
            await s.stop_producing()

        async def all_stored() -> bool:  # what each site made, committed at the centre (a count: no duplicates)
            seen = await central.sites()
            return all(seen.get(s.cfg.site, {}).get("samples") == len(s.produced) for s in sites)
        await wait_until(all_stored, 20, "every sample of both sites committed at the centre")
        phase("drained")
        stored_after = await central.metrics()
        assert all(_counter(stored_after, s, "stored") > _counter(stored_before, s, "stored") for s in SITE_IDS)
    except BaseException:
        central.stop()
        print(central.log.read_text()[-8000:])  # what the centre saw (flushed by its stop), shown with the failure
        raise
    finally:
        central.stop()
    # One outage, from the stop to the promotion: the centre did not lose the promoted standby again.
    outages = [line for line in central.log.read_text().splitlines() if "service.storage.database" in line
               and " unavailable (" in line]
    assert len(outages) == 1, "\n".join(outages)

    promoted = await connect_pool(pair.server(pair.standby), max_size=1)
    try:
        for s in sites:
            rows = await promoted.fetch("SELECT point, time FROM readings WHERE site = $1", s.cfg.site)
            assert len(s.produced) > 1000, s.cfg.site
            assert len(rows) == len(s.produced), s.cfg.site
            assert {(r["point"], r["time"]) for r in rows} == s.produced, s.cfg.site
        assert await promoted.fetchval("SELECT count(*) - count(DISTINCT (site, point, time)) FROM readings") == 0
    finally:
        await promoted.close()


async def _ok(central: CentralProcess) -> bool:
    return (await _health(central)).get("database") == "ok"


async def _not_ok(central: CentralProcess) -> bool:
    return (await _health(central)).get("database") not in (None, "ok")

