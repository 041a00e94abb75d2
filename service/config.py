"""Typed plant configuration: TOML validated by pydantic, errors that name the field."""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

ID_PATTERN = r"^[a-z][a-z0-9_]*$"
# The dated rule sets heatrec ships (Danish surplus-heat rules); a plant may point rules_dir elsewhere.
PACKAGED_RULES_DIR = Path(__file__).resolve().parent / "accounting" / "rulesets"
# Keys holding a path: a relative one written in a config file means relative to that file's directory, so a
# plant's files travel with it and do not depend on where the service is started (systemd, containers).
PATH_KEYS = frozenset({"rules_dir", "spool_dir", "certificate_dir", "tls_ca_file", "tls_cert_file", "tls_key_file",
                       "env_file", "state_file"})
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_JSON_PATH = re.compile(r"^\$(\.[A-Za-z_][A-Za-z0-9_\-]*|\[\d+\])+$")

ModbusType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                     "float32", "float64", "string"]
REGISTER_COUNT: dict[str, int] = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
                                  "int64": 4, "uint64": 4, "float32": 2, "float64": 4}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    # Strict: a TOML string is never read as a number or a bool ("false" would be True).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PointBase(_Strict):
    """Keys common to every point, whatever its protocol."""

    id: str = Field(pattern=ID_PATTERN, description="point id, unique within its device")
    unit: str = Field(default="", description="engineering unit, e.g. degC, kW, m3/h, GJ")
    kind: Literal["measurement", "setpoint", "status", "counter"] = "measurement"
    writable: bool = False
    min: float | None = None
    max: float | None = None
    max_rate: float | None = Field(default=None, gt=0, description="largest change per second a write may make")
    stale_after_s: float | None = Field(default=None, gt=0)
    description: str = ""

    unbounded_writes: bool = Field(default=False, description="explicit opt-out: a writable point without min/max "
                                                               "(only where the device bounds the value itself)")

    @model_validator(mode="after")
    def _envelope(self) -> PointBase:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.writable and (self.min is None or self.max is None) and not self.unbounded_writes:
            # A write without an envelope sends whatever it is given (200 °C to a heat pump's setpoint).
            raise ValueError(f"writable point '{self.id}' needs min and max (its write envelope), or "
                             "unbounded_writes = true if the device bounds the value itself")
        return self


class OpcUaPoint(PointBase):
    """A point read from an OPC UA node, named by NodeId or by browse path."""

    node: str | None = Field(default=None, min_length=1,
                             description="NodeId string, e.g. ns=2;s=cdu1.supply_temperature")
    browse_path: str | None = Field(default=None, min_length=1,
                                    description="path of index:BrowseName elements from the Root node, "
                                                "e.g. 0:Objects/2:Plant/2:cdu1/2:supply_temperature")

    @field_validator("browse_path")
    @classmethod
    def _browse_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        if info.data.get("node") is not None:
            raise ValueError("give either node or browse_path, not both")
        for element in v.split("/"):
            index, sep, name = element.partition(":")
            if not sep or not index.isdigit() or not name:
                raise ValueError(f"'{v}': element '{element}' is not index:BrowseName, e.g. 2:cdu1")
        return v

    @model_validator(mode="after")
    def _addressed(self) -> OpcUaPoint:
        if self.node is None and self.browse_path is None:
            raise ValueError("a point needs node or browse_path")
        return self

    @property
    def address(self) -> str:
        """The node id or browse path, whichever is configured, for messages."""
        return self.node or self.browse_path or ""


class ModbusPoint(PointBase):
    """A point read from Modbus registers or bits."""

    address: int = Field(ge=0, le=65535, description="0-based register or bit address")
    function: Literal["holding", "input", "coil", "discrete"] = "holding"
    type: ModbusType = "int16"
    length: int = Field(default=0, ge=0, le=123, description="registers, for type string only")
    scale: float = 1.0
    offset: float = 0.0
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        bits = self.function in ("coil", "discrete")
        if bits and self.type != "bool":
            raise ValueError(f"function '{self.function}' holds single bits: type must be 'bool'")
        if self.type == "string" and self.length == 0:
            raise ValueError("type 'string' needs 'length' (number of registers)")
        if self.writable and self.function in ("input", "discrete"):
            raise ValueError(f"function '{self.function}' is read-only: it cannot be writable")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self

    @property
    def register_count(self) -> int:
        """How many 16-bit registers (or bits) the point occupies."""
        if self.function in ("coil", "discrete"):
            return 1
        return self.length if self.type == "string" else REGISTER_COUNT[self.type]


