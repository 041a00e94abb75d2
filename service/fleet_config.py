"""[uplink] of a site's plant file, and central.toml of `heatrec central`: the fleet's two ends (docs/FLEET.md)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from service.schema import StrictModel
from service.storage.config import DatabaseConfig

__all__ = ["SITE_PATTERN", "CentralApiConfig", "CentralBrokerConfig", "CentralConfig", "CentralIngestConfig",
           "CentralSite", "UplinkConfig"]

# A site id is one MQTT topic level (heatrec/v1/<site>/...): lower case, digits, '_' and '-'; no '+', '#', '/'.
SITE_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


def _broker_url(v: str) -> str:
    u = urlsplit(v)
    try:
        u.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"'{v}' has an invalid port") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.path not in ("", "/"):
        raise ValueError(f"'{v}' is not a broker URL like mqtt://host:1883 or mqtts://host:8883")
    return v


class _Broker(StrictModel):
    """What both ends need of the central broker: where it is, who we are, TLS."""

    url: str = Field(description="mqtt://host[:port] or mqtts://host[:port] of the central broker (MQTT 5)")
    username: str | None = Field(default=None, description="this end's broker identity")
    password: str | None = Field(default=None, description="use ${VAR} to keep it out of the file")
    client_id: str | None = Field(default=None, description="MQTT client id (default: derived from the site or "
                                                            "instance)")
    tls_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// (system CAs if unset)")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM) for mqtts://")
    tls_key_file: str | None = Field(default=None, description="private key (PEM) of tls_cert_file")
    keepalive_s: int = Field(default=15, ge=5, le=3600, description="MQTT keep-alive; a silent link is declared "
                                                                     "lost about 1.5 times this")
    reconnect_max_s: float = Field(default=10.0, gt=0, le=3600, description="cap of the reconnect backoff")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _broker_url(v)

    @model_validator(mode="after")
    def _tls(self) -> _Broker:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both for a client certificate, "
                             "or neither")
        return self


class UplinkConfig(_Broker):
    """A site's uplink: its samples in acknowledged batches from a durable outbox to the central store."""

    site: str = Field(pattern=SITE_PATTERN, description="this site's id, the topic level heatrec/v1/<site>/ "
                                                         "(lower case, digits, '_' and '-')")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="samples per batch at most")
    batch_max_age_s: float = Field(default=1.0, gt=0, le=60,
                                   description="a batch is closed at the latest this long after its first sample")
    queue_size: int = Field(default=200_000, ge=1000,
                            description="samples held in memory for the uplink; beyond it they are dropped, counted")
    outbox_dir: str = Field(default="var/uplink", description="durable outbox of batches not yet acknowledged by "
                                                             "the centre (relative: to the config file)")
    outbox_max_bytes: int = Field(default=1 << 30, ge=64 * 1024,
                                  description="outbox size bound; beyond it the oldest segment is deleted, counted")
    outbox_segment_bytes: int = Field(default=4 << 20, ge=4096,
                                      description="size at which the outbox starts a new segment file")
    max_in_flight: int = Field(default=16, ge=1, le=1000,
                               description="batches published but not yet acknowledged as committed, at most")
    ack_timeout_s: float = Field(default=10.0, gt=0, le=3600,
                                 description="without an acknowledgement this long, unacknowledged batches are "
                                             "published again from the first one")
    status_interval_s: float = Field(default=5.0, gt=0, le=3600,
                                     description="how often the site publishes its status (backlog, watermark)")


class CentralBrokerConfig(_Broker):
    """The centre's broker connection and the shared subscription its instances split the sites by."""

    group: str = Field(default="heatrec-central", pattern=r"^[A-Za-z0-9_.-]+$",
                       description="MQTT 5 shared-subscription group: instances in one group share the batches")


class CentralApiConfig(StrictModel):
    """The centre's HTTP endpoint: fleet API, console and Prometheus metrics, behind the site's bearer tokens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, lt=65536, description="0: any free port (tests)")
    # The same keys, and the same meaning, as a plant's [api] (service/api/config.py).
    token_store: str = Field(default="var/central-tokens.json",
                             description="the centre's API tokens, hashed (JSON, mode 0600): checked without the "
                                         "database, mirrored to the central database's api_tokens table")
    token_cache_s: float = Field(default=2.0, ge=0, le=60,
                                 description="how often the token store is merged with the central database")
    monitoring_networks: list[str] = Field(default_factory=list,
                                           description="clients that read /metrics and the detailed health "
                                                       "without a token")
    max_query_span_days: float = Field(default=366.0, gt=0, le=36_600,
                                       description="longest start..end range of history and KPIs")

    @field_validator("monitoring_networks")
    @classmethod
    def _monitoring(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"monitoring_networks: {n!r} is not an IP address or network such as 10.0.0.5 "
                                 "or 10.0.0.0/24") from None
        return v


class CentralIngestConfig(StrictModel):
    """How the centre writes batches."""

    max_in_flight: int = Field(default=4, ge=1, le=64, description="batches being written at once (one "
                                                                    "database connection each)")
    link_timeout_s: float = Field(default=30.0, gt=0, le=86_400,
                                  description="a site whose last status is older than this shows link 'stale'")
    refresh_s: float = Field(default=1.0, gt=0, le=600,
                             description="how often the per-site figures (API, metrics) are read from the database")


class CentralSite(StrictModel):
    """A site the centre expects."""

    id: str = Field(pattern=SITE_PATTERN, description="the site's id, as its [uplink] site")
    name: str = Field(default="", description="what people call it")
    # What the centre's KPIs count (service/fleet/kpis.py): the site's register points, as its [accounting] names
    # them; the centre has no [accounting] of its own, so it is told which of a site's points they are.
    heat_meter_points: list[str] = Field(default_factory=list,
                                         description="the site's delivered-heat registers (GJ, counters), summed")
    heat_pump_points: list[str] = Field(default_factory=list,
                                        description="the site's heat-pump electricity registers (kWh, counters)")
    it_energy_point: str | None = Field(default=None, description="the site's IT electricity register (kWh)")
    facility_energy_point: str | None = Field(default=None,
                                              description="the site's whole-facility electricity register (kWh)")
    timezone: str = Field(default="UTC", description="the site's time zone (IANA), for the CO2 factor's year")
    homes_mwh_per_home: float = Field(default=14.0, gt=0, description="heat use of one home per year (MWh)")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{v}' is not an IANA time zone such as Europe/Copenhagen") from None
        return v


class CentralConfig(StrictModel):
    """central.toml: the central store of a fleet."""

    env_file: str | None = Field(default=None, description="KEY=VALUE lines that ${VAR} references may use")
    instance: str = Field(default="central", pattern=r"^[A-Za-z0-9_.-]+$",
                          description="this instance's name (client id, logs); unique among the instances")
    database: DatabaseConfig = DatabaseConfig()
    broker: CentralBrokerConfig
    api: CentralApiConfig = CentralApiConfig()
    ingest: CentralIngestConfig = CentralIngestConfig()
    sites: list[CentralSite] | None = Field(default=None, description="the sites taken in; unset: any site the "
                                                                      "broker lets publish")

    @model_validator(mode="after")
    def _unique(self) -> CentralConfig:
        seen: set[str] = set()
        for i, s in enumerate(self.sites or []):
            if s.id in seen:
                raise ValueError(f"sites[{i}].id: site '{s.id}' appears twice")
            seen.add(s.id)
        return self
