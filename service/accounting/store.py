"""Database access for accounting: register rows, manual readings, replacements, settlements."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from service.accounting.metering import PowerSample
from service.accounting.registers import Reading, RegisterSpec, Replacement
from service.accounting.settlement import Settlement
from service.errors import Conflict


class SettlementConflict(Conflict):
    """A settlement version exists already and the request is not a correction with a reason."""


async def point_key(conn: asyncpg.Connection, point_id: str) -> int | None:
    """Integer key of a point id, None when it has never been stored."""
    key = await conn.fetchval("SELECT key FROM points WHERE id = $1", point_id)
    return int(key) if key is not None else None


async def fetch_register(conn: asyncpg.Connection, point_id: str, start: datetime, end: datetime,
                         margin: timedelta) -> list[Reading]:
    """Good readings of a register in [start, end] plus the two nearest on either side within margin."""
    key = await point_key(conn, point_id)
    if key is None:
        return []
    return await fetch_register_by_key(conn, key, start, end, margin)


async def fetch_register_by_key(conn: asyncpg.Connection, key: int, start: datetime, end: datetime,
                                margin: timedelta) -> list[Reading]:
    """fetch_register for a point's key in `samples` (a central store's site points have keys of their own)."""
    rows = await conn.fetch(
        """(SELECT time, value FROM samples WHERE point_key = $1 AND quality <= 1 AND value IS NOT NULL
              AND time < $2 AND time >= $2::timestamptz - $4::interval ORDER BY time DESC LIMIT 2)
           UNION ALL
           (SELECT time, value FROM samples WHERE point_key = $1 AND quality <= 1 AND value IS NOT NULL
              AND time >= $2 AND time <= $3)
           UNION ALL
           (SELECT time, value FROM samples WHERE point_key = $1 AND quality <= 1 AND value IS NOT NULL
              AND time > $3 AND time <= $3::timestamptz + $4::interval ORDER BY time LIMIT 2)""",
        key, start, end, margin)
    return [Reading(r["time"], float(r["value"])) for r in rows]


async def fetch_manual(conn: asyncpg.Connection, meter_id: str, start: datetime, end: datetime,
                       margin: timedelta) -> list[Reading]:
    """Manual readings of a meter around [start, end]."""
    rows = await conn.fetch("SELECT time, value_gj FROM manual_readings WHERE meter_id = $1 "
                            "AND time >= $2 AND time <= $3 ORDER BY time", meter_id, start - margin, end + margin)
    return [Reading(r["time"], float(r["value_gj"]), manual=True) for r in rows]


async def fetch_replacements(conn: asyncpg.Connection, meter_id: str, start: datetime, end: datetime,
                             margin: timedelta) -> list[Replacement]:
    """Recorded replacements of a meter around [start, end]."""
    rows = await conn.fetch("SELECT time, old_final_gj, new_initial_gj FROM meter_replacements WHERE meter_id = $1 "
                            "AND time >= $2 AND time <= $3 ORDER BY time", meter_id, start - margin, end + margin)
    return [Replacement(r["time"], float(r["old_final_gj"]), float(r["new_initial_gj"])) for r in rows]


async def fetch_power(conn: asyncpg.Connection, flow: str, tf: str, tr: str, start: datetime,
                      end: datetime) -> list[PowerSample]:
    """Flow and temperatures at common timestamps (one telegram) in [start, end)."""
    rows = await conn.fetch(
        """SELECT f.time, f.value AS q, a.value AS tf, b.value AS tr
           FROM samples f
           JOIN samples a ON a.time = f.time AND a.point_key = (SELECT key FROM points WHERE id = $2)
           JOIN samples b ON b.time = f.time AND b.point_key = (SELECT key FROM points WHERE id = $3)
           WHERE f.point_key = (SELECT key FROM points WHERE id = $1) AND f.time >= $4 AND f.time < $5
             AND f.quality <= 1 AND a.quality <= 1 AND b.quality <= 1
             AND f.value IS NOT NULL AND a.value IS NOT NULL AND b.value IS NOT NULL
           ORDER BY f.time""", flow, tf, tr, start, end)
    return [PowerSample(r["time"], float(r["q"]), float(r["tf"]), float(r["tr"])) for r in rows]


@dataclass(frozen=True)
class FastTotal:
    """A register's energy in [start, end) computed in SQL, with what the SQL could not handle."""

    energy: float
    anomalies: int  # faulty steps or gaps: the caller must use the full logic instead
    first: datetime | None  # earliest reading used
    last: datetime | None  # latest reading used


