"""The heatrec command line: help, check-config, and one-line errors with non-zero exit for bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.config import DatabaseConfig
from service.localservers import free_port
from tests.support import demo_config_text

ROOT = Path(__file__).resolve().parents[2]
HEATREC = [sys.executable, "-m", "service.cli"]


def heatrec(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEATREC, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("heatrec: error:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.integration  # heatrec as a child process
def test_help_lists_every_command() -> None:
    r = heatrec("--help")
    assert r.returncode == 0
    for cmd in ("demo", "run", "simulate", "check-config", "token"):
        assert cmd in r.stdout


@pytest.mark.integration  # heatrec as a child process
def test_check_config_demo_passes() -> None:
    r = heatrec("check-config", "config/demo.toml")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "3 devices" in r.stdout


@pytest.mark.integration  # heatrec as a child process
def test_check_config_unknown_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "config/demo.toml").read_text().replace('unit_id = 1\n', 'unit_id = 1\nunitid = 2\n', 1))
    r = heatrec("check-config", str(bad))
    assert r.returncode == 2
    assert f"{bad}: devices[1].unitid: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.integration  # heatrec as a child process
def test_run_with_missing_config() -> None:
    line = one_line_error(heatrec("run", "-c", "no/such.toml"))
    assert "file not found" in line


@pytest.mark.integration  # heatrec as a child process
def test_run_with_unreachable_database_runs_and_says_so_once(tmp_path: Path) -> None:
    """The plant does not need its database to start: it runs, says why once, and stops cleanly."""
    import httpx

    api_port = free_port()
    cfg = tmp_path / "plant.toml"
    # Monitoring from this host reads /metrics and the health's parts without a token ([api] monitoring_networks).
    cfg.write_text(f'[database]\nport = {free_port()}\nconnect_timeout_s = 1\n[api]\nport = {api_port}\n'
                   f'token_store = "{tmp_path}/tokens.json"\nmonitoring_networks = ["127.0.0.1"]\n'
                   f'[storage]\nspool_dir = "{tmp_path}/spool"\nretry_max_s = 0.5\n')
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*HEATREC, "run", "-c", str(cfg)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                text=True)
    try:
        deadline = time.monotonic() + 30
        failed = 0.0
        while failed < 4:  # several retries of the half-second backoff
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            try:
                metrics = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=2).text
                failed = next(float(ln.split()[1]) for ln in metrics.splitlines()
                              if ln.startswith("heatrec_database_failed_probes_total "))
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        health: dict[str, Any] = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=2).json()
        assert proc.poll() is None, log.read_text()
        db = health["components"]["database"]
        assert db["status"] == "degraded" and "ConnectionRefusedError" in db["detail"], db
        text = log.read_text()
        assert text.count("unavailable (ConnectionRefusedError") == 1, text  # logged once, however many retries
        assert "Traceback" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


@pytest.mark.integration  # heatrec as a child process
def test_run_with_api_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "plant.toml"
        cfg.write_text(f"[api]\nport = {port}\n")
        line = one_line_error(heatrec("run", "-c", str(cfg)))
    assert f"port {port} on 127.0.0.1 (HTTP API) is already in use" in line


@pytest.mark.integration  # heatrec as a child process
def test_demo_reports_missing_postgres_and_mosquitto(tmp_path: Path) -> None:
    cfg = tmp_path / "demo.toml"
    cfg.write_text(demo_config_text())
    line = one_line_error(heatrec("demo", "-c", str(cfg), "--var-dir", str(tmp_path / "var"),
                                  env={"HEATREC_PG_BIN": "/nonexistent/bin"}))
    assert "PostgreSQL 15 is not installed" in line and "make setup" in line
    assert not (tmp_path / "var" / "pg").exists()  # nothing half-started


def test_mosquitto_missing_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.localservers import LocalServerError, MosquittoServer

    monkeypatch.setenv("HEATREC_MOSQUITTO", "/nonexistent/mosquitto")
    with pytest.raises(LocalServerError, match=r"Mosquitto is not installed: run 'make setup'"):
        MosquittoServer(tmp_path, free_port(), "u", "p").start()


def test_token_create_prints_once_and_stores_hash(database: DatabaseConfig, tmp_path: Path) -> None:
    cfg = tmp_path / "plant.toml"
    cfg.write_text(f'[database]\nport = {database.port}\nname = "{database.name}"\npassword = "${{PW}}"\n'
                   f'[api]\ntoken_store = "{tmp_path}/tokens.json"\n')
    r = heatrec("token", "create", "-c", str(cfg), "--role", "operator", "--name", "alice",
                env={"PW": database.password or ""})
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("hr_") and len(token) > 40
    assert token not in r.stderr
    r2 = heatrec("token", "create", "-c", str(cfg), "--role", "superuser", "--name", "x")
    assert r2.returncode == 2 and "invalid choice" in r2.stderr

    env = {"PW": database.password or ""}
    listed = heatrec("token", "list", "-c", str(cfg), env=env)
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout and "operator" in listed.stdout and token not in listed.stdout
    revoked = heatrec("token", "revoke", "-c", str(cfg), "alice", env=env)
    assert revoked.returncode == 0 and "revoked 1 token" in revoked.stdout
    again = heatrec("token", "revoke", "-c", str(cfg), "alice", env=env)
    assert again.returncode == 2 and "no active token" in again.stderr
