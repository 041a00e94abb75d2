"""The fleet's wire: topics, the binary batch message, and the JSON acknowledgement and status.

Topics (protocol v1; an ACL confines a site to its own prefix `heatrec/v1/<site>/`):

- `heatrec/v1/<site>/batch`: the site publishes its batches, QoS 1, not retained;
- `heatrec/v1/<site>/ack`: the centre publishes what it has committed, QoS 1, **retained**, so a site that
  restarts (or lost its outbox state) learns its watermark on subscribing;
- `heatrec/v1/<site>/status`: the site's status, retained, with an MQTT will saying it is offline.

A batch message is a fixed header, the site id, and a body in the spool's record format
(`service.storage.spool.encode_batch`). The header carries the batch's sequence number (per site and
epoch, from 1, increasing by one), the lowest sequence number the site can still send (`base`: anything
below it and above the centre's watermark was lost to the site's outbox bound), the site's backlog, and a
CRC of the body, so a damaged or truncated message is refused as a whole.

Batch header version 2 (this one) gives the header's fourth byte a meaning: the batch's kind, samples (0)
or records (1: the site's alarm transitions, events and audit entries, a JSON array,
service/fleet/records.py). Both kinds share the sequence, hence the one acknowledgement protocol.
Version 1 messages (that byte 0, always samples) are still decoded.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.fleet import records as fleet_records
from service.fleet.records import Record
from service.model import Sample
from service.storage.spool import decode_batch, encode_batch

PREFIX = "heatrec/v1"
MAGIC = b"HRF1"
VERSION = 1                            # of the acknowledgement and status documents
BATCH_VERSION = 2                      # of the batch header; 1 is still decoded
KIND_SAMPLES, KIND_RECORDS = 0, 1      # a batch's kind (version 2; version 1 batches are samples)
_HEAD = struct.Struct("<4sBBH")        # magic, version, kind (version 1: flags, 0), site id length
_FIELDS = struct.Struct("<QQQqQII")    # epoch, seq, base, created µs, backlog samples, backlog batches, body crc32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
MAX_BODY = 64 * 1024 * 1024


class Malformed(ValueError):
    """A message that is not a well-formed fleet message; the text says what is wrong."""


def batch_topic(site: str) -> str:
    """Where a site publishes its batches."""
    return f"{PREFIX}/{site}/batch"


def ack_topic(site: str) -> str:
    """Where the centre acknowledges a site's committed batches (retained)."""
    return f"{PREFIX}/{site}/ack"


def status_topic(site: str) -> str:
    """Where a site publishes its status (retained; its will says offline)."""
    return f"{PREFIX}/{site}/status"


def site_of(topic: str) -> str | None:
    """The site level of a fleet topic, or None for another topic."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX or not parts[2]:
        return None
    return parts[2]


@dataclass(frozen=True)
class Batch:
    """One batch as it travels: who, which, what the site still holds, and its samples."""

    site: str
    epoch: int
    seq: int
    base: int
    created: datetime
    backlog_samples: int
    backlog_batches: int
    samples: list[Sample]
    kind: int = KIND_SAMPLES
    records: tuple[Record, ...] = ()


def encode_message(site: str, epoch: int, seq: int, base: int, created: datetime, backlog_samples: int,
                   backlog_batches: int, body: bytes, *, kind: int = KIND_SAMPLES,
                   version: int = BATCH_VERSION) -> bytes:
    """A batch message around a body: samples in the spool's record format, or records (`encode_records`)."""
    if version == 1 and kind != KIND_SAMPLES:
        raise ValueError("a version 1 batch holds samples only")
    raw_site = site.encode()
    return (_HEAD.pack(MAGIC, version, kind, len(raw_site)) + raw_site
            + _FIELDS.pack(epoch, seq, base, (created - _EPOCH) // _US, backlog_samples, backlog_batches,
                           zlib.crc32(body)) + body)


def encode_samples(samples: list[Sample]) -> bytes:
    """The body of a batch message."""
    return encode_batch(samples)


def encode_records(records: list[Record]) -> bytes:
    """The body of a batch message of kind records."""
    return fleet_records.encode_body(records)


def decode_message(payload: bytes, *, received: datetime | None = None) -> Batch:
    """A batch message, checked whole; Malformed says why it is refused."""
    if len(payload) < _HEAD.size:
        raise Malformed(f"{len(payload)} bytes is shorter than the header")
    magic, version, kind, n_site = _HEAD.unpack_from(payload, 0)
    if magic != MAGIC:
        raise Malformed("not a fleet batch (bad magic)")
    if version not in (1, BATCH_VERSION):
        raise Malformed(f"protocol version {version} is not 1 or {BATCH_VERSION}")
    if version == 1:
        kind = KIND_SAMPLES  # the byte was flags, always 0
    elif kind not in (KIND_SAMPLES, KIND_RECORDS):
        raise Malformed(f"batch kind {kind} is unknown")
    off = _HEAD.size + n_site
    if len(payload) < off + _FIELDS.size:
        raise Malformed("truncated header")
    try:
        site = payload[_HEAD.size:off].decode()
    except UnicodeDecodeError:
        raise Malformed("site id is not UTF-8") from None
    epoch, seq, base, created_us, backlog, backlog_batches, crc = _FIELDS.unpack_from(payload, off)
    body = payload[off + _FIELDS.size:]
    if len(body) > MAX_BODY or zlib.crc32(body) != crc:
        raise Malformed("body checksum mismatch (damaged or truncated)")
    if seq < 1 or base < 1 or base > seq:
        raise Malformed(f"sequence {seq} with base {base} is impossible")
    records: tuple[Record, ...] = ()
    try:
        created = _EPOCH + created_us * _US
        if kind == KIND_RECORDS:
            samples, records = [], fleet_records.decode_body(body)
        else:
            samples = decode_batch(body, received)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError, OverflowError, KeyError, TypeError,
            RecursionError) as err:
        raise Malformed(f"body does not decode: {err}") from None
    for s in samples:
        if s.value is not None and math.isinf(s.value):
            raise Malformed(f"point {s.point}: infinite value")
    return Batch(site, epoch, seq, base, created, backlog, backlog_batches, samples, kind, records)


def encode_ack(site: str, epoch: int, watermark: int, seq: int | None) -> bytes:
    """The centre's acknowledgement: every batch 1..watermark of the epoch is committed (and `seq` just was)."""
    return json.dumps({"v": VERSION, "site": site, "epoch": epoch, "watermark": watermark, "seq": seq},
                      separators=(",", ":")).encode()


@dataclass(frozen=True)
class Ack:
    """What the centre has committed of a site."""

    site: str
    epoch: int
    watermark: int


def decode_ack(payload: bytes) -> Ack:
    """An acknowledgement; Malformed if it is not one."""
    try:
        doc = json.loads(payload)
        ack = Ack(str(doc["site"]), int(doc["epoch"]), int(doc["watermark"]))
    except (ValueError, KeyError, TypeError) as err:
        raise Malformed(f"not an acknowledgement: {err}") from None
    if ack.watermark < 0:
        raise Malformed("negative watermark")
    return ack


def encode_status(site: str, online: bool, **figures: object) -> bytes:
    """The site's status document (the will is the same with online false)."""
    return json.dumps({"v": VERSION, "site": site, "online": online, **figures}, separators=(",", ":"),
                      default=str).encode()


def decode_status(payload: bytes) -> dict[str, object]:
    """A status document; Malformed if it is not one."""
    try:
        doc = json.loads(payload)
    except ValueError as err:
        raise Malformed(f"status is not JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
        raise Malformed("status without 'online'")
    return doc
