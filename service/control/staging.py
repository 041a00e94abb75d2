"""Lead/lag staging of heat pumps with minimum run and stop times, and the direct-exchange decision."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PumpStage:
    """Staging state of one heat pump."""

    id: str
    capacity_kw: float
    on: bool = True
    since_s: float = -1e12  # when it last started or stopped; far past so nothing is locked at start


@dataclass
class StagingInputs:
    """What staging looks at in one cycle."""

    now_s: float
    available: dict[str, bool]  # False = faulted/tripped: not counted, not started
    heat_output_kw: float | None  # sum over running pumps; None = unknown (no load-based staging)
    need_more: bool  # output saturated high or the CDU limit is active: more pumps would help
    direct_suffices: bool  # the direct exchanger alone can hold the target


@dataclass
class Staging:
    """Decides which pumps run; the lead is the first available pump in the rotation order."""

    pumps: list[PumpStage]
    min_run_s: float
    min_stop_s: float
    up_delay_s: float
    down_delay_s: float
    up_load: float
    down_load: float
    _up_since: float | None = field(default=None, init=False)
    _down_since: float | None = field(default=None, init=False)

    def running(self) -> list[str]:
        """Ids of the pumps staged on."""
        return [p.id for p in self.pumps if p.on]

    def force_all_on(self, now_s: float) -> None:
        """Safe state: every pump enabled, whatever the timers say (IT cooling first)."""
        for p in self.pumps:
            if not p.on:
                p.on, p.since_s = True, now_s
        self._up_since = self._down_since = None

    def step(self, inp: StagingInputs) -> list[str]:
        """Advance the staging decision; returns the running pump ids."""
        now = inp.now_s
        # A faulted pump counts as off at once (its timers restart so it is not flapped back in).
        for p in self.pumps:
            if p.on and not inp.available.get(p.id, True):
                p.on, p.since_s = False, now
        on = [p for p in self.pumps if p.on]
        startable = [p for p in self.pumps if not p.on and inp.available.get(p.id, True)
                     and now - p.since_s >= self.min_stop_s]
        stoppable = [p for p in reversed(on) if now - p.since_s >= self.min_run_s]  # lag pumps stop first
        cap_on = sum(p.capacity_kw for p in on)
        heat = inp.heat_output_kw
        want_up = inp.need_more or (not on and not inp.direct_suffices) or (
            heat is not None and cap_on > 0 and heat > self.up_load * cap_on)
        want_down = not inp.need_more and bool(on) and (inp.direct_suffices or (
            heat is not None and len(on) > 1
            and heat < self.down_load * (cap_on - on[-1].capacity_kw)))
        up_since = self._up_since = (now if self._up_since is None else self._up_since) if want_up else None
        down_since = self._down_since = \
            (now if self._down_since is None else self._down_since) if want_down else None
        if up_since is not None and startable and now - up_since >= self.up_delay_s:
            startable[0].on, startable[0].since_s = True, now
            self._up_since = None
        elif down_since is not None and stoppable and now - down_since >= self.down_delay_s:
            stoppable[0].on, stoppable[0].since_s = False, now
            self._down_since = None
        return self.running()
