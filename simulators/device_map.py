"""The heatrec `[[devices]]` entries that read a simulated plant, and the archetype plant files built from them.

The archetype configs in config/plants/ are generated here, so their device maps always match
what the simulators serve (a test checks the files against `device_entries`). Regenerate with
`.venv/bin/python -m simulators.device_map`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from simulators.cdu_opcua import CDU_VARIABLES
from simulators.config import SimCdu, SimHeatMeter, SimHeatPump, SimHeatStore, SimulationConfig

PLANTS_DIR = Path(__file__).resolve().parent.parent / "config" / "plants"
# heatrec's own broker identity (read access to the meter topics only); the gateway has another (docs/DEPLOY.md).
HEATREC_MQTT_USER = {"username": "heatrec", "password": "${HEATREC_MQTT_PASSWORD:-}"}
_UNITS = {"°C": "degC", "l/min": "L/min", "kW": "kW", "%": "%"}


def cdu_device(c: SimCdu) -> dict[str, Any]:
    """An OPC UA device with every CDU variable."""
    points = []
    for var in CDU_VARIABLES:
        p: dict[str, Any] = {"id": var.name, "unit": _UNITS[var.unit.display]}
        if var.writable:
            p |= {"kind": "setpoint", "writable": True, "min": c.setpoint_min, "max": c.setpoint_max}
        points.append(p | {"node": f"ns=2;s={c.id}.{var.name}"})
    return {"id": c.id, "protocol": "opcua", "endpoint": c.endpoint, "poll_interval_s": 1.0, "points": points}


def heat_pump_device(h: SimHeatPump) -> dict[str, Any]:
    """A Modbus device with the heat pump register map of docs/simulators.md."""
    def ir(pid: str, unit: str, address: int, typ: str, scale: float = 1.0, **extra: Any) -> dict[str, Any]:
        p = {"id": pid, "unit": unit, **extra, "address": address, "function": "input", "type": typ}
        return p | ({"scale": scale} if scale != 1.0 else {})

    points = [
        ir("supply_temperature", "degC", 0, "int16", 0.1),
        ir("return_temperature", "degC", 1, "int16", 0.1),
        ir("source_inlet_temperature", "degC", 2, "int16", 0.1),
        ir("source_outlet_temperature", "degC", 3, "int16", 0.1),
        ir("cop", "", 4, "uint16", 0.01),
        ir("status", "", 5, "uint16", kind="status"),
        ir("outdoor_temperature", "degC", 6, "int16", 0.1),
        ir("heat_output", "kW", 10, "float32"),
        ir("electric_power", "kW", 12, "float32"),
        ir("electric_energy", "kWh", 14, "uint32", 0.1, kind="counter"),
        {"id": "supply_setpoint", "unit": "degC", "kind": "setpoint", "writable": True, "min": h.setpoint_min,
         "max": h.setpoint_max, "address": 0, "function": "holding", "type": "int16", "scale": 0.1},
        {"id": "sg_ready", "unit": "", "kind": "setpoint", "writable": True, "min": 0.0, "max": 3.0,
         "address": 1, "function": "holding", "type": "uint16"},
        {"id": "heartbeat", "unit": "", "kind": "setpoint", "writable": True, "min": 0.0, "max": 65535.0,
         "address": 2, "function": "holding", "type": "uint16"},
    ]
    return {"id": h.id, "protocol": "modbus", "endpoint": h.endpoint, "unit_id": h.unit_id,
            "poll_interval_s": 1.0, "points": points}


def meter_device(m: SimHeatMeter, sim: SimulationConfig) -> dict[str, Any]:
    """An MQTT device on the gateway's telegram, a Modbus device on the meter's register map, or an M-Bus meter."""
    if m.protocol == "mbus":
        records = [("energy", "energy", "GJ", "counter"), ("volume", "volume", "m3", "counter"),
                   ("power", "power", "kW", None), ("flow", "volume_flow", "m3/h", None),
                   ("flow_temperature", "flow_temperature", "degC", None),
                   ("return_temperature", "return_temperature", "degC", None),
                   ("error_flags", "error_flags", "", "status")]
        mbus_points = [{"id": pid, "record": record, "unit": unit} | ({"kind": kind} if kind else {})
                       for pid, record, unit, kind in records]
        # The meter's identification number is checked from the telegrams' header: another is a meter exchange.
        return {"id": m.id, "protocol": "mbus", "endpoint": m.endpoint, "primary_address": m.primary_address,
                "identification": m.serial, "poll_interval_s": 1.0, "points": mbus_points}
    if m.protocol == "modbus":
        def reg(pid: str, unit: str, address: int, typ: str, scale: float = 1.0, **extra: Any) -> dict[str, Any]:
            p = {"id": pid, "unit": unit, **extra, "address": address, "function": "input", "type": typ}
            return p | ({"scale": scale} if scale != 1.0 else {})

        points = [
            reg("energy", "GJ", 0, "uint32", 0.001, kind="counter"),
            reg("volume", "m3", 2, "uint32", 0.01, kind="counter"),
            reg("power", "kW", 4, "float32"),
            reg("flow", "m3/h", 6, "float32"),
            reg("flow_temperature", "degC", 8, "int16", 0.01),
            reg("return_temperature", "degC", 9, "int16", 0.01),
            reg("serial", "", 10, "uint32", kind="status"),
        ]
        return {"id": m.id, "protocol": "modbus", "endpoint": m.endpoint, "unit_id": m.unit_id,
                "poll_interval_s": 1.0, "points": points}
    fields = [("energy", "GJ", "energy_gj", "counter"), ("volume", "m3", "volume_m3", "counter"),
              ("power", "kW", "power_kw", None), ("flow", "m3/h", "flow_m3h", None),
              ("flow_temperature", "degC", "flow_temperature_c", None),
              ("return_temperature", "degC", "return_temperature_c", None)]
    mqtt_points = []
    for pid, unit, key, kind in fields:
        p: dict[str, Any] = {"id": pid, "unit": unit}
        if kind:
            p["kind"] = kind
        mqtt_points.append(p | {"topic": m.topic, "json_path": f"$.{key}", "timestamp_path": "$.time"})
    # heatrec subscribes with its own identity, not the gateway's; telegrams of another meter are refused.
    return {"id": m.id, "protocol": "mqtt", "endpoint": sim.mqtt_broker, **HEATREC_MQTT_USER, "serial": m.serial,
            "points": mqtt_points}


def heat_store_device(s: SimHeatStore) -> dict[str, Any]:
    """A Modbus device with the heat store's register map (docs/simulators.md)."""
    def ir(pid: str, unit: str, address: int, typ: str, scale: float = 1.0) -> dict[str, Any]:
        p = {"id": pid, "unit": unit, "address": address, "function": "input", "type": typ}
        return p | ({"scale": scale} if scale != 1.0 else {})

    points = [ir("state_of_charge", "", 0, "uint16", 0.0001), ir("temperature", "degC", 1, "int16", 0.1),
              ir("content", "kWh", 2, "float32"), ir("charge", "kW", 4, "float32"),
              ir("discharge", "kW", 6, "float32"), ir("loss", "kW", 8, "float32")]
    return {"id": s.id, "protocol": "modbus", "endpoint": s.endpoint, "unit_id": s.unit_id,
            "poll_interval_s": 1.0, "points": points}


