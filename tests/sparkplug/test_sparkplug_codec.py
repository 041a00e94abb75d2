"""heatrec's hand-written Sparkplug B codec against protobuf's own runtime (classes compiled from the spec's schema)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.config import ModbusDevice
from service.bus import SampleBus
from service.model import Quality, Sample
from service.scada.sparkplug import codec
from service.scada.sparkplug.codec import PropertyValue
from service.scada.sparkplug.node import EdgeNode
from service.scada.sparkplug_config import SparkplugConfig
from tests.sparkplug.host import metric_value, property_value


def test_heatrec_encoding_parses_with_protobuf(sparkplug_pb2: ModuleType) -> None:
    """Every field heatrec writes reads back the same through protobuf."""
    props = {"engUnit": PropertyValue(codec.STRING, "degC"), "Quality": PropertyValue(codec.INT32, -5),
             "engHigh": PropertyValue(codec.DOUBLE, 85.0), "gone": PropertyValue(codec.DOUBLE, None)}
    metrics = [
        codec.encode_metric(name="bdSeq", timestamp=1, datatype=codec.UINT64, value=2**40 + 3),
        codec.encode_metric(name="Node Control/Rebirth", alias=1, timestamp=2, datatype=codec.BOOLEAN, value=False),
        codec.encode_metric(name="supply_setpoint", alias=300, timestamp=1_764_000_000_123, datatype=codec.DOUBLE,
                            value=-12.25, properties=props, is_historical=True),
        codec.encode_metric(name="nothing", alias=4, datatype=codec.DOUBLE, value=None),
        codec.encode_metric(name="f", datatype=codec.FLOAT, value=1.5),
        codec.encode_metric(name="s", datatype=codec.STRING, value="grüß"),
        codec.encode_metric(name="i", datatype=codec.INT32, value=-7),
    ]
    p = sparkplug_pb2.Payload()
    p.ParseFromString(codec.encode_payload(1_764_000_000_000, metrics, 255))
    assert (p.timestamp, p.seq, len(p.metrics)) == (1_764_000_000_000, 255, 7)
    bd, rebirth, sp, null, f, s, i = p.metrics
    assert (bd.name, bd.datatype, metric_value(bd)) == ("bdSeq", codec.UINT64, 2**40 + 3)
    assert (rebirth.alias, metric_value(rebirth), rebirth.WhichOneof("value")) == (1, False, "boolean_value")
    assert (sp.alias, sp.timestamp, sp.is_historical, metric_value(sp)) == (300, 1_764_000_000_123, True, -12.25)
    assert property_value(sp, "engUnit") == "degC"
    assert property_value(sp, "Quality") == (-5) & 0xFFFFFFFF  # Int32 travels as its two's complement
    assert property_value(sp, "engHigh") == 85.0
    assert property_value(sp, "gone") is None
    assert null.is_null and null.WhichOneof("value") is None
    assert (metric_value(f), metric_value(s), metric_value(i)) == (1.5, "grüß", (-7) & 0xFFFFFFFF)


def test_protobuf_encoding_decodes_with_heatrec(sparkplug_pb2: ModuleType) -> None:
    """What a host sends (any value kind, properties, fields heatrec ignores) decodes to the same values."""
    p = sparkplug_pb2.Payload(timestamp=99, seq=7, uuid="u-1", body=b"\x00\x01")
    m = p.metrics.add(name="a", alias=2**33, timestamp=5, datatype=codec.DOUBLE, double_value=math.pi)
    m.properties.keys.extend(["Quality", "engUnit"])
    m.properties.values.add(type=codec.INT32, int_value=192)
    m.properties.values.add(type=codec.STRING, string_value="kW")
    p.metrics.add(name="b", datatype=codec.INT64, long_value=(-3) & 0xFFFFFFFFFFFFFFFF, is_historical=True)
    p.metrics.add(name="c", datatype=codec.BOOLEAN, boolean_value=True)
    p.metrics.add(name="d", datatype=codec.FLOAT, float_value=0.5)
    p.metrics.add(name="e", datatype=codec.STRING, string_value="x", is_transient=True)
    p.metrics.add(name="f", datatype=16, is_null=True).metadata.content_type = "ignored"
    ds = p.metrics.add(name="g", datatype=16).dataset_value
    ds.num_of_columns = 1
    ds.columns.append("col")
    got = codec.decode_payload(p.SerializeToString())
    assert (got.timestamp, got.seq, [x.name for x in got.metrics]) == (99, 7, list("abcdefg"))
    a, b, c, d, e, f, g = got.metrics
    assert (a.alias, a.timestamp, a.datatype, a.value, a.value_field) == (2**33, 5, codec.DOUBLE, math.pi, 13)
    assert a.properties["Quality"].value == 192 and a.properties["engUnit"].value == "kW"
    assert (b.value, b.is_historical) == (-3, True)
    assert (c.value, c.value_field) == (True, 14)
    assert (d.value, e.value, e.is_transient) == (0.5, "x", True)
    assert f.is_null and f.value is None
    assert g.value_field is None  # a DataSet is not a value heatrec takes


@pytest.mark.parametrize("raw", [b"\x12\x05\x0a", b"\x08", b"\x0b", b"\x12\x03\x0a\x01\xff", b"\x09\x01",
                                 b"\x12\x02\x10\x80", b"\x00\x00", b"\x12\x01\x69"])
def test_malformed_payloads_are_decode_errors(raw: bytes) -> None:
    """Truncation, impossible wire types, bad UTF-8: DecodeError, never anything else."""
    with pytest.raises(codec.DecodeError):
        codec.decode_payload(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    """Whatever arrives, the decoder answers a payload or DecodeError."""
    try:
        codec.decode_payload(raw)
    except codec.DecodeError:
        pass


class _Link:
    """Captures what the node publishes (the hot path without a broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> Any:
        self.sent.append((topic, payload))
        return None


def _device(n: int) -> ModbusDevice:
    return ModbusDevice.model_validate({"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:1", "points": [
        {"id": f"p{i}", "address": i, "unit": "degC"} for i in range(n)]})


def test_ddata_fast_path_decodes_with_protobuf_and_seq_wraps(sparkplug_pb2: ModuleType) -> None:
    """DDATA as the node writes it: aliases, source timestamps, quality properties, null, historical; seq wraps."""
    cfg = SparkplugConfig(url="mqtt://127.0.0.1:1", group_id="g", edge_node_id="n")
    node = EdgeNode(cfg, [_device(3)], SampleBus(), device_states=lambda: {"hp1": "connected"})
    node._born_devices.add("hp1")
    node._seq = 250
    link = _Link()
    t0 = datetime(2026, 12, 1, 12, 0, 0, 123000, tzinfo=UTC)
    samples = [Sample("hp1.p0", 1.5, Quality.GOOD, t0, t0), Sample("hp1.p1", None, Quality.BAD, t0, t0),
               Sample("hp1.p2", 7.0, Quality.STALE, t0 + timedelta(seconds=1), t0)]
    for i in range(10):
        node._publish_data(link, samples, historical=i == 9)  # type: ignore[arg-type]
    seqs = []
    for topic, raw in link.sent:
        assert topic == "spBv1.0/g/DDATA/n/hp1"
        p = sparkplug_pb2.Payload()
        p.ParseFromString(raw)
        seqs.append(p.seq)
    assert seqs == [251, 252, 253, 254, 255, 0, 1, 2, 3, 4]
    aliases = node.aliases
    a, b, c = p.metrics
    assert [m.alias for m in p.metrics] == [aliases["hp1.p0"], aliases["hp1.p1"], aliases["hp1.p2"]]
    assert all(not m.name for m in p.metrics)  # DATA carries aliases only
    assert (a.timestamp, metric_value(a), a.is_historical) == (int(t0.timestamp() * 1000), 1.5, True)
    assert property_value(a, "Quality") == 192
    assert b.is_null and property_value(b, "Quality") == 0
    assert (c.timestamp, metric_value(c), property_value(c, "Quality")) == (int(t0.timestamp() * 1000) + 1000, 7.0,
                                                                            500)
