"""`heatrec demo` as a user runs it: everything starts, live GOOD values from all three protocols,
SIGTERM leaves no process behind, and the next start reuses the data and the tokens."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import demo_config_text

ROOT = Path(__file__).resolve().parents[1]


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (our postgres and mosquitto do)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmd and Path(cmd.split(" ", 1)[0]).name in ("postgres", "mosquitto"):
                out.append(cmd)
    return out


def _wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.2)


def _start(cfg: Path, var: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service.cli", "demo", "-c", str(cfg), "--var-dir", str(var)],
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


@pytest.mark.integration
def test_demo_runs_all_protocols_and_stops_clean(shared_tmp_path: Path) -> None:
    tmp_path = shared_tmp_path  # the postgres/mosquitto users must reach var/
    cfg = tmp_path / "demo.toml"
    cfg.write_text(demo_config_text())
    var = tmp_path / "var"
    log = tmp_path / "demo.log"
    proc = _start(cfg, var, log)
    try:
        _wait(lambda: "heatrec demo is running" in log.read_text() or proc.poll() is not None, 120, "demo banner")
        assert proc.poll() is None, log.read_text()
        creds = json.loads((var / "credentials.json").read_text())
        assert oct((var / "credentials.json").stat().st_mode & 0o777) == "0o600"
        api = creds["endpoints"]["api"]
        headers = {"Authorization": f"Bearer {creds['tokens']['viewer']}"}

        def good_from_every_device() -> bool:
            pts = httpx.get(f"{api}/api/v1/points", headers=headers, timeout=5).json()["points"]
            return {p["device"] for p in pts if p["quality"] == "GOOD"} == {"cdu1", "hp1", "meter1"}

        _wait(good_from_every_device, 60, "GOOD values from cdu1 (OPC UA), hp1 (Modbus) and meter1 (MQTT)")
        assert _processes_using(var), "postgres and mosquitto should be running under the demo's var dir"
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text()
    assert _processes_using(var) == []  # no orphaned postgres or mosquitto

    # Second start: same data directory, same tokens, earlier samples still there.
    proc = _start(cfg, var, log)
    try:
        _wait(lambda: "heatrec demo is running" in log.read_text() or proc.poll() is not None, 120, "second start")
        assert proc.poll() is None, log.read_text()
        creds2 = json.loads((var / "credentials.json").read_text())
        assert creds2["tokens"] == creds["tokens"]
        r = httpx.get(f"{api}/api/v1/points", headers=headers, timeout=5)
        assert r.status_code == 200
    finally:
        assert _stop(proc) == 0
    assert _processes_using(var) == []
    assert (var / "pg" / "PG_VERSION").exists()
