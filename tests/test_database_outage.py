"""The plant keeps running while its PostgreSQL is away, and loses and duplicates nothing when it returns.

Real parts only: the demo plant's simulators (OPC UA, Modbus TCP, MQTT), the session's Mosquitto, a
private PostgreSQL cluster each test stops and starts, and `heatrec run` as its own process. While the
database is away, tokens come from the local token store, drivers, control, SCADA, alarms and the live
API run on, samples go to the spool and audit entries, alarm transitions and manual readings to the
journal; routes that need the database answer 503 with Retry-After and nothing else is 5xx. When the
database returns, every held sample and record is stored exactly once.

1. cold start with PostgreSQL not running at all (its cluster does not even exist yet);
2. a 60 s outage under load, with every route of the OpenAPI walked meanwhile;
3. the service SIGKILLed during the outage and restarted while the database is still away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from asyncua import ua
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import AsyncModbusTcpClient

from service.config import HeatrecConfig, load_config
from service.localservers import MosquittoServer, PostgresCluster, free_port
from service.storage.database import connect_pool
from service.storage.spool import Spool, spool_path
from simulators.runner import Simulation
from simulators.scenario import FaultSpec
from tests.support import demo_config_text, scada_operator_client, wait_until

ROOT = Path(__file__).resolve().parents[1]
SCADA_PASSWORD = "outage-scada-secret"
TRIP = "hp1.status:trip"
TARGET = "control.supply_temperature_target"
OUTAGE_S = 60.0  # the length of test 2's scenario

# The routes that need the database: while it is away each answers 503 (JSON, Retry-After), and no
# other route may answer any 5xx. Everything else is live (bus, alarms, control) or goes to the journal.
NEEDS_DATABASE = frozenset({
    ("GET", "/api/v1/points/{point_id}/history"),
    ("GET", "/api/v1/energy"),
    ("GET", "/api/v1/settlements"),
    ("POST", "/api/v1/settlements/{contract_id}/{period}/close"),
    ("POST", "/api/v1/settlements/{contract_id}/{period}/correct"),
    ("GET", "/api/v1/kpis"),
    ("GET", "/api/v1/reports/annual"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/alarms/events"),
    ("GET", "/api/v1/dispatch/report"),
})
# Live while the database is away: these must answer 2xx.
LIVE = frozenset({
    ("GET", "/api/v1/health"), ("GET", "/metrics"), ("GET", "/api/v1/points"), ("GET", "/api/v1/stream"),
    ("GET", "/api/v1/control"), ("PUT", "/api/v1/control"), ("GET", "/api/v1/alarms"),
    ("POST", "/api/v1/alarms/{alarm_id}/shelve"), ("POST", "/api/v1/alarms/{alarm_id}/unshelve"),
    ("POST", "/api/v1/meters/{meter_id}/readings"),
})


# --- the plant under test ------------------------------------------------------------------------

def replace_once(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced once; fails when the demo config no longer holds `old`."""
    assert old in text, f"config/demo.toml changed: {old!r} not found"
    return text.replace(old, new, 1)


