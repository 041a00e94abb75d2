"""Runs the simulated plant: the model ticker plus every configured protocol face."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType

from service.clock import Clock, RealClock
from service.config import SimulationConfig
from simulators.cdu_opcua import CduOpcUaServer
from simulators.errors import SimulatorError
from simulators.heat_meter_mqtt import MeterGateway
from simulators.heat_pump_modbus import HeatPumpModbusServer
from simulators.net import ensure_port_free, split_host_port, split_opcua_endpoint
from simulators.plant import PlantModel

log = logging.getLogger(__name__)


class Simulation:
    """The plant model and its faces (CDUs over OPC UA, heat pumps over Modbus, meters over MQTT).

    `async with Simulation(cfg) as sim:` starts everything listed in the config and stops it
    in reverse order on exit. With `tick_s=None` there is no background ticker: call
    `refresh()` to advance the model to the clock and publish (handy on a VirtualClock).
    """

    def __init__(self, cfg: SimulationConfig, *, clock: Clock | None = None, tick_s: float | None = 0.5,
                 mqtt_backoff_max_s: float = 10.0) -> None:
        _check_unique_ids(cfg)
        if tick_s is not None and tick_s <= 0:
            raise SimulatorError(f"tick_s must be positive (got {tick_s})")
        self.cfg = cfg
        self.clock: Clock = clock or RealClock()
        self.tick_s = tick_s
        self.model = PlantModel(cfg, self.clock)
        self.cdus: dict[str, CduOpcUaServer] = {}
        self.heat_pumps: dict[str, HeatPumpModbusServer] = {}
        self.meter_gateway: MeterGateway | None = None
        self._mqtt_backoff_max_s = mqtt_backoff_max_s
        self._stack: AsyncExitStack | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._failing: set[str] = set()

    async def __aenter__(self) -> Simulation:
        # Check every port before anything starts: a taken port fails in milliseconds,
        # not after the OPC UA server's slow address-space load.
        self._check_ports()
        stack = AsyncExitStack()
        try:
            for cdu in self.cfg.cdus:
                self.cdus[cdu.id] = await stack.enter_async_context(
                    CduOpcUaServer(cdu, self.model, self.clock))
            for hp in self.cfg.heat_pumps:
                self.heat_pumps[hp.id] = await stack.enter_async_context(HeatPumpModbusServer(hp, self.model))
            if self.cfg.heat_meters:
                self.meter_gateway = await stack.enter_async_context(MeterGateway(
                    self.cfg.heat_meters, self.model, broker=self.cfg.mqtt_broker,
                    username=self.cfg.mqtt_username, password=self.cfg.mqtt_password,
                    backoff_max_s=self._mqtt_backoff_max_s))
            if self.tick_s is not None:
                self._ticker = asyncio.create_task(self._tick_forever(self.tick_s), name="simulator-ticker")
                stack.push_async_callback(self._stop_ticker)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()  # LIFO: ticker, MQTT, Modbus, OPC UA

    def endpoints(self) -> dict[str, str]:
        """Where each simulated device can be reached, by device id."""
        out = {cdu_id: srv.endpoint for cdu_id, srv in self.cdus.items()}
        for hp_id, hp in self.heat_pumps.items():
            host, port = hp.address
            out[hp_id] = f"{host}:{port} (Modbus TCP, unit {hp.cfg.unit_id})"
        for meter in self.cfg.heat_meters:
            out[meter.id] = f"{self.cfg.mqtt_broker} topic {meter.topic}"
        return out

    async def refresh(self) -> float:
        """Advance the model to the clock and publish to every face; returns the step in seconds."""
        dt = self.model.tick()
        for cdu_id, cdu in self.cdus.items():
            await self._guarded(cdu_id, cdu.update)
        for hp_id, hp in self.heat_pumps.items():
            await self._guarded(hp_id, hp.update)
        return dt

    async def _guarded(self, face: str, update: Callable[[], Awaitable[None] | None]) -> None:
        """One face failing to update must not stop the others; log once per failure spell."""
        try:
            result = update()
            if inspect.isawaitable(result):
                await result
        except Exception:
            if face not in self._failing:
                log.exception("simulator %s: update failed", face)
                self._failing.add(face)
            return
        if face in self._failing:
            log.info("simulator %s: updating again", face)
            self._failing.discard(face)

    async def _tick_forever(self, tick_s: float) -> None:
        while True:
            await asyncio.sleep(tick_s)
            try:
                await self.refresh()
            except Exception:
                # A model error would repeat every tick; log it once and stop ticking loudly.
                log.exception("simulator ticker stopped: the plant model failed")
                raise

    async def _stop_ticker(self) -> None:
        if self._ticker is None:
            return
        self._ticker.cancel()
        try:
            await self._ticker
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        self._ticker = None

    def _check_ports(self) -> None:
        listeners = [(c.id, *split_opcua_endpoint(c.endpoint, c.id)) for c in self.cfg.cdus]
        listeners += [(h.id, *split_host_port(h.endpoint, h.id)) for h in self.cfg.heat_pumps]
        owners: dict[int, str] = {}
        for owner, _, port in listeners:
            if port != 0 and port in owners:
                raise SimulatorError(f"port {port} is configured for both {owners[port]} and {owner}")
            owners[port] = owner
        for owner, host, port in listeners:
            ensure_port_free(host, port, owner)


async def serve_forever(sim_cfg: SimulationConfig, *, clock: Clock | None = None,
                        tick_s: float = 0.5) -> None:
    """Run the simulated plant until cancelled (Ctrl-C in the CLI)."""
    async with Simulation(sim_cfg, clock=clock, tick_s=tick_s) as sim:
        for device, where in sim.endpoints().items():
            log.info("simulated %s: %s", device, where)
        await asyncio.Event().wait()


def _check_unique_ids(cfg: SimulationConfig) -> None:
    ids = [c.id for c in cfg.cdus] + [h.id for h in cfg.heat_pumps] + [m.id for m in cfg.heat_meters]
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise SimulatorError(f"simulated device id(s) {', '.join(twice)} appear more than once")
