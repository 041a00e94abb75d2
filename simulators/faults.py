"""Fault injection: what is wrong with which simulated device, consulted by the protocol faces.

Faults that act on the wire (offline, drop, restart) are carried out by the Simulation;
faults that act on values (frozen, out_of_range) are applied here to a copy of the state
a face is about to serve; request faults (exception, slow, malformed, and the M-Bus face's no_answer,
bad_checksum, truncated and meter_error) are checked by the face.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

FaultKind = Literal["offline", "drop", "restart", "frozen", "out_of_range", "exception", "slow",
                    "malformed", "wrap", "replace", "trip", "no_answer", "bad_checksum", "truncated",
                    "meter_error"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
# One-off actions: carried out when injected, never listed as active.
ONE_SHOT: frozenset[str] = frozenset({"drop", "restart", "wrap", "replace"})

S = TypeVar("S")


@dataclass
class Fault:
    """One injected fault on one device; `point` names a state field for value faults."""

    id: int
    device: str
    kind: str
    point: str | None = None
    value: float | None = None  # out_of_range: the value served
    code: int = 4  # exception: Modbus exception code (4 = server device failure)
    delay_s: float = 2.0  # slow: added before each answer or publish
    serial: str | None = None  # replace: the new meter's serial
    frozen: dict[str, Any] = field(default_factory=dict)  # frozen: values captured at the first serve

    def as_dict(self) -> dict[str, Any]:
        """JSON view for the control endpoint."""
        out = dataclasses.asdict(self)
        out.pop("frozen")
        # Defaults of parameters this kind does not use would only confuse the reader.
        if self.kind != "exception":
            out.pop("code")
        if self.kind != "slow":
            out.pop("delay_s")
        return {k: v for k, v in out.items() if v is not None}


class FaultBoard:
    """The active faults of a simulation, by device."""

    def __init__(self) -> None:
        self._faults: dict[int, Fault] = {}
        self._ids = itertools.count(1)

    def add(self, device: str, kind: str, **params: Any) -> Fault:
        """Register a fault (validated by the caller against the devices); returns it with its id."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind '{kind}' (one of {', '.join(FAULT_KINDS)})")
        fault = Fault(id=next(self._ids), device=device, kind=kind, **params)
        if kind not in ONE_SHOT:
            self._faults[fault.id] = fault
        return fault

    def remove(self, fault_id: int) -> Fault | None:
        """Clear one fault; None when there is no such fault."""
        return self._faults.pop(fault_id, None)

    def clear(self, device: str | None = None) -> list[Fault]:
        """Clear every fault (of one device); returns what was cleared."""
        gone = [f for f in self._faults.values() if device is None or f.device == device]
        for f in gone:
            del self._faults[f.id]
        return gone

    def active(self, device: str | None = None) -> list[Fault]:
        """Active faults, oldest first."""
        return [f for f in self._faults.values() if device is None or f.device == device]

    def first(self, device: str, kind: str) -> Fault | None:
        """The oldest active fault of this kind on this device."""
        return next((f for f in self._faults.values() if f.device == device and f.kind == kind), None)

    def view(self, device: str, state: S) -> S:
        """The state as the device reports it: frozen points keep their value, out-of-range ones lie."""
        changes: dict[str, Any] = {}
        for f in self._faults.values():
            if f.device != device or f.kind not in ("frozen", "out_of_range"):
                continue
            names = [f.point] if f.point else [n.name for n in dataclasses.fields(state)  # type: ignore[arg-type]
                                                if isinstance(getattr(state, n.name), float)]
            for name in names:
                if f.kind == "frozen":
                    # Capture at the first serve after injection: that is the value the sensor sticks at.
                    changes[name] = f.frozen.setdefault(name, getattr(state, name))
                else:
                    changes[name] = f.value if f.value is not None else 9999.0
        return dataclasses.replace(state, **changes) if changes else state  # type: ignore[type-var]
