"""[sparkplug]: heatrec as a Sparkplug B 3.0 edge node (broker, identity, primary host, points, commands)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from service.schema import ID_PATTERN, POINT_REF_PATTERN, StrictModel

__all__ = ["SparkplugConfig", "SparkplugPoint"]

# Sparkplug ids are topic levels: no '/', '+', '#' (spec 3.0, topic namespace elements).
_SPB_ID = r"^[A-Za-z0-9_.\-]+$"


class SparkplugPoint(StrictModel):
    """What differs from the defaults for one point: its deadband, whether it is published, whether it takes DCMDs."""

    point: str = Field(pattern=POINT_REF_PATTERN, description="full point id, device.point")
    deadband: float | None = Field(default=None, ge=0, description="report by exception only beyond this change "
                                                                    "(default: [sparkplug] deadband)")
    publish: bool = Field(default=True, description="false leaves the point out of the births and data")
    commandable: bool = Field(default=False, description="a DCMD on this point becomes an operator write request "
                                                          "(the point must be writable)")


class SparkplugConfig(StrictModel):
    """The edge node: one Sparkplug device per heatrec device, one metric per point."""

    url: str = Field(description="mqtt://host[:port] or mqtts://host[:port] of the broker")
    username: str | None = None
    password: str | None = Field(default=None, description="use ${VAR} to keep it out of the file")
    client_id: str | None = Field(default=None, description="MQTT client id (default heatrec-GROUP-NODE)")
    tls_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// (system CAs if unset)")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM) for mqtts://")
    tls_key_file: str | None = Field(default=None, description="private key (PEM) of tls_cert_file")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive; the broker publishes NDEATH "
                                                                     "about 1.5 times this after a silent loss")
    group_id: str = Field(pattern=_SPB_ID, description="Sparkplug group id")
    edge_node_id: str = Field(pattern=_SPB_ID, description="Sparkplug edge node id")
    primary_host_id: str | None = Field(default=None, pattern=_SPB_ID,
                                        description="births wait for spBv1.0/STATE/ID online; while it is offline "
                                                    "samples are spooled and published later as historical")
    devices: list[str] | None = Field(default=None, description="heatrec device ids to publish (default: all)")
    deadband: float = Field(default=0.0, ge=0, description="default deadband of every point (0: any change)")
    points: list[SparkplugPoint] = Field(default_factory=list)
    principal: str = Field(default="sparkplug", min_length=1,
                           description="who a DCMD's write request is from, in the audit trail")
    command_hold_s: float = Field(default=300.0, gt=0, le=86_400,
                                  description="a commanded point stays the operator's this long (arbiter hold)")
    spool_dir: str = Field(default="var/sparkplug", description="durable spool of samples while the host or "
                                                               "broker is away, and the bdSeq counter")
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, description="cap of the reconnect backoff")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        try:
            u.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"'{v}' has an invalid port") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.path not in ("", "/"):
            raise ValueError(f"'{v}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        for d in v or []:
            if not re.match(ID_PATTERN, d):
                raise ValueError(f"'{d}' is not a device id")
        return v

    @model_validator(mode="after")
    def _checks(self) -> SparkplugConfig:
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file")
        seen: set[str] = set()
        for i, p in enumerate(self.points):
            if p.point in seen:
                raise ValueError(f"points[{i}].point: '{p.point}' appears twice")
            seen.add(p.point)
            # A command is a write to the plant: never from an anonymous connection (issue 17).
            if p.commandable and not self.username:
                raise ValueError(f"points[{i}].commandable: commands need broker credentials (set username "
                                 "and password)")
        return self

    def point_settings(self, point: str) -> SparkplugPoint:
        """The settings of one point (the defaults when it is not listed)."""
        for p in self.points:
            if p.point == point:
                return p
        return SparkplugPoint(point=point)
