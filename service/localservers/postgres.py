"""A private PostgreSQL 15 cluster with TimescaleDB preloaded, bound to loopback.

Roles, as on a plant's server: the cluster's superuser (`admin_user`, `postgres`) is for administration only;
heatrec's role (`user`, `heatrec`) is an ordinary login role that owns its database, and with it the database's
`public` schema, so the migrations run as the owner. The admin creates the TimescaleDB extension in each database.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from service.localservers.errors import LocalServerError
from service.localservers.ports import check_ports_free
from service.localservers.process import chown_tree, spawn, stop, system_user
from service.private_files import write_private

PG_BIN = Path(os.environ.get("HEATREC_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SHARE = Path(os.environ.get("HEATREC_PG_SHARE", "/usr/share/postgresql/15"))
SETUP_HINT = "run 'make setup' (it installs PostgreSQL 15 and builds TimescaleDB)"


def quote_ident(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """An SQL string literal (standard_conforming_strings, PostgreSQL's default: backslashes are plain)."""
    return "'" + text.replace("'", "''") + "'"


class PostgresCluster:
    """Create (first use), start and stop a PostgreSQL cluster for heatrec.

    `user` and `password` are heatrec's role: no superuser, owner of `dbname` and of every database
    `create_database` makes. `admin_user` is the cluster's superuser (initdb's bootstrap role), used by
    `psql` and the bootstrap only; its password is `admin_password` or, unset, one kept beside the data
    directory in `<datadir>.admin-password` (mode 0600, made on first use).

    As root the server runs as the `postgres` system user (PostgreSQL refuses root), so the
    data directory is handed to that user.
    """

    def __init__(self, datadir: Path, port: int, password: str, *, host: str = "127.0.0.1",
                 user: str = "heatrec", dbname: str = "heatrec",
                 settings: dict[str, str] | None = None, admin_user: str = "postgres",
                 admin_password: str | None = None) -> None:
        if admin_user == user:
            raise ValueError(f"the cluster's superuser and heatrec's role must differ (both are {user!r})")
        self.datadir = Path(datadir).absolute()
        self.port, self.host, self.user, self.password, self.dbname = port, host, user, password, dbname
        self.admin_user = admin_user
        self._admin_password = admin_password
        self.settings = settings or {}
        self.logfile = self.datadir.parent / f"{self.datadir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = system_user("postgres") if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """Connection URL (without the password) of the heatrec database."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def admin_password_file(self) -> Path:
        """Where the superuser's password is kept when none is passed."""
        return self.datadir.parent / f"{self.datadir.name}.admin-password"

    @property
    def admin_password(self) -> str:
        """The password of `admin_user` (read from, or first made into, `admin_password_file` when not given)."""
        if self._admin_password is None:
            path = self.admin_password_file
            if path.exists():
                self._admin_password = path.read_text().strip()
            else:
                self._admin_password = secrets.token_urlsafe(24)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_private(path, self._admin_password + "\n")
        return self._admin_password

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
        # mkstemp: created 0600, then given to the server's user, who must read it (initdb runs as that user).
        with tempfile.NamedTemporaryFile("w", delete=False, dir=self.datadir.parent) as pw:
            pw.write(self.admin_password + "\n")
        try:
            if self._owner is not None:
                os.chown(pw.name, self._owner.pw_uid, self._owner.pw_gid)
            argv = [str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", self.admin_user, f"--pwfile={pw.name}",
                    "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale"]
            with open(self.logfile, "ab") as log:
                proc = spawn(argv, log, self._owner, signal.SIGTERM)
                if proc.wait(120) != 0:
                    raise LocalServerError(f"initdb failed for {self.datadir}: see {self.logfile}")
        finally:
            os.unlink(pw.name)

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster if needed, start it, make heatrec's role and database; wait until it answers."""
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
        try:
            self._bootstrap()
        except LocalServerError:
            self.stop()
            raise

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

    def _run_psql(self, args: list[str], db: str, *, script: str | None = None, user: str | None = None,
                  password: str | None = None) -> str:
        # Passwords go through the environment and SQL through stdin, never on a command line (ps shows those).
        env = {**os.environ, "PGPASSWORD": self.admin_password if password is None else password,
               "PGCONNECT_TIMEOUT": "10"}
        r = subprocess.run([str(PG_BIN / "psql"), "-h", self.host, "-p", str(self.port), "-U", user or self.admin_user,
                            "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", *args], input=script,
                           capture_output=True, text=True, env=env, timeout=60, check=False)
        if r.returncode != 0:
            raise LocalServerError(f"psql failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run one SQL command with psql as the cluster's superuser and return its unaligned output."""
        return self._run_psql(["-c", sql], db)

    def psql_script(self, script: str, db: str = "postgres") -> str:
        """Run a psql script (SQL and backslash commands such as \\connect) as the cluster's superuser."""
        return self._run_psql(["-f", "-"], db, script=script)

    def _database_script(self, name: str) -> str:
        """Create database `name` owned by heatrec's role unless it exists; the admin adds TimescaleDB to it."""
        return (f"SELECT format('CREATE DATABASE %I OWNER %I', {quote_literal(name)}, {quote_literal(self.user)}) "
                f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {quote_literal(name)}) \\gexec\n"
                f"\\connect {quote_ident(name)}\n"
                "CREATE EXTENSION IF NOT EXISTS timescaledb;\n")

    def create_database(self, name: str) -> None:
        """A database owned by heatrec's role, with the TimescaleDB extension (which needs the superuser)."""
        self.psql_script(self._database_script(name))

    def _bootstrap(self) -> None:
        """heatrec's role (login, nothing more) with its password, and its database; idempotent."""
        role = quote_literal(self.user)
        script = (f"SELECT format('CREATE ROLE %I', {role}) WHERE NOT EXISTS "
                  f"(SELECT FROM pg_roles WHERE rolname = {role}) \\gexec\n"
                  f"ALTER ROLE {quote_ident(self.user)} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                  f"NOBYPASSRLS PASSWORD {quote_literal(self.password)};\n"
                  + self._database_script(self.dbname))
        try:
            self.psql_script(script)
        except LocalServerError as err:
            if "password authentication failed" in str(err) and self._role_is_superuser():
                raise LocalServerError(
                    f"{self.datadir} was made by an earlier heatrec, in which heatrec's role '{self.user}' is the "
                    "cluster's superuser, and PostgreSQL cannot take that from it: move the directory away or "
                    "delete it (the demo's: make clean-demo) to start a cluster where it is an ordinary owner "
                    "role") from err
            raise

    def _role_is_superuser(self) -> bool:
        """Whether heatrec's role logs in and is a superuser (a cluster made before the admin role existed)."""
        try:
            return self._run_psql(["-c", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"], "postgres",
                                  user=self.user, password=self.password) == "t"
        except LocalServerError:
            return False

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
