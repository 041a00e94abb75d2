"""Pure conversions between Modbus registers (or bits) and engineering values for every ModbusPoint type.

Engineering value = raw * scale + offset. Registers are the 16-bit words pymodbus hands over, most
significant byte first on the wire; `byte_order` swaps the two bytes inside each register and
`word_order` says which register holds the least significant word ("little" = low word first, the
common "CDAB" layout of many PLCs).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.config import ModbusPoint
from drivers.errors import CodecError

# struct formats (big-endian, the canonical order before byte/word swapping)
_FORMATS: dict[str, str] = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I",
                            "int64": ">q", "uint64": ">Q", "float32": ">f", "float64": ">d"}
_INT_BITS: dict[str, tuple[int, bool]] = {"int16": (16, True), "uint16": (16, False), "int32": (32, True),
                                          "uint32": (32, False), "int64": (64, True), "uint64": (64, False)}
_FLOAT32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]

NUMERIC_TYPES = frozenset(_FORMATS) | {"bool"}


def int_range(type_: str) -> tuple[int, int]:
    """Smallest and largest raw value an integer type holds."""
    bits, signed = _INT_BITS[type_]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def registers_to_bytes(registers: Sequence[int], byte_order: str = "big", word_order: str = "big") -> bytes:
    """Undo the device's byte and word order: the result is big-endian, most significant byte first."""
    words = []
    for r in registers:
        if not 0 <= r <= 0xFFFF:
            raise CodecError(f"register value {r} is not a 16-bit word")
        word = r.to_bytes(2, "big")
        words.append(word[::-1] if byte_order == "little" else word)
    if word_order == "little":
        words.reverse()
    return b"".join(words)


def bytes_to_registers(data: bytes, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Split big-endian bytes into registers in the device's byte and word order."""
    if len(data) % 2:
        raise CodecError("an odd number of bytes does not fill whole registers")
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    return [int.from_bytes(w[::-1] if byte_order == "little" else w, "big") for w in words]


def _identity(point: ModbusPoint) -> bool:
    # Unscaled integers stay Python ints so 64-bit counters keep every digit.
    return point.scale == 1.0 and point.offset == 0.0


def decode(point: ModbusPoint, registers: Sequence[int]) -> float | str:
    """Registers of one point -> engineering value (a str for type 'string').

    Raises CodecError on a wrong register count, a word out of range or a non-finite float.
    """
    if point.function in ("coil", "discrete"):
        raise CodecError(f"point '{point.id}' holds a bit: use decode_bit")
    if len(registers) != point.register_count:
        raise CodecError(f"point '{point.id}' needs {point.register_count} registers, got {len(registers)}")
    if point.type == "bool":
        return 1.0 if registers_to_bytes(registers) != b"\x00\x00" else 0.0
    if point.type == "string":
        # Only the byte order applies to text: the characters run in register order.
        text = registers_to_bytes(registers, point.byte_order, "big")
        return text.rstrip(b"\x00").decode("utf-8", errors="replace").rstrip()
    data = registers_to_bytes(registers, point.byte_order, point.word_order)
    raw = struct.unpack(_FORMATS[point.type], data)[0]
    if isinstance(raw, float) and not math.isfinite(raw):
        raise CodecError(f"point '{point.id}' holds {raw}, not a finite number")
    if _identity(point):
        return float(raw) if isinstance(raw, float) else int(raw)
    return float(raw * point.scale + point.offset)


def decode_bit(bit: bool) -> float:
    """A coil or discrete input -> 1.0 or 0.0."""
    return 1.0 if bit else 0.0


def encode(point: ModbusPoint, value: float | str) -> list[int]:
    """Engineering value -> registers: inverts scale and offset, rounds integers to the nearest step.

    Raises CodecError when the raw value does not fit the type (the device must never see it).
    """
    if point.function in ("coil", "discrete"):
        raise CodecError(f"point '{point.id}' holds a bit: use encode_bit")
    if point.type == "string":
        if not isinstance(value, str):
            raise CodecError(f"point '{point.id}' is a string: cannot write {value!r}")
        data = value.encode("utf-8")
        if len(data) > 2 * point.length:
            raise CodecError(f"'{value}' needs {len(data)} bytes, "
                             f"point '{point.id}' holds {2 * point.length}")
        return bytes_to_registers(data.ljust(2 * point.length, b"\x00"), point.byte_order, "big")
    if isinstance(value, str):
        raise CodecError(f"point '{point.id}' is numeric: cannot write {value!r}")
    if not math.isfinite(value):
        raise CodecError(f"point '{point.id}': {value} is not a finite number")
    if point.type == "bool":
        if value not in (0, 1):
            raise CodecError(f"point '{point.id}' is a bool: write 0 or 1, not {value}")
        return [1 if value else 0]
    raw: float | int = value if _identity(point) else (value - point.offset) / point.scale
    if point.type in _INT_BITS:
        if not math.isfinite(raw):
            raise CodecError(f"point '{point.id}': {value} gives a non-finite raw value")
        raw = round(raw)
        low, high = int_range(point.type)
        if not low <= raw <= high:
            raise CodecError(f"point '{point.id}': {value} is raw {raw}, "
                             f"outside {point.type} [{low}, {high}]")
    elif point.type == "float32" and not abs(raw) <= _FLOAT32_MAX:
        raise CodecError(f"point '{point.id}': {value} is raw {raw}, outside float32")
    elif not math.isfinite(raw):
        raise CodecError(f"point '{point.id}': {value} gives a non-finite raw value")
    data = struct.pack(_FORMATS[point.type], raw)
    return bytes_to_registers(data, point.byte_order, point.word_order)


def encode_bit(point: ModbusPoint, value: float) -> bool:
    """Engineering value -> coil state; only 0 and 1 are accepted."""
    if value not in (0, 1):
        raise CodecError(f"point '{point.id}' is a bit: write 0 or 1, not {value}")
    return bool(value)


def readback_tolerance(point: ModbusPoint, value: float) -> float:
    """How far a read-back value may differ from the written one and still count as equal."""
    if point.type == "bool" or point.function in ("coil", "discrete"):
        return 0.5
    if point.type in _INT_BITS:
        return abs(point.scale) / 2  # half a step: the read-back is the same raw integer
    rel = 2.0 ** -23 if point.type == "float32" else 2.0 ** -52
    return 4 * rel * max(abs(value), abs(point.scale))
