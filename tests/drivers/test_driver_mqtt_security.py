"""The MQTT driver's plausibility checks, decoded and delivered without a broker: source-time skew and meter serial.

tests/security/ performs the same attacks through a real Mosquitto; these pin the rules down case by case.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pydantic
import pytest

from drivers.mqtt import SERIAL_ALARM_HOLD_S, MqttDriver, Telegram
from drivers.mqtt_serials import SerialFile
from service.clock import VirtualClock
from service.config import MqttDevice
from service.metrics import _refusal_families

if TYPE_CHECKING:
    from conftest import RecordingSink

POINTS = [{"id": k, "topic": "m/t", "json_path": f"$.{k}", "timestamp_path": "$.t"} for k in ("e", "p")]


def driver(sink: RecordingSink, clock: VirtualClock | None = None, serials: SerialFile | None = None,
           **kw: Any) -> MqttDriver:
    dev = MqttDevice.model_validate({"id": "meter", "protocol": "mqtt", "endpoint": "mqtt://127.0.0.1:1",
                                     "points": POINTS, **kw})
    return MqttDriver(dev, sink, clock=clock or VirtualClock(), serials=serials)


def deliver(drv: MqttDriver, doc: dict[str, Any] | bytes, careful: bool = False) -> Telegram:
    if careful:
        drv._route("m/t").fast = None
    t = drv._decode("m/t", doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    assert t is not None
    drv._deliver([t])
    return t


def now(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


@pytest.mark.parametrize("careful", [False, True], ids=["fast", "careful"])
@pytest.mark.parametrize(("offset_s", "refused"), [(-10, False), (-299, False), (-301, True), (290, False),
                                                   (400, True), (-86400 * 400, True)])
def test_a_source_time_further_than_max_clock_skew_from_arrival_is_refused(
        sink: RecordingSink, careful: bool, offset_s: float, refused: bool) -> None:
    drv = driver(sink)
    t = deliver(drv, {"e": 1.0, "p": 2.0, "t": now(offset_s)}, careful)
    assert (t.skew is not None) is refused
    assert len(sink.samples) == (0 if refused else 2)
    assert drv.refused_telegrams == {"clock_skew": int(refused), "serial_mismatch": 0}
    assert drv.stats.malformed_messages == 0, "implausible is not malformed"


def test_zero_turns_the_check_off_and_receive_times_are_never_skewed(sink: RecordingSink) -> None:
    deliver(driver(sink, max_clock_skew_s=0), {"e": 1.0, "p": 2.0, "t": "2020-01-01T00:00:00Z"})
    assert len(sink.samples) == 2
    plain = MqttDevice.model_validate({"id": "meter", "protocol": "mqtt", "endpoint": "mqtt://127.0.0.1:1",
                                       "points": [{"id": "x", "topic": "m/t"}]})
    drv = MqttDriver(plain, sink, clock=VirtualClock())
    t = drv._decode("m/t", b"21.5")
    assert t is not None and t.skew is None and not t.carries


def test_a_telegram_with_one_skewed_time_of_several_is_refused_whole(sink: RecordingSink) -> None:
    drv = driver(sink, points=[{"id": "e", "topic": "m/t", "json_path": "$.e", "timestamp_path": "$.t"},
                               {"id": "p", "topic": "m/t", "json_path": "$.p", "timestamp_path": "$.t2"}])
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "t2": now(-3600)})
    assert sink.samples == [] and drv.refused_telegrams["clock_skew"] == 1


def test_skew_is_logged_once_per_episode(sink: RecordingSink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.mqtt")
    drv = driver(sink)
    for _ in range(5):
        deliver(drv, {"e": 1.0, "p": 2.0, "t": now(-3600)})
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now()})
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(-3600)})
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert sum(lv == logging.WARNING for lv, _ in messages) == 2
    assert sum("plausible again (5 telegrams refused so far)" in m for _, m in messages) == 1
    assert drv.refused_telegrams["clock_skew"] == 6


@pytest.mark.parametrize("careful", [False, True], ids=["fast", "careful"])
def test_a_configured_serial_admits_only_that_meter(sink: RecordingSink, careful: bool) -> None:
    clock = VirtualClock()
    drv = driver(sink, clock, serial="71234567")
    for serial in ("99999999", None, "", 71234568, 7.1234567e7, ["71234567"]):
        doc: dict[str, Any] = {"e": 1.0, "p": 2.0, "t": now()}
        if serial is not None:
            doc["serial"] = serial
        deliver(drv, doc, careful)
    assert sink.samples == [] and drv.refused_telegrams["serial_mismatch"] == 6
    for serial in ("71234567", " 71234567 ", 71234567):
        deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "serial": serial}, careful)
    assert len(sink.samples) == 6, "text, padded text or a JSON integer: the same serial"
    assert drv.serial_problem is not None and "expected 71234567" in drv.serial_problem
    clock.advance(SERIAL_ALARM_HOLD_S)
    assert drv.serial_problem is None, "the alarm condition holds a while, then clears"


def test_a_wrong_serial_in_a_telegram_without_values_is_only_malformed(sink: RecordingSink) -> None:
    drv = driver(sink, serial="71234567")
    deliver(drv, {"serial": "99999999", "t": now()})
    assert drv.stats.malformed_messages == 1 and drv.refused_telegrams["serial_mismatch"] == 0


def test_the_first_serial_is_tracked_and_kept_in_its_file(sink: RecordingSink, tmp_path: Path) -> None:
    memory = tmp_path / "serials.json"
    drv = driver(sink, serials=SerialFile(memory))
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(-3600), "serial": "11111111"})  # skewed: names no meter
    assert drv.serial is None
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now()})  # no serial, none known: nothing to check
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "serial": "22222222"})
    assert drv.serial == "22222222" and json.loads(memory.read_text())["meter"]["serial"] == "22222222"
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "serial": "33333333"})
    assert drv.refused_telegrams == {"clock_skew": 1, "serial_mismatch": 1}
    again = driver(sink, serials=SerialFile(memory))
    assert again.serial == "22222222"
    assert driver(sink, serials=SerialFile(memory), serial="44444444").serial == "44444444", "configured wins"
    assert driver(sink, serials=SerialFile(memory), serial_path="").serial is None, "check off: nothing tracked"


def test_an_unreadable_serial_file_starts_afresh_and_an_unwritable_one_is_logged(
        sink: RecordingSink, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "serials.json"
    bad.write_text("{not json")
    assert SerialFile(bad).get("meter") is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    memory = SerialFile(blocked / "serials.json")  # its directory is a file: cannot be written
    drv = driver(sink, serials=memory)
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "serial": "22222222"})
    assert drv.serial == "22222222" and any("not saved" in r.getMessage() for r in caplog.records)


def test_serial_paths_and_config_rules() -> None:
    base = {"id": "m", "protocol": "mqtt", "endpoint": "mqtt://h:1883", "points": POINTS}
    assert MqttDevice.model_validate({**base, "serial_path": "$.meter.id"}).serial_path == "$.meter.id"
    with pytest.raises(pydantic.ValidationError, match="JSON path"):
        MqttDevice.model_validate({**base, "serial_path": "serial"})
    with pytest.raises(pydantic.ValidationError, match="needs serial_path"):
        MqttDevice.model_validate({**base, "serial": "1", "serial_path": ""})
    with pytest.raises(pydantic.ValidationError):
        MqttDevice.model_validate({**base, "max_clock_skew_s": -1})
    dev = MqttDevice.model_validate({**base, "id": "gw", "points": [{"id": "a", "topic": "x/{device}/{point}"},
                                                                    {"id": "b", "topic": "x/{device}/{point}"},
                                                                    {"id": "c", "topic": "y/#"}]})
    assert dev.topic_filters() == ["x/gw/+", "y/#"]


def test_a_nested_serial_path(sink: RecordingSink) -> None:
    drv = driver(sink, serial="A1", serial_path="$.meter.id")
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "meter": {"id": "A1"}})
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(), "meter": {"id": "B2"}})
    assert len(sink.samples) == 2 and drv.refused_telegrams["serial_mismatch"] == 1


def test_refusals_are_exported_by_device_and_reason(sink: RecordingSink) -> None:
    drv = driver(sink)
    deliver(drv, {"e": 1.0, "p": 2.0, "t": now(-3600)})
    [family] = list(_refusal_families(SimpleNamespace(drivers=[drv])))  # type: ignore[arg-type]
    assert family.name == "heatrec_driver_refused_telegrams"
    assert {(s.labels["device"], s.labels["reason"]): s.value for s in family.samples} == {
        ("meter", "clock_skew"): 1, ("meter", "serial_mismatch"): 0}