@dataclass
class Plant:
    """One test's plant: config, private PostgreSQL (not started), and `heatrec run` as a process."""

    tmp: Path
    config: Path
    cfg: HeatrecConfig
    env: dict[str, str]
    pg: PostgresCluster
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def make(cls, server_root: Path, mosquitto: MosquittoServer, tmp: Path, monkeypatch: pytest.MonkeyPatch,
             tag: str) -> Plant:
        pg = PostgresCluster(server_root / f"pg-{tag}-{secrets.token_hex(3)}", free_port(),
                             secrets.token_urlsafe(16), settings={"fsync": "off", "full_page_writes": "off"})
        text = demo_config_text({"1883": mosquitto.port, "55432": pg.port})
        text = replace_once(text, "[storage]\nbatch_size = 5000\nbatch_max_age_s = 1.0\n",
                            f'[storage]\nspool_dir = "{tmp / "spool"}"\nbatch_size = 5000\nbatch_max_age_s = 0.2\n'
                            "write_timeout_s = 2\nretry_max_s = 2\n")
        text = replace_once(text, 'password = "${HEATREC_DB_PASSWORD:-}"\n',
                            'password = "${HEATREC_DB_PASSWORD:-}"\nconnect_timeout_s = 2\n')
        # A quick target ramp: a raised target reaches the heat pump's setpoint in seconds, not a minute.
        text = replace_once(text, "target_ramp_k_per_min = 3.0", "target_ramp_k_per_min = 60.0")
        # The test watches like a monitoring host: /metrics and the health's parts without a token.
        text = replace_once(text, "[api]\n", '[api]\nmonitoring_networks = ["127.0.0.1"]\n')
        config = tmp / "plant.toml"
        config.write_text(text)
        monkeypatch.setenv("HEATREC_DB_PASSWORD", pg.password)
        monkeypatch.setenv("HEATREC_MQTT_PASSWORD", mosquitto.password)
        monkeypatch.setenv("HEATREC_SCADA_PASSWORD", SCADA_PASSWORD)
        env = {**os.environ, "HEATREC_DB_PASSWORD": pg.password, "HEATREC_MQTT_PASSWORD": mosquitto.password,
               "HEATREC_SCADA_PASSWORD": SCADA_PASSWORD}
        cfg = load_config(config)
        assert cfg.simulation is not None and cfg.control is not None and cfg.scada is not None
        assert cfg.storage.retry_max_s == 2 and cfg.storage.write_timeout_s == 2
        return cls(tmp, config, cfg, env, pg, tmp / "service.log")

    @property
    def spool_dir(self) -> Path:
        return spool_path(self.cfg.storage.spool_dir, self.cfg.database)

    @property
    def journal_dir(self) -> Path:
        return self.spool_dir.with_name(self.spool_dir.name + ".journal")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.cfg.api.port}"

    @property
    def hp_port(self) -> int:
        assert self.cfg.simulation is not None
        return int(self.cfg.simulation.heat_pumps[0].endpoint.rsplit(":", 1)[1])

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"

    async def token(self, role: str, name: str) -> str:
        """`heatrec token create` as an operator runs it; the token it prints on stdout."""
        argv = [sys.executable, "-m", "service.cli", "token", "create", "--role", role, "--name", name,
                "-c", str(self.config)]
        r = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                    timeout=60, check=False)
        assert r.returncode == 0, f"token create --role {role} failed ({r.returncode}): {r.stderr[-2000:]}"
        token = r.stdout.strip()
        assert token and len(token.split()) == 1, f"token create printed {r.stdout!r}"
        return token

    def start(self) -> None:
        """`heatrec run -c plant.toml` as its own process."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "-c", str(self.config)],
                                         cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, \
            f"heatrec run exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}"

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    async def pg_start(self) -> None:
        await asyncio.to_thread(self.pg.start)

    async def pg_stop(self) -> None:
        await asyncio.to_thread(self.pg.stop)


@contextlib.asynccontextmanager
async def running(plant: Plant, *, db_up: bool) -> AsyncIterator[tuple[Simulation, httpx.AsyncClient,
                                                                         AsyncModbusTcpClient]]:
    """The simulated plant, an HTTP client and a Modbus client of our own; everything stopped on exit."""
    assert plant.cfg.simulation is not None
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(plant.pg.stop)  # last: after the service
        if db_up:
            await plant.pg_start()
        sim = await stack.enter_async_context(Simulation(plant.cfg.simulation, tick_s=0.2))
        stack.push_async_callback(plant.stop)
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=plant.api, timeout=15))
        modbus = AsyncModbusTcpClient("127.0.0.1", port=plant.hp_port, timeout=2)
        assert await modbus.connect(), "cannot reach the heat pump simulator over Modbus"
        stack.callback(modbus.close)
        yield sim, http, modbus


# --- observing the service ----------------------------------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def health(http: httpx.AsyncClient) -> dict[str, Any] | None:
    """The health document, or None while the API does not answer yet."""
    try:
        r = await http.get("/api/v1/health")
    except httpx.TransportError:
        return None
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return dict(r.json())


async def database_is(http: httpx.AsyncClient, status: str) -> bool:
    h = await health(http)
    return h is not None and h["components"].get("database", {}).get("status") == status


async def metric(http: httpx.AsyncClient, name: str) -> float | None:
    r = await http.get("/metrics")
    assert r.status_code == 200, (r.status_code, r.text[:500])
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return None


async def points(http: httpx.AsyncClient, token: str) -> list[dict[str, Any]] | None:
    """Every point, or None while the API does not answer; any answer but 200 fails."""
    try:
        r = await http.get("/api/v1/points", headers=bearer(token))
    except httpx.TransportError:
        return None
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return list(r.json()["points"])


async def all_good(http: httpx.AsyncClient, token: str) -> bool:
    pts = await points(http, token)
    return pts is not None and bool(pts) and all(p["quality"] == "GOOD" for p in pts)


async def not_good(http: httpx.AsyncClient, token: str) -> list[tuple[str, str]]:
    return [(p["id"], p["quality"]) for p in await points(http, token) or [] if p["quality"] != "GOOD"]


async def control_status(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    r = await http.get("/api/v1/control", headers=bearer(token))
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return dict(r.json())


async def put_target(http: httpx.AsyncClient, token: str, target: float) -> dict[str, Any]:
    """An operator's override of the supply-temperature target; it must be accepted."""
    r = await http.put("/api/v1/control", json={"supply_temperature_target": target}, headers=bearer(token))
    assert 200 <= r.status_code < 300, (r.status_code, r.text[:500])
    st = dict(r.json())
    assert st["target_source"] == "override" and st["override"] == target, st
    return st


