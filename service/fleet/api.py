"""The centre's HTTP face: the fleet's sites, their points, history and KPIs, the console, metrics and health.

Read only: it writes to no plant. Authentication is the site's own (service/api/deps.py): a bearer token
of the centre's token store (`[api] token_store` of central.toml, `heatrec token create -c central.toml`),
the roles viewer < operator < admin; everything here needs viewer. /metrics and the detailed health, as
on a site: a token of any role, or a client in `[api] monitoring_networks`. Managing the centre's tokens
over the API (`/api/v1/tokens`, the site's routes) needs admin.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.auth_limiter import FailedAuthLimiter
from service.api.catch_all import CatchAllMiddleware
from service.api.deps import monitoring_allowed, require, require_monitoring
from service.api.guards import RequestGuard, SecurityHeaders
from service.api.tokens import add_token_routes
from service.audit import AuditLog, AuditSink
from service.auth import Principal
from service.errors import HeatrecError, StorageError, StorageUnavailable, StorageValueError
from service.fleet.history_api import router as history_router
from service.fleet.records_api import router as records_router
from service.fleet.view import FleetState
from service.fleet_config import CentralConfig
from service.storage.database import Database
from service.token_store import TokenStore
from service.ui.fleet import add_fleet_ui_routes

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 65_536  # the centre takes no bodies but the console's sign-in form


@dataclass
class CentralState:
    """What the routes share (`app.state.heatrec`): the attributes service/api/deps.py's authentication reads."""

    config: CentralConfig
    fleet: FleetState
    db: Database
    tokens: TokenStore
    health: Callable[[], dict[str, tuple[str, str]]]
    audit: AuditSink | None = None  # the token routes' trail: the central database's audit table (logged if away)

    def __post_init__(self) -> None:
        if self.audit is None:
            self.audit = AuditLog(self.db).record

    @property
    def pool(self) -> Database:
        """What queries go through: the Database gate (DatabaseDown at once while it is away)."""
        return self.db


class SiteOut(BaseModel):
    """One site: its link, how far behind the centre is, what it has acknowledged, what the site holds."""

    site: str
    name: str
    link: str
    lag_s: float | None
    last_acked_batch: int
    epoch: int
    batches: int
    samples: int
    replayed_batches: int
    lost_batches: int
    backlog_samples: int
    backlog_batches: int
    last_commit_at: datetime | None
    status_at: datetime | None


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def _add_error_handlers(app: FastAPI, state: CentralState) -> None:
    """Errors as the site's API answers them: JSON {error, status}; 503 with Retry-After while the database is away."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = _error(exc.status_code, str(exc.detail))
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(HeatrecError)
    async def heatrec_error(request: Request, exc: HeatrecError) -> JSONResponse:
        if isinstance(exc, StorageUnavailable):
            db = state.db
            retry = db.retry_after_s() if not db.up else exc.retry_after_s
            since = f" since {db.stats.since:%Y-%m-%d %H:%M:%SZ}" if not db.up and db.stats.since else ""
            resp = _error(503, f"{request.method} {request.url.path} needs the central database, which is "
                               f"unavailable{since} (the cause is in the log and the detailed /health); the "
                               f"sites list and metrics work without it; retry in {retry} s",
                          unavailable="database", retry_after_s=retry)
            resp.headers["Retry-After"] = str(retry)
            return resp
        if isinstance(exc, StorageValueError):
            log.info("%s %s: refused by the database: %s", request.method, request.url.path, exc)
            return _error(422, "invalid request: a value is outside what the database can store or compute with")
        if isinstance(exc, StorageError):
            error_id = secrets.token_hex(6)
            log.error("database error %s in %s %s: %s", error_id, request.method, request.url.path, exc,
                      exc_info=exc)
            return _error(500, f"internal error {error_id}: it is logged on the server with this id",
                          error_id=error_id)
        return _error(exc.http_status, str(exc))

    def _details(errors: list[Any]) -> list[dict[str, str]]:
        return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in errors]

    @app.exception_handler(ValidationError)
    async def model_error(request: Request, exc: ValidationError) -> JSONResponse:
        d = _details(exc.errors())
        return _error(422, "invalid request: " + "; ".join(f"{x['field']}: {x['message']}" for x in d), details=d)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        d = _details(list(exc.errors()))
        return _error(422, "invalid request: " + "; ".join(f"{x['field']}: {x['message']}" for x in d), details=d)


def create_central_app(state: CentralState, registry: CollectorRegistry,
                       auth_limiter: FailedAuthLimiter | None = None) -> FastAPI:
    """The centre's app: /api/v1/fleet/..., the console under /ui, /metrics, /health."""
    app = FastAPI(title="heatrec central", docs_url=None, redoc_url=None)
    app.state.heatrec = state
    app.state.auth_limiter = auth_limiter or FailedAuthLimiter()
    app.add_middleware(RequestGuard, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app, state)

    @app.get("/api/v1/fleet/sites", response_model=list[SiteOut], tags=["fleet"])
    async def sites(_: Annotated[Principal, Depends(require("viewer"))]) -> list[SiteOut]:
        """Every site configured or heard of (viewer)."""
        return [SiteOut(**dataclasses.asdict(v)) for v in state.fleet.views()]

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_monitoring())])
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["fleet"])
    async def get_health(request: Request) -> dict[str, object]:
        """ok or degraded for anyone; per component with a token or from [api] monitoring_networks."""
        parts = state.health()
        overall = "ok" if all(s == "ok" for s, _ in parts.values()) else "degraded"
        if not await monitoring_allowed(request):
            return {"status": overall}
        return {"status": overall, "components": {k: {"status": s, "detail": d} for k, (s, d) in parts.items()}}

    app.include_router(history_router)
    add_token_routes(app, require)  # admin: the centre's tokens, as a site's (also `heatrec token -c central.toml`)
    app.include_router(records_router)  # a site's alarms, events, audit (service/fleet/records_api.py)
    add_fleet_ui_routes(app)
    return app
