"""A site's records for the centre: alarm transitions, events and audit entries, as they travel the uplink.

The records are those of the plant's durable journal (service/storage/journal.py) of three kinds: `alarms`
(alarm states and their transitions, service/alarms/store.py's journal_record), `event` (rows of
`events`) and `audit` (rows of `audit_log`). Each keeps the journal's id, a random 128-bit number drawn
when the site journaled it: the centre stores a record at most once per (site, kind, id), whatever the
batch numbering says.

Two forms. In the uplink's outbox a batch of records is a spool record like any other, so it takes a
number in the same sequence as the sample batches and is acknowledged, freed and replayed by the same
protocol: its first entry after the batch header is `RECORDS_POINT` (value: the number of records), and
each record follows as its JSON text (ASCII) in the point id field of one or more entries (value: the
record's index; a point id holds at most 65,535 bytes, so a long record takes several). On the wire
(service/fleet/wire.py, batch kind `records`) the body is a JSON array of the records.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.model import Quality, Sample, utcnow
from service.storage.spool import decode_batch

RECORDS_POINT = "\x00fleet.records"  # never a point id (ids are device.point in lower case)
KINDS = ("alarms", "event", "audit")  # the journal's kinds that go to the centre
_RAW_MARK = RECORDS_POINT.encode()
_CHUNK = 60_000                       # characters of a record's JSON per entry (below the 65,535-byte id limit)
_HEAD = struct.Struct("<II")          # the spool payload's head: point ids, entries (service/storage/spool.py)
MAX_RECORDS = 500                     # records per batch at most
_ID_CHARS = set("0123456789abcdef")


@dataclass(frozen=True)
class Record:
    """One journal record for the centre: its kind, its journal id, when it happened, and its data."""

    kind: str
    id: str                # 32 lower-case hex digits, the journal's id
    time: datetime         # when it happened at the site (orders an alarm's live state at the centre)
    data: dict[str, Any]


def record_time(kind: str, data: dict[str, Any]) -> datetime:
    """When a journal record happened: its own time, or for alarms the newest transition or state change."""
    if kind in ("event", "audit"):
        return datetime.fromisoformat(data["time"])
    times = [e["time"] for e in data.get("events", [])] or [a["since"] for a in data.get("alarms", []) if a["since"]]
    return max(datetime.fromisoformat(t) for t in times) if times else utcnow()


def journaled(kind: str, rid: str, data: dict[str, Any]) -> Record:
    """The record for the centre of a journal record: JSON-native and checked as the centre will check it."""
    doc = {"kind": kind, "id": rid, "time": record_time(kind, data).isoformat(), "data": data}
    return parse(json.loads(_dumps(doc)))


# ---- the outbox form -----------------------------------------------------------------------------

def to_entries(records: list[Record]) -> list[Sample]:
    """The entries of one outbox batch holding `records` (the batch header is the outbox's)."""
    now = utcnow()
    out = [Sample(RECORDS_POINT, float(len(records)), Quality.GOOD, now, now)]
    for i, rec in enumerate(records):
        text = _dumps(_doc(rec))
        for start in range(0, len(text), _CHUNK):
            out.append(Sample(text[start:start + _CHUNK], float(i), Quality.GOOD, now, now))
    return out


def is_records(body: bytes) -> bool:
    """Whether an outbox batch body (the spool's record format) holds records, not samples; reads its first id."""
    off = _HEAD.size
    if len(body) < off + 2:
        return False
    (n,) = struct.unpack_from("<H", body, off)
    return body[off + 2:off + 2 + n] == _RAW_MARK


def from_entries(entries: list[Sample]) -> list[Record]:
    """The records of an outbox batch's entries (as `to_entries` made them)."""
    if not entries or entries[0].point != RECORDS_POINT:
        raise ValueError("not a batch of records")
    texts: dict[int, list[str]] = {}
    for e in entries[1:]:
        texts.setdefault(int(e.value or 0), []).append(e.point)
    return [parse(json.loads("".join(texts[i]))) for i in sorted(texts)]


# ---- the wire form -------------------------------------------------------------------------------

def wire_body(outbox_body: bytes) -> bytes:
    """The wire body of an outbox batch of records."""
    try:
        entries = decode_batch(outbox_body)
    except (struct.error, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"not a spool record: {err}") from None
    return encode_body(from_entries(entries))


def encode_body(records: list[Record]) -> bytes:
    """A records batch's body on the wire: a JSON array."""
    return _dumps([_doc(r) for r in records]).encode()


def decode_body(body: bytes) -> tuple[Record, ...]:
    """The records of a wire body; ValueError (or TypeError, KeyError) says what is wrong."""
    docs = json.loads(body)
    if not isinstance(docs, list) or len(docs) > MAX_RECORDS * 4:
        raise ValueError("a records body is a JSON array")
    return tuple(parse(d) for d in docs)


def _doc(rec: Record) -> dict[str, Any]:
    return {"kind": rec.kind, "id": rec.id, "time": rec.time.isoformat(), "data": rec.data}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=True)