def raised_target(st: dict[str, Any], by: float = 3.0) -> float:
    """A target `by` K above the one in force, within the demo's 60..80 °C."""
    now = st["supply_temperature_target"]
    assert now is not None, st
    t = round(min(now + by, 80.0), 1)
    assert t - now >= 1.0, st
    return t


def assert_unavailable(r: httpx.Response, what: str) -> None:
    """The database-away answer: 503, JSON with status 503 and an error, and Retry-After in whole seconds."""
    assert r.status_code == 503, (what, r.status_code, r.text[:500])
    problem = problem_of_503(r.headers, r.content)
    assert problem is None, (what, problem)


def problem_of_503(headers: httpx.Headers, content: bytes) -> str | None:
    retry = headers.get("retry-after", "")
    if not retry.isdigit() or int(retry) < 1:
        return f"Retry-After {retry!r}, expected a positive number of seconds"
    if not headers.get("content-type", "").startswith("application/json"):
        return f"content-type {headers.get('content-type')!r}, expected JSON"
    try:
        body = json.loads(content)
    except ValueError:
        return f"not JSON: {content[:200]!r}"
    if not isinstance(body, dict) or body.get("status") != 503 or not body.get("error"):
        return f"body {body!r}, expected {{'error': ..., 'status': 503}}"
    return None


async def read_wire(modbus: AsyncModbusTcpClient) -> tuple[float, int]:
    """(remote setpoint °C, heartbeat) as the heat pump's holding registers 0 and 2 hold them."""
    rr = await modbus.read_holding_registers(0, count=3, device_id=1)
    assert not rr.isError(), rr
    raw = rr.registers[0]
    return (raw - 65536 if raw >= 32768 else raw) / 10, rr.registers[2]


async def control_writes_the_wire(http: httpx.AsyncClient, token: str, modbus: AsyncModbusTcpClient,
                                  timeout: float = 30) -> float:
    """Wait until the loop writes: heartbeats move on the wire and the setpoint there is what it reports."""
    _, beat0 = await read_wire(modbus)

    async def writing() -> bool:
        setpoint, beat = await read_wire(modbus)
        reported = (await control_status(http, token))["heat_pump_setpoints"].get("hp1")
        return beat != beat0 and reported is not None and abs(setpoint - reported) <= 0.15

    await wait_until(writing, timeout, "control writing heartbeats and the reported setpoint to the heat pump")
    return (await read_wire(modbus))[0]


async def scada_sees_change(plant: Plant, point: str = "cdu1.heat_removed", timeout: float = 20) -> None:
    """An independent OPC UA client logs in to heatrec's SCADA server and sees a live value change."""
    assert plant.cfg.scada is not None
    client = await scada_operator_client(plant.cfg.scada, plant.cfg.scada.endpoint, "scada", SCADA_PASSWORD)
    async with client:
        ns = await client.get_namespace_index("urn:heatrec:scada")
        node = client.get_node(ua.NodeId(ua.String(point), ua.Int16(ns)))
        seen: list[float] = []

        async def changed() -> bool:
            dv = await node.read_data_value()
            if dv.StatusCode is not None and dv.StatusCode.is_good() and dv.Value is not None:
                seen.append(float(dv.Value.Value))
            return len(set(seen)) >= 2

        await wait_until(changed, timeout, f"SCADA {point} changing value with Good status")


# --- the spool and the database -----------------------------------------------------------------

