"""Typed plant configuration: the whole file's model, its loader, and the checks across sections.

Each section's models live with their owner and are re-exported here, so `from service.config import X`
keeps working for every model: the point and device maps in drivers/config.py, the simulated plant in
simulators/config.py, `[alarms]` in service/alarms/config.py, `[control]` in service/control/config.py.
What stays here: the root model HeatrecConfig with the checks that reach across sections (points named
by alarms, accounting and control must exist), the small sections without a subsystem module of their
own (plant, database, storage, api, scada) and `[accounting]` (its default rules_dir is
PACKAGED_RULES_DIR, defined here next to PATH_KEYS), and the loader that turns pydantic's locations
into messages naming the file and the field. Over 400 lines for that reason: the loader and the root
model's checks belong together, and the sections still here are plain data.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

# Re-exported for the service's users: each section's models live with their owner (module docstring).
from drivers.config import (
    REGISTER_COUNT,
    Device,
    DeviceBase,
    ModbusDevice,
    ModbusPoint,
    ModbusType,
    MqttDevice,
    MqttPoint,
    OpcUaDevice,
    OpcUaPoint,
    PointBase,
)
from service.alarms.config import AlarmsConfig, AlarmsMqttConfig, LimitAlarm, StateAlarm
from service.control.config import (
    ControlCdu,
    ControlConfig,
    ControlCurvePoint,
    ControlHeatPump,
    ControlPid,
    ControlStaging,
)
from service.errors import HeatrecError
from service.schema import ID_PATTERN, POINT_REF_PATTERN, StrictModel
from simulators.config import SimCdu, SimHeatMeter, SimHeatPump, SimulationConfig

__all__ = [
    "ID_PATTERN", "PACKAGED_RULES_DIR", "PATH_KEYS", "REGISTER_COUNT",
    "AccountingConfig", "AccountingHeatPump", "AccountingMeter", "AlarmsConfig", "AlarmsMqttConfig", "ApiConfig",
    "Co2Factor", "ConfigError", "ControlCdu", "ControlConfig", "ControlCurvePoint", "ControlHeatPump",
    "ControlPid", "ControlStaging", "DatabaseConfig", "Device", "DeviceBase", "HeatrecConfig", "LimitAlarm",
    "ModbusDevice", "ModbusPoint", "ModbusType", "MqttDevice", "MqttPoint", "OpcUaDevice", "OpcUaPoint",
    "PlantConfig", "PointBase", "ScadaConfig", "ScadaPolicy", "ScadaUser", "SimCdu", "SimHeatMeter",
    "SimHeatPump", "SimulationConfig", "StateAlarm", "StorageConfig", "StrictModel", "SupplyContract",
    "load_config", "parse_config", "read_env_file",
]

# The dated rule sets heatrec ships (Danish surplus-heat rules); a plant may point rules_dir elsewhere.
PACKAGED_RULES_DIR = Path(__file__).resolve().parent / "accounting" / "rulesets"
# Keys holding a path: a relative one written in a config file means relative to that file's directory, so a
# plant's files travel with it and do not depend on where the service is started (systemd, containers).
PATH_KEYS = frozenset({"rules_dir", "spool_dir", "certificate_dir", "tls_ca_file", "tls_cert_file", "tls_key_file",
                       "env_file", "state_file"})
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(HeatrecError):
    """The configuration cannot be used; the message names the file and the field."""


class PlantConfig(StrictModel):
    """Plant identity."""

    name: str = "heat-recovery plant"
    timezone: str = "Europe/Copenhagen"


class DatabaseConfig(StrictModel):
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


class StorageConfig(StrictModel):
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


_POINT_REF = POINT_REF_PATTERN


class AccountingMeter(StrictModel):
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


class AccountingHeatPump(StrictModel):
    """A heat pump's electricity register, for the 3 x electricity deduction, COP and PUE."""

    id: str = Field(pattern=ID_PATTERN)
    electricity_point: str = Field(pattern=_POINT_REF, description="electricity register, kWh, kind counter")
    register_wrap_kwh: float | None = Field(default=None, gt=0, description="roll-over of the register")
    max_power_kw: float = Field(gt=0, description="largest plausible electric power; larger steps are faults")
    gap_s: float = Field(default=900.0, gt=0, description="readings further apart than this make a gap")


class SupplyContract(StrictModel):
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


class Co2Factor(StrictModel):
    """Avoided CO2 per kWh of heat in a year; years between are interpolated linearly."""

    year: int = Field(ge=1990, le=2100)
    kg_per_kwh: float = Field(ge=0)
    source: str = Field(min_length=1)


_BR18_DH = [Co2Factor(year=2023, kg_per_kwh=0.105, source="BR18 annex 2 table 8, district heating 2023"),
            Co2Factor(year=2025, kg_per_kwh=0.0878, source="BR18 annex 2 table 8, district heating 2025"),
            Co2Factor(year=2030, kg_per_kwh=0.0713, source="BR18 annex 2 table 8, district heating 2030")]


class AccountingConfig(StrictModel):
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


class HeatrecConfig(StrictModel):
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
