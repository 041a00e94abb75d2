"""A site's alarm transitions, events and audit entries reach the centre through a broker restart, stored once.

Real parts: Mosquitto (the fleet broker, restarted without persistence), PostgreSQL, a `heatrec central`
process; at the site the real journal (its local database away throughout: the records go to the centre
all the same), the real alarm manager raising and clearing a limit alarm from the bus, the real audit log,
and the real Uplink. Then a replayed batch, and a site restart whose journal offers every record again:
the centre stores nothing twice. The routes show it all; with the central database away they answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import httpx

from service.accounting.store import apply_manual_reading
from service.alarms import store as alarm_store
from service.alarms.config import AlarmsConfig, LimitAlarm
from service.alarms.manager import AlarmManager
from service.audit import AuditEntry, AuditLog, apply_audit
from service.bus import SampleBus
from service.config import DatabaseConfig
from service.fleet import records, wire
from service.fleet.records_feed import ForwardingJournal
from service.fleet.uplink import Uplink
from service.localservers import PostgresCluster
from service.model import Quality, Sample, utcnow
from service.storage.database import Database, connect_pool
from service.storage.journal import apply_event
from tests.fleet.conftest import CentralProcess, FleetBroker, uplink_config
from tests.support import wait_until

POINT = "hp1.supply_temperature"
ALARM = f"{POINT}:high"


class Site:
    """site-a in the test process: its journal (database away), alarm manager, audit log and uplink."""

    def __init__(self, broker: FleetBroker, root: Path) -> None:
        self.root = root
        self.bus = SampleBus()
        self.local_db = Database(DatabaseConfig(host="127.0.0.1", port=1))  # never reached: the plant's is away
        self.journal = ForwardingJournal(root / "journal", self.local_db, {
            "audit": apply_audit, "alarms": alarm_store.apply_record, "event": apply_event,
            "manual_reading": apply_manual_reading})
        self.journal.open()
        self.uplink = Uplink(uplink_config(broker, "site-a", root / "outbox"), self.bus)
        self.journal.forward_to(self.uplink.offer_record)
        self.alarms = AlarmManager(AlarmsConfig(limits=[LimitAlarm(point=POINT, high=80.0, quality=False)]), ["hp1"],
                                   self.bus, self.local_db, lambda: {"hp1": "connected"}, journal=self.journal)
        self.audit = AuditLog(self.local_db, self.journal)
        self.task: asyncio.Task[None] | None = None

    async def start(self, *, alarms: bool = True) -> None:
        """Run the uplink; with `alarms`, start the alarm manager (it journals the full alarm list)."""
        self.task = asyncio.create_task(self.uplink.run())
        await self.uplink.opened.wait()
        if alarms:
            await self.alarms.start()

    async def stop(self) -> None:
        if self.task is None:
            return
        task, self.task = self.task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.bus.unsubscribe(self.uplink.sub)
        self.journal.close()

    async def reading(self, value: float, want: str) -> None:
        """A reading of the alarmed point, and the alarm evaluated until it is in state `want`."""
        now = utcnow()
        self.bus.publish(Sample(POINT, value, Quality.GOOD, now, now))

        async def in_state() -> bool:
            await self.alarms.evaluate_once()
            return str(self.alarms.engine.alarms[ALARM].state.value) == want
        await wait_until(in_state, 5, f"alarm {want}")

    def journaled(self) -> list[dict[str, Any]]:
        """Every record the journal holds (none reached the local database: it is away)."""
        return [json.loads(line) for line in (self.root / "journal" / "journal.jsonl").read_text().splitlines()]

    def drained(self) -> bool:
        """Every batch acknowledged by the centre."""
        box = self.uplink.outbox
        return box.backlog_batches == 0 and box.watermark == box.next_seq - 1


async def _get(central: CentralProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"{central.url}{path}", headers=central.headers)


async def test_alarms_events_and_audit_cross_a_broker_restart_once(
        fleet_broker: FleetBroker, database: DatabaseConfig, postgres: PostgresCluster, start_central: Any,
        shared_tmp_path: Path) -> None:
    central: CentralProcess = start_central("central-records")
    pool: asyncpg.Pool = await connect_pool(database, max_size=2)
    site = Site(fleet_broker, shared_tmp_path / "site-a")
    try:
        await wait_until(lambda: central.sites(), 30, "central API up")
        await site.start()
        await wait_until(site.drained, 20, "the alarm list at start acknowledged")

        # The broker goes away; meanwhile the site raises and clears an alarm, audits a write, logs an event.
        fleet_broker.server.stop()
        await site.reading(91.5, "unack_active")
        await site.audit.record(AuditEntry("alice", "operator", "control.target", "loop", 78.0, 78.0, "accepted"))
        await site.journal.append("event", {"time": utcnow().isoformat(), "source": "driver:hp1", "kind": "connected",
                                            "severity": "info", "message": "hp1 connected"})
        await site.reading(60.0, "rtn_unack")
        site.bus.publish(Sample("hp1.flow", 12.5, Quality.GOOD, utcnow(), utcnow()))  # samples share the outbox
        assert site.uplink.outbox.backlog_batches >= 4  # durable at the site, waiting for the centre
        fleet_broker.server.start()
        await wait_until(site.drained, 20, "every batch acknowledged after the restart")

        async def count(table: str) -> int:
            return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE site = 'site-a'"))
        stored = {t: await count(t) for t in ("fleet_alarm_events", "fleet_audit", "fleet_events", "fleet_records")}
        assert stored == {"fleet_alarm_events": 2, "fleet_audit": 1, "fleet_events": 1, "fleet_records": 5}
        assert await pool.fetchval("SELECT count(*) FROM readings WHERE site = 'site-a' AND point = 'hp1.flow'") == 1

        # A batch of records published again: recognised as replayed, nothing stored.
        again = [records.journaled(r["kind"], r["id"], r["data"]) for r in site.journaled()]
        assert len(again) == 5
        replays = await pool.fetchval("SELECT replayed_batches FROM fleet_sites WHERE site = 'site-a'")
        async with aiomqtt.Client("127.0.0.1", fleet_broker.server.port, username="site-a",
                                  password=fleet_broker.passwords["site-a"],
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            box = site.uplink.outbox
            await client.publish(wire.batch_topic("site-a"), wire.encode_message(
                "site-a", box.epoch, 2, 2, utcnow(), 0, 0, wire.encode_records(again), kind=wire.KIND_RECORDS), qos=1)

        async def replayed() -> bool:
            return bool(await pool.fetchval("SELECT replayed_batches FROM fleet_sites WHERE site = 'site-a'")
                        == replays + 1)
        await wait_until(replayed, 10, "the replayed batch counted")

        # The site restarts, its local database still away: its journal offers all five records again (its
        # alarm manager is not started: from its configuration, it would journal a sixth, the list as normal).
        await site.stop()
        site = Site(fleet_broker, shared_tmp_path / "site-a")
        await site.start(alarms=False)
        await wait_until(site.drained, 20, "the records offered again acknowledged")
        assert {t: await count(t) for t in stored} == stored
        assert await pool.fetchval("SELECT records FROM fleet_sites WHERE site = 'site-a'") == 5

        # The routes.
        r = await _get(central, "/api/v1/fleet/sites/site-a/alarms")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert [(a["id"], a["state"], a["active"]) for a in doc["active"]] == [(ALARM, "rtn_unack", False)]
        assert [(t["old_state"], t["new_state"]) for t in doc["transitions"]] == \
            [("unack_active", "rtn_unack"), ("normal", "unack_active")]
        first = (await _get(central, "/api/v1/fleet/sites/site-a/alarms?limit=1")).json()
        second = (await _get(central, first["next"])).json()
        assert [t["new_state"] for t in first["transitions"] + second["transitions"]] == ["rtn_unack", "unack_active"]
        audit = (await _get(central, "/api/v1/fleet/sites/site-a/audit")).json()["entries"]
        assert [(a["principal"], a["action"], a["applied"]) for a in audit] == [("alice", "control.target", 78.0)]
        events = (await _get(central, "/api/v1/fleet/sites/site-a/events")).json()["entries"]
        assert [(e["source"], e["kind"]) for e in events] == [("driver:hp1", "connected")]
        unknown = await _get(central, "/api/v1/fleet/sites/nowhere/events")
        assert unknown.status_code == 404 and "nowhere" in unknown.json()["error"]
        log = central.log.read_text()
        assert log.count("replayed batch") == 1

        # The central database away: 503 with Retry-After, and back.
        await pool.close()
        postgres.psql(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
        postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database.name}'")
        try:
            async def refused() -> bool:
                return (await _get(central, "/api/v1/fleet/sites/site-a/audit")).status_code == 503
            await wait_until(refused, 15, "503 while the central database is away")
            r = await _get(central, "/api/v1/fleet/sites/site-a/audit")
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["unavailable"] == "database"
        finally:
            postgres.psql(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')

        async def back() -> bool:
            return (await _get(central, "/api/v1/fleet/sites/site-a/audit")).status_code == 200
        await wait_until(back, 20, "the routes answer again")
    finally:
        await site.stop()
        with contextlib.suppress(asyncpg.InterfaceError):
            await pool.close()

