"""The central store's writes: one transaction per batch, exactly once per (site, point, time), and the watermark.

A batch's transaction first locks its site's row in `fleet_sites` (instances sharing the sites serialise
per site, never across sites), then decides from the watermark and `fleet_batches` whether the batch is new.
A new one is COPYed into `samples`; should it still meet a stored reading (a site that lost its outbox
state and numbers again), it is written through a staging table with ON CONFLICT DO NOTHING instead, so the
unique (point_key, time) index keeps every reading once whatever the numbering says. Then the watermark
advances over the batches committed contiguously above it, and the rows below it are deleted. The caller
acknowledges the returned watermark only after the commit. A batch of records (alarm transitions, events,
audit entries) takes the same path, its records stored by service/fleet/records_store.py instead of COPY.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.fleet import records_store
from service.fleet.wire import Batch

log = logging.getLogger(__name__)

_COLUMNS = ["time", "point_key", "value", "quality"]
_STAGE = "fleet_stage"


class Outcome(enum.Enum):
    """What became of a batch."""

    STORED = "stored"
    REPLAYED = "replayed"        # already committed: nothing stored again


@dataclass(frozen=True)
class Result:
    """A batch's outcome and the site's watermark after it (what the acknowledgement says)."""

    outcome: Outcome
    epoch: int
    watermark: int
    rows: int = 0
    lost: int = 0                # batches the site reported lost, skipped by this one
    records: int = 0             # journal records (alarms, events, audit) stored new


class PointKeys:
    """(site, point id) -> key in `fleet_points`, created on first sight; a cache per instance."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], int] = {}

    async def keys(self, conn: asyncpg.Connection, site: str, points: set[str]) -> dict[str, int]:
        """The key of every point of a batch (its site's row exists)."""
        missing = [p for p in points if (site, p) not in self._keys]
        if missing:
            await conn.execute("INSERT INTO fleet_points (site, id) SELECT $1, unnest($2::text[]) "
                               "ON CONFLICT (site, id) DO NOTHING", site, missing)
            for r in await conn.fetch("SELECT id, key FROM fleet_points WHERE site = $1 AND id = ANY($2::text[])",
                                      site, missing):
                self._keys[(site, r["id"])] = r["key"]
        return {p: self._keys[(site, p)] for p in points}


async def ensure_site(conn: asyncpg.Connection, site: str) -> None:
    """The site's row, so its points and batches can refer to it."""
    await conn.execute("INSERT INTO fleet_sites (site) VALUES ($1) ON CONFLICT (site) DO NOTHING", site)


