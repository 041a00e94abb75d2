"""Heat meters behind an M-Bus-to-MQTT gateway: JSON telegrams, QoS 1, reconnecting forever."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiomqtt

from service.tasks import cancel_and_wait
from simulators.config import SimHeatMeter
from simulators.faults import FaultBoard
from simulators.net import split_mqtt_url
from simulators.plant import HeatMeterState, PlantModel

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0  # a QoS 1 PUBACK slower than this means the broker is gone: reconnect
MALFORMED_PAYLOAD = b'{"serial": "7123456'  # a telegram cut off mid-string, as a flaky gateway sends


class _Dropped(Exception):
    """Fault injection asked the gateway to drop its broker connection."""


def telegram(meter: HeatMeterState, measured_at: datetime) -> dict[str, Any]:
    """The gateway's JSON document for one meter reading."""
    return {
        "serial": meter.serial,
        "time": measured_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        # Registers at kJ and 0.1 L resolution; rounding is monotonic, so the register stays monotonic.
        "energy_gj": round(meter.energy_gj, 6),
        "volume_m3": round(meter.volume_m3, 4),
        "power_kw": round(meter.power_kw, 3),
        "flow_m3h": round(meter.flow_m3h, 4),
        "flow_temperature_c": round(meter.flow_temperature_c, 2),
        "return_temperature_c": round(meter.return_temperature_c, 2),
    }


class MeterGateway:
    """Publishes every configured meter to its topic at its interval over one broker connection."""

    def __init__(self, meters: list[SimHeatMeter], model: PlantModel, *, broker: str,
                 username: str | None = None, password: str | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 faults: FaultBoard | None = None) -> None:
        self._meters = meters
        self._faults = faults or FaultBoard()
        self._drop_requested = False
        self._model = model
        self._broker = broker
        self._host, self._port = split_mqtt_url(broker, "heat meter gateway")
        self._username = username or None
        self._password = password or None  # "${VAR:-}" in the config yields "": means no password
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._jitter = random.Random()  # not the model's generator: retries must not shift the physics
        self._identifier = f"heatrec-mbus-gateway-{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.published = 0  # telegrams acknowledged by the broker
        self.connection_failures = 0  # failed connects plus lost connections

    async def __aenter__(self) -> MeterGateway:
        # The connection lives in the background: an absent broker must not hold up the other faces.
        self._task = asyncio.create_task(self._run(), name="simulator-mqtt-gateway")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self.connected = False

    async def _run(self) -> None:
        delay = self._backoff_initial_s
        reported_down = False
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port, username=self._username,
                                          password=self._password, identifier=self._identifier,
                                          timeout=PUBLISH_TIMEOUT_S, keepalive=15) as client:
                    self.connected = True
                    delay = self._backoff_initial_s
                    if reported_down:
                        log.info("heat meter gateway: reconnected to %s", self._broker)
                    else:
                        log.info("heat meter gateway: publishing to %s", self._broker)
                    reported_down = False
                    await self._publish_forever(client)
            except _Dropped:
                self.connected = False
                self.connection_failures += 1
                log.warning("heat meter gateway: connection dropped by fault injection")
            except (aiomqtt.MqttError, OSError) as err:
                self.connected = False
                self.connection_failures += 1
                if not reported_down:  # log once per outage, not once per retry
                    log.warning("heat meter gateway: broker %s unavailable (%s); retrying in the background",
                                self._broker, err)
                    reported_down = True
            except Exception:
                # A bug here must not silently end the gateway: say so loudly, then keep retrying.
                self.connected = False
                self.connection_failures += 1
                log.exception("heat meter gateway: unexpected error; restarting the connection")
            wait = delay * self._jitter.uniform(0.8, 1.2)
            delay = min(delay * 2, self._backoff_max_s)
            await asyncio.sleep(wait)

    def drop(self) -> None:
        """Drop the broker connection before the next publish; the gateway reconnects as after an outage."""
        self._drop_requested = True

    async def _publish_one(self, client: aiomqtt.Client, cfg: SimHeatMeter) -> None:
        slow = self._faults.first(cfg.id, "slow")
        if slow is not None:
            await asyncio.sleep(slow.delay_s)
        payload: str | bytes
        if self._faults.first(cfg.id, "malformed") is not None:
            payload = MALFORMED_PAYLOAD
        else:
            meter = self._faults.view(cfg.id, self._model.heat_meters[cfg.id])
            payload = json.dumps(telegram(meter, self._model.time))
        await client.publish(cfg.topic, payload, qos=1)
        self.published += 1

    async def _publish_forever(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        due = {m.id: loop.time() for m in self._meters}  # publish at once after (re)connecting
        by_id = {m.id: m for m in self._meters}
        while True:
            meter_id = min(due, key=due.__getitem__)
            await asyncio.sleep(max(due[meter_id] - loop.time(), 0.0))
            if self._drop_requested:
                self._drop_requested = False
                raise _Dropped
            cfg = by_id[meter_id]
            if self._faults.first(meter_id, "offline") is None:
                await self._publish_one(client, cfg)
            # Keep the cadence instead of drifting by the publish time; skip slots missed while slow.
            due[meter_id] = max(due[meter_id] + cfg.publish_interval_s, loop.time())
