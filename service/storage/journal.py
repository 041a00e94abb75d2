"""The durable journal of records that must reach the database exactly once: audit entries, alarm transitions,
events, manual meter readings.

Samples have the spool; this is its counterpart for the few, precious records a person or the plant made.
Every record is appended (and fsync'd) here before anything else happens to it, so an accepted operator
action has its audit entry even if the database is away and the process is killed the next moment. A
drain then applies the records in order, each in one transaction with its id in `journal_applied`: a
record applied just before a crash, whose cursor did not move yet, is recognised and skipped, never
stored twice.

Layout: `journal.jsonl`, one JSON object per line (`id`, `kind`, `data`), and `cursor`, the byte offset
up to which every record is applied. A torn last line (a crash mid-append) has no newline and is cut
off at open. Once everything is applied the file is emptied, so it holds only what waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from service.config import DatabaseConfig
from service.private_files import write_private
from service.storage.database import DB_ERRORS as DB_ERRORS  # re-exported: the API catches it from here
from service.storage.database import Database
from service.storage.spool import spool_path

log = logging.getLogger(__name__)

Apply = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[None]]
# DB_ERRORS (service/storage/database.py): records stay queued and are applied again, so taking any of them
# as the database away loses nothing, where letting one through would stop the service.


def journal_path(spool_dir: str | Path, db: DatabaseConfig) -> Path:
    """The journal directory for one database, beside that database's spool."""
    spool = spool_path(spool_dir, db)
    return spool.with_name(spool.name + ".journal")


async def apply_event(conn: asyncpg.Connection, data: dict[str, Any]) -> None:
    """Insert one journaled service event (table events) at its original time."""
    await conn.execute("INSERT INTO events (time, source, kind, severity, message, data) "
                       "VALUES ($1, $2, $3, $4, $5, $6::jsonb)", datetime.fromisoformat(data["time"]),
                       data["source"], data["kind"], data.get("severity", "info"), data["message"],
                       json.dumps(data.get("data", {})))


@dataclass
class JournalStats:
    """Counters for health and metrics."""

    pending: int = 0           # records not yet in the database
    appended: int = 0
    applied: int = 0
    skipped: int = 0           # found applied already (a replay after a crash)
    refused: int = 0           # the database refused a record for good (e.g. a duplicate manual reading)
    corrupt: int = 0           # unreadable lines cut off or skipped at open


