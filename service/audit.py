"""The audit log: who asked for what to be written, when, and what came of it (append-only table audit_log)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

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
    """Writes entries to the database; a failed insert is logged with the entry, never raised to the requester."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.failures = 0

    async def record(self, entry: AuditEntry) -> None:
        """Append one entry."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO audit_log (principal, role, action, target, requested, applied, outcome, detail) "
                    "VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8)",
                    entry.principal, entry.role, entry.action, entry.target, _json(entry.requested),
                    _json(entry.applied), entry.outcome, entry.detail)
        except (OSError, asyncpg.PostgresError) as err:
            # The write itself already happened or was refused; losing the trail must at least be loud.
            self.failures += 1
            log.error("audit entry not stored (%s): %s", err, entry)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


async def read_audit(pool: asyncpg.Pool, *, limit: int, before: int | None = None,
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