def device_entries(sim: SimulationConfig) -> list[dict[str, Any]]:
    """Every `[[devices]]` entry that reads this simulated plant."""
    return ([cdu_device(c) for c in sim.cdus] + [heat_pump_device(h) for h in sim.heat_pumps]
            + [meter_device(m, sim) for m in sim.heat_meters]
            + ([heat_store_device(sim.heat_store)] if sim.heat_store is not None else []))


# --- the archetype plants ---------------------------------------------------------------------

def _hp(i: int, port: int, **keys: Any) -> dict[str, Any]:
    return {"id": f"hp{i}", "endpoint": f"127.0.0.1:{port}", **keys}


def _control(n_pumps: int, capacity_kw: float, cdus: list[str], curve: list[tuple[float, float]],
             lead_s: float, **keys: Any) -> dict[str, Any]:
    """A [control] section: the meter's flow temperature on the curve, every pump staged by SG-Ready."""
    return {
        "supply_temperature": "meter1.flow_temperature", "outdoor_temperature": "hp1.outdoor_temperature",
        "feedforward_lead_s": lead_s, **keys,
        "curve": [{"outdoor": o, "supply": t} for o, t in curve],
        "heat_pumps": [{"id": f"hp{i}", "setpoint": f"hp{i}.supply_setpoint", "sg_ready": f"hp{i}.sg_ready",
                        "heartbeat": f"hp{i}.heartbeat", "status": f"hp{i}.status",
                        "heat_output": f"hp{i}.heat_output", "capacity_kw": capacity_kw}
                       for i in range(1, n_pumps + 1)],
        "cdus": [{"supply_temperature": f"{c}.secondary_supply_temperature",
                  "allowable_max": f"{c}.supply_temperature_allowable_max"} for c in cdus],
    }


