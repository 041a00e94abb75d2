"""A private PostgreSQL 15 cluster with TimescaleDB preloaded, bound to loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from service.localservers.errors import LocalServerError
from service.localservers.ports import check_ports_free
from service.localservers.process import chown_tree, spawn, stop, system_user

PG_BIN = Path(os.environ.get("HEATREC_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SHARE = Path(os.environ.get("HEATREC_PG_SHARE", "/usr/share/postgresql/15"))
SETUP_HINT = "run 'make setup' (it installs PostgreSQL 15 and builds TimescaleDB)"


class PostgresCluster:
    """Create (first use), start and stop a PostgreSQL cluster owned by heatrec.

    As root the server runs as the `postgres` system user (PostgreSQL refuses root), so the
    data directory is handed to that user.
    """

    def __init__(self, datadir: Path, port: int, password: str, *, host: str = "127.0.0.1",
                 user: str = "heatrec", dbname: str = "heatrec",
                 settings: dict[str, str] | None = None) -> None:
        self.datadir = Path(datadir).absolute()
        self.port, self.host, self.user, self.password, self.dbname = port, host, user, password, dbname
        self.settings = settings or {}
        self.logfile = self.datadir.parent / f"{self.datadir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = system_user("postgres") if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """Connection URL (without the password) of the heatrec database."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def _check_installed(self) -> None:
        if not (PG_BIN / "postgres").exists():
            raise LocalServerError(f"PostgreSQL 15 is not installed ({PG_BIN}/postgres missing): {SETUP_HINT}")
        if not (PG_SHARE / "extension" / "timescaledb.control").exists():
            raise LocalServerError(f"TimescaleDB is not installed for PostgreSQL 15: {SETUP_HINT}")
        if os.geteuid() == 0 and self._owner is None:
            raise LocalServerError(f"running as root but there is no 'postgres' system user: {SETUP_HINT}")

    def _initdb(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.datadir, 0o700)
        if self._owner is not None:
            chown_tree(self.datadir, self._owner)
        with tempfile.NamedTemporaryFile("w", delete=False, dir=self.datadir.parent) as pw:
            pw.write(self.password + "\n")
        try:
            if self._owner is not None:
                os.chown(pw.name, self._owner.pw_uid, self._owner.pw_gid)
            argv = [str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", self.user, f"--pwfile={pw.name}",
                    "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale"]
            with open(self.logfile, "ab") as log:
                proc = spawn(argv, log, self._owner, signal.SIGTERM)
                if proc.wait(120) != 0:
                    raise LocalServerError(f"initdb failed for {self.datadir}: see {self.logfile}")
        finally:
            os.unlink(pw.name)

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster if needed, start it, create the database; wait until it answers."""
        self._check_installed()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        check_ports_free({"PostgreSQL": (self.host, self.port)})
        opts = {"listen_addresses": self.host, "port": str(self.port), "unix_socket_directories": "",
                "shared_preload_libraries": "timescaledb", "timescaledb.telemetry_level": "off",
                "max_connections": "50", **self.settings}
        argv = [str(PG_BIN / "postgres"), "-D", str(self.datadir)]
        for k, v in opts.items():
            argv += ["-c", f"{k}={v}"]
        self.logfile.touch()
        if self._owner is not None:
            os.chown(self.logfile, self._owner.pw_uid, self._owner.pw_gid)
        offset = self.logfile.stat().st_size
        log = open(self.logfile, "ab")
        # SIGINT is PostgreSQL's "fast shutdown": it is what we want if we die unexpectedly.
        self._proc = spawn(argv, log, self._owner, signal.SIGINT)
        log.close()
        self._wait_ready(offset, timeout)
        self._ensure_database()

    def _wait_ready(self, offset: int, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            if self._proc.poll() is not None:
                if "already in use" in text:
                    raise LocalServerError(f"port {self.port} on {self.host} (PostgreSQL) is already in use: "
                                           "stop what listens there or change [database] port")
                last = text.strip().splitlines()[-1:] or ["no output"]
                raise LocalServerError(f"PostgreSQL exited at start: {last[0]} (log: {self.logfile})")
            if "ready to accept connections" in text:
                return
            time.sleep(0.05)
        self.stop()
        raise LocalServerError(f"PostgreSQL did not become ready in {timeout:.0f} s (log: {self.logfile})")

    def _log_since(self, offset: int) -> str:
        with open(self.logfile, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run one SQL command with psql and return its unaligned output."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        r = subprocess.run([str(PG_BIN / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user,
                            "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                           capture_output=True, text=True, env=env, timeout=60, check=False)
        if r.returncode != 0:
            raise LocalServerError(f"psql failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def _ensure_database(self) -> None:
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.dbname}'") != "1":
            self.psql(f'CREATE DATABASE "{self.dbname}"')

    def stop(self) -> None:
        """Fast shutdown (SIGINT): active sessions are ended, data is checkpointed."""
        if self._proc is not None:
            stop(self._proc, signal.SIGINT, timeout=60)
            self._proc = None

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
