"""`[[control.heat_pumps]] capacity_limit`: a writable point of the device that can take 100 % at once."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from service.config import ConfigError, parse_config

DEMO = tomllib.loads((Path(__file__).resolve().parents[2] / "config" / "demo.toml").read_text())


def with_limit(point: str = "hp1.capacity_limit", **point_changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEMO)
    data["control"]["heat_pumps"][0]["capacity_limit"] = point
    hp1 = next(d for d in data["devices"] if d["id"] == "hp1")
    next(p for p in hp1["points"] if p["id"] == "capacity_limit").update(point_changes)
    return data


def test_the_demo_heat_pump_has_the_point_and_the_loop_may_name_it() -> None:
    cfg = parse_config(with_limit(), "plant.toml")
    assert cfg.control is not None and cfg.control.heat_pumps[0].capacity_limit == "hp1.capacity_limit"
    assert ("control.heat_pumps[0].capacity_limit", "hp1.capacity_limit", True) in cfg.control.point_refs()
    plain = parse_config(copy.deepcopy(DEMO), "plant.toml")
    assert plain.control is not None and plain.control.heat_pumps[0].capacity_limit is None  # optional


@pytest.mark.parametrize(("point", "changes", "message"), [
    ("hp1.capacity_limt", {}, r"control\.heat_pumps\[0\]\.capacity_limit: no point 'hp1\.capacity_limt' .*"
                              r"did you mean 'hp1\.capacity_limit'"),
    ("hp1.heat_output", {}, r"control\.heat_pumps\[0\]\.capacity_limit: point 'hp1\.heat_output' is not writable"),
    ("hp1.capacity_limit", {"max": 90.0}, r"control\.heat_pumps\[0\]\.capacity_limit: .*must take 100 % at once"),
    ("hp1.capacity_limit", {"max_rate": 1.0}, r"control\.heat_pumps\[0\]\.capacity_limit: .*max_rate 1\.0"),
    ("hp1 capacity", {}, r"control\.heat_pumps\[0\]\.capacity_limit: String should match pattern"),
])
def test_a_bad_capacity_limit_names_the_field(point: str, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(with_limit(point, **changes), "plant.toml")
    assert "plant.toml" in str(err.value)
