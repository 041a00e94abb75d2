"""[api]: where the HTTP API listens, and its TLS."""

from __future__ import annotations

from pydantic import Field, model_validator

from service.schema import StrictModel


class ApiConfig(StrictModel):
    """HTTP API listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    tls_cert_file: str | None = Field(default=None, description="PEM certificate (chain): serve HTTPS")
    tls_key_file: str | None = Field(default=None, description="PEM private key of tls_cert_file")
    token_cache_s: float = Field(default=2.0, ge=0, le=60,
                                 description="a valid token is trusted this long without asking the database; "
                                             "a revoked token works at most this long (0: check every request)")

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both for HTTPS, or neither")
        return self

    @property
    def scheme(self) -> str:
        """http or https."""
        return "https" if self.tls_cert_file else "http"
