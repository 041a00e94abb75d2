"""The console under /ui: sign-in and sessions, the pages, and the writes (CSRF and role checked on each).

Everything is read from and done through the running service's own objects (the bus, the alarm
manager, the control loop via the WriteArbiter, the audit and accounting stores), exactly as the API
routes do; the live page's stream is the API's own SSE route, reached in process with the session's
token (`ConsoleStream`). None of these routes is in the OpenAPI: they answer HTML, not JSON.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote
from zoneinfo import ZoneInfo

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.accounting.documents import close_refusal, period_documents
from service.accounting.engine import meter_intervals, month_bounds, settle_month
from service.accounting.export import settlements_csv
from service.accounting.store import SettlementConflict, save_settlement
from service.alarms.store import recent_events
from service.api.accounting import PERIOD_PATTERN
from service.api.deps import authenticate
from service.api.state import ServiceState
from service.audit import AuditEntry, read_audit
from service.auth import Principal, Role
from service.control.model import ControlRequest
from service.errors import HeatrecError, StorageUnavailable
from service.storage.database import connection, translated
from service.storage.history import bounded_step, default_step, point_history
from service.ui.session import COOKIE_PATH, LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions
from service.ui.views import RANGES, TREND_H, TREND_W, fmt, outage_text, point_rows, point_unit, trend

HERE = Path(__file__).resolve().parent
# The pages load only their own script and style sheet, talk only to their own origin, are never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
NAV = (("/ui", "Overview"), ("/ui/alarms", "Alarms"), ("/ui/control", "Control"), ("/ui/audit", "Audit"),
       ("/ui/settlements", "Energy & settlements"), ("/ui/health", "Health"))
SHELVE_MINUTES = (15, 60, 240, 480, 1440)
_PERIOD = re.compile(PERIOD_PATTERN)


class Refusal(Exception):
    """A console request refused before it did anything: rendered as a page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _cookie(resp: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    resp.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict",
                    secure=_secure(request))


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (what the pages' forms send); other bodies are refused (415)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise Refusal(415, "the console takes form posts (application/x-www-form-urlencoded) only")
    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def _same_origin(request: Request) -> bool:
    """What a browser says of the request's origin, when it says it, must be this console (a guard beside CSRF).

    Sec-Fetch-Site first: with the pages' `Referrer-Policy: no-referrer` a browser sends `Origin: null`
    on a form post, which tells nothing either way.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin in (None, "null") or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


class Console:
    """The console's routes around one service state."""

    nav: tuple[tuple[str, str], ...] = NAV  # a console of another app (the centre's, ui/fleet.py) has its own

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state: ServiceState = app.state.heatrec
        self.sessions = Sessions()
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters["fmt"] = fmt
        self.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
        # What the API's routes query through: the Database gate (refuses at once while the database is away).
        self.pool: Any = self.state.pool

    # --- sessions -------------------------------------------------------------------------------------

    def signed_in(self, request: Request) -> tuple[Session, Principal] | None:
        """The request's session and its token's principal, re-checked now; None when signed out or revoked."""
        s = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if s is None:
            return None
        try:
            p = self.state.tokens.principal(s.token)  # local store: no database round trip
        except HeatrecError:
            return None  # the store unreadable: nothing can be verified
        if p is None:
            self.sessions.drop(s.sid)  # revoked: every session of the token ends
            return None
        return s, p

    async def writer(self, request: Request, role: Role) -> tuple[Session, Principal, dict[str, str]]:
        """A write's session, principal and form, or a Refusal: signed in, same origin, CSRF token, role."""
        who = self.signed_in(request)
        if who is None:
            raise Refusal(401, "you are not signed in (or the session has ended): sign in and try again")
        s, p = who
        form = await read_form(request)
        if not _same_origin(request):
            raise Refusal(403, "refused: the request came from another site")
        if not s.csrf_ok(form.get("csrf") or request.headers.get("x-csrf-token")):
            raise Refusal(403, "refused: the form's CSRF token is missing or wrong; reload the page and try again")
        if not p.allows(role):
            raise Refusal(403, f"this needs the {role} role; you are signed in with the {p.role} role")
        return s, p, form

    def page(self, request: Request, template: str, who: tuple[Session, Principal] | None, status: int = 200,
             **ctx: Any) -> HTMLResponse:
        """Render a page with its navigation, the user, the session's messages and CSRF token."""
        s, p = who if who is not None else (None, None)
        html = self.env.get_template(template).render(
            path=request.url.path, nav=self.nav, user=p, csrf=s.csrf if s else "",
            flash=s.take_flash() if s else [],
            can_operate=p is not None and p.allows("operator"), plant=self.title(), **ctx)
        resp = HTMLResponse(html, status)
        resp.headers["Content-Security-Policy"] = CSP
        return resp

    def title(self) -> str:
        """What the pages' header and title name: the plant."""
        return str(self.state.config.plant.name)

    def refused(self, request: Request, r: Refusal) -> HTMLResponse:
        """A Refusal as a page (the signed-in user's navigation kept)."""
        return self.page(request, "error.html", self.signed_in(request), r.status, message=r.message)

    @staticmethod
    def to_login() -> RedirectResponse:
        """Where a signed-out browser goes."""
        return RedirectResponse("/ui/login", 303)

    async def attempt(self, s: Session, work: Callable[[], Awaitable[str]]) -> None:
        """Run a write; its outcome (or the service's refusal, in its own words) is shown on the next page."""
        try:
            s.say("ok", await work())
        except HeatrecError as err:
            s.say("error", str(err) if not isinstance(err, StorageUnavailable) else outage_text(self.state, err))

    # --- sign-in --------------------------------------------------------------------------------------

    async def check_token(self, request: Request, token: str) -> Principal:
        """The API's own authentication (local store, mirror on a miss, failure limiter) of a pasted token."""
        raw = token.encode("ascii", "replace")  # a token is ASCII; anything else fails like any wrong token
        headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"authorization", b"cookie")]
        scope = {**request.scope, "headers": [*headers, (b"authorization", b"Bearer " + raw)]}
        return await authenticate(Request(scope))

    def login_page(self, request: Request, status: int = 200, error: str = "") -> HTMLResponse:
        """The sign-in form with a fresh CSRF token of its own (double-submitted: cookie and hidden field)."""
        token = secrets.token_urlsafe(32)
        resp = self.page(request, "login.html", None, status, login_csrf=token, error=error)
        _cookie(resp, request, LOGIN_COOKIE, token, max_age=3600)
        return resp

    async def login(self, request: Request) -> Response:
        """Check the pasted token; on success a new session and its cookie."""
        form = await read_form(request)
        sent, expected = form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
        if not (_same_origin(request) and expected and secrets.compare_digest(sent.encode(), expected.encode())):
            return self.login_page(request, 403, "The sign-in form had expired; please paste the token again.")
        token = form.get("token", "").strip()
        if not token:
            return self.login_page(request, 401, "Paste an API token to sign in.")
        try:
            p = await self.check_token(request, token)
        except HTTPException as err:  # 401 or 429, with the API's words (which never repeat the token)
            return self.login_page(request, err.status_code, f"Not signed in: {err.detail}.")
        s = self.sessions.create(token, p.name, p.role)
        resp = RedirectResponse("/ui", 303)
        _cookie(resp, request, SESSION_COOKIE, s.sid)
        resp.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
        return resp

    async def logout(self, request: Request) -> Response:
        """End the session (CSRF checked: a foreign page cannot sign anyone out)."""
        s, _, _ = await self.writer(request, "viewer")
        self.sessions.drop(s.sid)
        resp = self.to_login()
        resp.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return resp

    # --- pages ----------------------------------------------------------------------------------------

    def key_figures(self) -> dict[str, Any]:
        """Supply against target, CDU headroom, heat-pump states and alarm counts: the overview's head."""
        c = self.state.control
        out: dict[str, Any] = {"control": None, "alarms_active": 0, "alarms_unacked": 0}
        if self.state.alarms is not None:
            alarms = list(self.state.alarms.engine.alarms.values())
            out["alarms_active"] = sum(1 for a in alarms if a.active)
            out["alarms_unacked"] = sum(1 for a in alarms if a.needs_ack)
        if c is not None:
            st = c.status()
            out["control"] = {
                "mode": st.mode, "supply": fmt(st.supply_temperature), "target": fmt(st.supply_temperature_target),
                "target_source": st.target_source, "headroom": fmt(st.cdu_headroom_k),
                "constraint": st.constraint or "none", "safe_state": st.safe_state,
                "running": st.heat_pumps_running, "not_running": st.heat_pumps_not_running,
                "setpoints": {k: fmt(v) for k, v in st.heat_pump_setpoints.items()}}
        return out

    async def overview(self, request: Request) -> Response:
        """Every point live, quality by colour and text, and the key figures."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        return self.page(request, "overview.html", who, devices=point_rows(self.state), key=self.key_figures())

    async def status_json(self, request: Request) -> Response:
        """The key figures for the overview's script, refreshed every few seconds."""
        if self.signed_in(request) is None:
            return JSONResponse({"error": "not signed in", "status": 401}, 401)
        return JSONResponse(self.key_figures())

    async def point(self, request: Request) -> Response:
        """A point's trend from its history, zoomed by the range buttons."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        pid = request.path_params["point_id"]
        unit = point_unit(self.state, pid)
        if unit is None:
            return self.page(request, "error.html", who, 404, message=f"There is no point '{pid}'.")
        span = request.query_params.get("range", "1h")
        if span not in RANGES:
            span = "1h"
        t1 = datetime.now(UTC)
        t0 = t1 - RANGES[span]
        ctx: dict[str, Any] = {"pid": pid, "unit": unit, "ranges": list(RANGES), "span": span, "t0": t0, "t1": t1,
                               "width": TREND_W, "height": TREND_H, "latest": self.state.bus.latest.get(pid)}
        try:
            rows = await point_history(self.pool, pid, t0, t1, bounded_step(t0, t1, default_step(t0, t1)))
        except StorageUnavailable as err:
            return self.page(request, "trend.html", who, 503, outage=outage_text(self.state, err), **ctx)
        return self.page(request, "trend.html", who, trend=trend(t0, t1, [(b.time, b.value) for b in rows]), **ctx)

    async def alarms(self, request: Request) -> Response:
        """Alarms not normal (acknowledge, shelve, unshelve), then the recent history."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        m = self.state.alarms
        current = sorted((a for a in m.engine.alarms.values() if a.state.value != "normal"),
                         key=lambda a: (not a.active, a.id)) if m is not None else []
        outage, events = "", []
        if m is not None:
            try:
                events = list(await recent_events(self.pool, 50))
            except StorageUnavailable as err:
                outage = outage_text(self.state, err)
        return self.page(request, "alarms.html", who, enabled=m is not None, alarms=current, events=events,
                         outage=outage, minutes=SHELVE_MINUTES)

    async def alarm_action(self, request: Request) -> Response:
        """Acknowledge, shelve (with a reason, audited) or unshelve one alarm (operator)."""
        s, p, form = await self.writer(request, "operator")
        m = self.state.alarms
        if m is None:
            raise Refusal(404, "alarms are not enabled in this service")
        aid, action = request.path_params["alarm_id"], request.path_params["action"]

        async def work() -> str:
            assert m is not None
            if action == "acknowledge":
                await m.acknowledge(aid, p.name)
                return f"{aid} acknowledged"
            if action == "unshelve":
                await m.unshelve(aid, p.name)
                return f"{aid} returned to service"
            reason = form.get("reason", "").strip()
            try:
                minutes = float(form.get("minutes", ""))
            except ValueError:
                minutes = 0.0
            if len(reason) < 3 or not 0 < minutes <= 7 * 1440:
                raise Refusal(422, "shelving needs a reason (at least 3 characters) and a duration up to a week")
            await m.shelve(aid, p.name, minutes * 60)
            # The alarm keeps who and until when; why goes to the audit trail with them.
            assert self.state.audit is not None
            await self.state.audit(AuditEntry(p.name, p.role, "alarm.shelve", aid, minutes * 60, minutes * 60,
                                              "accepted", f"reason: {reason}"))
            return f"{aid} shelved for {minutes:g} min: {reason}"

        if action not in ("acknowledge", "shelve", "unshelve"):
            raise Refusal(404, f"no alarm action '{action}'")
        await self.attempt(s, work)
        return RedirectResponse("/ui/alarms", 303)

    async def control(self, request: Request) -> Response:
        """Mode, target, manual setpoint with the limiting reason and expiries; the form for operators."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        c = self.state.control
        return self.page(request, "control.html", who, st=c.status() if c is not None else None,
                         holds=self.state.arbiter.holds() if self.state.arbiter is not None else {})

    async def control_write(self, request: Request) -> Response:
        """Validate a control change, ask to confirm it, then submit it through the WriteArbiter (operator)."""
        s, p, form = await self.writer(request, "operator")
        c = self.state.control
        if c is None or self.state.arbiter is None:
            raise Refusal(404, "control is not enabled: add a [control] section to the plant config")
        body: dict[str, Any] = {}
        try:
            if form.get("mode"):
                body["mode"] = form["mode"]
            if form.get("clear_override"):
                body["supply_temperature_target"] = None
            elif form.get("target", "").strip():
                body["supply_temperature_target"] = float(form["target"])
            if form.get("manual_setpoint", "").strip():
                body["heat_pump_setpoint"] = float(form["manual_setpoint"])
            if form.get("hold_h", "").strip():
                body["expires_in_s"] = float(form["hold_h"]) * 3600
            req = ControlRequest.model_validate(body)
        except (ValueError, ValidationError) as err:
            msg = "; ".join(e["msg"] for e in err.errors()) if isinstance(err, ValidationError) else str(err)
            s.say("error", f"not changed: {msg}")
            return RedirectResponse("/ui/control", 303)
        if not body:
            s.say("error", "nothing to change: fill in at least one field")
            return RedirectResponse("/ui/control", 303)
        if form.get("confirm") != "yes":
            st = c.status()
            now = {"mode": st.mode, "supply_temperature_target": st.override, "heat_pump_setpoint": st.manual_setpoint,
                   "expires_in_s": None}
            labels = {"mode": "Mode", "supply_temperature_target": "Supply target override (°C)",
                      "heat_pump_setpoint": "Manual heat-pump setpoint (°C)", "expires_in_s": "Hold for (s)"}
            changes = [(labels[k], "curve" if k == "supply_temperature_target" and now[k] is None else now[k],
                        "back to the curve" if k == "supply_temperature_target" and v is None else v)
                       for k, v in body.items()]
            fields = {k: v for k, v in form.items() if k in ("mode", "clear_override", "target", "manual_setpoint",
                                                               "hold_h")}
            return self.page(request, "confirm.html", (s, p), changes=changes, fields=fields)
        arbiter = self.state.arbiter

        async def work() -> str:
            await arbiter.request_control(req, p.name, p.role)
            return "applied: " + ", ".join(f"{k} = {'curve' if v is None else v}" for k, v in body.items())

        await self.attempt(s, work)
        return RedirectResponse("/ui/control", 303)

    async def audit(self, request: Request) -> Response:
        """The audit trail, newest first, 50 a page."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        before = request.query_params.get("before", "")
        cursor = int(before) if before.isdigit() and len(before) < 18 else None
        try:
            rows = await read_audit(self.pool, limit=50, before=cursor)
        except StorageUnavailable as err:
            return self.page(request, "audit.html", who, 503, outage=outage_text(self.state, err), entries=[])
        older = rows[-1]["seq"] if len(rows) == 50 else None
        return self.page(request, "audit.html", who, entries=rows, older=older)

    def period(self, request: Request) -> str:
        """The ?period= asked for, else last month in the plant's time zone."""
        asked = request.query_params.get("period", "")
        if _PERIOD.match(asked):
            return asked
        today = datetime.now(ZoneInfo(self.state.config.plant.timezone)).date()
        return f"{today.replace(day=1) - timedelta(days=1):%Y-%m}"

    async def documents(self, period: str) -> list[dict[str, Any]]:
        """The period's settlements as the API lists them (closed versions and computed drafts)."""
        async with translated(), connection(self.pool) as conn:
            return await period_documents(conn, self.state.config, period)

    async def settlements(self, request: Request) -> Response:
        """Energy per meter and day, and the period's settlements with CSV, close and correct."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        acc = self.state.config.accounting
        if acc is None:
            return self.page(request, "settlements.html", who, enabled=False, period="", docs=[], energy=[])
        period = self.period(request)
        t0, t1 = month_bounds(period, ZoneInfo(self.state.config.plant.timezone))
        t1 = min(t1, datetime.now(UTC).replace(microsecond=0))
        try:
            docs = await self.documents(period)
            energy = []
            async with translated(), connection(self.pool) as conn:
                for m in acc.meters:
                    rows = await meter_intervals(conn, m, t0, max(t0, t1), 86400) if t1 > t0 else []
                    energy.append((m.id, sum(r.energy_gj for r in rows), sum(1 for r in rows if r.estimated)))
        except StorageUnavailable as err:
            return self.page(request, "settlements.html", who, 503, enabled=True, period=period, docs=[],
                             energy=[], outage=outage_text(self.state, err))
        return self.page(request, "settlements.html", who, enabled=True, period=period, docs=docs, energy=energy)

    async def settlements_csv(self, request: Request) -> Response:
        """The period's settlements as the API's CSV (the same bytes as ?format=csv)."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        if self.state.config.accounting is None:
            raise Refusal(404, "heat accounting is not configured ([accounting] in the plant config)")
        period = self.period(request)
        try:
            docs = await self.documents(period)
        except StorageUnavailable as err:
            raise Refusal(503, outage_text(self.state, err)) from err
        return Response(settlements_csv(docs), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="settlements-{period}.csv"'})

    async def settlement_action(self, request: Request) -> Response:
        """Close a month's settlement (version 1) or correct a closed one with a reason (operator)."""
        s, p, form = await self.writer(request, "operator")
        cfg = self.state.config
        contract, period, action = (request.path_params[k] for k in ("contract", "period", "action"))
        if cfg.accounting is None or contract not in {c.id for c in cfg.accounting.contracts}:
            raise Refusal(404, f"no contract '{contract}' in [accounting]")
        if not _PERIOD.match(period) or action not in ("close", "correct"):
            raise Refusal(404, "no such settlement action")
        correction = action == "correct"
        reason = form.get("reason", "").strip()
        incomplete = form.get("incomplete_reason", "").strip()
        if correction and len(reason) < 3:
            raise Refusal(422, "a correction needs a reason (at least 3 characters)")
        closed = self.state.closed_periods

        async def work() -> str:
            # As POST /api/v1/settlements/.../close and /correct do it: computed again from the data, then stored.
            async with translated(), connection(self.pool) as conn:
                [doc] = await settle_month(conn, cfg, period, [contract])
                refusal = close_refusal(doc, incomplete or (reason if correction else ""))
                if refusal is not None:
                    raise SettlementConflict(refusal)
                if incomplete:
                    doc = replace(doc, meta={**doc.meta, "incomplete_reason": incomplete})
                saved = await save_settlement(conn, doc, p.name, reason, correction)
                if closed is not None:
                    closed.close(doc.contract_id, doc.start, doc.end)
            return f"{contract} {period}: version {saved.get('version')} stored"

        await self.attempt(s, work)
        return RedirectResponse(f"/ui/settlements?period={quote(period)}", 303)

    async def health(self, request: Request) -> Response:
        """Every component's state: database, journal, spool, drivers, control."""
        who = self.signed_in(request)
        if who is None:
            return self.to_login()
        comps = sorted(self.state.health().items())
        overall = "ok" if all(st == "ok" for _, (st, _) in comps) else "degraded"
        return self.page(request, "health.html", who, comps=comps, overall=overall, db_up=self.state.db.up)

    async def asset(self, request: Request) -> Response:
        """The console's own script and style sheet, from the package."""
        name = request.path_params["name"]
        if name not in STATIC:
            return JSONResponse({"error": f"no console asset '{name}'", "status": 404}, 404)
        return Response(self.static[name], media_type=STATIC[name])

    async def login_form(self, request: Request) -> Response:
        """The sign-in page (or straight to the overview when signed in)."""
        if self.signed_in(request) is not None:
            return RedirectResponse("/ui", 303)
        return self.login_page(request)


class ConsoleStream:
    """GET /ui/stream: the API's own SSE route (GET /api/v1/stream), reached in process with the session's token.

    So the live page gets exactly what API clients get, revocation checks included; the token never
    leaves the server (EventSource cannot send a header, and the token is never in the page).
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        who = self.console.signed_in(Request(scope))
        if who is None:
            await JSONResponse({"error": "not signed in", "status": 401}, 401)(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"authorization", b"cookie")]
        inner = {**scope, "path": "/api/v1/stream", "raw_path": b"/api/v1/stream",
                 "headers": [*headers, (b"authorization", b"Bearer " + who[0].token.encode())]}
        await self.console.app.router(inner, receive, send)


def add_ui_routes(app: FastAPI) -> Console:
    """Mount the console under /ui on the API's app (the same process and port)."""
    console = Console(app)
    app.state.console = console

    @app.exception_handler(Refusal)
    async def refusal(request: Request, exc: Refusal) -> Response:
        return console.refused(request, exc)

    get, post = ["GET"], ["POST"]
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/ui", console.overview, get), ("/ui/login", console.login_form, get), ("/ui/login", console.login, post),
        ("/ui/logout", console.logout, post), ("/ui/status.json", console.status_json, get),
        ("/ui/points/{point_id}", console.point, get), ("/ui/alarms", console.alarms, get),
        ("/ui/alarms/{alarm_id}/{action}", console.alarm_action, post), ("/ui/control", console.control, get),
        ("/ui/control", console.control_write, post), ("/ui/audit", console.audit, get),
        ("/ui/settlements", console.settlements, get), ("/ui/settlements.csv", console.settlements_csv, get),
        ("/ui/settlements/{contract}/{period}/{action}", console.settlement_action, post),
        ("/ui/health", console.health, get), ("/ui/static/{name}", console.asset, get)]
    for path, endpoint, methods in routes:
        app.router.routes.append(Route(path, endpoint, methods=methods, include_in_schema=False))
    app.router.routes.append(Route("/ui/stream", ConsoleStream(console), methods=get, include_in_schema=False))
    return console
