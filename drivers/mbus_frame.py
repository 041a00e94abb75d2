"""M-Bus link layer (EN 13757-2): the single character E5, short frames, long frames, and their checks.

Only what a master needs: it builds SND_NKE, REQ_UD2 (with FCB/FCV) and the SND_UD that selects a meter by
its secondary address, and it reads one frame from a byte stream, refusing any frame whose length, checksum
or stop byte is wrong (FrameError). The application layer (drivers/mbus_records.py) decodes what is inside.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

ACK = 0xE5
SHORT_START = 0x10
LONG_START = 0x68
STOP = 0x16

# C field (master to slave)
C_SND_NKE = 0x40
C_SND_UD = 0x53
C_REQ_UD2 = 0x5B  # FCV set, FCB clear
FCB = 0x20

ADDRESS_SECONDARY = 0xFD  # the meter selected by its secondary address answers here
ADDRESS_BROADCAST = 0xFE  # every meter answers (only with one meter on the bus)
MAX_PRIMARY = 250
CI_SELECT = 0x52  # SND_UD: select by secondary address
CI_VARIABLE = 0x72  # RSP_UD: variable data structure, long header
CI_VARIABLE_NO_HEADER = 0x78
CI_VARIABLE_SHORT = 0x7A

FrameProblem = Literal["length", "checksum", "stop", "start", "address", "truncated"]


class FrameError(ValueError):
    """A frame that fails the link layer's checks; never taken as a reading."""

    def __init__(self, problem: FrameProblem, message: str) -> None:
        super().__init__(message)
        self.problem: FrameProblem = problem


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: kind, C and A fields, CI and user data (long frames), the raw bytes."""

    kind: Literal["ack", "short", "long"]
    control: int = 0
    address: int = 0
    ci: int = 0
    data: bytes = b""
    raw: bytes = b""


class ByteSource(Protocol):
    """What frames are read from: asyncio.StreamReader, or the driver's discardable buffer."""

    async def readexactly(self, n: int) -> bytes:
        """n bytes; asyncio.IncompleteReadError when the stream ends first."""


def checksum(body: bytes) -> int:
    """The arithmetic sum of C, A, CI and data, modulo 256."""
    return sum(body) & 0xFF


def short_frame(control: int, address: int) -> bytes:
    """A short frame: 10 C A CS 16."""
    return bytes((SHORT_START, control, address, checksum(bytes((control, address))), STOP))


def long_frame(control: int, address: int, ci: int, data: bytes = b"") -> bytes:
    """A long (or control) frame: 68 L L 68 C A CI data CS 16."""
    body = bytes((control, address, ci)) + data
    if len(body) > 255:
        raise ValueError(f"{len(data)} bytes of user data do not fit one frame (at most 252)")
    return bytes((LONG_START, len(body), len(body), LONG_START)) + body + bytes((checksum(body), STOP))


def snd_nke(address: int) -> bytes:
    """Link reset (initialisation) of one meter; it answers E5 and starts its telegrams from the first."""
    return short_frame(C_SND_NKE, address)


def req_ud2(address: int, fcb: bool) -> bytes:
    """Request class 2 data; toggle `fcb` to ask for the next telegram, keep it to ask for a repeat."""
    return short_frame(C_REQ_UD2 | (FCB if fcb else 0), address)


def select_secondary(secondary: str) -> bytes:
    """SND_UD selecting the meter whose secondary address matches (8 BCD digits, F or * = any digit).

    Only the identification number is given; manufacturer, version and medium are wildcards.
    """
    if len(secondary) != 8:
        raise ValueError(f"a secondary address has 8 digits, not '{secondary}'")
    digits = secondary.upper().replace("*", "F")
    if any(c not in "0123456789F" for c in digits):
        raise ValueError(f"'{secondary}' is not 8 digits (F or * for any digit)")
    ident = bytes(int(digits[i:i + 2], 16) for i in range(6, -1, -2))  # BCD, least significant byte first
    return long_frame(C_SND_UD, ADDRESS_SECONDARY, CI_SELECT, ident + b"\xff\xff\xff\xff")


def parse_frame(raw: bytes) -> Frame:
    """One complete frame from its bytes; FrameError when it is not one."""
    if not raw:
        raise FrameError("truncated", "no bytes")
    start = raw[0]
    if start == ACK:
        if len(raw) != 1:
            raise FrameError("length", f"E5 followed by {len(raw) - 1} bytes")
        return Frame("ack", raw=raw)
    if start == SHORT_START:
        if len(raw) != 5:
            raise FrameError("length" if len(raw) > 5 else "truncated", f"short frame of {len(raw)} bytes, not 5")
        if raw[4] != STOP:
            raise FrameError("stop", f"short frame ends in {raw[4]:02X}, not 16")
        if checksum(raw[1:3]) != raw[3]:
            raise FrameError("checksum", f"short frame checksum {raw[3]:02X}, expected {checksum(raw[1:3]):02X}")
        return Frame("short", raw[1], raw[2], raw=raw)
    if start == LONG_START:
        if len(raw) < 6:
            raise FrameError("truncated", f"long frame of only {len(raw)} bytes")
        length = raw[1]
        if raw[2] != length or raw[3] != LONG_START:
            raise FrameError("length", f"long frame header {raw[:4].hex(' ')}: the two L fields differ")
        if length < 3:
            raise FrameError("length", f"L field {length} is below 3 (C, A and CI)")
        if len(raw) != length + 6:
            problem: FrameProblem = "truncated" if len(raw) < length + 6 else "length"
            raise FrameError(problem, f"long frame of {len(raw)} bytes, L field says {length + 6}")
        body = raw[4:4 + length]
        if raw[-1] != STOP:
            raise FrameError("stop", f"long frame ends in {raw[-1]:02X}, not 16")
        if checksum(body) != raw[-2]:
            raise FrameError("checksum", f"long frame checksum {raw[-2]:02X}, expected {checksum(body):02X}")
        return Frame("long", body[0], body[1], body[2], bytes(body[3:]), raw=raw)
    raise FrameError("start", f"no frame starts with {start:02X}")


async def read_frame(reader: ByteSource) -> Frame:
    """Read exactly one frame from the stream (bound it with a timeout); FrameError for a bad one.

    A stream that ends mid-frame raises FrameError("truncated"); the caller decides whether the link is lost.
    """
    try:
        first = await reader.readexactly(1)
        if first[0] == ACK:
            return Frame("ack", raw=first)
        if first[0] == SHORT_START:
            return parse_frame(first + await reader.readexactly(4))
        if first[0] == LONG_START:
            head = first + await reader.readexactly(3)
            if head[1] != head[2] or head[3] != LONG_START:
                raise FrameError("length", f"long frame header {head.hex(' ')}: the two L fields differ")
            return parse_frame(head + await reader.readexactly(head[1] + 2))
    except asyncio.IncompleteReadError as err:
        raise FrameError("truncated", f"the stream ended {len(err.partial)} bytes into a frame") from err
    raise FrameError("start", f"no frame starts with {first[0]:02X}")