# The simulated M-Bus gateway's identity: it may publish its meters' topics, nothing else.
_MQTT_AUTH = {"mqtt_username": "mbus-gateway", "mqtt_password": "${HEATREC_MQTT_GATEWAY_PASSWORD:-}"}


def _scada(name: str, port: int) -> dict[str, Any]:
    """A [scada] section like the demo's: anonymous read-only browsing also without security ("None"); the
    operator user, whose password `heatrec demo` makes, logs in over a signed channel from a trusted client."""
    return {"endpoint": f"opc.tcp://127.0.0.1:{port}", "allow_anonymous": True,
            "certificate_dir": f"../../var/{name}/pki/scada",
            "security_policies": ["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
                                  "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt"],
            "users": [{"username": "scada", "password": "${HEATREC_SCADA_PASSWORD:-}", "role": "operator"}]}


def _meter_limits(meters: list[str], low_c: float) -> list[dict[str, Any]]:
    """Per billing meter: telegrams missing or invalid, and the network supply too cold for the customers."""
    out: list[dict[str, Any]] = []
    for m in meters:
        out.append({"point": f"{m}.power", "quality": True, "severity": "medium",
                    "message": f"heat meter {m}: readings missing or invalid (billing estimates the gap)"})
        out.append({"point": f"{m}.flow_temperature", "low": low_c, "deadband": 1.0, "on_delay_s": 60.0,
                    "severity": "high", "message": f"network supply at {m} below {low_c} °C"})
    return out


def _cdu_limits(cdus: list[str], allowable_max: float) -> list[dict[str, Any]]:
    """IT cooling first: a CDU supply above its allowable maximum is critical."""
    return [{"point": f"{c}.secondary_supply_temperature", "high": allowable_max, "deadband": 0.5,
             "on_delay_s": 5.0, "severity": "critical", "message": f"{c} supply above its allowable maximum"}
            for c in cdus]


def _accounting(meters: list[tuple[str, str, float, float]], pumps: list[tuple[str, float]],
                contract: dict[str, Any]) -> dict[str, Any]:
    """An [accounting] section: meters (id, serial, qp, max kW), heat pumps (id, max kW), one contract."""
    return {
        "meters": [{"id": m, "serial": serial, "energy_point": f"{m}.energy", "flow_point": f"{m}.flow",
                    "flow_temperature_point": f"{m}.flow_temperature",
                    "return_temperature_point": f"{m}.return_temperature", "mid_class": 2, "qp_m3h": qp,
                    "qi_m3h": qp / 100, "delta_theta_min_k": 3,
                    "register_wrap_gj": 4294967.296,  # uint32 MJ, as the simulated meters count
                    "max_power_kw": kw} for m, serial, qp, kw in meters],
        "heat_pumps": [{"id": h, "electricity_point": f"{h}.electric_energy",
                        "register_wrap_kwh": 429496729.6,  # uint32 at 0.1 kWh
                        "max_power_kw": kw} for h, kw in pumps],
        "contracts": [{"meters": [m for m, *_ in meters], "heat_pumps": [h for h, _ in pumps], **contract}],
    }


