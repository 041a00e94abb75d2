"""Records (alarm transitions, events, audit entries) in the outbox and on the wire, and the journal that feeds them.

No network: the outbox is a directory, the journal's database is never reached (it is away, as a site's
may be: its records still go to the uplink).
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.accounting.store import apply_manual_reading
from service.alarms import store as alarm_store
from service.alarms.model import Alarm, AlarmEvent, AlarmState, Severity
from service.audit import AuditEntry, AuditLog, apply_audit
from service.config import DatabaseConfig
from service.fleet import records, wire
from service.fleet.outbox import Outbox
from service.fleet.records import Record
from service.fleet.records_feed import ForwardingJournal
from service.model import Quality, Sample
from service.storage.database import Database
from service.storage.journal import apply_event
from service.storage.spool import decode_batch, encode_batch

T0 = datetime(2026, 2, 1, 12, tzinfo=UTC)


def audit_record(n: int, detail: str = "") -> Record:
    data = {"time": (T0 + timedelta(seconds=n)).isoformat(), "principal": "alice", "role": "operator",
            "action": "control.target", "target": f"hp{n}.setpoint", "requested": n, "applied": None,
            "outcome": "accepted", "detail": detail}
    return records.journaled("audit", uuid.uuid4().hex, data)


def alarm_record() -> Record:
    a = Alarm("hp1.supply_temperature:high", "hp1.supply_temperature", "high", Severity.HIGH, "too hot",
              AlarmState.UNACK_ACTIVE, True, 91.5, T0)
    ev = AlarmEvent(a.id, T0, AlarmState.NORMAL, AlarmState.UNACK_ACTIVE, 91.5, None, "too hot")
    return records.journaled("alarms", uuid.uuid4().hex, alarm_store.journal_record([a], [ev]))


def event_record() -> Record:
    data = {"time": T0.isoformat(), "source": "storage", "kind": "database_down", "severity": "warning",
            "message": "Ærø: the database is away"}
    return records.journaled("event", uuid.uuid4().hex, data)


def test_records_round_trip_through_the_outbox_form_and_the_wire() -> None:
    recs = [alarm_record(), event_record(), audit_record(1, detail="é" * 100_000)]  # longer than one entry holds
    entries = records.to_entries(recs)
    assert len(entries) > 1 + len(recs)  # the long one took several entries
    body = records.wire_body(_spool_body(entries))
    msg = wire.encode_message("site-a", 9, 5, 5, T0, 0, 1, body, kind=wire.KIND_RECORDS)
    b = wire.decode_message(msg)
    assert (b.kind, b.samples, b.seq) == (wire.KIND_RECORDS, [], 5)
    assert list(b.records) == recs
    assert b.records[0].time == T0 and b.records[2].data["detail"] == "é" * 100_000


def test_a_records_body_is_told_from_a_samples_body_by_its_first_entry() -> None:
    samples = [Sample("hp1.p", 1.0, Quality.GOOD, T0, T0)]
    assert records.is_records(_spool_body(records.to_entries([event_record()])))
    assert not records.is_records(wire.encode_samples(samples))
    assert not records.is_records(wire.encode_samples([]))


def test_version_1_batches_still_decode_as_samples() -> None:
    samples = [Sample("hp1.p", 2.0, Quality.GOOD, T0, T0)]
    msg = wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, wire.encode_samples(samples), version=1)
    assert msg[4] == 1
    b = wire.decode_message(msg)
    assert (b.kind, [s.value for s in b.samples], b.records) == (wire.KIND_SAMPLES, [2.0], ())
    with pytest.raises(ValueError, match="samples only"):
        wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, b"[]", kind=wire.KIND_RECORDS, version=1)


def _with_head(msg: bytes, version: int, kind: int) -> bytes:
    return msg[:4] + bytes([version, kind]) + msg[6:]


def test_unknown_versions_and_kinds_are_malformed() -> None:
    msg = wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, wire.encode_records([event_record()]),
                              kind=wire.KIND_RECORDS)
    with pytest.raises(wire.Malformed, match="version 3"):
        wire.decode_message(_with_head(msg, 3, 1))
    with pytest.raises(wire.Malformed, match="kind 7"):
        wire.decode_message(_with_head(msg, 2, 7))


def _good() -> dict[str, Any]:
    return json.loads(records.encode_body([event_record()]))[0]


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: d.update(kind="manual_reading"), "kind"),
    (lambda d: d.update(id="../etc"), "32 hex"),
    (lambda d: d["data"].pop("message"), "message"),
    (lambda d: d["data"].update(time="yesterday"), "Invalid isoformat"),
    (lambda d: d["data"].update(time="2026-01-01T00:00:00"), "time zone"),
    (lambda d: d["data"].update(message="a\x00b"), "NUL"),
    (lambda d: d.update(data=[1]), "not an object"),
])
def test_records_that_are_not_whole_make_the_batch_malformed(change: Any, why: str) -> None:
    doc = _good()
    change(doc)
    msg = wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, json.dumps([doc]).encode(), kind=wire.KIND_RECORDS)
    with pytest.raises(wire.Malformed, match=why):
        wire.decode_message(msg)


def test_an_alarm_value_that_is_not_finite_is_malformed() -> None:
    doc = json.loads(records.encode_body([alarm_record()]))[0]
    doc["data"]["events"][0]["value"] = 1e400  # json.dumps writes Infinity
    msg = wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, json.dumps([doc]).encode(), kind=wire.KIND_RECORDS)
    with pytest.raises(wire.Malformed, match="finite"):
        wire.decode_message(msg)


async def test_records_share_the_outbox_numbering_and_replay_after_a_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_bytes=10**7, segment_bytes=4096)
    box.open()
    s1 = await box.append([Sample("hp1.p", 1.0, Quality.GOOD, T0, T0)])
    recs = [audit_record(n) for n in range(20)]
    r2 = await box.append(records.to_entries(recs))
    s3 = await box.append([Sample("hp1.p", 3.0, Quality.GOOD, T0, T0)])
    assert (s1.seq, r2.seq, s3.seq) == (1, 2, 3)
    box.close()
    again = Outbox(tmp_path, max_bytes=10**7, segment_bytes=4096)
    again.open()
    got = [again.get(n) for n in (1, 2, 3)]
    assert all(b is not None for b in got)
    assert [records.is_records(b.body) for b in got if b is not None] == [False, True, False]
    assert list(records.decode_body(records.wire_body(got[1].body))) == recs  # type: ignore[union-attr]
    again.close()


def _away() -> Database:
    """A database that is never reached (the journal keeps its records)."""
    return Database(DatabaseConfig(host="127.0.0.1", port=1))


def _appliers() -> dict[str, Any]:
    return {"audit": apply_audit, "alarms": alarm_store.apply_record, "event": apply_event,
            "manual_reading": apply_manual_reading}


async def test_the_journal_offers_its_records_to_the_uplink_and_again_after_a_restart(tmp_path: Path) -> None:
    """Records before the uplink is attached wait; at open, what the journal still holds is offered again."""
    offered: list[Record] = []
    journal = ForwardingJournal(tmp_path, _away(), _appliers())
    journal.open()
    audit = AuditLog(_away(), journal)
    await audit.record(AuditEntry("alice", "operator", "control.target", "loop", 78.0, 78.0, "accepted"))
    assert offered == []
    journal.forward_to(lambda rec: offered.append(rec))
    await journal.append("event", {"time": T0.isoformat(), "source": "storage", "kind": "database_down",
                                   "severity": "warning", "message": "away"})
    await journal.append("manual_reading", {"meter": "m1"})  # not a kind for the centre
    assert [r.kind for r in offered] == ["audit", "event"]
    assert offered[0].data["principal"] == "alice" and offered[0].data["requested"] == 78.0
    lines = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [r.id for r in offered] == [line["id"] for line in lines[:2]]  # the journal's ids: the centre's key
    journal.close()

    reopened = ForwardingJournal(tmp_path, _away(), _appliers())
    reopened.open()
    again: list[Record] = []
    reopened.forward_to(lambda rec: again.append(rec))
    assert again == offered
    reopened.close()


def _spool_body(entries: list[Sample]) -> bytes:
    """The body the outbox serves for these entries (the spool's record format)."""
    body = encode_batch(entries)
    assert decode_batch(body)[0].point == records.RECORDS_POINT
    return body


def test_the_crc_covers_a_records_body() -> None:
    body = wire.encode_records([event_record()])
    msg = wire.encode_message("site-a", 1, 1, 1, T0, 0, 0, body, kind=wire.KIND_RECORDS)
    assert struct.unpack_from("<I", msg, len(msg) - len(body) - 4)[0] == zlib.crc32(body)
    with pytest.raises(wire.Malformed, match="checksum"):
        wire.decode_message(msg[:-2] + b"]]")
