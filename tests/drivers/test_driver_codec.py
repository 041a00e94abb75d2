"""Modbus codec: known register layouts and round trips for every type, byte and word order."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import codec
from drivers.errors import CodecError
from service.config import ModbusPoint

INT_TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64"]
ORDERS = st.sampled_from(["big", "little"])


def point(type_: str, **kw: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"id": "p", "address": 0, "type": type_, **kw})


@pytest.mark.parametrize(("byte_order", "word_order", "registers"), [
    ("big", "big", [0x41AC, 0x0000]),  # ABCD
    ("big", "little", [0x0000, 0x41AC]),  # CDAB
    ("little", "big", [0xAC41, 0x0000]),  # BADC
    ("little", "little", [0x0000, 0xAC41]),  # DCBA
])
def test_float32_in_every_order(byte_order: str, word_order: str, registers: list[int]) -> None:
    p = point("float32", byte_order=byte_order, word_order=word_order)
    assert codec.decode(p, registers) == 21.5
    assert codec.encode(p, 21.5) == registers


def test_scaled_signed_integers() -> None:
    p = point("int16", scale=0.1)
    assert codec.decode(p, [0xFFF6]) == pytest.approx(-1.0)
    assert codec.encode(p, -1.0) == [0xFFF6]
    assert codec.encode(p, 55.04) == [550]  # rounds to the nearest step
    offset = point("uint16", scale=0.01, offset=-40)
    assert codec.decode(offset, [6500]) == pytest.approx(25.0)
    assert codec.encode(offset, 25.0) == [6500]


def test_unscaled_64_bit_counters_keep_every_digit() -> None:
    p = point("uint64")
    assert codec.decode(p, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]) == 2**64 - 2
    assert codec.encode(p, 2**64 - 2) == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]


@pytest.mark.parametrize(("type_", "value", "scale"), [
    ("int16", 3276.8, 0.1), ("int16", -3276.9, 0.1), ("uint16", -0.6, 1.0), ("uint32", 2.0**32, 1.0),
    ("int64", 2.0**63, 1.0), ("float32", 1e39, 1.0), ("float64", math.inf, 1.0), ("int16", math.nan, 1.0),
])
def test_out_of_range_raw_values_raise(type_: str, value: float, scale: float) -> None:
    with pytest.raises(CodecError):
        codec.encode(point(type_, scale=scale), value)


def test_bits_bools_and_strings() -> None:
    assert codec.decode(point("bool"), [0x0100]) == 1.0 and codec.decode(point("bool"), [0]) == 0.0
    assert codec.encode(point("bool"), 1) == [1]
    with pytest.raises(CodecError):
        codec.encode(point("bool"), 2)
    coil = point("bool", function="coil")
    assert codec.decode_bit(True) == 1.0 and codec.encode_bit(coil, 0) is False
    with pytest.raises(CodecError):
        codec.encode_bit(coil, 0.5)
    with pytest.raises(CodecError):
        codec.decode(coil, [1])
    text = point("string", length=3)
    assert codec.decode(text, [0x4350, 0x5531, 0x0000]) == "CPU1"
    assert codec.encode(text, "CPU1") == [0x4350, 0x5531, 0x0000]
    assert codec.decode(point("string", length=1, byte_order="little"), [0x4241]) == "AB"
    with pytest.raises(CodecError):
        codec.encode(text, "too long!")


def test_wrong_shapes_and_non_finite_floats_raise() -> None:
    with pytest.raises(CodecError):
        codec.decode(point("int32"), [1])
    with pytest.raises(CodecError):
        codec.decode(point("int16"), [70000])
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    with pytest.raises(CodecError):
        codec.decode(point("float32"), nan)


def test_readback_tolerance_is_half_a_step_for_scaled_integers() -> None:
    assert codec.readback_tolerance(point("int16", scale=0.1), 55.0) == pytest.approx(0.05)
    assert codec.readback_tolerance(point("bool"), 1.0) == 0.5
    assert 0 < codec.readback_tolerance(point("float32"), 1000.0) < 1e-3


# ---------------------------------------------------------------------- round trips


@st.composite
def int_case(draw: st.DrawFn) -> tuple[ModbusPoint, int]:
    type_ = draw(st.sampled_from(INT_TYPES))
    low, high = codec.int_range(type_)
    scale = draw(st.sampled_from([1.0, 0.1, 0.01, 0.5, 2.0, 10.0, -1.0]))
    offset = draw(st.sampled_from([0.0, -40.0, 273.15]))
    if scale != 1.0 or offset != 0.0:
        # Scaled values pass through a float: keep raw within its 53-bit mantissa.
        low, high = max(low, -(2**50)), min(high, 2**50)
    p = point(type_, scale=scale, offset=offset, byte_order=draw(ORDERS), word_order=draw(ORDERS))
    return p, draw(st.integers(low, high))


@given(int_case())
def test_integers_round_trip_through_engineering_values(case: tuple[ModbusPoint, int]) -> None:
    p, raw = case
    registers = codec.bytes_to_registers(struct.pack(codec._FORMATS[p.type], raw), p.byte_order, p.word_order)
    value = codec.decode(p, registers)
    assert isinstance(value, int | float)
    assert codec.encode(p, value) == registers


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float32_round_trips_exactly(value: float, byte_order: str, word_order: str) -> None:
    p = point("float32", byte_order=byte_order, word_order=word_order)
    registers = codec.encode(p, value)
    assert len(registers) == 2 and all(0 <= r <= 0xFFFF for r in registers)
    assert codec.decode(p, registers) == value


@given(st.floats(allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float64_round_trips_exactly(value: float, byte_order: str, word_order: str) -> None:
    p = point("float64", byte_order=byte_order, word_order=word_order)
    assert codec.decode(p, codec.encode(p, value)) == value


@given(st.floats(min_value=-300, max_value=300, allow_nan=False),
       st.sampled_from([0.1, 0.01, 0.5]), st.sampled_from(["int16", "int32", "int64"]))
def test_scaled_encoding_is_within_half_a_step(value: float, scale: float, type_: str) -> None:
    p = point(type_, scale=scale)
    back = codec.decode(p, codec.encode(p, value))
    assert isinstance(back, float)
    assert abs(back - value) <= scale / 2 + 1e-9
    assert abs(back - value) <= codec.readback_tolerance(p, back) + 1e-9


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8), ORDERS)
def test_strings_round_trip(text: str, byte_order: str) -> None:
    p = point("string", length=4, byte_order=byte_order)
    assert codec.decode(p, codec.encode(p, text)) == text


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4), ORDERS, ORDERS)
def test_register_byte_conversion_is_invertible(registers: list[int], byte_order: str,
                                                word_order: str) -> None:
    data = codec.registers_to_bytes(registers, byte_order, word_order)
    assert codec.bytes_to_registers(data, byte_order, word_order) == registers
