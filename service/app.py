"""Composition root: database, bus, drivers, storage writer and API, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import uvicorn
from fastapi import FastAPI

from drivers import create_driver
from drivers.base import Driver, WriteResult
from drivers.mbus_link import MbusLinks
from drivers.modbus import ModbusLinks
from drivers.mqtt import MqttDriver
from drivers.mqtt_serials import SerialFile
from service.accounting.closed_periods import ClosedPeriods
from service.accounting.meter_exchange import MeterExchangeRecorder
from service.accounting.rollup_task import run_rollups
from service.accounting.store import apply_manual_reading, apply_replacement
from service.alarms import store as alarm_store
from service.alarms.engine import headroom_rules
from service.alarms.manager import AlarmManager
from service.alarms.mqtt_publisher import AlarmPublisher
from service.api.app import create_app
from service.api.http_protocol import DeadlineH11Protocol
from service.api.state import ServiceState
from service.audit import AuditEntry, AuditLog, apply_audit
from service.bus import SampleBus
from service.config import ApiConfig, HeatrecConfig
from service.control.arbiter import Priority
from service.control.loop import ControlLoop
from service.dispatch.history import DispatchHistory
from service.dispatch.task import DispatchTask
from service.fleet.records_feed import ForwardingJournal
from service.fleet.uplink import Uplink
from service.localservers.errors import LocalServerError
from service.metrics import build_registry
from service.model import utcnow
from service.scada.server import ScadaServer
from service.scada.sparkplug.node import EdgeNode
from service.storage.database import DB_ERRORS, Database
from service.storage.journal import Journal, apply_event, journal_path
from service.storage.migrations import migrate
from service.storage.points import sync_points
from service.storage.retention import enable_rollups, run_retention
from service.storage.spool import Spool, spool_path
from service.storage.writer import SampleWriter
from service.tasks import Running
from service.token_store import TokenStore, mirror_forever
from service.writes import WriteArbiter, WriteRequest

log = logging.getLogger(__name__)


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns SIGINT/SIGTERM and the shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_api_socket(host: str, port: int) -> socket.socket:
    """Bind the API port ourselves so 'in use' is a clear error instead of uvicorn exiting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise LocalServerError(f"port {port} on {host} (HTTP API) is already in use: stop what listens "
                               "there or change [api] port") from err
    sock.set_inheritable(True)
    return sock


def api_server_config(app: FastAPI, api: ApiConfig) -> uvicorn.Config:
    """uvicorn settings: no access log (tokens could leak via query strings), TLS when configured, and bounds.

    What a flood may cost is bounded (docs/CONFIG.md "[api]"): connections and requests at once
    (beyond: 503), the size of the headers, deadlines for incomplete headers and bodies (h11 with
    deadlines), idle keep-alive. X-Forwarded-For and -Proto are believed only from `trusted_proxies`:
    without any, the peer's address is the client's (the failed-authentication limiter counts by it).
    """
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                          ssl_certfile=api.tls_cert_file, ssl_keyfile=api.tls_key_file,
                          http=DeadlineH11Protocol.with_deadlines(api.header_timeout_s, api.body_timeout_s),
                          ws="none", h11_max_incomplete_event_size=api.max_header_bytes,
                          limit_concurrency=api.limit_concurrency, timeout_keep_alive=api.keep_alive_s,
                          proxy_headers=bool(api.trusted_proxies), forwarded_allow_ips=list(api.trusted_proxies),
                          # On a stop, an open event stream (or a client that never reads) holds it 5 s at most.
                          timeout_graceful_shutdown=5, server_header=False)


