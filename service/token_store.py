"""The plant's API tokens, hashed, in a local file: authentication needs no database round trip.

The file is the plant's authority; the database's `api_tokens` table is its mirror, merged both
ways (`TokenStore.mirror`): a token made in the database, or only there (deployments older than
this store), is pulled in; one made here while the database was away is pushed out; a revocation
on either side holds on both. The CLI and the running service may both change the file: every
change re-reads it under an exclusive lock on `<name>.lock` and replaces it atomically, and a
reader notices another process's change by one `os.stat()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from service.auth import ROLES, Principal, Role, hash_token
from service.errors import HeatrecError
from service.private_files import write_private

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# What a mirror rides out: the database (or the socket to it) away or failing; tried again next time.
_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class TokenStoreError(HeatrecError):
    """The token store file cannot be used as it is; the message names it and what to do."""

    http_status = 500


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: never the token itself, only its SHA-256 hash."""

    id: int
    name: str
    role: Role
    token_hash: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        """True while not revoked."""
        return self.revoked_at is None


# (st_mtime_ns, st_size, st_ino) of the file as last read; None: no file.
_Signature = tuple[int, int, int] | None


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The earlier revocation time of two, either possibly None (revocation is sticky)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


class TokenStore:
    """Hashed tokens in a local JSON file (0600), mirrored to the database's api_tokens."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._records: dict[int, TokenRecord] = {}
        self._mirrored: set[str] = set()  # hashes whose state (existence, revocation) the database holds
        self._by_hash: dict[str, TokenRecord] = {}
        self._signature: _Signature = None
        self._thread_lock = threading.Lock()  # threads of this process; fcntl.flock serialises processes
        self._mirror_lock: asyncio.Lock | None = None
        if self.path is not None:
            self._refresh()

    # --- reading -------------------------------------------------------------------------------------------

    def principal(self, token: str) -> Principal | None:
        """The principal of a known, unrevoked token, else None (re-reads the file if another process changed it)."""
        self._refresh()
        rec = self._by_hash.get(hash_token(token))
        if rec is None or not rec.active:
            return None
        return Principal(rec.name, rec.role)

    def records(self) -> list[TokenRecord]:
        """Every token's record, by id."""
        self._refresh()
        return [self._records[i] for i in sorted(self._records)]

    def pending(self) -> int:
        """How many records the database does not hold as they are here (pushed by the next mirror)."""
        self._refresh()
        return sum(1 for r in self._records.values() if r.token_hash not in self._mirrored)

    # --- changing ------------------------------------------------------------------------------------------

    def create(self, role: Role, name: str) -> tuple[TokenRecord, str]:
        """Create a token: its record and the token itself (the only time it is seen)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        token = "hr_" + secrets.token_urlsafe(32)
        with self._locked():
            rec = TokenRecord(max(self._records, default=0) + 1, name, role, hash_token(token), datetime.now(UTC),
                              None)
            records = dict(self._records)
            records[rec.id] = rec
            self._commit(records, self._mirrored)
        return rec, token

    def revoke_id(self, token_id: int) -> TokenRecord | None:
        """Revoke one active token by id: its new record, or None when no active token has that id."""
        with self._locked():
            rec = self._records.get(token_id)
            if rec is None or not rec.active:
                return None
            done = replace(rec, revoked_at=datetime.now(UTC))
            self._commit({**self._records, token_id: done}, self._mirrored - {rec.token_hash})
        return done

    def revoke(self, ident: str) -> list[TokenRecord]:
        """Revoke the token with this id (digits), or every active token of this name; the revoked records."""
        if ident.isascii() and ident.isdigit():  # "²" is a digit to str.isdigit, not to int()
            one = self.revoke_id(int(ident))
            return [one] if one is not None else []
        with self._locked():
            now = datetime.now(UTC)
            done = [replace(r, revoked_at=now) for r in self._records.values() if r.name == ident and r.active]
            if done:
                self._commit({**self._records, **{r.id: r for r in done}},
                             self._mirrored - {r.token_hash for r in done})
        return sorted(done, key=lambda r: r.id)

    # --- the database ---------------------------------------------------------------------------------------

    async def mirror(self, conn: asyncpg.Connection) -> bool:
        """Merge with the database's api_tokens both ways; True if anything changed on either side."""
        if self._mirror_lock is None:
            self._mirror_lock = asyncio.Lock()
        async with self._mirror_lock:  # the service's periodic mirror and an admin route's must not interleave
            self._refresh()
            snapshot = list(self._records.values())
            # The database first, in one transaction; the file is not locked meanwhile, so another process
            # (the CLI) never waits on the network. Its changes in between are merged in below.
            view, db_changed = await self._merge_into_database(conn, snapshot)
            with self._locked():
                records, mirrored = _merge_local(self._records, view)
                local_changed = records != self._records or mirrored != self._mirrored
                if local_changed:
                    self._commit(records, mirrored)
        return db_changed or local_changed

    async def _merge_into_database(self, conn: asyncpg.Connection,
                                   local: list[TokenRecord]) -> tuple[dict[str, TokenRecord], bool]:
        """Bring api_tokens up to `local`; the table as committed, by hash, and whether it changed."""
        changed = False
        async with conn.transaction():
            view = await self._fetch(conn)
            if not _needs_write(local, view):
                return view, False  # the usual case, every interval: no table lock
            # Writers wait (two mirrors, CLI and service, must not both insert an id); readers do not. Read again
            # under the lock: another writer may have come first.
            await conn.execute("LOCK TABLE api_tokens IN EXCLUSIVE MODE")
            view = await self._fetch(conn)
            taken = {rec.id for rec in view.values()}
            inserted = False
            for rec in sorted(local, key=lambda r: r.id):
                there = view.get(rec.token_hash)
                if there is not None:
                    revoked = _earliest(there.revoked_at, rec.revoked_at)
                    if revoked != there.revoked_at:
                        await conn.execute("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1", there.id, revoked)
                        view[rec.token_hash] = replace(there, revoked_at=revoked)
                        changed = True
                    continue
                tid = rec.id
                if tid in taken:
                    # Made here while the database was away, and the database gave the id to another token since.
                    tid = max(taken | {r.id for r in local}) + 1
                    log.warning("token %d ('%s') made at this plant has id %d in the database, which already "
                                "holds another token with id %d", rec.id, rec.name, tid, rec.id)
                await conn.execute("INSERT INTO api_tokens (id, name, role, token_hash, created_at, revoked_at) "
                                   "VALUES ($1, $2, $3, $4, $5, $6)", tid, rec.name, rec.role, rec.token_hash,
                                   rec.created_at, rec.revoked_at)
                view[rec.token_hash] = replace(rec, id=tid)
                taken.add(tid)
                inserted = changed = True
            if inserted:
                # Explicit ids bypass the serial: move it on, or the database's next own token would collide.
                await conn.execute("SELECT setval(pg_get_serial_sequence('api_tokens', 'id'), max(id)) "
                                   "FROM api_tokens")
        return view, changed

    @staticmethod
    async def _fetch(conn: asyncpg.Connection) -> dict[str, TokenRecord]:
        rows = await conn.fetch("SELECT id, name, role, token_hash, created_at, revoked_at FROM api_tokens")
        return {r["token_hash"]: TokenRecord(r["id"], r["name"], r["role"], r["token_hash"], r["created_at"],
                                             r["revoked_at"]) for r in rows}

    # --- the file ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store for a read-modify-write: this process's threads and, by flock, other processes."""
        with self._thread_lock:
            if self.path is None:
                yield
                return
            lock = self.path.with_name(self.path.name + ".lock")
            try:
                self._ensure_dir()
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise self._unwritable(err) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()  # another process may have changed the file since we last looked
                yield
            finally:
                os.close(fd)  # releases the lock

    def _ensure_dir(self) -> None:
        assert self.path is not None
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _stat(self) -> _Signature:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> None:
        """Re-read the file if it is not the one last read (one stat when it is)."""
        if self.path is None:
            return
        sig = self._stat()
        if sig == self._signature:
            return
        if sig is None:
            records: dict[int, TokenRecord] = {}
            mirrored: set[str] = set()
        else:
            try:
                with open(self.path, encoding="utf-8") as f:
                    # The signature of the file actually read, which may be newer than the one stat'ed above.
                    st = os.fstat(f.fileno())
                    text = f.read()
            except FileNotFoundError:  # replaced and gone between stat and open: look again next time
                return
            except (OSError, UnicodeDecodeError) as err:
                raise self._error(f"cannot read it ({err})") from err
            records, mirrored = self._parse(text)
            sig = st.st_mtime_ns, st.st_size, st.st_ino
        self._install(records, mirrored)
        self._signature = sig

    def _install(self, records: dict[int, TokenRecord], mirrored: set[str]) -> None:
        self._records = records
        self._by_hash = {r.token_hash: r for r in records.values()}
        self._mirrored = mirrored & self._by_hash.keys()

    def _commit(self, records: dict[int, TokenRecord], mirrored: set[str]) -> None:
        """Make `records` the store's content: in memory, and in the file if there is one."""
        if self.path is not None:
            self._write(records, mirrored)
        self._install(records, mirrored)

    def _write(self, records: dict[int, TokenRecord], mirrored: set[str]) -> None:
        assert self.path is not None
        doc = {"version": FORMAT_VERSION, "tokens": [
            {"id": r.id, "name": r.name, "role": r.role, "token_hash": r.token_hash,
             "created_at": r.created_at.isoformat(),
             "revoked_at": r.revoked_at.isoformat() if r.revoked_at is not None else None,
             "mirrored": r.token_hash in mirrored} for r in sorted(records.values(), key=lambda r: r.id)]}
        try:
            self._ensure_dir()
            write_private(self.path, json.dumps(doc, indent=1) + "\n")  # 0600, atomic, durable
        except OSError as err:
            # Not the database's kind of OSError: a mirror must not take it for the database being away.
            raise self._unwritable(err) from err
        self._signature = self._stat()

    def _unwritable(self, err: OSError) -> TokenStoreError:
        return TokenStoreError(f"{self.path}: cannot write the token store ({err.strerror or err}): run heatrec as "
                               "the user the service runs as, or give it the directory (api.token_store)")

    def _error(self, what: str) -> TokenStoreError:
        return TokenStoreError(
            f"{self.path}: token store unusable: {what}. Restore it from a backup, or move it aside and run "
            "'heatrec token list -c CONFIG' to pull the tokens back from the database (tokens made while the "
            "database was away are then lost: create them again)")

    def _parse(self, text: str) -> tuple[dict[int, TokenRecord], set[str]]:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise self._error(f"not valid JSON ({err})") from err
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION or not isinstance(doc.get("tokens"),
                                                                                               list):
            raise self._error(f'expected {{"version": {FORMAT_VERSION}, "tokens": [...]}}')
        records: dict[int, TokenRecord] = {}
        mirrored: set[str] = set()
        hashes: set[str] = set()
        for i, item in enumerate(doc["tokens"]):
            rec, is_mirrored = self._parse_record(item, f"tokens[{i}]")
            if rec.id in records:
                raise self._error(f"tokens[{i}]: id {rec.id} appears twice")
            if rec.token_hash in hashes:
                raise self._error(f"tokens[{i}]: token_hash appears twice")
            records[rec.id] = rec
            hashes.add(rec.token_hash)
            if is_mirrored:
                mirrored.add(rec.token_hash)
        return records, mirrored

    def _parse_record(self, item: Any, where: str) -> tuple[TokenRecord, bool]:
        if not isinstance(item, dict):
            raise self._error(f"{where}: expected an object")

        def field(key: str, kind: type | tuple[type, ...]) -> Any:
            value = item.get(key)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # True is an int
                raise self._error(f"{where}.{key}: missing or of the wrong type")
            return value

        def when(key: str) -> datetime:
            try:
                t = datetime.fromisoformat(field(key, str))
            except ValueError as err:
                raise self._error(f"{where}.{key}: not an ISO 8601 time") from err
            if t.tzinfo is None:
                raise self._error(f"{where}.{key}: time without time zone")
            return t

        tid = field("id", int)
        if tid < 1:
            raise self._error(f"{where}.id: must be positive")
        name = field("name", str)
        role = field("role", str)
        if role not in ROLES:
            raise self._error(f"{where}.role: '{role}' is not one of {', '.join(ROLES)}")
        token_hash = field("token_hash", str)
        if len(token_hash) != 64 or any(c not in "0123456789abcdef" for c in token_hash):
            raise self._error(f"{where}.token_hash: not a SHA-256 hex digest")
        revoked = when("revoked_at") if item.get("revoked_at") is not None else None
        return (TokenRecord(tid, name, role, token_hash, when("created_at"), revoked),
                bool(item.get("mirrored", False)))


