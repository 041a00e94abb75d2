"""The edge node against a real Mosquitto and the test's own primary host (protobuf from the spec's schema).

The bus is fed directly here, so every value and timestamp is known exactly: seq without gaps and with its
wrap, report by exception, DDEATH/DBIRTH with the device, the primary host going away (samples come back
as historical, none lost, none twice), rebirth, and bad input counted without ending the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from drivers.config import ModbusDevice
from service.audit import AuditEntry
from service.bus import SampleBus
from service.localservers import MosquittoServer
from service.metrics import _sparkplug_families
from service.model import Quality, Sample
from service.scada.sparkplug.node import EdgeNode
from service.scada.sparkplug_config import SparkplugConfig
from service.tasks import cancel_and_wait
from tests.sparkplug.host import BOOLEAN, DOUBLE, STRING, SparkplugHost, metric_value, property_value
from tests.support import wait_until

# The outage is 30 s; the property (every sample of the outage arrives once, as historical) does not
# depend on its length, so the test keeps the suite fast with a shorter one.
OUTAGE_S = 2.0


@dataclass
class Rig:
    """A node, its bus, its devices' states, its audit trail, and the host watching it."""

    node: EdgeNode
    bus: SampleBus
    states: dict[str, str]
    audit: list[AuditEntry]
    host: SparkplugHost
    name: str


def _devices() -> list[ModbusDevice]:
    return [ModbusDevice.model_validate({"id": dev, "protocol": "modbus", "endpoint": "127.0.0.1:1", "points": [
        {"id": f"p{i}", "address": i, "unit": "kW"} for i in range(3)] + [
        {"id": "sp", "address": 9, "function": "holding", "writable": True, "min": 0.0, "max": 10.0}]})
        for dev in ("dev_a", "dev_b")]


@contextlib.asynccontextmanager
async def rig(broker: MosquittoServer, pb2: ModuleType, tmp_path: Path, **extra: Any) -> AsyncIterator[Rig]:
    """A running node with a primary host that is online."""
    name = f"n{secrets.token_hex(3)}"
    cfg = SparkplugConfig.model_validate({
        "url": f"mqtt://{broker.host}:{broker.port}", "username": broker.username, "password": broker.password,
        "group_id": "tg", "edge_node_id": name, "primary_host_id": f"h{name}", "spool_dir": str(tmp_path / name),
        "points": [{"point": "dev_a.p2", "deadband": 0.5}], **extra})
    bus = SampleBus()
    states = {"dev_a": "connected", "dev_b": "connected"}
    audit: list[AuditEntry] = []

    async def record(entry: AuditEntry) -> None:
        audit.append(entry)

    node = EdgeNode(cfg, _devices(), bus, device_states=lambda: states, audit=record)
    host = SparkplugHost(pb2, broker, host_id=f"h{name}", group="tg")
    await asyncio.to_thread(host.start)
    task = asyncio.create_task(node.run())
    try:
        yield Rig(node, bus, states, audit, host, name)
    finally:
        await cancel_and_wait(task)
        await asyncio.to_thread(host.stop)


def _seqs_continuous(host: SparkplugHost) -> list[int]:
    """Every seq after each NBIRTH (which is 0) continues by one, modulo 256; NDEATH has none."""
    seqs = []
    expect = None
    for r in host.messages():
        if r.verb == "NDEATH":
            assert not r.payload.HasField("seq")
            expect = None
            continue
        seq = r.payload.seq
        if r.verb == "NBIRTH":
            assert seq == 0
        elif expect is not None:
            assert seq == expect, f"{r.verb} with seq {seq}, expected {expect}"
        expect = (seq + 1) % 256
        seqs.append(seq)
    return seqs


