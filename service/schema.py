"""The strict pydantic base and the id patterns every configuration model shares.

A core module on purpose: the service's sections (service/config.py and the `config` module of each
subsystem), the drivers' point and device maps (drivers/config.py) and the simulators' models
(simulators/config.py) all build on it, and drivers and simulators must not import each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# A device, point, meter, contract … id: lower case, digits and underscores, starting with a letter.
ID_PATTERN = r"^[a-z][a-z0-9_]*$"
# A full point id, device.point, as the alarm, accounting and control sections name points.
POINT_REF_PATTERN = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"


class StrictModel(BaseModel):
    """Base of every configuration model: unknown keys are errors, values are frozen and never coerced."""

    # Strict: a TOML string is never read as a number or a bool ("false" would be True).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