async def write_batch(conn: asyncpg.Connection, keys: PointKeys, batch: Batch, *,
                      always_stage: bool = False) -> Result:
    """Store a batch once (or recognise it as stored) and advance the site's watermark; one transaction.

    `always_stage` writes every batch through the staging table (bench/bench_central.py compares the two).
    """
    site = batch.site
    await ensure_site(conn, site)
    key_of = await keys.keys(conn, site, {s.point for s in batch.samples})
    async with conn.transaction():
        row = await conn.fetchrow("SELECT epoch, watermark FROM fleet_sites WHERE site = $1 FOR UPDATE", site)
        assert row is not None
        epoch, watermark = row["epoch"], row["watermark"]
        lost = 0
        if batch.epoch != epoch:
            # A new outbox at the site (or the first batch ever): its numbering starts again.
            if epoch != 0:
                log.warning("site %s: outbox epoch %d replaces %d: its batch numbers start again at %d "
                            "(readings stay deduplicated)", site, batch.epoch, epoch, batch.base)
            await conn.execute("DELETE FROM fleet_batches WHERE site = $1", site)
            epoch, watermark = batch.epoch, batch.base - 1
            await conn.execute("UPDATE fleet_sites SET epoch = $2, watermark = $3 WHERE site = $1",
                               site, epoch, watermark)
        elif batch.base - 1 > watermark:
            # The site's outbox bound deleted batches it never sent: they cannot come; skip past them.
            lost = batch.base - 1 - watermark
            log.error("site %s: batches %d..%d were lost at the site (its outbox overflowed)", site,
                      watermark + 1, batch.base - 1)
            await conn.execute("DELETE FROM fleet_batches WHERE site = $1 AND seq < $2", site, batch.base)
            watermark = batch.base - 1
            await conn.execute("UPDATE fleet_sites SET watermark = $2, lost_batches = lost_batches + $3 "
                               "WHERE site = $1", site, watermark, lost)
        if batch.seq <= watermark or await conn.fetchval(
                "SELECT true FROM fleet_batches WHERE site = $1 AND seq = $2", site, batch.seq):
            await conn.execute("UPDATE fleet_sites SET replayed_batches = replayed_batches + 1 WHERE site = $1", site)
            return Result(Outcome.REPLAYED, epoch, watermark, 0, lost)
        records = [(s.source_time, key_of[s.point], s.value, int(s.quality)) for s in batch.samples]
        rows = await _copy(conn, records, always_stage)
        new_records = await records_store.store(conn, site, batch.records) if batch.records else 0
        await conn.execute("INSERT INTO fleet_batches (site, seq, samples) VALUES ($1, $2, $3)",
                           site, batch.seq, len(records))
        if batch.seq == watermark + 1:
            # The end of the run of committed batches that starts here.
            watermark = await conn.fetchval(
                """SELECT min(b.seq) FROM fleet_batches b WHERE b.site = $1 AND b.seq >= $2
                   AND NOT EXISTS (SELECT 1 FROM fleet_batches c WHERE c.site = b.site AND c.seq = b.seq + 1)""",
                site, batch.seq)
            await conn.execute("DELETE FROM fleet_batches WHERE site = $1 AND seq <= $2", site, watermark)
        await conn.execute(
            """UPDATE fleet_sites SET watermark = $2, batches = batches + 1, samples = samples + $3,
                 last_batch_seq = greatest(last_batch_seq, $4),
                 last_batch_created = greatest(last_batch_created, $5), last_commit_at = now(),
                 backlog_samples = $6, backlog_batches = $7 WHERE site = $1""",
            site, watermark, rows, batch.seq, batch.created, batch.backlog_samples, batch.backlog_batches)
        return Result(Outcome.STORED, epoch, watermark, rows, lost, new_records)


async def _copy(conn: asyncpg.Connection, records: list[tuple[datetime, int, float | None, int]],
                always_stage: bool = False) -> int:
    """COPY straight into samples; through the staging table only if a reading is stored already."""
    if not records:
        return 0
    if not always_stage:
        try:
            async with conn.transaction():  # a savepoint: a refused COPY leaves the batch's transaction usable
                await conn.copy_records_to_table("samples", records=records, columns=_COLUMNS)
            return len(records)
        except asyncpg.UniqueViolationError:
            pass
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE samples) ON COMMIT DELETE ROWS")
    await conn.copy_records_to_table(_STAGE, records=records, columns=_COLUMNS)
    status = await conn.execute(f"INSERT INTO samples SELECT * FROM {_STAGE} ON CONFLICT DO NOTHING")
    await conn.execute(f"TRUNCATE {_STAGE}")
    return int(status.split()[-1])


async def current_watermark(conn: asyncpg.Connection, site: str) -> tuple[int, int] | None:
    """(epoch, watermark) of a site, or None if it never sent."""
    row = await conn.fetchrow("SELECT epoch, watermark FROM fleet_sites WHERE site = $1", site)
    return None if row is None else (row["epoch"], row["watermark"])


@dataclass(frozen=True)
class SiteRow:
    """A site as the database knows it."""

    site: str
    epoch: int
    watermark: int
    batches: int
    samples: int
    replayed_batches: int
    lost_batches: int
    last_batch_created: datetime | None
    last_commit_at: datetime | None
    backlog_samples: int
    backlog_batches: int


async def read_sites(conn: asyncpg.Connection) -> list[SiteRow]:
    """Every site the store has heard of."""
    rows = await conn.fetch("""SELECT site, epoch, watermark, batches, samples, replayed_batches, lost_batches,
                                      last_batch_created, last_commit_at, backlog_samples, backlog_batches
                               FROM fleet_sites ORDER BY site""")
    return [SiteRow(**dict(r)) for r in rows]
