"""The spool on its own: framing round trip, torn tails after a crash, the full-spool policy."""

from __future__ import annotations

import logging
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.config import DatabaseConfig
from service.model import Quality, Sample
from service.storage.spool import Spool, decode_batch, encode_batch, spool_path

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batch(start: int, n: int) -> list[Sample]:
    """`n` samples whose value is their sequence number (over three points)."""
    return [Sample(f"dev.p{i % 3}", float(i), Quality.GOOD, T0 + timedelta(milliseconds=i), T0)
            for i in range(start, start + n)]


def tear_last_segment(d: Path) -> None:
    """What a kill -9 in the middle of a write leaves: a frame header promising more than is there."""
    with open(sorted(d.glob("seg-*.spool"))[-1], "ab") as f:
        f.write(b"\x00\x10\x00\x00garbage")


def on_disk(d: Path) -> int:
    return sum(os.path.getsize(p) for p in d.glob("seg-*.spool"))


def values(spool: Spool) -> list[float]:
    return [s.value for seq in spool.sealed() for _, b in spool.read_segment(seq) for s in b if s.value is not None]


def test_encoding_round_trips_values_none_quality_and_microseconds() -> None:
    t = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    src = [Sample("a.x", 1.5, Quality.UNCERTAIN, t, t), Sample("b.ü", None, Quality.BAD, t, t),
           Sample("a.x", -0.0, Quality.STALE, t + timedelta(microseconds=1), t)]
    out = decode_batch(encode_batch(src), receive_time=t)
    assert [(s.point, s.value, s.quality, s.source_time) for s in out] == \
           [(s.point, s.value, s.quality, s.source_time) for s in src]
    assert not any(s.value is not None and math.isnan(s.value) for s in out)


async def test_spool_survives_reopen_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    sp.open()
    for k in range(10):
        await sp.append(batch(k * 50, 50))
    assert sp.stats.samples == 500 and sp.stats.segments > 1
    tear_last_segment(tmp_path)
    # No close(): as after a crash.
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    again.open()
    assert again.stats.samples == 500 and again.stats.corrupt_records == 1
    await again.seal_active()
    assert values(again) == [float(i) for i in range(500)]


async def test_full_spool_drops_oldest_segment_counts_and_logs_once(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.storage.spool")
    sp = Spool(tmp_path, max_bytes=20_000, segment_bytes=5_000)
    sp.open()
    for k in range(100):  # 100 records of about 460 bytes: more than twice the bound
        await sp.append(batch(k * 20, 20))
    st = sp.stats
    assert st.dropped_segments > 0 and st.dropped_samples > 0
    assert st.bytes <= 20_000
    assert on_disk(tmp_path) == st.bytes
    assert st.samples + st.dropped_samples == 2000  # every sample is either held or counted as dropped
    await sp.seal_active()
    kept = values(sp)
    assert kept == [float(i) for i in range(2000 - st.samples, 2000)]  # the newest are kept, in order
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR


def test_spool_directory_is_per_database(tmp_path: Path) -> None:
    a = spool_path(tmp_path, DatabaseConfig(host="127.0.0.1", port=5432, name="plant"))
    b = spool_path(tmp_path, DatabaseConfig(host="127.0.0.1", port=5432, name="other"))
    assert a != b and a.parent == tmp_path
