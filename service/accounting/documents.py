"""Settlement documents as users see them: closed versions from the database, open ones computed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from service.accounting.engine import INCOMPLETE, AccountingError, settle_month
from service.accounting.settlement import Settlement
from service.accounting.store import closed_settlements
from service.config import HeatrecConfig


async def period_documents(conn: asyncpg.Connection, cfg: HeatrecConfig, period: str | None,
                           contract: str | None = None, all_versions: bool = False,
                           as_of: datetime | None = None) -> list[dict[str, Any]]:
    """Closed settlements (latest version unless all_versions); for a period also the open ones, computed."""
    if cfg.accounting is not None and contract is not None and contract not in {c.id for c in
                                                                                 cfg.accounting.contracts}:
        raise AccountingError(f"no contract '{contract}' in [accounting]")
    docs = await closed_settlements(conn, period, contract, all_versions)
    if period is None or cfg.accounting is None:
        return docs
    done = {d["contract"] for d in docs}
    todo = [c.id for c in cfg.accounting.contracts if c.id not in done and contract in (None, c.id)]
    for s in await settle_month(conn, cfg, period, todo, as_of) if todo else []:
        docs.append(s.as_dict() | {"status": "open", "version": None})
    return docs


def close_refusal(s: Settlement, incomplete_reason: str) -> str | None:
    """Why this settlement may not be closed yet, or None: a period must be over and its data in."""
    if s.as_of is not None and s.as_of < s.end:
        return (f"settlement {s.period} of '{s.contract_id}' cannot be closed before its period has ended "
                f"({s.end.isoformat()}; now {s.as_of.isoformat(timespec='seconds')}): a closed version is "
                "immutable and would hold a part-month")
    if INCOMPLETE in s.flags and not incomplete_reason.strip():
        return (f"settlement {s.period} of '{s.contract_id}' is incomplete (part of the period has neither "
                "register nor sensor data): wait for the data, enter manual readings "
                "(POST /api/v1/meters/{id}/readings), or close with incomplete_reason saying why")
    return None
