"""The [control] section: strict keys, consistent values, cross-references to points that exist and can be written."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from service.config import ConfigError, parse_config

DEMO = tomllib.loads((Path(__file__).resolve().parents[2] / "config" / "demo.toml").read_text())


def with_control(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEMO)
    data["control"].update(changes)
    return data


def test_the_demo_runs_the_loop() -> None:
    cfg = parse_config(copy.deepcopy(DEMO))
    assert cfg.control is not None
    assert cfg.control.supply_temperature == "meter1.flow_temperature"
    assert cfg.control.heat_pumps[0].heartbeat == "hp1.heartbeat"


@pytest.mark.parametrize(("changes", "message"), [
    ({"supply_temperature": "meter1.nothing"}, r"control\.supply_temperature: no point 'meter1\.nothing'"),
    ({"heat_pumps": [{"id": "hp1", "setpoint": "hp1.supply_temperature"}]},
     r"control\.heat_pumps\[0\]\.setpoint: point 'hp1\.supply_temperature' is not writable"),
    ({"setpoint_max": 90.0}, r"control\.heat_pumps\[0\]\.setpoint: .*exceeds the point's envelope"),
    ({"curve": [{"outdoor": 5.0, "supply": 70.0}, {"outdoor": 0.0, "supply": 75.0}]}, "strictly ascending"),
    ({"target": "fixed"}, "fixed_target"),
    ({"target_min": 90.0}, "target_min"),
    ({"safe_setpoint": 30.0}, "safe_setpoint"),
    ({"kp": 1.0}, r"control\.kp: unknown key"),
    ({"period_s": 0}, r"control\.period_s"),
    ({"cdus": [{"supply_temperature": "cdu1.secondary_supply_temperature"}]}, "allowable_max"),
])
def test_bad_control_sections_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(with_control(**changes), "plant.toml")
