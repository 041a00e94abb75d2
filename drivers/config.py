"""Point and device maps of the drivers: the `[[devices]]` and `[[devices.points]]` sections of a plant file.

The drivers own these models; service/config.py puts them into the whole file's model (HeatrecConfig)
and re-exports them, so `from service.config import ModbusDevice` still works.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from service.schema import ID_PATTERN, StrictModel

__all__ = ["MBUS_RECORDS", "MBUS_UNITS", "REGISTER_COUNT", "Device", "DeviceBase", "MbusDevice", "MbusPoint",
           "ModbusDevice", "ModbusPoint", "ModbusType", "MqttDevice", "MqttPoint", "OpcUaDevice", "OpcUaPoint",
           "PointBase"]

_JSON_PATH = re.compile(r"^\$(\.[A-Za-z_][A-Za-z0-9_\-]*|\[\d+\])+$")
MAX_CLOCK_SKEW_S = 31 * 86400.0  # a month; a gateway that buffers longer needs 0 (no check), set deliberately

ModbusType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                     "float32", "float64", "string"]
REGISTER_COUNT: dict[str, int] = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
                                  "int64": 4, "uint64": 4, "float32": 2, "float64": 4}


class PointBase(StrictModel):
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


class DeviceBase(StrictModel):
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
    trusted_certificates_dir: str | None = Field(
        default=None, description="server certificates (or their CAs) the driver trusts with a security policy; "
                                  "default <certificate_dir>/trusted")
    trusted_ca_file: str | None = Field(default=None, description="a PEM (or DER) file of CA or server "
                                                                   "certificates trusted besides that directory")
    rejected_certificates_dir: str | None = Field(
        default=None, description="where an untrusted server's certificate is written for review; "
                                  "default <certificate_dir>/rejected")
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
    max_clock_skew_s: float = Field(
        default=300.0, ge=0, le=MAX_CLOCK_SKEW_S,
        description="a telegram whose source time (timestamp_path) is further than this from the time it "
                    "arrives is refused: no sample, counted, logged once; 0 = trust any source time")
    serial: str | None = Field(default=None, min_length=1,
                               description="the meter's serial: telegrams carrying another (or none) are refused "
                                           "and raise the device's meter_serial alarm; unset = the first serial "
                                           "seen is kept and checked from then on")
    serial_path: str = Field(default="$.serial",
                             description="$.path of the serial in the device's JSON telegrams; \"\" = no "
                                         "serial check (a device that carries several meters)")
    points: list[MqttPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.port is None:
            raise ValueError(f"'{v}' is not an MQTT endpoint like mqtt://host:port or mqtts://host:port")
        return v

    @field_validator("serial_path")
    @classmethod
    def _serial_path(cls, v: str) -> str:
        if v and not _JSON_PATH.match(v):
            raise ValueError(f"'{v}' is not a JSON path like $.serial (or \"\" for no serial check)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> MqttDevice:
        self._check_points(self.points)
        if self.serial is not None and not self.serial_path:
            raise ValueError(f"serial '{self.serial}' needs serial_path (where the telegrams carry it)")
        return self

    def topic_filter(self, point: MqttPoint) -> str:
        """The point's topic as subscribed: {device} filled in, {point} as the single-level wildcard '+'."""
        return "/".join(self.id if lv == "{device}" else "+" if lv == "{point}" else lv
                        for lv in point.topic.split("/"))

    def topic_filters(self) -> list[str]:
        """Every distinct subscription filter of the device, in point order (also what its broker ACL grants)."""
        return list(dict.fromkeys(self.topic_filter(p) for p in self.points))


# M-Bus records a point can name, and the units each may be read in (the driver converts; drivers/mbus.py).
MbusRecord = Literal["energy", "volume", "power", "volume_flow", "flow_temperature", "return_temperature",
                     "temperature_difference", "on_time", "operating_time", "error_flags", "fabrication_number"]