# ---- checking ------------------------------------------------------------------------------------

def parse(doc: Any) -> Record:
    """A record from its JSON document, checked field by field, so the centre never stores half of one."""
    if not isinstance(doc, dict):
        raise ValueError("a record is a JSON object")
    kind, rid, data = doc.get("kind"), doc.get("id"), doc.get("data")
    if kind not in KINDS:
        raise ValueError(f"record kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(rid, str) or len(rid) != 32 or not set(rid) <= _ID_CHARS:
        raise ValueError(f"record id {rid!r} is not 32 hex digits")
    if not isinstance(data, dict):
        raise ValueError(f"record {rid}: data is not an object")
    _CHECKS[kind](data)
    if "\\u0000" in _dumps(data):
        raise ValueError(f"record {rid}: a NUL character (PostgreSQL's text and jsonb refuse it)")
    return Record(kind, rid, _when(doc.get("time"), "time"), data)


def _when(value: Any, name: str, optional: bool = False) -> datetime:
    if value is None and optional:
        return datetime.min
    if not isinstance(value, str):
        raise ValueError(f"{name} is not an ISO time")
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise ValueError(f"{name} has no time zone")
    return t


def _text(data: dict[str, Any], *names: str, optional: tuple[str, ...] = ()) -> None:
    for n in names:
        if not isinstance(data.get(n), str):
            raise ValueError(f"field {n} is not text")
    for n in optional:
        if data.get(n) is not None and not isinstance(data[n], str):
            raise ValueError(f"field {n} is not text")


def _number(data: dict[str, Any], name: str) -> None:
    v = data.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v))):
        raise ValueError(f"field {name} is not a finite number")


def _check_event(data: dict[str, Any]) -> None:
    _when(data.get("time"), "time")
    _text(data, "source", "kind", "message", optional=("severity",))
    if not isinstance(data.get("data", {}), dict):
        raise ValueError("field data is not an object")


def _check_audit(data: dict[str, Any]) -> None:
    _when(data.get("time"), "time")
    _text(data, "principal", "role", "action", "target", "outcome", optional=("detail",))


def _check_alarms(data: dict[str, Any]) -> None:
    alarms, events = data.get("alarms"), data.get("events")
    if not isinstance(alarms, list) or not isinstance(events, list):
        raise ValueError("an alarms record has the lists alarms and events")
    for a in alarms:
        if not isinstance(a, dict):
            raise ValueError("an alarm is an object")
        _text(a, "id", "source", "kind", "severity", "message", "state", optional=("acked_by",))
        if not isinstance(a.get("active"), bool):
            raise ValueError("field active is not a boolean")
        _number(a, "value")
        _when(a.get("since"), "since", optional=True)
        _when(a.get("shelved_until"), "shelved_until", optional=True)
    for e in events:
        if not isinstance(e, dict):
            raise ValueError("an alarm transition is an object")
        _when(e.get("time"), "time")
        _text(e, "alarm_id", "old", "new", "message", optional=("by",))
        _number(e, "value")


_CHECKS = {"event": _check_event, "audit": _check_audit, "alarms": _check_alarms}
