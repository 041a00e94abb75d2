"""The archetype plants in config/plants/: valid configs, device maps that match the simulators, own ports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.cli import main as heatrec
from service.config import load_config
from simulators.device_map import ARCHETYPES, device_entries, render_archetype

ROOT = Path(__file__).resolve().parents[2]
PLANTS = sorted((ROOT / "config" / "plants").glob("*.toml"))
DEMO_PORTS = {4840, 4841, 5020, 1883, 8000, 55432}


def test_every_archetype_has_a_file() -> None:
    assert {p.stem for p in PLANTS} == set(ARCHETYPES) >= {"dlc-direct", "aircooled-heatpump", "industrial"}


@pytest.mark.parametrize("path", PLANTS, ids=lambda p: p.stem)
def test_check_config_accepts_it(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert heatrec(["check-config", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("path", PLANTS, ids=lambda p: p.stem)
def test_file_is_up_to_date_and_its_devices_read_the_simulators(path: Path) -> None:
    assert path.read_text() == render_archetype(path.stem), "regenerate: python -m simulators.device_map"
    cfg = load_config(path)
    assert cfg.simulation is not None
    expected = [d["id"] for d in device_entries(cfg.simulation)]
    assert [d.id for d in cfg.devices] == expected


@pytest.mark.parametrize("path", PLANTS, ids=lambda p: p.stem)
def test_ports_do_not_clash_with_the_demo_or_each_other(path: Path) -> None:
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", path.read_text())]
    cfg = load_config(path)
    ports += [cfg.api.port, cfg.database.port]
    assert cfg.simulation is not None and cfg.simulation.control_port is not None
    ports.append(cfg.simulation.control_port)
    assert not set(ports) & DEMO_PORTS
    others = {int(p) for q in PLANTS if q != path for p in re.findall(r"127\.0\.0\.1:(\d+)", q.read_text())}
    assert not set(ports) & others


def test_the_plants_are_what_they_claim() -> None:
    dlc = load_config(ROOT / "config/plants/dlc-direct.toml").simulation
    air = load_config(ROOT / "config/plants/aircooled-heatpump.toml").simulation
    ind = load_config(ROOT / "config/plants/industrial.toml").simulation
    assert dlc and air and ind
    assert sum(c.it_load_kw for c in dlc.cdus) == pytest.approx(22_500)
    assert dlc.direct_exchange_kw > 0 and dlc.heat_pumps
    assert all(c.supply_temperature_setpoint + 10 >= 55 for c in dlc.cdus)  # DLC return 55-60 °C
    assert len(air.heat_pumps) == 9 and all(h.supply_setpoint == 75.0 for h in air.heat_pumps)
    assert all(c.supply_temperature_setpoint + 10 == 27 for c in air.cdus)
    assert not ind.cdus and not ind.heat_pumps and ind.surplus_heat_kw > 0
    assert any(m.protocol == "modbus" for m in dlc.heat_meters + ind.heat_meters)