def _needs_write(local: list[TokenRecord], view: dict[str, TokenRecord]) -> bool:
    """Whether the database lacks a local token or a local revocation (earlier than its own)."""
    for rec in local:
        there = view.get(rec.token_hash)
        if there is None or _earliest(there.revoked_at, rec.revoked_at) != there.revoked_at:
            return True
    return False


def _merge_local(local: dict[int, TokenRecord],
                 view: dict[str, TokenRecord]) -> tuple[dict[int, TokenRecord], set[str]]:
    """The local store after a mirror: the database's tokens and ids, local revocations kept, local-only ones kept.

    `view` is api_tokens as just committed, by hash. `local` is the file as it is now, which may hold
    changes made (by another process) while the database part ran: those stay, unmirrored.
    """
    by_hash = {r.token_hash: r for r in local.values()}
    out: dict[int, TokenRecord] = {}
    mirrored: set[str] = set()
    for h, there in view.items():
        mine = by_hash.get(h)
        if mine is None:
            out[there.id] = there  # made in the database (or only there, from before this store)
            mirrored.add(h)
            continue
        revoked = _earliest(mine.revoked_at, there.revoked_at)
        out[there.id] = replace(mine, id=there.id, revoked_at=revoked)
        if revoked == there.revoked_at:
            mirrored.add(h)
    for mine in sorted(local.values(), key=lambda r: r.id):
        if mine.token_hash in view:
            continue
        rec = mine
        if rec.id in out:
            # Made here after the database part began; its id went to a token pulled from the database.
            rec = replace(mine, id=max(set(out) | set(local)) + 1)
            log.warning("token %d ('%s') made at this plant is renumbered %d: the database holds another token "
                        "with id %d", mine.id, mine.name, rec.id, mine.id)
        out[rec.id] = rec
    return out, mirrored


async def mirror_forever(store: TokenStore, db: Any, interval_s: float) -> None:
    """Mirror `store` with the database every `interval_s` (1 s when 0) while it is up, until cancelled."""
    period = interval_s if interval_s > 0 else 1.0
    reported = ""
    while True:
        if db.up:
            try:
                async with db.acquire() as conn:
                    await store.mirror(conn)
                reported = ""
            except _DATABASE_ERRORS as err:
                db.failed(err)  # a failure while it looked up may mean it is away: let it probe now
                log.debug("token store not mirrored (%s: %s); next try in %.0f s", err.__class__.__name__, err,
                          period)
            except TokenStoreError as err:
                # A file broken by hand must not stop the plant; refused tokens say so at the API. Once per cause.
                if str(err) != reported:
                    log.error("%s", err)
                    reported = str(err)
        await asyncio.sleep(period)