async def test_births_seq_wrap_report_by_exception_and_device_death(mosquitto: MosquittoServer,
                                                                      sparkplug_pb2: ModuleType,
                                                                      tmp_path: Path) -> None:
    async with rig(mosquitto, sparkplug_pb2, tmp_path) as r:
        nbirth = (await r.host.wait_for("NBIRTH"))[0].payload
        names = {m.name: m for m in nbirth.metrics}
        assert names["bdSeq"].datatype == 8 and metric_value(names["bdSeq"]) == r.node.stats.bdseq
        assert names["Node Control/Rebirth"].datatype == BOOLEAN and metric_value(names["Node Control/Rebirth"]) \
            is False
        births = await r.host.wait_for("DBIRTH", 2)
        aliases = r.node.aliases
        seen_aliases = set()
        for b in births:
            assert [m.name for m in b.payload.metrics] == ["p0", "p1", "p2", "sp"]
            for m in b.payload.metrics:
                assert m.alias == aliases[f"{b.device}.{m.name}"] and m.datatype == DOUBLE
                assert property_value(m, "Quality") == 0 and m.is_null  # nothing measured yet: BAD, null
                seen_aliases.add(m.alias)
            assert property_value(b.payload.metrics[0], "engUnit") == "kW"
        assert len(seen_aliases) == 8 and 1 not in seen_aliases  # unique, and apart from the node's Rebirth

        # Report by exception: 300 changes, one at a time, make 300 DDATA; seq wraps past 255.
        t0 = datetime(2026, 12, 1, tzinfo=UTC)
        sent: list[tuple[str, float, int]] = []
        for i in range(300):
            t = t0 + timedelta(milliseconds=i)
            point = f"dev_{'ab'[i % 2]}.p0"
            r.bus.publish(Sample(point, float(i), Quality.GOOD, t, t))
            sent.append((point, float(i), int(t.timestamp() * 1000)))
            target = r.node.stats.messages + 1
            deadline = asyncio.get_running_loop().time() + 5
            while r.node.stats.messages < target:
                assert asyncio.get_running_loop().time() < deadline, "DDATA not published"
                await asyncio.sleep(0.001)
        # Unchanged values and changes within the deadband publish nothing; the deadband is per point.
        r.bus.publish(Sample("dev_b.p0", 299.0, Quality.GOOD, t0, t0))  # i = 299 went to dev_b: unchanged
        r.bus.publish(Sample("dev_a.p2", 1.0, Quality.GOOD, t0, t0))  # GOOD after the birth's BAD
        r.bus.publish(Sample("dev_a.p2", 1.4, Quality.GOOD, t0, t0))  # within its deadband of 0.5
        r.bus.publish(Sample("dev_a.p2", 1.6, Quality.STALE, t0, t0))  # quality changed: reported
        await wait_until(lambda: sum(len(d.payload.metrics) for d in r.host.messages("DDATA")[300:]) >= 2, 5,
                         "the deadband point's DDATA")
        data = r.host.messages("DDATA")
        got = [(f"{d.device}.{next(k for k, v in aliases.items() if v == m.alias).split('.')[1]}", metric_value(m),
                m.timestamp) for d in data[:300] for m in d.payload.metrics]
        assert got == sent
        last = [m for d in data[300:] for m in d.payload.metrics]
        assert [(metric_value(m), property_value(m, "Quality")) for m in last] == [(1.0, 192), (1.6, 500)]
        seqs = _seqs_continuous(r.host)
        assert 255 in seqs and seqs.count(0) >= 2  # the NBIRTH's 0 and the wrap's

        # The driver loses dev_b: DDEATH; it comes back: a new DBIRTH, with the latest values.
        r.states["dev_b"] = "backing_off"
        await r.host.wait_for("DDEATH", device="dev_b")
        r.states["dev_b"] = "connected"
        rebirths = await r.host.wait_for("DBIRTH", 2, device="dev_b")
        p0 = next(m for m in rebirths[1].payload.metrics if m.name == "p0")
        assert metric_value(p0) == 299.0 and property_value(p0, "Quality") == 192
        _seqs_continuous(r.host)


async def test_primary_host_offline_samples_come_back_historical_once(mosquitto: MosquittoServer,
                                                                      sparkplug_pb2: ModuleType,
                                                                      tmp_path: Path) -> None:
    async with rig(mosquitto, sparkplug_pb2, tmp_path) as r:
        await r.host.wait_for("DBIRTH", 2)
        bdseq = r.node.stats.bdseq
        fed: list[tuple[int, float]] = []  # (alias, value): every value is new, so every one is reported
        alias = r.node.aliases["dev_a.p0"]
        counter = itertools.count()

        async def feed() -> None:
            while True:
                now = datetime.now(UTC)
                v = float(next(counter))
                r.bus.publish(Sample("dev_a.p0", v, Quality.GOOD, now, now))
                fed.append((alias, v))
                await asyncio.sleep(0.01)

        feeder = asyncio.create_task(feed())
        try:
            await wait_until(lambda: len(fed) > 20, 5, "samples before the outage")
            await asyncio.to_thread(r.host.set_online, False)
            death = (await r.host.wait_for("NDEATH"))[0].payload
            assert metric_value(death.metrics[0]) == bdseq  # the session it ends
            during = len(fed)
            await asyncio.sleep(OUTAGE_S)  # the outage itself: samples keep coming meanwhile
            assert len(fed) - during > 50
            assert r.node.stats.spooled > 0 and not r.node.stats.born
            back = len(fed)  # everything fed from `during` until now was fed while the host was away
            await asyncio.to_thread(r.host.set_online, True)
            await r.host.wait_for("NBIRTH", 2)
            await wait_until(lambda: r.node.stats.historical >= back - during, 10, "historical replay")
            await wait_until(lambda: len(fed) > during + 50 + 20, 5, "live samples after the outage")
        finally:
            await cancel_and_wait(feeder)
        stop = len(fed)
        await wait_until(lambda: sum(1 for d in r.host.messages("DDATA") for m in d.payload.metrics
                                     if m.alias == alias) >= stop, 10, "every fed sample at the host")
        nbirths = r.host.messages("NBIRTH")
        assert metric_value(next(m for m in nbirths[1].payload.metrics if m.name == "bdSeq")) == (bdseq + 1) % 256
        live, historical = [], []
        for d in r.host.messages("DDATA"):
            for m in d.payload.metrics:
                if m.alias == alias:
                    (historical if m.is_historical else live).append(metric_value(m))
        values = [v for _, v in fed]
        assert sorted(live + historical) == values  # none lost, none twice
        assert historical == sorted(historical), str(historical)  # in order
        assert len(historical) >= 50  # the outage's samples, flagged historical
        # Historical ones are exactly those taken while the host was away: after them, only live values.
        assert max(historical) < min(v for v in live if v > min(historical))
        assert r.node.stats.historical_dropped == 0
        _seqs_continuous(r.host)


