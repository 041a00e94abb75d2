"""The CDU headroom warning: raised before the CDU limit's margin is used up, from the maximum the CDU reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.closed_loop import control_config
from service.alarms.engine import AlarmEngine, headroom_rules
from service.alarms.model import AlarmState as S
from service.config import AlarmsConfig
from service.model import Quality, Sample

T0 = datetime(2026, 7, 1, tzinfo=UTC)
SUPPLY, LIMIT = "cdu1.secondary_supply_temperature", "cdu1.supply_temperature_allowable_max"
ALARM = f"{SUPPLY}:headroom"


def step(e: AlarmEngine, t: float, supply: float, limit: float | None = 35.0,
         quality: Quality = Quality.GOOD) -> list[tuple[S, S]]:
    ts = T0 + timedelta(seconds=t)
    latest = {SUPPLY: Sample(SUPPLY, supply, quality, ts, ts)}
    if limit is not None:
        latest[LIMIT] = Sample(LIMIT, limit, Quality.GOOD, ts, ts)
    return [(ev.old, ev.new) for ev in e.evaluate(latest, {}, ts) if ev.alarm_id == ALARM]


def test_low_headroom_alarms_after_its_delay_and_follows_the_maximum_the_cdu_reports() -> None:
    rules = headroom_rules(control_config(cdu_headroom_alarm_k=1.5, cdu_headroom_alarm_delay_s=5.0))
    assert [r.alarm_id for r in rules] == [ALARM]
    e = AlarmEngine(AlarmsConfig(), [], headroom=rules)
    assert e.alarms[ALARM].severity.value == "high"
    assert step(e, 0, 33.0) == []  # 2 K of headroom
    assert step(e, 1, 33.8) == []  # 1.2 K: pending
    assert step(e, 5, 33.8) == []
    assert step(e, 6, 33.8) == [(S.NORMAL, S.UNACK_ACTIVE)]
    assert e.alarms[ALARM].value == 1.2 and "35" in (e.alarms[ALARM].detail or "")
    assert step(e, 7, 33.4) == []  # 1.6 K: inside the 0.2 K deadband, no chatter
    assert step(e, 8, 33.2) == [(S.UNACK_ACTIVE, S.RTN_UNACK)]
    # The data centre lowers the maximum on the CDU: the same supply now leaves too little headroom.
    assert step(e, 9, 33.2, limit=34.0) == []
    assert step(e, 15, 33.2, limit=34.0) == [(S.RTN_UNACK, S.UNACK_ACTIVE)]
    # No valid supply: the quality and offline alarms speak; this one holds.
    assert step(e, 16, 40.0, quality=Quality.BAD) == []
    assert e.alarms[ALARM].active


def test_no_rules_without_cdus_or_when_turned_off() -> None:
    assert headroom_rules(None) == []
    assert headroom_rules(control_config(cdu_headroom_alarm_k=None)) == []
    assert headroom_rules(control_config(cdus=[])) == []
