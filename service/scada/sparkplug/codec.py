"""The Sparkplug B payload on the protobuf wire, written by hand: only the fields Sparkplug 3.0 uses.

Payload (timestamp 1, metrics 2, seq 3), Metric (name 1, alias 2, timestamp 3, datatype 4, is_historical 5,
is_null 7, properties 9, value oneof 10-16), PropertySet (keys 1, values 2) and PropertyValue (type 1,
is_null 2, value oneof 3-8). Unknown fields are skipped on decoding, as protobuf does; DataSet, Template
and extensions are never produced and are skipped when received. Hand-written because the edge node's
hot path (a DDATA by exception per batch of samples) is then a few byte joins per metric, with the parts
that never change (a metric's alias) encoded once (bench/bench_sparkplug.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BOOLEAN", "DOUBLE", "FLOAT", "INT32", "INT64", "STRING", "UINT32", "UINT64", "DecodeError", "Metric",
           "Payload", "PropertyValue", "decode_payload", "encode_metric", "encode_payload", "varint"]

# Sparkplug B data types (spec 3.0, "DataType"): the ones heatrec sends or accepts.
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT = 9, 10, 11, 12, 13, 14
_INTS = {INT8, INT16, INT32, UINT8, UINT16, UINT32}
_LONGS = {INT64, UINT64, DATETIME}
_STRINGS = {STRING, TEXT}

_D = struct.Struct("<d")
_F = struct.Struct("<f")


class DecodeError(ValueError):
    """Bytes that are not a Sparkplug B payload (truncated, a wire type the field cannot have, bad UTF-8)."""


def varint(n: int) -> bytes:
    """The protobuf base-128 varint of a non-negative integer (negatives as 64-bit two's complement)."""
    if n < 0:
        n += 1 << 64
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + varint(len(body)) + body


@dataclass(slots=True)
class PropertyValue:
    """One property of a metric: its Sparkplug type and value (None with is_null)."""

    type: int
    value: Any = None
    is_null: bool = False


@dataclass(slots=True)
class Metric:
    """A decoded metric; `value_field` is the protobuf field the value came in (10 int … 16 bytes), or None."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_historical: bool = False
    is_transient: bool = False
    is_null: bool = False
    properties: dict[str, PropertyValue] = field(default_factory=dict)
    value: Any = None
    value_field: int | None = None


@dataclass(slots=True)
class Payload:
    """A decoded payload."""

    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)


# --------------------------------------------------------------------------- encoding

def _value_fields(datatype: int, value: Any, base: int) -> bytes:
    """The oneof value of a metric (base 10) or property value (base 3): int, long, float, double, bool, string."""
    if datatype in _INTS:
        return bytes((base << 3,)) + varint(int(value) & 0xFFFFFFFF)
    if datatype in _LONGS:
        return bytes(((base + 1) << 3,)) + varint(int(value) & 0xFFFFFFFFFFFFFFFF)
    if datatype == FLOAT:
        return bytes(((base + 2) << 3 | 5,)) + _F.pack(value)
    if datatype == DOUBLE:
        return bytes(((base + 3) << 3 | 1,)) + _D.pack(value)
    if datatype == BOOLEAN:
        return bytes(((base + 4) << 3,)) + (b"\x01" if value else b"\x00")
    if datatype in _STRINGS:
        return _len((base + 5) << 3 | 2, str(value).encode())
    raise ValueError(f"data type {datatype} is not one heatrec encodes")


def encode_properties(props: dict[str, PropertyValue]) -> bytes:
    """A PropertySet's body: every key, then every value, in the same order."""
    keys = b"".join(_len(0x0A, k.encode()) for k in props)
    values = []
    for pv in props.values():
        body = b"\x08" + varint(pv.type)
        body += b"\x10\x01" if pv.is_null or pv.value is None else _value_fields(pv.type, pv.value, 3)
        values.append(_len(0x12, body))
    return keys + b"".join(values)


def encode_metric(*, name: str | None = None, alias: int | None = None, timestamp: int | None = None,
                  datatype: int | None = None, value: Any = None, is_historical: bool = False,
                  properties: dict[str, PropertyValue] | None = None) -> bytes:
    """One metric's body (the general path: births, deaths, command answers); None as value is is_null."""
    out = bytearray()
    if name is not None:
        out += _len(0x0A, name.encode())
    if alias is not None:
        out += b"\x10" + varint(alias)
    if timestamp is not None:
        out += b"\x18" + varint(timestamp)
    if datatype is not None:
        out += b"\x20" + varint(datatype)
    if is_historical:
        out += b"\x28\x01"
    null = value is None
    if null:
        out += b"\x38\x01"
    if properties:
        out += _len(0x4A, encode_properties(properties))
    if not null:
        if datatype is None:
            raise ValueError("a metric with a value needs its datatype")
        out += _value_fields(datatype, value, 10)
    return bytes(out)


def encode_payload(timestamp: int, metric_bodies: list[bytes], seq: int | None) -> bytes:
    """A payload from metric bodies (encode_metric); NDEATH has no seq."""
    parts = [b"\x08", varint(timestamp)]
    for body in metric_bodies:
        parts += (b"\x12", varint(len(body)), body)
    if seq is not None:
        parts += (b"\x18", varint(seq))
    return b"".join(parts)


# --------------------------------------------------------------------------- decoding

def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field in buf[pos:end]: int for varints, bytes otherwise."""
    out: list[tuple[int, int, Any]] = []
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise DecodeError("field number 0")
        if wt == 0:
            value, pos = _read_varint(buf, pos, end)
            out.append((num, wt, value))
        elif wt == 1:
            if pos + 8 > end:
                raise DecodeError("truncated 64-bit field")
            out.append((num, wt, buf[pos:pos + 8]))
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise DecodeError("truncated 32-bit field")
            out.append((num, wt, buf[pos:pos + 4]))
            pos += 4
        elif wt == 2:
            n, pos = _read_varint(buf, pos, end)
            if pos + n > end:
                raise DecodeError("truncated length-delimited field")
            out.append((num, wt, buf[pos:pos + n]))
            pos += n
        else:  # groups (3, 4) are not in Sparkplug's schema; 6 and 7 do not exist
            raise DecodeError(f"wire type {wt} of field {num}")
    return out


def _expect(num: int, wt: int, want: int) -> None:
    if wt != want:
        raise DecodeError(f"field {num} has wire type {wt}, expected {want}")


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as err:
        raise DecodeError(f"string is not UTF-8: {err}") from None


def _signed(value: int, datatype: int | None) -> int:
    """Sparkplug carries signed integers as their two's complement in the unsigned fields."""
    if datatype in (INT8, INT16, INT32) and value >= 1 << 31:
        return value - (1 << 32)
    if datatype == INT64 and value >= 1 << 63:
        return value - (1 << 64)
    return value


def _oneof(num: int, wt: int, raw: Any, base: int, datatype: int | None) -> Any:
    """The value of oneof field `num` (base: 10 for a metric, 3 for a property value)."""
    k = num - base
    if k in (0, 1):
        _expect(num, wt, 0)
        return _signed(raw, datatype)
    if k == 2:
        _expect(num, wt, 5)
        return _F.unpack(raw)[0]
    if k == 3:
        _expect(num, wt, 1)
        return _D.unpack(raw)[0]
    if k == 4:
        _expect(num, wt, 0)
        return bool(raw)
    if k == 5:
        _expect(num, wt, 2)
        return _text(raw)
    _expect(num, wt, 2)
    return bytes(raw)


def _property_value(buf: bytes) -> PropertyValue:
    pv = PropertyValue(0)
    for num, wt, raw in _fields(buf, 0, len(buf)):
        if num == 1:
            _expect(num, wt, 0)
            pv.type = raw
        elif num == 2:
            _expect(num, wt, 0)
            pv.is_null = bool(raw)
        elif 3 <= num <= 8:
            pv.value = _oneof(num, wt, raw, 3, pv.type)
    return pv


def _property_set(buf: bytes) -> dict[str, PropertyValue]:
    keys: list[str] = []
    values: list[PropertyValue] = []
    for num, wt, raw in _fields(buf, 0, len(buf)):
        if num == 1:
            _expect(num, wt, 2)
            keys.append(_text(raw))
        elif num == 2:
            _expect(num, wt, 2)
            values.append(_property_value(raw))
    if len(keys) != len(values):
        raise DecodeError(f"property set with {len(keys)} keys and {len(values)} values")
    return dict(zip(keys, values, strict=True))


def _metric(buf: bytes) -> Metric:
    m = Metric()
    pending: tuple[int, int, Any] | None = None  # the value, decoded once the datatype is known
    for num, wt, raw in _fields(buf, 0, len(buf)):
        if num == 1:
            _expect(num, wt, 2)
            m.name = _text(raw)
        elif num in (2, 3, 4, 5, 6, 7):
            _expect(num, wt, 0)
            if num == 2:
                m.alias = raw
            elif num == 3:
                m.timestamp = raw
            elif num == 4:
                m.datatype = raw
            elif num == 5:
                m.is_historical = bool(raw)
            elif num == 6:
                m.is_transient = bool(raw)
            else:
                m.is_null = bool(raw)
        elif num == 9:
            _expect(num, wt, 2)
            m.properties = _property_set(raw)
        elif 10 <= num <= 16:
            pending = (num, wt, raw)
        # 8 metadata, 17 dataset, 18 template, 19 extension: not used by heatrec, skipped
    if pending is not None:
        m.value_field = pending[0]
        m.value = _oneof(*pending, 10, m.datatype)
    return m


def decode_payload(data: bytes | bytearray | memoryview) -> Payload:
    """Decode a Sparkplug B payload; DecodeError for anything that is not one."""
    buf = bytes(data)
    p = Payload()
    for num, wt, raw in _fields(buf, 0, len(buf)):
        if num == 1:
            _expect(num, wt, 0)
            p.timestamp = raw
        elif num == 2:
            _expect(num, wt, 2)
            p.metrics.append(_metric(raw))
        elif num == 3:
            _expect(num, wt, 0)
            p.seq = raw
    return p