async def test_rebirth_bad_input_and_refused_commands(mosquitto: MosquittoServer, sparkplug_pb2: ModuleType,
                                                      tmp_path: Path) -> None:
    async with rig(mosquitto, sparkplug_pb2, tmp_path) as r:
        await r.host.wait_for("DBIRTH", 2)
        h, node = r.host, r.name
        h.publish(f"spBv1.0/tg/DCMD/{node}/dev_a", b"\x12\x05\x0a")  # truncated protobuf
        h.dcmd(node, "dev_a", alias=9999, value=1.0)  # unknown alias
        h.dcmd(node, "dev_a", name="nope", value=1.0)  # unknown name
        h.dcmd(node, "dev_a", name="sp", value="5", datatype=STRING, field="string_value")  # wrong datatype
        h.dcmd(node, "dev_a", name="sp", value=5.0)  # not commandable here
        h.publish(f"spBv1.0/STATE/h{node}", b"not json")
        h.publish(f"spBv1.0/tg/NCMD/{node}", b"\xff\xff")
        await wait_until(lambda: sum(r.node.stats.bad_input.values()) >= 6, 5, "bad input counted")
        assert dict(r.node.stats.bad_input) == {"malformed": 2, "unknown_metric": 2, "wrong_datatype": 1,
                                                "malformed_state": 1}
        await wait_until(lambda: len(r.audit) >= 4, 5, "refusals audited")
        assert {(e.target, e.outcome) for e in r.audit} == {
            ("dev_a.9999", "refused"), ("dev_a.nope", "refused"), ("dev_a.sp", "refused")}
        assert r.node.stats.commands_refused == 4 and r.node.stats.commands_accepted == 0
        families = {f.name: f for f in _sparkplug_families(r.node)}
        assert {s.labels["reason"]: s.value for s in families["heatrec_sparkplug_bad_input"].samples} == {
            "malformed": 2, "unknown_metric": 2, "wrong_datatype": 1, "malformed_state": 1}
        # Still in session: the host asks for a rebirth and gets NBIRTH (seq 0, same bdSeq) and both DBIRTHs.
        before = len(h.messages())
        h.rebirth(node)
        nbirth = (await h.wait_for("NBIRTH", since=before))[0].payload
        assert nbirth.seq == 0
        assert metric_value(next(m for m in nbirth.metrics if m.name == "bdSeq")) == r.node.stats.bdseq
        await h.wait_for("DBIRTH", 2, since=before)
        _seqs_continuous(h)
        assert not h.messages("NDEATH")


