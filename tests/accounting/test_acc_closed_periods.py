"""The guard of closed settlement periods: a reading dated inside a closed month never reaches the bus or the
database; the periods come from the settlements table and survive a start without it (a local copy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.accounting.closed_periods import ClosedPeriods, contract_points
from service.accounting.engine import settle_month
from service.accounting.store import save_settlement
from service.config import DatabaseConfig
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_END, MARCH_START, config, constant_meter, write


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def publish(self, sample: Sample) -> None:
        self.samples.append(sample)


def sample(point: str, t: datetime, value: float = 1.0) -> Sample:
    return Sample(point, value, Quality.GOOD, t, datetime.now(UTC))


def test_the_guarded_points_are_every_point_a_contract_settles_from() -> None:
    cfg = config(heat_pumps=["hp1"])
    assert contract_points(cfg) == {"c1": ["m1.energy", "m1.flow", "m1.flow_temperature", "m1.return_temperature",
                                           "hp1.electric_energy"]}


def test_a_reading_dated_in_a_closed_period_is_refused_and_counted_others_pass() -> None:
    bus = Recorder()
    guard = ClosedPeriods(config(heat_pumps=["hp1"]), bus)
    mid_march = MARCH_START + timedelta(days=10)
    guard.publish(sample("m1.energy", mid_march))  # nothing closed yet: accepted
    guard.close("c1", MARCH_START, MARCH_END)
    for point in ("m1.energy", "m1.flow_temperature", "hp1.electric_energy"):
        guard.publish(sample(point, mid_march))
    guard.publish(sample("m1.energy", MARCH_START))  # the period is [start, end): its first instant is inside
    guard.publish(sample("m1.energy", MARCH_END))  # ... its end is April's
    guard.publish(sample("m1.energy", MARCH_START - timedelta(seconds=1)))  # February is not closed
    guard.publish(sample("other.point", mid_march))  # not a billing point
    assert [(s.point, s.source_time) for s in bus.samples] == [
        ("m1.energy", mid_march), ("m1.energy", MARCH_END), ("m1.energy", MARCH_START - timedelta(seconds=1)),
        ("other.point", mid_march)]
    assert guard.refused == {"m1.energy": 2, "m1.flow_temperature": 1, "hp1.electric_energy": 1}
    assert guard.is_closed("m1.flow", MARCH_END - timedelta(microseconds=1))
    guard.close("zz", MARCH_END, MARCH_END + timedelta(days=30))  # not a configured contract: ignored
    assert not guard.is_closed("m1.energy", MARCH_END)


async def test_periods_come_from_the_settlements_table_and_a_local_copy_keeps_them(
        database: DatabaseConfig, tmp_path: Path) -> None:
    cfg = config(database)
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await write(conn, cfg, constant_meter(MARCH_START, MARCH_END, 100.0))
            [s] = await settle_month(conn, cfg, "2024-03", ["c1"])
            copy = tmp_path / "closed-periods.json"
            guard = ClosedPeriods(cfg, Recorder(), state_file=copy)
            assert not await guard.refresh(pool) and not guard.is_closed("m1.energy", MARCH_START)
            await save_settlement(conn, s, "alice", "", False)
            assert await guard.refresh(pool), "a new settlement row is seen at the next refresh"
            assert guard.is_closed("m1.energy", MARCH_START + timedelta(hours=1))
            assert not await guard.refresh(pool), "unchanged table: nothing re-read"
    finally:
        await pool.close()
    # A start without the database: the local copy guards from the first reading on.
    restarted = ClosedPeriods(cfg, Recorder(), state_file=copy)
    assert restarted.is_closed("m1.energy", MARCH_START + timedelta(days=3))
    assert not restarted.is_closed("m1.energy", MARCH_END)
