"""`heatrec central`: every site's batches from the broker into the central TimescaleDB, acknowledged once committed.

Instances of one group share the sites through the MQTT 5 shared subscription
`$share/<group>/heatrec/v1/+/batch`; each batch is written in one transaction (service/fleet/store.py)
and only then acknowledged on the site's retained `ack` topic. An instance takes batches only while its
database is up: when it goes away the instance leaves the broker, so the group's others take the sites,
and whatever it had taken but not committed the sites send again (they keep every batch until it is
acknowledged). The centre subscribes to no command topic and publishes nothing but acknowledgements:
it never writes to a plant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import asyncpg
import uvicorn

from drivers.backoff import Backoff
from drivers.mqtt_link import client_tls_context
from service.fleet import store, wire
from service.fleet.api import CentralState, create_central_app
from service.fleet.view import FleetState
from service.fleet_config import CentralConfig
from service.metrics import build_central_registry
from service.storage.database import DB_ERRORS, Database
from service.storage.migrations import migrate
from service.tasks import Running, raise_if_stopping
from service.token_store import TokenStore, mirror_forever

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _DatabaseGone(Exception):
    """The database went away: leave the broker until it is back."""


class Central:
    """One `heatrec central` instance."""

    def __init__(self, cfg: CentralConfig) -> None:
        self.cfg = cfg
        self.db = Database(cfg.database, self._prepare, max_size=cfg.ingest.max_in_flight + 1)
        self.state = FleetState({s.id: s.name for s in cfg.sites or []}, cfg.sites is not None,
                                cfg.ingest.link_timeout_s)
        self.keys = store.PointKeys()
        # The API's tokens, checked without the database (as a site's): `heatrec token create -c central.toml`.
        self.tokens = TokenStore(Path(cfg.api.token_store))
        self.connected = False
        self.started = asyncio.Event()
        self.api_port: int | None = None
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.ingest.max_in_flight)

    def stop(self) -> None:
        """Ask the instance to stop (idempotent)."""
        self._stop.set()

    async def _prepare(self, conn: asyncpg.Connection) -> None:
        applied = await migrate(conn)
        if applied:
            log.info("central database migrated: %s", ", ".join(applied))

    def health(self) -> dict[str, tuple[str, str]]:
        """Per component: (ok|degraded, detail)."""
        return {"database": ("ok", "connected") if self.db.up else ("degraded", self.db.stats.last_error or
                                                                     "connecting"),
                "broker": ("ok", f"subscribed at {self.cfg.broker.url}") if self.connected else
                ("degraded", f"not connected to {self.cfg.broker.url}")}

    async def run(self, sock: socket.socket | None = None) -> None:
        """Serve until stop()."""
        cfg = self.cfg
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((cfg.api.host, cfg.api.port))
        self.api_port = sock.getsockname()[1]
        app = create_central_app(CentralState(cfg, self.state, self.db, self.tokens, self.health),
                                 build_central_registry(self.state))
        server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                        server_header=False, timeout_graceful_shutdown=2))
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(sock.close)
            stack.push_async_callback(self.db.close)
            running = Running(stack)
            running.start("database", self.db.run())
            running.start("fleet-refresh", self._refresh())
            running.start("fleet-consumer", self._consume())
            running.start("token-mirror", mirror_forever(self.tokens, self.db, cfg.api.token_cache_s))

            async def stop_api(task: asyncio.Task[object]) -> None:
                server.should_exit = True
                await task

            api = running.start("api", server.serve(sockets=[sock]), stop=stop_api)
            while not server.started and not api.done():  # noqa: ASYNC110 - uvicorn offers only a flag
                await asyncio.sleep(0.01)
            if api.done():
                api.result()
            self.started.set()
            log.info("heatrec central %s: API on http://%s:%d, broker %s, group %s", cfg.instance, cfg.api.host,
                     self.api_port, cfg.broker.url, cfg.broker.group)
            crashed = await running.until(self._stop)
            if crashed is not None:
                log.error("%s failed: stopping", crashed.get_name())
                crashed.result()

    async def _refresh(self) -> None:
        """Read the per-site figures of record from the database, for the API and the metrics."""
        while True:
            if self.db.up:
                try:
                    async with self.db.acquire() as conn:
                        self.state.rows = {r.site: r for r in await store.read_sites(conn)}
                except DB_ERRORS as err:
                    self.db.failed(err)
            await asyncio.sleep(self.cfg.ingest.refresh_s)

    def _client(self) -> aiomqtt.Client:
        b = self.cfg.broker
        url = urlsplit(b.url)
        tls = client_tls_context(b.tls_ca_file, b.tls_cert_file, b.tls_key_file) if url.scheme == "mqtts" else None
        return aiomqtt.Client(url.hostname or "", url.port or (8883 if tls else 1883), username=b.username,
                              password=b.password, identifier=b.client_id or f"heatrec-central-{self.cfg.instance}",
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, tls_context=tls,
                              timeout=PUBLISH_TIMEOUT_S, keepalive=b.keepalive_s)

    async def _consume(self) -> None:
        backoff, failures = Backoff(0.2, self.cfg.broker.reconnect_max_s), 0
        while True:
            await self.db.ready.wait()
            try:
                async with self._client() as client:
                    await client.subscribe(f"{wire.PREFIX}/+/status", qos=1)
                    await client.subscribe(f"$share/{self.cfg.broker.group}/{wire.PREFIX}/+/batch", qos=1)
                    self.connected, failures = True, 0
                    backoff.reset()
                    log.info("central %s: taking batches from %s", self.cfg.instance, self.cfg.broker.url)
                    await self._serve(client)
            except (aiomqtt.MqttError, OSError) as err:
                raise_if_stopping(err)  # a stop whose goodbye timed out is still a stop
                failures += 1
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "central %s: broker %s unavailable (%s)", self.cfg.instance, self.cfg.broker.url, err)
            except _DatabaseGone:
                log.warning("central %s: database unavailable: leaving the broker until it is back (the sites "
                            "keep their batches)", self.cfg.instance)
            finally:
                self.connected = False
            await asyncio.sleep(backoff.next_delay())

    async def _serve(self, client: aiomqtt.Client) -> None:
        tasks: set[asyncio.Task[None]] = set()
        gone = asyncio.Event()
        try:
            async for message in client.messages:
                if gone.is_set():
                    raise _DatabaseGone
                topic = message.topic.value
                site = wire.site_of(topic)
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                if site is None:
                    continue
                if topic.endswith("/status"):
                    self._status(site, bytes(payload))
                    continue
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(client, site, bytes(payload), gone))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                # Released when done, also if cancelled before it ever ran (a finally would not run then).
                task.add_done_callback(lambda _t: self._slots.release())
        finally:
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _status(self, site: str, payload: bytes) -> None:
        if not payload:
            return  # a retained status being cleared
        try:
            self.state.status(site, wire.decode_status(payload))
        except wire.Malformed as err:
            self.state.count(site, "malformed_status", str(err))

    async def _handle(self, client: aiomqtt.Client, site: str, payload: bytes, gone: asyncio.Event) -> None:
        try:
            if not self.state.allowed(site):
                self.state.count(site, "refused", "not among central.toml's sites")
                return
            try:
                batch = wire.decode_message(payload)
            except wire.Malformed as err:
                self.state.count(site, "malformed", str(err))
                return
            if batch.site != site:
                self.state.count(site, "malformed", f"names site '{batch.site}' on site '{site}'s topic")
                return
            try:
                async with self.db.acquire() as conn:
                    result = await store.write_batch(conn, self.keys, batch)
            except DB_ERRORS as err:
                # Not acknowledged: the site sends it again. Leave the broker while the database is away.
                self.state.count(site, "failed", f"{err.__class__.__name__}: {err}")
                self.db.failed(err)
                gone.set()
                return
            self.state.count(site, result.outcome.value)
            if result.lost:
                self.state.counts[(site, "lost")] += result.lost
            self.state.stored_samples[site] += result.rows
            await client.publish(wire.ack_topic(site), wire.encode_ack(site, result.epoch, result.watermark,
                                                                       batch.seq),
                                 qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S)
        except (aiomqtt.MqttError, OSError):
            pass  # the ack is lost with the connection: the site sends the batch again, and learns it is stored