def spooled_keys(directory: Path) -> set[tuple[str, float]] | None:
    """(point, source epoch) of every sample a copy of the spool holds, as a fresh start would replay it.

    None when the service removed a segment while it was copied (it is replaying): ask again.
    """
    if not directory.exists():
        return set()
    copy = directory.parent / f"{directory.name}-copy-{secrets.token_hex(3)}"
    try:
        shutil.copytree(directory, copy)
    except (shutil.Error, FileNotFoundError):
        shutil.rmtree(copy, ignore_errors=True)
        return None
    spool = Spool(copy, max_bytes=1 << 30, segment_bytes=1 << 20)
    try:
        spool.open()
        keys: set[tuple[str, float]] = set()
        for seq in spool.sealed():
            for _, batch in spool.read_segment(seq):
                keys.update((s.point, s.source_time.timestamp()) for s in batch)
        return keys
    finally:
        spool.close()
        shutil.rmtree(copy, ignore_errors=True)


async def spool_snapshot(plant: Plant, at_least: int, timeout: float = 30) -> set[tuple[str, float]]:
    """What the spool holds once it holds `at_least` samples, from every device of the plant."""
    held: set[tuple[str, float]] = set()

    def enough() -> bool:
        keys = spooled_keys(plant.spool_dir)
        if keys is not None:
            held.clear()
            held.update(keys)
        return len(held) >= at_least and {p.split(".")[0] for p, _ in held} >= {d.id for d in plant.cfg.devices}

    await wait_until(enough, timeout, f"{at_least} samples of every device in the spool")
    return held


async def replayed(plant: Plant, held: set[tuple[str, float]], timeout: float = 60) -> None:
    def gone() -> bool:
        keys = spooled_keys(plant.spool_dir)
        return keys is not None and not keys & held

    await wait_until(gone, timeout, "the spool replayed into the database")


def journal_records(directory: Path) -> list[dict[str, Any]]:
    """Every JSON record in the journal's files (whatever their names), as written."""
    out: list[dict[str, Any]] = []
    for f in sorted(directory.rglob("*")) if directory.exists() else []:
        if f.is_file():
            for line in f.read_bytes().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
    return out


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _dicts(v)


def journal_has_audit(directory: Path, principal: str, target: str, requested: float) -> bool:
    return any(d.get("principal") == principal and d.get("target") == target and d.get("requested") == requested
               for rec in journal_records(directory) for d in _dicts(rec))


async def caught_up(plant: Plant, http: httpx.AsyncClient, held: set[tuple[str, float]]) -> None:
    """After PostgreSQL is back: health says so, the journal drained, the spool replayed."""
    await wait_until(lambda: database_is(http, "ok"), 60, "health: database ok after PostgreSQL returned")
    assert await metric(http, "heatrec_database_up") == 1
    h = await health(http)
    assert h is not None and "journal" in h["components"], h

    async def drained() -> bool:
        plant.alive()
        return await metric(http, "heatrec_journal_pending") == 0

    await wait_until(drained, 60, "heatrec_journal_pending 0")
    await replayed(plant, held)


async def assert_nothing_lost_or_doubled(plant: Plant, held: set[tuple[str, float]]) -> asyncpg.Pool:
    """Every held sample is in `readings`, and nothing there, in the audit log or in the alarm and event
    history is stored twice. Returns an open pool for the test's own checks."""
    pool = await connect_pool(plant.cfg.database, max_size=2)
    stored = {(r["point"], r["time"].timestamp()) for r in await pool.fetch("SELECT point, time FROM readings")}
    missing = held - stored
    assert not missing, f"{len(missing)} of {len(held)} spooled samples lost, e.g. {sorted(missing)[:3]}"
    doubled = {
        "readings": "SELECT count(*) - count(DISTINCT (point, time)) FROM readings",
        "audit_log": "SELECT count(*) - count(DISTINCT (time, principal, action, target, outcome, detail)) "
                     "FROM audit_log",
        "alarm_events": "SELECT count(*) - count(DISTINCT (time, alarm_id, old_state, new_state)) FROM alarm_events",
        "events": "SELECT count(*) - count(DISTINCT (time, source, kind, message)) FROM events",
        "manual_readings": "SELECT count(*) - count(DISTINCT (meter_id, time, value_gj)) FROM manual_readings",
    }
    for table, sql in doubled.items():
        assert await pool.fetchval(sql) == 0, f"duplicates in {table}"
    return pool


