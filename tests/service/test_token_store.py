"""The local token store: hashed tokens checked without the database, shared by processes, mirrored both ways."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.auth import Principal, create_token, hash_token, lookup_token, revoke_tokens
from service.config import DatabaseConfig
from service.errors import HeatrecError
from service.localservers import free_port
from service.storage.database import Database, connect_pool
from service.storage.migrations import migrate
from service.token_store import TokenStore, TokenStoreError, mirror_forever
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
HEATREC = [sys.executable, "-m", "service.cli"]


# --- unit: the file ------------------------------------------------------------------------------------------------

def test_create_lookup_revoke_in_memory() -> None:
    store = TokenStore(None)
    rec, token = store.create("operator", "alice")
    assert token.startswith("hr_") and len(token) > 40
    assert rec.id == 1 and rec.token_hash == hash_token(token) and rec.revoked_at is None
    assert store.principal(token) == Principal("alice", "operator")
    assert store.principal(token + "x") is None
    rec2, token2 = store.create("viewer", "grafana")
    assert rec2.id == 2
    assert store.revoke_id(1) is not None
    assert store.principal(token) is None  # refused at once
    assert store.revoke_id(1) is None  # not active any more
    assert store.principal(token2) == Principal("grafana", "viewer")
    assert [r.id for r in store.records()] == [1, 2]
    with pytest.raises(ValueError, match="role must be one of"):
        store.create("root", "x")  # type: ignore[arg-type]


def test_revoke_by_name_takes_every_active_token_of_that_name(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    _, a1 = store.create("viewer", "alice")
    _, a2 = store.create("operator", "alice")
    _, b = store.create("viewer", "bob")
    done = store.revoke("alice")
    assert [r.id for r in done] == [1, 2] and all(r.revoked_at is not None for r in done)
    assert store.principal(a1) is None and store.principal(a2) is None
    assert store.principal(b) == Principal("bob", "viewer")
    assert store.revoke("alice") == []
    assert [r.id for r in store.revoke("3")] == [3]  # digits: an id
    assert store.revoke("3") == [] and store.revoke("99") == []
    # What is revoked stays revoked for a new reader of the file.
    assert all(r.revoked_at is not None for r in TokenStore(tmp_path / "tokens.json").records())


def test_file_is_private_atomic_and_holds_no_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sub" / "tokens.json"
    store = TokenStore(path)
    assert not path.exists() and store.records() == []  # a missing file is an empty store
    _, token = store.create("admin", "ops")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert token not in text and token[3:] not in text
    doc = json.loads(text)
    assert doc["version"] == 1
    assert doc["tokens"] == [{"id": 1, "name": "ops", "role": "admin", "token_hash": hash_token(token),
                              "created_at": doc["tokens"][0]["created_at"], "revoked_at": None,
                              "mirrored": False}]
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]  # no temp file left
    # Another reader admits it from the file alone.
    assert TokenStore(path).principal(token) == Principal("ops", "admin")


def test_another_writer_is_seen_on_the_next_lookup(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    service, cli = TokenStore(path), TokenStore(path)  # two holders of one file, as the service and the CLI
    _, token = service.create("viewer", "grafana")
    assert cli.principal(token) is not None
    [revoked] = cli.revoke("grafana")
    assert service.principal(token) is None  # no restart, no wait: the next lookup re-reads the changed file
    rec, token2 = cli.create("operator", "alice")
    assert rec.id == 2  # the writer re-read the file under the lock: id 1 is taken
    assert service.principal(token2) == Principal("alice", "operator")
    assert [r.id for r in service.records()] == [1, 2] and service.records()[0] == revoked


@pytest.mark.parametrize("text, why", [
    ("{not json", "not valid JSON"),
    ('{"tokens": []}', '"version": 1'),
    ('{"version": 1, "tokens": [{"id": 1}]}', "tokens[0].name: missing or of the wrong type"),
    ('{"version": 1, "tokens": [{"id": 1, "name": "a", "role": "root", "token_hash": "' + "0" * 64
     + '", "created_at": "2026-01-01T00:00:00+00:00"}]}', "tokens[0].role: 'root' is not one of"),
])
def test_a_broken_file_is_a_clear_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(text)
    with pytest.raises(TokenStoreError) as err:
        TokenStore(path)
    msg = str(err.value)
    assert isinstance(err.value, HeatrecError)
    assert msg.startswith(f"{path}: token store unusable: ") and why in msg
    assert "Restore it from a backup" in msg and "heatrec token list" in msg


def test_a_file_broken_while_running_is_refused_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    _, token = store.create("viewer", "grafana")
    path.write_text('{"version": 1, "tokens": 7}')
    with pytest.raises(TokenStoreError, match="tokens"):
        store.principal(token)


# --- integration: processes ----------------------------------------------------------------------------------------

def _offline_config(tmp_path: Path) -> Path:
    """A plant file whose database port has nothing listening, and a token store relative to the file."""
    cfg = tmp_path / "plant.toml"
    cfg.write_text(f'[database]\nhost = "127.0.0.1"\nport = {free_port()}\nconnect_timeout_s = 2\n'
                   '[api]\ntoken_store = "state/tokens.json"\n')
    return cfg


def _heatrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEATREC, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.integration  # heatrec as a child process
def test_cli_create_without_database_succeeds_and_the_store_admits_it(tmp_path: Path) -> None:
    cfg = _offline_config(tmp_path)
    r = _heatrec("token", "create", "-c", str(cfg), "--role", "operator", "--name", "alice")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("hr_") and "\n" not in token
    assert "shown once, only its hash is stored" in r.stderr and token not in r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("heatrec: note: database not reached")]
    assert len(notes) == 1, r.stderr
    assert "in force at this plant now and reaches the database when the service next reaches it" in notes[0]
    assert "Traceback" not in r.stderr
    store = TokenStore(tmp_path / "state" / "tokens.json")  # relative to the config file's directory
    assert store.principal(token) == Principal("alice", "operator")
    listed = _heatrec("token", "list", "-c", str(cfg))
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout and "operator" in listed.stdout and token not in listed.stdout


@pytest.mark.integration  # heatrec as a child process
def test_cli_revoke_reaches_a_running_store_without_database(tmp_path: Path) -> None:
    cfg = _offline_config(tmp_path)
    store = TokenStore(tmp_path / "state" / "tokens.json")  # the running service's, in this process
    _, token = store.create("viewer", "grafana")
    _, other = store.create("viewer", "kiosk")
    assert store.principal(token) is not None
    r = _heatrec("token", "revoke", "-c", str(cfg), "grafana")
    assert r.returncode == 0, r.stderr
    assert "revoked 1 token(s)" in r.stdout and "heatrec: note: database not reached" in r.stderr
    assert store.principal(token) is None
    assert store.principal(other) == Principal("kiosk", "viewer")
    again = _heatrec("token", "revoke", "-c", str(cfg), "grafana")
    assert again.returncode == 2 and "no active token with id or name 'grafana'" in again.stderr


_CREATOR = """
import sys
from pathlib import Path
from service.token_store import TokenStore
store = TokenStore(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    print(store.create("viewer", f"{sys.argv[3]}-{i}")[1], flush=True)
"""


@pytest.mark.integration  # child processes
def test_concurrent_creates_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path, n = tmp_path / "tokens.json", 40
    procs = [subprocess.Popen([sys.executable, "-c", _CREATOR, str(path), str(n), who], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for who in ("a", "b")]
    try:
        for p in procs:  # both loaded and waiting: then released together, so their writes interleave
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.close()
        tokens = [p.stdout.read().split() for p in procs if p.stdout is not None]  # 2 KB each: no pipe fills
        assert [p.wait(60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    store = TokenStore(path)
    records = store.records()
    assert [r.id for r in records] == list(range(1, 2 * n + 1))
    assert {r.name for r in records} == {f"{who}-{i}" for who in ("a", "b") for i in range(n)}
    for t in tokens[0] + tokens[1]:
        assert store.principal(t) is not None


# --- integration: the database -------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _conn(database: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            yield conn
    finally:
        await pool.close()


async def _row(conn: asyncpg.Connection, token: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, role, created_at, revoked_at FROM api_tokens WHERE token_hash = $1",
                               hash_token(token))


async def test_mirror_pushes_a_token_made_while_the_database_was_away(database: DatabaseConfig,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    rec, token = store.create("operator", "alice")
    assert store.pending() == 1
    async with _conn(database) as conn:
        assert await store.mirror(conn) is True
        row = await _row(conn, token)
        assert row is not None and (row["id"], row["name"], row["role"]) == (1, "alice", "operator")
        assert row["created_at"] == rec.created_at
        assert await lookup_token(conn, token) == Principal("alice", "operator")
        assert store.pending() == 0 and json.loads(path.read_text())["tokens"][0]["mirrored"] is True
        before = path.stat()
        assert await store.mirror(conn) is False  # nothing to do: the file is not rewritten
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        # The serial moved past the pushed id: the database's own next token does not collide.
        assert await conn.fetchval("SELECT nextval(pg_get_serial_sequence('api_tokens', 'id'))") == 2


async def test_mirror_pulls_tokens_made_in_the_database(database: DatabaseConfig, tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    async with _conn(database) as conn:
        token = await create_token(conn, "viewer", "grafana")  # as an older heatrec did, or SQL by hand
        assert store.principal(token) is None
        assert await store.mirror(conn) is True
        assert store.principal(token) == Principal("grafana", "viewer")
        db_id = (await _row(conn, token))["id"]  # type: ignore[index]
    [rec] = store.records()
    assert rec.id == db_id and rec.token_hash == hash_token(token)
    # Pulled records are in the file: a new reader (the CLI) admits the token with no database at all.
    assert TokenStore(tmp_path / "tokens.json").principal(token) == Principal("grafana", "viewer")


async def test_revocation_is_sticky_both_ways(database: DatabaseConfig, tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    _, here = store.create("viewer", "revoked-here")
    _, both = store.create("viewer", "revoked-both")
    async with _conn(database) as conn:
        there = await create_token(conn, "viewer", "revoked-there")
        await store.mirror(conn)
        assert len(store.records()) == 3 and store.principal(there) is not None

        # Revoked here: the database refuses it too after the mirror.
        store.revoke("revoked-here")
        assert await store.mirror(conn) is True
        assert await lookup_token(conn, here) is None
        # Revoked in the database: this plant refuses it after the mirror, and a mirror never un-revokes.
        assert await revoke_tokens(conn, "revoked-there") == 1
        assert await store.mirror(conn) is True
        assert store.principal(there) is None
        assert await store.mirror(conn) is False and await lookup_token(conn, there) is None

        # Revoked on both sides at different times: the earlier time wins on both.
        earlier = datetime.now(UTC) - timedelta(days=3)
        await conn.execute("UPDATE api_tokens SET revoked_at = $2 WHERE token_hash = $1", hash_token(both), earlier)
        [local] = store.revoke("revoked-both")
        assert local.revoked_at is not None and local.revoked_at > earlier
        assert await store.mirror(conn) is True
        assert (await _row(conn, both))["revoked_at"] == earlier  # type: ignore[index]
        assert next(r for r in store.records() if r.name == "revoked-both").revoked_at == earlier

        later_store = TokenStore(tmp_path / "tokens.json")
        assert [r.revoked_at is not None for r in later_store.records()] == [True, True, True]


async def test_an_id_taken_in_the_database_meanwhile_gets_a_new_one(database: DatabaseConfig, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    async with _conn(database) as conn:
        first = await create_token(conn, "viewer", "first")
        await store.mirror(conn)
        # The database goes away; meanwhile a token is made here and one directly in the database: both id 2.
        rec, here = store.create("operator", "made-here")
        there = await create_token(conn, "admin", "made-there")
        assert rec.id == 2 and (await _row(conn, there))["id"] == 2  # type: ignore[index]
        with caplog.at_level(logging.WARNING, logger="service.token_store"):
            assert await store.mirror(conn) is True
        assert any("made-here" in m and "id 3" in m for m in caplog.messages), caplog.messages
        ids = {r.name: r.id for r in store.records()}
        assert ids == {"first": 1, "made-there": 2, "made-here": 3}
        assert (await _row(conn, here))["id"] == 3  # type: ignore[index]
        for token, who in ((first, Principal("first", "viewer")), (here, Principal("made-here", "operator")),
                           (there, Principal("made-there", "admin"))):
            assert store.principal(token) == who and await lookup_token(conn, token) == who
        # The serial is past every id: the next token made in the database does not collide either.
        nxt = await create_token(conn, "viewer", "next")
        assert (await _row(conn, nxt))["id"] == 4  # type: ignore[index]
        assert await store.mirror(conn) is True and store.principal(nxt) is not None
        assert await store.mirror(conn) is False


async def test_mirror_forever_pulls_in_the_background(database: DatabaseConfig, tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        db = Database.from_pool(pool, database)
        task = asyncio.create_task(mirror_forever(store, db, 0.1))
        try:
            async with pool.acquire() as conn:
                token = await create_token(conn, "viewer", "late")
            await wait_until(lambda: store.principal(token) is not None, what="token made in the database pulled")
            _, mine = store.create("operator", "local")

            async def pushed() -> bool:
                return await lookup_token(pool, mine) is not None

            await wait_until(pushed, what="token made here pushed")
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await pool.close()


def _config_with_database(tmp_path: Path, database: DatabaseConfig) -> Path:
    cfg = tmp_path / "plant.toml"
    cfg.write_text(f'[database]\nhost = "{database.host}"\nport = {database.port}\nname = "{database.name}"\n'
                   f'user = "{database.user}"\npassword = "{database.password}"\n'
                   '[api]\ntoken_store = "tokens.json"\n')
    return cfg


async def test_cli_with_database_mirrors_both_ways(database: DatabaseConfig, tmp_path: Path) -> None:
    cfg = _config_with_database(tmp_path, database)
    async with _conn(database) as conn:
        older = await create_token(conn, "viewer", "from-before")  # only in the database: the upgrade path
    listed = await asyncio.to_thread(_heatrec, "token", "list", "-c", str(cfg))
    assert listed.returncode == 0 and "from-before" in listed.stdout and "note" not in listed.stderr, listed.stderr
    made = await asyncio.to_thread(_heatrec, "token", "create", "-c", str(cfg), "--role", "admin", "--name", "ops")
    assert made.returncode == 0 and "database not reached" not in made.stderr, made.stderr
    token = made.stdout.strip()
    revoked = await asyncio.to_thread(_heatrec, "token", "revoke", "-c", str(cfg), "from-before")
    assert revoked.returncode == 0 and "revoked 1 token(s)" in revoked.stdout, revoked.stderr
    async with _conn(database) as conn:
        assert await lookup_token(conn, token) == Principal("ops", "admin")
        assert await lookup_token(conn, older) is None
    store = TokenStore(tmp_path / "tokens.json")
    assert store.principal(token) == Principal("ops", "admin") and store.principal(older) is None
    assert store.pending() == 0
    assert stat.S_IMODE(os.stat(tmp_path / "tokens.json").st_mode) == 0o600
