"""Every archetype plant runs end to end with the one command docs/simulators.md gives: all three at once, in a
scratch copy of the checkout's config/, each for 30 s with every point GOOD and no alarm standing; then the
CLI commands of the docs against each running plant, finding the passwords through the plant's env_file."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from service.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PLANTS = sorted(p.stem for p in (ROOT / "config" / "plants").glob("*.toml"))
RUN_FOR_S = 30.0  # many polls and telegrams of every device (1-5 s each), six times the 5 s stale bound


def documented_command() -> list[str]:
    """The archetype command of docs/simulators.md, as words, with <name> where the plant goes."""
    doc = (ROOT / "docs" / "simulators.md").read_text()
    m = re.search(r"^(heatrec demo -c config/plants/<name>\.toml)\s*(#.*)?$", doc, re.M)
    assert m, "docs/simulators.md should show `heatrec demo -c config/plants/<name>.toml` in a code block"
    return shlex.split(m.group(1))


@dataclass
class Plant:
    """One archetype started by the documented command, and what the test saw of it."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    points: int
    good_since: float | None = None
    seen: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _scratch_checkout(tmp_path: Path) -> Path:
    """config/ copied as it is in the checkout; the plants' relative paths (../../var/<name>) land in here."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path


def _heatrec(words: list[str]) -> list[str]:
    """The documented `heatrec ...` words as this interpreter runs them."""
    assert words[0] == "heatrec"
    return [sys.executable, "-m", "service.cli", *words[1:]]


def _all_good(p: Plant, api: str, token: str) -> bool:
    r = httpx.get(f"{api}/api/v1/points", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    pts = r.json()["points"]
    bad = [f"{x['id']}={x['quality']}" for x in pts if x["quality"] != "GOOD"]
    p.seen = bad
    return len(pts) == p.points and not bad


@pytest.mark.integration
def test_every_archetype_runs_a_minute_all_good_and_the_cli_works_against_it(shared_tmp_path: Path) -> None:
    tmp_path = shared_tmp_path  # postgres and mosquitto must reach var/ below it
    work = _scratch_checkout(tmp_path)
    template = documented_command()
    env = os.environ.copy()
    for var in ("HEATREC_DB_PASSWORD", "HEATREC_MQTT_PASSWORD", "HEATREC_SCADA_PASSWORD"):
        env.pop(var, None)  # what the CLI needs must come from the plant's env_file, as for a user
    env["PYTHONPATH"] = str(ROOT)
    plants: list[Plant] = []
    try:
        for name in PLANTS:
            words = [w.replace("<name>", name) for w in template]
            log = tmp_path / f"{name}.log"
            proc = subprocess.Popen(_heatrec(words), cwd=work, env=env, stdout=open(log, "wb"),
                                    stderr=subprocess.STDOUT)
            cfg = load_config(ROOT / "config" / "plants" / f"{name}.toml")
            plants.append(Plant(name, proc, log, sum(len(d.points) for d in cfg.devices)))

        deadline = time.monotonic() + 180
        creds: dict[str, dict[str, str]] = {}
        while len(creds) < len(plants):
            for p in plants:
                assert p.proc.poll() is None, f"{p.name} exited:\n{p.text()}"
                if p.name not in creds and "heatrec demo is running" in p.text():
                    data = json.loads((work / "var" / p.name / "credentials.json").read_text())
                    creds[p.name] = {"api": data["endpoints"]["api"], "token": data["tokens"]["viewer"]}
            assert time.monotonic() < deadline, f"not all started: {[p.name for p in plants if p.name not in creds]}"
            time.sleep(0.5)

        # Every point GOOD, then GOOD at every look for a whole minute.
        deadline = time.monotonic() + 120 + RUN_FOR_S
        while not all(p.good_since is not None and time.monotonic() - p.good_since >= RUN_FOR_S for p in plants):
            for p in plants:
                assert p.proc.poll() is None, f"{p.name} exited:\n{p.text()}"
                good = _all_good(p, creds[p.name]["api"], creds[p.name]["token"])
                if p.good_since is None and good:
                    p.good_since = time.monotonic()
                assert good or p.good_since is None, f"{p.name}: points left GOOD during the minute: {p.seen}"
            assert time.monotonic() < deadline, {p.name: p.seen for p in plants}
            time.sleep(2.0)

        for p in plants:
            api, headers = creds[p.name]["api"], {"Authorization": f"Bearer {creds[p.name]['token']}"}
            alarms = httpx.get(f"{api}/api/v1/alarms", headers=headers, timeout=10).json()["alarms"]
            standing = [a["id"] for a in alarms if a["state"] != "normal"]
            assert standing == [], f"{p.name}: alarms standing in normal operation: {standing}"
            cfg = f"config/plants/{p.name}.toml"
            # The CLI as docs show it, in the checkout, with nothing exported: env_file carries the passwords.
            probe = subprocess.run(_heatrec(["heatrec", "probe", "-c", cfg, "--json"]), cwd=work, env=env,
                                   capture_output=True, text=True, timeout=60, check=False)
            assert probe.returncode == 0, probe.stdout + probe.stderr
            assert {r["quality"] for r in json.loads(probe.stdout)} == {"GOOD"}
            month = datetime.now(UTC).strftime("%Y-%m")
            settle = subprocess.run(_heatrec(["heatrec", "settle", "-c", cfg, "--period", month, "--json"]),
                                    cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False)
            assert settle.returncode == 0, settle.stdout + settle.stderr
            out = json.loads(settle.stdout)
            assert out["settlements"] and out["energy_gj"]["total"] > 0, settle.stdout  # the minute's heat, metered
            tokens = subprocess.run(_heatrec(["heatrec", "token", "list", "-c", cfg]), cwd=work, env=env,
                                    capture_output=True, text=True, timeout=60, check=False)
            assert tokens.returncode == 0 and "demo-viewer" in tokens.stdout, tokens.stdout + tokens.stderr
    finally:
        for p in plants:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in plants:
            try:
                rc = p.proc.wait(90)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                rc = p.proc.wait(10)
            assert rc == 0, f"{p.name} did not stop cleanly:\n{p.text()[-3000:]}"
