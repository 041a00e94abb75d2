"""The console of `heatrec central` under /ui: the site console's sign-in and sessions, and the fleet page.

Sign-in, sessions, CSRF, sign-out and the static assets are the site console's own (routes.Console):
the token is pasted once, checked by the API's authentication against the centre's token store, and
the browser keeps only an HttpOnly, SameSite=Strict session cookie. The fleet page shows every site's
link, lag, backlog and last acknowledged batch (from memory: it works while the database is away) and
the KPIs of the last 30 days (from the central database).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Route

from service.errors import StorageUnavailable
from service.fleet import readings
from service.fleet_config import CentralSite
from service.storage.database import connection
from service.ui.routes import Console, Refusal

KPI_DAYS = 30
LINK_CLASS = {"online": "status-ok", "offline": "status-degraded", "stale": "q q-stale", "unknown": "q q-none"}


def lag_text(lag_s: float | None) -> str:
    """A lag as the page shows it: seconds, minutes or hours; a dash when nothing was committed yet."""
    if lag_s is None:
        return "—"
    if lag_s < 120:
        return f"{lag_s:.1f} s"
    if lag_s < 7200:
        return f"{lag_s / 60:.1f} min"
    return f"{lag_s / 3600:.1f} h"


def when_text(t: datetime | None) -> str:
    """A time as the page shows it (UTC)."""
    return "—" if t is None else f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


class FleetConsole(Console):
    """The centre's console: the site console's sign-in, one fleet page."""

    nav = (("/ui", "Fleet"),)

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app)
        # The centre's state (service/fleet/api.py CentralState): what the sign-in reads of a service state
        # (tokens, db, pool) and the fleet's own.
        self.central: Any = app.state.heatrec

    def title(self) -> str:
        """The header names the centre's instance."""
        return f"fleet · {self.central.config.instance}"

    def sites(self) -> list[CentralSite]:
        """The sites whose KPIs are shown: configured, or (without [[sites]]) heard of."""
        if self.central.config.sites is not None:
            return list(self.central.config.sites)
        return [CentralSite(id=v.site) for v in self.central.fleet.views()]

    async def fleet(self, request: Request) -> Response:
        """Every site's link, lag, backlog and last acknowledged batch, and the fleet's KPIs."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        now = datetime.now(UTC).replace(microsecond=0)
        t0 = now - timedelta(days=KPI_DAYS)
        ctx: dict[str, Any] = {"outage": "", "fleet": {}, "kpis": []}
        try:
            async with connection(self.pool) as conn:
                docs = [await readings.site_kpis(conn, s, t0, now) for s in self.sites()]
            ctx.update(fleet=readings.fleet_totals(docs, t0, now), kpis=docs)
        except StorageUnavailable:
            retry = self.central.db.retry_after_s()
            ctx["outage"] = (f"The KPIs need the central database, which is unavailable; the sites above come from "
                             f"the live link and keep updating. Try again in {retry} s.")
        return self.page(request, "fleet.html", who, 503 if ctx["outage"] else 200, sites=self.central.fleet.views(),
                         now=when_text(now), kpi_days=KPI_DAYS, link_class=LINK_CLASS, lag=lag_text,
                         when=when_text, **ctx)

def add_fleet_ui_routes(app: FastAPI) -> FleetConsole:
    """Mount the centre's console under /ui (needs app.state.heatrec: the centre's state)."""
    console = FleetConsole(app)
    app.state.console = console

    @app.exception_handler(Refusal)
    async def refusal(request: Request, exc: Refusal) -> Response:
        return console.refused(request, exc)

    get, post = ["GET"], ["POST"]
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/ui", console.fleet, get), ("/ui/login", console.login_form, get), ("/ui/login", console.login, post),
        ("/ui/logout", console.logout, post), ("/ui/static/{name}", console.asset, get)]
    for path, endpoint, methods in routes:
        app.router.routes.append(Route(path, endpoint, methods=methods, include_in_schema=False))
    return console
