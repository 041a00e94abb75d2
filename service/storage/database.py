"""Connecting to PostgreSQL with errors that say what to do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.config import ConfigError, DatabaseConfig
from service.errors import StorageUnavailable, StorageValueError
from service.model import utcnow

log = logging.getLogger(__name__)


class DatabaseUnavailable(StorageUnavailable):
    """PostgreSQL could not be reached or refused us; the message says what to check."""


# asyncpg's and the socket's errors, as they reach a query: translated here, once, into the storage subtree.
_VALUE_ERRORS = (asyncpg.DataError, OverflowError)
# What a query or a connection attempt raises when the database is away, ending or not the one asked for: the
# one definition every loop that rides out an outage catches (the journal, `heatrec central`, the supervisor).
# InternalClientError: asyncpg's answer to a query on a connection PostgreSQL was just ending (its fast
# shutdown; MagicStack/asyncpg#1069), and the class of TargetServerAttributeNotMatched (a standby where
# target_session_attrs asks for read-write): the work is retried, so taking it as the database away loses
# nothing, where letting it through would stop the service.
DB_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError,
                                              asyncpg.InternalClientError)
_UNAVAILABLE = DB_ERRORS
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncio.CancelledError)


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """asyncpg and socket errors of the work inside as StorageValueError (422) or StorageUnavailable (503)."""
    try:
        yield
    except StorageUnavailable:
        raise  # already says what is away (DatabaseDown is also an OSError)
    except _VALUE_ERRORS as err:
        raise StorageValueError(f"out of range: {err}") from err
    except _UNAVAILABLE as err:
        raise StorageUnavailable("database unavailable, try again shortly") from err


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool | Database) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection whose failures arrive as StorageValueError (422) or StorageUnavailable (503)."""
    async with translated(), pool.acquire() as conn:
        yield conn


def _password(cfg: DatabaseConfig) -> str | None:
    return cfg.password or os.environ.get("HEATREC_DB_PASSWORD") or None


def tls_context(cfg: DatabaseConfig) -> ssl.SSLContext | bool | str:
    """asyncpg's `ssl` argument for `[database] sslmode` (or its default: verify-full off loopback).

    disable: no TLS. prefer: asyncpg's own mode (TLS if the server offers it, unverified; plain otherwise).
    require: TLS, the certificate unchecked, unless tls_ca_file is set (then checked as verify-ca, as libpq
    does). verify-ca: the certificate must chain to tls_ca_file (or the system CAs). verify-full: that, and
    it must name `host`. A client certificate (tls_cert_file, tls_key_file) is presented in every TLS mode.
    """
    mode = cfg.tls_mode
    if mode == "disable":
        return False
    if mode == "prefer":
        return "prefer"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode == "require" and cfg.tls_ca_file is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            if cfg.tls_ca_file is not None:
                ctx.load_verify_locations(cafile=cfg.tls_ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"[database] tls_ca_file: cannot load '{cfg.tls_ca_file}': {err}") from err
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = mode == "verify-full"
    if cfg.tls_cert_file is not None:
        try:
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"[database] tls_cert_file / tls_key_file: cannot load '{cfg.tls_cert_file}' / "
                              f"'{cfg.tls_key_file}': {err}") from err
    return ctx


def connect_kwargs(cfg: DatabaseConfig) -> dict[str, Any]:
    """What asyncpg.connect and asyncpg.create_pool take for `cfg`: address, role, password, timeouts, TLS.

    Every connection heatrec opens is built from here, so none can skip the TLS settings.
    """
    if cfg.hosts is None:
        host: str | list[str] = cfg.host
        port: int | list[int] = cfg.port
    else:
        host, port = [h for h, _ in cfg.addresses], [p for _, p in cfg.addresses]
    kw: dict[str, Any] = {"host": host, "port": port, "user": cfg.user, "database": cfg.name,
                          "password": _password(cfg), "timeout": cfg.connect_timeout_s, "command_timeout": 60,
                          "ssl": tls_context(cfg)}
    if cfg.target_session_attrs is not None:
        kw["target_session_attrs"] = cfg.target_session_attrs
    return kw


