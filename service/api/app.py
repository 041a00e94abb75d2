"""FastAPI application: health and points under /api/v1, JSON errors, bearer-token roles."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from service.api.accounting import add_accounting_routes
from service.api.alarms import add_alarm_routes
from service.api.auth_limiter import FailedAuthLimiter
from service.api.catch_all import CatchAllMiddleware
from service.api.control import add_control_routes
from service.api.deps import ErrorOut, monitoring_allowed, require, require_monitoring
from service.api.dispatch import add_dispatch_routes
from service.api.docs_assets import add_docs_routes
from service.api.guards import NO_CONTROL_PATTERN, RequestGuard, SecurityHeaders
from service.api.history import router as history_router
from service.api.latency import LatencyMiddleware
from service.api.points_view import PointsView
from service.api.state import ServiceState
from service.api.stream import add_stream_routes
from service.api.tokens import add_token_routes
from service.auth import Principal
from service.errors import HeatrecError, StorageError, StorageUnavailable, StorageValueError
from service.ui.routes import add_ui_routes

log = logging.getLogger(__name__)


class ComponentHealth(BaseModel):
    """State of one part of the service."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "degraded", "detail": "backing_off"}]})
    status: str
    detail: str = ""


class Health(BaseModel):
    """Overall health: ok when every component is ok, else degraded; the parts only for monitoring."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}, {
        "status": "degraded", "plant": "DC1 heat recovery",
        "components": {"database": {"status": "ok", "detail": "120344 rows written"},
                       "driver:hp1": {"status": "degraded", "detail": "backing_off"}}}]})
    status: str
    plant: str | None = Field(default=None, description="with a token or from [api] monitoring_networks only")
    components: dict[str, ComponentHealth] | None = Field(
        default=None, description="with a token or from [api] monitoring_networks only")


_POINT_EXAMPLE: JsonDict = {
    "id": "hp1.supply_temperature", "device": "hp1", "unit": "degC", "kind": "measurement", "writable": False,
    "value": 71.5, "quality": "GOOD", "source_time": "2026-03-01T12:00:00Z", "receive_time": "2026-03-01T12:00:00.042Z"}


class PointOut(BaseModel):
    """A point with its latest sample."""

    model_config = ConfigDict(json_schema_extra={"examples": [_POINT_EXAMPLE]})
    id: str
    device: str
    unit: str
    kind: str
    writable: bool
    value: float | None
    quality: str | None
    source_time: datetime | None
    receive_time: datetime | None


class PointList(BaseModel):
    """All points of the plant."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"points": [_POINT_EXAMPLE]}]})
    points: list[PointOut]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def _unavailable(request: Request, exc: StorageUnavailable) -> JSONResponse:
    """503: what needs the database, since when it is away, what still works, and when to try again.

    The cause (a socket error, PostgreSQL's own message) is not repeated to the client: it is in the
    service log and in the detailed health, for those allowed to see it.
    """
    db = request.app.state.heatrec.db
    retry = db.retry_after_s() if not db.up else exc.retry_after_s
    since = db.stats.since if not db.up else None
    why = (f"the database is unavailable since {since:%Y-%m-%d %H:%M:%SZ}" if since is not None
           else "the database is unavailable")
    message = (f"{request.method} {request.url.path} needs the database: {why} (the cause is in the service "
               "log and the detailed /api/v1/health). Live points, the stream, control, current alarms, health "
               f"and metrics work without it; retry in {retry} s")
    resp = _error(503, message, unavailable="database", retry_after_s=retry)
    resp.headers["Retry-After"] = str(retry)
    return resp


_ERRORS = {400: "malformed request body", 401: "missing, invalid or revoked token", 403: "role too low",
           404: "unknown point, alarm or path", 409: "the action does not apply in the current state",
           413: "request body larger than [api] max_body_bytes",
           422: "invalid parameters or body (a control character in any parameter, too long a range)",
           429: "too many failed authentications"}


def _document_errors(routes: Iterable[BaseRoute]) -> None:
    """Declare the JSON error responses each route can give, so the OpenAPI tells the whole truth."""
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        secured = any(getattr(d.call, "__name__", "") == "dep" for d in route.dependant.dependencies)
        codes = [400, 404, 413, 422] if route.body_field else [404, 422]
        if secured:
            codes += [401, 403, 429]
        if (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}:
            codes.append(409)
        if route.path in ("/api/v1/health",):
            codes = [401, 422, 429]  # a token is optional; a bad one is refused like anywhere
        for code in codes:
            route.responses.setdefault(code, {"model": ErrorOut, "description": _ERRORS[code]})


def _forbid_control_characters(schema: dict[str, Any]) -> None:
    """Say in the OpenAPI what RequestGuard enforces: no string path or query parameter holds a control character.

    Parameters with a pattern, a format or an enum of their own already exclude them.
    """
    for item in schema.get("paths", {}).values():
        for op in item.values():
            for param in op.get("parameters", []) if isinstance(op, dict) else []:
                if param.get("in") not in ("path", "query"):
                    continue
                s = param.get("schema", {})
                for alt in s.get("anyOf", [s]):
                    if alt.get("type") == "string" and not {"pattern", "format", "enum", "const"} & alt.keys():
                        alt["pattern"] = NO_CONTROL_PATTERN


def _internal_error(request: Request, exc: BaseException, what: str) -> JSONResponse:
    """A JSON 500 with an id; the detail (never shown to the client) is logged once under that id."""
    error_id = secrets.token_hex(6)
    log.error("%s %s in %s %s: %s", what, error_id, request.method, request.url.path, exc, exc_info=exc)
    return _error(500, f"internal error {error_id}: it is logged on the server with this id; please report it",
                  error_id=error_id)


