"""MQTT driver against a real Mosquitto on loopback: JSON paths, malformed payloads, re-subscription."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from drivers.base import ConnectionState
from drivers.errors import MalformedPayload
from drivers.mqtt import MqttDriver, compile_path, extract, parse_plain, parse_timestamp, to_number
from service.config import MqttDevice
from service.localservers import MosquittoServer, free_port
from service.model import Quality

if TYPE_CHECKING:
    from conftest import RecordingSink, SilentPeer, WaitFor


def device(broker: Any, points: list[dict[str, Any]], **kw: Any) -> MqttDevice:
    base: dict[str, Any] = {"id": "meter", "protocol": "mqtt", "endpoint": f"mqtt://{broker.host}:{broker.port}",
                            "username": broker.username, "password": broker.password, "timeout_s": 2.0,
                            "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return MqttDevice.model_validate({**base, **kw, "points": points})


async def subscribed(drv: MqttDriver, wait_for: WaitFor) -> None:
    # CONNECTED is set after every topic is subscribed, and the first healthy mark follows it.
    await wait_for(lambda: drv.state is ConnectionState.CONNECTED, timeout=10, what="subscribed")


# ---------------------------------------------------------------------- pure payload helpers


def test_json_paths() -> None:
    doc = {"a": {"b": [1, {"c": 2.5}]}, "x-y": 3}
    assert extract(doc, compile_path("$.a.b[1].c")) == 2.5
    assert extract(doc, compile_path("$.x-y")) == 3
    assert extract([7, 8], compile_path("$[1]")) == 8
    for missing in ("$.a.z", "$.a.b[5]", "$.a[0]", "$.x-y.q"):
        with pytest.raises(MalformedPayload):
            extract(doc, compile_path(missing))
    with pytest.raises(ValueError):
        compile_path("$.a..b")


def test_numbers_and_times() -> None:
    assert to_number(3) == 3.0 and to_number(True) == 1.0
    for bad in ("12", None, [1], float("nan"), 10**400):
        with pytest.raises(MalformedPayload):
            to_number(bad)
    assert parse_plain(b" 21.5\n") == 21.5
    for bad in (b"21,5", b"inf", b"\xff"):
        with pytest.raises(MalformedPayload):
            parse_plain(bad)
    t = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T10:00:00Z") == t
    assert parse_timestamp("2024-05-01T12:00:00+02:00") == t
    assert parse_timestamp("2024-05-01T10:00:00") == t  # naive means UTC
    assert parse_timestamp(t.timestamp()) == t
    assert parse_timestamp(int(t.timestamp() * 1000)) == t
    assert parse_timestamp(str(int(t.timestamp()))) == t
    for bad in ("yesterday", True, None, 1e300):
        with pytest.raises(MalformedPayload):
            parse_timestamp(bad)


# ---------------------------------------------------------------------- against the broker


async def test_values_and_source_times_arrive(mosquitto: Any, mqtt_publish: Any, topic_prefix: str,
                                              sink: RecordingSink, wait_for: WaitFor,
                                              run_driver: Any) -> None:
    t = topic_prefix
    points = [{"id": "energy", "topic": f"{t}/meter", "json_path": "$.energy_gj", "timestamp_path": "$.time"},
              {"id": "flow", "topic": f"{t}/meter", "json_path": "$.flows[1]", "timestamp_path": "$.ms"},
              {"id": "temperature", "topic": f"{t}/plain/temperature"},
              {"id": "power", "topic": f"{t}/+/power", "json_path": "$.kw"}]
    # Source times of 2024: the plausibility check is off here (test_driver_mqtt_security.py covers it).
    drv = MqttDriver(device(mosquitto, points, max_clock_skew_s=0), sink)
    assert drv.topics == [f"{t}/meter", f"{t}/plain/temperature", f"{t}/+/power"]
    run_driver(drv)
    await subscribed(drv, wait_for)
    await mqtt_publish(f"{t}/meter", json.dumps({"energy_gj": 1234.5, "flows": [0.5, 12.25],
                                                 "time": "2024-05-01T12:00:00+02:00", "ms": 1714557600000}))
    await mqtt_publish(f"{t}/plain/temperature", b"61.5")
    await mqtt_publish(f"{t}/m7/power", json.dumps({"kw": 480}))
    await wait_for(lambda: all(sink.latest(f"meter.{p['id']}") for p in points))
    when = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    energy, flow = sink.latest("meter.energy"), sink.latest("meter.flow")
    assert energy is not None and energy.value == 1234.5 and energy.source_time == when
    assert flow is not None and flow.value == 12.25 and flow.source_time == when
    assert sink.value("meter.temperature") == 61.5 and sink.value("meter.power") == 480.0
    assert all(s.quality is Quality.GOOD for s in sink.samples)
    assert drv.stats.reads == 3 and drv.stats.malformed_messages == 0


async def test_malformed_payloads_are_counted_logged_once_and_not_published(
        mosquitto: Any, mqtt_publish: Any, topic_prefix: str, sink: RecordingSink, wait_for: WaitFor,
        run_driver: Any, caplog: pytest.LogCaptureFixture) -> None:
    topic = f"{topic_prefix}/meter"
    points = [{"id": "energy", "topic": topic, "json_path": "$.energy", "timestamp_path": "$.time"}]
    drv = MqttDriver(device(mosquitto, points, max_clock_skew_s=0), sink)  # 2024 source times below
    caplog.set_level(logging.INFO, logger="drivers.mqtt")
    run_driver(drv)
    await subscribed(drv, wait_for)
    bad = [b"not json", b'{"other": 1, "time": 0}', b'{"energy": "12", "time": 0}',
           b'{"energy": null, "time": 0}', b'{"energy": 5, "time": "soon"}',
           b'{"energy": NaN, "time": 0}']
    for payload in bad:
        await mqtt_publish(topic, payload)
    await wait_for(lambda: drv.stats.malformed_messages == len(bad))
    assert sink.samples == []
    warnings = [r for r in caplog.records if r.name == "drivers.mqtt" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not JSON" in warnings[0].getMessage()

    await mqtt_publish(topic, b'{"energy": 7.5, "time": 1714557600}')
    await wait_for(lambda: sink.latest("meter.energy") is not None)
    assert sink.value("meter.energy") == 7.5
    assert any("well-formed again" in r.getMessage() for r in caplog.records if r.name == "drivers.mqtt")
    await mqtt_publish(topic, b"[]")  # a new bout of bad payloads is worth a new warning
    await wait_for(lambda: drv.stats.malformed_messages == len(bad) + 1)
    assert sum(r.levelno == logging.WARNING for r in caplog.records if r.name == "drivers.mqtt") == 2
    assert drv.state is ConnectionState.CONNECTED and drv.stats.failures == 0


async def test_silent_publisher_turns_stale(mosquitto: Any, mqtt_publish: Any, topic_prefix: str,
                                            sink: RecordingSink, wait_for: WaitFor, run_driver: Any) -> None:
    topic = f"{topic_prefix}/flow"
    drv = MqttDriver(device(mosquitto, [{"id": "flow", "topic": topic, "stale_after_s": 0.2}]), sink)
    run_driver(drv)
    await subscribed(drv, wait_for)
    await mqtt_publish(topic, b"3.5")
    await wait_for(lambda: sink.quality("meter.flow") is Quality.STALE, what="STALE after silence")
    assert [s.quality for s in sink.of("meter.flow")] == [Quality.GOOD, Quality.STALE]
    assert sink.value("meter.flow") is None


async def test_restarted_broker_gets_a_new_session_and_subscriptions(
        server_root: Path, sink: RecordingSink, wait_for: WaitFor, run_driver: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    import aiomqtt

    broker = MosquittoServer(server_root / f"mqtt-restart-{secrets.token_hex(4)}", free_port(), "heatrec",
                             secrets.token_urlsafe(12), persistence=False)
    await asyncio.to_thread(broker.start)
    try:
        drv = MqttDriver(device(broker, [{"id": "power", "topic": "meters/1/power"}]), sink)
        caplog.set_level(logging.INFO, logger="drivers.mqtt")
        run_driver(drv)
        await subscribed(drv, wait_for)

        await asyncio.to_thread(broker.stop)
        await wait_for(lambda: sink.quality("meter.power") is Quality.BAD, what="BAD when the broker stops")
        await wait_for(lambda: drv.stats.failures >= 3 and drv.state is ConnectionState.BACKING_OFF)
        assert sum(r.levelno == logging.WARNING for r in caplog.records if r.name == "drivers.mqtt") == 1

        await asyncio.to_thread(broker.start)
        await subscribed(drv, wait_for)
        # No persistence: the broker forgot every subscription, so this only arrives if we re-subscribed.
        async with aiomqtt.Client(broker.host, broker.port, username=broker.username,
                                  password=broker.password) as pub:
            await pub.publish("meters/1/power", b"42", qos=1)
        await wait_for(lambda: sink.quality("meter.power") is Quality.GOOD, what="GOOD after the restart")
        assert sink.value("meter.power") == 42.0 and drv.stats.reconnects == 1
        assert sum("recovered" in r.getMessage() for r in caplog.records if r.name == "drivers.mqtt") == 1
    finally:
        await asyncio.to_thread(broker.stop)


async def test_wrong_password_backs_off_with_one_warning(mosquitto: Any, sink: RecordingSink,
                                                         wait_for: WaitFor, run_driver: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    drv = MqttDriver(device(mosquitto, [{"id": "x", "topic": "a/b"}], password="wrong"), sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 3 and drv.state is ConnectionState.BACKING_OFF)
    warnings = [r for r in caplog.records if r.name == "drivers.mqtt" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "authori" in warnings[0].getMessage().lower()
    assert sink.quality("meter.x") is Quality.BAD


async def test_mqtts_speaks_tls(hanging_up_peer: SilentPeer, sink: RecordingSink, wait_for: WaitFor,
                                run_driver: Any) -> None:
    peer = hanging_up_peer
    broker = SimpleNamespace(host="127.0.0.1", port=peer.port, username="u", password="p")
    drv = MqttDriver(device(broker, [{"id": "x", "topic": "a/b"}], endpoint=f"mqtts://127.0.0.1:{peer.port}"),
                     sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 1 and bool(peer.first_bytes))
    # A TLS record (0x16 handshake, version 3.x) comes first, never an MQTT CONNECT (0x10).
    assert peer.first_bytes[0][:2] == b"\x16\x03"


async def test_missing_ca_file_is_a_clear_connection_error(sink: RecordingSink, wait_for: WaitFor,
                                                           run_driver: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    broker = SimpleNamespace(host="127.0.0.1", port=free_port(), username=None, password=None)
    dev = device(broker, [{"id": "x", "topic": "a/b"}], endpoint=f"mqtts://127.0.0.1:{broker.port}",
                 tls_ca_file="/nonexistent/ca.pem")
    drv = MqttDriver(dev, sink)
    run_driver(drv)
    await wait_for(lambda: drv.stats.failures >= 1)
    warning = next(r for r in caplog.records if r.name == "drivers.mqtt" and r.levelno == logging.WARNING)
    assert "tls_ca_file" in warning.getMessage() and warning.exc_info is None
