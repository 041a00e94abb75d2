"""FastAPI application: health and points under /api/v1, JSON errors, bearer-token roles."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from pydantic.config import JsonDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from service.api.accounting import add_accounting_routes
from service.api.alarms import add_alarm_routes
from service.api.auth_limiter import FailedAuthLimiter
from service.api.catch_all import CatchAllMiddleware
from service.api.control import add_control_routes
from service.api.deps import ErrorOut, require
from service.api.docs_assets import add_docs_routes
from service.api.history import router as history_router
from service.api.latency import LatencyMiddleware
from service.api.points_view import PointsView
from service.api.state import ServiceState
from service.api.stream import add_stream_routes
from service.api.tokens import add_token_routes
from service.auth import Principal
from service.errors import HeatrecError, StorageUnavailable


class ComponentHealth(BaseModel):
    """State of one part of the service."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "degraded", "detail": "backing_off"}]})
    status: str
    detail: str = ""


class Health(BaseModel):
    """Overall health: ok when every component is ok, else degraded."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "degraded", "plant": "DC1 heat recovery",
        "components": {"database": {"status": "ok", "detail": "120344 rows written"},
                       "driver:hp1": {"status": "degraded", "detail": "backing_off"}}}]})
    status: str
    plant: str
    components: dict[str, ComponentHealth]


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
    """503: what needs the database, why it is away, what still works, and when to try again."""
    db = request.app.state.heatrec.db
    retry = db.retry_after_s() if not db.up else exc.retry_after_s
    message = (f"{request.method} {request.url.path} needs the database: {exc}. Live points, the stream, "
               f"control, current alarms, health and metrics work without it; retry in {retry} s")
    resp = _error(503, message, unavailable="database", retry_after_s=retry)
    resp.headers["Retry-After"] = str(retry)
    return resp


_ERRORS = {400: "malformed request body", 401: "missing, invalid or revoked token", 403: "role too low",
           404: "unknown point, alarm or path", 409: "the action does not apply in the current state",
           422: "invalid parameters or body", 429: "too many failed authentications"}


def _document_errors(routes: Iterable[BaseRoute]) -> None:
    """Declare the JSON error responses each route can give, so the OpenAPI tells the whole truth."""
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        secured = any(getattr(d.call, "__name__", "") == "dep" for d in route.dependant.dependencies)
        codes = [400, 404, 422] if route.body_field else [404, 422]
        if secured:
            codes += [401, 403, 429]
        if (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}:
            codes.append(409)
        if route.path in ("/api/v1/health",):
            codes = []
        for code in codes:
            route.responses.setdefault(code, {"model": ErrorOut, "description": _ERRORS[code]})


def create_app(state: ServiceState, auth_limiter: FailedAuthLimiter | None = None) -> FastAPI:
    """Build the API around the running service's state."""
    # docs_url and redoc_url off: FastAPI's pages load from a CDN; add_docs_routes serves them offline.
    app = FastAPI(title="heatrec", version="0.1.0",
                  description="Telemetry, control and heat accounting for heat-recovery plants.",
                  docs_url=None, redoc_url=None)
    add_docs_routes(app)
    app.state.heatrec = state
    app.state.auth_limiter = auth_limiter or FailedAuthLimiter()

    if state.latency is not None:
        app.add_middleware(LatencyMiddleware, histogram=state.latency)
    app.add_middleware(CatchAllMiddleware)  # added last: the outermost of ours, so nothing escapes as text/plain

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
        return _error(exc.http_status, str(exc))

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

    @app.get("/api/v1/health", response_model=Health, tags=["status"])
    async def health() -> Health:
        """Component health; no authentication, for load balancers and monitoring."""
        comps = {name: ComponentHealth(status=s, detail=d) for name, (s, d) in state.health().items()}
        overall = "ok" if all(c.status == "ok" for c in comps.values()) else "degraded"
        return Health(status=overall, plant=state.config.plant.name, components=comps)

    @app.get("/metrics", tags=["status"], response_class=Response, responses={200: {"content": {
        "text/plain": {"example": "# HELP heatrec_samples_published_total Samples published on the sample bus\n"
                                  "# TYPE heatrec_samples_published_total counter\n"
                                  "heatrec_samples_published_total 18231.0\n"}}}})
    async def metrics() -> Response:
        """Prometheus text exposition: drivers, bus, storage, API latency (no authentication)."""
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
    add_accounting_routes(app, require)
    add_token_routes(app, require)
    add_stream_routes(app, require)
    _document_errors(history_router.routes)
    app.include_router(history_router)
    _document_errors(app.routes)

    return app
