"""PID: integral action, anti-windup by back-calculation, derivative on the measurement, bumpless transfer."""

from __future__ import annotations

import pytest

from service.control.pid import Pid, PidGains


def plant_run(pid: Pid, steps: int, low: float, high: float, y0: float = 60.0, sp: float = 70.0,
              tau: float = 20.0) -> tuple[float, list[float]]:
    """A first-order plant with a saturating actuator; returns the final y and the applied outputs."""
    y = y0
    outs: list[float] = []
    for _ in range(steps):
        proposed = pid.update(sp, y, 1.0)
        u = min(max(proposed, low), high)
        pid.track(proposed, u, 1.0)
        y += (u - y) / tau
        outs.append(u)
    return y, outs


def test_pi_removes_a_steady_error() -> None:
    pid = Pid(PidGains(kp=1.0, ti_s=30.0))
    pid.reset_to(60.0, 60.0, 60.0)
    y, _ = plant_run(pid, 600, 0.0, 100.0)
    assert y == pytest.approx(70.0, abs=0.01)


def test_back_calculation_limits_windup_while_saturated() -> None:
    """Saturated for a long time, the integral stays near the limit and the overshoot stays small."""
    def overshoot(tracking: bool) -> float:
        pid = Pid(PidGains(kp=1.0, ti_s=30.0, tracking_time_s=5.0 if tracking else 1e9))
        pid.reset_to(60.0, 60.0, 60.0)
        y = 60.0
        peak = 0.0
        for k in range(900):
            sp = 70.0
            high = 64.0 if k < 300 else 100.0  # the actuator cannot reach the target for five minutes
            proposed = pid.update(sp, y, 1.0)
            u = min(max(proposed, 0.0), high)
            pid.track(proposed, u, 1.0)
            y += (u - y) / 20.0
            if k >= 300:
                peak = max(peak, y - sp)
        return peak

    assert overshoot(True) < 0.3 * overshoot(False)
    assert overshoot(True) < 1.5


def test_derivative_acts_on_the_measurement_so_a_target_step_gives_no_kick() -> None:
    pid = Pid(PidGains(kp=2.0, ti_s=None, td_s=30.0, derivative_filter=5.0))
    pid.reset_to(70.0, 70.0, 70.0)
    first = pid.update(70.0, 70.0, 1.0)
    stepped = pid.update(75.0, 70.0, 1.0)
    assert stepped - first == pytest.approx(2.0 * 5.0)  # proportional only: no derivative kick
    moving = pid.update(75.0, 71.0, 1.0)  # the measurement rises: the filtered derivative brakes
    assert moving < 2.0 * 4.0 + pid.integral


def test_reset_to_gives_a_bumpless_transfer() -> None:
    pid = Pid(PidGains(kp=1.5, ti_s=60.0))
    pid.reset_to(66.0, measurement=71.0, setpoint=73.0, feedforward=73.0)
    out = pid.update(73.0, 71.0, 1.0, feedforward=73.0)
    assert out == pytest.approx(66.0, abs=0.1)