class MqttPoint(PointBase):
    """A point taken from an MQTT topic: JSON with a path, or a plain numeric payload."""

    topic: str = Field(min_length=1, description="topic filter; + and # wildcards, {device} and {point} levels")
    topic_key: str | None = Field(default=None, min_length=1,
                                  description="text of the {point} level naming this point (default: its id)")
    json_path: str | None = Field(default=None, description="$.a.b into a JSON payload; omit for plain numbers")
    timestamp_path: str | None = Field(default=None, description="$.path of an ISO 8601 or epoch source time")

    @field_validator("json_path", "timestamp_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not _JSON_PATH.match(v):
            raise ValueError(f"'{v}' is not a JSON path like $.a.b or $.a[0]")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        levels = v.split("/")
        for i, level in enumerate(levels):
            if level in ("+", "{point}", "{device}"):
                continue
            if level == "#":
                if i != len(levels) - 1:
                    raise ValueError(f"'{v}': '#' is only allowed as the last level")
                continue
            if any(c in level for c in "+#{}"):
                raise ValueError(f"'{v}': wildcards and placeholders ({{point}}, {{device}}) must fill a whole level")
        if levels.count("{point}") > 1:
            raise ValueError(f"'{v}': at most one {{point}} level")
        return v

    @field_validator("topic_key")
    @classmethod
    def _topic_key(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        if any(c in v for c in "/+#"):
            raise ValueError(f"'{v}' is not a topic level (no '/', '+' or '#')")
        topic = info.data.get("topic")  # absent when the topic itself was invalid
        if topic is not None and "{point}" not in topic.split("/"):
            raise ValueError(f"topic_key needs a {{point}} level in topic '{topic}'")
        return v

    @property
    def key(self) -> str:
        """The text of the topic's {point} level that addresses this point."""
        return self.topic_key or self.id


class DeviceBase(_Strict):
    """Keys common to every device."""

    id: str = Field(pattern=ID_PATTERN)
    endpoint: str
    description: str = ""
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    timeout_s: float = Field(default=3.0, gt=0, le=120)
    username: str | None = None
    password: str | None = None
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60,
                                     description="first reconnect delay; doubles per failed attempt")
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600, description="cap of the reconnect delay")

    @model_validator(mode="after")
    def _backoff(self) -> DeviceBase:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"backoff_initial_s ({self.backoff_initial_s}) is greater than "
                             f"backoff_max_s ({self.backoff_max_s})")
        return self

    def _check_points(self, points: list[Any]) -> None:
        seen: set[str] = set()
        for p in points:
            if p.id in seen:
                raise ValueError(f"point id '{p.id}' appears twice in device '{self.id}'")
            seen.add(p.id)


