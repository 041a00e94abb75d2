"""[api]: where the HTTP API listens, its TLS, and the bounds that keep a flood of requests off the plant."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from service.schema import StrictModel


def _networks(values: list[str], key: str) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{key}: {v!r} is not an IP address or network such as 10.0.0.5 or 10.0.0.0/24") \
                from None
    return values


class ApiConfig(StrictModel):
    """HTTP API listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    tls_cert_file: str | None = Field(default=None, description="PEM certificate (chain): serve HTTPS")
    tls_key_file: str | None = Field(default=None, description="PEM private key of tls_cert_file")
    token_store: str = Field(default="var/tokens.json",
                             description="the plant's API tokens, hashed (JSON, mode 0600): checked without the "
                                         "database, mirrored to its api_tokens table")
    # The name stays from when it bounded a cache of database lookups, so existing plant files still load.
    token_cache_s: float = Field(default=2.0, ge=0, le=60,
                                 description="how often the running service merges its token store with the "
                                             "database: a token created or revoked directly in the database is "
                                             "seen within this long (0: every second)")
    # --- what one client, or many, may cost the process (docs/CONFIG.md "[api]") -----------------------------
    max_body_bytes: int = Field(default=65_536, ge=1024, le=64 * 1024 * 1024,
                                description="largest request body; larger ones get 413 before they are read")
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1024 * 1024,
                                  description="largest request line and headers together; larger: 400")
    limit_concurrency: int = Field(default=100, ge=2, le=100_000,
                                   description="open connections and requests at once; beyond it: 503")
    header_timeout_s: float = Field(default=10.0, gt=0, le=300,
                                    description="a request's line and headers must be complete this long after "
                                                "the connection is ready for them, or it is closed")
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600,
                                  description="a request's body must be complete this long after its headers")
    keep_alive_s: int = Field(default=5, ge=1, le=300,
                              description="an idle kept-alive connection is closed after this long")
    trusted_proxies: list[str] = Field(default_factory=list,
                                       description="reverse proxies whose X-Forwarded-For/-Proto are believed; "
                                                   "none: the headers are ignored")
    monitoring_networks: list[str] = Field(default_factory=list,
                                           description="clients that read /metrics and the detailed health "
                                                       "without a token")
    max_query_span_days: float = Field(default=366.0, gt=0, le=36_600,
                                       description="longest start..end range of history, energy and KPIs")
    stream_recheck_s: float = Field(default=5.0, gt=0, le=300,
                                    description="how often an open event stream checks that its token is valid")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        return _networks(v, "trusted_proxies")

    @field_validator("monitoring_networks")
    @classmethod
    def _monitoring(cls, v: list[str]) -> list[str]:
        return _networks(v, "monitoring_networks")

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both for HTTPS, or neither")
        return self

    @property
    def scheme(self) -> str:
        """http or https."""
        return "https" if self.tls_cert_file else "http"
