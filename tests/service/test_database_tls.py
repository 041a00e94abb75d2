"""TLS to PostgreSQL: `[database] sslmode`, `tls_ca_file` and a client certificate, against a real server with ssl=on.

A test CA (made here with `cryptography`) issues the server a certificate for the name `localhost` only, so the
same server is "the right name" as localhost and "a wrong name" as 127.0.0.1. Both ways heatrec connects are
checked: `connect_pool` (tools, the CLI) and the `Database` supervisor of the running service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.config import ConfigError, DatabaseConfig
from service.localservers import PostgresCluster, free_port
from service.localservers.process import system_user
from service.private_files import write_private
from service.storage.database import Database, DatabaseUnavailable, connect_kwargs, connect_pool, tls_context

# --- certificates -----------------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_ca(cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, cn: str, usage: x509.ObjectIdentifier, dns: list[str] | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


# --- a PostgreSQL with ssl=on -----------------------------------------------------------------------------------


@dataclass
class TlsServer:
    pg: PostgresCluster
    ca_file: Path
    other_ca_file: Path
    client_cert: Path
    client_key: Path

    def config(self, **kw: object) -> DatabaseConfig:
        base: dict[str, object] = {"host": "localhost", "port": self.pg.port, "name": self.pg.dbname,
                                   "user": self.pg.user, "password": self.pg.password, "connect_timeout_s": 5.0}
        return DatabaseConfig.model_validate(base | kw)


@pytest.fixture(scope="module")
def tls_server(server_root: Path) -> Iterator[TlsServer]:
    """A private PostgreSQL with ssl=on, its certificate for `localhost` from a test CA; two TLS-only databases."""
    d = server_root / f"tls-{secrets.token_hex(3)}"
    d.mkdir()
    os.chmod(d, 0o755)
    ca, other = make_ca("heatrec test CA"), make_ca("some other CA")
    server = issue(ca, "heatrec test database", ExtendedKeyUsageOID.SERVER_AUTH, dns=["localhost"])
    client = issue(ca, "heatrec", ExtendedKeyUsageOID.CLIENT_AUTH)  # CN = the role: clientcert=verify-full
    postgres_user = system_user("postgres") if os.geteuid() == 0 else None
    server_owner = (postgres_user.pw_uid, postgres_user.pw_gid) if postgres_user else None
    files = {name: d / name for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem",
                                         "client.key")}
    files["ca.pem"].write_bytes(ca.cert_pem)
    files["other-ca.pem"].write_bytes(other.cert_pem)
    files["server.pem"].write_bytes(server.cert_pem)
    files["client.pem"].write_bytes(client.cert_pem)
    write_private(files["server.key"], _pem_key(server.key), owner=server_owner)  # PostgreSQL insists on 0600
    write_private(files["client.key"], _pem_key(client.key))
    pg = PostgresCluster(d / "pg", free_port(), secrets.token_urlsafe(16),
                         settings={"ssl": "on", "ssl_cert_file": str(files["server.pem"]),
                                   "ssl_key_file": str(files["server.key"]), "ssl_ca_file": str(files["ca.pem"]),
                                   "fsync": "off"})
    pg.start()
    try:
        for db in ("certdb", "tlsonly"):
            pg.create_database(db)
        # certdb: only over TLS and with a client certificate naming the role; tlsonly: only over TLS.
        hba = pg.datadir / "pg_hba.conf"
        hba.write_text("hostssl certdb all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
                       "hostssl certdb all ::1/128 scram-sha-256 clientcert=verify-full\n"
                       "host certdb all all reject\n"
                       "hostnossl tlsonly all all reject\n" + hba.read_text())
        pg.psql("SELECT pg_reload_conf()")
        yield TlsServer(pg, files["ca.pem"], files["other-ca.pem"], files["client.pem"], files["client.key"])
    finally:
        pg.stop()


async def _session(cfg: DatabaseConfig) -> tuple[bool, str, bool]:
    """(TLS in use, the role, the role is superuser) of a connection made by connect_pool."""
    pool = await connect_pool(cfg, min_size=1, max_size=1)
    try:
        row = await pool.fetchrow("SELECT s.ssl, current_user AS role, r.rolsuper FROM pg_stat_ssl s, pg_roles r "
                                  "WHERE s.pid = pg_backend_pid() AND r.rolname = current_user")
        assert row is not None
        return bool(row["ssl"]), str(row["role"]), bool(row["rolsuper"])
    finally:
        await pool.close()


async def test_verify_full_to_the_name_in_the_certificate_connects_encrypted(tls_server: TlsServer) -> None:
    cfg = tls_server.config(sslmode="verify-full", tls_ca_file=str(tls_server.ca_file))
    assert await _session(cfg) == (True, "heatrec", False)  # TLS, as heatrec's own role, which is no superuser


async def test_verify_full_is_the_default_for_a_host_elsewhere(tls_server: TlsServer) -> None:
    """No sslmode written: a name that is not loopback gets verify-full (here: the CA is still the test's)."""
    cfg = DatabaseConfig(host="db.plant.example", tls_ca_file=str(tls_server.ca_file))
    assert cfg.tls_mode == "verify-full"
    ctx = connect_kwargs(cfg)["ssl"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


async def test_verify_full_to_a_name_not_in_the_certificate_fails_clearly(tls_server: TlsServer) -> None:
    cfg = tls_server.config(host="127.0.0.1", sslmode="verify-full", tls_ca_file=str(tls_server.ca_file))
    with pytest.raises(DatabaseUnavailable) as info:
        await connect_pool(cfg)
    message = str(info.value)
    assert "certificate does not verify" in message and "mismatch" in message, message
    assert "127.0.0.1" in message and "[database] host" in message, message
    assert "is it running" not in message  # not mistaken for a server that is away


async def test_the_running_service_connector_uses_tls_and_explains_a_mismatch(tls_server: TlsServer) -> None:
    """The Database supervisor (what `heatrec run` uses) builds its pool from the same settings."""
    good = Database(tls_server.config(sslmode="verify-full", tls_ca_file=str(tls_server.ca_file)))
    task = asyncio.create_task(good.run())
    try:
        await asyncio.wait_for(good.ready.wait(), 30)
        assert await good.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await good.close()

    wrong = Database(tls_server.config(host="127.0.0.1", sslmode="verify-full",
                                       tls_ca_file=str(tls_server.ca_file)), retry_max_s=0.5)
    task = asyncio.create_task(wrong.run())
    try:
        for _ in range(100):
            if wrong.stats.failed_probes:
                break
            await asyncio.sleep(0.1)
        assert not wrong.up
        assert "certificate does not verify" in wrong.stats.last_error, wrong.stats.last_error
        assert "mismatch" in str(wrong.unavailable())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await wrong.close()


async def test_verify_ca_checks_the_issuer_but_not_the_name(tls_server: TlsServer) -> None:
    ok = tls_server.config(host="127.0.0.1", sslmode="verify-ca", tls_ca_file=str(tls_server.ca_file))
    assert (await _session(ok))[0] is True
    other = tls_server.config(host="127.0.0.1", sslmode="verify-ca", tls_ca_file=str(tls_server.other_ca_file))
    with pytest.raises(DatabaseUnavailable, match="certificate does not verify"):
        await connect_pool(other)


async def test_require_encrypts_without_checking_the_certificate(tls_server: TlsServer) -> None:
    assert (await _session(tls_server.config(host="127.0.0.1", sslmode="require")))[0] is True


async def test_loopback_default_is_no_tls(tls_server: TlsServer) -> None:
    """On loopback (the demo, a database on the plant host) the default is disable, even where TLS is offered."""
    cfg = tls_server.config(host="127.0.0.1")
    assert cfg.sslmode is None and cfg.tls_mode == "disable"
    assert (await _session(cfg))[0] is False


async def test_client_certificate_is_presented(tls_server: TlsServer) -> None:
    without = tls_server.config(name="certdb", sslmode="verify-full", tls_ca_file=str(tls_server.ca_file))
    with pytest.raises(DatabaseUnavailable, match="certificate"):
        await connect_pool(without)
    with_cert = tls_server.config(name="certdb", sslmode="verify-full", tls_ca_file=str(tls_server.ca_file),
                                  tls_cert_file=str(tls_server.client_cert), tls_key_file=str(tls_server.client_key))
    assert (await _session(with_cert))[0] is True


async def test_a_tls_only_server_tells_a_plain_client_to_set_sslmode(tls_server: TlsServer) -> None:
    cfg = tls_server.config(host="127.0.0.1", name="tlsonly", sslmode="disable")
    with pytest.raises(DatabaseUnavailable, match="only over TLS: set \\[database\\] sslmode"):
        await connect_pool(cfg)


async def test_require_against_a_server_without_tls_says_so(database: DatabaseConfig) -> None:
    """The session's PostgreSQL has ssl off."""
    cfg = database.model_copy(update={"sslmode": "require"})
    with pytest.raises(DatabaseUnavailable, match="does not offer TLS"):
        await connect_pool(cfg)


# --- unit: the settings and the asyncpg arguments ----------------------------------------------------------------


@pytest.mark.parametrize(("host", "mode"), [("127.0.0.1", "disable"), ("127.8.9.1", "disable"), ("::1", "disable"),
                                            ("localhost", "disable"), ("/run/postgresql", "disable"),
                                            ("timescaledb", "verify-full"), ("db.plant.example", "verify-full"),
                                            ("10.0.0.5", "verify-full"), ("2001:db8::5", "verify-full")])
def test_default_sslmode_by_host(host: str, mode: str) -> None:
    assert DatabaseConfig(host=host).tls_mode == mode


def test_connect_kwargs_carry_address_role_timeouts_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEATREC_DB_PASSWORD", "from-env")
    kw = connect_kwargs(DatabaseConfig(host="127.0.0.1", port=6543, name="plant", user="p1", connect_timeout_s=3))
    assert kw == {"host": "127.0.0.1", "port": 6543, "user": "p1", "database": "plant", "password": "from-env",
                  "timeout": 3, "command_timeout": 60, "ssl": False}
    assert connect_kwargs(DatabaseConfig(sslmode="prefer"))["ssl"] == "prefer"  # asyncpg's own fallback mode
    require = tls_context(DatabaseConfig(host="db.example", sslmode="require"))
    assert isinstance(require, ssl.SSLContext)
    assert require.verify_mode == ssl.CERT_NONE and not require.check_hostname
    assert require.minimum_version >= ssl.TLSVersion.TLSv1_2
    verify_ca = tls_context(DatabaseConfig(host="db.example", sslmode="verify-ca"))  # system CAs
    assert isinstance(verify_ca, ssl.SSLContext)
    assert verify_ca.verify_mode == ssl.CERT_REQUIRED and not verify_ca.check_hostname


def test_tls_files_need_a_mode_that_uses_them() -> None:
    with pytest.raises(ValueError, match="tls_ca_file is set but sslmode is 'disable' \\(the default on a loopback"):
        DatabaseConfig(tls_ca_file="ca.pem")
    with pytest.raises(ValueError, match="sslmode is 'prefer'"):
        DatabaseConfig(host="db.example", sslmode="prefer", tls_ca_file="ca.pem")
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        DatabaseConfig(host="db.example", tls_cert_file="client.pem")
    with pytest.raises(ValueError, match="sslmode"):
        DatabaseConfig(sslmode="verify-everything")  # type: ignore[arg-type]


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[database\] tls_ca_file: cannot load"):
        tls_context(DatabaseConfig(host="db.example", tls_ca_file=str(tmp_path / "missing.pem")))
