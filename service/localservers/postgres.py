"""A private PostgreSQL 15 cluster with TimescaleDB preloaded, bound to loopback.

Roles, as on a plant's server: the cluster's superuser (`admin_user`, `postgres`) is for administration only;
heatrec's role (`user`, `heatrec`) is an ordinary login role that owns its database, and with it the database's
`public` schema, so the migrations run as the owner. The admin creates the TimescaleDB extension in each database.

A hot standby of a running cluster (`make_standby`) is a physical copy made with pg_basebackup through a
replication role (`replication_user`) and a replication slot, streaming from the primary; the primary can make
it synchronous (`set_synchronous_standby`), and `promote()` turns it into a primary that accepts writes
(docs/FLEET.md, "Central database").
"""

from __future__ import annotations

import os
import re
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


def _conninfo_value(text: str) -> str:
    """A libpq conninfo value, quoted (backslash and quote escaped) so spaces and quotes survive."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_HBA_BEGIN, _HBA_END = "# heatrec networks: begin", "# heatrec networks: end"


class PostgresCluster:
    """Create (first use), start and stop a PostgreSQL cluster for heatrec.

    `user` and `password` are heatrec's role: no superuser, owner of `dbname` and of every database
    `create_database` makes. `admin_user` is the cluster's superuser (initdb's bootstrap role), used by
    `psql` and the bootstrap only; its password is `admin_password` or, unset, one kept beside the data
    directory in `<datadir>.admin-password` (mode 0600, made on first use).

    As root the server runs as the `postgres` system user (PostgreSQL refuses root), so the
    data directory is handed to that user.

    `networks` (CIDRs, e.g. "10.0.0.0/24") are let in by pg_hba.conf besides loopback, which initdb's file
    already lets in: heatrec's and the admin's logins and the replication role's streaming, all with
    scram-sha-256. A cluster made with `standby_of` is a hot standby of that (running) cluster: its first
    start copies it with pg_basebackup instead of initdb, and it stays read-only until `promote()`.
    """

    def __init__(self, datadir: Path, port: int, password: str, *, host: str = "127.0.0.1",
                 user: str = "heatrec", dbname: str = "heatrec",
                 settings: dict[str, str] | None = None, admin_user: str = "postgres",
                 admin_password: str | None = None, networks: tuple[str, ...] = (),
                 standby_of: PostgresCluster | None = None, application_name: str = "standby",
                 replication_user: str = "replicator") -> None:
        if admin_user == user:
            raise ValueError(f"the cluster's superuser and heatrec's role must differ (both are {user!r})")
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", application_name):
            # It names the replication slot too, whose names are lower case, digits and underscores.
            raise ValueError(f"application_name {application_name!r}: lower case letters, digits and underscores")
        self.datadir = Path(datadir).absolute()
        self.port, self.host, self.user, self.password, self.dbname = port, host, user, password, dbname
        self.admin_user = admin_user
        self._admin_password = admin_password
        self.settings = settings or {}
        self.networks = tuple(networks)
        self.standby_of = standby_of
        self.application_name = application_name
        self.replication_user = replication_user
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
            if self.standby_of is not None:
                self._admin_password = self.standby_of.admin_password  # a copy of the primary, roles and all
            else:
                self._admin_password = self._kept_secret(self.admin_password_file)
        return self._admin_password

    @property
    def replication_password(self) -> str:
        """The password of `replication_user`, kept beside the primary's data directory (0600)."""
        if self.standby_of is not None:
            return self.standby_of.replication_password
        return self._kept_secret(self.datadir.parent / f"{self.datadir.name}.replication-password")

    @staticmethod
    def _kept_secret(path: Path) -> str:
        if path.exists():
            return path.read_text().strip()
        secret = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secret + "\n")
        return secret

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
        """Create the cluster if needed, start it, make heatrec's role and database; wait until it answers.

        A standby is copied from its primary on first start instead, and answers read-only; it has nothing to make.
        """
        self._check_installed()
        if not (self.datadir / "PG_VERSION").exists():
            if self.standby_of is not None:
                self._basebackup()
            else:
                self._initdb()
        self._write_hba()
        check_ports_free({"PostgreSQL": (self.host, self.port)})
        # wal_level replica (PostgreSQL's default, said here because a standby depends on it).
        opts = {"listen_addresses": self.host, "port": str(self.port), "unix_socket_directories": "",
                "shared_preload_libraries": "timescaledb", "timescaledb.telemetry_level": "off",
                "max_connections": "50", "wal_level": "replica", **self.settings}
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
        if self.is_standby:
            return
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
            if "ready to accept connections" in text or "ready to accept read-only connections" in text:
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

    def stop(self, *, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT): active sessions are ended, data is checkpointed.

        immediate: PostgreSQL's immediate mode (SIGQUIT), as near a crash as a server gets: no checkpoint, every
        session cut, the next start recovers from the WAL.
        """
        if self._proc is not None:
            stop(self._proc, signal.SIGQUIT if immediate else signal.SIGINT, timeout=60)
            self._proc = None

    @property
    def is_standby(self) -> bool:
        """True while the cluster is a standby (made with `standby_of` and not promoted)."""
        return self.standby_of is not None

    def _write_hba(self) -> None:
        """`networks` into pg_hba.conf, between markers (rewritten on each start; reloaded by the start)."""
        hba = self.datadir / "pg_hba.conf"
        text = original = hba.read_text()
        if _HBA_BEGIN in text:
            text = text[:text.index(_HBA_BEGIN)] + text[text.index(_HBA_END) + len(_HBA_END):].lstrip("\n")
        if self.networks:
            lines = [_HBA_BEGIN]
            for net in self.networks:
                lines += [f"host all all {net} scram-sha-256",
                          f"host replication {quote_ident(self.replication_user)} {net} scram-sha-256"]
            text = text.rstrip("\n") + "\n" + "\n".join([*lines, _HBA_END]) + "\n"
        if text != original:
            hba.write_text(text)  # in place: the file keeps its owner (the server's user)

    def make_standby(self, datadir: Path, port: int, *, host: str | None = None, application_name: str = "standby",
                     networks: tuple[str, ...] | None = None) -> PostgresCluster:
        """A hot standby of this running cluster, not started yet (its `start()` makes the copy).

        Makes the replication role (login, REPLICATION, nothing more) with its password, and drops an inactive
        slot of the same name left by an earlier standby. The standby listens on `host` (this cluster's by
        default); a standby on another address needs that address among this cluster's `networks`.
        """
        if self.is_standby:
            raise LocalServerError("a standby of a standby (cascading replication) is not supported here")
        if not self.running:
            raise LocalServerError("the primary must be running to make a standby of it")
        role, name = self.replication_user, application_name
        self.psql_script(
            f"SELECT format('CREATE ROLE %I', {quote_literal(role)}) WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = {quote_literal(role)}) \\gexec\n"
            f"ALTER ROLE {quote_ident(role)} WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE "
            f"PASSWORD {quote_literal(self.replication_password)};\n"
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = {quote_literal(name)} AND NOT active;\n")
        return PostgresCluster(datadir, port, self.password, host=host or self.host, user=self.user,
                               dbname=self.dbname, settings=self.settings, admin_user=self.admin_user,
                               networks=self.networks if networks is None else networks, standby_of=self,
                               application_name=name, replication_user=role)

    def _basebackup(self) -> None:
        """Copy the primary with pg_basebackup into the (new) data directory, set up to stream from it."""
        primary = self.standby_of
        assert primary is not None
        self.datadir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.datadir, 0o700)
        if any(self.datadir.iterdir()):
            raise LocalServerError(f"{self.datadir} is not empty: a standby is copied into an empty directory")
        if self._owner is not None:
            chown_tree(self.datadir, self._owner)
        # -R: standby.signal and primary_conninfo; -C -S: a slot that keeps the WAL the standby has not had yet.
        argv = [str(PG_BIN / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", self.replication_user,
                "-D", str(self.datadir), "-X", "stream", "-R", "-C", "-S", self.application_name,
                "--checkpoint=fast", "--no-password"]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env.update(PGPASSWORD=self.replication_password, PGCONNECT_TIMEOUT="10")
        as_other = self._owner is not None
        with open(self.logfile, "ab") as log:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                               timeout=300, check=False, user=self._owner.pw_uid if self._owner else None,
                               group=self._owner.pw_gid if self._owner else None,
                               extra_groups=[] if as_other else None)
        if r.returncode != 0:
            raise LocalServerError(f"pg_basebackup from {primary.host}:{primary.port} failed: see {self.logfile}")
        # Later lines of postgresql.auto.conf win: the primary's address with this standby's name, by which the
        # primary's synchronous_standby_names and pg_stat_replication know it.
        conninfo = " ".join(f"{k}={_conninfo_value(v)}" for k, v in (
            ("host", primary.host), ("port", str(primary.port)), ("user", self.replication_user),
            ("password", self.replication_password), ("application_name", self.application_name)))
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = {quote_literal(conninfo)}\n")

    def replication_state(self, application_name: str) -> str | None:
        """On the primary: the standby's sync_state (`sync`, `async`, `potential`) while it streams, else None."""
        out = self.psql("SELECT sync_state FROM pg_stat_replication "
                        f"WHERE application_name = {quote_literal(application_name)} AND state = 'streaming'")
        return out or None

    def set_synchronous_standby(self, application_name: str | None, timeout: float = 30.0) -> None:
        """On the primary: commit only once that standby has the WAL on disk (None: asynchronous again).

        synchronous_standby_names, with synchronous_commit on (PostgreSQL's default). Waits until the standby
        streams as `sync`: from then on a transaction that returned committed is on both servers.
        """
        if application_name is None:
            self.psql_script("ALTER SYSTEM RESET synchronous_standby_names;\nSELECT pg_reload_conf();\n")
            return
        self.psql_script(f"ALTER SYSTEM SET synchronous_standby_names = {quote_literal(application_name)};\n"
                         "ALTER SYSTEM SET synchronous_commit = 'on';\nSELECT pg_reload_conf();\n")
        deadline = time.monotonic() + timeout
        while self.replication_state(application_name) != "sync":
            # A little WAL: the walsender takes up the new setting when the standby next replies, which an idle
            # standby does only every wal_receiver_status_interval (10 s).
            self.psql("SELECT pg_logical_emit_message(false, 'heatrec', 'synchronous standby')")
            if time.monotonic() > deadline:
                raise LocalServerError(f"standby {application_name!r} is not streaming synchronously after "
                                       f"{timeout:.0f} s (log: {self.logfile})")
            time.sleep(0.05)

    def wait_streaming(self, standby: PostgresCluster, timeout: float = 30.0) -> None:
        """On the primary: wait until `standby` streams from it."""
        deadline = time.monotonic() + timeout
        while self.replication_state(standby.application_name) is None:
            if time.monotonic() > deadline or not standby.running:
                raise LocalServerError(f"standby {standby.application_name!r} does not stream from "
                                       f"{self.host}:{self.port} (log: {standby.logfile})")
            time.sleep(0.05)

    def promote(self, timeout: float = 60.0) -> None:
        """Turn this standby into a primary (pg_promote) and wait until it accepts writes."""
        if not self.is_standby:
            raise LocalServerError(f"{self.datadir} is not a standby: nothing to promote")
        self.psql(f"SELECT pg_promote(true, {max(1, int(timeout))})")
        deadline = time.monotonic() + timeout
        while self.psql("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool") != "f":
            if time.monotonic() > deadline:
                raise LocalServerError(f"{self.datadir} was promoted but does not accept writes after "
                                       f"{timeout:.0f} s (log: {self.logfile})")
            time.sleep(0.05)
        self._admin_password = self.admin_password  # the primary's, as the copy has it, before it lets go
        self.standby_of = None

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
