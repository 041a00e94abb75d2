"""A small HTTP control endpoint on the simulator: inject and clear faults at run time, act on a device's own
panel, read the plant state.

    GET    /faults          active faults
    POST   /faults          {"device": "hp1", "kind": "trip", ...}  → 201 with the fault (and its id)
    DELETE /faults/{id}     clear one fault;  DELETE /faults  clears all
    PUT    /cdus/{id}       {"supply_temperature_allowable_max": 31.0}: the CDU's allowable maximum changed on
                            its own panel → 200 {"cdu": id, "supply_temperature_allowable_max": 31.0};
                            404 no such CDU, 400 a bad body, 409 outside 0..100 °C
    POST   /events          a scenario event without at_s, e.g. {"it_load_scale": 1.3} or
                            {"dh_demand_scale": 0.2}, carried out now → 200 {"applied": {...}}; 400 a bad
                            body, 409 a device the plant lacks or a fault it cannot have
    GET    /state           elapsed time, outdoor temperature, demand, the energy ledger, and the present heat
                            flows: per CDU, per heat pump, dry coolers and heat left in the CDU loops

Plain asyncio rather than a web framework: a handful of routes on loopback do not justify one more
server stack in the simulator process, and it starts in microseconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from pydantic import ValidationError

from simulators.errors import SimulatorError
from simulators.faults import Fault, FaultBoard
from simulators.net import ensure_port_free
from simulators.plant import PlantModel
from simulators.scenario import FaultSpec, ScenarioEvent

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
ALLOWABLE_MAX_KEY = "supply_temperature_allowable_max"
Handler = Callable[[str, bytes], Awaitable[tuple[int, Any]]]


class Controllable(Protocol):
    """What the endpoint reads and drives (simulators.runner.Simulation is one).

    Declared here so that the runner, which starts this endpoint, is not imported back by it.
    """

    @property
    def model(self) -> PlantModel:
        """The plant model, for /state."""
        ...

    @property
    def faults(self) -> FaultBoard:
        """The active faults."""
        ...

    async def inject(self, spec: FaultSpec) -> Fault:
        """Inject a fault; SimulatorError when the device cannot have it."""
        ...

    async def apply_event(self, event: ScenarioEvent) -> None:
        """Carry out a scenario event now; SimulatorError when it names what the plant lacks."""
        ...

    async def clear_fault(self, fault_id: int) -> Fault | None:
        """Clear one fault; None when it is not active."""
        ...

    async def clear_faults(self, device: str | None = None) -> list[Fault]:
        """Clear every active fault."""
        ...

    async def set_cdu_allowable_max(self, cdu_id: str, value: float) -> float:
        """Change a CDU's allowable maximum as on its panel; returns it. ValueError outside 0..100 °C,
        SimulatorError for no such CDU."""
        ...


class ControlServer:
    """Serves the control routes for one simulation on host:port (port 0: any free port)."""

    def __init__(self, sim: Controllable, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sim = sim
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """http://host:port of the endpoint."""
        port = self._server.sockets[0].getsockname()[1] if self._server else self._port
        return f"http://{self._host}:{port}"

    async def __aenter__(self) -> ControlServer:
        ensure_port_free(self._host, self._port, "simulator control endpoint")
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("simulator control endpoint at %s", self.url)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._respond(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            status, body = 400, {"error": "malformed HTTP request"}
        data = json.dumps(body).encode()
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  409: "Conflict"}.get(status, "Error")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            raise ValueError("bad request line")
        method, path = request_line[0], request_line[1]
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            return 400, {"error": "request body too large"}
        body = await reader.readexactly(length) if length else b""
        return await self._route(method, path.rstrip("/"), body)

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        sim = self._sim
        if path == "/state" and method == "GET":
            return 200, _state(sim.model)
        if path.startswith("/cdus/"):
            if method != "PUT":
                return 405, {"error": f"{method} not allowed on /cdus/{{id}}"}
            return await self._put_cdu(path.removeprefix("/cdus/"), body)
        if path == "/events":
            if method != "POST":
                return 405, {"error": f"{method} not allowed on /events"}
            return await self._post_event(body)
        if path == "/faults":
            if method == "GET":
                return 200, {"faults": [f.as_dict() for f in sim.faults.active()]}
            if method == "DELETE":
                return 200, {"cleared": [f.as_dict() for f in await sim.clear_faults()]}
            if method == "POST":
                try:
                    spec = FaultSpec.model_validate_json(body)
                except ValidationError as err:
                    return 400, {"error": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                    for e in err.errors())}
                try:
                    fault = await sim.inject(spec)
                except SimulatorError as err:
                    return 409, {"error": str(err)}
                return 201, fault.as_dict()
            return 405, {"error": f"{method} not allowed on /faults"}
        if path.startswith("/faults/") and method == "DELETE":
            tail = path.removeprefix("/faults/")
            if not tail.isdigit():
                return 400, {"error": "fault id must be an integer"}
            cleared = await sim.clear_fault(int(tail))
            if cleared is None:
                return 404, {"error": f"no active fault {tail}"}
            return 200, cleared.as_dict()
        return 404, {"error": f"no route {method} {path}"}

    async def _post_event(self, body: bytes) -> tuple[int, Any]:
        """POST /events: a scenario event (without at_s) carried out now, so a test or an operator's drill
        plays a scenario's phases at its own pace."""
        try:
            data = json.loads(body, parse_constant=_refuse_constant)
        except ValueError:
            return 400, {"error": "the body must be a JSON object (a scenario event)"}
        if not isinstance(data, dict):
            return 400, {"error": "the body must be a JSON object (a scenario event)"}
        try:
            event = ScenarioEvent.model_validate({"at_s": 0.0, **data})
        except ValidationError as err:
            return 400, {"error": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())}
        try:
            await self._sim.apply_event(event)
        except (SimulatorError, ValueError) as err:
            return 409, {"error": str(err)}
        return 200, {"applied": event.model_dump(exclude_none=True, exclude={"at_s"})}

    async def _put_cdu(self, cdu_id: str, body: bytes) -> tuple[int, Any]:
        """PUT /cdus/{id}: a new allowable maximum, as set on the CDU's own panel."""
        if cdu_id not in self._sim.model.cdus:
            return 404, {"error": f"no simulated CDU '{cdu_id}'"}
        try:
            data = json.loads(body, parse_constant=_refuse_constant)
        except ValueError:
            return 400, {"error": "the body must be a JSON object"}
        if not isinstance(data, dict) or set(data) != {ALLOWABLE_MAX_KEY}:
            return 400, {"error": f'the body must be a JSON object {{"{ALLOWABLE_MAX_KEY}": <°C>}} and nothing else'}
        value = data[ALLOWABLE_MAX_KEY]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return 400, {"error": f"{ALLOWABLE_MAX_KEY} must be a finite number (°C)"}
        try:
            held = await self._sim.set_cdu_allowable_max(cdu_id, float(value))
        except ValueError as err:
            return 409, {"error": str(err)}
        except SimulatorError as err:  # the CDU went away between the check and the call (not in this plant)
            return 404, {"error": str(err)}
        return 200, {"cdu": cdu_id, ALLOWABLE_MAX_KEY: held}


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON numbers: refuse them as a malformed body."""
    raise ValueError(f"{name} is not a JSON number")


def _state(m: PlantModel) -> dict[str, Any]:
    """GET /state: plant time, weather, demand, the energy ledger and the heat flows now (true values, kW)."""
    return {
        "elapsed_s": m.elapsed_s, "time": m.time.isoformat(),
        "outdoor_temperature": m.outdoor_temperature, "dh_demand_kw": m.dh_demand_kw,
        "it_load_scale": m.it_load_scale, "energy_kwh": dataclasses.asdict(m.ledger),
        "cdus": {cdu_id: {"supply_temperature": c.supply_temperature,
                          "supply_temperature_allowable_max": c.supply_temperature_allowable_max,
                          "it_load_kw": c.it_load_kw, "heat_removed_kw": c.heat_removed_kw}
                 for cdu_id, c in m.cdus.items()},
        "heat_pumps": {hp_id: {"heat_output_kw": hp.heat_output_kw, "evaporator_heat_kw": hp.evaporator_heat_kw,
                               "cop": hp.cop, "running": hp.running, "fault": hp.fault,
                               "effective_setpoint": m.effective_setpoint(hp_id)}
                       for hp_id, hp in m.heat_pumps.items()},
        "direct_exchange_kw": m.direct_exchange_kw,
        "dry_cooler_kw": m.dry_cooler_kw,
        "dry_cooler_capacity_kw": m.cfg.dry_cooler_capacity_kw,
        "dry_cooler_available_kw": m.dry_cooler_available_kw,
        "dh_demand_scale": m.dh_demand_scale,
        "unremoved_kw": m.unremoved_kw,
    }
