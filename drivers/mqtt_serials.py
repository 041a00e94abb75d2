"""The meter serials the MQTT driver tracks, kept in a small local file so a restart checks against the same meter.

A device without a configured `serial` keeps the first serial its telegrams carry; from then on a telegram
from another meter is refused. The file is written atomically (service/private_files.py), and only when a
serial is first seen: never on the hot path.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from service.private_files import write_private

log = logging.getLogger("drivers.mqtt")


class SerialMemory(Protocol):
    """Where tracked serials outlive the process."""

    def get(self, device_id: str) -> str | None:
        """The serial tracked for a device, or None."""

    def remember(self, device_id: str, serial: str) -> None:
        """Keep a device's serial (the first one seen)."""


class SerialFile:
    """Tracked serials in a JSON file: {"device": {"serial": "...", "first_seen": "ISO time"}}."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._data: dict[str, dict[str, str]] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        if self._data is None:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._data = {str(k): v for k, v in raw.items() if isinstance(v, dict) and isinstance(v.get("serial"),
                                                                                                       str)}
            except FileNotFoundError:
                self._data = {}
            except (OSError, ValueError, AttributeError) as err:
                # Unreadable: start tracking afresh (each device keeps the next serial it sees), and say so.
                log.error("tracked meter serials %s unreadable (%s): tracking starts afresh", self.path, err)
                self._data = {}
        return self._data

    def get(self, device_id: str) -> str | None:
        """The serial tracked for a device, or None."""
        entry = self._load().get(device_id)
        return entry["serial"] if entry else None

    def remember(self, device_id: str, serial: str) -> None:
        """Keep a device's serial; the file is replaced atomically. An unwritable file is logged, not fatal."""
        data = self._load()
        data[device_id] = {"serial": serial, "first_seen": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.path, json.dumps(data, indent=2))
        except OSError as err:  # the serial is still checked in memory; only a restart would forget it
            log.error("tracked meter serial of %s not saved to %s: %s", device_id, self.path, err)
