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
    token_store: str = Field(default="var/tokens.json",
                             description="the plant's API tokens, hashed (JSON, mode 0600): checked without the "
                                         "database, mirrored to its api_tokens table")
    # The name stays from when it bounded a cache of database lookups, so existing plant files still load.
    token_cache_s: float = Field(default=2.0, ge=0, le=60,
                                 description="how often the running service merges its token store with the "
                                             "database: a token created or revoked directly in the database is "
                                             "seen within this long (0: every second)")

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both for HTTPS, or neither")
        return self

    @property
    def scheme(self) -> str:
        """http or https."""
        return "https" if self.tls_cert_file else "http"
