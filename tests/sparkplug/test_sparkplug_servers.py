"""Several brokers: the edge node on one at a time, walking the list (Sparkplug 3.0, multiple MQTT servers).

Against two real Mosquittos (the session's and one of this module) and a port nobody listens on, with the
test's primary host on both brokers: born on the first; the first stopped → born on the second, the samples
of the gap historical, none lost, none twice; NCMD Next Server → the dead port (cannot connect) → the first
again (the list wraps), every session with a new bdSeq. A server where the host is offline is left at once,
one without any STATE after `host_wait_s`. The unit tests check the configuration and the node controls.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from drivers.config import ModbusDevice
from service.audit import AuditEntry
from service.bus import SampleBus
from service.config import ConfigError, parse_config
from service.localservers import MosquittoServer, free_port
from service.model import Quality, Sample
from service.scada.sparkplug.node import FIRST_POINT_ALIAS, NEXT_SERVER_ALIAS, REBIRTH_ALIAS, EdgeNode
from service.scada.sparkplug_config import SparkplugConfig
from service.tasks import cancel_and_wait
from tests.sparkplug.host import BOOLEAN, SparkplugHost, metric_value
from tests.support import wait_until


def _device() -> ModbusDevice:
    return ModbusDevice.model_validate({"id": "dev_a", "protocol": "modbus", "endpoint": "127.0.0.1:1", "points": [
        {"id": "p0", "address": 0, "unit": "kW"}, {"id": "p1", "address": 1, "unit": "kW"}]})


def _url(broker: MosquittoServer) -> str:
    return f"mqtt://{broker.host}:{broker.port}"


def _values(hosts: list[SparkplugHost], alias: int, *, historical: bool | None = None) -> list[float]:
    """The values of one metric in the DDATA the hosts received, in arrival order per host."""
    return [metric_value(m) for h in hosts for d in h.messages("DDATA") for m in d.payload.metrics
            if m.alias == alias and (historical is None or m.is_historical == historical)]


def _bdseq(r: Any) -> int:
    return int(metric_value(next(m for m in r.payload.metrics if m.name == "bdSeq")))


def _seqs_continuous(host: SparkplugHost) -> None:
    """On one broker: every seq after an NBIRTH (0) continues by one, modulo 256."""
    expect = None
    for r in host.messages():
        if r.verb == "NDEATH":
            expect = None
            continue
        if r.verb == "NBIRTH":
            assert r.payload.seq == 0
        elif expect is not None:
            assert r.payload.seq == expect, f"{r.verb} with seq {r.payload.seq}, expected {expect}"
        expect = (r.payload.seq + 1) % 256


@pytest.fixture
def second_broker(server_root: Path, mosquitto: MosquittoServer) -> Iterator[MosquittoServer]:
    """A Mosquitto of this test's own (same credentials as the session's), which the test may stop and start."""
    broker = MosquittoServer(server_root / f"mq2-{secrets.token_hex(3)}", free_port(), mosquitto.username,
                             mosquitto.password, persistence=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.integration
async def test_lost_broker_next_server_and_wrap_each_a_new_session_nothing_lost(
        mosquitto: MosquittoServer, second_broker: MosquittoServer, sparkplug_pb2: ModuleType,
        tmp_path: Path) -> None:
    first, second = second_broker, mosquitto
    urls = [_url(first), _url(second), f"mqtt://127.0.0.1:{free_port()}"]  # the last: nobody listens
    name = f"w{secrets.token_hex(3)}"
    host_id = f"h{name}"
    cfg = SparkplugConfig.model_validate({
        "urls": urls, "username": mosquitto.username, "password": mosquitto.password, "group_id": "tw",
        "edge_node_id": name, "primary_host_id": host_id, "spool_dir": str(tmp_path / name),
        "reconnect_max_s": 0.5})
    bus = SampleBus()
    audit: list[AuditEntry] = []

    async def record(entry: AuditEntry) -> None:
        audit.append(entry)

    node = EdgeNode(cfg, [_device()], bus, device_states=lambda: {"dev_a": "connected"}, audit=record)
    alias = node.aliases["dev_a.p0"]
    # The primary host is on both brokers (a STATE on each), as a host of a multi-server system is.
    host_a = SparkplugHost(sparkplug_pb2, first, host_id=host_id, group="tw")
    host_b = SparkplugHost(sparkplug_pb2, second, host_id=host_id, group="tw")
    await asyncio.to_thread(host_a.start)
    await asyncio.to_thread(host_b.start)
    hosts = [host_a, host_b]
    task = asyncio.create_task(node.run())
    fed: list[float] = []
    counter = itertools.count()
    feeding = asyncio.Event()

    def publish() -> None:
        now = datetime.now(UTC)
        fed.append(float(next(counter)))
        bus.publish(Sample("dev_a.p0", fed[-1], Quality.GOOD, now, now))

    async def feed() -> None:
        while True:
            await feeding.wait()
            publish()
            await asyncio.sleep(0.01)

    feeder = asyncio.create_task(feed())
    try:
        # Born on the first broker, with both node controls in NBIRTH.
        nbirth = (await host_a.wait_for("NBIRTH"))[0]
        controls = {m.name: m for m in nbirth.payload.metrics}
        for control, a in (("Node Control/Rebirth", REBIRTH_ALIAS), ("Node Control/Next Server", NEXT_SERVER_ALIAS)):
            assert controls[control].datatype == BOOLEAN and controls[control].alias == a
            assert metric_value(controls[control]) is False
        await host_a.wait_for("DBIRTH")
        bdseq = _bdseq(nbirth)
        assert node.stats.server == urls[0] and not host_b.messages("NBIRTH")
        feeding.set()
        await wait_until(lambda: len(fed) > 20, 5, "samples on the first broker")

        # The first broker goes away. What the node published before it did is at the host; a sample in
        # flight at that moment could be lost (QoS 0, as Sparkplug prescribes), so the feed pauses around it.
        feeding.clear()
        await wait_until(lambda: len(_values([host_a], alias)) == len(fed), 5, "the first broker's samples")
        await asyncio.to_thread(host_a.close)
        await asyncio.to_thread(first.stop)
        await wait_until(lambda: node.stats.server_moves == 1 and not node.stats.born, 10, "the node moving on")
        assert node.stats.server == urls[1] and node.stats.server_index == 1
        for _ in range(5):  # not born now: these can only reach a host as history, after the next births
            publish()
        gap = fed[-5:]
        feeding.set()
        nbirth_b = (await host_b.wait_for("NBIRTH"))[0]
        assert _bdseq(nbirth_b) == (bdseq + 1) % 256  # a new session
        await wait_until(lambda: set(gap) <= set(_values([host_b], alias, historical=True)), 5,
                         "the gap's samples, as history")
        mark = len(fed)
        await wait_until(lambda: len(_values([host_b], alias, historical=False)) > 0 and len(fed) > mark + 20, 5,
                         "live samples on the second broker")

        # The first is back with the host on it; the host asks for the next server: NDEATH on the second, the
        # third cannot be reached, the list wraps to the first. The feed goes on throughout: a planned move
        # loses nothing (NDEATH and DISCONNECT follow the data on the socket).
        await asyncio.to_thread(first.start)
        host_a2 = SparkplugHost(sparkplug_pb2, first, host_id=host_id, group="tw")
        await asyncio.to_thread(host_a2.start)
        hosts.append(host_a2)
        host_b.next_server(name)
        death = (await host_b.wait_for("NDEATH"))[0]
        assert metric_value(death.payload.metrics[0]) == _bdseq(nbirth_b)
        nbirth_a2 = (await host_a2.wait_for("NBIRTH", timeout=10))[0]
        assert _bdseq(nbirth_a2) == (bdseq + 3) % 256  # one more for the attempt on the dead port
        assert node.stats.server == urls[0] and node.stats.server_index == 0 and node.stats.server_moves == 3
        mark = len(fed)
        await wait_until(lambda: len(_values([host_a2], alias, historical=False)) > 0 and len(fed) > mark + 20, 5,
                         "live samples on the first broker again")
    finally:
        await cancel_and_wait(feeder)
    await wait_until(lambda: _values([host_a2], alias)[-1:] == fed[-1:], 5, "the last sample")

    every = _values(hosts, alias)
    assert sorted(every) == fed  # none lost, none twice, over three sessions on two brokers
    for h in hosts:  # on each broker: history first, in order, then live
        hist, live = _values([h], alias, historical=True), _values([h], alias, historical=False)
        assert hist == sorted(hist) and live == sorted(live)
        assert not hist or not live or max(hist) < min(live)
        _seqs_continuous(h)
    assert not _values([host_a], alias, historical=True)  # nothing was waiting at the first births
    assert _values([host_a2], alias, historical=True)  # the move's own gap, from the second to the first
    assert min(_values([host_a2], alias)) > max(_values([host_b], alias))
    assert node.stats.commands_accepted == 1 and node.stats.historical_dropped == 0
    assert [(e.target, e.requested, e.applied, e.outcome) for e in audit] == [
        ("node:Node Control/Next Server", True, urls[2], "accepted")]
    await cancel_and_wait(task)
    assert _bdseq((await host_a2.wait_for("NDEATH"))[0]) == _bdseq(nbirth_a2)
    for h in (host_b, host_a2):
        await asyncio.to_thread(h.stop)


@pytest.mark.integration
async def test_servers_without_the_primary_host_online_are_left(
        mosquitto: MosquittoServer, second_broker: MosquittoServer, sparkplug_pb2: ModuleType,
        tmp_path: Path) -> None:
    """STATE offline on a server: on to the next at once; no STATE at all: after host_wait_s."""
    names = {case: f"{case}{secrets.token_hex(3)}" for case in ("offline", "absent")}
    # The first node's host was on the session's broker and left it offline (its will would say the same);
    # it still sees the whole group there.
    gone = SparkplugHost(sparkplug_pb2, mosquitto, host_id=f"h{names['offline']}", group="to")
    await asyncio.to_thread(gone.start, online=False)
    nodes: list[EdgeNode] = []
    hosts = [gone]
    tasks = []
    try:
        for case, wait_s in (("offline", 60.0), ("absent", 0.5)):
            name = names[case]
            host_id = f"h{name}"
            host = SparkplugHost(sparkplug_pb2, second_broker, host_id=host_id, group="to")
            await asyncio.to_thread(host.start)
            hosts.append(host)
            cfg = SparkplugConfig.model_validate({
                "urls": [_url(mosquitto), _url(second_broker)], "username": mosquitto.username,
                "password": mosquitto.password, "group_id": "to", "edge_node_id": name, "primary_host_id": host_id,
                "spool_dir": str(tmp_path / name), "host_wait_s": wait_s, "reconnect_max_s": 0.5})
            node = EdgeNode(cfg, [_device()], SampleBus(), device_states=lambda: {"dev_a": "connected"})
            nodes.append(node)
            tasks.append(asyncio.create_task(node.run()))
        # Born on the second within a time well below the offline case's host_wait_s: the STATE moved it.
        await wait_until(lambda: all(n.stats.born for n in nodes), 10, "both nodes born")
        for n in nodes:
            assert n.server == _url(second_broker) and n.stats.server_moves == 1 and n.stats.connects == 2
        assert not gone.messages("NBIRTH")  # nobody was born on the first broker
    finally:
        for t in tasks:
            await cancel_and_wait(t)
        for h in hosts:
            await asyncio.to_thread(h.stop)


# ---------------------------------------------------------------------- unit: configuration and node controls

_BASE = {"group_id": "g", "edge_node_id": "n"}


def test_url_or_urls_one_of_them_each_a_broker_named_in_the_error() -> None:
    """`url` (one broker) still works; `urls` lists several; the errors name the field and the item."""
    assert SparkplugConfig.model_validate({**_BASE, "url": "mqtt://a:1883"}).servers == ("mqtt://a:1883",)
    cfg = SparkplugConfig.model_validate({**_BASE, "urls": ["mqtt://a", "mqtts://b:8884", "mqtt://c:1884"]})
    assert cfg.servers == ("mqtt://a", "mqtts://b:8884", "mqtt://c:1884") and cfg.url is None
    cases = {
        "sparkplug: url: required key is missing (or urls": {},
        "sparkplug: url, urls: set url (one broker) or urls (several), not both": {"url": "mqtt://a",
                                                                                   "urls": ["mqtt://b"]},
        "sparkplug.urls: List should have at least 1 item": {"urls": []},
        "sparkplug.urls[1]: 'ftp://b' is not a broker URL": {"urls": ["mqtt://a", "ftp://b"]},
        "sparkplug.urls[0]: 'mqtt://a:x' has an invalid port": {"urls": ["mqtt://a:x"]},
        "sparkplug: urls[2]: 'mqtt://A:1883' is the same server as urls[0]": {
            "urls": ["mqtt://a", "mqtt://b", "mqtt://A:1883"]},
        "sparkplug.urls[1]: 'mqtt://…@b': put credentials in username and password": {
            "urls": ["mqtt://a", "mqtt://u:secret@b"]},
        "sparkplug.urls: Input should be a valid list": {"urls": "mqtt://a"},
    }
    for message, extra in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            parse_config({"sparkplug": {**_BASE, **extra}}, "plant.toml")
        assert str(err.value).startswith("plant.toml: sparkplug")
        assert "secret" not in str(err.value)


def _ncmd(pb2: ModuleType, *metrics: tuple[str | None, int | None, str, Any]) -> Any:
    """An NCMD payload decoded by heatrec's codec, built by protobuf's runtime: (name, alias, field, value)."""
    from service.scada.sparkplug import codec

    p = pb2.Payload(timestamp=1)
    for name, alias, field, value in metrics:
        m = p.metrics.add(datatype=BOOLEAN if field == "boolean_value" else 10)
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        setattr(m, field, value)
    return codec.decode_payload(p.SerializeToString())


async def test_next_server_and_rebirth_are_accepted_and_audited_anything_else_refused(
        sparkplug_pb2: ModuleType, tmp_path: Path) -> None:
    urls = ["mqtt://a:1883", "mqtt://b:1883", "mqtt://c:1883"]
    cfg = SparkplugConfig.model_validate({**_BASE, "urls": urls, "spool_dir": str(tmp_path)})
    audit: list[AuditEntry] = []

    async def record(entry: AuditEntry) -> None:
        audit.append(entry)

    node = EdgeNode(cfg, [_device()], SampleBus(), device_states=dict, audit=record)
    assert sorted(node.aliases.values()) == [FIRST_POINT_ALIAS, FIRST_POINT_ALIAS + 1]  # past both controls
    assert node.server == urls[0] and node.stats.server == urls[0]

    await node._ncmd(_ncmd(sparkplug_pb2, ("Node Control/Next Server", None, "boolean_value", False)))
    assert not node._next_server and node.stats.commands_accepted == 0  # false asks for nothing
    await node._ncmd(_ncmd(sparkplug_pb2, (None, NEXT_SERVER_ALIAS, "boolean_value", True)))
    assert node._next_server and not node._rebirth
    await node._ncmd(_ncmd(sparkplug_pb2, ("Node Control/Rebirth", None, "boolean_value", True)))
    assert node._rebirth and node.stats.commands_accepted == 2
    await node._ncmd(_ncmd(sparkplug_pb2, ("Node Control/Next Server", None, "double_value", 1.0),
                           ("Node Control/Reboot", None, "boolean_value", True)))
    assert node.stats.commands_refused == 2 and node.stats.commands_accepted == 2
    assert dict(node.stats.bad_input) == {"wrong_datatype": 1, "unknown_metric": 1}
    assert [(e.target, e.applied, e.outcome) for e in audit] == [
        ("node:Node Control/Next Server", urls[1], "accepted"), ("node:Node Control/Rebirth", True, "accepted"),
        ("node:Node Control/Next Server", None, "refused"), ("node:Node Control/Reboot", None, "refused")]

    # Whatever ends a session, the next one goes to the next broker, and the list wraps.
    for expect in (1, 2, 0, 1):
        node._move_on()
        assert node.server == urls[expect] and node.stats.server_index == expect
    assert node.stats.server_moves == 4
    one = EdgeNode(SparkplugConfig.model_validate({**_BASE, "url": urls[0], "spool_dir": str(tmp_path / "one")}),
                   [_device()], SampleBus(), device_states=dict)
    one._move_on()  # one broker: Next Server is a new session on the same one
    assert one.server == urls[0] and one.stats.server_moves == 0