class Service:
    """The running heatrec service for one plant configuration."""

    def __init__(self, cfg: HeatrecConfig) -> None:
        self.cfg = cfg
        self.bus = SampleBus()
        self.drivers: list[Driver] = []
        self.writer: SampleWriter | None = None
        self.alarms: AlarmManager | None = None
        self.alarm_publisher: AlarmPublisher | None = None  # [alarms.mqtt]
        self.closed_periods: ClosedPeriods | None = None  # [accounting]: late readings for closed months refused
        self.scada: ScadaServer | None = None
        self.sparkplug: EdgeNode | None = None  # [sparkplug]
        self.uplink: Uplink | None = None  # [uplink]: this site's batches to the fleet's centre
        self.control: ControlLoop | None = None
        self.dispatch: DispatchTask | None = None  # [dispatch]: the plan constrains the controller
        self.arbiter: WriteArbiter | None = None
        self.database: Database | None = None
        self.journal: Journal | None = None
        self.tokens: TokenStore | None = None
        self.audit: AuditLog | None = None
        self._events: set[asyncio.Task[object]] = set()
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self.api_port: int | None = None

    def stop(self) -> None:
        """Ask the service to shut down (idempotent, safe from a signal handler)."""
        self._stop.set()

    async def _prepare_database(self, conn: asyncpg.Connection) -> None:
        """What the database needs before it takes anything: the schema, the point registry, the rollups."""
        applied = await migrate(conn)
        if applied:
            log.info("database schema migrated: %s", ", ".join(applied))
        keys = await sync_points(conn, self.cfg)
        if self.writer is not None:
            self.writer.add_keys(keys)
        try:
            await enable_rollups(conn, self.cfg.storage)
        except asyncpg.PostgresError as err:  # an optional feature never stops the service
            log.warning("could not enable compression/rollups: %s", err)

    def _database_transition(self, up: bool, detail: str) -> None:
        """Record the database's loss and return as events, through the journal (stored once it is back)."""
        self._record_event("storage", "database_up" if up else "database_down", "info" if up else "warning",
                           detail)

    def _record_event(self, source: str, kind: str, severity: str, message: str) -> None:
        """A row in `events`, through the journal: durable at once, stored when the database can take it."""
        if self.journal is None:
            return
        journal = self.journal
        data = {"time": utcnow().isoformat(), "source": source, "kind": kind, "severity": severity,
                "message": message}
        task = asyncio.get_running_loop().create_task(journal.append("event", data))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _audit_entry(self, entry: AuditEntry) -> None:
        """An audit entry from a part built before the audit log (the M-Bus meter exchanges)."""
        if self.audit is not None:
            await self.audit.record(entry)

    async def _journal_refused(self, kind: str, data: dict[str, object], err: BaseException) -> None:
        """A queued record the database will not take (a duplicate manual reading): the trail says so."""
        if self.audit is not None and kind != "audit":
            await self.audit.record(AuditEntry(str(data.get("entered_by", "heatrec")), "system", f"{kind}.store",
                                               str(data.get("meter_id", "")), data, None, "refused",
                                               f"queued during a database outage, refused when stored: {err}"))

    async def _closed_periods(self, db: Database) -> ClosedPeriods | None:
        """The guard of closed settlement periods, knowing them before the first reading arrives if it can."""
        cfg = self.cfg
        if cfg.accounting is None:
            return None
        spool = spool_path(cfg.storage.spool_dir, cfg.database)
        closed = ClosedPeriods(cfg, self.bus, state_file=spool.with_name(spool.name + ".closed-periods.json"))
        if db.up:
            try:
                await closed.refresh(db)
            except DB_ERRORS as err:  # its task retries
                log.warning("closed settlement periods not read at start (%s): the local copy guards", err)
        return closed

    def health(self) -> dict[str, tuple[str, str]]:
        """Per component: (ok|degraded, detail)."""
        out: dict[str, tuple[str, str]] = {}
        if self.database is not None:
            ds = self.database.stats
            if self.database.up:
                rows = self.writer.stats.rows_written if self.writer is not None else 0
                out["database"] = ("ok", f"connected, {rows} rows written")
            else:
                since = f" since {ds.since:%Y-%m-%d %H:%M:%SZ}" if ds.since else ""
                out["database"] = ("degraded", f"unavailable{since} ({ds.last_error or 'connecting'}); "
                                               f"retrying in {self.database.retry_after_s()} s, "
                                               "samples and records held locally")
        if self.journal is not None:
            js = self.journal.stats
            out["journal"] = ("ok" if js.pending == 0 else "degraded",
                              f"{js.pending} records waiting for the database, {js.applied} stored")
        if self.writer is not None:
            st = self.writer.stats
            if self.database is None or self.database.up:
                if not (st.connected or st.write_errors == 0):
                    out["database"] = ("degraded", f"writes failing, {st.pending} samples held")
            if self.writer.spool is not None:
                sp = self.writer.spool.stats
                detail = f"{sp.samples} samples ({sp.bytes} bytes) held, {sp.dropped_samples} dropped when full"
                out["spool"] = ("degraded" if sp.dropped_samples or st.spooling else "ok", detail)
        if self.alarm_publisher is not None:
            pub = self.alarm_publisher
            out["alarms_mqtt"] = ("ok", f"connected to {pub.cfg.url}") if pub.stats.connected else (
                "degraded", f"broker {pub.cfg.url} unavailable: {pub.queue_depth} changes queued, "
                            f"{pub.stats.dropped} dropped")
        if self.control is not None:
            out["control"] = self.control.health()
        if self.dispatch is not None:
            task = self.dispatch
            out["dispatch"] = ("ok", "off: today's control") if not task.enabled else (
                ("degraded", f"fallback {task.episode}: {task.episode_reason}") if task.episode else (
                    "ok", "planning" if task.plan is None else f"plan {task.plan.status}"))
        if self.sparkplug is not None:
            spk = self.sparkplug.stats
            server = self.sparkplug.server
            out["sparkplug"] = ("ok", f"online to {server}, bdSeq {spk.bdseq}") if spk.born else (
                "degraded", f"not born ({'connected to ' + server if spk.connected else 'trying ' + server}; "
                            f"primary host {'online' if spk.host_online else 'offline'}): samples spooled")
        if self.uplink is not None:
            ul, box = self.uplink, self.uplink.outbox
            held = f"{box.backlog_batches} batches ({box.backlog_samples} samples) not yet acknowledged"
            out["uplink"] = ("ok", f"connected to {ul.cfg.url}, {held}") if ul.stats.connected else (
                "degraded", f"central broker {ul.cfg.url} unavailable: {held}, kept in the outbox")
        for d in self.drivers:
            state = str(d.state.value)
            out[f"driver:{d.device_id}"] = ("ok" if state == "connected" else "degraded", state)
        return out

    async def run(self, api_socket: socket.socket | None = None) -> None:
        """Run until stop() is called; shutdown goes API → drivers → writer (flush) → database."""
        cfg = self.cfg
        sock = api_socket or bind_api_socket(cfg.api.host, cfg.api.port)
        self.api_port = sock.getsockname()[1]
        async with contextlib.AsyncExitStack() as stack:
            # What is opened is closed in reverse order: after a failed start as after a stop.
            stack.callback(sock.close)
            sub = self.bus.subscribe("storage", cfg.storage.queue_size)
            spool = Spool(spool_path(cfg.storage.spool_dir, cfg.database), max_bytes=cfg.storage.spool_max_bytes,
                          segment_bytes=cfg.storage.spool_segment_bytes)
            spool.open()
            stack.callback(spool.close)
            # The database is reached in the background: the plant starts and runs without it (docs/OPERATIONS.md).
            db = self.database = Database(cfg.database, self._prepare_database, retry_max_s=cfg.storage.retry_max_s)
            stack.push_async_callback(db.close)
            self.writer = SampleWriter(db, sub, cfg.storage, {}, spool)
            # With an [uplink], its alarm, event and audit records also go to the centre (docs/FLEET.md).
            journal_class = ForwardingJournal if cfg.uplink is not None else Journal
            self.journal = journal_class(journal_path(cfg.storage.spool_dir, cfg.database), db, {
                "audit": apply_audit, "alarms": alarm_store.apply_record, "event": apply_event,
                "manual_reading": apply_manual_reading, "replacement": apply_replacement},
                refused=self._journal_refused)
            self.journal.open()
            stack.callback(self.journal.close)
            db.on_transition = self._database_transition
            running = Running(stack)
            running.start("database", db.run())
            with contextlib.suppress(TimeoutError):  # a database that answers at once is ready before the drivers
                await asyncio.wait_for(db.ready.wait(), cfg.database.connect_timeout_s)
            if db.up:  # what the last run left in the journal first: the alarm states restored below include it
                await self.journal.drain()
            running.start("journal", self.journal.run())
            self.tokens = TokenStore(Path(cfg.api.token_store))
            running.start("token-mirror", mirror_forever(self.tokens, db, cfg.api.token_cache_s))
            links = ModbusLinks()  # the devices behind one Modbus gateway share its connection
            closed = self.closed_periods = await self._closed_periods(db)
            serials = SerialFile(Path(cfg.storage.spool_dir) / "mqtt-serials.json")  # tracked meter serials
            # M-Bus meters: identification numbers tracked, an exchange recorded in accounting (and audited).
            journal = self.journal
            exchanges = MeterExchangeRecorder(cfg.accounting.meters if cfg.accounting else [], journal.append,
                                              self._audit_entry)
            mbus_links, identities = MbusLinks(), SerialFile(Path(cfg.storage.spool_dir) / "mbus-identities.json")
            self.drivers = [create_driver(d, closed if closed is not None and any(
                                f"{d.id}.{p.id}" in closed.points for p in d.points) else self.bus,
                                          modbus_links=links, mqtt_serials=serials, mbus_links=mbus_links,
                                          mbus_identities=identities, on_meter_exchange=exchanges.offer)
                            for d in cfg.devices]
            mqtt_drivers = [d for d in self.drivers if isinstance(d, MqttDriver)]
            self.alarms = AlarmManager(cfg.alarms, [d.id for d in cfg.devices], self.bus, db,
                                       lambda: {d.device_id: str(d.state.value) for d in self.drivers},
                                       journal=self.journal,
                                       serial_devices=[d.device_id for d in mqtt_drivers if d.device.serial_path],
                                       device_faults=lambda: {d.device_id: d.serial_problem for d in mqtt_drivers},
                                       headroom=headroom_rules(cfg.control))
            await self.alarms.start()
            if cfg.alarms.mqtt is not None:
                alarms = self.alarms
                self.alarm_publisher = AlarmPublisher(cfg.alarms.mqtt, lambda: alarms.engine.alarms.values())
                alarms.observe(self.alarm_publisher.offer)
            audit = AuditLog(db, self.journal)
            self.audit = audit
            by_device = {d.device_id: d for d in self.drivers}

            async def device_write(point_id: str, value: float) -> WriteResult:
                return await by_device[point_id.split(".", 1)[0]].write(point_id, value)

            # The only holder of the drivers' write: every writer goes through it (docs/ARCHITECTURE.md).
            self.arbiter = WriteArbiter({f"{d.id}.{p.id}": p for d in cfg.devices for p in d.points},
                                        device_write, audit=audit.record)
            if cfg.control is not None:
                arbiter = self.arbiter

                async def control_write(point_id: str, value: float) -> WriteResult:
                    return await arbiter.submit(WriteRequest(point_id, value, Priority.AUTOMATIC, "control"))

                self.control = ControlLoop(cfg.control, self.bus, control_write, audit=audit.record,
                                           caps=lambda caps: arbiter.set_caps("cdu_limit", caps),
                                           state_path=Path(cfg.control.state_file),
                                           events=lambda kind, severity, message: self._record_event(
                                               "control", kind, severity, message))
                arbiter.control = self.control  # operators reach the loop parameters through the arbiter too
                if cfg.dispatch is not None:
                    self.dispatch = DispatchTask(cfg.dispatch, cfg.control, self.bus, self.control.controller,
                                                 audit=audit.record, state_path=Path(cfg.dispatch.state_file),
                                                 events=lambda kind, severity, message: self._record_event(
                                                     "dispatch", kind, severity, message),
                                                 history=DispatchHistory(cfg.dispatch, cfg.control, db))
            if cfg.sparkplug is not None:
                # Subscribed to the bus now, before the drivers start; commands go through the arbiter.
                self.sparkplug = EdgeNode(cfg.sparkplug, cfg.devices, self.bus,
                                          device_states=lambda: {d.device_id: str(d.state.value) for d in self.drivers},
                                          arbiter=self.arbiter, audit=audit.record)
                self.sparkplug.start()
            if cfg.uplink is not None:  # subscribed to the bus now, before the drivers start
                self.uplink = Uplink(cfg.uplink, self.bus)
                if isinstance(self.journal, ForwardingJournal):
                    self.journal.forward_to(self.uplink.offer_record)
            if cfg.scada is not None:
                self.scada = ScadaServer(cfg.scada, cfg, self.bus, control=self.control, alarms=self.alarms,
                                         arbiter=self.arbiter)
                stack.push_async_callback(self.scada.stop)  # also after a start that failed half-way
                await self.scada.start()
            registry, latency = build_registry(self)
            app = create_app(ServiceState(cfg, self.bus, db, self.health, registry, latency, self.alarms,
                                          control=self.control, arbiter=self.arbiter, tokens=self.tokens,
                                          audit=audit.record, journal=self.journal,
                                          closed_periods=self.closed_periods, dispatch=self.dispatch))
            server = _ApiServer(api_server_config(app, cfg.api))
            # The long-lived parts, in dependency order; the stack stops them in reverse (API first, writer
            # after the drivers, so it flushes what they produced; the journal and the database last), then
            # SCADA, the journal and spool files, the pool and the socket.
            running.start("storage-writer", self.writer.run())
            if self.uplink is not None:  # stopped after the drivers: it puts what they produced in its outbox
                running.start("uplink", self.uplink.run())
            running.start("storage-retention", run_retention(db, cfg.storage))
            if cfg.accounting is not None:
                running.start("accounting-rollups", run_rollups(db, cfg))
            if closed is not None:
                running.start("accounting-closed-periods", closed.run(db))
            # Stopped together; cancel_and_wait retries, as a library's wait_for can swallow one cancel.
            running.start_together([(f"driver-{d.device_id}", d.run()) for d in self.drivers])
            running.start("alarms", self.alarms.run())
            if self.alarm_publisher is not None:
                running.start("alarm-mqtt", self.alarm_publisher.run())
            if self.sparkplug is not None:  # stopped before the drivers: its NDEATH goes out while they still run
                running.start("sparkplug", self.sparkplug.run())
            if self.control is not None:  # stopped before the drivers: no write may race their shutdown
                running.start("control", self.control.run())
            if self.dispatch is not None:  # stopped before control: the controller is left without constraints
                running.start("dispatch", self.dispatch.run())
                # Its own task: the fit is read from the database in the background, never before a solve.
                running.start("dispatch-history", self.dispatch.history.run())

            async def stop_api(task: asyncio.Task[object]) -> None:
                server.should_exit = True
                await task

            api_task = running.start("api", server.serve(sockets=[sock]), stop=stop_api)
            while not server.started and not api_task.done():  # noqa: ASYNC110 - uvicorn offers only a flag
                await asyncio.sleep(0.01)
            if api_task.done():
                api_task.result()  # the API could not start: its error, after the stack has stopped the rest
            self.started.set()
            log.info("heatrec running: %d devices, API on %s://%s:%d",
                     len(self.drivers), cfg.api.scheme, cfg.api.host, self.api_port)
            crashed = await running.until(self._stop)
            log.info("stopping")
            if crashed is not None:
                log.error("%s failed: stopping the service", crashed.get_name())
                crashed.result()  # raises its error; unwinding the stack stops the others first
