"""What the route modules share: the bearer-token role dependency and the JSON error body.

Its own module so that a route module (history.py) and the app that includes it (app.py) both
import it from below instead of from each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict

from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.api.token_cache import TokenCache
from service.auth import Principal, Role, lookup_token
from service.storage.database import translated


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
        cache: TokenCache = request.app.state.token_cache
        async with translated():  # the database away while the token is not cached: 503, not a bare 500
            principal = await cache.principal(token.strip(), lambda t: lookup_token(state.pool, t))
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
