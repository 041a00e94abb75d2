"""Production deploy files: compose stack, non-root image, systemd unit."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compose_stack_has_timescaledb_mosquitto_grafana_heatrec() -> None:
    import yaml
    stack = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = stack["services"]
    assert set(services) == {"timescaledb", "mosquitto", "grafana", "heatrec"}
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    for svc in services.values():  # published only on loopback; a TLS proxy decides what is exposed
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    # The operator makes the Mosquitto password file and the plant's config (from deploy/plant.example.toml).
    made_on_site = {"./mosquitto/passwd", "./plant.toml"}
    assert (ROOT / "deploy" / "plant.example.toml").is_file()
    for svc in services.values():
        for mount in svc.get("volumes", []):
            src = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if src.startswith("./") and src not in made_on_site:
                assert (ROOT / "deploy" / src).exists(), f"compose mounts missing {src}"


def test_image_runs_as_non_root() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0"))


def test_systemd_unit_runs_heatrec_unprivileged() -> None:
    unit = (ROOT / "deploy" / "systemd" / "heatrec.service").read_text()
    assert "User=heatrec" in unit and "ExecStart=/opt/heatrec/.venv/bin/heatrec run -c " in unit
    # Its working directory is its StateDirectory: the one place ProtectSystem=strict leaves writable.
    assert "WorkingDirectory=/var/lib/heatrec" in unit and "StateDirectory=heatrec" in unit
    assert "ProtectSystem=strict" in unit and "ReadWritePaths=" not in unit
