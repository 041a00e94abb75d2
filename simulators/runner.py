"""Runs the simulated plant: the model ticker plus every configured protocol face."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType

from pymodbus.constants import ExcCodes

from service.clock import Clock, RealClock
from service.tasks import cancel_and_wait
from simulators.cdu_opcua import CduOpcUaServer
from simulators.config import SimHeatMeter, SimulationConfig
from simulators.control_http import ControlServer
from simulators.errors import SimulatorError
from simulators.faults import Fault, FaultBoard
from simulators.heat_meter_modbus import HeatMeterModbusServer
from simulators.heat_meter_mqtt import MeterGateway
from simulators.heat_pump_modbus import HeatPumpModbusServer
from simulators.heat_store_modbus import HeatStoreModbusServer
from simulators.mbus_meter import MbusGateway
from simulators.modbus_face import ModbusFace
from simulators.net import ensure_port_free, split_host_port, split_opcua_endpoint
from simulators.plant import PlantModel
from simulators.register_state import RegisterFile
from simulators.scenario import FaultSpec, Scenario, ScenarioEvent, ScenarioPlayer

Face = CduOpcUaServer | ModbusFace
# Which fault kinds each kind of device supports; anything else is refused with a clear message.
_SUPPORTED = {
    "cdu": {"offline", "drop", "restart", "frozen", "out_of_range"},
    "heat_pump": {"offline", "drop", "restart", "frozen", "out_of_range", "exception", "slow", "trip"},
    "heat_store": {"offline", "drop", "restart", "frozen", "out_of_range", "exception", "slow"},
    "modbus_meter": {"offline", "drop", "restart", "frozen", "out_of_range", "exception", "slow", "wrap",
                     "replace"},
    "mqtt_meter": {"offline", "drop", "restart", "frozen", "out_of_range", "slow", "malformed", "wrap",
                   "replace"},
    "mbus_meter": {"offline", "no_answer", "drop", "restart", "frozen", "out_of_range", "slow", "bad_checksum",
                   "truncated", "meter_error", "wrap", "replace"},
}

log = logging.getLogger(__name__)


class Simulation:
    """The plant model and its faces (CDUs over OPC UA, heat pumps over Modbus, meters over MQTT).

    `async with Simulation(cfg) as sim:` starts everything listed in the config and stops it
    in reverse order on exit. With `tick_s=None` there is no background ticker: call
    `refresh()` to advance the model to the clock and publish (handy on a VirtualClock).
    """

    def __init__(self, cfg: SimulationConfig, *, clock: Clock | None = None, tick_s: float | None = 0.5,
                 mqtt_backoff_max_s: float = 10.0, scenario: Scenario | None = None,
                 control_port: int | None = None, register_file: Path | None = None) -> None:
        _check_unique_ids(cfg)
        if tick_s is not None and tick_s <= 0:
            raise SimulatorError(f"tick_s must be positive (got {tick_s})")
        self.cfg = cfg
        self.clock: Clock = clock or RealClock()
        self.tick_s = tick_s
        self.model = PlantModel(cfg, self.clock)
        # Registers continue across restarts when a file keeps them (the demo's var/demo).
        self.registers = RegisterFile(register_file) if register_file is not None else None
        if self.registers is not None:
            self.registers.load_into(self.model)
        self.cdus: dict[str, CduOpcUaServer] = {}
        self.heat_pumps: dict[str, HeatPumpModbusServer] = {}
        self.modbus_meters: dict[str, HeatMeterModbusServer] = {}
        self.heat_store: HeatStoreModbusServer | None = None
        self.meter_gateway: MeterGateway | None = None
        self.mbus_gateways: dict[str, MbusGateway] = {}  # by meter id; meters of one endpoint share one
        self.faults = FaultBoard()
        self.player = ScenarioPlayer(scenario) if scenario is not None else None
        self.control_port = control_port if control_port is not None else cfg.control_port
        self.control_url: str | None = None
        self._kinds = {c.id: "cdu" for c in cfg.cdus} | {h.id: "heat_pump" for h in cfg.heat_pumps}
        self._kinds |= {m.id: f"{m.protocol}_meter" for m in cfg.heat_meters}
        if cfg.heat_store is not None:
            self._kinds[cfg.heat_store.id] = "heat_store"
        if scenario is not None:
            self._check_scenario(scenario)
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
                    CduOpcUaServer(cdu, self.model, self.clock, self.faults))
            for hp in self.cfg.heat_pumps:
                self.heat_pumps[hp.id] = await stack.enter_async_context(
                    HeatPumpModbusServer(hp, self.model, self.faults))
            for meter in self.cfg.heat_meters:
                if meter.protocol == "modbus":
                    self.modbus_meters[meter.id] = await stack.enter_async_context(
                        HeatMeterModbusServer(meter, self.model, self.faults))
            if self.cfg.heat_store is not None:
                self.heat_store = await stack.enter_async_context(
                    HeatStoreModbusServer(self.cfg.heat_store, self.model, self.faults))
            buses: dict[str, list[SimHeatMeter]] = {}
            for meter in self.cfg.heat_meters:
                if meter.protocol == "mbus":
                    buses.setdefault(meter.endpoint, []).append(meter)
            for bus in buses.values():
                gateway = await stack.enter_async_context(MbusGateway(bus, self.model, self.faults))
                self.mbus_gateways |= dict.fromkeys((m.id for m in bus), gateway)
            mqtt_meters = [m for m in self.cfg.heat_meters if m.protocol == "mqtt"]
            if mqtt_meters:
                self.meter_gateway = await stack.enter_async_context(MeterGateway(
                    mqtt_meters, self.model, broker=self.cfg.mqtt_broker,
                    username=self.cfg.mqtt_username, password=self.cfg.mqtt_password,
                    backoff_max_s=self._mqtt_backoff_max_s, faults=self.faults))
            if self.control_port is not None:
                control = await stack.enter_async_context(ControlServer(self, port=self.control_port))
                self.control_url = control.url
            await self._apply_scenario()  # events at 0 s and the profile's first value
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
            if meter.id in self.modbus_meters:
                host, port = self.modbus_meters[meter.id].address
                out[meter.id] = f"{host}:{port} (Modbus TCP, unit {meter.unit_id})"
            elif meter.id in self.mbus_gateways:
                host, port = self.mbus_gateways[meter.id].address
                out[meter.id] = f"{host}:{port} (M-Bus gateway, primary address {meter.primary_address})"
            else:
                out[meter.id] = f"{self.cfg.mqtt_broker} topic {meter.topic}"
        if self.heat_store is not None:
            host, port = self.heat_store.address
            out[self.heat_store.cfg.id] = f"{host}:{port} (Modbus TCP, unit {self.heat_store.cfg.unit_id})"
        if self.control_url:
            out["control"] = f"{self.control_url}/faults (HTTP fault injection)"
        return out

    def face(self, device: str) -> Face | None:
        """The server of a device that has its own port (not an MQTT meter)."""
        if self.heat_store is not None and device == self.heat_store.cfg.id:
            return self.heat_store
        return self.cdus.get(device) or self.heat_pumps.get(device) or self.modbus_meters.get(device)

    async def inject(self, spec: FaultSpec) -> Fault:
        """Inject a fault now; SimulatorError when the device does not exist or cannot have it."""
        kind_of_device = self._kinds.get(spec.device)
        if kind_of_device is None:
            raise SimulatorError(f"no simulated device '{spec.device}' (have {', '.join(sorted(self._kinds))})")
        if spec.kind not in _SUPPORTED[kind_of_device]:
            raise SimulatorError(f"a {kind_of_device.replace('_', ' ')} cannot have fault '{spec.kind}' "
                                 f"(supported: {', '.join(sorted(_SUPPORTED[kind_of_device]))})")
        if spec.kind in ("frozen", "out_of_range") and spec.point is not None:
            state = self._state(spec.device)
            if not isinstance(getattr(state, spec.point, None), float):
                raise SimulatorError(f"{spec.device} has no numeric point '{spec.point}'")
        if spec.kind == "exception" and spec.code not in {int(c) for c in ExcCodes}:
            raise SimulatorError(f"Modbus exception code {spec.code} does not exist "
                                 f"(one of {', '.join(str(int(c)) for c in ExcCodes)})")
        params = spec.model_dump(exclude={"device", "kind", "energy_gj"}, exclude_none=True)
        fault = self.faults.add(spec.device, spec.kind, **params)
        face = self.face(spec.device)
        gateway = self.mbus_gateways.get(spec.device)
        if gateway is not None and spec.kind in ("drop", "restart"):
            gateway.drop_connections()  # the gateway serves other meters too: its port stays open
        elif spec.kind == "offline" and face is not None:
            await face.stop()
        elif spec.kind in ("drop", "restart"):
            if face is None:
                if self.meter_gateway is not None:
                    self.meter_gateway.drop()  # an MQTT meter's "connection" is the gateway's
            elif spec.kind == "drop":
                face.drop_connections()
            else:
                await face.stop()
                await face.start()
        elif spec.kind == "trip":
            self.model.set_fault(spec.device, True)
        elif spec.kind == "wrap":
            wrap = next(m.register_wrap_gj for m in self.cfg.heat_meters if m.id == spec.device)
            # Just short of the roll-over, so the next seconds of flow carry it through zero.
            self.model.preset_meter_register(spec.device, spec.energy_gj if spec.energy_gj is not None
                                             else max(wrap - 0.001, 0.0))
        elif spec.kind == "replace":
            old = self.model.heat_meters[spec.device].serial
            new = spec.serial or (str(int(old) + 1).zfill(len(old)) if old.isdigit() else f"{old}-2")
            fault.serial = new
            self.model.replace_meter(spec.device, new)
        log.warning("fault injected: %s", fault.as_dict())
        await self._publish()
        return fault

    async def clear_fault(self, fault_id: int) -> Fault | None:
        """Clear one active fault and undo what it did (reopen the port, reset the trip)."""
        fault = self.faults.remove(fault_id)
        if fault is not None:
            await self._undo(fault)
            await self._publish()
        return fault

    async def clear_faults(self, device: str | None = None) -> list[Fault]:
        """Clear every active fault (of one device)."""
        gone = self.faults.clear(device)
        for fault in gone:
            await self._undo(fault)
        await self._publish()
        return gone

    async def set_cdu_allowable_max(self, cdu_id: str, value: float) -> float:
        """Change a CDU's allowable maximum as on its own panel, and publish it; returns the value now held.

        SimulatorError when there is no such CDU, ValueError outside 0..100 °C (or not finite).
        """
        if cdu_id not in self.model.cdus:
            raise SimulatorError(f"no simulated CDU '{cdu_id}' (have {', '.join(sorted(self.model.cdus)) or 'none'})")
        self.model.set_cdu_allowable_max(cdu_id, value)
        held = self.model.cdus[cdu_id].supply_temperature_allowable_max
        log.warning("CDU %s allowable maximum set to %.2f °C on its panel", cdu_id, held)
        await self._publish()
        return held

    async def _undo(self, fault: Fault) -> None:
        face = self.face(fault.device)
        if fault.kind == "offline" and face is not None and self.faults.first(fault.device, "offline") is None:
            await face.start()
        elif fault.kind == "trip" and self.faults.first(fault.device, "trip") is None:
            self.model.set_fault(fault.device, False)
        log.info("fault cleared: %s", fault.as_dict())

    def _check_scenario(self, scenario: Scenario) -> None:
        """A scenario naming a device this plant lacks, or a fault it cannot have, fails at start, not hours in."""
        for event in scenario.events:
            for cdu_id in event.cdu_allowable_max or {}:
                if cdu_id not in self.model.cdus:
                    have = ", ".join(sorted(self.model.cdus)) or "none"
                    raise SimulatorError(f"scenario '{scenario.name}' event at {event.at_s:g} s: cdu_allowable_max "
                                         f"names '{cdu_id}', which is not a CDU of this plant (CDUs: {have})")
            spec = event.fault
            if spec is None:
                continue
            kind_of_device = self._kinds.get(spec.device)
            if kind_of_device is None or spec.kind not in _SUPPORTED[kind_of_device]:
                what = "no such device" if kind_of_device is None else f"a {kind_of_device.replace('_', ' ')}"
                raise SimulatorError(f"scenario '{scenario.name}' event at {event.at_s:g} s: fault '{spec.kind}' "
                                     f"on '{spec.device}' ({what}) is not possible in this plant")

    def _state(self, device: str) -> object:
        if self.cfg.heat_store is not None and device == self.cfg.heat_store.id:
            return self.model.store
        return (self.model.cdus.get(device) or self.model.heat_pumps.get(device)
                or self.model.heat_meters.get(device))

    async def _apply_scenario(self) -> None:
        """Scenario events that are due, and the outdoor profile, take effect from the next step."""
        if self.player is None:
            return
        settings_changed = False
        for event in self.player.due(self.model.elapsed_s):
            settings_changed = await self._apply_event(event) or settings_changed
        outdoor = self.player.outdoor_at(self.clock.now())
        if outdoor is not None:
            self.model.outdoor_temperature = outdoor
        if settings_changed:
            await self._publish()  # a client sees the panel's new limit now, not only after the next tick

    async def apply_event(self, event: ScenarioEvent) -> None:
        """Carry out one scenario event now (its at_s is ignored): the control endpoint's POST /events."""
        scenario = Scenario(name="control endpoint", events=[event])
        self._check_scenario(scenario)
        if event.fault is not None:
            await self.inject(event.fault)  # refused faults raise here, for the caller
            event = event.model_copy(update={"fault": None})
        if await self._apply_event(event):
            await self._publish()

    async def _apply_event(self, event: ScenarioEvent) -> bool:
        """One event's changes; True when a CDU setting changed (publish it at once)."""
        settings_changed = False
        if event.it_load_scale is not None:
            self.model.it_load_scale = event.it_load_scale
        if event.dh_demand_scale is not None:
            self.model.dh_demand_scale = event.dh_demand_scale
        if event.outdoor_temperature is not None:
            if self.player is not None:
                self.player.fixed_outdoor = True
            self.model.outdoor_temperature = event.outdoor_temperature
        for cdu_id, allowable_max in (event.cdu_allowable_max or {}).items():
            self.model.set_cdu_allowable_max(cdu_id, allowable_max)  # ids checked at start, values on load
            settings_changed = True
            log.info("scenario event at %.0f s: CDU %s allowable maximum %.2f °C", event.at_s, cdu_id,
                     allowable_max)
        if event.clear_faults is not None:
            await self.clear_faults(None if event.clear_faults == "*" else event.clear_faults)
        if event.fault is not None:
            try:
                await self.inject(event.fault)
            except SimulatorError as err:
                log.error("scenario event at %.0f s: %s", event.at_s, err)
        return settings_changed

    async def refresh(self) -> float:
        """Advance the model to the clock and publish to every face; returns the step in seconds."""
        dt = self.model.tick()
        if self.registers is not None:
            self.registers.save(self.model)  # before any face can publish the new values
        await self._apply_scenario()
        await self._publish()
        return dt

    async def _publish(self) -> None:
        for cdu_id, cdu in self.cdus.items():
            await self._guarded(cdu_id, cdu.update)
        for hp_id, hp in self.heat_pumps.items():
            await self._guarded(hp_id, hp.update)
        for meter_id, meter in self.modbus_meters.items():
            await self._guarded(meter_id, meter.update)
        if self.heat_store is not None:
            await self._guarded(self.heat_store.cfg.id, self.heat_store.update)

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
        ticker, self._ticker = self._ticker, None
        await cancel_and_wait(ticker)

    def _check_ports(self) -> None:
        listeners = [(c.id, *split_opcua_endpoint(c.endpoint, c.id)) for c in self.cfg.cdus]
        listeners += [(h.id, *split_host_port(h.endpoint, h.id)) for h in self.cfg.heat_pumps]
        listeners += [(m.id, *split_host_port(m.endpoint, m.id)) for m in self.cfg.heat_meters
                      if m.protocol == "modbus"]
        if self.cfg.heat_store is not None:
            listeners.append((self.cfg.heat_store.id, *split_host_port(self.cfg.heat_store.endpoint,
                                                                       self.cfg.heat_store.id)))
        # The M-Bus meters of one endpoint share its gateway: one listener per endpoint.
        buses = {m.endpoint: m.id for m in reversed(self.cfg.heat_meters) if m.protocol == "mbus"}
        listeners += [(owner, *split_host_port(endpoint, owner)) for endpoint, owner in buses.items()]
        if self.control_port:
            listeners.append(("control endpoint", "127.0.0.1", self.control_port))
        owners: dict[int, str] = {}
        for owner, _, port in listeners:
            if port != 0 and port in owners:
                raise SimulatorError(f"port {port} is configured for both {owners[port]} and {owner}")
            owners[port] = owner
        for owner, host, port in listeners:
            ensure_port_free(host, port, owner)


async def serve_forever(sim_cfg: SimulationConfig, *, clock: Clock | None = None,
                        tick_s: float = 0.5, scenario: Scenario | None = None) -> None:
    """Run the simulated plant until cancelled (Ctrl-C in the CLI)."""
    async with Simulation(sim_cfg, clock=clock, tick_s=tick_s, scenario=scenario) as sim:
        for device, where in sim.endpoints().items():
            log.info("simulated %s: %s", device, where)
        await asyncio.Event().wait()


def _check_unique_ids(cfg: SimulationConfig) -> None:
    ids = [c.id for c in cfg.cdus] + [h.id for h in cfg.heat_pumps] + [m.id for m in cfg.heat_meters]
    ids += [cfg.heat_store.id] if cfg.heat_store is not None else []
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise SimulatorError(f"simulated device id(s) {', '.join(twice)} appear more than once")
