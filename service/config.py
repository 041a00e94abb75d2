"""Typed plant configuration: TOML validated by pydantic, errors that name the field."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ID_PATTERN = r"^[a-z][a-z0-9_]*$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_JSON_PATH = re.compile(r"^\$(\.[A-Za-z_][A-Za-z0-9_\-]*|\[\d+\])+$")

ModbusType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                     "float32", "float64", "string"]
REGISTER_COUNT: dict[str, int] = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
                                  "int64": 4, "uint64": 4, "float32": 2, "float64": 4}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _envelope(self) -> PointBase:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class OpcUaPoint(PointBase):
    """A point read from an OPC UA node."""

    node: str = Field(min_length=1, description="NodeId string, e.g. ns=2;s=cdu1.supply_temperature")


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

    topic: str = Field(min_length=1)
    json_path: str | None = Field(default=None, description="$.a.b into a JSON payload; omit for plain numbers")
    timestamp_path: str | None = Field(default=None, description="$.path of an ISO 8601 or epoch source time")

    @field_validator("json_path", "timestamp_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not _JSON_PATH.match(v):
            raise ValueError(f"'{v}' is not a JSON path like $.a.b or $.a[0]")
        return v


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
                           description="directory of the store-and-forward spool (relative to the working directory)")
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


class AlarmsConfig(_Strict):
    """Alarm rules; every device also gets an offline alarm."""

    device_offline_delay_s: float = Field(default=10.0, ge=0, description="a device not connected this long alarms")
    device_offline_severity: Literal["low", "medium", "high", "critical"] = "high"
    evaluate_interval_s: float = Field(default=1.0, gt=0, le=60)
    limits: list[LimitAlarm] = Field(default_factory=list)


class HeatrecConfig(_Strict):
    """The whole plant configuration file."""

    plant: PlantConfig = PlantConfig()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    devices: list[Device] = Field(default_factory=list)
    simulation: SimulationConfig | None = None
    alarms: AlarmsConfig = AlarmsConfig()
    scada: ScadaConfig | None = None

    @model_validator(mode="after")
    def _unique_devices(self) -> HeatrecConfig:
        seen: set[str] = set()
        for d in self.devices:
            if d.id in seen:
                raise ValueError(f"device id '{d.id}' appears twice")
            seen.add(d.id)
        known = set(self.point_ids())
        for i, rule in enumerate(self.alarms.limits):
            if rule.point not in known:
                raise ValueError(f"alarms.limits[{i}].point: no point '{rule.point}' among the devices")
        return self

    def point_ids(self) -> list[str]:
        """Every full point id, `device.point`."""
        return [f"{d.id}.{p.id}" for d in self.devices for p in d.points]


def _expand_env(value: Any, path: str, source: str) -> Any:
    """Replace ${VAR} and ${VAR:-default} in strings so secrets can stay out of the file."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else k, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: {path}: environment variable {name} is not set "
                              f"(export it, or write ${{{name}:-default}})")
        return _ENV_REF.sub(sub, value)
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


def parse_config(data: dict[str, Any], source: str = "<config>") -> HeatrecConfig:
    """Validate an already-parsed TOML document."""
    data = _expand_env(data, "", source)
    try:
        return HeatrecConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc += ("protocol",)  # pydantic reports the device; the culprit is its protocol key
            lines.append(f"{source}: {_format_loc(loc)}: {_describe(e)}")
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
    return parse_config(data, str(p))
