"""CLI basics a first day trips over: --version, check-config with -c like every other command."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # heatrec as a child process

ROOT = Path(__file__).resolve().parents[2]


def heatrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)


def test_version() -> None:
    r = heatrec("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"heatrec {version('heatrec')}"


def test_check_config_takes_the_file_as_argument_or_with_c() -> None:
    for args in (("config/demo.toml",), ("-c", "config/demo.toml")):
        r = heatrec("check-config", *args)
        assert r.returncode == 0 and "config/demo.toml: OK" in r.stdout, r.stderr
    for args in ((), ("config/demo.toml", "-c", "config/demo.toml")):
        r = heatrec("check-config", *args)
        assert r.returncode == 2 and "give the config file once" in r.stderr and "Traceback" not in r.stderr


def test_config_types_are_strict(tmp_path: Path) -> None:
    # A quoted number or boolean is an error naming the field, never silently coerced ("false" became true).
    text = (ROOT / "config" / "demo.toml").read_text()
    cases = {"port = 55432": ('port = "55432"', "database.port"),
             "allow_anonymous = true": ('allow_anonymous = "false"', "scada.allow_anonymous")}
    for original, (quoted, field) in cases.items():
        assert original in text
        path = tmp_path / "plant.toml"
        path.write_text(text.replace(original, quoted, 1))
        r = heatrec("check-config", str(path))
        assert r.returncode == 2 and f"{path}: {field}:" in r.stderr, r.stderr
