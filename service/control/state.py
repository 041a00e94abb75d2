"""The operator requests in force (mode, override, manual setpoint, their expiry), kept in a small local file so a
restart restores them; a local file, not the database, because control must not depend on the database."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from service.control.model import Mode

log = logging.getLogger(__name__)


@dataclass
class RequestsInForce:
    """What operators asked that still holds; times are wall-clock UTC."""

    mode: Mode
    override: float | None = None
    override_until: datetime | None = None
    override_by: str = ""
    manual_setpoint: float | None = None
    manual_until: datetime | None = None
    manual_by: str = ""


def save(path: Path, state: RequestsInForce) -> None:
    """Write atomically (temp file, fsync, rename): a crash leaves the old state or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(state).items()}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load(path: Path) -> RequestsInForce | None:
    """The saved state, or None when there is none or it cannot be read (logged: start from the config)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in ("override_until", "manual_until"):
            if data.get(key) is not None:
                data[key] = datetime.fromisoformat(data[key])
        state = RequestsInForce(**data)
        if state.mode not in ("auto", "manual", "off"):
            raise ValueError(f"mode {state.mode!r}")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        log.error("control state %s unreadable (%s): starting from the configuration's initial_mode", path, err)
        return None
