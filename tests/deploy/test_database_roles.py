"""heatrec's database role is no superuser, in the demo's and the tests' own clusters as at a plant.

The private cluster (service/localservers/postgres.py) makes a superuser for administration only and heatrec's
role, which owns its databases; every migration and every maintenance call heatrec makes runs as that owner.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from service.config import DatabaseConfig, StorageConfig
from service.localservers import LocalServerError, PostgresCluster, free_port
from service.storage.database import connect_pool
from service.storage.migrations import available_migrations, migrate
from service.storage.retention import drop_old_chunks, enable_rollups


async def test_heatrec_connects_as_the_owner_without_superuser(postgres: PostgresCluster,
                                                               database: DatabaseConfig) -> None:
    assert database.user == postgres.user != postgres.admin_user
    pool = await connect_pool(database)
    try:
        async with pool.acquire() as conn:
            role = await conn.fetchrow("SELECT current_user AS name, rolsuper, rolcreaterole, rolcreatedb, "
                                       "rolreplication, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            assert role is not None and role["name"] == postgres.user
            assert not any(role[k] for k in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication",
                                             "rolbypassrls")), dict(role)
            assert await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                       "WHERE datname = current_database()") == postgres.user
            # The extension is there already, made by the cluster's superuser: the first migration only finds it.
            assert await conn.fetchval("SELECT pg_get_userbyid(extowner) FROM pg_extension "
                                       "WHERE extname = 'timescaledb'") == postgres.admin_user
            applied = await migrate(conn)
            assert applied == [name for _, name, _ in available_migrations()]
            # Everything the schema holds is the owner's; and the maintenance heatrec does runs as it too.
            owners = {r[0] for r in await conn.fetch(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE nspname = 'public'")}
            assert owners == {postgres.user}
            await drop_old_chunks(conn, timedelta(days=30))
            edition = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
            assert await enable_rollups(conn, StorageConfig()) is (edition == "timescale")
            # What it may not do, it may not do.
            for sql in ("CREATE ROLE intruder", "CREATE DATABASE other", "ALTER SYSTEM SET fsync = on",
                        "COPY points FROM PROGRAM 'true'"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
    finally:
        await pool.close()


def test_psql_is_the_administrator(postgres: PostgresCluster) -> None:
    assert postgres.psql("SELECT current_user || ' ' || rolsuper FROM pg_roles WHERE rolname = current_user") == \
        f"{postgres.admin_user} true"


def test_a_cluster_from_before_the_owner_role_is_refused_with_what_to_do(server_root: Path) -> None:
    """A data directory whose bootstrap superuser is heatrec's role (initdb -U heatrec, as heatrec did before):
    PostgreSQL cannot demote it, so the cluster says so, and stops again."""
    datadir = server_root / f"pg-legacy-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    # Made the old way: heatrec's role is initdb's superuser (here: as the admin of a cluster for another role).
    old = PostgresCluster(datadir, free_port(), secrets.token_urlsafe(16), user="someone_else", admin_user="heatrec",
                          admin_password=password, settings={"fsync": "off"})
    old.start()
    old.stop()
    new = PostgresCluster(datadir, old.port, password, settings={"fsync": "off"})
    with pytest.raises(LocalServerError, match=r"cluster's superuser.*make clean-demo"):
        new.start()
    assert not new.running
