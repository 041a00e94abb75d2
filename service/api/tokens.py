"""Token endpoints (admin): create, list and revoke API tokens, each change in the audit log."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_token_routes, which string annotations would hide from it.
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from service.audit import AuditEntry, AuditLog
from service.auth import Principal, Role, issue_token, list_tokens, revoke_token_id
from service.storage.database import connection

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class TokenIn(BaseModel):
    """A token to create: its role and a name saying who or what uses it."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"role": "viewer", "name": "grafana"}]})
    role: Role
    name: str = Field(pattern=NAME_PATTERN, description="who or what uses the token (letters, digits, _.@-)")


_TOKEN_EXAMPLE: JsonDict = {"id": 7, "name": "grafana", "role": "viewer", "created_at": "2026-03-01T12:00:00Z",
                  "revoked_at": None, "token": None}


class TokenOut(BaseModel):
    """A token's record; `token` itself only in the answer that created it."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        _TOKEN_EXAMPLE | {"token": "hr_3nJ0q1d2mV3PZbU8m3w1yq3r0dY5h9oQ0tq8s2cXk4E"}]})

    id: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None
    token: str | None = Field(default=None, description="the token, shown once: only its hash is stored")


class TokenList(BaseModel):
    """Every token, oldest first (never the tokens themselves)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"tokens": [_TOKEN_EXAMPLE]}]})

    tokens: list[TokenOut]


class TokenErrorOut(BaseModel):
    """An error: what to do, and the status repeated (the shape of every heatrec error)."""

    error: str
    status: int


_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": TokenErrorOut, "description": "the database is unavailable"}}
# OpenAPI links: what a client (and the stateful fuzzer) can do next with the answer.
_CREATED_LINKS = {"RevokeToken": {"operationId": "revoke_token", "parameters": {"token_id": "$response.body#/id"},
                                  "description": "revoke the token just created"}}


def add_token_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the token endpoints on the app."""

    Admin = Annotated[Principal, Depends(require("admin"))]
    TokenId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the token's id (GET /api/v1/tokens)")]

    def pool(request: Request) -> asyncpg.Pool:
        p: asyncpg.Pool = request.app.state.heatrec.pool
        return p

    async def guarded(work: Callable[[asyncpg.Connection], Awaitable[Any]], db: asyncpg.Pool) -> Any:
        async with connection(db) as conn:  # a value the column cannot hold: 422; database away: 503
            return await work(conn)

    async def audit(db: asyncpg.Pool, who: Principal, action: str, target: str, requested: Any,
                    outcome: str) -> None:
        await AuditLog(db).record(AuditEntry(who.name, who.role, action, target, requested, None, outcome))

    Pool = Annotated[asyncpg.Pool, Depends(pool)]

    @app.post("/api/v1/tokens", response_model=TokenOut, status_code=201, tags=["tokens"],
              operation_id="create_token", responses={**_UNAVAILABLE, 201: {"description": "the token, shown once",
                                                                            "links": _CREATED_LINKS}})
    async def create(body: TokenIn, who: Admin, db: Pool) -> TokenOut:
        """Create a token (admin); the answer holds the token, the only time it is shown."""
        tid, token, created = await guarded(lambda conn: issue_token(conn, body.role, body.name), db)
        await audit(db, who, "token.create", f"token.{tid}", {"role": body.role, "name": body.name}, "accepted")
        return TokenOut(id=tid, name=body.name, role=body.role, created_at=created, token=token)

    @app.get("/api/v1/tokens", response_model=TokenList, tags=["tokens"], operation_id="list_tokens",
             responses=_UNAVAILABLE)
    async def listing(_: Admin, db: Pool) -> TokenList:
        """Every token's id, name, role, creation and revocation time (admin)."""
        rows = await guarded(list_tokens, db)
        return TokenList(tokens=[TokenOut(id=r["id"], name=r["name"], role=r["role"], created_at=r["created_at"],
                                          revoked_at=r["revoked_at"]) for r in rows])

    @app.delete("/api/v1/tokens/{token_id}", response_model=TokenOut, tags=["tokens"], operation_id="revoke_token",
                responses=_UNAVAILABLE)
    async def revoke(token_id: TokenId, who: Admin, db: Pool) -> TokenOut:
        """Revoke a token (admin): it is refused from then on (within api.token_cache_s); 404 if none is active."""
        row = await guarded(lambda conn: revoke_token_id(conn, token_id), db)
        if row is None:
            raise HTTPException(404, f"no active token with id {token_id} (GET /api/v1/tokens lists them)")
        await audit(db, who, "token.revoke", f"token.{token_id}", None, "accepted")
        return TokenOut(id=row["id"], name=row["name"], role=row["role"], created_at=row["created_at"],
                        revoked_at=row["revoked_at"])
