"""[scada]: the SCADA-facing OPC UA server, its security policies, users, login throttling and trust list."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from service.schema import StrictModel

ScadaPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
                     "Aes128Sha256RsaOaep_Sign", "Aes128Sha256RsaOaep_SignAndEncrypt",
                     "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt"]


class ScadaUser(StrictModel):
    """A user of the SCADA OPC UA server."""

    username: str = Field(min_length=1)
    password: str = Field(description="use ${VAR} to keep it out of the file; an empty password disables the user")
    role: Literal["viewer", "operator", "admin"] = "viewer"


class ScadaLogin(StrictModel):
    """How the server answers failed user-name logins: a growing delay, then a lockout."""

    backoff_initial_s: float = Field(default=0.5, ge=0, le=10,
                                     description="delay of the answer to the first failed login; doubles with "
                                                 "each failure in the window")
    backoff_max_s: float = Field(default=3.0, ge=0, le=30,
                                 description="cap of that delay (keep it below the clients' request timeout)")
    lockout_failures: int = Field(default=5, ge=1, le=1000,
                                  description="failed logins of one user name within lockout_window_s that lock it")
    lockout_failures_per_address: int = Field(default=20, ge=1, le=10_000,
                                              description="failed logins from one client address within "
                                                          "lockout_window_s that lock the address")
    lockout_window_s: float = Field(default=900.0, gt=0, le=86_400)
    lockout_s: float = Field(default=900.0, gt=0, le=86_400,
                             description="how long a lockout lasts; every login of the user (or from the "
                                         "address) is refused meanwhile, a correct password too")

    @model_validator(mode="after")
    def _order(self) -> ScadaLogin:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_initial_s "
                             f"({self.backoff_initial_s})")
        return self


class ScadaConfig(StrictModel):
    """The OPC UA server SCADA reads the plant from."""

    endpoint: str = "opc.tcp://127.0.0.1:4840"
    security_policies: list[ScadaPolicy] = Field(
        default=["Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
                 "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt"], min_length=1,
        description="offered endpoints; add None for anonymous read-only browsing without security "
                    "(no user-name logins and no writes there)")
    allow_anonymous: bool = Field(default=True, description="anonymous sessions may read (never write)")
    certificate_dir: str = Field(default="var/pki/scada", description="server certificate and key, made on first use")
    trusted_certificates_dir: str | None = Field(
        default=None, description="client certificates (or their CAs) allowed to open a signed channel; "
                                  "default <certificate_dir>/trusted")
    rejected_certificates_dir: str | None = Field(
        default=None, description="where refused client certificates are written for an operator to review; "
                                  "default <certificate_dir>/rejected")
    login: ScadaLogin = Field(default_factory=ScadaLogin)
    users: list[ScadaUser] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme != "opc.tcp" or not u.hostname or u.port is None:
            raise ValueError(f"'{v}' is not an OPC UA endpoint like opc.tcp://host:port")
        return v
