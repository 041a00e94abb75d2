"""The API under attack: bodies too large, control characters, forged proxy headers, token guessing, revoked
tokens on open streams, unbounded ranges, HTTP hygiene, and what an error may say.

Each test performs the attack the security review found against the running demo, against the app
(httpx's ASGI transport) or, where the server itself matters (proxy headers, deadlines, the stream),
against the real uvicorn configured by `api_server_config`, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.accounting.engine import meter_spec
from service.accounting.export import settlements_csv
from service.accounting.kpis import kpis
from service.accounting.store import build_register_hours, point_key
from service.api.app import create_app
from service.api.auth_limiter import FailedAuthLimiter
from service.api.guards import NO_CONTROL_PATTERN
from service.api.http_protocol import DeadlineH11Protocol, ThrottledWarnings
from service.api.state import ServiceState
from service.app import _ApiServer, api_server_config, bind_api_socket
from service.auth import create_token
from service.bus import SampleBus
from service.config import ApiConfig, DatabaseConfig, HeatrecConfig, parse_config
from service.errors import StorageValueError
from service.localservers import free_port
from service.model import Quality, Sample
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.accounting.acc_support import MARCH_END, MARCH_START, config_dict, constant_meter, write

PLANT = {"plant": {"name": "attacked plant"}, "devices": [
    {"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
        {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input", "scale": 0.1}]}]}


def plant(**api: Any) -> HeatrecConfig:
    return parse_config({**PLANT, "api": api})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Live:
    """An app without a database (tokens in memory) and what the tests reach into."""

    def __init__(self, cfg: HeatrecConfig, limiter: FailedAuthLimiter | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.bus = SampleBus()
        self.state = ServiceState(cfg, self.bus, None, registry=registry)
        self.limiter = limiter or FailedAuthLimiter(delay_s=0.001, max_delay_s=0.002)
        self.app = create_app(self.state, self.limiter)
        self.tokens = {role: self.state.tokens.create(role, f"{role}-secret-name") for role in
                       ("viewer", "operator", "admin")}

    def token(self, role: str) -> str:
        return self.tokens[role][1]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")


@contextlib.asynccontextmanager
async def serving(app: FastAPI, api: ApiConfig) -> AsyncIterator[tuple[str, int, _ApiServer]]:
    """The app under uvicorn as the service configures it, on a free loopback port."""
    server = _ApiServer(api_server_config(app, api))
    sock = bind_api_socket("127.0.0.1", free_port())
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", port, server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


# --- (3) bodies: the size is checked before anything reads them ---------------------------------------------

async def test_a_large_body_is_refused_before_it_is_read_or_the_token_checked() -> None:
    live = Live(plant(max_body_bytes=4096))
    async with live.client() as c:
        # Declared by Content-Length: 413 at once, with no token, before authentication (which would say 401).
        r = await c.post("/api/v1/alarms/hp1.supply_temperature:high/shelve", content=b"[" + b"1," * 50_000 + b"1]",
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["status"] == 413, r.text
        assert "max_body_bytes" in r.json()["error"] and r.headers["connection"] == "close"
        # Streamed (chunked, no Content-Length): refused once the bytes read pass the limit, not at the end.
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(1000):
                sent += 1024
                yield b" " * 1024

        r = await c.post("/api/v1/alarms/hp1.supply_temperature:high/shelve", content=body(),
                         headers={"Content-Type": "application/json", **bearer(live.token("operator"))})
        assert r.status_code == 413 and r.json()["status"] == 413, r.text
        assert sent < 100 * 1024, sent  # the rest of the megabyte was never taken
        # A body within the limit is parsed as usual.
        r = await c.post("/api/v1/alarms/hp1.supply_temperature:high/shelve", json={"duration_s": 60},
                         headers=bearer(live.token("operator")))
        assert r.status_code != 413


# --- (7) control characters, database errors, validation errors ---------------------------------------------

@pytest.mark.parametrize("url", [
    "/api/v1/alarms/events?alarm_id=%00", "/api/v1/points/%00/history", "/api/v1/points/hp1.x%0a/history",
    "/api/v1/audit?target=a%1bb", "/api/v1/stream?points=hp1.%7f", "/api/v1/points?device=%00",
    "/api/v1/alarms/x%00/acknowledge", "/api/v1/alarms?cursor=%09",
])
async def test_control_characters_in_any_parameter_are_a_json_422(url: str) -> None:
    live = Live(plant())
    async with live.client() as c:
        method = "POST" if url.endswith("acknowledge") else "GET"
        r = await c.request(method, url, headers=bearer(live.token("operator")))
    assert r.status_code == 422, (url, r.status_code, r.text)
    body = r.json()
    assert body["status"] == 422 and "control character" in body["error"] and body["details"], body
    assert "\x00" not in r.text and "Traceback" not in r.text


def test_the_openapi_says_no_parameter_holds_a_control_character() -> None:
    spec = Live(plant()).app.openapi()
    checked = 0
    for item in spec["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                schema = p["schema"]
                for alt in schema.get("anyOf", [schema]):
                    if alt.get("type") == "string":
                        # Either our pattern, or one of its own / a format / an enum that excludes them anyway.
                        assert alt.get("pattern") or alt.get("format") or alt.get("enum"), (p["name"], alt)
                        checked += alt.get("pattern") == NO_CONTROL_PATTERN
    assert checked >= 5


async def test_database_errors_are_answered_without_postgresqls_words() -> None:
    live = Live(plant())

    @live.app.get("/test/out-of-range")
    async def out_of_range() -> None:
        raise StorageValueError('out of range: invalid byte sequence for encoding "UTF8": 0x00 '
                                '(CONTEXT: unnamed portal parameter $1 = \'secret\')')

    @live.app.get("/test/model")
    async def model() -> None:
        ApiConfig.model_validate({"port": "not a port"})

    db = live.state.db
    db.stats.since = datetime.now(UTC)
    db.stats.last_error = 'InvalidPasswordError: password authentication failed for user "heatrec"'
    async with live.client() as c:
        r = await c.get("/test/out-of-range")
        assert r.status_code == 422 and r.json()["status"] == 422, r.text
        assert "UTF8" not in r.text and "secret" not in r.text and "portal" not in r.text
        r = await c.get("/test/model")  # a model built in a route: 422 with the fields, not a bare 500
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "port", r.text
        # The database away: 503 with Retry-After, since when, what works, but not the driver's or server's text.
        r = await c.get("/api/v1/audit", headers=bearer(live.token("viewer")))
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert r.json()["error"].startswith("GET /api/v1/audit needs the database: the database is unavailable since")
        assert "password" not in r.text and "InvalidPasswordError" not in r.text
        # The detail is for monitoring: the detailed health of a token holder.
        r = await c.get("/api/v1/health", headers=bearer(live.token("viewer")))
        assert r.status_code == 200 and "components" in r.json()


# --- (9) HTTP hygiene -----------------------------------------------------------------------------------------

async def test_security_headers_on_answers_and_errors() -> None:
    live = Live(plant())
    async with live.client() as c:
        ok = await c.get("/api/v1/points", headers=bearer(live.token("viewer")))
        refused = await c.get("/api/v1/points")
        missing = await c.get("/api/v1/nope")
        docs = await c.get("/docs")
    for r in (ok, refused, missing):
        assert r.headers["x-content-type-options"] == "nosniff", r.headers
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers[
            "content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in r.headers  # plain HTTP: HSTS only over HTTPS (test_api_tls.py)
    assert ok.status_code == 200 and refused.status_code == 401 and missing.status_code == 404
    # The docs keep their own policy (same-origin assets), may be framed by their own origin, and be cached.
    assert docs.status_code == 200 and "default-src 'self'" in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "SAMEORIGIN" and "cache-control" not in docs.headers


async def test_metrics_and_health_detail_need_a_token_or_a_monitoring_network() -> None:
    live = Live(plant(), registry=CollectorRegistry())
    async with live.client() as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers=bearer("hr_wrong"))).status_code == 401
        r = await c.get("/metrics", headers=bearer(live.token("viewer")))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert (await c.get("/api/v1/health")).json() == {"status": "ok"}
    # Prometheus on a monitoring host, without a token: [api] monitoring_networks (the test client is 127.0.0.1).
    opened = Live(plant(monitoring_networks=["127.0.0.0/8", "::1"]), registry=CollectorRegistry())
    async with opened.client() as c:
        assert (await c.get("/metrics")).status_code == 200
        body = (await c.get("/api/v1/health")).json()
        assert body["plant"] == "attacked plant" and "components" in body
    elsewhere = Live(plant(monitoring_networks=["10.0.0.0/8"]), registry=CollectorRegistry())
    async with elsewhere.client() as c:
        assert (await c.get("/metrics")).status_code == 401


async def test_a_403_does_not_name_the_token() -> None:
    live = Live(plant())
    async with live.client() as c:
        r = await c.post("/api/v1/tokens", json={"role": "viewer", "name": "x"}, headers=bearer(live.token("viewer")))
    assert r.status_code == 403 and "admin role" in r.json()["error"], r.text
    assert "secret-name" not in r.text


def test_the_server_configuration() -> None:
    api = ApiConfig()
    cfg = api_server_config(FastAPI(), api)
    assert cfg.proxy_headers is False  # no proxy configured: X-Forwarded-For is never believed
    assert cfg.limit_concurrency == 100 and cfg.timeout_keep_alive == 5
    assert cfg.h11_max_incomplete_event_size == 16_384 and not cfg.access_log
    assert isinstance(cfg.http, type) and issubclass(cfg.http, DeadlineH11Protocol)
    assert (cfg.http.header_timeout_s, cfg.http.body_timeout_s) == (10.0, 30.0)
    proxied = api_server_config(FastAPI(), ApiConfig(trusted_proxies=["10.1.2.3", "fd00::/8"]))
    assert proxied.proxy_headers is True and proxied.forwarded_allow_ips == ["10.1.2.3", "fd00::/8"]
    with pytest.raises(ValueError, match="trusted_proxies"):
        ApiConfig(trusted_proxies=["*"])


# --- (4) forged X-Forwarded-For, and guessing that must not lock a good token out ---------------------------------

@pytest.mark.integration  # real uvicorn on a loopback port
async def test_forwarded_for_is_ignored_without_a_trusted_proxy() -> None:
    live = Live(plant())
    async with serving(live.app, live.state.config.api) as (url, _, _), httpx.AsyncClient(base_url=url) as c:
        # 30 bad tokens, each claiming another address: all counted against the real peer, and slowed down.
        statuses = [(await c.get("/api/v1/points", headers={**bearer(f"hr_guess{i}"),
                                                               "X-Forwarded-For": f"198.51.100.{i}"})).status_code
                    for i in range(30)]
        assert statuses == [401] * 30
        assert set(live.limiter._failures) == {"127.0.0.1"} and live.limiter.failures("127.0.0.1") == 30
        assert live.limiter.total_delayed == 20  # every failure beyond the first 10 was held
        # 12 more with one forged address: a valid operator token "from" it (and from the peer) still passes.
        for i in range(12):
            await c.get("/api/v1/points", headers={**bearer(f"hr_again{i}"), "X-Forwarded-For": "203.0.113.7"})
        r = await c.get("/api/v1/points", headers={**bearer(live.token("operator")),
                                                   "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200, r.text
        assert "server" not in r.headers  # uvicorn does not announce itself


@pytest.mark.integration  # real uvicorn on a loopback port
async def test_behind_a_trusted_proxy_one_guessing_client_slows_only_itself() -> None:
    live = Live(plant(trusted_proxies=["127.0.0.1"]))
    async with serving(live.app, live.state.config.api) as (url, _, _), httpx.AsyncClient(base_url=url) as c:
        for i in range(12):
            r = await c.get("/api/v1/points", headers={**bearer(f"hr_guess{i}"), "X-Forwarded-For": "203.0.113.7"})
            assert r.status_code == 401
        assert live.limiter.suspect("203.0.113.7") and live.limiter.failures("127.0.0.1") == 0
        assert live.limiter.total_delayed == 2
        # The operator behind the same address signs in at once; another client's typo is not slowed.
        r = await c.get("/api/v1/points", headers={**bearer(live.token("operator")), "X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200, r.text
        r = await c.get("/api/v1/points", headers={**bearer("hr_typo"), "X-Forwarded-For": "192.0.2.1"})
        assert r.status_code == 401 and live.limiter.total_delayed == 2


async def test_parallel_guessing_never_holds_more_than_a_few_answers() -> None:
    live = Live(plant(), FailedAuthLimiter(max_failures=2, delay_s=0.5, max_delay_s=0.5))
    async with live.client() as c:
        answers = await asyncio.gather(*(c.get("/api/v1/points", headers=bearer(f"hr_g{i}")) for i in range(40)))
        good = await c.get("/api/v1/points", headers=bearer(live.token("viewer")))
    statuses = [r.status_code for r in answers]
    assert statuses.count(401) <= 2 + live.limiter.max_held and statuses.count(429) >= 30, statuses
    assert all(r.headers.get("retry-after", "1").isdigit() for r in answers)
    assert good.status_code == 200 and live.limiter.held == 0


# --- (3) deadlines for incomplete requests, and the concurrency limit -------------------------------------------

async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (whatever it sent before)."""
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), 30):
            pass
    return True


