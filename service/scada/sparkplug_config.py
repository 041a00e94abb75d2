"""[sparkplug]: heatrec as a Sparkplug B 3.0 edge node (brokers, identity, primary host, points, commands)."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from service.schema import ID_PATTERN, POINT_REF_PATTERN, StrictModel

__all__ = ["SparkplugConfig", "SparkplugPoint"]

# Sparkplug ids are topic levels: no '/', '+', '#' (spec 3.0, topic namespace elements).
_SPB_ID = r"^[A-Za-z0-9_.\-]+$"


def _broker_url(v: str) -> str:
    """A broker URL: mqtt:// or mqtts://, a host, maybe a port, nothing else (credentials have their own keys)."""
    u = urlsplit(v)
    try:
        u.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"'{v}' has an invalid port") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError(f"'{v}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
    if u.username is not None or u.password is not None:
        # Health and /metrics show the URL: a password in it would be shown too.
        raise ValueError(f"'{u.scheme}://…@{u.hostname}': put credentials in username and password, not in the URL")
    return v


def _server_key(v: str) -> tuple[str, int]:
    """Host and port of a broker URL, for telling two spellings of one server apart."""
    u = urlsplit(v)
    return (u.hostname or "").lower(), u.port or (8883 if u.scheme == "mqtts" else 1883)


BrokerUrl = Annotated[str, AfterValidator(_broker_url)]


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

    url: BrokerUrl | None = Field(default=None, description="mqtt://host[:port] or mqtts://host[:port] of the "
                                                            "broker (or urls, for several)")
    urls: list[BrokerUrl] | None = Field(default=None, min_length=1,
                                         description="several brokers: one at a time, in this order, moving to the "
                                                     "next (wrapping) when one fails or a host says Next Server")
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
    host_wait_s: float = Field(default=30.0, gt=0, le=3600,
                               description="with several urls and a primary_host_id: how long the node waits on a "
                                           "server for the host's online STATE before it moves to the next")

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        for d in v or []:
            if not re.match(ID_PATTERN, d):
                raise ValueError(f"'{d}' is not a device id")
        return v

    @model_validator(mode="after")
    def _checks(self) -> SparkplugConfig:
        if self.url is not None and self.urls is not None:
            raise ValueError("url, urls: set url (one broker) or urls (several), not both")
        if self.url is None and self.urls is None:
            raise ValueError("url: required key is missing (or urls, a list of brokers)")
        first: dict[tuple[str, int], int] = {}
        for i, u in enumerate(self.urls or []):
            j = first.setdefault(_server_key(u), i)
            if j != i:
                raise ValueError(f"urls[{i}]: '{u}' is the same server as urls[{j}]")
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

    @property
    def servers(self) -> tuple[str, ...]:
        """The brokers in walking order: `urls`, or the one `url`."""
        if self.urls is not None:
            return tuple(self.urls)
        assert self.url is not None  # the model check: one of the two is set
        return (self.url,)

    def point_settings(self, point: str) -> SparkplugPoint:
        """The settings of one point (the defaults when it is not listed)."""
        for p in self.points:
            if p.point == point:
                return p
        return SparkplugPoint(point=point)