async def sql_register_totals(conn: asyncpg.Connection, points: Sequence[tuple[str, RegisterSpec]],
                              start: datetime, end: datetime, margin: timedelta) -> dict[str, FastTotal]:
    """Per register: sum of plausible (or wrapped) steps overlapping [start, end), spread by time, in SQL.

    The same arithmetic as registers.register_steps for the clean case; any step it cannot judge on
    its own (negative, implausibly fast, or across a gap) is counted as an anomaly instead.
    """
    ids = [p for p, _ in points]
    # Per meter, a LATERAL subquery over that meter's rows only: the window then runs in the order of the
    # (point_key, time) index, with no sort, and the aggregate needs no grouping. JIT off: compiling this
    # plan costs more (about 0.5 s) than running it.
    async with conn.transaction():
        await conn.execute("SET LOCAL jit = off")
        rows = await _totals_query(conn, ids, points, start, end, margin)
    return {r["id"]: FastTotal(float(r["energy"]), int(r["anomalies"]), r["first"], r["last"]) for r in rows}


async def _totals_query(conn: asyncpg.Connection, ids: list[str], points: Sequence[tuple[str, RegisterSpec]],
                        start: datetime, end: datetime, margin: timedelta) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT m.id, a.energy, a.anomalies, a.first, a.last
           FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[])
                AS m(id, rate, gap, wrap, res)
           JOIN points p ON p.id = m.id
           CROSS JOIN LATERAL (
             SELECT coalesce(sum(e.energy * e.ov / e.dt), 0) AS energy,
                    count(*) FILTER (WHERE e.energy IS NULL) AS anomalies,
                    min(e.pt) AS first, max(e.time) AS last
             FROM (
               SELECT st.pt, st.time, st.dt, st.ov,
                      CASE WHEN st.dt > m.gap THEN NULL
                           WHEN st.d >= -m.res AND st.d <= m.rate * st.dt * 1.2 + m.res THEN greatest(st.d, 0)
                           WHEN m.wrap IS NOT NULL AND st.d < 0 AND st.d + m.wrap >= 0
                                AND st.d + m.wrap <= m.rate * st.dt * 1.2 + m.res THEN st.d + m.wrap
                      END AS energy
               FROM (
                 SELECT r.pt, r.time, r.value - r.pv AS d,
                        date_part('epoch', r.time - r.pt) AS dt,
                        date_part('epoch', least(r.time, $7) - greatest(r.pt, $6)) AS ov
                 FROM (
                   SELECT s.time, s.value, lag(s.value) OVER w AS pv, lag(s.time) OVER w AS pt
                   FROM samples s
                   WHERE s.point_key = p.key AND s.quality <= 1 AND s.value IS NOT NULL
                     AND s.time >= $6::timestamptz - $8::interval AND s.time <= $7::timestamptz + $8::interval
                   WINDOW w AS (ORDER BY s.time)) r
                 WHERE r.pv IS NOT NULL AND r.time > $6 AND r.pt < $7) st) e) a""",
        ids, [s.max_rate_per_s for _, s in points], [s.gap_s for _, s in points],
        [s.wrap for _, s in points], [s.resolution for _, s in points], start, end, margin)


async def add_manual_reading(conn: asyncpg.Connection, meter_id: str, time: datetime, value_gj: float,
                             by: str, note: str) -> int:
    """Store a manual reading; SettlementConflict when the meter has one at that time already."""
    try:
        return int(await conn.fetchval(
            "INSERT INTO manual_readings (meter_id, time, value_gj, entered_by, note) VALUES ($1, $2, $3, $4, $5) "
            "RETURNING id", meter_id, time, value_gj, by, note))
    except asyncpg.UniqueViolationError:
        raise SettlementConflict(f"meter '{meter_id}' has a manual reading at {time.isoformat()} already") from None


async def add_replacement(conn: asyncpg.Connection, meter_id: str, time: datetime, old_serial: str,
                          new_serial: str, old_final_gj: float, new_initial_gj: float, by: str) -> int:
    """Record a meter exchange."""
    try:
        return int(await conn.fetchval(
            "INSERT INTO meter_replacements (meter_id, time, old_serial, new_serial, old_final_gj, new_initial_gj, "
            "entered_by) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            meter_id, time, old_serial, new_serial, old_final_gj, new_initial_gj, by))
    except asyncpg.UniqueViolationError:
        raise SettlementConflict(f"meter '{meter_id}' has a replacement at {time.isoformat()} already") from None


async def save_settlement(conn: asyncpg.Connection, s: Settlement, by: str, reason: str,
                          correction: bool) -> dict[str, Any]:
    """Close a settlement (version 1) or store a correction (next version, reason required)."""
    async with conn.transaction():
        # Serialise closers of the same contract and period so versions stay gap-free.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{s.contract_id}/{s.period}")
        latest = await conn.fetchval("SELECT max(version) FROM settlements WHERE contract_id = $1 AND period = $2",
                                     s.contract_id, s.period)
        if latest is not None and not correction:
            raise SettlementConflict(f"settlement {s.period} of '{s.contract_id}' is closed (version {latest}): "
                                     "send a correction with a reason")
        if latest is None and correction:
            raise SettlementConflict(f"settlement {s.period} of '{s.contract_id}' is not closed yet: close it first")
        if correction and not reason.strip():
            raise SettlementConflict("a correction needs a reason")
        version = (latest or 0) + 1
        doc = s.as_dict() | {"version": version, "reason": reason, "closed_by": by}
        row = await conn.fetchrow(
            """INSERT INTO settlements (contract_id, period, version, period_start, period_end, delivered_gj,
                 estimated_gj, charge_dkk, charge_payer, amount_dkk, allowed_price, provisional, document, reason,
                 closed_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14, $15)
               RETURNING closed_at""",
            s.contract_id, s.period, version, s.start, s.end, s.delivered_gj, s.estimated_gj, s.charge_dkk,
            s.charge_payer, s.amount_dkk, s.allowed_price_dkk_per_gj, s.provisional, json.dumps(doc), reason, by)
    return doc | {"status": "closed", "closed_at": row["closed_at"].isoformat()}


async def closed_settlements(conn: asyncpg.Connection, period: str | None, contract: str | None,
                             all_versions: bool) -> list[dict[str, Any]]:
    """Stored settlement documents, latest version only unless all_versions."""
    rows = await conn.fetch(
        """SELECT document, closed_at, version,
                  version = max(version) OVER (PARTITION BY contract_id, period) AS latest
           FROM settlements WHERE ($1::text IS NULL OR period = $1) AND ($2::text IS NULL OR contract_id = $2)
           ORDER BY period, contract_id, version""", period, contract)
    out = []
    for r in rows:
        if all_versions or r["latest"]:
            out.append(json.loads(r["document"]) | {"status": "closed", "closed_at": r["closed_at"].isoformat(),
                                                     "latest": r["latest"]})
    return out


HOUR = timedelta(hours=1)


def hour_aligned(t: datetime) -> bool:
    """True for a whole UTC hour (local midnights are, in zones with whole-hour offsets)."""
    return t.timestamp() % 3600 == 0


def _floor_hour(t: datetime) -> datetime:
    return t - timedelta(seconds=t.timestamp() % 3600)


async def _sample_hull(conn: asyncpg.Connection, key: int, a: datetime,
                       b: datetime) -> tuple[datetime, datetime] | None:
    """The first and last sample time of a point in [a, b) (each by the (point_key, time) index), or None."""
    row = await conn.fetchrow(
        """SELECT (SELECT time FROM samples WHERE point_key = $1 AND time >= $2 AND time < $3 ORDER BY time LIMIT 1)
                    AS first,
                  (SELECT time FROM samples WHERE point_key = $1 AND time >= $2 AND time < $3
                   ORDER BY time DESC LIMIT 1) AS last""", key, a, b)
    if row is None or row["first"] is None:
        return None
    return row["first"], row["last"]


async def build_register_hours(conn: asyncpg.Connection, key: int, spec: RegisterSpec, a: datetime, b: datetime,
                               margin: timedelta) -> None:
    """(Re)compute the hourly roll-up of one register for the hours in [a, b) from the raw samples.

    Same step arithmetic as sql_register_totals; a step is split between the (at most two, as
    gap_s <= 1 h) hours it overlaps. Faulty steps count as anomalies in the hours they touch.
    Rows are written only where the register has samples (from the hour before its first in [a, b) to
    the hour after its last): the hours outside hold nothing, and a range of a century asked of a
    register with a month of data writes a month of rows, not a century's.
    """
    hull = await _sample_hull(conn, key, a, b)
    rows_from, rows_to = a, a  # no samples: no rows
    if hull is not None:
        rows_from = max(a, _floor_hour(hull[0]) - HOUR)
        rows_to = min(b, _floor_hour(hull[1]) + 2 * HOUR)
    async with conn.transaction():
        await conn.execute("SET LOCAL jit = off")
        await conn.execute("DELETE FROM register_hours WHERE point_key = $1 AND hour >= $2 AND hour < $3", key, a, b)
        if rows_to <= rows_from:
            return
        await conn.execute(
            """WITH r AS (
                 SELECT s.time, s.value, lag(s.value) OVER w AS pv, lag(s.time) OVER w AS pt
                 FROM samples s
                 WHERE s.point_key = $1 AND s.quality <= 1 AND s.value IS NOT NULL
                   AND s.time >= $2::timestamptz - $8::interval AND s.time <= $3::timestamptz + $8::interval
                 WINDOW w AS (ORDER BY s.time)),
               st AS (
                 SELECT x.pt, x.time, x.dt,
                        CASE WHEN x.dt > $5::float8 THEN NULL
                             WHEN x.d >= -$7::float8 AND x.d <= $4::float8 * x.dt * 1.2 + $7::float8
                               THEN greatest(x.d, 0)
                             WHEN $6::float8 IS NOT NULL AND x.d < 0 AND x.d + $6::float8 >= 0
                                  AND x.d + $6::float8 <= $4::float8 * x.dt * 1.2 + $7::float8 THEN x.d + $6::float8
                        END AS e
                 FROM (SELECT r.pt, r.time, r.value - r.pv AS d, date_part('epoch', r.time - r.pt) AS dt
                       FROM r WHERE r.pv IS NOT NULL AND r.time > $2 AND r.pt < $3) x),
               parts AS (
                 SELECT time_bucket('1 hour', pt) AS h, e, dt,
                        date_part('epoch', least(time, time_bucket('1 hour', pt) + interval '1 hour') - pt) AS ov
                 FROM st
                 UNION ALL
                 SELECT time_bucket('1 hour', time), e, dt, date_part('epoch', time - time_bucket('1 hour', time))
                 FROM st WHERE time_bucket('1 hour', time) > time_bucket('1 hour', pt)),
               agg AS (
                 SELECT h, coalesce(sum(e * ov / dt), 0) AS energy, count(*) FILTER (WHERE e IS NULL) AS anomalies,
                        sum(ov) AS covered
                 FROM parts WHERE h >= $2 AND h < $3 GROUP BY h),
               cnt AS (
                 SELECT time_bucket('1 hour', time) AS h, count(*) AS n FROM samples
                 WHERE point_key = $1 AND time >= $2 AND time < $3 GROUP BY 1)
             INSERT INTO register_hours (point_key, hour, energy, anomalies, covered_s, samples)
             SELECT $1, g.h, coalesce(agg.energy, 0), coalesce(agg.anomalies, 0), coalesce(agg.covered, 0),
                    coalesce(cnt.n, 0)
             FROM generate_series($9::timestamptz, $10::timestamptz - interval '1 hour', interval '1 hour') AS g(h)
             LEFT JOIN agg ON agg.h = g.h LEFT JOIN cnt ON cnt.h = g.h""",
            key, a, b, spec.max_rate_per_s, spec.gap_s, spec.wrap, spec.resolution, margin, rows_from, rows_to)


async def _rollup_state(conn: asyncpg.Connection, key: int, start: datetime,
                        end: datetime) -> FastTotal | Literal["stale", "unclean"]:
    """The roll-up's energy for [start, end) if every hour is there, clean, covered and not stale.

    Only the hours around the two ends are checked against live sample counts on the way to a clean
    answer: a reading that arrives late inside a clean range cannot change its total (the register
    differences telescope, and a reading that does not fit is discarded as a glitch by the full logic
    too), so only readings near the ends, which move the split of the boundary steps, can. An unclean
    range is checked in full, since late readings may have healed it.
    """
    a, s1, e1, b = start - HOUR, start + HOUR, end - HOUR, end + HOUR  # the edge hours: [a, s1) .. [e1, b)
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE hour >= $2 AND hour < $3) AS hours,
                  coalesce(sum(energy) FILTER (WHERE hour >= $2 AND hour < $3), 0) AS energy,
                  coalesce(sum(anomalies) FILTER (WHERE hour >= $2 AND hour < $3), 0) AS anomalies,
                  min(covered_s) FILTER (WHERE hour >= $2 AND hour < $3) AS covered,
                  coalesce(sum(samples) FILTER (WHERE hour < $5 OR hour >= $6), 0) AS edge_samples,
                  count(*) FILTER (WHERE hour < $5 OR hour >= $6) AS edges,
                  coalesce(sum(samples), 0) AS samples
           FROM register_hours WHERE point_key = $1 AND hour >= $4 AND hour < $7""", key, start, end, a, s1, e1, b)
    live_edges = await conn.fetchval(
        """SELECT (SELECT count(*) FROM samples WHERE point_key = $1 AND time >= $2 AND time < $3)
                + (SELECT count(*) FROM samples WHERE point_key = $1 AND time >= $4 AND time < $5)""",
        key, a, s1, e1, b)
    expected = round((end - start).total_seconds() / 3600)
    if row["hours"] != expected or row["edges"] != 4 or row["edge_samples"] != live_edges:
        return "stale"  # never built for these hours, or readings arrived (or were dropped) near the ends
    if row["anomalies"] == 0 and row["covered"] is not None and row["covered"] >= 3600 - 1e-6:
        return FastTotal(float(row["energy"]), 0, start, end)
    live = await conn.fetchval("SELECT count(*) FROM samples WHERE point_key = $1 AND time >= $2 AND time < $3",
                               key, a, b)
    return "stale" if live != row["samples"] else "unclean"