class Journal:
    """Append-first, apply-in-order store of records for the database."""

    def __init__(self, directory: Path, db: Database, appliers: dict[str, Apply],
                 refused: Callable[[str, dict[str, Any], BaseException], Awaitable[None]] | None = None) -> None:
        self.dir, self._db, self._appliers, self._on_refused = Path(directory), db, appliers, refused
        self.stats = JournalStats()
        self._file = self.dir / "journal.jsonl"
        self._cursor_file = self.dir / "cursor"
        self._drain_lock = asyncio.Lock()  # one drain at a time: records reach the database in order
        self._file_lock = asyncio.Lock()   # appends and emptying the file; never held across a database call
        self._changed = asyncio.Event()
        self._fd: int | None = None
        self._cursor = 0
        self.apply_timeout_s = 10.0

    # ---- the file --------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating it 0700) and recover: cut a torn tail, count what waits."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(self._file, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        raw = self._file.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            log.warning("journal %s: cutting %d bytes of a torn last record", self._file, len(raw) - end)
            os.ftruncate(self._fd, end)
            self.stats.corrupt += 1
        try:
            self._cursor = int(self._cursor_file.read_text() or 0)
        except (FileNotFoundError, ValueError):
            self._cursor = 0
        if self._cursor > end:  # emptied after the last apply, cursor not reset before a crash
            self._cursor = 0
        self.stats.pending = raw[self._cursor:end].count(b"\n")
        if self.stats.pending:
            log.info("journal %s holds %d records from before; they are stored when the database answers",
                     self.dir, self.stats.pending)

    def close(self) -> None:
        """Close the file (appended records are durable already)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append_sync(self, line: bytes) -> None:
        assert self._fd is not None, "journal is not open"
        os.write(self._fd, line)
        os.fsync(self._fd)

    def _set_cursor(self, offset: int) -> None:
        write_private(self._cursor_file, str(offset))
        self._cursor = offset

    def _pending_lines(self) -> list[tuple[int, bytes]]:
        """(end offset, line) of every record after the cursor."""
        with self._file.open("rb") as f:
            f.seek(self._cursor)
            data = f.read()
        out, off = [], self._cursor
        for line in data.splitlines(keepends=True):
            off += len(line)
            if line.endswith(b"\n"):
                out.append((off, line))
        return out

    # ---- records ---------------------------------------------------------------------------------

    async def append(self, kind: str, data: dict[str, Any]) -> str:
        """Store a record durably and return its id; it reaches the database by the drain."""
        if kind not in self._appliers:
            raise ValueError(f"journal has no applier for '{kind}'")
        rid = uuid.uuid4().hex
        line = (json.dumps({"id": rid, "kind": kind, "data": data}, default=str, separators=(",", ":"))
                + "\n").encode()
        async with self._file_lock:
            await asyncio.to_thread(self._append_sync, line)
            self.stats.appended += 1
            self.stats.pending += 1
        self._changed.set()
        return rid

    async def submit(self, kind: str, data: dict[str, Any], wait_s: float = 2.0) -> bool:
        """Append, then try to store it at once; True when it is in the database when this returns."""
        await self.append(kind, data)
        if not self._db.up:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.drain()), wait_s)
        return self.stats.pending == 0

    async def drain(self) -> int:
        """Apply every waiting record in order; return how many were applied. Stops at the first failure."""
        done = 0
        async with self._drain_lock:
            if not self.stats.pending:
                return 0
            applied_to = self._cursor
            try:
                for end, line in await asyncio.to_thread(self._pending_lines):
                    await asyncio.wait_for(self._apply_line(line), self.apply_timeout_s)
                    applied_to = end
                    self.stats.pending = max(0, self.stats.pending - 1)
                    done += 1
            except DB_ERRORS as err:
                self._db.failed(err)
                log.debug("journal drain stopped: %s", err)
            # The cursor moves once per drain, not per record: a crash before it moves replays records
            # whose ids journal_applied already holds, and those are skipped.
            if applied_to != self._cursor:
                await asyncio.to_thread(self._set_cursor, applied_to)
            async with self._file_lock:  # empty the file only if nothing was appended meanwhile
                if self.stats.pending == 0 and os.fstat(self._fd or -1).st_size == self._cursor:
                    await asyncio.to_thread(self._compact)
        return done

    def _compact(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._set_cursor(0)

    async def _apply_line(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            rid, kind, data = str(rec["id"]), str(rec["kind"]), rec["data"]
            apply = self._appliers[kind]
        except (ValueError, KeyError, TypeError) as err:
            self.stats.corrupt += 1
            log.error("journal: skipping an unreadable record (%s): %.200r", err, line)
            return
        async with self._db.acquire() as conn:
            try:
                async with conn.transaction():
                    fresh = await conn.fetchval("INSERT INTO journal_applied (id) VALUES ($1) "
                                                "ON CONFLICT DO NOTHING RETURNING true", uuid.UUID(rid))
                    if not fresh:
                        self.stats.skipped += 1
                        return
                    await apply(conn, data)
                self.stats.applied += 1
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as err:
                # The database will never take this record: keep the order moving, and say so.
                self.stats.refused += 1
                log.error("journal: the database refused a %s record for good: %s", kind, err)
                if self._on_refused is not None:
                    await self._on_refused(kind, data, err)

    async def run(self) -> None:
        """Drain whenever something waits and the database is up, until cancelled."""
        while True:
            if self.stats.pending and self._db.up:
                before = self.stats.pending
                await self.drain()
                if self.stats.pending and self.stats.pending >= before:
                    await asyncio.sleep(1.0)  # it failed: the database supervisor notices; try again soon
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)
