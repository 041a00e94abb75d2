"""What the route modules share: the bearer-token role dependency and the JSON error body.

Its own module so that a route module (history.py) and the app that includes it (app.py) both
import it from below instead of from each other.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict

from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.auth import Principal, Role
from service.storage.journal import DB_ERRORS


def client_address(request: Request) -> str:
    """The client's address: the peer's, or a trusted proxy's X-Forwarded-For (uvicorn, [api] trusted_proxies)."""
    return request.client.host if request.client else "unknown"


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(request: Request) -> Principal:
    """The principal of the request's bearer token; 401 without a valid one (slowed, then 429, when guessing).

    The token is looked up first: a valid token is never delayed or refused by the limiter, whatever
    others sent from the same address. Only failures are counted, delayed, and at worst refused.
    """
    state: ServiceState = request.app.state.heatrec
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                 "(create one with 'heatrec token create')", headers={"WWW-Authenticate": "Bearer"})
    client = client_address(request)
    # Verified at the plant: a dict lookup in the local token store, no database round trip.
    principal = state.tokens.principal(token)
    if principal is None and state.db.up and not limiter.suspect(client):
        # Perhaps made (or revoked) in the database directly since the last mirror: merge once and look again.
        # Not for a client that keeps failing: its guesses cost no database work.
        with contextlib.suppress(*DB_ERRORS):
            async with state.db.acquire() as conn:
                await state.tokens.mirror(conn)
        principal = state.tokens.principal(token)
    if principal is not None:
        return principal
    wait = limiter.failed(client)
    if wait is None:
        retry = limiter.retry_after(client)
        raise HTTPException(429, f"too many failed authentications from {client}: retry in {retry} s",
                            headers={"Retry-After": str(retry)})
    if wait > 0:
        await limiter.hold(client, wait)
    raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency that authenticates the bearer token and checks its role."""

    async def dep(request: Request) -> Principal:
        principal = await authenticate(request)
        if not principal.allows(role):
            # The token's name is not repeated: an answer says what is missing, not whose token it was.
            raise HTTPException(403, f"this needs the {role} role; the token has the {principal.role} role")
        return principal

    return dep


@functools.lru_cache(maxsize=64)
def _networks(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def in_networks(address: str, networks: Sequence[str]) -> bool:
    """Whether `address` lies in one of `networks` (addresses or CIDR networks); False for a non-IP address."""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in _networks(tuple(networks)))


async def monitoring_allowed(request: Request) -> bool:
    """Whether the request may see monitoring detail: from `[api] monitoring_networks`, or with a valid token.

    Without a token (and from elsewhere) False; a bad token is refused (401, slowed down like any other).
    """
    state: ServiceState = request.app.state.heatrec
    if in_networks(client_address(request), state.config.api.monitoring_networks):
        return True
    if request.headers.get("authorization") is None:
        return False
    await authenticate(request)  # any valid token: viewer is the lowest role
    return True


def require_monitoring() -> Callable[[Request], Awaitable[None]]:
    """Dependency of /metrics: a client in `[api] monitoring_networks`, or a viewer token."""

    async def dep(request: Request) -> None:
        if not await monitoring_allowed(request):
            await authenticate(request)  # raises: no token

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
