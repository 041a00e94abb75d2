"""M-Bus application layer (EN 13757-3): the variable data structure of a heat meter's RSP_UD.

The subset heat meters use for billing: the fixed header (identification number, manufacturer, version,
medium, access number, status), data records with DIF/DIFE (function, storage number, tariff, subunit)
and VIF/VIFE (energy in Wh and J with their decades, volume, power, volume flow, flow and return temperature,
temperature difference, on and operating time, date and time of types F and G, fabrication number, error
flags, versions), and the manufacturer-specific tail with its "more records follow" mark (DIF 1F).

Written here rather than taken from pyMeterBus: that package decodes only the variable data structure with
no VIF extension tables, builds no frames and has no transport, types or maintained releases; this subset
is small, and owning it lets the driver address records by meaning and refuse what it does not understand.
A record it cannot interpret keeps meaning "unknown" and its raw bytes, so a probe still lists it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from drivers.mbus_frame import CI_VARIABLE, CI_VARIABLE_NO_HEADER, CI_VARIABLE_SHORT

Function = Literal["instantaneous", "maximum", "minimum", "error"]
FUNCTIONS: tuple[Function, ...] = ("instantaneous", "maximum", "minimum", "error")
Value = float | int | str | date | datetime | None

# Mediums of the fixed header (EN 13757-3 table), those a heat-recovery plant meets.
MEDIUMS = {0x00: "other", 0x02: "electricity", 0x03: "gas", 0x04: "heat (outlet)", 0x06: "warm water",
           0x07: "water", 0x08: "heat cost allocator", 0x0A: "cooling (outlet)", 0x0B: "cooling (inlet)",
           0x0C: "heat (inlet)", 0x0D: "heat/cooling", 0x16: "cold water"}
# Status byte: bits 0-1 application errors, 2 power low, 3 permanent error, 4 temporary error.
STATUS_ERROR_MASK = 0x1B


class RecordError(ValueError):
    """User data that is not a variable data structure this decoder can walk."""


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed data header of a variable data structure (CI 72)."""

    identification: str  # 8 BCD digits: the meter's identification (serial) number
    manufacturer: str  # three-letter FLAG code, e.g. KAM
    version: int
    medium: int
    access_number: int
    status: int
    signature: int

    @property
    def medium_name(self) -> str:
        """The medium in words."""
        return MEDIUMS.get(self.medium, f"medium {self.medium:02X}")

    @property
    def status_errors(self) -> int:
        """The error bits of the status byte (0: none)."""
        return self.status & STATUS_ERROR_MASK


@dataclass(frozen=True, slots=True)
class Record:
    """One data record: what it means, where it is stored, its value in `unit` (scaled by the VIF)."""

    index: int
    meaning: str
    function: Function
    storage: int
    tariff: int
    subunit: int
    unit: str
    value: Value
    dif: bytes
    vif: bytes
    data: bytes
    extensions: tuple[int, ...] = ()  # VIFE codes after the value's VIF that this decoder does not interpret

    def describe(self) -> str:
        """One line for a probe: meaning, where, value and unit."""
        where = f"storage {self.storage} tariff {self.tariff} subunit {self.subunit}"
        ext = f" vife {' '.join(f'{e:02X}' for e in self.extensions)}" if self.extensions else ""
        value = self.value.isoformat() if isinstance(self.value, date) else self.value
        return (f"#{self.index:<3} {self.meaning:<22} {self.function:<13} {where:<30} "
                f"{value!s:>16} {self.unit}{ext}")


@dataclass(frozen=True, slots=True)
class Telegram:
    """A decoded RSP_UD: header (None with CI 78), records, and whether another telegram follows."""

    header: Header | None
    records: list[Record]
    more_follows: bool = False
    manufacturer_data: bytes = b""
    error_flags: int | None = field(default=None)  # the error flags record (VIF FD 17), when present


@dataclass(frozen=True, slots=True)
class _Vif:
    meaning: str
    unit: str
    exponent: int = 0
    kind: Literal["number", "date", "datetime", "text"] = "number"


