"""Fixtures of the accounting tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.config import DatabaseConfig
from service.storage.database import connect_pool
from service.storage.migrations import migrate


@pytest.fixture
async def conn(database: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's fresh, migrated database."""
    pool = await connect_pool(database)
    async with pool.acquire() as c:
        await migrate(c)
        yield c
    await pool.close()
