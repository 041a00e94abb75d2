"""Failed-authentication slow-down on virtual time: delays that grow, a bound on held answers, bounded memory."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.api.auth_limiter import FailedAuthLimiter


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_failures_beyond_the_free_ones_are_delayed_more_and_more(caplog: pytest.LogCaptureFixture) -> None:
    now = FakeTime()
    lim = FailedAuthLimiter(max_failures=3, window_s=60, monotonic=now, delay_s=0.5, max_delay_s=4.0)
    caplog.set_level(logging.INFO, logger="service.api.auth_limiter")
    delays = []
    for _ in range(8):
        delays.append(lim.failed("10.0.0.1"))
        now.t += 1
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped
    assert lim.suspect("10.0.0.1") and not lim.suspect("10.0.0.2")  # other clients are unaffected
    assert lim.failed("10.0.0.2") == 0.0
    assert [r.levelname for r in caplog.records].count("WARNING") == 1  # one warning per slow-down
    assert lim.retry_after("10.0.0.1") == 57  # t=1008: until the 6th failure (t=1005) leaves the window
    now.t += 60
    assert not lim.suspect("10.0.0.1") and lim.failed("10.0.0.1") == 0.0  # the window has passed them all
    assert any("no longer slowed down" in r.message for r in caplog.records)
    assert not any("10.0.0.1" not in r.message for r in caplog.records if r.name == "service.api.auth_limiter")


async def test_parallel_guessing_is_refused_rather_than_held() -> None:
    lim = FailedAuthLimiter(max_failures=0, window_s=60, monotonic=FakeTime(), delay_s=10.0, max_held=2,
                            max_held_total=3)
    held = []
    for client in ("a", "a"):
        wait = lim.failed(client)
        assert wait is not None and wait > 0
        held.append(asyncio.create_task(lim.hold(client, wait)))
    await asyncio.sleep(0)
    assert lim.held == 2
    assert lim.failed("a") is None  # a's third answer in parallel: 429 at once
    wait = lim.failed("b")
    assert wait is not None
    held.append(asyncio.create_task(lim.hold("b", wait)))
    await asyncio.sleep(0)
    assert lim.failed("c") is None  # all held answers in use: everyone's next failure is refused at once
    assert lim.total_refused == 2 and lim.total_delayed == 3
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert lim.held == 0 and lim.failed("c") is not None


def test_memory_is_bounded() -> None:
    lim = FailedAuthLimiter(max_failures=5, window_s=60, monotonic=FakeTime(), max_clients=100)
    for i in range(1000):
        lim.failed(f"client-{i}")
    assert len(lim._failures) <= 100
    assert lim.total_failures == 1000