async def rollup_total(conn: asyncpg.Connection, point_id: str, spec: RegisterSpec, start: datetime, end: datetime,
                       margin: timedelta) -> FastTotal | None:
    """A register's energy in the hour-aligned [start, end) from the hourly roll-up, rebuilt when stale.

    None when the data is not clean there (faults, gaps, missing hours): the caller uses the full logic.
    """
    key = await point_key(conn, point_id)
    if key is None or spec.gap_s > 3600 or not (hour_aligned(start) and hour_aligned(end)) or end <= start:
        return None
    # An hour without a sample is never clean (no step of at most gap_s covers it): a range whose first or
    # last hour has none is answered by the full logic at once, and never makes the roll-up build its hours.
    if not await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM samples WHERE point_key = $1 AND time >= $2 AND time < $3)
                      AND EXISTS (SELECT 1 FROM samples WHERE point_key = $1 AND time >= $4 AND time < $5)""",
            key, start, start + HOUR, end - HOUR, end):
        return None
    state = await _rollup_state(conn, key, start, end)
    if state == "stale":
        await build_register_hours(conn, key, spec, start - HOUR, end + HOUR, margin)
        state = await _rollup_state(conn, key, start, end)
    return state if isinstance(state, FastTotal) else None


async def apply_manual_reading(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    """Store a manual reading queued in the journal during a database outage (a duplicate raises)."""
    await conn.execute(
        "INSERT INTO manual_readings (meter_id, time, value_gj, entered_by, note, entered_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)", data["meter_id"], datetime.fromisoformat(data["time"]),
        float(data["value_gj"]), data["entered_by"], data["note"], datetime.fromisoformat(data["entered_at"]))


async def apply_replacement(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    """Store a meter exchange queued in the journal during a database outage (a duplicate raises)."""
    await conn.execute(
        "INSERT INTO meter_replacements (meter_id, time, old_serial, new_serial, old_final_gj, new_initial_gj, "
        "entered_by, entered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", data["meter_id"],
        datetime.fromisoformat(data["time"]), data["old_serial"], data["new_serial"], float(data["old_final_gj"]),
        float(data["new_initial_gj"]), data["entered_by"], datetime.fromisoformat(data["entered_at"]))