ARCHETYPES: dict[str, dict[str, Any]] = {
    "dlc-direct": {
        "sizing": ("Dry coolers sized for the summer case, heat recovery taking the rest: the network's summer base"
                   " load (15 %, 4.5 MW) takes what the exchanger and the heat pumps make; the dry coolers reject"
                   " the other 18 MW at 25 °C outdoors (less on hotter days)."),
        "comment": "atNorth DEN01-like: 22.5 MW of direct-liquid-cooled IT at 50/60 °C. A direct heat exchanger "
                   "passes up to 12 MW straight to district heating; three heat pumps boost the rest to 75 °C.",
        "plant": "dlc-direct (atNorth DEN01-like)", "api_port": 8100, "db_port": 55532,
        "simulation": {
            "seed": 11, "outdoor_temperature": 2.0, "mqtt_broker": "mqtt://127.0.0.1:1983", **_MQTT_AUTH,
            "dh_design_demand_kw": 30000.0, "direct_exchange_kw": 12000.0, "direct_exchange_approach_k": 3.0,
            "pipe_loss_fraction": 0.01, "control_port": 8180,
            "dry_cooler_capacity_kw": 18000.0, "dry_cooler_design_outdoor_temperature": 25.0,
            "dry_cooler_design_loop_temperature": 60.0,
            "cdus": [{"id": f"cdu{i}", "endpoint": f"opc.tcp://127.0.0.1:{4940 + i}", "it_load_kw": 5625.0,
                      "supply_temperature_setpoint": 50.0, "supply_temperature_allowable_max": 52.0,
                      "setpoint_min": 40.0, "setpoint_max": 55.0} for i in range(1, 5)],
            "heat_pumps": [_hp(i, 5119 + i, capacity_kw=4500.0, carnot_efficiency=0.55, supply_setpoint=75.0,
                               time_constant_s=120.0, dead_time_s=30.0, min_load_fraction=0.2,
                               trip_temperature=88.0) for i in range(1, 4)],
            "heat_meters": [
                {"id": "meter1", "serial": "72000001", "topic": "mbus/heatmeter/72000001"},
                {"id": "meter2", "protocol": "modbus", "endpoint": "127.0.0.1:5130", "serial": "72000002"},
            ],
        },
        # The exchanger's 55 °C water mixes with the boosted water: a 4th-generation curve the pumps can hold.
        # meter2 (Modbus) measures the same mixed supply as meter1 (MQTT): the steering input's cross-check.
        "control": _control(3, 4500.0, [f"cdu{i}" for i in range(1, 5)], [(-12.0, 66.0), (15.0, 56.0)], 150.0,
                            target_min=55.0, target_max=75.0, safe_setpoint=75.0,
                            supply_temperature_check="meter2.flow_temperature",
                            supply_temperature_check_band_k=3.0, supply_temperature_check_delay_s=10.0,
                            staging={"direct_source_temperature": "cdu1.secondary_return_temperature",
                                     "direct_approach_k": 5.0}),
        "scada_port": 4940,
        "limits": _cdu_limits([f"cdu{i}" for i in range(1, 5)], 52.0) + _meter_limits(["meter1", "meter2"], 52.0),
        "accounting": _accounting(
            [("meter1", "72000001", 400.0, 25000.0), ("meter2", "72000002", 400.0, 25000.0)],
            [(f"hp{i}", 3000.0) for i in range(1, 4)],
            {"id": "den01_supply", "supplier": "DLC data centre A/S", "utility": "Fjernvarme (DEN01-like)",
             "capacity_mw": 22.5, "agreed_price_dkk_per_gj": 60.0, "substitution_price_dkk_per_gj": 95.0,
             "cost_based_price_dkk_per_gj": 55.0, "electricity_based_process": True, "heat_pump_lifted": True}),
    },
    "aircooled-heatpump": {
        "sizing": ("Dry coolers for the summer case: the network's summer base load (15 %, 3.75 MW) leaves 11 MW of"
                   " the 15 MW to reject; 12 MW at 20 °C outdoors with the loops returning at 27 °C. Above that"
                   " the air is too close to 27 °C water: on a 24 °C day they take 5 MW and the heat pumps carry"
                   " the rest."),
        "comment": "Meta Odense-like: air-cooled halls give 27 °C cooling water; nine heat pumps lift it "
                   "to 75 °C for a network returning at 35-40 °C.",
        "plant": "aircooled-heatpump (Meta Odense-like)", "api_port": 8200, "db_port": 55632,
        "simulation": {
            "seed": 21, "outdoor_temperature": 0.0, "mqtt_broker": "mqtt://127.0.0.1:2083", **_MQTT_AUTH,
            "dh_design_demand_kw": 25000.0, "pipe_loss_fraction": 0.01, "control_port": 8280,
            "dry_cooler_capacity_kw": 12000.0, "dry_cooler_design_outdoor_temperature": 20.0,
            "dry_cooler_design_loop_temperature": 27.0,
            "cdus": [{"id": f"loop{i}", "endpoint": f"opc.tcp://127.0.0.1:{5040 + i}", "it_load_kw": 5000.0,
                      "supply_temperature_setpoint": 17.0, "supply_temperature_allowable_max": 20.0,
                      "setpoint_min": 12.0, "setpoint_max": 22.0} for i in range(1, 4)],
            "heat_pumps": [_hp(i, 5219 + i, capacity_kw=2400.0, carnot_efficiency=0.5, supply_setpoint=75.0,
                               time_constant_s=90.0, dead_time_s=20.0, min_load_fraction=0.25,
                               trip_temperature=85.0) for i in range(1, 10)],
            "heat_meters": [{"id": "meter1", "serial": "73000001", "topic": "mbus/heatmeter/73000001"}],
        },
        "control": _control(9, 2400.0, [f"loop{i}" for i in range(1, 4)], [(-12.0, 80.0), (15.0, 65.0)], 110.0,
                            target_min=60.0, target_max=80.0, safe_setpoint=75.0),
        "scada_port": 5040,
        "limits": _cdu_limits([f"loop{i}" for i in range(1, 4)], 20.0) + _meter_limits(["meter1"], 57.0),
        "accounting": _accounting(
            [("meter1", "73000001", 600.0, 35000.0)], [(f"hp{i}", 1500.0) for i in range(1, 10)],
            {"id": "odense_supply", "supplier": "Air-cooled data centre ApS", "utility": "Fjernvarme (Odense-like)",
             "capacity_mw": 15.0, "agreed_price_dkk_per_gj": 40.0, "substitution_price_dkk_per_gj": 90.0,
             "cost_based_price_dkk_per_gj": 70.0, "electricity_based_process": True, "heat_pump_lifted": True}),
    },
    "industrial": {
        "sizing": ("Dry coolers for the whole surplus (45 MW at 25 °C outdoors): the kiln must be cooled whatever the "
                   "network takes (its summer base load is 9 MW)."),
        "comment": "Aalborg Portland-like: high-temperature industrial surplus heat (no CDU, no heat pump) "
                   "exchanged directly into the network; dry coolers take what the network cannot.",
        "plant": "industrial (Aalborg Portland-like)", "api_port": 8300, "db_port": 55732,
        "simulation": {
            "seed": 31, "outdoor_temperature": -2.0, "mqtt_broker": "mqtt://127.0.0.1:3083", **_MQTT_AUTH,
            "dh_design_demand_kw": 60000.0, "surplus_heat_kw": 45000.0, "surplus_heat_temperature": 95.0,
            "direct_exchange_kw": 50000.0, "direct_exchange_approach_k": 5.0, "pipe_loss_fraction": 0.02,
            "control_port": 8380,
            "dry_cooler_capacity_kw": 45000.0, "dry_cooler_design_outdoor_temperature": 25.0,
            "dry_cooler_design_loop_temperature": 95.0,
            "heat_meters": [
                # The billing meter on wired M-Bus behind a TCP gateway (docs/MBUS.md).
                {"id": "meter1", "protocol": "mbus", "endpoint": "127.0.0.1:5330", "primary_address": 1,
                 "serial": "74000001"},
                {"id": "meter2", "serial": "74000002", "topic": "mbus/heatmeter/74000002"},
            ],
        },
        # No [control]: nothing here for heatrec to steer (the kiln's heat and the exchanger are the process's).
        "scada_port": 5340,
        "limits": _meter_limits(["meter1", "meter2"], 70.0),
        "accounting": _accounting(
            [("meter1", "74000001", 1000.0, 60000.0), ("meter2", "74000002", 1000.0, 60000.0)], [],
            {"id": "aalborg_supply", "supplier": "Cement works A/S", "utility": "Fjernvarme (Aalborg-like)",
             "capacity_mw": 45.0, "agreed_price_dkk_per_gj": 45.0, "substitution_price_dkk_per_gj": 80.0,
             "cost_based_price_dkk_per_gj": 40.0}),
    },
}