def create_app(state: ServiceState, auth_limiter: FailedAuthLimiter | None = None) -> FastAPI:
    """Build the API around the running service's state."""
    # docs_url and redoc_url off: FastAPI's pages load from a CDN; add_docs_routes serves them offline.
    app = FastAPI(title="heatrec", version="0.1.0",
                  description="Telemetry, control and heat accounting for heat-recovery plants.",
                  docs_url=None, redoc_url=None)
    add_docs_routes(app)
    app.state.heatrec = state
    app.state.auth_limiter = auth_limiter or FailedAuthLimiter()

    # Before routing, authentication and body parsing: too large a body (413), a control character (422).
    app.add_middleware(RequestGuard, max_body_bytes=state.config.api.max_body_bytes)
    if state.latency is not None:  # outside the guard: its refusals are observed too
        app.add_middleware(LatencyMiddleware, histogram=state.latency)
    app.add_middleware(CatchAllMiddleware)  # outside the others, so nothing escapes as text/plain
    app.add_middleware(SecurityHeaders)  # added last, the outermost: every answer has the headers, a 500 too

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _forbid_control_characters(base_openapi())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = _error(exc.status_code, str(exc.detail))
        if exc.headers:
            resp.headers.update(exc.headers)
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; a path with GET and PUT has both.
            allowed = {m for r in request.app.router.routes if isinstance(r, APIRoute)
                       and r.path_regex.match(request.url.path) for m in (r.methods or ())}
            if allowed:
                resp.headers["Allow"] = ", ".join(sorted(allowed))
        return resp

    @app.exception_handler(HeatrecError)
    async def heatrec_error(request: Request, exc: HeatrecError) -> JSONResponse:
        # The one place heatrec's error tree becomes HTTP: each error knows its status (service/errors.py).
        if isinstance(exc, StorageUnavailable):
            return _unavailable(request, exc)
        if isinstance(exc, StorageValueError):
            # PostgreSQL's own words (which may quote the input or the schema) stay in the log.
            log.info("%s %s: refused by the database: %s", request.method, request.url.path, exc)
            return _error(422, "invalid request: a value is outside what the database can store or compute with "
                               "(a time or number out of range, or a character it cannot hold)")
        if isinstance(exc, StorageError):
            return _internal_error(request, exc, "database error")
        return _error(exc.http_status, str(exc))

    @app.exception_handler(ValidationError)
    async def model_error(request: Request, exc: ValidationError) -> JSONResponse:
        # A model built inside a route from what the client sent: its fault, said without echoing the input.
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return _error(422, "invalid request: " + "; ".join(f"{d['field']}: {d['message']}" for d in details),
                      details=details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json" and any(e["loc"][:1] == ("body",) for e in exc.errors()):
            # `curl -d` without -H sends a form: say so, rather than that the object is not an object.
            return _error(422, f"invalid request: the body must be JSON, sent with 'Content-Type: application/json' "
                               f"(got {ctype or 'no Content-Type'})", details=details)
        return _error(422, "invalid request: " + "; ".join(f"{d['field']}: {d['message']}" for d in details),
                      details=details)

    @app.get("/api/v1/health", response_model=Health, response_model_exclude_none=True, tags=["status"])
    async def health(request: Request) -> Health:
        """Overall status without a token, for load balancers: `{"status": "ok"}` or `degraded`.

        Each component with its detail (database, journal, spool, control, drivers) with a token of any
        role, or from `[api] monitoring_networks`; a bad token is refused (401).
        """
        comps = {name: ComponentHealth(status=s, detail=d) for name, (s, d) in state.health().items()}
        overall = "ok" if all(c.status == "ok" for c in comps.values()) else "degraded"
        if not await monitoring_allowed(request):
            return Health(status=overall)
        return Health(status=overall, plant=state.config.plant.name, components=comps)

    @app.get("/metrics", tags=["status"], response_class=Response, responses={200: {"content": {
        "text/plain": {"example": "# HELP heatrec_samples_published_total Samples published on the sample bus\n"
                                  "# TYPE heatrec_samples_published_total counter\n"
                                  "heatrec_samples_published_total 18231.0\n"}}}},
             dependencies=[Depends(require_monitoring())])
    async def metrics() -> Response:
        """Prometheus text exposition: drivers, bus, storage, API latency (a token, or [api] monitoring_networks)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if state.registry is None:
            raise HTTPException(404, "metrics are not enabled")
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    points_view = PointsView(state.config, state.bus)

    @app.get("/api/v1/points", response_model=PointList, tags=["points"])
    async def points(_: Annotated[Principal, Depends(require("viewer"))],
                     device: Annotated[str | None, Query(description="only this device's points")] = None,
                     ) -> Response:
        """Every configured point with its latest value, quality and timestamps (viewer); 404 unknown device."""
        if device is not None and device not in points_view.devices():
            raise HTTPException(404, f"no device '{device}': GET /api/v1/points lists every device's points")
        # Pre-encoded (see PointsView): this is the most frequent request; the JSON is exactly a PointList.
        return Response(points_view.json(device), media_type="application/json")

    add_alarm_routes(app, require)
    add_control_routes(app, require)
    add_dispatch_routes(app, require)
    add_accounting_routes(app, require)
    add_token_routes(app, require)
    add_stream_routes(app, require)
    _document_errors(history_router.routes)
    app.include_router(history_router)
    _document_errors(app.routes)
    add_ui_routes(app)  # the operator console under /ui, on the same app and port (docs/UI.md); not in the OpenAPI

    return app
