"""What the route modules share: the bearer-token role dependency and the JSON error body.

Its own module so that a route module (history.py) and the app that includes it (app.py) both
import it from below instead of from each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict

from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.auth import Principal, Role
from service.storage.journal import DB_ERRORS


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency that authenticates the bearer token and checks its role."""

    async def dep(request: Request) -> Principal:
        state: ServiceState = request.app.state.heatrec
        limiter: FailedAuthLimiter = request.app.state.auth_limiter
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait is not None:
            raise HTTPException(429, f"too many failed authentications from {client}: retry in {wait:.0f} s",
                                headers={"Retry-After": str(max(1, round(wait)))})
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                     "(create one with 'heatrec token create')",
                                headers={"WWW-Authenticate": "Bearer"})
        # Verified at the plant: a dict lookup in the local token store, no database round trip.
        principal = state.tokens.principal(token.strip())
        if principal is None and state.db.up:
            # Perhaps made (or revoked) in the database directly since the last mirror: merge once and look again.
            with contextlib.suppress(*DB_ERRORS):
                async with state.db.acquire() as conn:
                    await state.tokens.mirror(conn)
            principal = state.tokens.principal(token.strip())
        if principal is None:
            limiter.failed(client)
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if not principal.allows(role):
            raise HTTPException(403, f"this needs the {role} role; token '{principal.name}' "
                                     f"has {principal.role}")
        return principal

    return dep


class ErrorOut(BaseModel):
    """Every error response: a message that says what to do, and the status repeated."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "missing bearer token: send 'Authorization: Bearer <token>' (create one with 'heatrec token "
                  "create')", "status": 401},
        {"error": "invalid request: query.limit: Input should be less than or equal to 1000", "status": 422,
         "details": [{"field": "query.limit", "message": "Input should be less than or equal to 1000"}]}]})
    error: str
    status: int
    details: list[dict[str, str]] | None = None


# What a route that reads history declares: the database away is a 503 with Retry-After (the live routes never).
NEEDS_DATABASE: dict[int | str, dict[str, object]] = {
    503: {"model": ErrorOut, "description": "needs the database, which is unavailable: the body says since "
                                            "when and why, Retry-After when to try again"}}
