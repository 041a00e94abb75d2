"""API tokens: generated once, stored only as a SHA-256 hash, checked by role."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    """Who made a request: token name and role."""

    name: str
    role: Role

    def allows(self, needed: Role) -> bool:
        """True when this role is at least `needed` (admin ⊃ operator ⊃ viewer)."""
        return _RANK[self.role] >= _RANK[needed]


def hash_token(token: str) -> str:
    """SHA-256 hex digest; tokens carry 256 bits of entropy, so no slow KDF is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(conn: asyncpg.Connection, role: Role, name: str) -> str:
    """Create a token, store its hash, and return the token (the only time it is seen)."""
    return (await issue_token(conn, role, name))[1]


async def issue_token(conn: asyncpg.Connection, role: Role, name: str) -> tuple[int, str, datetime]:
    """Create a token: (id, the token itself, creation time); only its hash is stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = "hr_" + secrets.token_urlsafe(32)
    row = await conn.fetchrow("INSERT INTO api_tokens (name, role, token_hash) VALUES ($1, $2, $3) "
                              "RETURNING id, created_at", name, role, hash_token(token))
    assert row is not None  # INSERT ... RETURNING always returns the row
    return int(row["id"]), token, row["created_at"]


async def lookup_token(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token, else None."""
    row = await conn.fetchrow("SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                              hash_token(token))
    return Principal(row["name"], row["role"]) if row else None


async def list_tokens(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every token's id, name, role, creation and revocation time (never the token)."""
    return list(await conn.fetch("SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY id"))


async def revoke_token_id(conn: asyncpg.Connection, token_id: int) -> asyncpg.Record | None:
    """Revoke one active token by id; its record, or None when no active token has that id."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
        "RETURNING id, name, role, created_at, revoked_at", token_id)
    return row


async def revoke_tokens(conn: asyncpg.Connection, ident: str) -> int:
    """Revoke the token with this id, or every active token with this name; return how many."""
    if ident.isdigit():
        status = await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                                    int(ident))
    else:
        status = await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
                                    ident)
    return int(status.rsplit(" ", 1)[1])