class NoServerMatches(ConnectionError):
    """Servers answered, but none is what `target_session_attrs` asks for (e.g. only a standby, for read-write).

    A ConnectionError: the database the service needs is away until a standby is promoted.
    """


async def connect_in_turn(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect over a list of hosts, each given the whole `timeout`, in order, as libpq does.

    asyncpg spends one `timeout` on all of its hosts together, so a first server that drops packets (a network
    partition) would use it up before the second is tried. Takes what connect_kwargs gives (host and port
    lists); a pool takes it as its `connect`.
    """
    hosts, ports = kwargs.pop("host"), kwargs.pop("port")
    if not isinstance(hosts, list):
        hosts, ports = [hosts], [ports]
    wanted = kwargs.pop("target_session_attrs", None) or "any"
    # prefer-standby: a standby if one answers, else any server that answered.
    passes = ["standby", "any"] if wanted == "prefer-standby" else [wanted]
    candidates: list[tuple[str, int]] = list(zip(hosts, ports, strict=True))
    failures: list[str] = []
    last: BaseException | None = None
    answered: list[tuple[str, int]] = []
    for attrs in passes:
        answered = []
        for host, port in candidates:
            try:
                return await asyncpg.connect(*args, host=host, port=port, target_session_attrs=attrs, **kwargs)
            except asyncpg.TargetServerAttributeNotMatched:
                answered.append((host, port))
                failures.append(f"{host}:{port} is not {attrs}")
            except (OSError, asyncpg.CannotConnectNowError) as err:
                last = err
                failures.append(f"{host}:{port}: {err.__class__.__name__}: {err}")
        candidates = answered
    if answered or last is None:
        hint = ": a standby not promoted yet?" if wanted in ("read-write", "primary") else ""
        raise NoServerMatches(f"no server is {wanted} ({'; '.join(failures)}){hint}")
    raise last


def _pool_kwargs(cfg: DatabaseConfig) -> dict[str, Any]:
    """connect_kwargs, and for several hosts or a target_session_attrs the connect that tries them in turn."""
    kw = connect_kwargs(cfg)
    if cfg.hosts is not None or cfg.target_session_attrs is not None:
        kw["connect"] = connect_in_turn
    return kw


def connect_budget_s(cfg: DatabaseConfig) -> float:
    """The longest a new connection may take: `connect_timeout_s` for each server tried."""
    return cfg.connect_timeout_s * len(cfg.addresses)


def _tls_failure(err: BaseException) -> str | None:
    """What to do about a failed TLS negotiation, or None when `err` is something else."""
    if isinstance(err, ssl.SSLCertVerificationError):
        why = err.verify_message or str(err)
        return (f"TLS: the server's certificate does not verify ({why}): check [database] host (with "
                "sslmode verify-full it must be a name the certificate carries), tls_ca_file and sslmode")
    if isinstance(err, ssl.SSLError):
        return f"TLS negotiation failed ({err}): check [database] sslmode, tls_ca_file, tls_cert_file, tls_key_file"
    text = str(err)
    if isinstance(err, ConnectionError) and "rejected SSL upgrade" in text:
        return ("the server does not offer TLS, which [database] sslmode requires: turn on ssl in its "
                "postgresql.conf (or, on a trusted network only, set sslmode = \"disable\")")
    if isinstance(err, asyncpg.InvalidAuthorizationSpecificationError) and "no encryption" in text:
        return f"{text}: the server accepts this role only over TLS: set [database] sslmode (e.g. \"verify-full\")"
    return None


async def connect_pool(cfg: DatabaseConfig, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """Open a connection pool, translating failures into DatabaseUnavailable."""
    try:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(**_pool_kwargs(cfg), min_size=min_size, max_size=max_size),
            connect_budget_s(cfg) + 5)
    except (OSError, TimeoutError) as err:
        if (tls := _tls_failure(err)) is not None:
            raise DatabaseUnavailable(f"PostgreSQL at {cfg.where}: {tls}") from err
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {cfg.where} ({err.__class__.__name__}: {err}): "
            f"is it running? check [database] {'hosts' if cfg.hosts else 'host and port'}") from err
    except asyncpg.InvalidPasswordError as err:
        raise DatabaseUnavailable(f"PostgreSQL refused user '{cfg.user}': wrong password "
                                  "(set [database] password or HEATREC_DB_PASSWORD)") from err
    except asyncpg.InvalidCatalogNameError as err:
        raise DatabaseUnavailable(f"database '{cfg.name}' does not exist on {cfg.where}: "
                                  f"create it (createdb {cfg.name}) or fix [database] name") from err
    except asyncpg.PostgresError as err:
        if (tls := _tls_failure(err)) is not None:
            raise DatabaseUnavailable(f"PostgreSQL at {cfg.where}: {tls}") from err
        raise DatabaseUnavailable(f"PostgreSQL error at connect: {err}") from err
    assert pool is not None
    return pool


class DatabaseDown(DatabaseUnavailable, ConnectionError):
    """The database is known to be away: refused at once, without a connection attempt.

    Also a ConnectionError, so every loop that already rides out a lost connection (the sample
    writer, retention, the alarm store) treats it the same way.
    """


Prepare = Callable[[asyncpg.Connection], Awaitable[None]]


@dataclass
class DatabaseStats:
    """What health and metrics show of the database link."""

    up: bool = False
    prepared: bool = False            # migrated and points synced since this process started
    since: datetime | None = None     # when `up` last changed
    last_error: str = ""
    outages: int = 0                  # transitions from up to down
    failed_probes: int = 0            # connection attempts and probes that failed
    next_attempt_s: float = 0.0       # seconds from the last probe to the next while down


class Database:
    """The plant's PostgreSQL, reached in the background: the service starts and runs without it.

    `run()` connects with capped backoff, runs `prepare` (migrations, point registry) once it
    answers, and probes it while up, so a loss is noticed without any caller waiting on a dead
    socket. While it is away, `acquire()` fails at once with DatabaseDown (a 503 with Retry-After
    at the API); loss and recovery are each logged once.
    """

    def __init__(self, cfg: DatabaseConfig, prepare: Prepare | None = None, *, max_size: int = 5,
                 retry_max_s: float = 10.0, probe_interval_s: float = 5.0) -> None:
        self.cfg, self._prepare, self._max_size = cfg, prepare, max_size
        self.retry_max_s, self.probe_interval_s = retry_max_s, probe_interval_s
        self.stats = DatabaseStats()
        self.ready = asyncio.Event()      # set while up and prepared
        self._pool: asyncpg.Pool | None = None
        self._wake = asyncio.Event()
        # Called with (up, what happened) on every loss and every return (not on a first connect).
        self.on_transition: Callable[[bool, str], None] | None = None

    @classmethod
    def from_pool(cls, pool: asyncpg.Pool, cfg: DatabaseConfig | None = None) -> Database:
        """Around a pool that is open already (tools and tests): up and prepared, with no supervisor."""
        db = cls(cfg or DatabaseConfig())
        db._pool = pool
        db.stats.up = db.stats.prepared = True
        db.ready.set()
        return db

    @property
    def up(self) -> bool:
        """True while the database answers and is prepared."""
        return self.stats.up and self.stats.prepared

    def retry_after_s(self) -> int:
        """What a refused client should wait, in whole seconds (at least 1)."""
        return max(1, round(self.stats.next_attempt_s or self.retry_max_s))

    def unavailable(self) -> DatabaseDown:
        """The error a caller gets while the database is away."""
        since = f" since {self.stats.since:%Y-%m-%d %H:%M:%SZ}" if self.stats.since else ""
        why = f" ({self.stats.last_error})" if self.stats.last_error else ""
        err = DatabaseDown(f"the database at {self.cfg.where} is unavailable{since}{why}")
        err.retry_after_s = self.retry_after_s()
        return err

    def acquire(self) -> Any:
        """A pooled connection (`async with db.acquire() as conn`); DatabaseDown at once while away."""
        if self._pool is None or not self.up:
            raise self.unavailable()
        return self._pool.acquire()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run a query on a pooled connection."""
        async with self.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """First row of a query, or None."""
        async with self.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """First value of a query."""
        async with self.acquire() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement; its status."""
        async with self.acquire() as conn:
            return str(await conn.execute(sql, *args))

    async def executemany(self, sql: str, args: Any) -> None:
        """Run a statement once per argument tuple."""
        async with self.acquire() as conn:
            await conn.executemany(sql, args)

    def failed(self, err: BaseException) -> None:
        """A caller's query failed for a reason that can be the database: probe it now."""
        if self.stats.up:
            self.stats.last_error = f"{err.__class__.__name__}: {err}"
            self._wake.set()

    async def close(self) -> None:
        """Close the pool (connections in use are waited for)."""
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except _CLOSE_ERRORS:
                self._pool.terminate()  # a connection stuck on a dead server: drop it, nothing is lost
            self._pool = None

    async def run(self) -> None:
        """Connect, prepare and watch until cancelled."""
        delay = 0.5
        while True:
            try:
                await self._probe()
                delay = 0.5
                self.stats.next_attempt_s = self.probe_interval_s
                wait = self.probe_interval_s
            except _UNAVAILABLE as err:
                self._down(err, delay)
                wait, delay = delay, min(delay * 2, self.retry_max_s)
                self.stats.next_attempt_s = delay
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _probe(self) -> None:
        if self._pool is None:
            # min_size=0: creating the pool opens no connection, so it cannot fail on a database that is away.
            self._pool = await asyncpg.create_pool(**_pool_kwargs(self.cfg), min_size=0, max_size=self._max_size)
        async with self._pool.acquire(timeout=connect_budget_s(self.cfg) + 1) as conn:
            try:
                await conn.fetchval("SELECT 1", timeout=self.cfg.connect_timeout_s)
                if not self.stats.prepared and self._prepare is not None:
                    await self._prepare(conn)
            except asyncpg.InternalClientError as err:
                # A query on a connection PostgreSQL is ending (its fast shutdown) can meet asyncpg in a
                # state it cannot leave (MagicStack/asyncpg#1069). The probe asks only whether the database
                # answers: it did not, and this connection is of no further use.
                conn.terminate()
                raise ConnectionResetError(f"the connection broke while probing ({err})") from err
        self.stats.prepared = True
        if not self.stats.up:
            was_down = self.stats.since is not None
            away = (utcnow() - self.stats.since).total_seconds() if self.stats.since else 0.0
            self.stats.up, self.stats.since, self.stats.last_error = True, utcnow(), ""
            what = f"is back after {away:.0f} s: writing what was held meanwhile" if was_down else "connected"
            log.info("database %s/%s %s", self.cfg.where, self.cfg.name, what)
            self.ready.set()
            if was_down and self.on_transition is not None:
                self.on_transition(True, f"database {what}")

    def _down(self, err: BaseException, delay: float) -> None:
        self.stats.failed_probes += 1
        self.stats.last_error = _describe(err)
        if self.stats.up or self.stats.since is None:
            self.stats.outages += self.stats.up
            self.stats.up, self.stats.since = False, utcnow()
            self.ready.clear()
            log.warning("database %s/%s unavailable (%s): the plant runs on, samples and records are held "
                        "locally; retrying every %.0f s at most", self.cfg.where, self.cfg.name,
                        self.stats.last_error, self.retry_max_s)
            if self.on_transition is not None:
                self.on_transition(False, f"database unavailable: {self.stats.last_error}")


def _describe(err: BaseException) -> str:
    if (tls := _tls_failure(err)) is not None:
        return tls
    if isinstance(err, asyncpg.InvalidPasswordError):
        return "wrong password: set [database] password or HEATREC_DB_PASSWORD"
    if isinstance(err, asyncpg.InvalidCatalogNameError):
        return f"database does not exist: create it or fix [database] name ({err})"
    text = str(err) or err.__class__.__name__
    return f"{err.__class__.__name__}: {text}"