async def audited(pool: asyncpg.Pool, principal: str, target: str = TARGET) -> list[Any]:
    """What `principal` asked for `target`, as the audit log holds it, oldest first."""
    rows = await pool.fetch("SELECT requested FROM audit_log WHERE principal = $1 AND target = $2 ORDER BY seq",
                            principal, target)
    return [json.loads(r["requested"]) for r in rows]


# --- walking the API ----------------------------------------------------------------------------

@dataclass
class Answer:
    """One answer of the API during the outage, judged."""

    method: str
    route: str
    status: int
    problem: str | None = None  # a malformed 503

    def __str__(self) -> str:
        return f"{self.method} {self.route} -> {self.status}" + (f" ({self.problem})" if self.problem else "")


def judge(method: str, route: str, status: int, headers: httpx.Headers, content: bytes) -> Answer:
    return Answer(method, route, status, problem_of_503(headers, content) if status == 503 else None)


def assert_answers(answers: list[Answer]) -> None:
    """No 5xx but 503; every 503 well-formed and from a route that needs the database."""
    assert answers
    wrong = [a for a in answers if a.status >= 500 and (a.status != 503 or (a.method, a.route) not in NEEDS_DATABASE)]
    assert not wrong, "5xx from routes that must work without the database: " + "; ".join(map(str, wrong[:20]))
    malformed = [a for a in answers if a.problem]
    assert not malformed, "malformed 503s: " + "; ".join(map(str, malformed[:20]))
    dead = [a for a in answers if (a.method, a.route) in LIVE and not 200 <= a.status < 300]
    assert not dead, "live routes not answering 2xx: " + "; ".join(map(str, dead[:20]))


@dataclass
class Walk:
    """What the walk needs to fill in: path values, required query values, bodies."""

    path_values: dict[str, str]
    query_values: dict[str, str]
    bodies: dict[tuple[str, str], dict[str, Any]]
    answers: list[Answer] = field(default_factory=list)
    responses: dict[tuple[str, str], httpx.Response] = field(default_factory=dict)
    streamed_sample: bool = False


async def walk_openapi(http: httpx.AsyncClient, token: str, walk: Walk) -> list[Answer]:
    """Every operation of GET /openapi.json, once, with real ids and valid input where there is any."""
    r = await http.get("/openapi.json")
    assert r.status_code == 200, r.text[:500]
    spec = r.json()
    for route, ops in spec["paths"].items():
        for method, op in ops.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            verb = method.upper()
            url = route
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    assert p["name"] in walk.path_values, f"no value for path parameter {p['name']} of {route}"
                    url = url.replace("{" + p["name"] + "}", quote(walk.path_values[p["name"]], safe=""))
            params = {}
            for p in op.get("parameters", []):
                if p["in"] == "query" and p.get("required"):
                    assert p["name"] in walk.query_values, f"no value for query parameter {p['name']} of {route}"
                    params[p["name"]] = walk.query_values[p["name"]]
            body: dict[str, Any] = {}
            if "requestBody" in op:
                body = {"json": walk.bodies.get((verb, route), {})}
            if route == "/api/v1/stream":
                walk.answers.append(await stream_once(http, token, url, walk))
                continue
            resp = await http.request(verb, url, params=params, headers=bearer(token), **body)
            walk.responses[verb, route] = resp
            walk.answers.append(judge(verb, route, resp.status_code, resp.headers, resp.content))
    return walk.answers


async def stream_once(http: httpx.AsyncClient, token: str, url: str, walk: Walk) -> Answer:
    """The SSE stream answers and carries a live sample."""
    async with asyncio.timeout(20), http.stream("GET", url, headers=bearer(token)) as resp:
        if resp.status_code == 200:
            async for line in resp.aiter_lines():
                if line.startswith("event: sample"):
                    walk.streamed_sample = True
                    break
            return Answer("GET", "/api/v1/stream", 200)
        return judge("GET", "/api/v1/stream", resp.status_code, resp.headers, await resp.aread())


async def load(http: httpx.AsyncClient, viewer: str, operator: str, point_id: str, answers: list[Answer],
               failures: list[str], stop: asyncio.Event) -> None:
    """Clients that keep asking while the database goes away and comes back."""
    requests = [("/api/v1/points", "/api/v1/points", viewer), ("/api/v1/control", "/api/v1/control", operator),
                ("/api/v1/alarms", "/api/v1/alarms", viewer), ("/api/v1/health", "/api/v1/health", ""),
                ("/metrics", "/metrics", ""),
                ("/api/v1/points/{point_id}/history", f"/api/v1/points/{point_id}/history", viewer)]
    while not stop.is_set():
        for route, url, token in requests:
            try:
                r = await http.get(url, headers=bearer(token) if token else {}, timeout=10)
            except httpx.TransportError as err:
                failures.append(f"GET {url}: {err!r}")
                continue
            answers.append(judge("GET", route, r.status_code, r.headers, r.content))
        await asyncio.sleep(0.05)