class OpcUaDevice(DeviceBase):
    """An OPC UA server, e.g. a CDU controller."""

    protocol: Literal["opcua"]
    security_policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    subscribe: bool = Field(default=False, description="data-change subscription instead of polling")
    sampling_interval_s: float | None = Field(default=None, gt=0, le=3600,
                                              description="server-side sampling of subscribed nodes "
                                                          "(default: poll_interval_s)")
    deadband: float = Field(default=0.0, ge=0,
                            description="absolute deadband of subscribed nodes; 0 reports every change")
    queue_size: int = Field(default=1, ge=1, le=10_000,
                            description="values the server queues per subscribed node between publishes")
    certificate_dir: str = Field(default="var/pki",
                                 description="where the client's application certificate and key live; "
                                             "generated on first use of a security policy")
    application_uri: str = Field(default="urn:heatrec:client", min_length=1,
                                 description="the client's ApplicationUri, also written into its certificate")
    session_timeout_s: float = Field(default=60.0, ge=5, le=3600,
                                     description="session lifetime the server keeps without hearing from us; "
                                                 "bounds how long a session orphaned by a lost connection lives")
    points: list[OpcUaPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme != "opc.tcp" or not u.hostname or u.port is None:
            raise ValueError(f"'{v}' is not an OPC UA endpoint like opc.tcp://host:port[/path]")
        return v

    @model_validator(mode="after")
    def _unique(self) -> OpcUaDevice:
        self._check_points(self.points)
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(f"security_policy '{self.security_policy}' and security_mode "
                             f"'{self.security_mode}' do not fit: both are \"None\", or neither is")
        return self


class ModbusDevice(DeviceBase):
    """A Modbus TCP server, e.g. a heat pump controller or a heat meter."""

    protocol: Literal["modbus"]
    unit_id: int = Field(default=1, ge=0, le=255)
    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_gap_registers: int = Field(default=8, ge=0, le=124,
                                   description="unmapped registers a coalesced read may bridge")
    request_pause_s: float = Field(default=0.0, ge=0, le=10,
                                   description="quiet time before each request on the connection, "
                                               "for slow gateways")
    points: list[ModbusPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in v:
            raise ValueError(f"'{v}' is not a Modbus TCP endpoint like host:port")
        return v

    @model_validator(mode="after")
    def _unique(self) -> ModbusDevice:
        self._check_points(self.points)
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        """Endpoint split into host and port."""
        host, _, port = self.endpoint.rpartition(":")
        return host, int(port)


class MqttDevice(DeviceBase):
    """An MQTT broker topic family, e.g. an M-Bus-to-MQTT gateway publishing heat meters."""

    protocol: Literal["mqtt"]
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    tls_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// (system CAs if unset)")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM) for mqtts://")
    tls_key_file: str | None = Field(default=None, description="private key (PEM) of tls_cert_file")
    clean_session: bool = Field(default=False,
                                description="discard the broker-side session on connect; a session is only "
                                            "kept when client_id is set")
    points: list[MqttPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.port is None:
            raise ValueError(f"'{v}' is not an MQTT endpoint like mqtt://host:port or mqtts://host:port")
        return v

    @model_validator(mode="after")
    def _unique(self) -> MqttDevice:
        self._check_points(self.points)
        return self


Device = Annotated[OpcUaDevice | ModbusDevice | MqttDevice, Field(discriminator="protocol")]


class PlantConfig(_Strict):
    """Plant identity."""

    name: str = "heat-recovery plant"
    timezone: str = "Europe/Copenhagen"


class DatabaseConfig(_Strict):
    """PostgreSQL + TimescaleDB connection."""

    host: str = "127.0.0.1"
    port: int = Field(default=5432, gt=0, lt=65536)
    name: str = "heatrec"
    user: str = "heatrec"
    password: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)

    def dsn(self) -> str:
        """libpq-style URL for asyncpg (password passed separately)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"


class StorageConfig(_Strict):
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


class ApiConfig(_Strict):
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


class SimCdu(_Strict):
    """A simulated CDU served over OPC UA."""

    id: str = Field(pattern=ID_PATTERN)
    endpoint: str = "opc.tcp://127.0.0.1:4841"
    it_load_kw: float = Field(default=800.0, gt=0)
    supply_temperature_setpoint: float = 30.0
    supply_temperature_allowable_max: float = 35.0
    setpoint_min: float = Field(default=15.0, description="lowest supply setpoint the CDU accepts over OPC UA")
    setpoint_max: float = Field(default=45.0, description="highest supply setpoint the CDU accepts over OPC UA")


class SimHeatPump(_Strict):
    """A simulated heat pump served over Modbus TCP."""

    id: str = Field(pattern=ID_PATTERN)
    endpoint: str = "127.0.0.1:5020"
    unit_id: int = Field(default=1, ge=0, le=255)
    capacity_kw: float = Field(default=1000.0, gt=0)
    carnot_efficiency: float = Field(default=0.5, gt=0, le=1)
    supply_setpoint: float = Field(default=70.0, description="local setpoint, also the watchdog fallback")
    setpoint_min: float = Field(default=40.0, description="lowest remote setpoint accepted over Modbus")
    setpoint_max: float = Field(default=85.0, description="highest remote setpoint accepted over Modbus")
    time_constant_s: float = Field(default=60.0, gt=0, description="first-order lag of the supply temperature")
    dead_time_s: float = Field(default=0.0, ge=0, le=3600,
                               description="delay before a new supply target starts to act (transport, staging)")
    min_load_fraction: float = Field(default=0.0, ge=0, lt=1,
                                     description="modulation floor: below this share of capacity the pump stops")
    trip_temperature: float = Field(default=90.0, description="condenser (supply) temperature that trips the pump")
    initial_electric_energy_kwh: float = Field(default=0.0, ge=0,
                                               description="electricity meter register at simulation start")
    watchdog_timeout_s: float = Field(default=60.0, gt=0,
                                      description="fall back to the local setpoint this long after the "
                                                  "last heartbeat write (armed by the first one)")


class SimHeatMeter(_Strict):
    """A simulated EN 1434 heat meter published by an M-Bus-to-MQTT gateway."""

    id: str = Field(pattern=ID_PATTERN)
    protocol: Literal["mqtt", "modbus"] = Field(default="mqtt", description="M-Bus-to-MQTT gateway or Modbus TCP")
    endpoint: str = Field(default="127.0.0.1:5030", description="host:port of a Modbus meter")
    unit_id: int = Field(default=1, ge=0, le=255, description="unit id of a Modbus meter")
    serial: str = "71234567"
    topic: str = "mbus/heatmeter/71234567"
    publish_interval_s: float = Field(default=1.0, gt=0)
    initial_energy_gj: float = Field(default=0.0, ge=0, description="energy register at simulation start")
    initial_volume_m3: float = Field(default=0.0, ge=0, description="volume register at simulation start")
    register_wrap_gj: float = Field(default=4294967.296, gt=0,
                                    description="the energy register rolls over to 0 here (uint32 MJ by default)")


class SimulationConfig(_Strict):
    """The simulated plant that `heatrec simulate` and `heatrec demo` serve."""

    seed: int = 1
    outdoor_temperature: float = 5.0
    dh_design_demand_kw: float | None = Field(
        default=None, gt=0, description="network heat demand at the design outdoor temperature; none = unlimited")
    dh_design_outdoor_temperature: float = Field(default=-12.0, description="outdoor temperature of full demand")
    dh_heating_limit_temperature: float = Field(default=17.0, description="above this only hot-water demand is left")
    dh_base_demand_fraction: float = Field(default=0.15, ge=0, le=1,
                                           description="hot-water share of the design demand, all year")
    direct_exchange_kw: float = Field(default=0.0, ge=0,
                                      description="capacity of the direct heat exchanger (source to DH); 0 = none")
    direct_exchange_approach_k: float = Field(default=3.0, ge=0,
                                              description="DH water leaves the exchanger this far below the source")
    pipe_loss_fraction: float = Field(default=0.005, ge=0, lt=0.5,
                                      description="share of the recovered heat lost before the meters")
    surplus_heat_kw: float = Field(default=0.0, ge=0, description="an industrial surplus-heat source (no CDU)")
    dry_cooler_capacity_kw: float | None = Field(
        default=None, ge=0, description="heat the dry coolers can reject; none = unlimited. Heat that neither "
                                        "recovery nor dry coolers take raises the CDU supply temperature")
    surplus_heat_temperature: float = Field(default=90.0, gt=0, lt=150, description="its temperature, °C")
    control_port: int | None = Field(default=None, ge=0, lt=65536,
                                     description="HTTP fault-injection endpoint on 127.0.0.1; none = off")
    mqtt_broker: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    cdus: list[SimCdu] = Field(default_factory=list)
    heat_pumps: list[SimHeatPump] = Field(default_factory=list)
    heat_meters: list[SimHeatMeter] = Field(default_factory=list)


ScadaPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
                     "Aes128Sha256RsaOaep_Sign", "Aes128Sha256RsaOaep_SignAndEncrypt",
                     "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt"]


class ScadaUser(_Strict):
    """A user of the SCADA OPC UA server."""

    username: str = Field(min_length=1)
    password: str = Field(description="use ${VAR} to keep it out of the file; an empty password disables the user")
    role: Literal["viewer", "operator", "admin"] = "viewer"


class ScadaConfig(_Strict):
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


_POINT_REF_PATTERN = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"


class LimitAlarm(_Strict):
    """Limit and quality alarms on one point."""

    point: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$", description="full point id, device.point")
    high: float | None = Field(default=None, description="alarm when the value rises above this")
    low: float | None = Field(default=None, description="alarm when the value falls below this")
    deadband: float = Field(default=0.0, ge=0, description="the value must come back this far inside to clear")
    on_delay_s: float = Field(default=0.0, ge=0, description="the condition must last this long to alarm")
    quality: bool = Field(default=True, description="also alarm when the point's quality is BAD or STALE")
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    message: str = ""

    @model_validator(mode="after")
    def _limits(self) -> LimitAlarm:
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class StateAlarm(_Strict):
    """An alarm on a point's discrete value: a bit of a status word, a code, or a set of vendor codes."""

    point: str = Field(pattern=_POINT_REF_PATTERN, description="full point id, device.point (a status word or code)")
    name: str = Field(pattern=ID_PATTERN, description="the alarm's name; its id is POINT:NAME")
    bit: int | None = Field(default=None, ge=0, le=63, description="alarm on this bit of the value (0 = lowest)")
    bit_value: Literal[0, 1] = Field(default=1, description="with bit: the bit's value that alarms")
    equals: int | None = Field(default=None, description="alarm when the value equals this code")
    codes: dict[str, str] | None = Field(default=None, description="alarm on any of these codes, each with its "
                                                                   "text (vendor fault codes): { \"17\" = \"...\" }")
    on_delay_s: float = Field(default=0.0, ge=0, description="the condition must last this long to alarm")
    severity: Literal["low", "medium", "high", "critical"] = "high"
    message: str = ""

    @model_validator(mode="after")
    def _one_condition(self) -> StateAlarm:
        given = [k for k in ("bit", "equals", "codes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of bit, equals or codes" + (f" (got {', '.join(given)})" if given
                                                                           else ""))
        if self.name in ("high", "low", "quality"):
            raise ValueError(f"name '{self.name}' is taken by the limit alarms of a point: choose another")
        for code in self.codes or {}:
            try:
                int(code)
            except ValueError:
                raise ValueError(f"codes: key '{code}' is not an integer code") from None
        return self

    @property
    def alarm_id(self) -> str:
        """POINT:NAME."""
        return f"{self.point}:{self.name}"


class AlarmsMqttConfig(_Strict):
    """Publish every alarm state change as retained JSON to an MQTT broker (SCADA, HMIs)."""

    url: str = Field(description="mqtt://host[:port] or mqtts://host[:port] of the broker")
    topic_prefix: str = Field(default="heatrec/alarms", description="alarms go to PREFIX/ALARM_ID")
    username: str | None = None
    password: str | None = Field(default=None, description="use ${VAR} to keep it out of the file")
    client_id: str | None = Field(default=None, description="MQTT client id; the broker picks one if unset")
    qos: Literal[0, 1, 2] = 1
    retain: bool = Field(default=True, description="retained: a client that subscribes later gets the current state")
    queue_size: int = Field(default=1000, ge=1, le=1_000_000,
                            description="changes held while the broker is away; the oldest are dropped beyond it")
    tls_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// (system CAs if unset)")
    tls_cert_file: str | None = Field(default=None, description="client certificate (PEM) for mqtts://")
    tls_key_file: str | None = Field(default=None, description="private key (PEM) of tls_cert_file")

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

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "+#\0"):
            raise ValueError(f"'{v}' is not a topic prefix like heatrec/alarms (no wildcards, no leading or "
                             "trailing '/')")
        return v

    @model_validator(mode="after")
    def _tls(self) -> AlarmsMqttConfig:
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file")
        return self


class AlarmsConfig(_Strict):
    """Alarm rules; every device also gets an offline alarm."""

    device_offline_delay_s: float = Field(default=10.0, ge=0, description="a device not connected this long alarms")
    device_offline_severity: Literal["low", "medium", "high", "critical"] = "high"
    evaluate_interval_s: float = Field(default=1.0, gt=0, le=60)
    limits: list[LimitAlarm] = Field(default_factory=list)
    states: list[StateAlarm] = Field(default_factory=list, description="alarms on discrete values (status bits, "
                                                                        "codes)")
    mqtt: AlarmsMqttConfig | None = Field(default=None, description="also publish alarm changes over MQTT")


_POINT_REF = _POINT_REF_PATTERN


class AccountingMeter(_Strict):
    """A billing heat meter: its register point, the points that cross-check it, and its class data."""

    id: str = Field(pattern=ID_PATTERN, description="meter id used in settlements and the API")
    energy_point: str = Field(pattern=_POINT_REF, description="the meter's energy register (GJ, kind counter)")
    flow_point: str | None = Field(default=None, pattern=_POINT_REF, description="volume flow, m3/h")
    flow_temperature_point: str | None = Field(default=None, pattern=_POINT_REF, description="degC")
    return_temperature_point: str | None = Field(default=None, pattern=_POINT_REF, description="degC")
    serial: str = Field(default="", description="serial number of the meter installed at commissioning")
    mid_class: Literal[1, 2, 3] = Field(default=2, description="MID / EN 1434 accuracy class")
    qp_m3h: float = Field(gt=0, description="permanent flow rate qp of the flow sensor")
    qi_m3h: float = Field(gt=0, description="lowest flow rate qi; flows below it are flagged")
    delta_theta_min_k: Literal[3, 5, 10] = Field(default=3, description="smallest temperature difference Δθmin")
    register_wrap_gj: float | None = Field(default=None, gt=0,
                                           description="the register rolls over to 0 here; none = never")
    max_power_kw: float = Field(gt=0, description="no real step is faster than this; larger steps are faults")
    gap_s: float = Field(default=900.0, gt=0, description="readings further apart than this make a gap")

    @model_validator(mode="after")
    def _flows(self) -> AccountingMeter:
        if self.qi_m3h >= self.qp_m3h:
            raise ValueError(f"qi_m3h ({self.qi_m3h}) must be below qp_m3h ({self.qp_m3h})")
        return self


class AccountingHeatPump(_Strict):
    """A heat pump's electricity register, for the 3 x electricity deduction, COP and PUE."""

    id: str = Field(pattern=ID_PATTERN)
    electricity_point: str = Field(pattern=_POINT_REF, description="electricity register, kWh, kind counter")
    register_wrap_kwh: float | None = Field(default=None, gt=0, description="roll-over of the register")
    max_power_kw: float = Field(gt=0, description="largest plausible electric power; larger steps are faults")
    gap_s: float = Field(default=900.0, gt=0, description="readings further apart than this make a gap")


class SupplyContract(_Strict):
    """A surplus-heat supply contract: who sells to whom through which meters, and its price terms."""

    id: str = Field(pattern=ID_PATTERN)
    meters: list[str] = Field(min_length=1, description="accounting meter ids summed for this contract")
    supplier: str = Field(min_length=1, description="the surplus-heat supplier (the data centre)")
    utility: str = Field(min_length=1, description="the district-heating utility that buys")
    rule_set: str = Field(default="dk_surplus_heat", pattern=ID_PATTERN,
                          description="file stem of the rule set in rules_dir")
    capacity_mw: float = Field(gt=0, description="supply capacity (suppliers under 0.25 MW are cap-exempt)")
    agreed_price_dkk_per_gj: float = Field(ge=0, description="price agreed in the contract; 0 for free supply")
    substitution_price_dkk_per_gj: float | None = Field(default=None, ge=0,
                                                        description="the utility's own alternative heat price")
    cost_based_price_dkk_per_gj: float | None = Field(default=None, ge=0,
                                                      description="the supplier's cost-based price")
    utility_cost_dkk_per_gj: float = Field(default=0.0, ge=0,
                                           description="the utility's own cost of using the heat, per GJ "
                                                       "(counts against the price cap)")
    efo_member: bool = Field(default=False, description="supplier is in the energy-efficiency scheme (EFO)")
    free_supply: bool = Field(default=False, description="heat given away free: the utility pays the charge")
    electricity_based_process: bool = Field(default=False,
                                            description="the surplus heat comes from an electricity-based "
                                                        "process (a data centre)")
    heat_pump_lifted: bool = Field(default=False, description="the heat is lifted by electric heat pumps")
    heat_pumps: list[str] = Field(default_factory=list, description="accounting heat pump ids to deduct")
    valid_from: date | None = Field(default=None, description="first day of the contract (default: today); "
                                                              "check-config checks the rules from then on")
    valid_to: date | None = Field(default=None, description="day after the contract's last (default: open)")

    @model_validator(mode="after")
    def _term(self) -> SupplyContract:
        if self.valid_from is not None and self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError(f"valid_to ({self.valid_to}) must be after valid_from ({self.valid_from})")
        return self


class Co2Factor(_Strict):
    """Avoided CO2 per kWh of heat in a year; years between are interpolated linearly."""

    year: int = Field(ge=1990, le=2100)
    kg_per_kwh: float = Field(ge=0)
    source: str = Field(min_length=1)


_BR18_DH = [Co2Factor(year=2023, kg_per_kwh=0.105, source="BR18 annex 2 table 8, district heating 2023"),
            Co2Factor(year=2025, kg_per_kwh=0.0878, source="BR18 annex 2 table 8, district heating 2025"),
            Co2Factor(year=2030, kg_per_kwh=0.0713, source="BR18 annex 2 table 8, district heating 2030")]


class AccountingConfig(_Strict):
    """Billing-grade heat accounting: meters, heat pumps, contracts, KPI factors."""

    rules_dir: str = Field(default=str(PACKAGED_RULES_DIR),
                           description="directory of the dated rule sets (TOML); default: the rule sets shipped "
                                       "with heatrec")
    interval_s: int = Field(default=3600, ge=60, le=86400, description="default interval of /api/v1/energy")
    homes_mwh_per_home: float = Field(default=14.0, gt=0, description="heat use of one home per year (MWh)")
    co2_factors: list[Co2Factor] = Field(default_factory=lambda: list(_BR18_DH), min_length=1)
    it_energy_point: str | None = Field(default=None, pattern=_POINT_REF,
                                        description="IT electricity register (kWh) for ERF, PUE, heat share")
    facility_energy_point: str | None = Field(default=None, pattern=_POINT_REF,
                                              description="whole data-centre electricity register (kWh)")
    meters: list[AccountingMeter] = Field(default_factory=list)
    heat_pumps: list[AccountingHeatPump] = Field(default_factory=list)
    contracts: list[SupplyContract] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AccountingConfig:
        for what, items in (("meters", self.meters), ("heat_pumps", self.heat_pumps),
                            ("contracts", self.contracts)):
            ids = [i.id for i in items]
            dup = {i for i in ids if ids.count(i) > 1}
            if dup:
                raise ValueError(f"accounting.{what}: id '{sorted(dup)[0]}' appears twice")
        meters, pumps = {m.id for m in self.meters}, {h.id for h in self.heat_pumps}
        for c in self.contracts:
            for m in c.meters:
                if m not in meters:
                    raise ValueError(f"contract '{c.id}': no accounting meter '{m}'")
            for h in c.heat_pumps:
                if h not in pumps:
                    raise ValueError(f"contract '{c.id}': no accounting heat pump '{h}'")
        return self

    def point_refs(self) -> list[tuple[str, str]]:
        """(where, point id) of every point the section names, for checking against the devices."""
        out: list[tuple[str, str]] = []
        for m in self.meters:
            for key in ("energy_point", "flow_point", "flow_temperature_point", "return_temperature_point"):
                if getattr(m, key):
                    out.append((f"accounting.meters.{m.id}.{key}", getattr(m, key)))
        out += [(f"accounting.heat_pumps.{h.id}.electricity_point", h.electricity_point) for h in self.heat_pumps]
        for key in ("it_energy_point", "facility_energy_point"):
            if getattr(self, key):
                out.append((f"accounting.{key}", getattr(self, key)))
        return out


class ControlCurvePoint(_Strict):
    """One breakpoint of the outdoor compensation curve."""

    outdoor: float = Field(description="outdoor temperature, °C")
    supply: float = Field(description="network supply temperature target at that outdoor temperature, °C")


class ControlPid(_Strict):
    """PID gains; output and setpoint in °C."""

    kp: float = Field(default=1.0, ge=0, description="proportional gain, K of setpoint per K of error")
    ti_s: float | None = Field(default=60.0, gt=0, description="integral time; none = no integral action")
    td_s: float = Field(default=0.0, ge=0, description="derivative time (on the measurement); 0 = none")
    derivative_filter: float = Field(default=8.0, gt=0, description="N: the derivative is filtered with Td/N")
    tracking_time_s: float | None = Field(default=None, gt=0,
                                          description="anti-windup back-calculation time; none = sqrt(Ti·Td) or Ti")


class ControlHeatPump(_Strict):
    """One heat pump the loop setpoints (all points are full point ids, device.point)."""

    id: str = Field(pattern=ID_PATTERN, description="name in status, staging and audit")
    setpoint: str = Field(pattern=_POINT_REF, description="writable supply setpoint point, °C")
    supply_temperature: str | None = Field(default=None, pattern=_POINT_REF, description="its own supply, °C")
    sg_ready: str | None = Field(default=None, pattern=_POINT_REF,
                                 description="writable SG-Ready point: staging writes 0 (run) or 1 (blocked)")
    heartbeat: str | None = Field(default=None, pattern=_POINT_REF,
                                  description="writable heartbeat point, written every cycle to keep the "
                                              "device's watchdog from falling back to its local setpoint")
    status: str | None = Field(default=None, pattern=_POINT_REF,
                               description="status word; bit 1 (fault) makes the pump unavailable to staging")
    heat_output: str | None = Field(default=None, pattern=_POINT_REF, description="condenser heat, kW")
    capacity_kw: float = Field(default=1000.0, gt=0, description="nominal heat output for staging decisions")


class ControlCdu(_Strict):
    """A CDU whose secondary supply temperature must stay at or below its allowable maximum."""

    supply_temperature: str = Field(pattern=_POINT_REF, description="secondary supply temperature point, °C")
    allowable_max: str | None = Field(default=None, pattern=_POINT_REF,
                                      description="point holding the allowable maximum, °C")
    allowable_max_value: float | None = Field(default=None, description="fixed allowable maximum when no point")

    @model_validator(mode="after")
    def _limit(self) -> ControlCdu:
        if self.allowable_max is None and self.allowable_max_value is None:
            raise ValueError("set allowable_max (a point) or allowable_max_value (°C)")
        return self


class ControlStaging(_Strict):
    """Lead/lag staging of several heat pumps through their SG-Ready points."""

    min_run_s: float = Field(default=600.0, ge=0, description="a started pump runs at least this long")
    min_stop_s: float = Field(default=300.0, ge=0, description="a stopped pump stays off at least this long")
    stage_up_delay_s: float = Field(default=120.0, ge=0, description="need for one more pump must last this long")
    stage_down_delay_s: float = Field(default=600.0, ge=0, description="surplus of one pump must last this long")
    stage_up_load: float = Field(default=0.9, gt=0, le=1,
                                 description="stage up when the running pumps give more than this share of capacity")
    stage_down_load: float = Field(default=0.4, ge=0, lt=1,
                                   description="stage down when one pump fewer would run below this share")
    direct_source_temperature: str | None = Field(
        default=None, pattern=_POINT_REF,
        description="source temperature point; when it minus direct_approach_k reaches the target, the direct "
                    "exchanger alone holds the supply and the heat pumps are staged off")
    direct_approach_k: float = Field(default=3.0, ge=0, description="direct exchanger approach, K")
    direct_margin_k: float = Field(default=1.0, ge=0, description="hysteresis of the direct/boost decision, K")


class ControlConfig(_Strict):
    """The supply-temperature loop: target, PID with feedforward, CDU limit, staging, safe state."""

    period_s: float = Field(default=1.0, gt=0, le=60, description="fixed cycle period")
    initial_mode: Literal["auto", "manual", "off"] = Field(default="auto", description="mode at start-up")
    supply_temperature: str = Field(pattern=_POINT_REF, description="controlled variable: network supply, °C")
    outdoor_temperature: str | None = Field(default=None, pattern=_POINT_REF,
                                            description="outdoor temperature point the curve reads")
    target: Literal["curve", "fixed"] = Field(default="curve", description="where the target comes from")
    fixed_target: float | None = Field(default=None, description="target when target = fixed, °C")
    curve: list[ControlCurvePoint] = Field(
        default_factory=lambda: [ControlCurvePoint(outdoor=-12.0, supply=80.0),
                                 ControlCurvePoint(outdoor=15.0, supply=65.0)],
        description="outdoor compensation breakpoints, outdoor ascending; flat outside")
    target_min: float = Field(default=50.0, description="lowest target (curve, fixed or override), °C")
    target_max: float = Field(default=85.0, description="highest target, °C")
    target_ramp_k_per_min: float = Field(default=3.0, gt=0, description="the target in force moves at most this fast")
    pid: ControlPid = ControlPid()
    feedforward: bool = Field(default=True, description="add the feedforward terms below to the PID output")
    feedforward_lead_s: float = Field(default=0.0, ge=0,
                                      description="target-rate lead: adds lead·d(target)/dt to cover the plant lag")
    feedforward_heat: list[str] = Field(default_factory=list, description="points summed as recovered heat, kW")
    feedforward_heat_gain: float = Field(default=0.0, description="K of setpoint per MW of recovered heat")
    feedforward_heat_reference_kw: float = Field(default=0.0, description="recovered heat at which that term is 0")
    feedforward_outdoor_gain: float = Field(default=0.0, description="K of setpoint per K of outdoor temperature")
    feedforward_outdoor_reference: float = Field(default=0.0, description="outdoor temperature where it is 0")
    heat_pumps: list[ControlHeatPump] = Field(min_length=1)
    setpoint_min: float = Field(default=40.0, description="lowest heat-pump setpoint the loop writes, °C")
    setpoint_max: float = Field(default=85.0, description="highest heat-pump setpoint the loop writes, °C")
    setpoint_rate_k_per_s: float = Field(default=0.5, gt=0, description="largest setpoint change per second")
    deadband_k: float = Field(default=0.05, ge=0, description="smaller setpoint changes wait for the refresh")
    refresh_s: float = Field(default=10.0, gt=0, description="unchanged setpoints are written again this often")
    start_grace_s: float = Field(default=30.0, ge=0, le=600,
                                 description="at start, wait this long for the first inputs before a safe state")
    request_expiry_default_s: float = Field(default=28800.0, gt=0,
                                            description="an operator override or manual mode without expires_in_s "
                                                        "ends after this (one 8-hour shift)")
    request_expiry_max_s: float = Field(default=259200.0, gt=0,
                                        description="longest expires_in_s an operator may ask (3 days)")
    state_file: str = Field(default="var/control-state.json",
                            description="mode, override and manual setpoint in force, restored at start")
    safe_setpoint: float | None = Field(
        default=None, description="written to every heat pump in the safe state; none = stop writing and let "
                                  "each heat pump's watchdog fall back to its local setpoint")
    cdus: list[ControlCdu] = Field(default_factory=list)
    cdu_margin_k: float = Field(default=0.5, ge=0, description="the CDU limit controller holds this below the max")
    cdu_pid: ControlPid = ControlPid(kp=4.0, ti_s=30.0, td_s=90.0)
    stale_after_s: float = Field(default=5.0, gt=0, description="an input older than this is stale")
    frozen_after_s: float | None = Field(
        default=300.0, gt=0, description="the supply temperature unchanged this long counts as a frozen sensor")
    staging: ControlStaging = ControlStaging()

    @model_validator(mode="after")
    def _consistent(self) -> ControlConfig:
        if self.request_expiry_default_s > self.request_expiry_max_s:
            raise ValueError(f"request_expiry_default_s ({self.request_expiry_default_s}) is above "
                             f"request_expiry_max_s ({self.request_expiry_max_s})")
        if self.target_min > self.target_max:
            raise ValueError(f"target_min ({self.target_min}) is above target_max ({self.target_max})")
        if self.setpoint_min > self.setpoint_max:
            raise ValueError(f"setpoint_min ({self.setpoint_min}) is above setpoint_max ({self.setpoint_max})")
        if self.target == "fixed" and self.fixed_target is None:
            raise ValueError("target = 'fixed' needs fixed_target")
        if self.target == "curve":
            if len(self.curve) < 2:
                raise ValueError("curve needs at least two breakpoints")
            if self.outdoor_temperature is None:
                raise ValueError("target = 'curve' needs outdoor_temperature (a point)")
        outs = [p.outdoor for p in self.curve]
        if any(outs[i + 1] <= outs[i] for i in range(len(outs) - 1)):
            raise ValueError("curve breakpoints must have strictly ascending outdoor temperatures")
        if self.safe_setpoint is not None and not self.setpoint_min <= self.safe_setpoint <= self.setpoint_max:
            raise ValueError(f"safe_setpoint ({self.safe_setpoint}) is outside setpoint_min..setpoint_max")
        ids = [h.id for h in self.heat_pumps]
        if len(set(ids)) != len(ids):
            raise ValueError("heat_pumps ids must be unique")
        return self

    def point_refs(self) -> list[tuple[str, str, bool]]:
        """(field path, point id, must be writable) for every point the loop reads or writes."""
        refs: list[tuple[str, str, bool]] = [("control.supply_temperature", self.supply_temperature, False)]
        if self.outdoor_temperature:
            refs.append(("control.outdoor_temperature", self.outdoor_temperature, False))
        refs += [(f"control.feedforward_heat[{i}]", p, False) for i, p in enumerate(self.feedforward_heat)]
        for i, hp in enumerate(self.heat_pumps):
            for name in ("setpoint", "supply_temperature", "sg_ready", "heartbeat", "status", "heat_output"):
                point = getattr(hp, name)
                if point is not None:
                    refs.append((f"control.heat_pumps[{i}].{name}", point, name in ("setpoint", "sg_ready",
                                                                                      "heartbeat")))
        for i, cdu in enumerate(self.cdus):
            refs.append((f"control.cdus[{i}].supply_temperature", cdu.supply_temperature, False))
            if cdu.allowable_max:
                refs.append((f"control.cdus[{i}].allowable_max", cdu.allowable_max, False))
        if self.staging.direct_source_temperature:
            refs.append(("control.staging.direct_source_temperature", self.staging.direct_source_temperature, False))
        return refs


class HeatrecConfig(_Strict):
    """The whole plant configuration file."""

    env_file: str | None = Field(default=None,
                                 description="KEY=VALUE lines that ${VAR} references may use; the process "
                                             "environment wins (systemd EnvironmentFile syntax)")
    plant: PlantConfig = PlantConfig()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    devices: list[Device] = Field(default_factory=list)
    simulation: SimulationConfig | None = None
    alarms: AlarmsConfig = AlarmsConfig()
    scada: ScadaConfig | None = None
    accounting: AccountingConfig | None = None
    control: ControlConfig | None = None

    @model_validator(mode="after")
    def _references(self) -> HeatrecConfig:
        # Device ids first: a duplicate would otherwise surface as a confusing missing point further on.
        first: dict[str, int] = {}
        for i, d in enumerate(self.devices):
            if d.id in first:
                raise ValueError(f"devices[{i}].id: device id '{d.id}' appears twice (also devices[{first[d.id]}])")
            first[d.id] = i
        points: dict[str, PointBase] = {f"{d.id}.{p.id}": p for d in self.devices for p in d.points}
        for i, rule in enumerate(self.alarms.limits):
            if rule.point not in points:
                raise ValueError(self.unknown_point(f"alarms.limits[{i}].point", rule.point))
        ids: set[str] = set()
        for i, st in enumerate(self.alarms.states):
            if st.point not in points:
                raise ValueError(self.unknown_point(f"alarms.states[{i}].point", st.point))
            if st.alarm_id in ids:
                raise ValueError(f"alarms.states[{i}].name: '{st.name}' is used twice on {st.point}")
            ids.add(st.alarm_id)
        for where, point in self.accounting.point_refs() if self.accounting else []:
            if point not in points:
                raise ValueError(self.unknown_point(where, point))
        if self.control is not None:
            self._check_control(points)
        return self

    def _check_control(self, points: dict[str, PointBase]) -> None:
        assert self.control is not None
        for where, ref, writable in self.control.point_refs():
            point = points.get(ref)
            if point is None:
                raise ValueError(self.unknown_point(where, ref))
            if writable and not point.writable:
                raise ValueError(f"{where}: point '{ref}' is not writable (set writable = true on it)")
        for i, hp in enumerate(self.control.heat_pumps):
            sp = points[hp.setpoint]
            low, high = self.control.setpoint_min, self.control.setpoint_max
            if (sp.min is not None and low < sp.min) or (sp.max is not None and high > sp.max):
                raise ValueError(f"control.heat_pumps[{i}].setpoint: control.setpoint_min..setpoint_max "
                                 f"({low}..{high}) exceeds the point's envelope ({sp.min}..{sp.max})")

    def unknown_point(self, where: str, ref: str) -> str:
        """The error for a reference to no point: what is there instead, so the fix is one look away."""
        device, _, _ = ref.partition(".")
        dev = next((d for d in self.devices if d.id == device), None)
        if dev is None:
            valid = ", ".join(d.id for d in self.devices) or "none configured"
            return f"{where}: no point '{ref}' among the devices: no device '{device}' (devices: {valid})"
        names = [p.id for p in dev.points]
        close = difflib.get_close_matches(ref.partition(".")[2], names, n=1)
        hint = f"did you mean '{device}.{close[0]}'? " if close else ""
        return f"{where}: no point '{ref}' among the devices ({hint}points of {device}: {', '.join(names)})"

    def point_ids(self) -> list[str]:
        """Every full point id, `device.point`."""
        return [f"{d.id}.{p.id}" for d in self.devices for p in d.points]


def _expand_env(value: Any, path: str, source: str, extra: dict[str, str] | None = None) -> Any:
    """Replace ${VAR} and ${VAR:-default} in strings so secrets can stay out of the file."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else k, source, extra) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", source, extra) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if extra and name in extra:
                return extra[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: {path}: environment variable {name} is not set "
                              f"(export it, set it in env_file, or write ${{{name}:-default}})")
        return _ENV_REF.sub(sub, value)
    return value


def read_env_file(path: Path, source: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped, one pair of quotes stripped), as systemd reads them."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        # Not fatal: the demo writes its file on first start, and `${VAR:-default}` may cover the rest.
        logging.getLogger(__name__).warning("%s: env_file %s not found; the variables it would set stay unset "
                                            "(create it; a demo plant's is written by `heatrec demo`)", source, path)
        return {}
    except OSError as exc:
        raise ConfigError(f"{source}: env_file: cannot read {path}: {exc.strerror}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, val = line.removeprefix("export ").partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE (env_file of {source})")
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        out[key] = val
    return out


def _resolve_paths(value: Any, base: Path) -> Any:
    """Make the relative paths written under PATH_KEYS relative to `base` (the config file's directory)."""
    if isinstance(value, dict):
        return {k: (str(base / v) if k in PATH_KEYS and isinstance(v, str) and v and not Path(v).is_absolute()
                    else _resolve_paths(v, base)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    return value


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif prev is not None and isinstance(prev, int) and part in ("opcua", "modbus", "mqtt"):
            pass  # the discriminated-union tag pydantic inserts after devices[i]
        else:
            out += f".{part}" if out else str(part)
        prev = part
    return out or "(top level)"


def _describe(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; docs/CONFIG.md lists every key)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        msg = f"protocol must be one of 'opcua', 'modbus', 'mqtt' (got {err['ctx']['tag']!r})"
    elif err["type"] == "union_tag_not_found":
        msg = "device needs 'protocol' ('opcua', 'modbus' or 'mqtt')"
    elif "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    return msg.removeprefix("Value error, ")


def parse_config(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> HeatrecConfig:
    """Validate an already-parsed TOML document; relative paths resolve against `base_dir` when given."""
    extra: dict[str, str] | None = None
    env_file = data.get("env_file")
    if isinstance(env_file, str) and env_file:
        env_path = Path(env_file) if base_dir is None or Path(env_file).is_absolute() else base_dir / env_file
        extra = read_env_file(env_path, source)
    data = _expand_env(data, "", source, extra)
    if base_dir is not None:
        data = _resolve_paths(data, base_dir)
    try:
        return HeatrecConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc += ("protocol",)  # pydantic reports the device; the culprit is its protocol key
            # The whole file's checks (references) name their own field path in the message.
            lines.append(f"{source}: {_describe(e)}" if not loc else f"{source}: {_format_loc(loc)}: {_describe(e)}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> HeatrecConfig:
    """Read and validate a TOML configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found (pass the plant config with -c FILE, "
                          "e.g. config/demo.toml)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: TOML syntax error: {exc}") from None
    return parse_config(data, str(p), p.parent)
