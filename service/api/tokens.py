"""Token endpoints (admin): create, list and revoke API tokens in the plant's token store, each change audited.

They work with the database away: the store is local, and each change is mirrored to the database
right away when it is up, else by the service's periodic mirror once it is back.
"""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_token_routes, which string annotations would hide from it.
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from service.api.state import ServiceState
from service.audit import AuditEntry
from service.auth import Principal, Role
from service.token_store import TokenRecord

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


# OpenAPI links: what a client (and the stateful fuzzer) can do next with the answer.
_CREATED_LINKS = {"RevokeToken": {"operationId": "revoke_token", "parameters": {"token_id": "$response.body#/id"},
                                  "description": "revoke the token just created"}}
# What a best-effort mirror rides out: the database away or failing (the periodic mirror tries again).
_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _out(rec: TokenRecord, token: str | None = None) -> TokenOut:
    return TokenOut(id=rec.id, name=rec.name, role=rec.role, created_at=rec.created_at, revoked_at=rec.revoked_at,
                    token=token)


def add_token_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the token endpoints on the app."""

    Admin = Annotated[Principal, Depends(require("admin"))]
    TokenId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the token's id (GET /api/v1/tokens)")]

    def service_state(request: Request) -> ServiceState:
        state: ServiceState = request.app.state.heatrec
        return state

    State = Annotated[ServiceState, Depends(service_state)]

    async def mirror(state: ServiceState) -> None:
        """Merge the store with the database if it is up; else the service's periodic mirror does it later."""
        if state.db.up:
            with contextlib.suppress(*_DATABASE_ERRORS):  # a change is in force here already; the database follows
                async with state.db.acquire() as conn:
                    await state.tokens.mirror(conn)

    async def audit(state: ServiceState, who: Principal, action: str, target: str, requested: Any) -> None:
        assert state.audit is not None  # ServiceState always has a sink
        await state.audit(AuditEntry(who.name, who.role, action, target, requested, None, "accepted"))

    @app.post("/api/v1/tokens", response_model=TokenOut, status_code=201, tags=["tokens"],
              operation_id="create_token", responses={201: {"description": "the token, shown once",
                                                            "links": _CREATED_LINKS}})
    async def create(body: TokenIn, who: Admin, state: State) -> TokenOut:
        """Create a token (admin); the answer holds the token, the only time it is shown."""
        rec, token = state.tokens.create(body.role, body.name)
        await mirror(state)
        # The mirror renumbers a new token whose id the database gave to one made there since the last mirror.
        rec = next((r for r in state.tokens.records() if r.token_hash == rec.token_hash), rec)
        await audit(state, who, "token.create", f"token.{rec.id}", {"role": body.role, "name": body.name})
        return _out(rec, token)

    @app.get("/api/v1/tokens", response_model=TokenList, tags=["tokens"], operation_id="list_tokens")
    async def listing(_: Admin, state: State) -> TokenList:
        """Every token's id, name, role, creation and revocation time (admin)."""
        return TokenList(tokens=[_out(r) for r in state.tokens.records()])

    @app.delete("/api/v1/tokens/{token_id}", response_model=TokenOut, tags=["tokens"], operation_id="revoke_token")
    async def revoke(token_id: TokenId, who: Admin, state: State) -> TokenOut:
        """Revoke a token (admin): this plant refuses it from then on; 404 if none is active."""
        rec = state.tokens.revoke_id(token_id)
        if rec is None and state.db.up:
            await mirror(state)  # made directly in the database since the last mirror?
            rec = state.tokens.revoke_id(token_id)
        if rec is None:
            raise HTTPException(404, f"no active token with id {token_id} (GET /api/v1/tokens lists them)")
        await mirror(state)
        await audit(state, who, "token.revoke", f"token.{token_id}", None)
        return _out(rec)
