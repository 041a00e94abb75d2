"""The plan's records through the real writer into PostgreSQL, across an outage, and the margin report's sums.

The dispatch task runs on virtual time against a bus; the storage writer (with its spool) and the database
supervisor are the service's own, on the session's PostgreSQL, which is stopped half-way: the records
published meanwhile are spooled and stored once it is back, and the report is a 503 with Retry-After while
it is away. The report's sums are checked against the per-record figures and the shares each record was in
force, worked out by hand from the scenario below.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import asyncpg
import httpx

from service.api.app import create_app
from service.api.state import ServiceState
from service.config import DatabaseConfig, StorageConfig, parse_config
from service.dispatch import plan_points as pp
from service.dispatch.report import margin_report
from service.localservers import PostgresCluster
from service.storage.database import Database
from service.storage.migrations import migrate
from service.storage.spool import Spool
from service.storage.writer import SampleWriter
from tests.dispatch.test_dispatch_task import RUNNING, START, Rig, write_prices
from tests.support import wait_until

MIN = timedelta(minutes=1)
PRICES = ["100.00"] * 6 + ["2500.00"] * 4 + ["80.00"] * 86  # cheap, then an expensive hour, then cheap again


async def _prepare(conn: asyncpg.Connection) -> None:
    await migrate(conn)


def _cents(x: Fraction) -> Decimal:
    return (Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal("0.01"))


async def test_plan_records_are_stored_through_an_outage_and_the_report_sums_them(
        postgres: PostgresCluster, database: DatabaseConfig, tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    prices = tmp_path / "prices.json"
    write_prices(prices, PRICES)
    records: dict[datetime, dict[str, float]] = {}
    capture = rig.bus.subscribe("capture")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 24, segment_bytes=1 << 16)
    spool.open()
    db = Database(database, _prepare, retry_max_s=0.3, probe_interval_s=0.2)
    supervisor = asyncio.create_task(db.run())
    writer = SampleWriter(db, rig.bus.subscribe("storage"), StorageConfig(batch_max_age_s=0.05, retry_max_s=0.3,
                                                                          write_timeout_s=3), {}, spool)
    writing = asyncio.create_task(writer.run())
    state = ServiceState(parse_config({}), rig.bus, db)
    _, viewer = state.tokens.create("viewer", "v")
    auth = {"Authorization": f"Bearer {viewer}"}
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://t")

    def take() -> None:
        for s in capture.drain(10**6):
            if s.point.startswith("dispatch."):
                records.setdefault(s.source_time, {})[s.point] = float(s.value or 0.0)

    async def at(minutes: int, replan: bool = False, it_heat: float = 600.0) -> None:
        rig.clock.advance((START + minutes * MIN - rig.clock.now()).total_seconds())
        if replan:
            rig.plant(it_heat=it_heat, hp1=RUNNING, hp2=RUNNING)
            await rig.task.replan()
        rig.task.apply()
        take()

    async def stored() -> int:
        return int(await db.fetchval("SELECT count(*) FROM samples s JOIN points p ON p.key = s.point_key "
                                     "WHERE p.device = 'dispatch'"))

    try:
        await asyncio.wait_for(db.ready.wait(), 10)
        # The scenario, in minutes from START (price time = wall time: 15-minute steps).
        await at(0, replan=True)                  # r0: a plan, its first step
        await at(15)                              # r1: the next step
        await at(20, replan=True, it_heat=420.0)  # r2: replanned a third into the step: the step changes
        await at(30)                              # r3
        n_before = sum(len(v) for v in records.values())

        async def all_stored(n: int) -> bool:
            return db.up and await stored() == n

        await wait_until(lambda: all_stored(n_before), timeout=10, what="the first records stored")
        await asyncio.to_thread(postgres.stop)
        try:
            await wait_until(lambda: not db.up, timeout=10, what="the supervisor sees the database away")
            r = await http.get("/api/v1/dispatch/report", params={"start": START.isoformat(),
                                                                  "end": (START + 2 * 60 * MIN).isoformat()},
                               headers=auth)
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
            prices.unlink()                       # the price file is gone: today's control
            await at(45, replan=True)             # r4: fallback follow_demand
            await at(60)                          # r5: still, the next step
            write_prices(prices, PRICES)
            await at(75, replan=True)             # r6: a plan again
            rig.clock.advance(5 * 60)
            await rig.task.set_enabled(False, "o", "operator")  # r7: off at 80
            take()
            await at(90)                          # r8: off, the next step
            await wait_until(lambda: spool.stats.samples > 0, timeout=10, what="records spooled while away")
        finally:
            if not postgres.running:
                postgres.start()  # on the main thread: the server is tied to the thread that starts it
        total = sum(len(v) for v in records.values())
        await wait_until(lambda: all_stored(total), timeout=20, what="the spooled records stored after the outage")
        assert spool.stats.samples == 0 and writer.stats.write_errors > 0

        times = sorted(records)
        assert times == [START + m * MIN for m in (0, 15, 20, 30, 45, 60, 75, 80, 90)], times
        status = [int(records[t][pp.STATUS]) for t in times]
        assert status == [1, 1, 1, 1, 3, 3, 1, 0, 0], status
        assert all(pp.EXPECTED in records[t] and pp.BASELINE in records[t] and pp.PRICE in records[t]
                   for t, s in zip(times, status, strict=True) if s == 1)
        assert records[times[1]] != records[times[2]], "the replan changed the step in force"
        # Stored exactly as published: the values and their times.
        rows = await db.fetch("SELECT p.id, s.time, s.value FROM samples s JOIN points p ON p.key = s.point_key "
                              "WHERE p.device = 'dispatch'")
        assert {(r["id"], r["time"]): r["value"] for r in rows} == {
            (p, t): v for t, values in records.items() for p, v in values.items()}

        # Shares of its step each record was in force (the next record, or the step's end, ends it).
        share = [Fraction(1), Fraction(1, 3), Fraction(2, 3), Fraction(1), Fraction(1), Fraction(1),
                 Fraction(1, 3), Fraction(2, 3), Fraction(1)]

        def money(point: str, idx: list[int]) -> Fraction:
            return sum((Fraction(Decimal(repr(records[times[i]][point]))) * share[i] for i in idx), Fraction(0))

        applied = [i for i, s in enumerate(status) if s == 1]
        report = await margin_report(db, START, START + 2 * 60 * MIN)
        assert report.records == 9
        assert report.expected_margin_dkk == _cents(money(pp.EXPECTED, applied))
        assert report.baseline_margin_dkk == _cents(money(pp.BASELINE, applied))
        assert report.difference_dkk == report.expected_margin_dkk - report.baseline_margin_dkk
        assert report.hours_applied == round(float(sum(share[i] for i in applied) / 4), 4)
        assert report.hours_fallback == 0.5 and report.hours_off == round(float((share[7] + share[8]) / 4), 4)
        assert report.baseline_margin_dkk != 0 and report.ratio == (
            report.expected_margin_dkk / report.baseline_margin_dkk).quantize(Decimal("0.0001"))
        # A record belongs to the period its time falls in: 15..30 holds r1 and r2 only.
        part = await margin_report(db, START + 15 * MIN, START + 30 * MIN)
        assert part.records == 2 and part.expected_margin_dkk == _cents(money(pp.EXPECTED, [1, 2]))
        assert part.hours_applied == 0.25
        # The same over the API, money as strings.
        r = await http.get("/api/v1/dispatch/report", params={"start": START.isoformat(),
                                                              "end": (START + 2 * 60 * MIN).isoformat()},
                           headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["expected_margin_dkk"] == str(report.expected_margin_dkk)
        assert body["baseline_margin_dkk"] == str(report.baseline_margin_dkk)
        assert body["difference_dkk"] == str(report.difference_dkk) and body["hours_fallback"] == 0.5
    finally:
        await http.aclose()
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        spool.close()
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await db.close()
