"""Durable store-and-forward spool: append-only segment files of framed, checksummed sample batches.

Layout: `<spool_dir>/seg-<12-digit sequence>.spool`, oldest first. Each record is
`u32 payload length | u32 crc32(payload) | payload`, one record per batch; a payload is a
point-id table followed by fixed-size sample entries. The last segment is the active one (appended
to); all others are sealed and only ever read and deleted. A torn tail left by a crash fails its
length or CRC check and is cut off at the next start, so what was fsync'd is exactly what replays.

When the spool would exceed `max_bytes`, the oldest sealed segment is deleted: its samples are
counted in `SpoolStats.dropped_samples` and logged once per overflow episode. Old data goes first
because the newest readings are the ones control and alarms care about, and because the database
outage that filled the spool has most likely made the oldest data least recoverable by other means.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.config import DatabaseConfig
from service.model import Quality, Sample

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")          # payload length, crc32
_HEAD = struct.Struct("<II")           # number of point ids, number of samples
_ENTRY = struct.Struct("<qdIB")        # source time µs since epoch, value, point index, quality (+0x80: no value)
_NO_VALUE = 0x80
_NAME = re.compile(r"^seg-(\d{12})\.spool$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
MAX_RECORD = 256 * 1024 * 1024         # a larger length can only be a corrupt frame


def spool_path(spool_dir: str | Path, db: DatabaseConfig) -> Path:
    """The spool directory for one database: a spool is only ever replayed into the database it was for."""
    # Every server of `hosts` in the name (one host: host-port-name, as always, so existing spools are found).
    servers = "-".join(f"{h}-{p}" for h, p in db.addresses)
    return Path(spool_dir) / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{servers}-{db.name}")


def encode_batch(batch: list[Sample]) -> bytes:
    """One record payload for a batch of samples."""
    index: dict[str, int] = {}
    entries = bytearray(_ENTRY.size * len(batch))
    pack, size, off = _ENTRY.pack_into, _ENTRY.size, 0
    for s in batch:
        i = index.setdefault(s.point, len(index))
        v = s.value
        q = int(s.quality)
        if v is None:
            v, q = math.nan, q | _NO_VALUE
        pack(entries, off, (s.source_time - _EPOCH) // _US, v, i, q)
        off += size
    names = bytearray()
    for name in index:
        raw = name.encode()
        names += struct.pack("<H", len(raw)) + raw
    return _HEAD.pack(len(index), len(batch)) + bytes(names) + bytes(entries)


def decode_batch(payload: bytes, receive_time: datetime | None = None) -> list[Sample]:
    """The samples of one record payload (receive time is not stored: it becomes `receive_time` or now)."""
    n_names, n = _HEAD.unpack_from(payload, 0)
    off = _HEAD.size
    names: list[str] = []
    for _ in range(n_names):
        (ln,) = struct.unpack_from("<H", payload, off)
        names.append(payload[off + 2:off + 2 + ln].decode())
        off += 2 + ln
    rt = receive_time or datetime.now(UTC)
    out = []
    for us, v, i, q in _ENTRY.iter_unpack(payload[off:off + n * _ENTRY.size]):
        value: float | None = v
        if q & _NO_VALUE:
            value, q = None, q & ~_NO_VALUE
        out.append(Sample(names[i], value, Quality(q), _EPOCH + us * _US, rt))
    return out


@dataclass
class SpoolStats:
    """Spool counters exposed as metrics and in health."""

    bytes: int = 0
    segments: int = 0
    samples: int = 0                  # samples currently held
    spooled_samples: int = 0          # appended since start
    replayed_samples: int = 0         # removed after being committed to the database
    dropped_samples: int = 0          # lost to the full-spool policy
    dropped_segments: int = 0
    corrupt_records: int = 0          # torn or damaged records skipped (only a crash mid-append makes them)
    write_errors: int = 0             # appends the disk refused (full, read-only); the writer then holds the batch


@dataclass
class _Segment:
    seq: int
    path: Path
    bytes: int = 0
    samples: int = 0
    replayed_offset: int = 0          # bytes of this segment already committed by replay (in memory only)


class Spool:
    """Bounded, durable FIFO of sample batches on local disk; one writer and one reader task in one loop."""

    def __init__(self, directory: Path | str, *, max_bytes: int, segment_bytes: int) -> None:
        self.dir = Path(directory)
        # Several segments must fit in the bound, or dropping "the oldest" could never free space.
        self.max_bytes, self.segment_bytes = max_bytes, min(segment_bytes, max(1024, max_bytes // 4))
        self.stats = SpoolStats()
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock = asyncio.Lock()
        self._overflowing = False
        self.changed = asyncio.Event()    # set on every append, for the replayer

    def open(self) -> None:
        """Scan existing segments (validating the last one's tail) and open a fresh active segment."""
        self.dir.mkdir(parents=True, exist_ok=True)
        found = sorted((int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name)))
        for seq, path in found:
            seg = _Segment(seq, path)
            valid = 0
            for end, payload in self._frames(path):
                valid = end
                seg.samples += _HEAD.unpack_from(payload, 0)[1]
            size = path.stat().st_size
            if valid < size:
                # A crash mid-append leaves a torn tail; nothing after it was ever acknowledged.
                self.stats.corrupt_records += 1
                log.warning("spool segment %s: cutting %d bytes of torn tail", path.name, size - valid)
                with open(path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            seg.bytes = valid
            if valid == 0:
                path.unlink()
                continue
            self._segments.append(seg)
        next_seq = (found[-1][0] + 1) if found else 1
        self._start_segment(next_seq)
        self._recount()
        if self.stats.samples:
            log.info("spool %s holds %d samples from before; they will be replayed", self.dir, self.stats.samples)

    def close(self) -> None:
        """Close the active segment (it is already durable); remove it if empty."""
        if self._fd is not None:
            os.fsync(self._fd)  # an append cancelled at shutdown may have written without its fsync
            os.close(self._fd)
            self._fd = None
            active = self._segments[-1]
            if active.bytes == 0:
                active.path.unlink(missing_ok=True)
                self._segments.pop()

    def _start_segment(self, seq: int) -> None:
        path = self.dir / f"seg-{seq:012d}.spool"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._segments.append(_Segment(seq, path))
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        # A new or deleted file name is durable only once its directory is synced.
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _recount(self) -> None:
        st = self.stats
        st.bytes = sum(s.bytes for s in self._segments)
        st.samples = sum(s.samples for s in self._segments)
        st.segments = sum(1 for s in self._segments if s.bytes)

    async def append(self, batch: list[Sample]) -> None:
        """Append one batch as one record and fsync it; when this returns the batch survives a crash."""
        if not batch:
            return
        payload = encode_batch(batch)
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        async with self._lock:
            assert self._fd is not None, "spool is not open"
            active = self._segments[-1]
            if active.bytes and active.bytes + len(frame) > self.segment_bytes:
                self._rotate()
                active = self._segments[-1]
            os.write(self._fd, frame)
            active.bytes += len(frame)
            active.samples += len(batch)
            # The fsync is the group commit: one per batch, off the event loop so live data keeps moving.
            await asyncio.to_thread(os.fsync, self._fd)
            self.stats.spooled_samples += len(batch)  # counted once durable: a crash before loses only these
            self._enforce_bound()
            self._recount()
        self.changed.set()

    def _rotate(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._start_segment(self._segments[-1].seq + 1)

    async def seal_active(self) -> bool:
        """Seal the active segment if it holds data, so the replayer may read it; True if it did."""
        async with self._lock:
            if self._fd is None or self._segments[-1].bytes == 0:
                return False
            self._rotate()
            return True

    def _enforce_bound(self) -> None:
        total = sum(s.bytes for s in self._segments)
        while total > self.max_bytes and len(self._segments) > 1:
            victim = self._segments.pop(0)
            total -= victim.bytes
            lost = victim.samples - self._replayed_samples_of(victim)
            victim.path.unlink(missing_ok=True)
            self.stats.dropped_samples += lost
            self.stats.dropped_segments += 1
            if not self._overflowing:
                log.error("spool %s is full (%d bytes max): dropping the oldest segments; %d samples lost so far",
                          self.dir, self.max_bytes, self.stats.dropped_samples)
                self._overflowing = True
        if total <= self.max_bytes // 2:
            self._overflowing = False

    def _replayed_samples_of(self, seg: _Segment) -> int:
        # Whole records already committed by an interrupted replay are not lost when the segment goes.
        n = 0
        for end, payload in self._frames(seg.path, limit=seg.replayed_offset):
            if end > seg.replayed_offset:
                break
            n += _HEAD.unpack_from(payload, 0)[1]
        return n

    def sealed(self) -> list[int]:
        """Sequence numbers of the sealed segments, oldest first."""
        return [s.seq for s in self._segments[:-1]] if self._fd is not None else [s.seq for s in self._segments]

    def read_segment(self, seq: int) -> Iterator[tuple[int, list[Sample]]]:
        """(end offset, samples) of every record not yet replayed in a sealed segment, in order."""
        seg = self._find(seq)
        if seg is None:
            return
        for end, payload in self._frames(seg.path, start=seg.replayed_offset):
            yield end, decode_batch(payload)

    def mark_replayed(self, seq: int, end: int, samples: int) -> None:
        """Record that a sealed segment's records up to `end` are committed."""
        seg = self._find(seq)
        if seg is not None:
            seg.replayed_offset = end
            self.stats.replayed_samples += samples

    def remove(self, seq: int) -> None:
        """Delete a sealed segment whose every record is committed."""
        seg = self._find(seq)
        if seg is None:
            return
        self._segments.remove(seg)
        seg.path.unlink(missing_ok=True)
        self._recount()
        if self.stats.bytes <= self.max_bytes // 2:
            self._overflowing = False

    def _find(self, seq: int) -> _Segment | None:
        return next((s for s in self._segments if s.seq == seq), None)

    def _frames(self, path: Path, start: int = 0, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(end offset, payload) of each intact record; stops at the first torn or damaged one."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        off = start
        stop = len(data) if limit is None else min(limit, len(data))
        while off + _FRAME.size <= stop:
            length, crc = _FRAME.unpack_from(data, off)
            body = off + _FRAME.size
            if length > MAX_RECORD or body + length > len(data):
                return
            payload = data[body:body + length]
            if zlib.crc32(payload) != crc:
                return
            off = body + length
            yield off, payload