# --- the tests ----------------------------------------------------------------------------------

async def test_cold_start_without_postgresql_then_catch_up(server_root: Path, mosquitto: MosquittoServer,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plant = Plant.make(server_root, mosquitto, tmp_path, monkeypatch, "cold")
    assert not plant.pg.running and not plant.pg.datadir.exists()  # never started: no cluster at all
    viewer = await plant.token("viewer", "cold-viewer")
    operator = await plant.token("operator", "cold-operator")
    async with running(plant, db_up=False) as (sim, http, modbus):
        wire_at_start = await read_wire(modbus)
        plant.start()

        async def good() -> bool:
            plant.alive()
            return await all_good(http, viewer)

        await wait_until(good, 30, "every point GOOD over the API with PostgreSQL stopped")
        h = await health(http)
        assert h is not None and h["components"]["database"]["status"] == "degraded", h
        assert "journal" in h["components"], h
        assert await metric(http, "heatrec_database_up") == 0

        # Control runs: it writes the heat pump, and an operator's request is taken and reaches the wire.
        before = await control_writes_the_wire(http, viewer, modbus)
        target = raised_target(await control_status(http, viewer))
        await put_target(http, operator, target)

        async def followed() -> bool:
            st = await control_status(http, viewer)
            setpoint, _ = await read_wire(modbus)
            reported = st["heat_pump_setpoints"].get("hp1")
            now = st["supply_temperature_target"]
            return (now is not None and abs(now - target) < 0.01 and reported is not None
                    and abs(setpoint - reported) <= 0.15 and setpoint >= before + 1.0)

        await wait_until(followed, 30, f"the raised target {target} °C on the heat pump's setpoint register")
        assert (await read_wire(modbus))[0] != wire_at_start[0]

        r = await http.get("/api/v1/points/hp1.supply_temperature/history", headers=bearer(viewer))
        assert_unavailable(r, "history with PostgreSQL stopped")

        # An alarm goes through its states while the database is away: trip, clear, acknowledge.
        async def alarm_state() -> str:
            r = await http.get("/api/v1/alarms", headers=bearer(viewer))
            assert r.status_code == 200, r.text[:500]
            return str(next(a["state"] for a in r.json()["alarms"] if a["id"] == TRIP))

        async def alarm_is(state: str) -> bool:
            return await alarm_state() == state

        assert await alarm_state() == "normal"
        fault = await sim.inject(FaultSpec(device="hp1", kind="trip"))
        await wait_until(lambda: alarm_is("unack_active"), 30, "the trip alarm active")
        await sim.clear_fault(fault.id)
        await wait_until(lambda: alarm_is("rtn_unack"), 30, "the trip alarm returned, unacknowledged")
        r = await http.post(f"/api/v1/alarms/{TRIP}/acknowledge", headers=bearer(operator))
        assert r.status_code == 200 and r.json()["new_state"] == "normal", (r.status_code, r.text[:500])
        assert (await metric(http, "heatrec_journal_pending") or 0) >= 2  # the audit entry and alarm records
        assert journal_has_audit(plant.journal_dir, "cold-operator", TARGET, target), \
            f"the PUT's audit entry is not in the journal at {plant.journal_dir}"

        held = await spool_snapshot(plant, 50)
        await plant.pg_start()  # creates the cluster and the database: the service migrates it on its own
        await caught_up(plant, http, held)
        pool = await assert_nothing_lost_or_doubled(plant, held)
        try:
            assert await audited(pool, "cold-operator") == [target]
            rows = await pool.fetch("SELECT old_state, new_state, by_user FROM alarm_events WHERE alarm_id = $1 "
                                    "ORDER BY seq", TRIP)
            assert [(r["old_state"], r["new_state"]) for r in rows] == [
                ("normal", "unack_active"), ("unack_active", "rtn_unack"), ("rtn_unack", "normal")], rows
            assert rows[-1]["by_user"] == "cold-operator"
        finally:
            await pool.close()
        r = await http.get("/api/v1/points/hp1.supply_temperature/history", headers=bearer(viewer))
        assert r.status_code == 200 and r.json()["buckets"], (r.status_code, r.text[:500])
        plant.alive()


async def test_outage_under_load_every_route_and_scada(server_root: Path, mosquitto: MosquittoServer,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plant = Plant.make(server_root, mosquitto, tmp_path, monkeypatch, "load")
    async with running(plant, db_up=True) as (_, http, modbus):
        viewer = await plant.token("viewer", "load-viewer")
        operator = await plant.token("operator", "load-operator")
        admin = await plant.token("admin", "load-admin")
        victim_token = await plant.token("viewer", "load-victim")  # revoked by the walk
        plant.start()

        async def ready() -> bool:
            plant.alive()
            return await database_is(http, "ok") and await all_good(http, viewer)

        await wait_until(ready, 60, "service up with the database and every point GOOD")
        await control_writes_the_wire(http, viewer, modbus)
        # Every token used once while the database answers.
        assert (await http.get("/api/v1/audit", headers=bearer(viewer))).status_code == 200
        await control_status(http, operator)
        r = await http.get("/api/v1/tokens", headers=bearer(admin))
        assert r.status_code == 200, r.text[:500]
        victim = next(t["id"] for t in r.json()["tokens"] if t["name"] == "load-victim")
        point_ids = [p["id"] for p in await points(http, viewer) or []]
        r = await http.get("/api/v1/alarms", headers=bearer(viewer))
        alarm_ids = [a["id"] for a in r.json()["alarms"]]
        alarm_id = "hp1.supply_temperature:high" if "hp1.supply_temperature:high" in alarm_ids else alarm_ids[0]
        point_id = "hp1.supply_temperature" if "hp1.supply_temperature" in point_ids else point_ids[0]
        assert plant.cfg.accounting is not None
        month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        reading_time = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
        walk_target = raised_target(await control_status(http, viewer), 2.0)
        walk = Walk(
            path_values={"point_id": point_id, "alarm_id": alarm_id, "token_id": str(victim),
                         "contract_id": plant.cfg.accounting.contracts[0].id, "period": month,
                         "meter_id": plant.cfg.accounting.meters[0].id},
            query_values={"year": str(datetime.now(UTC).year - 1), "period": month},
            bodies={("PUT", "/api/v1/control"): {"supply_temperature_target": walk_target},
                    ("POST", "/api/v1/alarms/{alarm_id}/shelve"): {"duration_s": 600},
                    ("POST", "/api/v1/tokens"): {"role": "viewer", "name": "load-walk"},
                    ("POST", "/api/v1/settlements/{contract_id}/{period}/close"): {"note": "outage walk"},
                    ("POST", "/api/v1/settlements/{contract_id}/{period}/correct"): {"reason": "outage walk"},
                    ("POST", "/api/v1/meters/{meter_id}/readings"): {
                        "time": reading_time.isoformat(), "value_gj": 1234.5, "note": "outage walk"},
                    ("POST", "/api/v1/meters/{meter_id}/replacements"): {
                        "time": reading_time.isoformat(), "old_serial": "71234567", "new_serial": "71234568",
                        "old_final_gj": 1234.5, "new_initial_gj": 0.0}})

        load_answers: list[Answer] = []
        load_failures: list[str] = []
        stop = asyncio.Event()
        loader = asyncio.create_task(load(http, viewer, operator, point_id, load_answers, load_failures, stop))
        try:
            loop = asyncio.get_running_loop()
            await plant.pg_stop()
            deadline = loop.time() + OUTAGE_S
            outage_from = datetime.now(UTC)
            await wait_until(lambda: database_is(http, "degraded"), 20, "health: database degraded")
            assert await metric(http, "heatrec_database_up") == 0
            await walk_openapi(http, admin, walk)
            assert_answers(walk.answers)
            walked = {(a.method, a.route) for a in walk.answers}
            assert NEEDS_DATABASE <= walked and LIVE <= walked, (NEEDS_DATABASE | LIVE) - walked
            needy = {(a.method, a.route): a.status for a in walk.answers if (a.method, a.route) in NEEDS_DATABASE}
            assert set(needy.values()) == {503}, needy
            assert walk.streamed_sample, "no live sample on /api/v1/stream during the outage"
            # The local token store: a token made and one revoked during the outage take effect at once.
            made = walk.responses["POST", "/api/v1/tokens"]
            assert made.status_code == 201, made.text[:500]
            walk_token = made.json()["token"]
            assert (await http.get("/api/v1/points", headers=bearer(walk_token))).status_code == 200
            assert (await http.get("/api/v1/points", headers=bearer(victim_token))).status_code == 401
            # SCADA and control go on.
            await scada_sees_change(plant)
            await control_writes_the_wire(http, viewer, modbus)
            assert await not_good(http, viewer) == []
            await wait_until(lambda: loop.time() >= deadline, OUTAGE_S + 10, "the end of the 60 s outage")
            assert await not_good(http, viewer) == []
            held = await spool_snapshot(plant, 100)
            outage_to = datetime.now(UTC)
            await plant.pg_start()
            await caught_up(plant, http, held)
        finally:
            stop.set()
            await loader
        assert not load_failures, load_failures[:10]
        assert len(load_answers) >= 100, len(load_answers)
        assert_answers(load_answers)
        assert sum(a.status == 503 for a in load_answers) >= 5  # the history requests of the outage
        plant.alive()
        pool = await assert_nothing_lost_or_doubled(plant, held)
        try:
            assert await audited(pool, "load-admin") == [walk_target]
            shelved = await pool.fetch("SELECT new_state FROM alarm_events WHERE alarm_id = $1 AND by_user = $2 "
                                       "ORDER BY seq", alarm_id, "load-admin")
            assert [r["new_state"] for r in shelved].count("shelved") == 1 and len(shelved) == 2, shelved
            for table in ("manual_readings", "meter_replacements"):  # journaled during the outage
                n = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE meter_id = $1 AND time = $2",
                                        walk.path_values["meter_id"], reading_time)
                assert n == 1, (table, n)
            # Samples of the outage reached the database for every device.
            devices = await pool.fetch("SELECT DISTINCT split_part(point, '.', 1) AS d FROM readings "
                                       "WHERE time >= $1 AND time < $2", outage_from, outage_to)
            assert {r["d"] for r in devices} >= {d.id for d in plant.cfg.devices}, devices
        finally:
            await pool.close()
        # The tokens as the outage left them, with the database back.
        assert (await http.get("/api/v1/points", headers=bearer(walk_token))).status_code == 200
        assert (await http.get("/api/v1/points", headers=bearer(victim_token))).status_code == 401


async def test_sigkill_during_outage_restart_without_database(server_root: Path, mosquitto: MosquittoServer,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plant = Plant.make(server_root, mosquitto, tmp_path, monkeypatch, "kill")
    async with running(plant, db_up=True) as (_, http, modbus):
        viewer = await plant.token("viewer", "kill-viewer")
        operator = await plant.token("operator", "kill-operator")
        plant.start()

        async def ready() -> bool:
            plant.alive()
            return await database_is(http, "ok") and await all_good(http, viewer)

        await wait_until(ready, 60, "service up with the database and every point GOOD")
        await control_status(http, operator)
        await control_writes_the_wire(http, viewer, modbus)

        await plant.pg_stop()
        await wait_until(lambda: database_is(http, "degraded"), 20, "health: database degraded")
        first = raised_target(await control_status(http, viewer), 2.0)
        await put_target(http, operator, first)
        assert journal_has_audit(plant.journal_dir, "kill-operator", TARGET, first), \
            f"the accepted PUT's audit entry is not in the journal at {plant.journal_dir}"
        await spool_snapshot(plant, 100)
        plant.kill9()
        held = spooled_keys(plant.spool_dir)
        assert held, "nothing in the spool at the kill"

        plant.start()  # the database is still away

        async def good() -> bool:
            plant.alive()
            return await all_good(http, viewer)

        await wait_until(good, 30, "every point GOOD after the restart without the database")
        assert await database_is(http, "degraded")
        st = await control_status(http, operator)  # the local token store survived the kill
        assert st["override"] == first, st  # and so did the operator's request
        second = round(first + 1.0, 1) if first <= 79.0 else round(first - 1.0, 1)
        await put_target(http, operator, second)
        await scada_sees_change(plant)
        await control_writes_the_wire(http, viewer, modbus)
        assert (await metric(http, "heatrec_journal_pending") or 0) >= 2  # both audit entries wait

        await plant.pg_start()
        await caught_up(plant, http, held)
        pool = await assert_nothing_lost_or_doubled(plant, held)
        try:
            assert await audited(pool, "kill-operator") == [first, second]
        finally:
            await pool.close()
        plant.alive()
