"""What a first-day user sees when something is wrong: the cause, where, and what is valid instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, load_config
from tests.support import demo_config_text

ROOT = Path(__file__).resolve().parents[2]


def _demo_with(tmp_path: Path, old: str, new: str) -> Path:
    text = demo_config_text()
    assert old in text
    path = tmp_path / "plant.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_duplicate_device_id_is_reported_as_such(tmp_path: Path) -> None:
    # Finding: a second device "hp1" was reported as a control point missing from the devices.
    path = _demo_with(tmp_path, 'id = "meter1"\nprotocol = "mqtt"', 'id = "hp1"\nprotocol = "mqtt"')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: devices[2].id: device id 'hp1' appears twice (also devices[1])" in str(err.value)


def test_a_misspelt_point_reference_names_what_is_there(tmp_path: Path) -> None:
    path = _demo_with(tmp_path, 'point = "hp1.supply_temperature"', 'point = "hp1.supply_temprature"')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "alarms.limits[1].point: no point 'hp1.supply_temprature'" in msg
    assert "did you mean 'hp1.supply_temperature'?" in msg and "points of hp1: supply_temperature, " in msg
    path = _demo_with(tmp_path, 'point = "hp1.supply_temperature"', 'point = "hp9.supply_temperature"')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "no device 'hp9' (devices: cdu1, hp1, meter1)" in str(err.value)


@pytest.mark.integration  # heatrec as a child process
def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # `heatrec probe ... | head -1`: the reader is gone before heatrec writes; no traceback, SIGPIPE's status.
    path = tmp_path / "plant.toml"
    path.write_text(demo_config_text())
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "probe", "-c", str(path), "--wait", "0.5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.integration  # heatrec as a child process
def test_probe_reports_each_device_error_once_without_reconnect_talk(tmp_path: Path) -> None:
    path = tmp_path / "plant.toml"
    path.write_text(demo_config_text())
    r = subprocess.run([sys.executable, "-m", "service.cli", "probe", "-c", str(path), "--wait", "0.5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1  # nothing answers on these ports: every point BAD
    assert "backoff" not in r.stderr + r.stdout
    for device in ("cdu1", "hp1", "meter1"):
        assert r.stdout.count(f"error: {device}: ") == 1, r.stdout


@pytest.mark.integration  # heatrec as a child process
def test_help_names_the_password_variables() -> None:
    for cmd in (["run"], ["token", "create"], ["settle"], ["probe"]):
        r = subprocess.run([sys.executable, "-m", "service.cli", *cmd, "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=True)
        flat = " ".join(r.stdout.split())
        for var in ("HEATREC_DB_PASSWORD", "HEATREC_MQTT_PASSWORD", "HEATREC_SCADA_PASSWORD", "env_file"):
            assert var in flat, (cmd, var)
