"""[database] and [storage]: where the samples go, how they are batched, spooled and kept."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from service.schema import StrictModel

# libpq's names and meanings (without `allow`): what TLS the connection needs and what of the server it checks.
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
# libpq's target_session_attrs, all of which asyncpg takes: which of the listed servers a connection may settle on.
TargetSessionAttrs = Literal["any", "read-write", "read-only", "primary", "standby", "prefer-standby"]

_BRACKETED = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")


def parse_host_entry(entry: str, default_port: int) -> tuple[str, int]:
    """One `hosts` entry as (host, port): "db1", "db1:5433", "[2001:db8::1]:5433" or a Unix socket directory.

    An entry without a port takes `default_port` (as in libpq, where one port applies to every host).
    """
    if not entry or any(c.isspace() or c == "," for c in entry):
        raise ValueError(f"{entry!r} is not a server: write one \"host\" or \"host:port\" per entry")
    if entry.startswith("/"):
        return entry, default_port
    if entry.startswith("["):
        m = _BRACKETED.fullmatch(entry)
        if m is None:
            raise ValueError(f"{entry!r}: an IPv6 address is written [address] or [address]:port")
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            raise ValueError(f"{entry!r}: {m.group(1)!r} is not an IPv6 address") from None
        host, port_text = m.group(1), m.group(2)
    elif entry.count(":") > 1:
        raise ValueError(f"{entry!r}: write an IPv6 address in brackets, e.g. \"[{entry}]:5432\"")
    else:
        host, _, port_text = entry.partition(":")
        if not host or (":" in entry and not port_text):
            raise ValueError(f"{entry!r} is not a server: write \"host\" or \"host:port\"")
    if port_text is None or port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{entry!r}: the port must be 1..65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for an address that never leaves this machine: localhost, 127.0.0.0/8, ::1, a Unix socket directory."""
    if host.startswith("/") or host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DatabaseConfig(StrictModel):
    """PostgreSQL + TimescaleDB connection."""

    host: str = "127.0.0.1"
    port: int = Field(default=5432, gt=0, lt=65536)
    hosts: list[str] | None = Field(
        default=None, description="instead of host: servers tried in order, each \"host\" or \"host:port\" "
                                  "(\"[v6]:port\"); an entry without a port takes port")
    target_session_attrs: TargetSessionAttrs | None = Field(
        default=None, description="which server a connection settles on (libpq's values); read-write skips a "
                                  "standby, so a primary/standby pair in hosts follows a promotion")
    name: str = "heatrec"
    user: str = "heatrec"
    password: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    sslmode: SslMode | None = Field(
        default=None, description="TLS: disable, prefer, require, verify-ca or verify-full; unset means verify-full "
                                  "for a host elsewhere and disable on loopback")
    tls_ca_file: str | None = Field(default=None, description="CA bundle (PEM) the server's certificate must chain to "
                                                               "(verify-ca, verify-full; the system CAs if unset)")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM) presented to the server")
    tls_key_file: str | None = Field(default=None, description="private key (PEM) of tls_cert_file")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("hosts is empty: list the servers, e.g. hosts = [\"db1:5432\", \"db2:5432\"], "
                             "or set host instead")
        seen: set[tuple[str, int]] = set()
        for entry in v:
            address = parse_host_entry(entry, 0)  # port 0: "no port of its own", told apart from a written one
            if address in seen:
                raise ValueError(f"{entry!r} is listed twice")
            seen.add(address)
        return v

    @model_validator(mode="after")
    def _one_address_form(self) -> DatabaseConfig:
        if self.hosts is not None and "host" in self.model_fields_set:
            raise ValueError("host and hosts are both set: give one server in host, or the list in hosts "
                             "(e.g. hosts = [\"db1:5432\", \"db2:5432\"]), not both")
        if self.hosts is not None and len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"hosts: {self.hosts!r} names one server twice (an entry without a port takes "
                             f"port = {self.port})")
        return self

    @model_validator(mode="after")
    def _tls_settings(self) -> DatabaseConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both for a client certificate, "
                             "or neither")
        mode = self.tls_mode
        which = f"{mode!r}" + (" (the default on a loopback host)" if self.sslmode is None else "")
        if self.tls_ca_file is not None and mode in ("disable", "prefer"):
            raise ValueError(f"tls_ca_file is set but sslmode is {which}, which does not check the server: "
                             "set sslmode = \"verify-full\" (or \"verify-ca\")")
        if self.tls_cert_file is not None and mode == "disable":
            raise ValueError(f"tls_cert_file is set but sslmode is {which}: set sslmode = \"verify-full\" "
                             "(or \"require\")")
        return self

    @property
    def tls_mode(self) -> SslMode:
        """`sslmode`, or its default: verify-full for a server elsewhere, disable on loopback."""
        if self.sslmode is not None:
            return self.sslmode
        return "disable" if all(is_loopback(h) for h, _ in self.addresses) else "verify-full"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The servers as (host, port), in the order they are tried: `hosts`, or the one `host` and `port`."""
        if self.hosts is None:
            return [(self.host, self.port)]
        return [parse_host_entry(entry, self.port) for entry in self.hosts]

    @property
    def where(self) -> str:
        """The servers as people read them, for messages: "db1:5432" or "db1:5432,db2:5432"."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)

    def dsn(self) -> str:
        """libpq-style URL for asyncpg (password passed separately), every server of `hosts` in it."""
        where = f"{self.host}:{self.port}" if self.hosts is None else self.where
        query = f"?target_session_attrs={self.target_session_attrs}" if self.target_session_attrs else ""
        return f"postgresql://{self.user}@{where}/{self.name}{query}"


class StorageConfig(StrictModel):
    """Batching of the sample writer, its store-and-forward spool, and retention."""

    batch_size: int = Field(default=5000, ge=1, le=100_000, description="samples per COPY batch at most")
    batch_max_age_s: float = Field(default=1.0, gt=0, le=60,
                                   description="a batch is written at the latest this long after its first sample")
    queue_size: int = Field(default=200_000, ge=1000,
                            description="samples held in memory for the writer; beyond it they are dropped, counted")
    max_in_flight: int = Field(default=2, ge=1, le=8,
                               description="batches being written at once (the next is built while one is in flight)")
    write_timeout_s: float = Field(default=10.0, gt=0, le=600,
                                   description="a batch write slower than this counts as failed and goes to the spool")
    retry_max_s: float = Field(default=10.0, gt=0, le=600,
                               description="longest wait between attempts to reach a database that is away")
    spool_dir: str = Field(default="var/spool",
                           description="directory of the store-and-forward spool (the default is relative to the "
                                       "working directory; a path written in the file, to the file)")
    spool_max_bytes: int = Field(default=1 << 30, ge=4096,
                                 description="spool size bound; beyond it the oldest segment is deleted and counted")
    spool_segment_bytes: int = Field(default=16 << 20, ge=1024,
                                     description="size at which the spool starts a new segment file")
    spool_above_queue: float = Field(default=0.5, gt=0, le=1,
                                     description="fraction of queue_size above which batches go to the spool "
                                                 "even while the database answers (it is behind)")
    retention_days: float | None = Field(default=None, gt=0,
                                         description="drop sample chunks older than this; unset keeps everything")
    retention_interval_s: float = Field(default=3600.0, gt=0,
                                        description="how often the retention task runs")
    compress_after_days: float | None = Field(default=7.0, gt=0,
                                              description="compress chunks older than this when the TimescaleDB "
                                                          "edition offers compression; unset never compresses")
