"""The centre's HTTP face: the fleet's sites, Prometheus metrics and health (read only: it writes to no plant)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from service.fleet.view import FleetState


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


def create_central_app(state: FleetState, registry: CollectorRegistry,
                       health: Callable[[], dict[str, tuple[str, str]]]) -> FastAPI:
    """The centre's app: GET /api/v1/fleet/sites, /metrics, /health."""
    app = FastAPI(title="heatrec central", docs_url=None, redoc_url=None)

    @app.get("/api/v1/fleet/sites", response_model=list[SiteOut], tags=["fleet"])
    async def sites() -> list[SiteOut]:
        """Every site configured or heard of."""
        return [SiteOut(**dataclasses.asdict(v)) for v in state.views()]

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["fleet"])
    async def get_health() -> dict[str, object]:
        """ok or degraded, per component."""
        parts = health()
        return {"status": "ok" if all(s == "ok" for s, _ in parts.values()) else "degraded",
                "components": {k: {"status": s, "detail": d} for k, (s, d) in parts.items()}}

    return app
