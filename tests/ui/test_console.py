"""The console's sign-in, sessions, CSRF, roles and database-outage pages, in process (no socket, no database).

The service state has no database at all, which the console sees exactly as an outage: the live
pages answer, the history pages say why they cannot. The browser tests (test_console_browser.py)
cover the same console on the real service.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.state import ServiceState
from service.bus import SampleBus
from service.config import parse_config
from service.model import Quality, Sample
from service.token_store import TokenStore
from service.ui.session import Sessions
from service.ui.views import TREND_H, TREND_PAD, TREND_W, fmt, trend

CFG = parse_config({"plant": {"name": "console plant"}, "devices": [
    {"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1},
        {"id": "cop", "address": 4, "function": "input"}]}]})


@dataclass
class Console:
    """An app without a database, its token store and the tokens of each role."""

    app: object
    tokens: TokenStore
    viewer: str
    operator: str
    bus: SampleBus


@pytest.fixture
def console() -> Console:
    store = TokenStore(None)
    viewer, operator = store.create("viewer", "ui-viewer")[1], store.create("operator", "ui-operator")[1]
    bus = SampleBus()
    state = ServiceState(CFG, bus, None, tokens=store)
    app = create_app(state, FailedAuthLimiter(max_failures=3, delay_s=0.0, max_held=1))
    return Console(app, store, viewer, operator, bus)


@pytest.fixture
async def http(console: Console) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=console.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://plant.test") as client:
        yield client


def hidden_csrf(html: str) -> str:
    """The CSRF token of the page's first form."""
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


async def sign_in(http: httpx.AsyncClient, token: str) -> httpx.Response:
    """The browser's way: fetch the form (its cookie and hidden token), post the pasted token."""
    form = await http.get("/ui/login")
    assert form.status_code == 200
    return await http.post("/ui/login", data={"csrf": hidden_csrf(form.text), "token": token})


