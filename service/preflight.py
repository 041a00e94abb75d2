"""What `check-config` verifies of the files and directories `run` will use: readable files, writable state."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from service.config import ConfigError, HeatrecConfig


def _files(cfg: HeatrecConfig) -> Iterator[tuple[str, str]]:
    """(field path, file) for every file the service reads at start."""
    for key in ("tls_cert_file", "tls_key_file"):
        if (v := getattr(cfg.api, key)) is not None:
            yield f"api.{key}", v
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if (v := getattr(cfg.database, key)) is not None:
            yield f"database.{key}", v
    for i, d in enumerate(cfg.devices):
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if (v := getattr(d, key, None)) is not None:
                yield f"devices[{i}].{key}", v
    if cfg.alarms.mqtt is not None:
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if (v := getattr(cfg.alarms.mqtt, key, None)) is not None:
                yield f"alarms.mqtt.{key}", v


def _state_dirs(cfg: HeatrecConfig) -> Iterator[tuple[str, str]]:
    """(field path, directory) for every directory the service writes state to."""
    yield "storage.spool_dir", cfg.storage.spool_dir
    yield "api.token_store", str(Path(cfg.api.token_store).parent)
    for i, d in enumerate(cfg.devices):
        if getattr(d, "security_policy", "None") != "None":  # certificates are made only with a policy
            yield f"devices[{i}].certificate_dir", d.certificate_dir  # type: ignore[union-attr]
    if cfg.scada is not None:
        yield "scada.certificate_dir", cfg.scada.certificate_dir
    if cfg.control is not None:
        yield "control.state_file", str(Path(cfg.control.state_file).parent)


def _dir_problem(path: Path) -> str | None:
    """Why the service could not create or write `path`, or None."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "write to" if probe == path else f"create {path} in"
        return f"cannot {what} {probe} as this user (uid {os.getuid()})"
    return None


def check_paths(cfg: HeatrecConfig, source: str) -> None:
    """Raise ConfigError naming file and field for every unreadable file and unwritable state directory."""
    problems: list[str] = []
    for where, f in _files(cfg):
        p = Path(f)
        if not p.is_file():
            problems.append(f"{source}: {where}: {p} not found")
        elif not os.access(p, os.R_OK):
            problems.append(f"{source}: {where}: {p} is not readable by this user (uid {os.getuid()})")
    for where, d in _state_dirs(cfg):
        why = _dir_problem(Path(d))
        if why is not None:
            problems.append(f"{source}: {where}: {why} (relative defaults are relative to the working "
                            f"directory {Path.cwd()}; docs/CONFIG.md, 'Paths')")
    if problems:
        raise ConfigError("\n".join(problems))
