"""The control loop keeps its cycle while the HTTP API is flooded, and the API recovers when the flood ends.

The demo plant on free ports (simulators speaking OPC UA, Modbus TCP and MQTT; PostgreSQL; Mosquitto)
with the real service in this process: its API shares the one event loop with control. For a while,
all at once, from loopback: 50 MB JSON bodies without a token (declared by Content-Length and streamed
chunked), waves of connections that never finish their headers (a byte now and then), and parallel
token guessing. What must hold is counted, not timed: the control loop's cycle counter advances with
the elapsed periods and no cycle overruns; no body is taken beyond the limit; every slow connection
is closed by the server; the process's peak memory grows by a fraction of what was offered; and the
API answers normally afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from pathlib import Path

import httpx
import pytest

from service.config import load_config
from simulators.runner import Simulation
from tests.support import running_service, wait_until

FLOOD_S = 8.0  # how long the flood goes on
BODY_BYTES = 50 * 1024 * 1024  # what each large-body client offers
CHUNK = b"[" + b"1," * 32_767 + b"1"  # 64 KiB of a JSON array that never closes
SLOW_CLIENTS = 150  # connections that trickle their headers, per wave
PATH = b"/api/v1/alarms/hp1.supply_temperature:high/shelve"


async def offer_body(port: int, chunked: bool) -> tuple[int | None, int]:
    """POST a 50 MB body without a token, as fast as the server takes it: (status answered or None, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {BODY_BYTES}\r\n".encode()
    writer.write(b"POST " + PATH + b" HTTP/1.1\r\nHost: plant\r\nContent-Type: application/json\r\n" + framing
                 + b"\r\n")
    status: int | None = None

    async def read_status() -> None:
        nonlocal status
        with contextlib.suppress(ConnectionError, ValueError, IndexError):
            line = await reader.readline()
            status = int(line.split()[1])

    answer = asyncio.create_task(read_status())
    sent = 0
    try:
        while sent < BODY_BYTES and not answer.done():
            piece = CHUNK if not chunked else f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
            writer.write(piece)
            await writer.drain()  # never more than the transport's buffer held here: the server must read it
            sent += len(CHUNK)
    except ConnectionError:
        pass  # the server answered and closed: the rest of the body is never read
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(answer, 10)
    answer.cancel()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return status, sent


async def slow_headers(port: int) -> bool:
    """Send a request line and then a header line every 0.5 s, never the end; True when the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: plant\r\n")
        for i in range(120):  # a minute at most: far beyond the configured header deadline
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except TimeoutError:
                writer.write(f"X-Slow-{i}: still coming\r\n".encode())
                continue
            except ConnectionError:
                return True
            if not data:
                return True  # the server closed it
        return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def short_deadlines(path: Path) -> None:
    """Headers and bodies due within 2 s (10 s and 30 s by default), so the waves of slow clients turn quickly."""
    text = path.read_text()
    assert "[api]\n" in text
    path.write_text(text.replace("[api]\n", "[api]\nheader_timeout_s = 2.0\nbody_timeout_s = 2.0\n", 1))


@pytest.mark.integration  # the whole service, its simulators and databases, and hundreds of loopback connections
async def test_control_keeps_its_cycle_while_the_api_is_flooded(plant_config_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    short_deadlines(plant_config_file)
    monkeypatch.setenv("HEATREC_SCADA_PASSWORD", "flood-scada-secret")
    cfg = load_config(plant_config_file)
    assert cfg.simulation is not None and cfg.control is not None and cfg.api.header_timeout_s == 2.0
    async with Simulation(cfg.simulation, tick_s=0.2), running_service(cfg) as svc:
        control, port = svc.control, svc.api_port
        assert control is not None and port is not None and svc.tokens is not None
        _, viewer = svc.tokens.create("viewer", "flood-viewer")
        base = f"http://127.0.0.1:{port}"
        await wait_until(lambda: control.stats.cycles >= 5, 60, "the control loop cycling")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLOOD_S
        bodies: list[tuple[int | None, int]] = []
        slow: list[bool] = []
        guesses: list[int] = []
        probes: list[int] = []

        async def body_client(i: int) -> None:
            while loop.time() < deadline:
                bodies.append(await offer_body(port, chunked=i % 2 == 1))

        async def slow_waves() -> None:
            while loop.time() < deadline:
                slow.extend(await asyncio.gather(*(slow_headers(port) for _ in range(SLOW_CLIENTS))))

        async def guesser(i: int) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                n = 0
                while loop.time() < deadline:
                    r = await http.get("/api/v1/points", headers={"Authorization": f"Bearer hr_guess_{i}_{n}"})
                    guesses.append(r.status_code)
                    n += 1

        async def prober() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                while loop.time() < deadline:
                    probes.append((await http.get("/api/v1/health")).status_code)  # answered, never hanging
                    await asyncio.sleep(0.25)

        peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cycles_before, overruns_before, t_before = control.stats.cycles, control.stats.overruns, loop.time()
        await asyncio.gather(*(body_client(i) for i in range(8)), slow_waves(),
                             *(guesser(i) for i in range(20)), prober())
        elapsed = loop.time() - t_before
        cycles, overruns = control.stats.cycles - cycles_before, control.stats.overruns - overruns_before
        peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024

        # Control kept its period on the shared event loop: a cycle per elapsed period, none overran.
        periods = elapsed / cfg.control.period_s
        assert cycles >= 0.8 * periods - 1, (cycles, periods)
        assert overruns <= 1, overruns
        # No large body was taken: each was answered (413, or uvicorn's 503 beyond limit_concurrency) or cut off.
        assert len(bodies) >= 8 and all(sent < BODY_BYTES for _, sent in bodies), bodies
        assert {status for status, _ in bodies} <= {413, 503, None} and 413 in {s for s, _ in bodies}, bodies
        offered_mb = len(bodies) * BODY_BYTES / 2**20
        assert peak_growth_mb < 150, (peak_growth_mb, offered_mb)  # the old API grew by most of what was offered
        # Every connection that trickled its headers was closed by the server's deadline.
        assert len(slow) >= SLOW_CLIENTS and all(slow), slow.count(False)
        # Guessing is answered 401, slowed, or refused (429; 503 at the concurrency limit): never a hang.
        assert guesses and set(guesses) <= {401, 429, 503}, set(guesses)
        assert probes and set(probes) <= {200, 503}, set(probes)

        # And when the flood is over, the API is itself again.
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async def answers() -> bool:
                return (await http.get("/api/v1/health")).status_code == 200

            await wait_until(answers, 30, "the API answering after the flood")
            r = await http.get("/api/v1/points", headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 200 and r.json()["points"], r.text
        after = cycles_before + cycles
        await wait_until(lambda: control.stats.cycles > after, 10, "control cycling on")