MBUS_RECORDS: tuple[str, ...] = get_args(MbusRecord)
_ENERGY = ("Wh", "kWh", "MWh", "J", "kJ", "MJ", "GJ")
_TIME = ("s", "min", "h", "d")
MBUS_UNITS: dict[str, tuple[str, ...]] = {
    "energy": _ENERGY, "volume": ("m3", "l"), "power": ("W", "kW", "MW"), "volume_flow": ("m3/h", "l/h"),
    "flow_temperature": ("degC",), "return_temperature": ("degC",), "temperature_difference": ("K",),
    "on_time": _TIME, "operating_time": _TIME, "error_flags": ("",), "fabrication_number": ("",)}


class MbusPoint(PointBase):
    """A point taken from a data record of an M-Bus meter's telegram, named by its meaning, not its offset."""

    record: MbusRecord = Field(description="what the record measures, e.g. energy or flow_temperature")
    storage: int = Field(default=0, ge=0, le=2**31, description="storage number: 0 = the current value")
    tariff: int = Field(default=0, ge=0, le=255, description="tariff register: 0 = the total")
    subunit: int = Field(default=0, ge=0, le=255, description="device subunit (second energy register etc.)")
    function: Literal["instantaneous", "maximum", "minimum", "error"] = Field(
        default="instantaneous", description="the record's function field: value, maximum, minimum, error state")
    occurrence: int = Field(default=0, ge=0, le=63, description="the nth record that matches all of the above "
                                                                "(0 = the first)")

    @model_validator(mode="after")
    def _mbus(self) -> MbusPoint:
        if self.writable:
            raise ValueError("M-Bus points are read-only: a meter takes no writes")
        units = MBUS_UNITS[self.record]
        if self.unit not in units:
            raise ValueError(f"unit '{self.unit}' does not fit record '{self.record}' "
                             f"(one of: {', '.join(repr(u) for u in units)})")
        return self


class MbusDevice(DeviceBase):
    """One wired M-Bus meter behind a transparent TCP gateway or a serial master; meters on one bus share it."""

    protocol: Literal["mbus"]
    baudrate: Literal[300, 600, 1200, 2400, 4800, 9600, 19200, 38400] = Field(
        default=2400, description="serial masters only: the bus's baud rate")
    parity: Literal["even", "none", "odd"] = Field(default="even", description="serial masters only: 8 data bits, "
                                                                               "this parity, 1 stop bit")
    primary_address: int | None = Field(default=None, ge=0, le=250,
                                        description="the meter's primary address (0-250)")
    secondary_address: str | None = Field(default=None, pattern=r"^[0-9Ff*]{8}$",
                                          description="the meter's identification number, 8 digits (F or * = "
                                                      "any digit); selected before each read")
    retries: int = Field(default=2, ge=0, le=5, description="repeats of an unanswered or corrupted request "
                                                            "before the meter counts as failed")
    max_telegrams: int = Field(default=8, ge=1, le=64,
                               description="telegrams read per poll while the meter says more records follow")
    identification: str | None = Field(default=None, pattern=r"^[0-9]{8}$",
                                       description="the identification number of the meter installed; unset = "
                                                   "the first one read is kept; another one is a meter exchange")
    points: list[MbusPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v.startswith("/"):
            return v  # a serial master's tty, e.g. /dev/ttyUSB0
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in v:
            raise ValueError(f"'{v}' is neither an M-Bus gateway endpoint like host:port nor a serial device "
                             "like /dev/ttyUSB0")
        return v

    @property
    def serial_port(self) -> str | None:
        """The tty of a serial master, or None for a TCP gateway."""
        return self.endpoint if self.endpoint.startswith("/") else None

    @model_validator(mode="after")
    def _addressed(self) -> MbusDevice:
        self._check_points(self.points)
        if (self.primary_address is None) == (self.secondary_address is None):
            raise ValueError("give the meter's primary_address or its secondary_address (one of them)")
        return self

    @property
    def address_text(self) -> str:
        """How the meter is addressed, for messages."""
        if self.secondary_address is not None:
            return f"secondary {self.secondary_address}"
        return f"primary {self.primary_address}"


Device = Annotated[OpcUaDevice | ModbusDevice | MqttDevice | MbusDevice, Field(discriminator="protocol")]
