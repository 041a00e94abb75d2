"""Outdoor compensation curve and the target ramp."""

from __future__ import annotations

import pytest

from service.control.curve import CompensationCurve, ramp


def test_curve_interpolates_between_breakpoints_and_is_flat_outside() -> None:
    curve = CompensationCurve([(-12.0, 80.0), (0.0, 72.0), (15.0, 60.0)], 55.0, 85.0)
    assert curve(-20.0) == 80.0
    assert curve(-6.0) == pytest.approx(76.0)
    assert curve(7.5) == pytest.approx(66.0)
    assert curve(30.0) == 60.0


def test_curve_is_clamped_to_min_and_max() -> None:
    curve = CompensationCurve([(-10.0, 95.0), (20.0, 40.0)], 50.0, 85.0)
    assert curve(-10.0) == 85.0
    assert curve(20.0) == 50.0


@pytest.mark.parametrize("points", [[(0.0, 70.0)], [(5.0, 70.0), (5.0, 60.0)], [(5.0, 70.0), (0.0, 60.0)]])
def test_curve_refuses_bad_breakpoints(points: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError):
        CompensationCurve(points, 50.0, 85.0)


def test_ramp_moves_at_most_the_step() -> None:
    assert ramp(70.0, 75.0, 0.5) == 70.5
    assert ramp(70.0, 65.0, 0.5) == 69.5
    assert ramp(70.0, 70.2, 0.5) == 70.2
