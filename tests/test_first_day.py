"""The README's first day, run as written: the demo's banner and status line as the README shows them, then every
command block of the quick start and of the CLI section, in a scratch copy of the checkout (ports moved to free
ones, nothing exported), with the outputs the README describes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from service.localservers import free_port
from tests.support import DEMO_PORTS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def fenced_blocks(path: Path) -> list[str]:
    """The text of every ``` block of a Markdown file, in order."""
    return [m.group(1) for m in re.finditer(r"^```[a-z]*\n(.*?)^```$", path.read_text(), re.M | re.S)]


def block(starting: str) -> str:
    """The README block whose first line starts so (there must be exactly one)."""
    found = [b for b in fenced_blocks(README) if b.startswith(starting)]
    assert len(found) == 1, f"README should have one block starting {starting!r}"
    return found[0]


def _move_ports(text: str, ports: dict[str, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"(?<=[:= ]){old}(?=\D|$)", str(new), text, flags=re.M)
    return text


def _scratch(tmp_path: Path, ports: dict[str, int]) -> Path:
    """config/ and .venv of the checkout in a fresh directory, the demo's ports moved in its config."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    demo = tmp_path / "config" / "demo.toml"
    demo.write_text(_move_ports(demo.read_text(), ports))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def _line_pattern(line: str) -> str:
    """A README output line as a regex: `…` and numbers stand for whatever the run prints there."""
    parts = re.split(r"(…|\d+)", line)
    return "".join(".+?" if p == "…" else r"\d+" if p.isdigit() else re.escape(p) for p in parts)


def _sh(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_make_demo_runs_what_the_readme_names() -> None:
    recipe = re.search(r"^demo: setup\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and recipe.group(1) == "$(VENV)/bin/heatrec demo"
    assert "make demo" in block("make demo")


@pytest.mark.integration
def test_the_readme_first_day_as_written(shared_tmp_path: Path) -> None:
    tmp_path = shared_tmp_path  # postgres and mosquitto must reach var/ below it
    ports = {str(p): free_port() for p in sorted(DEMO_PORTS)}
    work = _scratch(tmp_path, ports)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATREC_")}
    log = tmp_path / "demo.log"
    # What `make demo` runs once setup is done (test above), in the scratch checkout.
    proc = subprocess.Popen([str(work / ".venv" / "bin" / "heatrec"), "demo"], cwd=work, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        banner = _move_ports(block("heatrec demo is running"), ports).rstrip("\n").split("\n")
        status = banner.pop()
        assert status.startswith("status: ") and banner.pop() == ""
        deadline = time.monotonic() + 180
        while not re.search(_line_pattern(status), log.read_text(errors="replace")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no status line like {status!r}:\n{log.read_text()}"
            time.sleep(0.5)
        printed = log.read_text(errors="replace").split("\n")
        start = next(i for i, line in enumerate(printed) if line.startswith("heatrec demo is running"))
        for want, got in zip(banner, printed[start:start + len(banner)], strict=True):
            assert re.fullmatch(_line_pattern(want), got), f"README shows {want!r}, the demo prints {got!r}"
        # Status: the README's point count is the demo's, all GOOD.
        live = re.search(r"status: (\d+) points live \((\d+) GOOD\)", "\n".join(printed))
        assert live and live.group(1) == live.group(2) == re.search(r"status: (\d+)", status).group(1)  # type: ignore[union-attr]

        # "Look at the live plant"
        r = _sh(_move_ports(block("curl -s -H \"Authorization: Bearer $(jq"), ports), work, env)
        assert r.returncode == 0, r.stderr
        points = json.loads(r.stdout)["points"]
        assert {p["device"] for p in points} == {"cdu1", "hp1", "meter1"}

        # Raise the target as an operator: the answer, the status and the audit say what the README says.
        commands = _move_ports(block("OP=$(jq"), ports).replace("\\\n", " ").strip().split("\n")
        r = _sh("\n".join(c + ("\necho '<<>>'" if c.startswith("curl") else "") for c in commands), work, env)
        assert r.returncode == 0, r.stderr
        put, get, audit = (json.loads(x) for x in r.stdout.split("<<>>\n")[:3])
        assert put["override"] == put["target_requested"] == 73.5 and put["target_source"] == "override"
        assert get["override"] == 73.5
        assert any(e["target"] == "control.supply_temperature_target" and e["requested"] == 73.5
                   and e["outcome"] == "accepted" and e["principal"] == "demo-operator"
                   for e in audit["entries"]), audit

        # The CLI against the running demo, nothing exported: the passwords come from the config's env_file.
        for line in block(".venv/bin/heatrec probe").strip().split("\n"):
            r = _sh(line, work, env)
            assert r.returncode == 0, (line, r.stdout, r.stderr)
            assert "Not authorized" not in r.stdout + r.stderr and "password" not in r.stderr, (line, r.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(90)
    assert rc == 0, log.read_text()[-3000:]
