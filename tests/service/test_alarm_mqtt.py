"""Alarm changes published to a real Mosquitto: retained per-alarm JSON, and a broker outage never blocks alarms."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.backoff import Backoff
from service.alarms.manager import AlarmManager
from service.alarms.mqtt_publisher import AlarmPublisher
from service.bus import SampleBus
from service.config import AlarmsMqttConfig, DatabaseConfig, parse_config
from service.localservers import MosquittoServer, free_port
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.tasks import cancel_and_wait
from tests.support import wait_until

CFG = parse_config({
    "devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input"}]}],
    "alarms": {"limits": [{"point": "hp1.supply_temperature", "high": 90, "quality": False}]}})
HIGH = "hp1.supply_temperature:high"
T = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
async def manager(database: DatabaseConfig) -> AsyncIterator[tuple[AlarmManager, SampleBus]]:
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
    bus = SampleBus()
    mgr = AlarmManager(CFG.alarms, ["hp1"], bus, pool, lambda: {"hp1": "connected"}, now=lambda: T)
    await mgr.start()
    yield mgr, bus
    await pool.close()


class Subscriber:
    """Collects the latest payload per topic under a prefix."""

    def __init__(self, broker: MosquittoServer, prefix: str) -> None:
        self.broker, self.prefix = broker, prefix
        self.latest: dict[str, dict[str, Any]] = {}
        self.retained: set[str] = set()
        self.count = 0

    async def run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port, username=self.broker.username,
                                  password=self.broker.password) as client:
            await client.subscribe(f"{self.prefix}/#", qos=1)
            async for msg in client.messages:
                alarm_id = str(msg.topic)[len(self.prefix) + 1:]
                self.latest[alarm_id] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                if msg.retain:
                    self.retained.add(alarm_id)
                self.count += 1


async def test_changes_are_published_retained_per_alarm(manager: tuple[AlarmManager, SampleBus],
                                                         mosquitto: MosquittoServer) -> None:
    mgr, bus = manager
    prefix = f"test/{secrets.token_hex(4)}/alarms"
    cfg = AlarmsMqttConfig(url=mosquitto.url, topic_prefix=prefix, username=mosquitto.username,
                           password=mosquitto.password)
    pub = AlarmPublisher(cfg, lambda: mgr.engine.alarms.values())
    mgr.observe(pub.offer)
    live = Subscriber(mosquitto, prefix)
    tasks = [asyncio.create_task(pub.run()), asyncio.create_task(live.run())]
    try:
        # The snapshot after connecting publishes every alarm's current state.
        await wait_until(lambda: set(live.latest) == {HIGH, "device:hp1:offline"}, 10, "initial snapshot")
        assert live.latest[HIGH]["state"] == "normal" and live.latest[HIGH]["event"] is None

        bus.publish(Sample("hp1.supply_temperature", 93.5, Quality.GOOD, T, T))
        await mgr.evaluate_once()
        await wait_until(lambda: live.latest[HIGH]["state"] == "unack_active", 10, "unack_active published")
        msg = live.latest[HIGH]
        assert msg["active"] and msg["needs_ack"] and msg["value"] == 93.5 and msg["severity"] == "medium"
        assert msg["event"]["old_state"] == "normal" and msg["event"]["new_state"] == "unack_active"

        await mgr.acknowledge(HIGH, "anna")
        await wait_until(lambda: live.latest[HIGH]["state"] == "acked_active", 10, "acked_active published")
        assert live.latest[HIGH]["acked_by"] == "anna" and live.latest[HIGH]["event"]["by"] == "anna"

        # A SCADA connecting later gets the current state of every alarm from the retained messages.
        late = Subscriber(mosquitto, prefix)
        late_task = asyncio.create_task(late.run())
        tasks.append(late_task)
        await wait_until(lambda: {HIGH, "device:hp1:offline"} <= late.retained, 10, "retained states")
        assert late.latest[HIGH]["state"] == "acked_active"
        assert late.latest["device:hp1:offline"]["state"] == "normal"
        assert pub.stats.dropped == 0 and pub.stats.connects == 1 and pub.queue_depth == 0
    finally:
        for t in tasks:
            await cancel_and_wait(t)


async def test_broker_outage_never_blocks_alarms_and_drops_are_counted(
        manager: tuple[AlarmManager, SampleBus], server_root: Path) -> None:
    mgr, bus = manager
    port = free_port()  # nothing listens here yet
    broker = MosquittoServer(server_root / f"mq-{secrets.token_hex(3)}", port, "alarms", secrets.token_urlsafe(12),
                             persistence=False)
    cfg = AlarmsMqttConfig(url=f"mqtt://127.0.0.1:{port}", topic_prefix="site/alarms", username=broker.username,
                           password=broker.password, queue_size=3)
    pub = AlarmPublisher(cfg, lambda: mgr.engine.alarms.values(), backoff=Backoff(0.05, 0.2))
    mgr.observe(pub.offer)
    task = asyncio.create_task(pub.run())
    try:
        await wait_until(lambda: pub._backoff.attempt >= 2, 10, "reconnect attempts")
        # Eight changes while the broker is away: alarm handling goes on, the queue keeps the newest three.
        for i in range(4):
            bus.publish(Sample("hp1.supply_temperature", 95.0 + i, Quality.GOOD, T, T))
            await mgr.evaluate_once()
            await mgr.acknowledge(HIGH, "anna") if i % 2 == 0 else await mgr.shelve(HIGH, "bob", 60)
            if i % 2 == 1:
                await mgr.unshelve(HIGH, "bob")
        changes = 1 + 4 + 2  # raise, ack/shelve x4, unshelve x2
        assert pub.queue_depth == 3 and pub.stats.dropped == changes - 3
        assert not pub.stats.connected and pub.stats.published == 0
        final = mgr.engine.alarms[HIGH].state.value

        await asyncio.to_thread(broker.start)
        try:
            await wait_until(lambda: pub.stats.connected and pub.queue_depth == 0, 15, "reconnect and drain")
            # Despite the drops the retained topic holds the true current state (snapshot after reconnect).
            late = Subscriber(broker, "site/alarms")
            late_task = asyncio.create_task(late.run())
            try:
                await wait_until(lambda: HIGH in late.retained, 10, "retained state after the outage")
                assert late.latest[HIGH]["state"] == final
            finally:
                await cancel_and_wait(late_task)
            assert pub.stats.published >= 3 + 2  # the queued changes, then a snapshot of both alarms
            # A broker that goes away while nothing changes is noticed, and reconnected to when it is back.
            await asyncio.to_thread(broker.stop)
            await wait_until(lambda: not pub.stats.connected, 10, "loss noticed while idle")
            await asyncio.to_thread(broker.start)
            await wait_until(lambda: pub.stats.connects == 2 and pub.stats.connected, 15, "second connection")
        finally:
            await asyncio.to_thread(broker.stop)
    finally:
        await cancel_and_wait(task)


@pytest.mark.parametrize(("block", "fragment"), [
    ({"url": "tcp://h:1883"}, "not a broker URL"),
    ({"url": "mqtt://h:port"}, "invalid port"),
    ({"url": "mqtt://h:1883", "topic_prefix": "a/+/b"}, "not a topic prefix"),
    ({"url": "mqtt://h:1883", "topic_prefix": "alarms/"}, "not a topic prefix"),
    ({"url": "mqtt://h:1883", "qos": 3}, "qos"),
    ({"url": "mqtt://h:1883", "queue_size": 0}, "queue_size"),
    ({"url": "mqtts://h", "tls_key_file": "k.pem"}, "tls_key_file needs tls_cert_file"),
    ({"url": "mqtt://h:1883", "retained": True}, "retained"),
])
def test_alarm_mqtt_config_is_checked(block: dict[str, Any], fragment: str) -> None:
    from service.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=fragment):
        parse_config({"alarms": {"mqtt": block}})


def test_alarm_mqtt_config_defaults() -> None:
    cfg = parse_config({"alarms": {"mqtt": {"url": "mqtts://broker.example:8883"}}}).alarms.mqtt
    assert cfg is not None
    assert (cfg.topic_prefix, cfg.qos, cfg.retain, cfg.queue_size) == ("heatrec/alarms", 1, True, 1000)
