"""Typed plant configuration: the whole file's model, its loader, and the checks across sections.

Each section's models live with their owner and are re-exported here, so `from service.config import X`
keeps working for every model: the point and device maps in drivers/config.py, the simulated plant in
simulators/config.py, and `[database]`/`[storage]`, `[api]`, `[scada]`, `[alarms]`, `[accounting]`,
`[control]` in the `config` module of service/storage, api, scada, alarms, accounting and control.
What stays here: `[plant]`, the root model HeatrecConfig with the checks that reach across sections
(points named by alarms, accounting and control must exist), and the loader (env_file, ${VAR}, paths
relative to the file) that turns pydantic's locations into messages naming the file and the field.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

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
from service.accounting.config import (
    PACKAGED_RULES_DIR,
    AccountingConfig,
    AccountingHeatPump,
    AccountingMeter,
    Co2Factor,
    SupplyContract,
)
from service.alarms.config import AlarmsConfig, AlarmsMqttConfig, LimitAlarm, StateAlarm
from service.api.config import ApiConfig
from service.control.config import (
    ControlCdu,
    ControlConfig,
    ControlCurvePoint,
    ControlHeatPump,
    ControlPid,
    ControlStaging,
)
from service.dispatch.config import DispatchConfig
from service.errors import HeatrecError
from service.fleet_config import CentralConfig, UplinkConfig
from service.scada.config import ScadaConfig, ScadaPolicy, ScadaUser
from service.scada.sparkplug_config import SparkplugConfig, SparkplugPoint
from service.schema import ID_PATTERN, StrictModel
from service.storage.config import DatabaseConfig, StorageConfig
from simulators.config import SimCdu, SimHeatMeter, SimHeatPump, SimulationConfig

__all__ = [
    "ID_PATTERN", "PACKAGED_RULES_DIR", "PATH_KEYS", "REGISTER_COUNT",
    "AccountingConfig", "AccountingHeatPump", "AccountingMeter", "AlarmsConfig", "AlarmsMqttConfig", "ApiConfig",
    "CentralConfig", "Co2Factor", "ConfigError", "ControlCdu", "ControlConfig", "ControlCurvePoint", "ControlHeatPump",
    "ControlPid", "ControlStaging", "DatabaseConfig", "Device", "DeviceBase", "DispatchPoints",
    "HeatrecConfig", "LimitAlarm",
    "ModbusDevice", "ModbusPoint", "ModbusType", "MqttDevice", "MqttPoint", "OpcUaDevice", "OpcUaPoint", "PlantConfig",
    "PlantDispatch", "PointBase", "ScadaConfig", "ScadaPolicy", "ScadaUser", "SimCdu", "SimHeatMeter", "SimHeatPump",
    "SimulationConfig", "SparkplugConfig", "SparkplugPoint", "StateAlarm", "StorageConfig", "StrictModel",
    "SupplyContract", "UplinkConfig",
    "load_central_config", "load_config", "parse_config", "read_env_file",
]

# Keys holding a path: a relative one written in a config file means relative to that file's directory, so a
# plant's files travel with it and do not depend on where the service is started (systemd, containers).
PATH_KEYS = frozenset({"rules_dir", "spool_dir", "certificate_dir", "tls_ca_file", "tls_cert_file", "tls_key_file",
                       "env_file", "state_file", "token_store", "outbox_dir", "price_file",
                       "trusted_certificates_dir", "rejected_certificates_dir", "trusted_ca_file"})  # OPC UA trust
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(HeatrecError):
    """The configuration cannot be used; the message names the file and the field."""


class PlantConfig(StrictModel):
    """Plant identity."""

    name: str = "heat-recovery plant"
    timezone: str = "Europe/Copenhagen"


class DispatchPoints(StrictModel):
    """The measurements the dispatch task reads before each solve (full point ids, device.point)."""

    it_heat: list[str] = Field(min_length=1, description="points summed as the IT heat now, kW (e.g. each CDU's "
                                                         "heat_removed)")
    demand: list[str] = Field(default_factory=list,
                              description="points summed as the network's heat demand now, kW; empty = the network "
                                          "takes whatever the plant makes")
    store_state_of_charge: str | None = Field(default=None, description="the heat store's content as a share, "
                                                                        "0..1 (needs [dispatch.store])")
    outdoor_temperature: str | None = Field(default=None, description="outdoor temperature, °C; none = "
                                                                      "[control] outdoor_temperature")
    electric_power: dict[str, str] = Field(default_factory=dict,
                                           description="per dispatched heat pump id, its electrical power point, "
                                                       "kW: with [control] heat_output it calibrates the pump's "
                                                       "Carnot efficiency from history")


class PlantDispatch(DispatchConfig):
    """`[dispatch]` as the running service reads it: the plan's model plus when and from what it replans."""

    replan_s: float = Field(default=900.0, gt=0, le=3600, description="the plan is solved again this often")
    step_s: float = Field(default=900.0, gt=0, le=900,
                          description="how long one plan step lasts on the plant; 900 (15 minutes, the prices' "
                                      "interval) in operation. Shorter steps replay the price data from its first "
                                      "interval, one interval per step: a compressed day for tests and demos")
    points: DispatchPoints
    state_file: str = Field(default="var/dispatch-state.json",
                            description="whether an operator switched dispatch on or off, restored at start")
    history_days: float = Field(default=14.0, ge=0, le=60,
                                description="days of the plant's own history the forecasts and the COP are fitted "
                                            "from; 0 = persistence and the configured COP only")
    history_refresh_s: float = Field(default=3600.0, ge=60, description="the history is read and fitted again "
                                                                        "this often (and at start)")
    history_min_buckets: int = Field(default=192, ge=2, description="15-minute buckets of history a forecast needs "
                                                                    "(fewer: persistence)")
    cop_min_buckets: int = Field(default=16, ge=1, description="15-minute buckets a pump must have run in for its "
                                                               "calibration (fewer: the configured efficiency)")


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
    sparkplug: SparkplugConfig | None = None
    uplink: UplinkConfig | None = None  # a fleet site: batches to the central store (docs/FLEET.md)
    dispatch: PlantDispatch | None = None  # price-aware dispatch of the heat pumps (docs/DISPATCH.md)

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
        if self.sparkplug is not None:
            self._check_sparkplug(points)
        if self.dispatch is not None:
            self._check_dispatch(points)
        return self

    def _check_dispatch(self, points: dict[str, PointBase]) -> None:
        dispatch = self.dispatch
        assert dispatch is not None
        if self.control is None:
            raise ValueError("dispatch: needs a [control] section (the plan acts through the supply-temperature "
                             "controller)")
        pumps = [h.id for h in self.control.heat_pumps]
        for i, hp in enumerate(dispatch.heat_pumps):
            if hp.id not in pumps:
                raise ValueError(f"dispatch.heat_pumps[{i}].id: '{hp.id}' is not a [control] heat pump "
                                 f"(control.heat_pumps: {', '.join(pumps)})")
        if not dispatch.heat_pumps:
            raise ValueError("dispatch.heat_pumps: list at least one [control] heat pump for the plan to dispatch")
        refs = [(f"dispatch.points.it_heat[{i}]", p) for i, p in enumerate(dispatch.points.it_heat)]
        refs += [(f"dispatch.points.demand[{i}]", p) for i, p in enumerate(dispatch.points.demand)]
        for name in ("store_state_of_charge", "outdoor_temperature"):
            ref = getattr(dispatch.points, name)
            if ref is not None:
                refs.append((f"dispatch.points.{name}", ref))
        dispatched = [hp.id for hp in dispatch.heat_pumps]
        for pump, ref in dispatch.points.electric_power.items():
            if pump not in dispatched:
                raise ValueError(f"dispatch.points.electric_power.{pump}: not a dispatched heat pump "
                                 f"(dispatch.heat_pumps: {', '.join(dispatched)})")
            refs.append((f"dispatch.points.electric_power.{pump}", ref))
        for where, ref in refs:
            if ref not in points:
                raise ValueError(self.unknown_point(where, ref))
        if dispatch.points.store_state_of_charge is not None and dispatch.store is None:
            raise ValueError("dispatch.points.store_state_of_charge: there is no [dispatch.store] to read it for")
        if dispatch.points.outdoor_temperature is None and self.control.outdoor_temperature is None:
            raise ValueError("dispatch.points.outdoor_temperature: needed when [control] has no outdoor_temperature")

    def _check_sparkplug(self, points: dict[str, PointBase]) -> None:
        assert self.sparkplug is not None
        ids = {d.id for d in self.devices}
        for i, dev in enumerate(self.sparkplug.devices or []):
            if dev not in ids:
                raise ValueError(f"sparkplug.devices[{i}]: no device '{dev}' (devices: {', '.join(sorted(ids))})")
        for i, p in enumerate(self.sparkplug.points):
            point = points.get(p.point)
            if point is None:
                raise ValueError(self.unknown_point(f"sparkplug.points[{i}].point", p.point))
            if p.commandable and not point.writable:
                raise ValueError(f"sparkplug.points[{i}].commandable: point '{p.point}' is not writable")

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
            if hp.capacity_limit is not None:
                # Cooling first: releasing a pump's cap means writing 100 %, at once; an envelope that cannot take
                # it (or ramps it) would leave a cap on the pump when IT cooling needs it.
                cl = points[hp.capacity_limit]
                if (cl.max is not None and cl.max < 100) or cl.max_rate is not None:
                    raise ValueError(f"control.heat_pumps[{i}].capacity_limit: point '{hp.capacity_limit}' must "
                                     f"take 100 % at once (its max is {cl.max}, max_rate {cl.max_rate}): the "
                                     "controller releases the cap to 100 % whenever IT cooling may need the pump")

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


def load_central_config(path: str | Path) -> CentralConfig:
    """Read and validate central.toml (`heatrec central`), with the plant file's env_file, ${VAR} and paths."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found (pass the centre's config with -c FILE)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: TOML syntax error: {exc}") from None
    source, extra = str(p), None
    env_file = data.get("env_file")
    if isinstance(env_file, str) and env_file:
        extra = read_env_file(Path(env_file) if Path(env_file).is_absolute() else p.parent / env_file, source)
    data = _resolve_paths(_expand_env(data, "", source, extra), p.parent)
    try:
        return CentralConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{source}: {_format_loc(tuple(e['loc']))}: {_describe(e)}"
                                     for e in exc.errors())) from None
