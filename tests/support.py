"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.localservers import free_port

DEMO_PORTS = ("8000", "55432", "4840", "4841", "5020", "1883")


def demo_config_text(ports: dict[str, int] | None = None) -> str:
    """config/demo.toml with every port moved to a free one (or to `ports[old] = new`)."""
    text = (Path(__file__).resolve().parents[1] / "config" / "demo.toml").read_text()
    for old in DEMO_PORTS:
        new = (ports or {}).get(old) or free_port()
        text = text.replace(f":{old}\"", f":{new}\"").replace(f"port = {old}\n", f"port = {new}\n")
    return text



async def wait_until(pred: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Poll `pred` until true; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = pred()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)
