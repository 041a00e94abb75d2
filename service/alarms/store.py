"""Alarm persistence: live state in `alarms`, every transition in `alarm_events`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg

from service.alarms.model import Alarm, AlarmEvent, AlarmState
from service.errors import NotFound
from service.storage.database import translated


async def load_states(conn: asyncpg.Connection | asyncpg.Pool, alarms: dict[str, Alarm]) -> None:
    """Restore states saved before a restart (acknowledged stays acknowledged, shelves keep expiring)."""
    for r in await conn.fetch("SELECT id, state, active, value, since, shelved_until, acked_by FROM alarms"):
        a = alarms.get(r["id"])
        if a is None:
            continue  # the rule was removed from the config
        a.state, a.active, a.value = AlarmState(r["state"]), r["active"], r["value"]
        a.since, a.shelved_until, a.acked_by = r["since"], r["shelved_until"], r["acked_by"]


_UPSERT = """INSERT INTO alarms (id, source, kind, severity, message, state, active, value, since, shelved_until,
                               acked_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, active = EXCLUDED.active, value = EXCLUDED.value,
             since = EXCLUDED.since, shelved_until = EXCLUDED.shelved_until, acked_by = EXCLUDED.acked_by,
             severity = EXCLUDED.severity, message = EXCLUDED.message"""
_EVENT = ("INSERT INTO alarm_events (time, alarm_id, old_state, new_state, value, by_user, message) "
          "VALUES ($1, $2, $3, $4, $5, $6, $7)")


async def save(conn: asyncpg.Connection | asyncpg.Pool, alarms: Iterable[Alarm], events: list[AlarmEvent]) -> None:
    """Upsert the given alarms' state and append the events."""
    await conn.executemany(_UPSERT, [(a.id, a.source, a.kind, a.severity.value, a.message, a.state.value, a.active,
                                      a.value, a.since, a.shelved_until, a.acked_by) for a in alarms])
    if events:
        await conn.executemany(_EVENT, [(e.time, e.alarm_id, e.old.value, e.new.value, e.value, e.by, e.message)
                                        for e in events])


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _time(t: str | None) -> datetime | None:
    return None if t is None else datetime.fromisoformat(t)


def journal_record(alarms: Iterable[Alarm], events: list[AlarmEvent]) -> dict[str, Any]:
    """The alarms' state and the transitions as one JSON-ready journal record (see apply_record)."""
    return {"alarms": [{"id": a.id, "source": a.source, "kind": a.kind, "severity": a.severity.value,
                        "message": a.message, "state": a.state.value, "active": a.active, "value": a.value,
                        "since": _iso(a.since), "shelved_until": _iso(a.shelved_until), "acked_by": a.acked_by}
                       for a in alarms],
            "events": [{"time": e.time.isoformat(), "alarm_id": e.alarm_id, "old": e.old.value, "new": e.new.value,
                        "value": e.value, "by": e.by, "message": e.message} for e in events]}


async def apply_record(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    """Store a journaled record of journal_record(): upsert the states, append the events at their times."""
    await conn.executemany(_UPSERT, [(a["id"], a["source"], a["kind"], a["severity"], a["message"], a["state"],
                                      a["active"], a["value"], _time(a["since"]), _time(a["shelved_until"]),
                                      a["acked_by"]) for a in data["alarms"]])
    if data["events"]:
        await conn.executemany(_EVENT, [(datetime.fromisoformat(e["time"]), e["alarm_id"], e["old"], e["new"],
                                         e["value"], e["by"], e["message"]) for e in data["events"]])


class UnknownCursor(NotFound):
    """The event a page cursor names does not exist (never did, or was deleted)."""


async def recent_events(conn: asyncpg.Connection | asyncpg.Pool, limit: int, alarm_id: str | None = None,
                        after_seq: int | None = None) -> list[asyncpg.Record]:
    """Newest alarm events first; with `after_seq`, those that sort after that event (the next page)."""
    async with translated():
        return await _recent_events(conn, limit, alarm_id, after_seq)


async def _recent_events(conn: asyncpg.Connection | asyncpg.Pool, limit: int, alarm_id: str | None,
                         after_seq: int | None) -> list[asyncpg.Record]:
    where: list[str] = []
    args: list[object] = []
    if alarm_id is not None:
        args.append(alarm_id)
        where.append(f"alarm_id = ${len(args)}")
    if after_seq is not None:
        anchor = await conn.fetchrow("SELECT time, seq FROM alarm_events WHERE seq = $1", after_seq)
        if anchor is None:
            raise UnknownCursor(f"cursor {after_seq} names no alarm event: start again without a cursor")
        args += [anchor["time"], anchor["seq"]]
        where.append(f"(time, seq) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    sql = "SELECT * FROM alarm_events" + (" WHERE " + " AND ".join(where) if where else "")
    return list(await conn.fetch(sql + f" ORDER BY time DESC, seq DESC LIMIT ${len(args)}", *args))
