"""The M-Bus-to-MQTT gateway against the session's real Mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest

from service.clock import VirtualClock
from service.config import SimulationConfig
from simulators.heat_meter_mqtt import MeterGateway, telegram
from simulators.plant import PlantModel

TOPIC = "mbus/heatmeter/71234567"
KEYS = {"serial", "time", "energy_gj", "volume_m3", "power_kw", "flow_m3h", "flow_temperature_c",
        "return_temperature_c"}


class Subscriber:
    """Collects every JSON telegram on a topic; subscribed before anything is published."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.telegrams: list[dict[str, Any]] = []
        self.qos: list[int] = []

    async def collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.telegrams.append(json.loads(message.payload))
            self.qos.append(message.qos)


@pytest.fixture
async def subscriber(mosquitto: Any) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, username=mosquitto.username,
                              password=mosquitto.password) as client:
        await client.subscribe(TOPIC, qos=1)
        sub = Subscriber(client)
        task = asyncio.create_task(sub.collect())
        yield sub
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def model(plant_config: Callable[..., SimulationConfig], clock: VirtualClock) -> PlantModel:
    return PlantModel(plant_config(meter={"publish_interval_s": 0.05, "initial_energy_gj": 10.0}), clock)


async def stepping(model: PlantModel, clock: VirtualClock) -> None:
    """The model's ticker, at 10 virtual seconds per 20 ms so the register visibly moves."""
    while True:
        clock.advance(10)
        model.tick()
        await asyncio.sleep(0.02)


def test_telegram_format(model: PlantModel) -> None:
    t = telegram(model.heat_meters["meter1"], datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC))
    assert set(t) == KEYS
    assert t["serial"] == "71234567"
    assert t["time"] == "2025-03-04T05:06:07.891Z"
    assert all(isinstance(t[k], float) for k in KEYS - {"serial", "time"})
    json.dumps(t)


async def test_gateway_publishes_qos1_telegrams_with_a_monotonic_register(
        mosquitto: Any, subscriber: Subscriber, model: PlantModel, clock: VirtualClock,
        eventually: Callable[..., Any]) -> None:
    ticker = asyncio.create_task(stepping(model, clock))
    try:
        async with MeterGateway(model.cfg.heat_meters, model, broker=f"mqtt://{mosquitto.host}:{mosquitto.port}",
                                username=mosquitto.username, password=mosquitto.password) as gateway:
            await eventually(lambda: len(subscriber.telegrams) >= 5, message="5 telegrams")
            assert gateway.connected
    finally:
        ticker.cancel()
    got = subscriber.telegrams
    assert all(set(t) == KEYS and t["serial"] == "71234567" for t in got)
    assert set(subscriber.qos) == {1}
    energies = [t["energy_gj"] for t in got]
    assert all(b >= a for a, b in itertools.pairwise(energies))
    assert energies[-1] > energies[0] >= 10.0
    times = [datetime.fromisoformat(t["time"].replace("Z", "+00:00")) for t in got]
    assert all(t.tzinfo is not None and t.utcoffset().total_seconds() == 0 for t in times)  # type: ignore[union-attr]
    assert times[-1] > times[0]
    assert got[-1]["power_kw"] > 500 and got[-1]["flow_temperature_c"] > got[-1]["return_temperature_c"]


async def test_gateway_reconnects_after_the_broker_goes_away(
        mosquitto: Any, broker_proxy: Any, subscriber: Subscriber, model: PlantModel,
        eventually: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="simulators")
    async with MeterGateway(model.cfg.heat_meters, model, broker=f"mqtt://127.0.0.1:{broker_proxy.port}",
                            username=mosquitto.username, password=mosquitto.password,
                            backoff_initial_s=0.05, backoff_max_s=0.2) as gateway:
        await eventually(lambda: subscriber.telegrams, message="first telegram")
        await broker_proxy.cut()
        await eventually(lambda: not gateway.connected, message="gateway noticing the lost broker")
        failures = gateway.connection_failures
        # Several retries while the broker is away (they must be logged only once).
        await eventually(lambda: gateway.connection_failures >= failures + 3, message="three more retries")
        published_while_down = len(subscriber.telegrams)
        await broker_proxy.start()
        await eventually(lambda: len(subscriber.telegrams) > published_while_down + 2,
                         message="telegrams after the broker came back")
        assert gateway.connected
    outages = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outages) == 1
    assert any("reconnected" in r.getMessage() for r in caplog.records)
