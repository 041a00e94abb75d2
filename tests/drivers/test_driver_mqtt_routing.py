"""MQTT points taken from the topic ({point}, {device}, topic_key) and the network thread's clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from drivers.base import ConnectionState
from drivers.mqtt import MqttDriver
from service.config import ConfigError, MqttDevice, parse_config
from service.model import Quality

if TYPE_CHECKING:
    from conftest import RecordingSink, WaitFor


def device(broker: Any, points: list[dict[str, Any]], **kw: Any) -> MqttDevice:
    base: dict[str, Any] = {"id": "gw", "protocol": "mqtt", "endpoint": f"mqtt://{broker.host}:{broker.port}",
                            "username": broker.username, "password": broker.password, "timeout_s": 2.0,
                            "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    return MqttDevice.model_validate({**base, **kw, "points": points})


def config_error(point: dict[str, Any]) -> str:
    doc = {"devices": [{"id": "gw", "protocol": "mqtt", "endpoint": "mqtt://127.0.0.1:1883",
                        "points": [{"id": "a", **point}]}]}
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, "plant.toml")
    return str(exc.value)


@pytest.mark.parametrize(("point", "field", "words"), [
    ({"topic": "site/x{point}/t"}, "topic", "must fill a whole level"),
    ({"topic": "site/{point}/{point}"}, "topic", "at most one {point}"),
    ({"topic": "site/#/t"}, "topic", "only allowed as the last level"),
    ({"topic": "site/a+/t"}, "topic", "must fill a whole level"),
    ({"topic": "site/a/t", "topic_key": "k"}, "topic_key", "needs a {point} level"),
    ({"topic": "site/{point}/t", "topic_key": "a/b"}, "topic_key", "is not a topic level"),
])
def test_bad_topics_name_the_field(point: dict[str, Any], field: str, words: str) -> None:
    message = config_error(point)
    assert f"devices[0].points[0].{field}:" in message and words in message, message


def test_placeholders_become_one_wildcard_subscription(sink: RecordingSink) -> None:
    broker = SimpleNamespace(host="127.0.0.1", port=1, username=None, password=None)
    drv = MqttDriver(device(broker, [{"id": "hall_a", "topic": "site/{point}/temperature"},
                                     {"id": "hall_b", "topic": "site/{point}/temperature"},
                                     {"id": "e", "topic": "mbus/{device}/{point}/data", "topic_key": "712"},
                                     {"id": "plain", "topic": "site/+/power/#"}]), sink)
    assert drv.topics == ["site/+/temperature", "mbus/gw/+/data", "site/+/power/#"]


async def test_points_are_taken_from_the_topic(mosquitto: Any, mqtt_publish: Any, topic_prefix: str,
                                               sink: RecordingSink, wait_for: WaitFor, run_driver: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    t = topic_prefix
    points = [{"id": "hall_a", "topic": f"{t}/site/{{point}}/temperature"},
              {"id": "hall_b", "topic": f"{t}/site/{{point}}/temperature"},
              {"id": "meter_energy", "topic": f"{t}/mbus/{{device}}/{{point}}/data", "topic_key": "71234567",
               "json_path": "$.energy_gj"},
              {"id": "meter_power", "topic": f"{t}/mbus/{{device}}/{{point}}/data", "topic_key": "71234567",
               "json_path": "$.power_kw"}]
    drv = MqttDriver(device(mosquitto, points), sink)
    assert drv.topics == [f"{t}/site/+/temperature", f"{t}/mbus/gw/+/data"]
    caplog.set_level(logging.INFO, logger="drivers.mqtt")
    run_driver(drv)
    await wait_for(lambda: drv.state is ConnectionState.CONNECTED, 10, "subscribed")

    await mqtt_publish(f"{t}/site/hall_b/temperature", b"21.5")
    await mqtt_publish(f"{t}/site/hall_x/temperature", b"99")  # no such point: ignored, logged once
    await mqtt_publish(f"{t}/site/hall_x/temperature", b"98")
    await mqtt_publish(f"{t}/mbus/gw/99999999/data", json.dumps({"energy_gj": 1.0, "power_kw": 2.0}))
    await mqtt_publish(f"{t}/mbus/other/71234567/data", json.dumps({"energy_gj": 3.0, "power_kw": 4.0}))
    await mqtt_publish(f"{t}/mbus/gw/71234567/data", json.dumps({"energy_gj": 1234.5, "power_kw": 480}))
    await mqtt_publish(f"{t}/site/hall_a/temperature", b"19.0")
    await wait_for(lambda: sink.latest("gw.hall_a") is not None, 5, "the last message arrived")

    assert sink.value("gw.hall_a") == 19.0 and sink.value("gw.hall_b") == 21.5
    assert sink.value("gw.meter_energy") == 1234.5 and sink.value("gw.meter_power") == 480.0
    assert {s.point for s in sink.samples} == {"gw.hall_a", "gw.hall_b", "gw.meter_energy", "gw.meter_power"}
    assert all(s.quality is Quality.GOOD for s in sink.samples) and len(sink.samples) == 4
    assert drv.stats.reads == 3 and drv.stats.malformed_messages == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "drivers.mqtt" and r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # hall_x once, 99999999 once; the other device's topic is not ours
    assert any("'hall_x'" in w for w in warnings) and any("'99999999'" in w for w in warnings)


def _network_threads(device_id: str, client_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name == f"paho-mqtt-client-{client_id}" or t.name.startswith(f"heatrec-mqtt-{device_id}-")]


async def test_failed_and_stopped_connections_leave_no_threads(mosquitto: Any, topic_prefix: str,
                                                               sink: RecordingSink, wait_for: WaitFor) -> None:
    client_id = f"threads-{topic_prefix.rsplit('/', 1)[-1]}"
    refused = MqttDriver(device(mosquitto, [{"id": "x", "topic": "a/b"}], id="refused", password="wrong",
                                client_id=f"{client_id}-r"), sink)
    healthy = MqttDriver(device(mosquitto, [{"id": "x", "topic": "a/b"}], id="healthy", client_id=client_id), sink)
    tasks = [asyncio.create_task(refused.run()), asyncio.create_task(healthy.run())]
    try:
        await wait_for(lambda: refused.stats.failures >= 5, 10, "several refused connections")
        await wait_for(lambda: healthy.state is ConnectionState.CONNECTED, 10, "connected")
        # The refused attempts ended their threads; only the current attempt may still have one.
        await wait_for(lambda: len(_network_threads("refused", f"{client_id}-r")) <= 2, 5, "threads ended")
        assert len(_network_threads("healthy", client_id)) == 1  # paho's network thread
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
    assert _network_threads("refused", f"{client_id}-r") == [] and _network_threads("healthy", client_id) == []


@pytest.mark.parametrize("payload", [
    b'{"e": 1, "p": 2.5, "on": true, "t": "2024-05-01T10:00:00Z"}',
    b'{"e": -3, "p": 0, "on": false, "t": 1714557600}',
    b'{"e": 1, "p": "2.5", "on": true, "t": 1714557600}',  # text is not a number
    b'{"e": 1, "p": null, "on": true, "t": 1714557600}',
    b'{"e": 1, "p": NaN, "on": true, "t": 1714557600}',
    b'{"e": 1e400, "p": 1, "on": true, "t": 1714557600}',  # infinity
    b'{"e": 1' + b"0" * 400 + b', "p": 1, "on": true, "t": 1714557600}',  # beyond float
    b'{"e": 1, "on": true, "t": 1714557600}',  # a key missing
    b'{"e": 1, "p": 2, "on": true, "t": "soon"}',
    b'{"e": 1, "p": 2, "on": true}',
    b'{"e": [1], "p": {"x": 1}, "on": true, "t": 0}',
    b"[1, 2]",
    b"not json",
])
def test_fast_and_careful_decoding_agree(payload: bytes, sink: RecordingSink) -> None:
    broker = SimpleNamespace(host="127.0.0.1", port=1, username=None, password=None)
    points = [{"id": k, "topic": "m/t", "json_path": f"$.{k}", "timestamp_path": "$.t"} for k in ("e", "p", "on")]
    fast, careful = MqttDriver(device(broker, points), sink), MqttDriver(device(broker, points), sink)
    assert fast._route("m/t").fast is not None
    careful._route("m/t").fast = None
    a, b = fast._decode("m/t", payload), careful._decode("m/t", payload)
    assert a is not None and b is not None
    assert (a.pids, a.problem) == (b.pids, b.problem)
    assert [(s.point, s.value, s.quality, s.source_time) for s in a.samples] == \
           [(s.point, s.value, s.quality, s.source_time) for s in b.samples]
