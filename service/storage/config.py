"""[database] and [storage]: where the samples go, how they are batched, spooled and kept."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from service.schema import StrictModel

# libpq's names and meanings (without `allow`): what TLS the connection needs and what of the server it checks.
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]


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
        return "disable" if is_loopback(self.host) else "verify-full"

    def dsn(self) -> str:
        """libpq-style URL for asyncpg (password passed separately)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"


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