def _toml_list(v: Any) -> str:
    """A scalar, or a list of scalars."""
    return "[" + ", ".join(_toml_value(x) for x in v) + "]" if isinstance(v, list) else _toml_value(v)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {v!r} as TOML")


def _table(lines: list[str], header: str, table: dict[str, Any]) -> None:
    """One table: its scalar keys, then its sub-tables and arrays of tables (nested headers)."""
    lines.append(header)
    subs = {k: v for k, v in table.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    for k, v in table.items():
        if k not in subs and k not in tables:
            lines.append(f"{k} = {_toml_list(v)}")
    name = header.strip("[]")
    for k, sub in tables.items():
        lines.append("")
        _table(lines, f"[{name}.{k}]", sub)
    for k, items in subs.items():
        for item in items:
            lines.append("")
            _table(lines, f"[[{name}.{k}]]", item)


def render_archetype(name: str) -> str:
    """The full heatrec config of one archetype plant."""
    a = ARCHETYPES[name]
    sim = SimulationConfig.model_validate(a["simulation"])
    lines = [f"# {name}: {a['comment']}",
             "# GENERATED by `.venv/bin/python -m simulators.device_map`; edit ARCHETYPES there, not here.",
             f"# Run: heatrec demo -c config/plants/{name}.toml  (everything, data in var/{name}/; docs/simulators.md)",
             f"# Passwords: `heatrec demo` writes var/{name}/heatrec.env, so every heatrec command finds them.",
             *textwrap.wrap(a["sizing"], 116, initial_indent="# ", subsequent_indent="# "),
             f'env_file = "../../var/{name}/heatrec.env"', ""]
    _table(lines, "[plant]", {"name": a["plant"]})
    lines.append("")
    _table(lines, "[database]", {"host": "127.0.0.1", "port": a["db_port"], "name": "heatrec", "user": "heatrec",
                                 "password": "${HEATREC_DB_PASSWORD:-}"})
    lines.append("")
    # The token store beside the demo's other files, so `heatrec token … -c` and the running plant share it.
    _table(lines, "[api]", {"host": "127.0.0.1", "port": a["api_port"],
                            "token_store": f"../../var/{name}/tokens.json"})
    for dev in device_entries(sim):
        lines.append("")
        _table(lines, "[[devices]]", dev)
    lines.append("")
    _table(lines, "[scada]", _scada(name, a["scada_port"]))
    alarms: dict[str, Any] = {"device_offline_delay_s": 10.0, "limits": a["limits"]}
    if sim.heat_pumps:
        # Device-state alarms on every heat pump's status word (bit 1 trip, bit 2 watchdog fallback).
        alarms["states"] = heat_pump_state_alarms([h.id for h in sim.heat_pumps])
    lines.append("")
    _table(lines, "[alarms]", alarms)
    lines.append("")
    _table(lines, "[accounting]", a["accounting"])
    if "control" in a:
        lines.append("")
        _table(lines, "[control]", a["control"])
    lines.append("")
    _table(lines, "[simulation]", a["simulation"])
    return "\n".join(lines) + "\n"


def heat_pump_state_alarms(pumps: list[str]) -> list[dict[str, Any]]:
    """The alarms a plant engineer expects of a heat pump's status word: trip and watchdog fallback."""
    out: list[dict[str, Any]] = []
    for hp in pumps:
        out.append({"point": f"{hp}.status", "name": "trip", "bit": 1, "on_delay_s": 2.0, "severity": "high",
                    "message": f"heat pump {hp} tripped (fault)"})
        out.append({"point": f"{hp}.status", "name": "watchdog_fallback", "bit": 2, "on_delay_s": 5.0,
                    "severity": "medium", "message": f"heat pump {hp} on its local setpoint: heatrec heartbeats "
                                                     "missing"})
    return out


def main() -> None:
    """Write every archetype to config/plants/."""
    PLANTS_DIR.mkdir(parents=True, exist_ok=True)
    for name in ARCHETYPES:
        (PLANTS_DIR / f"{name}.toml").write_text(render_archetype(name), encoding="utf-8")
        print(f"wrote config/plants/{name}.toml")


if __name__ == "__main__":
    main()
