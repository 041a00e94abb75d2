"""[scada]: the SCADA-facing OPC UA server, its security policies and users."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from service.schema import StrictModel

ScadaPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
                     "Aes128Sha256RsaOaep_Sign", "Aes128Sha256RsaOaep_SignAndEncrypt",
                     "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt"]


class ScadaUser(StrictModel):
    """A user of the SCADA OPC UA server."""

    username: str = Field(min_length=1)
    password: str = Field(description="use ${VAR} to keep it out of the file; an empty password disables the user")
    role: Literal["viewer", "operator", "admin"] = "viewer"


class ScadaConfig(StrictModel):
    """The OPC UA server SCADA reads the plant from."""

    endpoint: str = "opc.tcp://127.0.0.1:4840"
    security_policies: list[ScadaPolicy] = Field(
        default=["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
                 "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt"], min_length=1,
        description="offered endpoints; leave out None to require signing/encryption")
    allow_anonymous: bool = Field(default=True, description="anonymous sessions may read (never write)")
    certificate_dir: str = Field(default="var/pki/scada", description="server certificate and key, made on first use")
    users: list[ScadaUser] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme != "opc.tcp" or not u.hostname or u.port is None:
            raise ValueError(f"'{v}' is not an OPC UA endpoint like opc.tcp://host:port")
        return v
