"""Paths written in a config file are relative to the file, env_file feeds ${VAR}, the rule sets ship inside."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.accounting.rules import load_rules
from service.config import PACKAGED_RULES_DIR, ConfigError, load_config

PLANT = """env_file = "secrets.env"

[database]
password = "${PLANT_DB_PW}"

[storage]
spool_dir = "spool"

[accounting]
rules_dir = "rules"

[[devices]]
id = "m1"
protocol = "mqtt"
endpoint = "mqtt://127.0.0.1:1883"
password = "${PLANT_MQTT_PW:-none}"
tls_ca_file = "/etc/ssl/ca.pem"
points = [{ id = "energy", kind = "counter", topic = "m/1", json_path = "$.e" }]
"""


def _plant(tmp_path: Path, env: str | None) -> Path:
    d = tmp_path / "etc" / "plant"
    d.mkdir(parents=True)
    (d / "plant.toml").write_text(PLANT)
    if env is not None:
        (d / "secrets.env").write_text(env)
    return d / "plant.toml"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _plant(tmp_path, "# plant secrets\nPLANT_DB_PW='s3cret'\nexport PLANT_MQTT_PW=\"mq\"\n\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLANT_DB_PW", raising=False)
    monkeypatch.delenv("PLANT_MQTT_PW", raising=False)
    cfg = load_config(Path("etc/plant/plant.toml"))
    assert cfg.storage.spool_dir == str(Path("etc/plant/spool"))
    assert cfg.accounting is not None and cfg.accounting.rules_dir == str(Path("etc/plant/rules"))
    assert cfg.devices[0].tls_ca_file == "/etc/ssl/ca.pem"  # absolute stays as written
    assert cfg.database.password == "s3cret"
    assert cfg.devices[0].password == "mq"
    # The process environment wins over the file (systemd's Environment= beside EnvironmentFile=).
    monkeypatch.setenv("PLANT_DB_PW", "from-env")
    assert load_config(path).database.password == "from-env"


def test_defaults_stay_relative_to_the_working_directory_and_rules_ship_inside(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[accounting]\n")
    cfg = load_config(path)
    assert cfg.storage.spool_dir == "var/spool"  # state: where the service runs (StateDirectory)
    assert cfg.accounting is not None and Path(cfg.accounting.rules_dir) == PACKAGED_RULES_DIR
    assert load_rules(cfg.accounting.rules_dir, "dk_surplus_heat").periods  # found from any working directory


def test_missing_env_file_warns_and_unset_variable_says_where_to_set_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = _plant(tmp_path, None)
    monkeypatch.delenv("PLANT_DB_PW", raising=False)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as err:
        load_config(path)
    assert "secrets.env not found" in caplog.text
    assert f"{path}: database.password: environment variable PLANT_DB_PW is not set" in str(err.value)
    assert "env_file" in str(err.value)


def test_malformed_env_file_line_names_file_and_line(tmp_path: Path) -> None:
    path = _plant(tmp_path, "PLANT_DB_PW=x\nthis is not a pair\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path.parent / 'secrets.env'}:2: expected KEY=VALUE" in str(err.value)


def test_check_config_finds_missing_files_and_unwritable_state(tmp_path: Path) -> None:
    """What `run` would trip over later is reported now, every item with its field."""
    from service.preflight import check_paths

    (tmp_path / "afile").write_text("")
    path = tmp_path / "plant.toml"
    path.write_text('[storage]\nspool_dir = "afile/spool"\n\n[api]\ntls_cert_file = "certs/api.pem"\n'
                    'tls_key_file = "certs/api.key"\n')
    with pytest.raises(ConfigError) as err:
        check_paths(load_config(path), str(path))
    lines = str(err.value).split("\n")
    assert lines[0] == f"{path}: api.tls_cert_file: {tmp_path / 'certs/api.pem'} not found"
    assert lines[1] == f"{path}: api.tls_key_file: {tmp_path / 'certs/api.key'} not found"
    assert lines[2].startswith(f"{path}: storage.spool_dir: {tmp_path / 'afile'} is not a directory")
    path.write_text('[storage]\nspool_dir = "state/spool"\n')
    check_paths(load_config(path), str(path))  # a directory the service may create is fine
