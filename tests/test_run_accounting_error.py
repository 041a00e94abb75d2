"""`heatrec run` starts even when billing is misconfigured: the plant comes first, the error is loud."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.localservers import free_port
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]


def break_rules_dir(path: Path, nowhere: Path) -> int:
    """Point the plant's rules_dir at a missing folder and give the API and SCADA free ports; the API port."""
    port = free_port()
    text = path.read_text().replace("[accounting]\n", f'[accounting]\nrules_dir = "{nowhere}"\n', 1)
    text = re.sub(r"(\[api\]\nhost = \"127\.0\.0\.1\"\nport = )\d+", rf"\g<1>{port}", text, count=1)
    text = re.sub(r"opc\.tcp://127\.0\.0\.1:4840\"", f'opc.tcp://127.0.0.1:{free_port()}"', text, count=1)
    assert str(nowhere) in text and f"port = {port}" in text
    path.write_text(text)
    return port


def heatrec(*args: str, log: Path | None = None) -> subprocess.CompletedProcess[str] | subprocess.Popen[bytes]:
    """A heatrec command: run to its end, or (with a log) started in the background."""
    cmd = [sys.executable, "-m", "service.cli", *args]
    if log is None:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)


async def test_run_starts_and_logs_a_missing_rule_set(plant_config_file: Path, tmp_path: Path) -> None:
    port = break_rules_dir(plant_config_file, tmp_path / "nothing")
    check = heatrec("check-config", str(plant_config_file))
    assert isinstance(check, subprocess.CompletedProcess)
    assert check.returncode == 2 and "rule set not found" in check.stderr  # check-config stays strict
    log = tmp_path / "run.log"
    proc = heatrec("run", "-c", str(plant_config_file), log=log)
    assert isinstance(proc, subprocess.Popen)
    try:
        async def healthy() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"http://127.0.0.1:{port}/api/v1/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(healthy, 60, "the service answering although its rule set is missing")
        output = log.read_text()
        assert "accounting configuration:" in output and "rule set not found" in output
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
