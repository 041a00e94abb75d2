"""Failed-authentication rate limit on virtual time."""

from __future__ import annotations

import logging

import pytest

from service.api.auth_limiter import FailedAuthLimiter


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_locks_out_after_max_failures_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    now = FakeTime()
    lim = FailedAuthLimiter(max_failures=3, window_s=60, monotonic=now)
    caplog.set_level(logging.INFO, logger="service.api.auth_limiter")
    for _ in range(3):
        assert lim.retry_after("10.0.0.1") is None
        lim.failed("10.0.0.1")
        now.t += 1
    wait = lim.retry_after("10.0.0.1")
    assert wait is not None and 57 <= wait <= 58  # until the first failure (t=1000) leaves the window
    assert lim.retry_after("10.0.0.2") is None  # other clients are unaffected
    lim.failed("10.0.0.1")  # more failures while locked: still one warning
    assert [r.levelname for r in caplog.records].count("WARNING") == 1
    now.t += 30
    assert lim.retry_after("10.0.0.1") is not None  # t=1033: all four failures still in the window
    now.t += 31
    assert lim.retry_after("10.0.0.1") is None  # t=1064: the window has passed them all
    assert any("lock-out ended" in r.message for r in caplog.records)


def test_memory_is_bounded() -> None:
    lim = FailedAuthLimiter(max_failures=5, window_s=60, monotonic=FakeTime(), max_clients=100)
    for i in range(1000):
        lim.failed(f"client-{i}")
    assert len(lim._failures) <= 100
    assert lim.total_failures == 1000
