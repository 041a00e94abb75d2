"""The audit log: who asked for what to be written, when, and what came of it (append-only table audit_log)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from service.model import utcnow

if TYPE_CHECKING:
    from service.storage.database import Database
    from service.storage.journal import Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    """One write request (operator API, SCADA, controller), accepted or not."""

    principal: str
    role: str
    action: str
    target: str
    requested: Any
    applied: Any
    outcome: str
    detail: str = ""


AuditSink = Callable[[AuditEntry], Awaitable[None]]


class AuditLog:
    """Appends entries: through the durable journal when there is one, so an entry outlives a database outage."""

    def __init__(self, db: Database | asyncpg.Pool, journal: Journal | None = None) -> None:
        self._db, self._journal = db, journal
        self.failures = 0

    async def record(self, entry: AuditEntry) -> None:
        """Append one entry (stamped now); never raises to the requester."""
        data = {"time": utcnow().isoformat(), **asdict(entry)}
        if self._journal is not None:
            try:
                await self._journal.submit("audit", data)
                return
            except OSError as err:  # the local disk failed: fall back to the database directly
                log.error("audit entry not journaled (%s): writing it to the database directly", err)
        try:
            async with self._db.acquire() as conn:
                await apply_audit(conn, data)
        except (OSError, asyncpg.PostgresError) as err:
            # The write itself already happened or was refused; losing the trail must at least be loud.
            self.failures += 1
            log.error("audit entry not stored (%s): %s", err, entry)


async def apply_audit(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    """Insert one journaled audit entry at its original time."""
    await conn.execute(
        "INSERT INTO audit_log (time, principal, role, action, target, requested, applied, outcome, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)",
        datetime.fromisoformat(data["time"]), data["principal"], data["role"], data["action"], data["target"],
        _json(data["requested"]), _json(data["applied"]), data["outcome"], data.get("detail", ""))


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


async def read_audit(pool: Database | asyncpg.Pool, *, limit: int, before: int | None = None,
                     target: str | None = None) -> list[dict[str, Any]]:
    """Newest first; `before` is the seq cursor of the previous page."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT seq, time, principal, role, action, target, requested, applied, outcome, detail "
            "FROM audit_log WHERE ($1::bigint IS NULL OR seq < $1) AND ($2::text IS NULL OR target = $2) "
            "ORDER BY seq DESC LIMIT $3",
            before, target, limit)
    out = []
    for r in rows:
        d = dict(r)
        for key in ("requested", "applied"):
            d[key] = json.loads(d[key]) if d[key] is not None else None
        out.append(d)
    return out
