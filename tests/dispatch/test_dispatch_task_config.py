"""`[dispatch]` in the plant file: optional, strict, and checked against `[control]` and the devices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import ConfigError, load_config
from tests.support import demo_config_text

DISPATCH = """
[dispatch]
price_file = "prices.json"
tariffs = "dk1_10kv_illustrative"
heat_price_dkk_per_mwh = "300"
dry_cooler_capacity_kw = 400.0
source_temperature = 35.0
sink_temperature = 65.0

[[dispatch.heat_pumps]]
id = "{pump}"
capacity_kw = 1200.0

[dispatch.points]
it_heat = ["{it_heat}"]
"""


def plant(tmp_path: Path, pump: str = "hp1", it_heat: str = "cdu1.heat_removed", control: bool = True) -> Path:
    text = demo_config_text()
    if not control:
        text = re.sub(r"(?s)# --- Supply-temperature control.*?(?=# --- The simulated plant)", "", text)
        text = re.sub(r"(?s)\[\[alarms\.states\]\].*?(?=# --- Heat accounting)", "", text)
    path = tmp_path / "plant.toml"
    path.write_text(text + DISPATCH.format(pump=pump, it_heat=it_heat))
    return path


def test_dispatch_is_optional_and_loads_with_paths_next_to_the_file(tmp_path: Path) -> None:
    assert load_config(plant_without(tmp_path)).dispatch is None
    cfg = load_config(plant(tmp_path))
    assert cfg.dispatch is not None and cfg.dispatch.replan_s == 900 and cfg.dispatch.step_s == 900
    assert cfg.dispatch.price_file == str(tmp_path / "prices.json"), "relative to the plant file"
    assert cfg.dispatch.enabled is False


def plant_without(tmp_path: Path) -> Path:
    path = tmp_path / "bare.toml"
    path.write_text(demo_config_text())
    return path


def test_a_heat_pump_must_be_a_control_heat_pump(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dispatch\.heat_pumps\[0\]\.id: 'hp9' is not a \[control\] heat pump"):
        load_config(plant(tmp_path, pump="hp9"))


def test_points_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dispatch\.points\.it_heat\[0\]: no point 'cdu1\.heat_remove'.*did you "
                                          r"mean 'cdu1\.heat_removed'"):
        load_config(plant(tmp_path, it_heat="cdu1.heat_remove"))


def test_dispatch_needs_control(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dispatch: needs a \[control\] section"):
        load_config(plant(tmp_path, control=False))


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = plant(tmp_path)
    path.write_text(path.read_text().replace("[dispatch]\n", "[dispatch]\nreplan_every = 5\n"))
    with pytest.raises(ConfigError, match=r"dispatch\.replan_every"):
        load_config(path)