def manufacturer_code(raw: int) -> str:
    """The three letters packed 5 bits each into the manufacturer field."""
    return "".join(chr(((raw >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def _primary_vif(code: int) -> _Vif:
    """Meaning, unit and decade of a primary VIF (extension bit stripped)."""
    n3, n2 = code & 0x07, code & 0x03
    if code <= 0x07:
        return _Vif("energy", "Wh", n3 - 3)
    if code <= 0x0F:
        return _Vif("energy", "J", n3)
    if code <= 0x17:
        return _Vif("volume", "m3", n3 - 6)
    if code <= 0x1F:
        return _Vif("mass", "kg", n3 - 3)
    if code <= 0x27:
        unit = ("s", "min", "h", "d")[n2]
        return _Vif("on_time" if code <= 0x23 else "operating_time", unit)
    if code <= 0x2F:
        return _Vif("power", "W", n3 - 3)
    if code <= 0x37:
        return _Vif("power", "J/h", n3)
    if code <= 0x3F:
        return _Vif("volume_flow", "m3/h", n3 - 6)
    if code <= 0x47:
        return _Vif("volume_flow", "m3/min", n3 - 7)
    if code <= 0x4F:
        return _Vif("volume_flow", "m3/s", n3 - 9)
    if code <= 0x57:
        return _Vif("mass_flow", "kg/h", n3 - 3)
    if code <= 0x5B:
        return _Vif("flow_temperature", "degC", n2 - 3)
    if code <= 0x5F:
        return _Vif("return_temperature", "degC", n2 - 3)
    if code <= 0x63:
        return _Vif("temperature_difference", "K", n2 - 3)
    if code <= 0x67:
        return _Vif("external_temperature", "degC", n2 - 3)
    if code <= 0x6B:
        return _Vif("pressure", "bar", n2 - 3)
    if code == 0x6C:
        return _Vif("date", "", kind="date")
    if code == 0x6D:
        return _Vif("datetime", "", kind="datetime")
    if code <= 0x73 and code >= 0x70:
        return _Vif("averaging_duration", ("s", "min", "h", "d")[n2])
    if 0x74 <= code <= 0x77:
        return _Vif("actuality_duration", ("s", "min", "h", "d")[n2])
    if code == 0x78:
        return _Vif("fabrication_number", "")
    if code == 0x79:
        return _Vif("enhanced_identification", "")
    if code == 0x7A:
        return _Vif("bus_address", "")
    return _Vif("unknown", "")


_FD = {0x0A: _Vif("manufacturer", ""), 0x0B: _Vif("parameter_set", ""), 0x0C: _Vif("model_version", ""),
       0x0D: _Vif("hardware_version", ""), 0x0E: _Vif("firmware_version", ""), 0x0F: _Vif("software_version", ""),
       0x17: _Vif("error_flags", "")}


def _fb_vif(code: int) -> _Vif:
    """The first extension table (VIF FB): the large energy and volume units."""
    if code <= 0x01:
        return _Vif("energy", "Wh", code - 1 + 6)  # 10^(n-1) MWh
    if 0x08 <= code <= 0x09:
        return _Vif("energy", "J", code - 0x08 - 1 + 9)  # 10^(n-1) GJ
    if 0x10 <= code <= 0x11:
        return _Vif("volume", "m3", code - 0x10 + 2)
    if 0x28 <= code <= 0x29:
        return _Vif("power", "W", code - 0x28 - 1 + 6)  # 10^(n-1) MW
    return _Vif("unknown", "")


def _bcd(data: bytes) -> int | None:
    """A BCD number, least significant byte first; a leading F nibble is a minus sign. None if not BCD."""
    digits = data[::-1].hex().upper()
    sign = 1
    if digits.startswith("F"):
        sign, digits = -1, "0" + digits[1:]
    if not digits.isdigit():
        return None
    return sign * int(digits)


def _type_g(data: bytes) -> date | None:
    """Date, type G: day, month and a 7-bit year spread over two bytes."""
    day, month = data[0] & 0x1F, data[1] & 0x0F
    year = ((data[0] & 0xE0) >> 5) | ((data[1] & 0xF0) >> 1)
    try:
        return date(2000 + year, month, day)
    except ValueError:
        return None  # 0/0 or a date the meter marks as unset


def _type_f(data: bytes) -> datetime | None:
    """Date and time, type F: minute, hour, day, month and year in four bytes; bit 7 of the first = invalid."""
    if data[0] & 0x80:
        return None
    minute, hour = data[0] & 0x3F, data[1] & 0x1F
    day, month = data[2] & 0x1F, data[3] & 0x0F
    year = ((data[2] & 0xE0) >> 5) | ((data[3] & 0xF0) >> 1)
    try:
        return datetime(2000 + year, month, day, hour, minute)
    except ValueError:
        return None


_INT_SIZES = {0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x6: 6, 0x7: 8}
_BCD_SIZES = {0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6}


def _scaled(raw: int | float, exponent: int) -> float:
    # Divide for negative decades: 10169 / 100 is 101.69, where 10169 * 0.01 is 101.69000000000001.
    return raw / 10 ** -exponent if exponent < 0 else float(raw * 10 ** exponent)


def decode_header(data: bytes) -> Header:
    """The 12-byte fixed header of CI 72."""
    if len(data) < 12:
        raise RecordError(f"a long header needs 12 bytes, got {len(data)}")
    ident = data[3::-1].hex().upper()
    return Header(ident, manufacturer_code(int.from_bytes(data[4:6], "little")), data[6], data[7], data[8],
                  data[9], int.from_bytes(data[10:12], "little"))


def decode(ci: int, data: bytes) -> Telegram:
    """Decode the user data of an RSP_UD by its CI field; RecordError when it cannot be walked."""
    header: Header | None = None
    if ci == CI_VARIABLE:
        header = decode_header(data)
        body = data[12:]
    elif ci == CI_VARIABLE_SHORT:
        if len(data) < 4:
            raise RecordError(f"a short header needs 4 bytes, got {len(data)}")
        body = data[4:]
    elif ci == CI_VARIABLE_NO_HEADER:
        body = data
    else:
        raise RecordError(f"CI {ci:02X} is not a variable data response (72, 78 or 7A)")
    return _records(header, body)


def _records(header: Header | None, body: bytes) -> Telegram:
    records: list[Record] = []
    error_flags: int | None = None
    pos = 0
    while pos < len(body):
        dif = body[pos]
        if dif == 0x2F:  # idle filler
            pos += 1
            continue
        if dif in (0x0F, 0x1F):  # manufacturer-specific data to the end; 1F: more records follow
            return Telegram(header, records, dif == 0x1F, bytes(body[pos + 1:]), error_flags)
        if dif & 0x0F == 0x0F:
            raise RecordError(f"special function DIF {dif:02X} at byte {pos} is not supported")
        record, pos = _record(len(records), body, pos)
        if record.meaning == "error_flags" and isinstance(record.value, int) and record.storage == 0:
            error_flags = record.value
        records.append(record)
    return Telegram(header, records, False, b"", error_flags)


def _take(body: bytes, pos: int, n: int, what: str) -> bytes:
    if pos + n > len(body):
        raise RecordError(f"{what} at byte {pos} runs past the end of the user data")
    return bytes(body[pos:pos + n])


def _record(index: int, body: bytes, start: int) -> tuple[Record, int]:
    """One record from `start`; returns it and where the next begins."""
    pos = start
    dif = body[pos]
    pos += 1
    function = FUNCTIONS[(dif >> 4) & 0x03]
    storage, tariff, subunit = (dif >> 6) & 0x01, 0, 0
    ext, n = bool(dif & 0x80), 0
    while ext:
        if n >= 10:
            raise RecordError(f"more than 10 DIFEs at byte {start}")
        dife = _take(body, pos, 1, "DIFE")[0]
        pos += 1
        storage |= (dife & 0x0F) << (1 + 4 * n)
        tariff |= ((dife >> 4) & 0x03) << (2 * n)
        subunit |= ((dife >> 6) & 0x01) << n
        ext, n = bool(dife & 0x80), n + 1
    dif_bytes = bytes(body[start:pos])
    vif_start = pos
    vif = _take(body, pos, 1, "VIF")[0]
    pos += 1
    extensions: list[int] = []
    if vif in (0xFB, 0xFD):
        true_vif = _take(body, pos, 1, "VIF extension")[0]
        pos += 1
        spec = _fb_vif(true_vif & 0x7F) if vif == 0xFB else _FD.get(true_vif & 0x7F, _Vif("unknown", ""))
        more = bool(true_vif & 0x80)
    elif vif & 0x7F == 0x7C:  # plain-text VIF: the unit is spelled out, reversed
        length = _take(body, pos, 1, "plain-text VIF")[0]
        text = _take(body, pos + 1, length, "plain-text VIF")[::-1].decode("ascii", "replace")
        pos += 1 + length
        spec, more = _Vif("text_unit", text), bool(vif & 0x80)
    elif vif & 0x7F == 0x7F:
        spec, more = _Vif("manufacturer_specific", ""), bool(vif & 0x80)
    else:
        spec, more = _primary_vif(vif & 0x7F), bool(vif & 0x80)
    while more:
        if len(extensions) >= 10:
            raise RecordError(f"more than 10 VIFEs at byte {start}")
        vife = _take(body, pos, 1, "VIFE")[0]
        pos += 1
        extensions.append(vife & 0x7F)
        more = bool(vife & 0x80)
    vif_bytes = bytes(body[vif_start:pos])
    coding = dif & 0x0F
    if coding in (0x0, 0x8):
        size = 0
    elif coding == 0xD:
        lvar = _take(body, pos, 1, "variable-length data")[0]
        pos += 1
        if lvar <= 0xBF:
            size = lvar
        elif lvar <= 0xEF:
            size = lvar & 0x0F
        else:
            raise RecordError(f"variable-length data LVAR {lvar:02X} at byte {pos - 1} is not supported")
    elif coding == 0x5:
        size = 4
    else:
        size = _INT_SIZES.get(coding) or _BCD_SIZES[coding]
    data = _take(body, pos, size, "data")
    pos += size
    value = _value(coding, spec, data)
    unit = spec.unit
    record = Record(index, spec.meaning, function, storage, tariff, subunit, unit, value, dif_bytes, vif_bytes,
                    data, tuple(extensions))
    return record, pos


def _value(coding: int, spec: _Vif, data: bytes) -> Value:
    """The record's value: a scaled number, a date, a text, or None when there is none or it is invalid."""
    if not data:
        return None
    if spec.kind == "date" and len(data) == 2:
        return _type_g(data)
    if spec.kind == "datetime" and len(data) == 4:
        return _type_f(data)
    raw: int | float | None
    if coding == 0xD:
        return data[::-1].decode("ascii", "replace")
    if coding == 0x5:
        raw = struct.unpack("<f", data)[0]
        if not math.isfinite(raw):
            return None
    elif coding in _BCD_SIZES:
        raw = _bcd(data)
        if raw is None:
            return None  # not BCD: the meter marks the value as invalid (often all F)
    else:
        raw = int.from_bytes(data, "little", signed=True)
    if spec.meaning in ("fabrication_number", "error_flags", "bus_address", "enhanced_identification",
                        "manufacturer", "parameter_set", "model_version", "hardware_version", "firmware_version",
                        "software_version", "unknown", "manufacturer_specific"):
        if spec.meaning == "error_flags" and coding not in _BCD_SIZES:
            return int.from_bytes(data, "little")  # a bit field: unsigned
        return raw
    return _scaled(raw, spec.exponent)
