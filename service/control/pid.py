"""PID with derivative on the filtered measurement, back-calculation anti-windup and bumpless tracking."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PidGains:
    """Gains in the ideal (ISA) form: u = ff + Kp·(e + I/Ti - Td·dy/dt)."""

    kp: float
    ti_s: float | None
    td_s: float = 0.0
    derivative_filter: float = 8.0
    tracking_time_s: float | None = None


class Pid:
    """One PID; `update` proposes an output, `track` tells it what was really applied."""

    def __init__(self, gains: PidGains) -> None:
        self.gains = gains
        self.integral = 0.0  # in output units (°C), so re-tuning Kp does not bump the output
        self._d_state = 0.0  # filtered derivative term, output units
        self._last_pv: float | None = None
        self._p = 0.0
        self._ff = 0.0
        g = gains
        if g.tracking_time_s is not None:
            self._tt = g.tracking_time_s
        elif g.ti_s is not None:
            self._tt = math.sqrt(g.ti_s * g.td_s) if g.td_s > 0 else g.ti_s
        else:
            self._tt = 1.0

    def update(self, setpoint: float, measurement: float, dt: float, feedforward: float = 0.0) -> float:
        """The unconstrained output for this cycle (call `track` with the applied output afterwards)."""
        g = self.gains
        error = setpoint - measurement
        self._p = g.kp * error
        self._ff = feedforward
        if g.td_s > 0 and self._last_pv is not None and dt > 0:
            # Derivative on the measurement (no kick on target steps), first-order filter Td/N.
            tf = g.td_s / g.derivative_filter
            alpha = dt / (tf + dt)
            raw = -g.kp * g.td_s * (measurement - self._last_pv) / dt
            self._d_state += alpha * (raw - self._d_state)
        self._last_pv = measurement
        if g.ti_s is not None and dt > 0:
            self.integral += g.kp * error * dt / g.ti_s
        return self._ff + self._p + self.integral + self._d_state

    def track(self, proposed: float, applied: float, dt: float) -> None:
        """Back-calculation: bleed the integral toward what the actuator really got (anti-windup)."""
        if self.gains.ti_s is None or dt <= 0:
            return
        self.integral += (applied - proposed) * min(dt / self._tt, 1.0)

    def reset_to(self, applied: float, measurement: float | None, setpoint: float | None,
                 feedforward: float = 0.0) -> None:
        """Bumpless transfer: make the next output equal `applied` (manual → auto, after a safe state)."""
        e = 0.0 if measurement is None or setpoint is None else setpoint - measurement
        self.integral = applied - feedforward - self.gains.kp * e
        self._d_state = 0.0
        self._last_pv = measurement
