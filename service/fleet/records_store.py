"""The centre's store of the sites' alarm transitions, events and audit entries (migration 0017), and its reads.

`store` runs inside the batch's transaction (service/fleet/store.py's write_batch), so a batch of records
is committed, and acknowledged, as a whole. Each record is first entered in `fleet_records` by the site
and its journal id (`origin`): one found there already stores nothing (the rows are also unique on it).
An alarm's live state is taken from a record only if that record is not older than the one the state
came from, as batches may commit out of order.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from service.errors import NotFound
from service.fleet.records import Record

_RECORD = """INSERT INTO fleet_records (site, origin, kind, time) VALUES ($1, $2, $3, $4)
             ON CONFLICT (site, origin) DO NOTHING RETURNING true"""
_EVENT = """INSERT INTO fleet_events (site, origin, time, source, kind, severity, message, data)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT (site, origin) DO NOTHING"""
_AUDIT = """INSERT INTO fleet_audit (site, origin, time, principal, role, action, target, requested, applied,
                                    outcome, detail)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11) ON CONFLICT (site, origin) DO NOTHING"""
_TRANSITION = """INSERT INTO fleet_alarm_events (site, origin, n, time, alarm_id, old_state, new_state, value, by_user,
                                               message)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (site, origin, n) DO NOTHING"""
_ALARM = """INSERT INTO fleet_alarms (site, id, source, kind, severity, message, state, active, value, since,
                                     shelved_until, acked_by, updated)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (site, id) DO UPDATE SET source = EXCLUDED.source, kind = EXCLUDED.kind,
              severity = EXCLUDED.severity, message = EXCLUDED.message, state = EXCLUDED.state,
              active = EXCLUDED.active, value = EXCLUDED.value, since = EXCLUDED.since,
              shelved_until = EXCLUDED.shelved_until, acked_by = EXCLUDED.acked_by, updated = EXCLUDED.updated
            WHERE fleet_alarms.updated <= EXCLUDED.updated"""


async def store(conn: asyncpg.Connection, site: str, records: tuple[Record, ...]) -> int:
    """Store a batch's records (in the caller's transaction) that are not stored yet; how many were new."""
    new = 0
    for rec in records:
        origin, d = uuid.UUID(rec.id), rec.data
        if not await conn.fetchval(_RECORD, site, origin, rec.kind, rec.time):
            continue  # stored before: a replayed batch, or a record the site offered again
        new += 1
        if rec.kind == "event":
            await conn.execute(_EVENT, site, origin, _t(d["time"]), d["source"], d["kind"],
                               d.get("severity") or "info", d["message"], json.dumps(d.get("data", {})))
        elif rec.kind == "audit":
            await conn.execute(_AUDIT, site, origin, _t(d["time"]), d["principal"], d["role"], d["action"],
                               d["target"], _json(d.get("requested")), _json(d.get("applied")), d["outcome"],
                               d.get("detail") or "")
        else:
            await conn.executemany(_TRANSITION, [(site, origin, n, _t(e["time"]), e["alarm_id"], e["old"], e["new"],
                                                  e["value"], e["by"], e["message"])
                                                 for n, e in enumerate(d["events"])])
            await conn.executemany(_ALARM, [
                (site, a["id"], a["source"], a["kind"], a["severity"], a["message"], a["state"], a["active"],
                 a["value"], _t(a["since"]), _t(a["shelved_until"]), a["acked_by"], rec.time) for a in d["alarms"]])
    if new:
        await conn.execute("UPDATE fleet_sites SET records = records + $2 WHERE site = $1", site, new)
    return new


def _t(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


# ---- reads for the API ---------------------------------------------------------------------------

class UnknownCursor(NotFound):
    """A page cursor that names no row of this site."""


async def site_known(conn: asyncpg.Connection, site: str) -> bool:
    """Whether the central store has heard of the site."""
    return bool(await conn.fetchval("SELECT true FROM fleet_sites WHERE site = $1", site))


async def active_alarms(conn: asyncpg.Connection, site: str) -> list[dict[str, Any]]:
    """The site's alarms that are not normal (active, unacknowledged or shelved), the newest first."""
    rows = await conn.fetch("""SELECT id, source, kind, severity, message, state, active, value, since,
                                      shelved_until, acked_by
                               FROM fleet_alarms WHERE site = $1 AND state <> 'normal'
                               ORDER BY since DESC NULLS LAST, id""", site)
    return [dict(r) for r in rows]


_PAGES = {
    "fleet_alarm_events": "seq, time, alarm_id, old_state, new_state, value, by_user, message",
    "fleet_events": "seq, time, source, kind, severity, message, data",
    "fleet_audit": "seq, time, principal, role, action, target, requested, applied, outcome, detail",
}


async def page(conn: asyncpg.Connection, table: str, site: str, limit: int,
               before: int | None = None) -> list[dict[str, Any]]:
    """A site's rows of one table, newest first (by their time at the site); `before`: the previous page's last."""
    columns = _PAGES[table]  # a fixed name, never the caller's text
    args: list[Any] = [site, limit]
    where = "site = $1"
    if before is not None:
        anchor = await conn.fetchrow(f"SELECT time, seq FROM {table} WHERE site = $1 AND seq = $2", site, before)
        if anchor is None:
            raise UnknownCursor(f"cursor {before} names no entry of site {site}: start again without a cursor")
        args += [anchor["time"], anchor["seq"]]
        where += " AND (time, seq) < ($3, $4)"
    rows = await conn.fetch(f"SELECT {columns} FROM {table} WHERE {where} ORDER BY time DESC, seq DESC LIMIT $2",
                            *args)
    out = []
    for r in rows:
        d = dict(r)
        for key in ("data", "requested", "applied"):
            if key in d and d[key] is not None:
                d[key] = json.loads(d[key])
        out.append(d)
    return out