@pytest.mark.integration  # real uvicorn on a loopback port
async def test_incomplete_requests_and_idle_connections_are_closed() -> None:
    live = Live(plant(header_timeout_s=0.3, body_timeout_s=0.3, keep_alive_s=1))
    async with serving(live.app, live.state.config.api) as (url, port, server):
        protocol = server.config.http
        assert isinstance(protocol, type) and issubclass(protocol, DeadlineH11Protocol)
        silent = await asyncio.open_connection("127.0.0.1", port)  # connects and says nothing
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        trickle = await asyncio.open_connection("127.0.0.1", port)
        trickle[1].write(b"POST /api/v1/alarms/a/shelve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"dur")  # never ends its body
        done = await asyncio.open_connection("127.0.0.1", port)  # a whole request, then idle
        done[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await asyncio.wait_for(done[0].readline(), 10)
        assert status.startswith(b"HTTP/1.1 200"), status
        for reader, writer in (silent, partial, trickle, done):
            assert await _closed_by_server(reader)
            writer.close()
        assert protocol.closed_late >= 3  # the three incomplete ones by a deadline; the idle one by keep-alive
        async with httpx.AsyncClient(base_url=url) as c:  # and the server still answers
            assert (await c.get("/api/v1/health")).status_code == 200


def test_the_servers_per_request_warnings_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("uvicorn.error")
    caplog.set_level(logging.WARNING, logger="uvicorn.error")
    throttled = ThrottledWarnings(logger, every_s=3600)
    for _ in range(50):
        throttled.warning("Exceeded concurrency limit.")
    throttled.warning("Invalid HTTP request received.")
    assert [r.getMessage() for r in caplog.records] == ["Exceeded concurrency limit.", "Invalid HTTP request received."]
    throttled._last["Exceeded concurrency limit."] -= 7200  # an hour later
    throttled.warning("Exceeded concurrency limit.")
    assert caplog.records[-1].getMessage().startswith("Exceeded concurrency limit. (49 more like it")
    assert throttled.level == logger.level  # the rest of a logger's interface, as uvicorn uses it


@pytest.mark.integration  # real uvicorn on a loopback port
async def test_connections_beyond_the_limit_get_503_not_a_hang() -> None:
    live = Live(plant(limit_concurrency=4, header_timeout_s=5))
    async with serving(live.app, live.state.config.api) as (url, port, _):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/api/v1/health")
        assert r.status_code == 503
        for _, writer in idle:
            writer.close()


# --- (10) an open stream ends when its token is revoked ----------------------------------------------------------

async def _read_events(resp: httpx.Response, events: list[str]) -> None:
    async for line in resp.aiter_lines():
        if line.startswith("event: "):
            events.append(line.removeprefix("event: "))


@pytest.mark.integration  # real uvicorn on a loopback port
@pytest.mark.parametrize("flowing", [True, False], ids=["while-samples-flow", "while-quiet"])
async def test_a_stream_ends_when_its_token_is_revoked(flowing: bool) -> None:
    live = Live(plant(stream_recheck_s=0.2))
    record, token = live.tokens["viewer"]
    stop = asyncio.Event()

    async def publish() -> None:
        while not stop.is_set():
            t = datetime.now(UTC)
            live.bus.publish(Sample("hp1.supply_temperature", 70.0, Quality.GOOD, t, t))
            await asyncio.sleep(0.02)

    publisher = asyncio.create_task(publish()) if flowing else None
    try:
        async with serving(live.app, live.state.config.api) as (url, _, _), \
                httpx.AsyncClient(base_url=url, timeout=30) as c, \
                c.stream("GET", "/api/v1/stream", headers=bearer(token)) as resp:
            assert resp.status_code == 200
            events: list[str] = []
            reader = asyncio.create_task(_read_events(resp, events))
            if flowing:
                while "sample" not in events:
                    assert not reader.done()
                    await asyncio.sleep(0.02)
            else:
                await asyncio.sleep(0.5)
            assert live.state.tokens.revoke_id(record.id) is not None
            await asyncio.wait_for(reader, 20)  # the server ends the stream: the client's read simply finishes
            assert events[-1] == "revoked", events
            # And it cannot be opened again with that token.
            assert (await c.get("/api/v1/stream", headers=bearer(token))).status_code == 401
    finally:
        stop.set()
        if publisher is not None:
            await publisher


# --- (6) bounded ranges, and roll-ups only where samples exist ------------------------------------------------------

@pytest.fixture
async def accounting(database: DatabaseConfig) -> AsyncIterator[dict[str, Any]]:
    cfg = parse_config({**config_dict(), "api": {"max_query_span_days": 100}})
    pool = await connect_pool(database)
    async with pool.acquire() as conn:
        await migrate(conn)
        token = await create_token(conn, "viewer", "span-viewer")
        await write(conn, cfg, constant_meter(MARCH_START - timedelta(hours=1), MARCH_END + timedelta(hours=1),
                                              100.0))
    app = create_app(ServiceState(cfg, SampleBus(), pool))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield {"client": client, "token": token, "pool": pool, "cfg": cfg}
    await pool.close()


@pytest.mark.parametrize("path", ["/api/v1/kpis", "/api/v1/energy", "/api/v1/points/m1.energy/history"])
async def test_a_range_beyond_the_maximum_span_is_a_clear_422(accounting: dict[str, Any], path: str) -> None:
    c, pool = accounting["client"], accounting["pool"]
    huge = {"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T00:00:00Z"}
    r = await c.get(path, params=huge, headers=bearer(accounting["token"]))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "at most 100 days" in error and "[api] max_query_span_days" in error, error
    assert await pool.fetchval("SELECT count(*) FROM register_hours") == 0  # no work was done for it
    month = {"start": MARCH_START.isoformat(), "end": MARCH_END.isoformat()}
    assert (await c.get(path, params=month, headers=bearer(accounting["token"]))).status_code == 200


async def test_kpis_of_a_year_work_and_a_century_builds_no_empty_hours(accounting: dict[str, Any]) -> None:
    c, pool, cfg = accounting["client"], accounting["pool"], accounting["cfg"]
    r = await c.get("/api/v1/kpis", params={"year": 2024}, headers=bearer(accounting["token"]))  # a year > 100 days
    assert r.status_code == 200 and r.json()["delivered_gj"] > 267, r.text  # March, and the hours around it
    async with pool.acquire() as conn:
        # What the API refuses, asked of the library directly: only hours with samples would be worth a row.
        await kpis(conn, cfg, datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC),
                   as_of=datetime(2100, 1, 1, tzinfo=UTC))
        assert await conn.fetchval("SELECT count(*) FROM register_hours") == 0  # never clean there: not built
        assert cfg.accounting is not None
        m = cfg.accounting.meters[0]
        key = await point_key(conn, m.energy_point)
        assert key is not None
        await build_register_hours(conn, key, meter_spec(m), datetime(1990, 1, 1, tzinfo=UTC),
                                   datetime(2100, 1, 1, tzinfo=UTC), timedelta(days=1))
        rows = await conn.fetchval("SELECT count(*) FROM register_hours")
    # The samples run from an hour before March to an hour after; rows from the hour before the first to the
    # hour after the last: a month of rows, not the 964,000 hours of the range.
    assert rows == (MARCH_END - MARCH_START) / timedelta(hours=1) + 5, rows


# --- (11) settlement CSV cells a spreadsheet would run ----------------------------------------------------------

def test_settlement_csv_neutralises_formulas() -> None:
    doc = {"contract": "c1", "period": "2024-03", "version": 2, "supplier": "=HYPERLINK(\"http://x\",\"y\")",
           "utility": "+cmd|' /C calc'!A0", "rule_set": "@SUM(1+1)", "reason": "-2+3", "status": "\tclosed",
           "charge_payer": "\rutility", "amount_dkk": -1250.5, "flags": ["=evil", "manual"]}
    text = settlements_csv([doc])
    header, row = list(csv.reader(io.StringIO(text)))
    cells = dict(zip(header, row, strict=True))
    for col in ("supplier", "utility", "rule_set", "reason", "status", "charge_payer", "flags"):
        assert cells[col].startswith("'"), (col, cells[col])
    assert cells["supplier"] == "'=HYPERLINK(\"http://x\",\"y\")" and cells["flags"] == "'=evil;manual"
    assert cells["charge_payer"] == "'\nutility"  # a carriage return kept inside its quoted cell, as a line feed
    assert cells["amount_dkk"] == "-1250.5"  # a number stays a number
    assert cells["contract"] == "c1" and cells["version"] == "2"


def test_no_route_takes_a_token_in_its_query_string() -> None:
    # The review found tokens only in headers (and never in logs: the access log is off); it stays so.
    spec = Live(plant()).app.openapi()
    names = {p["name"].lower() for item in spec["paths"].values() for op in item.values()
             for p in op.get("parameters", [])}
    assert not names & {"token", "access_token", "api_key", "key", "authorization"}, names
    assert api_server_config(FastAPI(), ApiConfig()).access_log is False
