"""The point registry: metadata rows in `points` and the id → key map the writer needs."""

from __future__ import annotations

import asyncpg

from service.config import HeatrecConfig


async def sync_points(conn: asyncpg.Connection, cfg: HeatrecConfig) -> dict[str, int]:
    """Upsert every configured point's metadata; return the id → key map of all known points."""
    rows = [(f"{d.id}.{p.id}", d.id, p.unit, p.kind, p.writable, p.min, p.max, p.description)
            for d in cfg.devices for p in d.points]
    if rows:
        await conn.executemany(
            """INSERT INTO points (id, device, unit, kind, writable, min, max, description)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (id) DO UPDATE SET device = EXCLUDED.device, unit = EXCLUDED.unit,
                 kind = EXCLUDED.kind, writable = EXCLUDED.writable, min = EXCLUDED.min,
                 max = EXCLUDED.max, description = EXCLUDED.description, updated_at = now()""",
            rows)
    return {r["id"]: r["key"] for r in await conn.fetch("SELECT id, key FROM points")}


async def register_point(conn: asyncpg.Connection, point_id: str) -> int:
    """Key of a point that is not in the config (e.g. a driver's own status point)."""
    device = point_id.split(".", 1)[0]
    key = await conn.fetchval(
        """INSERT INTO points (id, device) VALUES ($1, $2)
           ON CONFLICT (id) DO UPDATE SET updated_at = points.updated_at RETURNING key""",
        point_id, device)
    return int(key)