async def test_sign_in_sets_a_strict_httponly_session_cookie_and_the_token_never_shows(
        console: Console, http: httpx.AsyncClient) -> None:
    r = await http.get("/ui")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    r = await sign_in(http, console.viewer)
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("heatrec_session="))
    attrs = {a.strip().lower() for a in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attrs and "secure" not in attrs, cookie
    assert console.viewer not in cookie
    page = await http.get("/ui")
    assert page.status_code == 200 and "ui-viewer (viewer)" in page.text
    assert console.viewer not in page.text
    # The page loads nothing from elsewhere, and says so in its own policy.
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/ui/static/console.js", "/ui/static/console.css"):
        assert (await http.get(asset)).status_code == 200
    # None of the console's routes is in the API's contract.
    assert not [p for p in (await http.get("/openapi.json")).json()["paths"] if p.startswith("/ui")]


async def test_under_tls_the_session_cookie_is_secure(console: Console) -> None:
    transport = httpx.ASGITransport(app=console.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://plant.test") as client:
        r = await sign_in(client, console.operator)
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("heatrec_session="))
    assert "secure" in {a.strip().lower() for a in cookie.split(";")}, cookie


async def test_a_wrong_token_or_a_forged_sign_in_gets_no_session(console: Console, http: httpx.AsyncClient) -> None:
    r = await sign_in(http, "hr_not-a-token")
    assert r.status_code == 401 and "invalid or revoked token" in r.text
    assert "hr_not-a-token" not in r.text and "heatrec_session" not in r.headers.get("set-cookie", "")
    # Without the sign-in form's own token (a foreign page posting a token of its choice): refused.
    fresh = httpx.AsyncClient(transport=httpx.ASGITransport(app=console.app),  # type: ignore[arg-type]
                              base_url="http://plant.test")
    async with fresh:
        r = await fresh.post("/ui/login", data={"csrf": "x", "token": console.operator})
        assert r.status_code == 403 and "heatrec_session" not in r.headers.get("set-cookie", "")
        assert (await fresh.get("/ui")).status_code == 303


async def test_every_write_needs_the_session_csrf_token_and_the_role(console: Console,
                                                                     http: httpx.AsyncClient) -> None:
    await sign_in(http, console.viewer)
    csrf = hidden_csrf((await http.get("/ui/control")).text)
    # A viewer's well-formed write: refused by role on the server, whatever the page showed.
    r = await http.post("/ui/control", data={"csrf": csrf, "target": "70", "confirm": "yes"})
    assert r.status_code == 403 and "needs the operator role" in r.text
    r = await http.post("/ui/alarms/hp1.cop:low/acknowledge", data={"csrf": csrf})
    assert r.status_code == 403 and "needs the operator role" in r.text
    http.cookies.clear()
    await sign_in(http, console.operator)
    for data in ({"target": "70", "confirm": "yes"}, {"csrf": "forged", "target": "70", "confirm": "yes"}):
        r = await http.post("/ui/control", data=data)
        assert r.status_code == 403 and "CSRF token is missing or wrong" in r.text, r.text
    csrf = hidden_csrf((await http.get("/ui")).text)
    r = await http.post("/ui/logout", data={"csrf": csrf}, headers={"Origin": "http://evil.test"})
    assert r.status_code == 403 and (await http.get("/ui")).status_code == 200
    r = await http.post("/ui/control", json={"csrf": csrf})
    assert r.status_code == 415
    # Logout with the token: the session is gone, also for whoever kept the cookie.
    sid = http.cookies["heatrec_session"]
    assert (await http.post("/ui/logout", data={"csrf": csrf})).status_code == 303
    http.cookies.set("heatrec_session", sid, domain="plant.test", path="/ui")
    assert (await http.get("/ui")).status_code == 303
    assert (await http.post("/ui/control", data={"csrf": csrf, "target": "70"})).status_code == 401


async def test_revoking_the_token_ends_its_sessions(console: Console, http: httpx.AsyncClient) -> None:
    await sign_in(http, console.operator)
    assert (await http.get("/ui/health")).status_code == 200
    console.tokens.revoke("ui-operator")
    assert (await http.get("/ui/health")).status_code == 303
    assert (await http.get("/ui/status.json")).status_code == 401
    assert (await http.get("/ui/stream")).status_code == 401


async def test_during_a_database_outage_live_pages_work_and_history_pages_say_why(
        console: Console, http: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    console.bus.publish(Sample("hp1.supply_temperature", 71.25, Quality.GOOD, now, now))
    console.bus.publish(Sample("hp1.cop", 3.5, Quality.STALE, now, now))
    await sign_in(http, console.viewer)
    page = await http.get("/ui")
    assert page.status_code == 200
    row = re.search(r'data-point="hp1.supply_temperature">.*?</tr>', page.text, re.S)
    assert row and "71.25" in row.group(0) and 'class="q q-good">good' in row.group(0)
    assert 'class="q q-stale">stale' in page.text
    assert (await http.get("/ui/health")).status_code == 200
    alarms = await http.get("/ui/control")
    assert alarms.status_code == 200 and "Control is not enabled" in alarms.text
    for path in ("/ui/audit", "/ui/points/hp1.supply_temperature"):
        r = await http.get(path)
        assert r.status_code == 503, (path, r.status_code)
        assert "needs the database, which is unavailable" in r.text and "Live values, control" in r.text
    assert (await http.get("/ui/points/hp1.nothing")).status_code == 404


def test_sessions_are_bounded_and_end_when_idle() -> None:
    s = Sessions(idle_s=0.0, max_sessions=2)
    a = s.create("t1", "a", "viewer")
    s.create("t2", "b", "viewer")
    s.create("t3", "c", "viewer")
    assert len(s) == 2 and s.get(a.sid) is None
    fresh = Sessions()
    b = fresh.create("t", "b", "operator")
    assert fresh.get(b.sid) is b and b.csrf_ok(b.csrf) and not b.csrf_ok(None) and not b.csrf_ok("x")


def test_trend_scales_buckets_into_the_svg_box_and_leaves_gaps_out() -> None:
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=10)
    line = trend(t0, t1, [(t0, 60.0), (t0 + timedelta(minutes=5), None), (t1, 70.0)])
    assert (line.low, line.high, line.last, line.count) == (60.0, 70.0, 70.0, 2)
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in line.points.split())
    assert (x0, x1) == (TREND_PAD, TREND_W - TREND_PAD) and (y0, y1) == (TREND_H - TREND_PAD, TREND_PAD)
    assert trend(t0, t1, [(t0, None)]).points == ""
    assert [fmt(v) for v in (None, float("nan"), 71.256, 12345.67)] == ["—", "—", "71.26", "12345.7"]
