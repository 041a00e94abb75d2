"""Accounting against a real PostgreSQL + TimescaleDB: golden months, replacement, gap, versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from service.accounting.engine import load_meter, meter_energy, meter_intervals, meter_tally, settle_month
from service.accounting.registers import Reading
from service.accounting.store import SettlementConflict, add_manual_reading, add_replacement, save_settlement
from service.config import DatabaseConfig
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_END, MARCH_START, config, constant_meter, counter, write

# March 2024 in Copenhagen: 31 x 24 - 1 = 743 hours (summer time from 31 March).
HOURS = 743
# 100 kW for 743 h = 74,300 kWh = 74,300 x 0.0036 GJ = 267.48 GJ.
MARCH_GJ = 267.48


async def test_golden_month_with_heat_pump_deduction(conn: asyncpg.Connection) -> None:
    cfg = config(heat_pumps=["hp1"])
    await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0))
    # The heat pump draws 20 kW: 20 x 743 = 14,860 kWh = 53.496 GJ.
    await write(conn, cfg, counter("hp1.electric_energy", MARCH_START - timedelta(hours=1),
                                   MARCH_END + timedelta(hours=1), 20.0 / 3600))
    [s] = await settle_month(conn, cfg, "2024-03")
    assert s.delivered_gj == pytest.approx(MARCH_GJ, abs=1e-6)
    assert s.estimated_share == 0 and s.flags == ()
    seg = s.segments[0]
    assert seg.rule_period == "price_cap" and seg.heat_pump_electricity_gj == pytest.approx(53.496)
    # Taxable: 267.48 - 3 x 53.496 = 106.992 GJ; charge 106.992 x 28.2 = 3,017.1744, rounded half-up to the
    # øre: 3,017.17 DKK (supplier pays).
    assert seg.taxable_gj == pytest.approx(106.992)
    assert s.charge_dkk == Decimal("3017.17") and s.charge_payer == "supplier"
    # Cap 110 (2024) is above the agreed 100 and the substitution price 120: 267.48 x 100 = 26,748 DKK.
    assert s.amount_dkk == Decimal("26748.00")
    assert s.as_dict()["energy_gj"] == {"m1": pytest.approx(MARCH_GJ), "total": pytest.approx(MARCH_GJ)}


async def test_register_wrap_inside_the_month(conn: asyncpg.Connection) -> None:
    cfg = config()
    # The 1000 GJ register starts at 900 GJ: it rolls over after 100 GJ, about 11.6 days in.
    await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0,
                                          register0=900.0))
    [s] = await settle_month(conn, cfg, "2024-03")
    assert s.delivered_gj == pytest.approx(MARCH_GJ, abs=1e-6)


async def test_sql_fast_path_equals_the_full_logic(conn: asyncpg.Connection) -> None:
    cfg = config()
    assert cfg.accounting is not None
    m = cfg.accounting.meters[0]
    await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0,
                                          register0=990.0))
    for lo, hi in ((MARCH_START, MARCH_END), (MARCH_START + timedelta(minutes=7), MARCH_START + timedelta(days=3))):
        fast = await meter_energy(conn, m, lo, hi)
        full = meter_tally(m, await load_meter(conn, m, lo, hi), lo, hi)
        assert fast.energy == pytest.approx(full.energy, abs=1e-9)
        assert full.energy == pytest.approx(100.0 * (hi - lo).total_seconds() / 1e6, abs=1e-9)


async def test_hourly_rollup_is_used_and_rebuilt_after_late_readings(conn: asyncpg.Connection) -> None:
    cfg = config()
    assert cfg.accounting is not None
    m = cfg.accounting.meters[0]
    # Readings at 5, 15, 25 ... minutes past: the month boundaries fall inside register steps.
    rows = constant_meter(MARCH_START - timedelta(hours=1, minutes=-5), MARCH_END + timedelta(hours=1), 100.0)
    await write(conn, cfg, rows)
    first = await meter_energy(conn, m, MARCH_START, MARCH_END)
    assert first.energy == pytest.approx(MARCH_GJ, abs=1e-9)
    # 743 hours of the month plus one on either side, each with its sample count.
    assert await conn.fetchval("SELECT count(*) FROM register_hours") == HOURS + 2
    # A reading replayed late from the spool: 23:59 on 31 March (local), 0.01 GJ above the straight line.
    # The step 23:55 -> 23:59 now carries 0.024 + 0.01 GJ, all in March; 23:59 -> 00:05 carries
    # 0.036 - 0.01 GJ, of which 1/6 is in March: March gains 0.01 + 0.026/6 - 0.036/6 = 0.01 - 0.01/6.
    late = MARCH_END - timedelta(minutes=1)
    before = next(v for p, t, v in rows if p == "m1.energy" and t == late - timedelta(minutes=4))
    await write(conn, cfg, [("m1.energy", late, before + 100.0 * 240 / 1e6 + 0.01)])
    again = await meter_energy(conn, m, MARCH_START, MARCH_END)
    assert again.energy == pytest.approx(MARCH_GJ + 0.01 - 0.01 / 6, abs=1e-9)
    full = meter_tally(m, await load_meter(conn, m, MARCH_START, MARCH_END), MARCH_START, MARCH_END)
    assert again.energy == pytest.approx(full.energy, abs=1e-9)
    # A late glitch inside the month changes nothing: the full logic discards it, the roll-up's sum
    # telescopes over it (and is not rebuilt for it).
    await write(conn, cfg, [("m1.energy", MARCH_START + timedelta(days=9, minutes=1), 3.0)])
    assert (await meter_energy(conn, m, MARCH_START, MARCH_END)).energy == pytest.approx(again.energy, abs=1e-9)
    full = meter_tally(m, await load_meter(conn, m, MARCH_START, MARCH_END), MARCH_START, MARCH_END)
    assert full.energy == pytest.approx(again.energy, abs=1e-9) and "fault_discarded" in full.flags


async def test_rollup_of_an_incomplete_month_is_built_once(conn: asyncpg.Connection) -> None:
    cfg = config()
    assert cfg.accounting is not None
    m = cfg.accounting.meters[0]
    # The month is under way: data for its first ten days only.
    await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_START + timedelta(days=10), 100.0))
    t = await meter_energy(conn, m, MARCH_START, MARCH_END)
    # 10 days from the register (86.4 GJ) plus the last sensor sample held for gap_s (900 s at 100 kW).
    assert t.energy == pytest.approx(86.4 + 0.09, abs=1e-6) and "incomplete" in t.flags
    built = await conn.fetchval("SELECT max(computed_at) FROM register_hours")
    await meter_energy(conn, m, MARCH_START, MARCH_END)
    assert await conn.fetchval("SELECT max(computed_at) FROM register_hours") == built  # up to date: not rebuilt


async def test_meter_replacement_mid_month(conn: asyncpg.Connection) -> None:
    cfg = config()
    swap = MARCH_START + timedelta(days=10, minutes=5)  # between the 10-minute readings
    rows = constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0)
    before = [r for r in rows if r[1] < swap]
    # The new meter's register starts at 0 at the swap: it reads 100 kW x (t - swap).
    after = [(p, t, 100.0 * (t - swap).total_seconds() / 1e6 if p == "m1.energy" else v)
             for p, t, v in rows if t >= swap]
    await write(conn, cfg, before + after)
    # The old meter's last register: 10 + 100 kW x (swap - (start - 1 h)).
    old_final = 10.0 + 100.0 * (swap - (MARCH_START - timedelta(hours=1))).total_seconds() / 1e6
    await add_replacement(conn, "m1", swap, "71234567", "80000001", old_final, 0.0, "op")
    [s] = await settle_month(conn, cfg, "2024-03")
    # Old part + new part = the whole 267.48 GJ; the interval with the exchange is flagged.
    assert s.delivered_gj == pytest.approx(MARCH_GJ, abs=1e-6)
    assert "replacement" in s.flags
    with pytest.raises(SettlementConflict):
        await add_replacement(conn, "m1", swap, "", "x", 1.0, 0.0, "op")


async def test_unrecorded_replacement_is_detected_and_flagged(conn: asyncpg.Connection) -> None:
    cfg = config()
    swap = MARCH_START + timedelta(days=10)
    rows = constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0, register0=500)
    rows = [(p, t, 100.0 * (t - swap).total_seconds() / 1e6 if p == "m1.energy" and t >= swap else v)
            for p, t, v in rows]
    await write(conn, cfg, rows)
    [s] = await settle_month(conn, cfg, "2024-03")
    # The restart reading (0 GJ at the swap) counts from zero: the 10 minutes before it are lost (0.06 GJ).
    assert s.delivered_gj == pytest.approx(MARCH_GJ - 0.06, abs=1e-6)
    assert "register_restart" in s.flags


async def test_gap_is_estimated_and_a_manual_reading_fills_it(conn: asyncpg.Connection) -> None:
    cfg = config()
    a = MARCH_START + timedelta(days=5)
    b = a + timedelta(hours=6)
    rows = [r for r in constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0)
            if not a < r[1] < b]
    await write(conn, cfg, rows)
    [s] = await settle_month(conn, cfg, "2024-03")
    # The register still counted through the 6 h gap: the total is exact, its placement is estimated:
    # 100 kW x 6 h = 600 kWh = 2.16 GJ estimated; share 2.16 / 267.48.
    assert s.delivered_gj == pytest.approx(MARCH_GJ, abs=1e-6)
    assert s.estimated_gj == pytest.approx(2.16, abs=1e-6)
    assert s.estimated_share == pytest.approx(2.16 / MARCH_GJ)
    # A reading taken on site 3 h into the gap pins the register there.
    mid = a + timedelta(hours=3)
    register_a = next(v for p, t, v in rows if p == "m1.energy" and t == a)
    await add_manual_reading(conn, "m1", mid, register_a + 100.0 * 3 * 3600 / 1e6, "op", "read on site")
    assert cfg.accounting is not None
    hours = await meter_intervals(conn, cfg.accounting.meters[0], a, b, 3600)
    # Both halves are still gaps (3 h > gap_s): estimated, and now flagged manual; 1.08 GJ each.
    assert len(hours) == 6 and all(h.estimated and h.manual for h in hours)
    assert sum(h.energy_gj for h in hours[:3]) == pytest.approx(1.08, abs=1e-6)
    assert sum(h.energy_gj for h in hours) == pytest.approx(2.16, abs=1e-6)


async def test_register_missing_is_estimated_from_integrated_power(conn: asyncpg.Connection) -> None:
    cfg = config()
    rows = constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0)
    cut = MARCH_END - timedelta(days=1)
    # The register fails (no good value) for the last day; flow and temperatures keep coming.
    await write(conn, cfg, [r for r in rows if not (r[0] == "m1.energy" and r[1] > cut)])
    [s] = await settle_month(conn, cfg, "2024-03")
    # Last day: q x k x 30 K = 100 kW for 24 h = 8.64 GJ, from the sensors (flagged estimated).
    assert s.delivered_gj == pytest.approx(MARCH_GJ, rel=1e-4)
    assert s.estimated_gj == pytest.approx(8.64, rel=1e-4)
    assert "estimated" in s.flags


async def test_intervals_cross_check_the_register(conn: asyncpg.Connection) -> None:
    cfg = config()
    assert cfg.accounting is not None
    rows = constant_meter(MARCH_START - timedelta(hours=1), MARCH_START + timedelta(hours=5), 100.0)
    # The register counts 10 % more than the sensors say: beyond the class 2 envelope (about 3.5 % here).
    rows = [(p, t, v * 1.1 if p == "m1.energy" else v) for p, t, v in rows]
    await write(conn, cfg, rows)
    hours = await meter_intervals(conn, cfg.accounting.meters[0], MARCH_START, MARCH_START + timedelta(hours=3),
                                  3600)
    assert len(hours) == 3
    for h in hours:
        assert h.energy_gj == pytest.approx(0.396, abs=1e-6)  # 110 kW x 1 h = 0.396 GJ
        assert h.drift_percent == pytest.approx(10.0, abs=0.01) and "drift" in h.flags


async def test_closed_settlements_are_immutable_and_corrections_are_versions(conn: asyncpg.Connection) -> None:
    cfg = config()
    await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1), 100.0))
    [s] = await settle_month(conn, cfg, "2024-03")
    doc = await save_settlement(conn, s, "op", "", correction=False)
    assert doc["version"] == 1 and doc["delivered_gj"] == pytest.approx(MARCH_GJ)
    with pytest.raises(SettlementConflict, match="is closed"):
        await save_settlement(conn, s, "op", "", correction=False)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="closed"):
        await conn.execute("UPDATE settlements SET amount_dkk = 0")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await conn.execute("DELETE FROM settlements")
    with pytest.raises(asyncpg.CheckViolationError):  # a correction without a reason, straight in SQL
        await conn.execute("INSERT INTO settlements (contract_id, period, version, period_start, period_end, "
                           "delivered_gj, estimated_gj, charge_dkk, charge_payer, amount_dkk, provisional, document, "
                           "closed_by) VALUES ('c1', '2024-03', 2, now(), now(), 0, 0, 0, 'none', 0, false, '{}', "
                           "'x')")
    doc2 = await save_settlement(conn, s, "op", "meter read on site", correction=True)
    assert doc2["version"] == 2 and doc2["reason"] == "meter read on site"
    assert await conn.fetchval("SELECT count(*) FROM settlements") == 2


def test_readings_are_plain_values() -> None:
    assert Reading(MARCH_START, 1.0).manual is False


async def test_rollup_task_keeps_recent_hours_warm(database: DatabaseConfig) -> None:
    import asyncio

    from service.accounting.rollup_task import LOOKBACK, refresh_rollups, run_rollups
    from service.clock import VirtualClock
    from service.tasks import cancel_and_wait
    from tests.support import wait_until

    cfg = config()
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as c:
            await migrate(c)
            await write(c, cfg, constant_meter(MARCH_START, MARCH_START + timedelta(hours=6), 100.0))
        now = MARCH_START + timedelta(hours=5, minutes=30)
        assert await refresh_rollups(pool, cfg, now) == 1
        hours = [r["hour"] for r in await pool.fetch("SELECT hour FROM register_hours ORDER BY hour")]
        # The three complete hours before 05:30: 02:00, 03:00, 04:00; the running hour is left alone.
        assert hours == [MARCH_START + timedelta(hours=h) for h in (2, 3, 4)] and LOOKBACK == timedelta(hours=3)
        energy = await pool.fetchval("SELECT sum(energy) FROM register_hours")
        assert energy == pytest.approx(3 * 0.36)  # 100 kW for 3 h
        clock = VirtualClock(MARCH_START + timedelta(hours=6, minutes=1))
        task = asyncio.create_task(run_rollups(pool, cfg, clock, interval_s=0.05))
        await wait_until(lambda: _has_hour(pool, MARCH_START + timedelta(hours=5)), timeout=10)
        await cancel_and_wait(task)
    finally:
        await pool.close()


async def _has_hour(pool: asyncpg.Pool, hour: object) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM register_hours WHERE hour = $1", hour))


async def test_period_straddling_the_cap_repeal_is_settled_in_two_parts(conn: asyncpg.Connection) -> None:
    from service.accounting.engine import settle
    from tests.accounting.acc_support import TZ

    cfg = config(agreed_price_dkk_per_gj=150.0, utility_cost_dkk_per_gj=10.0)
    start = datetime(2025, 6, 16, tzinfo=TZ).astimezone(UTC)
    end = datetime(2025, 7, 16, tzinfo=TZ).astimezone(UTC)
    await write(conn, cfg, constant_meter(start - timedelta(hours=1), end + timedelta(hours=1), 100.0))
    s = await settle(conn, cfg, "c1", start, end, "2025-06-16/2025-07-16")
    june, july = s.segments
    # 100 kW for 15 days = 360 h = 36,000 kWh = 129.6 GJ on each side of 1 July (local midnight).
    assert (june.rule_period, july.rule_period) == ("price_cap", "no_cap")
    assert june.delivered_gj == pytest.approx(129.6) and july.delivered_gj == pytest.approx(129.6)
    # June under the cap: 110 (2025, carried forward) - 10 = 100 DKK/GJ -> 12,960 DKK.
    # July without a cap: the agreed 150 DKK/GJ -> 19,440 DKK. Together 32,400 DKK.
    assert june.amount_dkk == Decimal("12960.00") and july.amount_dkk == Decimal("19440.00")
    assert s.amount_dkk == Decimal("32400.00")
    # Charge: 129.6 x 28.2 = 3,654.72 DKK on each side, 7,309.44 DKK in all; provisional (2025 rate carried
    # forward).
    assert s.charge_dkk == Decimal("7309.44") and s.provisional
