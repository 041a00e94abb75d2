"""Configuration loading: good files pass, bad ones name the file, the field and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.config import ConfigError, ModbusDevice, load_config

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[[devices]]
id = "hp1"
protocol = "modbus"
endpoint = "127.0.0.1:5020"
[[devices.points]]
id = "supply_temperature"
address = 0
function = "input"
type = "int16"
scale = 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plant.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_demo_config_is_valid() -> None:
    cfg = load_config(ROOT / "config" / "demo.toml")
    ids = cfg.point_ids()
    assert "cdu1.secondary_supply_temperature" in ids
    assert "hp1.supply_temperature" in ids
    assert "meter1.energy" in ids
    assert {d.protocol for d in cfg.devices} == {"opcua", "modbus", "mqtt"}
    assert cfg.simulation is not None


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    dev = cfg.devices[0]
    assert isinstance(dev, ModbusDevice)
    assert dev.unit_id == 1 and dev.host_port == ("127.0.0.1", 5020)
    assert dev.points[0].scale == 0.1 and dev.points[0].register_count == 1


@pytest.mark.parametrize(("mutation", "expected"), [
    (("address = 0", "adress = 0"), "devices[0].points[0].adress: unknown key"),
    (("address = 0", 'address = "zero"'), "devices[0].points[0].address: Input should be a valid integer"),
    (('type = "int16"', 'type = "int12"'), "devices[0].points[0].type: Input should be"),
    (('protocol = "modbus"', 'protocol = "bacnet"'), "devices[0].protocol: protocol must be one of"),
    (('endpoint = "127.0.0.1:5020"', 'endpoint = "opc.tcp://x:1"'), "devices[0].endpoint:"),
    (('id = "hp1"', 'id = "HP 1"'), "devices[0].id: String should match pattern"),
    (('function = "input"', 'function = "coil"'), "devices[0].points[0]: function 'coil' holds single bits"),
])
def test_bad_field_is_named(tmp_path: Path, mutation: tuple[str, str], expected: str) -> None:
    path = write(tmp_path, MINIMAL.replace(*mutation))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(str(path) + ": ")
    assert expected in msg


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"devices\[0\]\.points\[0\]\.address: required key is missing"):
        load_config(write(tmp_path, MINIMAL.replace("address = 0", "")))


def test_envelope_min_above_max(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"min \(5\.0\) is greater than max \(1\.0\)"):
        load_config(write(tmp_path, MINIMAL + "min = 5\nmax = 1\n"))


def test_duplicate_ids(tmp_path: Path) -> None:
    dup_point = MINIMAL + '[[devices.points]]\nid = "supply_temperature"\naddress = 1\n'
    with pytest.raises(ConfigError, match="point id 'supply_temperature' appears twice"):
        load_config(write(tmp_path, dup_point))
    with pytest.raises(ConfigError, match="device id 'hp1' appears twice"):
        load_config(write(tmp_path, MINIMAL + MINIMAL))


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(write(tmp_path, "[[devices]\nid = 1"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL + '[database]\npassword = "${PLANT_DB_PW}"\n'
    monkeypatch.delenv("PLANT_DB_PW", raising=False)
    with pytest.raises(ConfigError, match=r"database\.password: environment variable PLANT_DB_PW is not set"):
        load_config(write(tmp_path, text))
    monkeypatch.setenv("PLANT_DB_PW", "s3cret")
    assert load_config(write(tmp_path, text)).database.password == "s3cret"
    with_default = MINIMAL + '[database]\npassword = "${UNSET_VAR_X:-fallback}"\n'
    monkeypatch.delenv("UNSET_VAR_X", raising=False)
    assert load_config(write(tmp_path, with_default)).database.password == "fallback"


def test_every_config_key_is_documented() -> None:
    from pydantic import BaseModel

    import service.config as c

    doc = (ROOT / "docs" / "CONFIG.md").read_text()
    # The sections live with their owners (drivers/config.py, simulators/config.py, service/*/config.py) and
    # service.config re-exports them: every model it names, plus every model the root model reaches.
    models = {m for m in vars(c).values() if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel}
    todo: list[type[BaseModel]] = [c.HeatrecConfig]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for info in model.model_fields.values():
            args = [info.annotation]
            while args:
                a = args.pop()
                if isinstance(a, type) and issubclass(a, BaseModel):
                    todo.append(a)
                args += list(getattr(a, "__args__", ()))
    models |= seen
    assert {m.__module__ for m in models} >= {"service.config", "drivers.config", "simulators.config"}

    def documented(name: str) -> bool:  # a key in a table, or a section heading like [api] / [[devices.points]]
        return any(form in doc for form in (f"`{name}`", f"[{name}]", f"[[{name}]]", f".{name}]"))

    missing = sorted({f"{m.__name__}.{name}" for m in models for name in m.model_fields if not documented(name)})
    assert missing == [], f"keys missing from docs/CONFIG.md: {missing}"
