"""The simulators' exception root."""

from __future__ import annotations

from service.errors import HeatrecError


class SimulatorError(HeatrecError):
    """A simulator cannot start or run as configured; the message says which face and why."""


class PortInUseError(SimulatorError):
    """A listening port is taken by another process."""

    def __init__(self, port: int, owner: str) -> None:
        super().__init__(f"port {port} for {owner} is already in use")
        self.port = port
        self.owner = owner
