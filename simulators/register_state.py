"""The simulated meters' registers kept in a file, so they continue where they stopped, as real ones do.

A real energy register (a heat meter's GJ, a heat pump's kWh) never resets when the software reading
it restarts. The demo keeps the simulated registers in `var/demo`: they are loaded at start and
written after every model step, before any face can publish the new values, so a stored value is
never below one a driver has already read (a kill -9 loses at most the last step's increase).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from simulators.plant import PlantModel

log = logging.getLogger(__name__)
FORMAT = 1


def snapshot(model: PlantModel) -> dict[str, Any]:
    """The registers of every simulated meter and heat pump."""
    return {"format": FORMAT,
            "heat_meters": {mid: {"serial": m.serial, "energy_gj": m.energy_gj, "volume_m3": m.volume_m3}
                            for mid, m in model.heat_meters.items()},
            "heat_pumps": {hid: {"electric_energy_kwh": h.electric_energy_kwh}
                           for hid, h in model.heat_pumps.items()}}


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
        return None
    return float(raw)


def restore(model: PlantModel, data: dict[str, Any]) -> int:
    """Set the model's registers from a snapshot; unknown or bad entries are skipped. Returns how many."""
    n = 0
    for mid, raw in (data.get("heat_meters") or {}).items():
        meter = model.heat_meters.get(mid)
        if meter is None or not isinstance(raw, dict):
            continue
        energy, volume = _number(raw.get("energy_gj")), _number(raw.get("volume_m3"))
        if energy is not None and volume is not None:
            meter.energy_gj, meter.volume_m3 = energy, volume
            if isinstance(raw.get("serial"), str):
                meter.serial = raw["serial"]  # an exchanged meter stays exchanged
            n += 1
    for hid, raw in (data.get("heat_pumps") or {}).items():
        hp = model.heat_pumps.get(hid)
        kwh = _number(raw.get("electric_energy_kwh")) if isinstance(raw, dict) else None
        if hp is not None and kwh is not None:
            hp.electric_energy_kwh = kwh
            n += 1
    return n


class RegisterFile:
    """Load the registers at start, save them after each step (atomically: write, then rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._failed = False

    def load_into(self, model: PlantModel) -> int:
        """Restore what the file holds (nothing when absent); a damaged file is logged and ignored."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            log.warning("simulator registers: %s unreadable (%s); starting from the configured values",
                        self.path, err)
            return 0
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.warning("simulator registers: %s has an unknown format; starting from the configured values",
                        self.path)
            return 0
        n = restore(model, data)
        log.info("simulator registers: %d continued from %s", n, self.path)
        return n

    def save(self, model: PlantModel) -> None:
        """Write the current registers; a failure is logged once per spell, never raised."""
        try:
            self._tmp.write_text(json.dumps(snapshot(model)), encoding="utf-8")
            os.replace(self._tmp, self.path)
        except OSError as err:
            if not self._failed:
                log.warning("simulator registers: cannot write %s (%s)", self.path, err)
                self._failed = True
            return
        if self._failed:
            log.info("simulator registers: writing %s again", self.path)
            self._failed = False
