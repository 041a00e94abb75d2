"""GET /api/v1/points served from pre-encoded JSON fragments: the hottest read of every SCADA and dashboard.

The configured part of each point never changes, so it is encoded once; the sample part is encoded
again only when the point's latest sample is a new object. A request then mostly joins bytes,
instead of building and validating a model per point. The output is byte for byte what
`PointList.model_dump_json()` gives (a test holds it to that).
"""

from __future__ import annotations

import pydantic_core

from service.bus import SampleBus
from service.config import HeatrecConfig
from service.model import Sample


class PointsView:
    """Encodes the point list of one configuration from the bus's latest samples."""

    def __init__(self, config: HeatrecConfig, bus: SampleBus) -> None:
        self._bus = bus
        self._by_device: dict[str, list[tuple[str, bytes]]] = {}
        for device in config.devices:
            rows = self._by_device.setdefault(device.id, [])
            for p in device.points:
                pid = f"{device.id}.{p.id}"
                static = pydantic_core.to_json({"id": pid, "device": device.id, "unit": p.unit, "kind": p.kind,
                                                "writable": p.writable})
                rows.append((pid, static[:-1] + b","))  # left open for the sample's fields
        self._samples: dict[str, tuple[Sample | None, bytes]] = {}

    def devices(self) -> list[str]:
        """Configured device ids."""
        return list(self._by_device)

    def _sample_part(self, pid: str) -> bytes:
        s = self._bus.latest.get(pid)
        cached = self._samples.get(pid)
        if cached is not None and cached[0] is s:
            return cached[1]
        if s is None:
            part = b'"value":null,"quality":null,"source_time":null,"receive_time":null}'
        else:
            # NaN and infinities become null, as in every other heatrec JSON answer.
            part = pydantic_core.to_json({"value": s.value, "quality": s.quality.name, "source_time": s.source_time,
                                          "receive_time": s.receive_time}, inf_nan_mode="null")[1:]
        self._samples[pid] = (s, part)
        return part

    def json(self, device: str | None = None) -> bytes:
        """`{"points": [...]}` for every point, or for one device's points."""
        groups = self._by_device.values() if device is None else [self._by_device.get(device, [])]
        return b'{"points":[' + b",".join(static + self._sample_part(pid)
                                          for rows in groups for pid, static in rows) + b"]}"
