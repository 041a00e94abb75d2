"""Alarm lifecycle on simulated time: limits with deadband and on-delay, quality, offline, ack, shelve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.alarms.engine import AlarmEngine, AlarmError
from service.alarms.model import AlarmState as S
from service.config import AlarmsConfig, LimitAlarm
from service.model import Quality, Sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
P = "hp1.supply_temperature"


def engine(**rule: object) -> AlarmEngine:
    cfg = AlarmsConfig(device_offline_delay_s=10, limits=[LimitAlarm(point=P, **rule)])  # type: ignore[arg-type]
    return AlarmEngine(cfg, ["hp1"])


def at(value: float | None, t: float, quality: Quality = Quality.GOOD) -> dict[str, Sample]:
    ts = T0 + timedelta(seconds=t)
    return {P: Sample(P, value, quality, ts, ts)}


def run(e: AlarmEngine, value: float | None, t: float, quality: Quality = Quality.GOOD,
        device: str = "connected") -> list[tuple[str, S, S]]:
    return [(ev.alarm_id, ev.old, ev.new) for ev in e.evaluate(at(value, t, quality), {"hp1": device},
                                                                T0 + timedelta(seconds=t))]


def test_high_alarm_with_on_delay_deadband_ack() -> None:
    e = engine(high=90, deadband=2, on_delay_s=5)
    assert run(e, 91, 0) == []  # on-delay not elapsed
    assert run(e, 89.5, 3) == []  # inside the deadband: condition held, still pending
    assert run(e, 92, 5) == [(f"{P}:high", S.NORMAL, S.UNACK_ACTIVE)]
    assert e.alarms[f"{P}:high"].value == 92
    ev = e.acknowledge(f"{P}:high", "alice", T0 + timedelta(seconds=6))
    assert (ev.old, ev.new, ev.by) == (S.UNACK_ACTIVE, S.ACKED_ACTIVE, "alice")
    assert run(e, 88.5, 7) == []  # below high but inside the deadband: no chatter
    assert run(e, 87.9, 8) == [(f"{P}:high", S.ACKED_ACTIVE, S.NORMAL)]


def test_unacknowledged_return_to_normal_then_again() -> None:
    e = engine(low=40, deadband=1)
    assert run(e, 39, 0) == [(f"{P}:low", S.NORMAL, S.UNACK_ACTIVE)]
    assert run(e, 41.5, 1) == [(f"{P}:low", S.UNACK_ACTIVE, S.RTN_UNACK)]
    assert e.alarms[f"{P}:low"].needs_ack
    assert run(e, 39, 2) == [(f"{P}:low", S.RTN_UNACK, S.UNACK_ACTIVE)]
    assert run(e, 42, 3) == [(f"{P}:low", S.UNACK_ACTIVE, S.RTN_UNACK)]
    e.acknowledge(f"{P}:low", "bob", T0)
    assert e.alarms[f"{P}:low"].state is S.NORMAL
    with pytest.raises(AlarmError, match="nothing to acknowledge"):
        e.acknowledge(f"{P}:low", "bob", T0)


def test_bad_quality_alarms_and_holds_limit_state() -> None:
    e = engine(high=90)
    assert run(e, 95, 0) == [(f"{P}:high", S.NORMAL, S.UNACK_ACTIVE)]
    changes = run(e, None, 1, Quality.BAD)
    assert changes == [(f"{P}:quality", S.NORMAL, S.UNACK_ACTIVE)]  # the limit alarm is held, not cleared
    assert e.alarms[f"{P}:high"].active
    assert run(e, 80, 2) == [(f"{P}:high", S.UNACK_ACTIVE, S.RTN_UNACK), (f"{P}:quality", S.UNACK_ACTIVE, S.RTN_UNACK)]


def test_device_offline_after_delay() -> None:
    e = engine(high=90)
    assert run(e, 50, 0, device="backing_off") == []
    assert run(e, 50, 9, device="backing_off") == []
    assert run(e, 50, 10, device="backing_off") == [("device:hp1:offline", S.NORMAL, S.UNACK_ACTIVE)]
    assert run(e, 50, 11) == [("device:hp1:offline", S.UNACK_ACTIVE, S.RTN_UNACK)]


def test_shelve_hides_until_expiry() -> None:
    e = engine(high=90)
    run(e, 95, 0)
    ev = e.shelve(f"{P}:high", "carol", 60, T0 + timedelta(seconds=1))
    assert ev.new is S.SHELVED
    assert run(e, 80, 2) == []  # cleared while shelved: silent
    assert run(e, 95, 3) == []  # active again while shelved: silent
    assert run(e, 95, 61) == [(f"{P}:high", S.SHELVED, S.UNACK_ACTIVE)]  # shelf expired, still active
    e.shelve(f"{P}:high", "carol", 60, T0 + timedelta(seconds=62))
    assert e.unshelve(f"{P}:high", "carol", T0 + timedelta(seconds=63)).new is S.UNACK_ACTIVE
    with pytest.raises(AlarmError, match="no alarm"):
        e.shelve("nope", "carol", 60, T0)
    with pytest.raises(AlarmError, match="positive"):
        e.shelve(f"{P}:high", "carol", 0, T0)
