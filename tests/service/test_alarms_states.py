"""Alarms on discrete values: status bits, codes, vendor code tables; no chatter; strict configuration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.alarms.engine import AlarmEngine
from service.alarms.model import AlarmState as S
from service.config import AlarmsConfig, ConfigError, StateAlarm, parse_config
from service.model import Quality, Sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
P = "hp1.status"


def engine(**rule: Any) -> AlarmEngine:
    return AlarmEngine(AlarmsConfig(states=[StateAlarm(point=P, name=rule.pop("name", "trip"), **rule)]), [])


def step(e: AlarmEngine, value: float | None, t: float, quality: Quality = Quality.GOOD) -> list[tuple[S, S]]:
    ts = T0 + timedelta(seconds=t)
    return [(ev.old, ev.new) for ev in e.evaluate({P: Sample(P, value, quality, ts, ts)}, {}, ts)]


def test_a_status_bit_alarms_after_its_on_delay_and_returns_unacknowledged() -> None:
    e = engine(bit=1, on_delay_s=2)
    a = e.alarms["hp1.status:trip"]
    assert a.kind == "state" and "bit 1" in a.message
    assert step(e, 1, 0) == []  # running, no fault (bit 1 clear)
    assert step(e, 3, 1) == []  # bit 1 set: pending for 2 s
    assert step(e, 3, 3) == [(S.NORMAL, S.UNACK_ACTIVE)]
    assert step(e, 1, 4) == [(S.UNACK_ACTIVE, S.RTN_UNACK)]  # cleared, still to be acknowledged
    assert e.acknowledge("hp1.status:trip", "op", T0 + timedelta(seconds=5)).new is S.NORMAL


def test_a_flapping_bit_inside_the_on_delay_never_alarms() -> None:
    e = engine(bit=2, on_delay_s=5)
    # Set and clear every second for a minute: no reading holds for 5 s, so nothing alarms.
    assert [ev for t in range(60) for ev in step(e, 4 if t % 2 == 0 else 0, t)] == []
    assert step(e, 4, 60) == [] and step(e, 4, 65) == [(S.NORMAL, S.UNACK_ACTIVE)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=80), st.integers(min_value=2, max_value=10))
def test_no_alarm_without_a_condition_lasting_the_on_delay(bits: list[bool], delay: int) -> None:
    e = engine(bit=0, on_delay_s=delay)
    raised, run = False, 0
    for t, bit in enumerate(bits):
        run = run + 1 if bit else 0
        events = step(e, int(bit), t)
        if (S.NORMAL, S.UNACK_ACTIVE) in events:
            raised = True
            # Raised only once the bit has read set for the whole delay (samples 1 s apart).
            assert run - 1 >= delay
    assert raised == any(all(bits[i:i + delay + 1]) for i in range(len(bits) - delay))


def test_a_healthy_bit_that_drops_and_an_exact_code() -> None:
    e = engine(bit=0, bit_value=0)
    assert step(e, 1, 0) == [] and step(e, 0, 1) == [(S.NORMAL, S.UNACK_ACTIVE)]
    code = engine(name="defrost", equals=7)
    assert step(code, 6, 0) == [] and step(code, 7, 1) == [(S.NORMAL, S.UNACK_ACTIVE)]
    assert step(code, 7.0000001, 2) == []  # a float register reading rounds to the code


def test_vendor_codes_carry_their_text() -> None:
    e = engine(name="fault", codes={"17": "high pressure", "23": "low flow"})
    assert step(e, 0, 0) == [] and step(e, 5, 1) == []
    ts = T0 + timedelta(seconds=2)
    [ev] = e.evaluate({P: Sample(P, 23.0, Quality.GOOD, ts, ts)}, {}, ts)
    assert ev.new is S.UNACK_ACTIVE and "code 23: low flow" in ev.message
    assert e.alarms["hp1.status:fault"].detail == "code 23: low flow"


def test_an_invalid_value_holds_the_state() -> None:
    e = engine(bit=1)
    assert step(e, 2, 0) == [(S.NORMAL, S.UNACK_ACTIVE)]
    assert step(e, None, 1, Quality.BAD) == [] and step(e, 0, 2, Quality.STALE) == []
    assert e.alarms["hp1.status:trip"].active


@pytest.mark.parametrize(("rule", "message"), [
    ({}, "exactly one of bit, equals or codes"),
    ({"bit": 1, "equals": 3}, "got bit, equals"),
    ({"codes": {"x": "bad"}}, "not an integer code"),
    ({"bit": 1, "name": "high"}, "taken by the limit alarms"),
    ({"bit": 64}, "less than or equal to 63"),
])
def test_bad_state_alarm_rules_are_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StateAlarm(point=P, name=rule.pop("name", "trip"), **rule)


def _plant(states: list[dict[str, Any]]) -> dict[str, Any]:
    return {"devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "status", "kind": "status", "address": 5, "function": "input", "type": "uint16"}]}],
        "alarms": {"states": states}}


def test_state_alarms_must_name_a_known_point_once() -> None:
    with pytest.raises(ConfigError, match=r"alarms\.states\[0\]\.point: no point 'hp1\.nothing'"):
        parse_config(_plant([{"point": "hp1.nothing", "name": "trip", "bit": 1}]))
    with pytest.raises(ConfigError, match=r"alarms\.states\[1\]\.name: 'trip' is used twice"):
        parse_config(_plant([{"point": P, "name": "trip", "bit": 1}, {"point": P, "name": "trip", "bit": 2}]))
    assert len(parse_config(_plant([{"point": P, "name": "trip", "bit": 1}])).alarms.states) == 1
