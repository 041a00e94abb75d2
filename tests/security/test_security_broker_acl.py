"""Broker identities and ACLs, against a real Mosquitto built as `heatrec demo` builds it.

The attack found on the demo: one shared MQTT user, no ACL, so heatrec's own password (in heatrec.env) let
anyone publish meter telegrams. Now each role has its own identity: heatrec may only read its devices'
topics, the gateway may only publish its meters', the alarm publisher only its alarm topics.
"""

from __future__ import annotations

import asyncio
import re
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from drivers.mqtt import MqttDriver
from service.config import MqttDevice
from service.localservers import LocalServerError, MosquittoServer, free_port
from service.localservers.mosquitto import BrokerUser, hash_password, plant_broker_users, verify_password
from service.model import Sample
from tests.security.conftest import METER_TOPIC, SERIAL, Attacker, Plant
from tests.support import wait_until


class Sink:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def publish(self, sample: Sample) -> None:
        self.samples.append(sample)

    def values(self, point: str) -> list[float | None]:
        return [s.value for s in self.samples if s.point == point]


def telegram(flow_c: float, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {"serial": SERIAL, "time": now, "energy_gj": 10.0, "volume_m3": 1.0, "power_kw": 100.0,
            "flow_m3h": 2.0, "flow_temperature_c": flow_c, "return_temperature_c": 40.0, **extra}


async def running_meter_driver(plant: Plant, sink: Sink) -> tuple[MqttDriver, asyncio.Task[None]]:
    """heatrec's MQTT driver for the demo's meter1, with the demo's credentials, subscribed."""
    [dev] = [d for d in plant.config().devices if isinstance(d, MqttDevice)]
    drv = MqttDriver(dev, sink)
    task = asyncio.create_task(drv.run())
    await wait_until(lambda: drv.state.value == "connected", 10, "meter1 subscribed")
    return drv, task


def test_the_demo_roles_get_their_own_identities_with_least_rights(acl_plant: Plant,
                                                                    passwords: dict[str, str]) -> None:
    users = {u.username: u for u in plant_broker_users(acl_plant.config(), "127.0.0.1", acl_plant.broker.port)}
    assert set(users) == {"heatrec", "mbus-gateway", "heatrec-alarms"}
    assert (users["heatrec"].read, users["heatrec"].write) == ((METER_TOPIC,), ())
    assert (users["mbus-gateway"].read, users["mbus-gateway"].write) == ((), (METER_TOPIC,))
    assert (users["heatrec-alarms"].read, users["heatrec-alarms"].write) == ((), ("site/alarms/#",))
    assert users["mbus-gateway"].password == passwords["HEATREC_MQTT_GATEWAY_PASSWORD"]
    # What the broker was given: hashes only (PBKDF2-SHA512, Mosquitto's $7$), files readable by their owner only.
    work = acl_plant.broker.workdir
    pw_text = (work / "passwd").read_text()
    assert not any(p in pw_text for p in passwords.values())
    entries = dict(line.split(":", 1) for line in pw_text.splitlines())
    assert set(entries) == set(users) and all(e.startswith("$7$") for e in entries.values())
    assert verify_password(passwords["HEATREC_MQTT_PASSWORD"], entries["heatrec"])
    assert not verify_password(passwords["HEATREC_MQTT_PASSWORD"], entries["mbus-gateway"])
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600
    acl = (work / "acl").read_text()
    assert f"user heatrec\ntopic read {METER_TOPIC}\n" in acl and "readwrite" not in acl


@pytest.mark.integration  # starts Mosquitto
def test_no_password_reaches_a_command_line(shared_tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = subprocess.Popen

    def popen(argv: Any, *args: Any, **kw: Any) -> Any:
        seen.append([str(a) for a in argv])
        return real(argv, *args, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(subprocess, "run", lambda argv, *a, **k: seen.append(list(argv)) or real(argv, *a, **k))
    secret = "never-on-a-command-line"
    broker = MosquittoServer(shared_tmp_path / "mq", free_port(), users=[BrokerUser("gw", secret, write=("a/b",))],
                             persistence=False)
    with broker:
        pass
    assert seen and not any(secret in " ".join(argv) for argv in seen)
    assert not any("mosquitto_passwd" in argv[0] for argv in seen)


def test_the_password_hash_is_what_mosquitto_expects() -> None:
    entry = hash_password("pw", iterations=101, salt=b"\x00" * 12)
    assert entry.startswith("$7$101$AAAAAAAAAAAAAAAA$") and verify_password("pw", entry)
    with pytest.raises(LocalServerError):
        hash_password("")
    with pytest.raises(LocalServerError, match="username"):
        BrokerUser("a b", "x")


async def test_heatrecs_own_password_can_no_longer_publish_a_telegram(acl_plant: Plant, attacker: Attacker) -> None:
    sink = Sink()
    _, task = await running_meter_driver(acl_plant, sink)
    try:
        # The attack of the review: heatrec's password from heatrec.env, a fake telegram on the meter topic.
        await attacker(acl_plant.broker, acl_plant.user("heatrec"), METER_TOPIC, telegram(45.0))
        # So does the alarm publisher's identity; the broker takes both (QoS 1 acknowledged) and drops them.
        await attacker(acl_plant.broker, acl_plant.user("heatrec-alarms"), METER_TOPIC, telegram(46.0))
        # The gateway's own telegram after them: once it has arrived, anything forwarded before it would have too.
        await attacker(acl_plant.broker, acl_plant.user("mbus-gateway"), METER_TOPIC, telegram(70.0))
        await wait_until(lambda: bool(sink.values("meter1.flow_temperature")), 10, "the gateway's telegram")
        assert sink.values("meter1.flow_temperature") == [70.0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_heatrec_receives_only_its_devices_topics(acl_plant: Plant, attacker: Attacker) -> None:
    heatrec = acl_plant.user("heatrec")
    got: list[str] = []
    async with aiomqtt.Client("127.0.0.1", acl_plant.broker.port, username=heatrec.username,
                              password=heatrec.password) as client:
        await client.subscribe("#", qos=1)  # granted, but the ACL filters what it may receive

        async def collect() -> None:
            async for m in client.messages:
                got.append(str(m.topic))

        collector = asyncio.create_task(collect())
        try:
            await attacker(acl_plant.broker, acl_plant.user("heatrec-alarms"), "site/alarms/x", b"{}")
            await attacker(acl_plant.broker, acl_plant.user("mbus-gateway"), "mbus/heatmeter/other", b"{}")
            await attacker(acl_plant.broker, acl_plant.user("mbus-gateway"), METER_TOPIC, telegram(70.0))
            await wait_until(lambda: METER_TOPIC in got, 10, "the meter telegram")
            assert got == [METER_TOPIC], "nothing else: not the alarms, not a topic the gateway may not use"
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)


async def test_one_gateway_cannot_publish_for_another(server_root: Path, attacker: Attacker) -> None:
    a, b = "mbus/gw_a/meter", "mbus/gw_b/meter"
    users = [BrokerUser("heatrec", "h-secret", read=(a, b)), BrokerUser("gw_a", "a-secret", write=(a,)),
             BrokerUser("gw_b", "b-secret", write=(b,))]
    broker = MosquittoServer(server_root / f"mq-gw-{free_port()}", free_port(), users=users, persistence=False)
    broker.start()
    try:
        sink = Sink()
        dev = MqttDevice.model_validate({
            "id": "m", "protocol": "mqtt", "endpoint": broker.url, "username": "heatrec", "password": "h-secret",
            "serial_path": "", "points": [{"id": "a", "topic": a, "json_path": "$.v"},
                                          {"id": "b", "topic": b, "json_path": "$.v"}]})
        drv = MqttDriver(dev, sink)
        task = asyncio.create_task(drv.run())
        try:
            await wait_until(lambda: drv.state.value == "connected", 10, "subscribed")
            await attacker(broker, users[1], b, {"v": 666.0})  # gateway A on gateway B's topic: dropped
            await attacker(broker, users[2], b, {"v": 2.0})
            await attacker(broker, users[1], a, {"v": 1.0})
            await wait_until(lambda: bool(sink.values("m.a") and sink.values("m.b")), 10, "both gateways' values")
            assert (sink.values("m.a"), sink.values("m.b")) == ([1.0], [2.0])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await attacker.close()
        # Anonymous clients and wrong passwords are refused outright.
        for username, password in ((None, None), ("gw_a", "b-secret")):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", broker.port, username=username, password=password):
                    pass
    finally:
        broker.stop()


def test_roles_sharing_a_name_must_share_a_password(acl_plant: Plant) -> None:
    acl_plant.edit('username = "heatrec-alarms"', 'username = "heatrec"')
    with pytest.raises(LocalServerError, match="two different passwords"):
        plant_broker_users(acl_plant.config(), "127.0.0.1", acl_plant.broker.port)
    acl_plant.edit('mqtt_password = "${HEATREC_MQTT_GATEWAY_PASSWORD:-}"', 'mqtt_password = ""')
    acl_plant.edit('username = "heatrec"\n', 'username = "heatrec-alarms"\n')
    with pytest.raises(LocalServerError, match="no password"):
        plant_broker_users(acl_plant.config(), "127.0.0.1", acl_plant.broker.port)


def test_the_deploy_files_grant_what_the_docs_say_and_put_no_password_on_a_command_line() -> None:
    root = Path(__file__).resolve().parents[2]
    acl = (root / "deploy" / "mosquitto" / "acl").read_text()
    conf = (root / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "password_file" in conf and "acl_file /mosquitto/config/acl" in conf
    assert "listener 8883" in conf and "certfile" in conf, "TLS for whatever crosses a network"
    grants: dict[str, list[tuple[str, str]]] = {}
    for line in (ln.split() for ln in acl.splitlines() if ln.strip() and not ln.startswith("#")):
        if line[0] == "user":
            user = grants.setdefault(line[1], [])
        else:
            assert line[0] == "topic" and len(line) == 3, line
            user.append((line[1], line[2]))
    assert grants["heatrec"] == [("read", METER_TOPIC)]
    assert grants["gateway-1"] == [("write", METER_TOPIC)]
    assert grants["heatrec-alarms"] == [("write", "heatrec/alarms/#")]
    mounts = yaml.safe_load((root / "deploy" / "compose.yaml").read_text())["services"]["mosquitto"]["volumes"]
    assert "./mosquitto/acl:/mosquitto/config/acl:ro" in mounts
    doc = (root / "docs" / "DEPLOY.md").read_text()
    assert not re.search(r"mosquitto_passwd[^\n]* -b ", doc), "mosquitto_passwd -b shows the password in ps"