@pytest.mark.integration
async def test_broker_outage_samples_come_back_historical_once(server_root: Path, sparkplug_pb2: ModuleType,
                                                               tmp_path: Path) -> None:
    """The broker itself goes away (a restart without persistence): spooled meanwhile, historical afterwards.

    The births after it wait for the primary host's new STATE, as they must: without a primary host the
    node would publish into a broker nobody had subscribed to yet.
    """
    from service.localservers import free_port

    broker = MosquittoServer(server_root / f"mq-{secrets.token_hex(3)}", free_port(), "heatrec",
                             secrets.token_urlsafe(12), persistence=False)
    broker.start()
    try:
        name = f"b{secrets.token_hex(3)}"
        cfg = SparkplugConfig.model_validate({
            "url": f"mqtt://{broker.host}:{broker.port}", "username": broker.username, "password": broker.password,
            "group_id": "tb", "edge_node_id": name, "primary_host_id": f"h{name}", "spool_dir": str(tmp_path / name),
            "reconnect_max_s": 0.5})
        bus = SampleBus()
        node = EdgeNode(cfg, _devices()[:1], bus, device_states=lambda: {"dev_a": "connected"})
        task = asyncio.create_task(node.run())
        host = SparkplugHost(sparkplug_pb2, broker, host_id=f"h{name}", group="tb")
        await asyncio.to_thread(host.start)
        fed: list[float] = []
        counter = itertools.count()

        async def feed() -> None:
            while True:
                now = datetime.now(UTC)
                fed.append(float(next(counter)))
                bus.publish(Sample("dev_a.p0", fed[-1], Quality.GOOD, now, now))
                await asyncio.sleep(0.01)

        await host.wait_for("DBIRTH")
        feeder = asyncio.create_task(feed())
        try:
            await wait_until(lambda: len(fed) > 20, 5, "samples before the outage")
            await asyncio.to_thread(host.close)  # it would reconnect on its own with the same client id
            broker.stop()
            await wait_until(lambda: not node.stats.connected, 10, "the node noticing the broker's loss")
            before = node.stats.spooled
            await wait_until(lambda: node.stats.spooled > before + 30, 10, "samples spooled during the outage")
            broker.start()
            await wait_until(lambda: node.stats.connected, 10, "the node connected again, waiting for the host")
            host = SparkplugHost(sparkplug_pb2, broker, host_id=f"h{name}", group="tb")  # a new session
            await asyncio.to_thread(host.start)
            await host.wait_for("NBIRTH", timeout=20)
            await wait_until(lambda: node.stats.historical >= node.stats.spooled, 10, "the spool replayed")
            mark = len(fed)
            await wait_until(lambda: len(fed) > mark + 20, 5, "live samples after the outage")
        finally:
            await cancel_and_wait(feeder)
        alias = node.aliases["dev_a.p0"]
        await wait_until(lambda: max((metric_value(m) for d in host.messages("DDATA") for m in d.payload.metrics
                                      if m.alias == alias), default=-1.0) == fed[-1], 10, "the last sample")
        live, historical = [], []
        for d in host.messages("DDATA"):
            for m in d.payload.metrics:
                if m.alias == alias:
                    (historical if m.is_historical else live).append(metric_value(m))
        # What the host had before the outage went with the first session (this host was not there); from
        # the outage on, every sample arrives once: first as history, in order, then live.
        first = min(historical)
        assert historical == sorted(historical) and len(historical) >= 30
        assert sorted(historical + live) == [v for v in fed if v >= first]
        assert max(historical) < min(live)
        # A stop says goodbye itself: NDEATH with this session's bdSeq, before the DISCONNECT that stops the will.
        await cancel_and_wait(task)
        death = (await host.wait_for("NDEATH"))[0].payload
        assert metric_value(death.metrics[0]) == node.stats.bdseq
        await asyncio.to_thread(host.stop)
    finally:
        broker.stop()


def test_commands_need_credentials() -> None:
    """A commandable point without broker credentials is a configuration error (no anonymous writes)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="commands need broker credentials"):
        SparkplugConfig.model_validate({"url": "mqtt://127.0.0.1:1883", "group_id": "g", "edge_node_id": "n",
                                        "points": [{"point": "hp1.supply_setpoint", "commandable": True}]})


def test_config_checks_points_against_the_plant() -> None:
    """[sparkplug] names points and devices of the plant; a commandable point must be writable."""
    from service.config import ConfigError, parse_config

    base = {"devices": [d.model_dump(exclude_defaults=True) | {"protocol": "modbus"} for d in _devices()],
            "sparkplug": {"url": "mqtt://127.0.0.1:1883", "username": "u", "group_id": "g", "edge_node_id": "n"}}
    cases = {"no device 'nope'": {"devices": ["nope"]},
             "no point 'dev_a.nope'": {"points": [{"point": "dev_a.nope"}]},
             "point 'dev_a.p0' is not writable": {"points": [{"point": "dev_a.p0", "commandable": True}]}}
    for message, extra in cases.items():
        data = {**base, "sparkplug": {**base["sparkplug"], **extra}}
        with pytest.raises(ConfigError, match=message):
            parse_config(data, "plant.toml")
    cfg = parse_config({**base, "sparkplug": {**base["sparkplug"], "points": [
        {"point": "dev_a.sp", "commandable": True, "deadband": 0.2}]}}, "plant.toml")
    assert cfg.sparkplug is not None and cfg.sparkplug.point_settings("dev_a.sp").deadband == 0.2
