"""A site's outbox: its batches, numbered, durable until the centre acknowledges them as committed.

The outbox is the project's segment spool (`service.storage.spool.Spool`) in a directory of its own: one
spool record per batch, so a batch keeps its boundaries and its number across restarts and replays. The
number travels inside the record as its first entry, a header entry named `HEADER_POINT` whose value is
the sequence number and whose time is the batch's creation time: the number is made durable by the same
fsync as the samples, never by a second file that a crash could leave behind.

`outbox.json` beside the segments holds the epoch (a random number drawn when the outbox is first
created: a site whose outbox is lost starts a new epoch, and the centre starts its sequence again) and the
highest acknowledged number; it is rewritten before any segment is deleted, so the numbering never goes
back even when every segment is gone. Segments are deleted only when every batch in them is acknowledged;
the spool's bound may delete the oldest first (counted as lost, and the centre told through `base`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service.model import Quality, Sample, utcnow
from service.storage.spool import Spool, encode_batch

log = logging.getLogger(__name__)

HEADER_POINT = "\x00fleet.batch"  # never a point id (ids are device.point in lower case)
STATE_FILE = "outbox.json"


@dataclass(frozen=True)
class OutBatch:
    """One numbered batch, its body in the wire's (the spool's) record format."""

    seq: int
    created: datetime
    body: bytes
    samples: int


class Outbox:
    """Numbered batches on disk; `get` serves them to the publisher from memory or, after a restart, from disk."""

    def __init__(self, directory: Path | str, *, max_bytes: int, segment_bytes: int,
                 cache_bytes: int | None = None) -> None:
        self.dir = Path(directory)
        self.spool = Spool(self.dir, max_bytes=max_bytes, segment_bytes=segment_bytes)
        self.epoch = 0
        self.watermark = 0             # every batch up to here is committed at the centre
        self.next_seq = 1
        self.durable_seq = 0           # every batch up to here is on disk (fsync'd)
        self.lost_batches = 0          # deleted by the bound before the centre had them
        self._cache_bytes = cache_bytes if cache_bytes is not None else 2 * segment_bytes
        self._cache: OrderedDict[int, OutBatch] = OrderedDict()
        self._cached_bytes = 0
        self._ranges: dict[int, tuple[int, int]] = {}   # sealed segment -> (first, last) batch number
        self._active_first = 1                           # first batch number in the active segment
        self._counts: dict[int, int] = {}                # samples of each batch held above the watermark
        self._disk: dict[int, OutBatch] = {}             # the one sealed segment last read back
        self._disk_seg: int | None = None

    # ---- life cycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Read the state and the segments left from before; everything found is sealed and replayable."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self._read_state()
        self.epoch = int(state.get("epoch") or secrets.randbits(62) + 1)
        self.watermark = int(state.get("watermark", 0))
        self.spool.open()
        highest = self.watermark
        for seg in self.spool.sealed():
            seqs = [(b.seq, b.samples) for b in self._read(seg).values()]
            if not seqs:
                continue
            self._ranges[seg] = (seqs[0][0], seqs[-1][0])
            highest = max(highest, seqs[-1][0])
            for seq, n in seqs:
                if seq > self.watermark:
                    self._counts[seq] = n
        self.next_seq = self.durable_seq = highest
        self.next_seq += 1
        self._active_first = self.next_seq
        self._write_state()
        self._prune()
        if self._counts:
            log.info("uplink outbox %s holds %d batches (%d samples) not yet acknowledged: they will be sent again",
                     self.dir, len(self._counts), self.backlog_samples)

    def close(self) -> None:
        """Close the spool (what it holds is durable) and save the watermark."""
        self.spool.close()
        self._write_state()

    # ---- appending -------------------------------------------------------------------------------

    async def append(self, samples: list[Sample]) -> OutBatch:
        """Number a batch and make it durable; when this returns it survives a crash and may be published."""
        seq = self.next_seq
        self.next_seq += 1
        created = utcnow()
        batch = OutBatch(seq, created, encode_batch(samples), len(samples))
        self._remember(batch)
        self._counts[seq] = len(samples)
        before = set(self.spool.sealed())
        await self.spool.append([Sample(HEADER_POINT, float(seq), Quality.GOOD, created, created), *samples])
        self.durable_seq = seq
        sealed = self.spool.sealed()
        for seg in sealed:
            if seg not in before and seg not in self._ranges:
                # The spool rotated before writing this record: the previous active segment ends just before it.
                self._ranges[seg] = (self._active_first, seq - 1)
                self._active_first = seq
        self._forget_dropped(sealed)
        return batch

    def _forget_dropped(self, sealed: list[int]) -> None:
        """Segments the spool's bound deleted: their unacknowledged batches are lost."""
        present = set(sealed)
        for seg in [s for s in self._ranges if s not in present]:
            first, last = self._ranges.pop(seg)
            lost = [s for s in range(max(first, self.watermark + 1), last + 1) if s in self._counts]
            for s in lost:
                self._counts.pop(s, None)
                self._drop_cached(s)
            if lost:
                self.lost_batches += len(lost)
                log.error("uplink outbox %s is full: batches %d..%d were deleted unsent (the centre is told)",
                          self.dir, lost[0], lost[-1])

    # ---- reading ---------------------------------------------------------------------------------

    @property
    def base(self) -> int:
        """The lowest batch number above the watermark this outbox can still send (next_seq if none)."""
        return min(self._counts, default=self.next_seq)

    @property
    def backlog_batches(self) -> int:
        """Batches held that the centre has not acknowledged."""
        return len(self._counts)

    @property
    def backlog_samples(self) -> int:
        """Samples held that the centre has not acknowledged."""
        return sum(self._counts.values())

    def oldest_unacked(self) -> datetime | None:
        """Creation time of the oldest unacknowledged batch, if it is at hand without reading the disk."""
        first = self.base
        b = self._cache.get(first) or self._disk.get(first)
        return b.created if b is not None else None

    def get(self, seq: int) -> OutBatch | None:
        """Batch `seq` (durable), or None when it is acknowledged or was lost to the bound."""
        if seq not in self._counts or seq > self.durable_seq:
            return None
        b = self._cache.get(seq) or self._disk.get(seq)
        if b is not None:
            return b
        seg = next((s for s, (first, last) in self._ranges.items() if first <= seq <= last), None)
        if seg is None:
            return None
        self._disk, self._disk_seg = self._read(seg), seg
        return self._disk.get(seq)

    def _read(self, seg: int) -> dict[int, OutBatch]:
        out: dict[int, OutBatch] = {}
        for _end, samples in self.spool.read_segment(seg):
            if not samples or samples[0].point != HEADER_POINT or samples[0].value is None:
                log.warning("uplink outbox %s: segment %d holds a record without a batch header; skipped",
                            self.dir, seg)
                continue
            head, body = samples[0], samples[1:]
            seq = int(head.value)  # type: ignore[arg-type]  # checked above
            out[seq] = OutBatch(seq, head.source_time, encode_batch(body), len(body))
        return out

    # ---- acknowledgements ------------------------------------------------------------------------

    def acknowledge(self, watermark: int) -> bool:
        """The centre committed every batch up to `watermark`; True if that is news. Frees what it can."""
        if watermark <= self.watermark:
            return False
        if watermark >= self.next_seq:
            # The centre knows more of this epoch than this outbox: its numbering must carry on above that.
            log.warning("uplink outbox %s: the centre has batches up to %d, this outbox only to %d: numbering "
                        "continues above the centre's", self.dir, watermark, self.next_seq - 1)
            self.next_seq = self._active_first = watermark + 1
            self.durable_seq = max(self.durable_seq, watermark)
        self.watermark = watermark
        for seq in [s for s in self._counts if s <= watermark]:
            del self._counts[seq]
            self._drop_cached(seq)
        self._prune()
        return True

    def _prune(self) -> None:
        """Delete the sealed segments whose every batch is acknowledged (the watermark is saved first)."""
        done = [seg for seg, (_, last) in sorted(self._ranges.items()) if last <= self.watermark]
        if not done:
            return
        self._write_state()
        for seg in done:
            self.spool.remove(seg)
            del self._ranges[seg]
            if self._disk_seg == seg:
                self._disk, self._disk_seg = {}, None

    # ---- memory ----------------------------------------------------------------------------------

    def _remember(self, batch: OutBatch) -> None:
        self._cache[batch.seq] = batch
        self._cached_bytes += len(batch.body)
        while self._cached_bytes > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old.body)

    def _drop_cached(self, seq: int) -> None:
        b = self._cache.pop(seq, None)
        if b is not None:
            self._cached_bytes -= len(b.body)

    # ---- state file ------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, int]:
        try:
            doc = json.loads((self.dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.error("uplink outbox %s: %s unreadable (%s): starting a new epoch", self.dir, STATE_FILE, err)
            return {}
        return {k: int(v) for k, v in doc.items() if k in ("epoch", "watermark")}

    def _write_state(self) -> None:
        path, tmp = self.dir / STATE_FILE, self.dir / (STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"epoch": self.epoch, "watermark": self.watermark}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
