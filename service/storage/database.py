"""Connecting to PostgreSQL with errors that say what to do."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg

from service.config import DatabaseConfig
from service.errors import StorageUnavailable, StorageValueError


class DatabaseUnavailable(StorageUnavailable):
    """PostgreSQL could not be reached or refused us; the message says what to check."""


# asyncpg's and the socket's errors, as they reach a query: translated here, once, into the storage subtree.
_VALUE_ERRORS = (asyncpg.DataError, OverflowError)
_UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """asyncpg and socket errors of the work inside as StorageValueError (422) or StorageUnavailable (503)."""
    try:
        yield
    except _VALUE_ERRORS as err:
        raise StorageValueError(f"out of range: {err}") from err
    except _UNAVAILABLE as err:
        raise StorageUnavailable("database unavailable, try again shortly") from err


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection whose failures arrive as StorageValueError (422) or StorageUnavailable (503)."""
    async with translated(), pool.acquire() as conn:
        yield conn


def _password(cfg: DatabaseConfig) -> str | None:
    return cfg.password or os.environ.get("HEATREC_DB_PASSWORD") or None


async def connect_pool(cfg: DatabaseConfig, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """Open a connection pool, translating failures into DatabaseUnavailable."""
    try:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(host=cfg.host, port=cfg.port, user=cfg.user, database=cfg.name,
                                password=_password(cfg), min_size=min_size, max_size=max_size,
                                timeout=cfg.connect_timeout_s, command_timeout=60),
            cfg.connect_timeout_s + 5)
    except (OSError, TimeoutError) as err:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {cfg.host}:{cfg.port} ({err.__class__.__name__}: {err}): "
            "is it running? check [database] host and port") from err
    except asyncpg.InvalidPasswordError as err:
        raise DatabaseUnavailable(f"PostgreSQL refused user '{cfg.user}': wrong password "
                                  "(set [database] password or HEATREC_DB_PASSWORD)") from err
    except asyncpg.InvalidCatalogNameError as err:
        raise DatabaseUnavailable(f"database '{cfg.name}' does not exist on {cfg.host}:{cfg.port}: "
                                  f"create it (createdb {cfg.name}) or fix [database] name") from err
    except asyncpg.PostgresError as err:
        raise DatabaseUnavailable(f"PostgreSQL error at connect: {err}") from err
    assert pool is not None
    return pool
