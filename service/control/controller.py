"""The pure control core: one `step(image, dt)` per cycle, no IO; ControlLoop and the closed-loop tests drive it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from service.config import ControlConfig, ControlPid
from service.control.arbiter import Arbiter, Cap, Decision, Envelope, Priority, Request
from service.control.command import CAPACITY_FULL, DISPATCH_RECOVERY_K, DispatchCommand
from service.control.curve import CompensationCurve, ramp
from service.control.model import Mode, ProcessImage, Reading, TargetSource
from service.control.pid import Pid, PidGains
from service.control.staging import PumpStage, Staging, StagingInputs

SG_RUN, SG_BLOCKED = 0.0, 1.0
RUN_BIT = 1 << 0  # heat-pump status word: bit 0 = running
FAULT_BIT = 1 << 1  # heat-pump status word: bit 1 = fault/trip
FALLBACK_BIT = 1 << 2  # heat-pump status word: bit 2 = watchdog fallback to the local setpoint
TARGET_RATE_FILTER_S = 10.0
# The capacity hold (docs/DISPATCH.md): the supply must be this far below target before the hold engages. Ten
# times a real supply sensor's noise (~0.02 K), so a supply at target never engages it, yet small, because inside
# the band the PID still integrates (at most Kp·0.2/Ti K per second).
CAPACITY_HOLD_DEADBAND_K = 0.2
# A pump counts as held back by its capacity limit when its heat output is within this many points of capacity of
# it: less than the plan's 5-point margin (CAPACITY_LIMIT_MARGIN), so a pump making just the plan's heat does not.
CAPACITY_HOLD_BAND = 2.0  # percentage points


def gains(p: ControlPid) -> PidGains:
    """Config → PID gains."""
    return PidGains(p.kp, p.ti_s, p.td_s, p.derivative_filter, p.tracking_time_s)


@dataclass
class StepResult:
    """What one cycle decided: the writes and everything the status shows."""

    writes: dict[str, float]
    mode: Mode
    target: float | None
    target_requested: float | None
    target_source: TargetSource
    measured: float | None
    outdoor: float | None
    constraint: str | None
    safe_state: bool
    safe_state_reason: str | None
    setpoints: dict[str, float | None]
    running: list[str]  # commanded to run (staging); the status shows what the pumps report
    cdu_headroom_k: float | None
    strategy: str = "boost"
    reported_running: list[str] = field(default_factory=list)
    not_running: dict[str, str] = field(default_factory=dict)  # pump id -> why it is not running
    decisions: dict[str, Decision] = field(default_factory=dict)
    caps: dict[str, float] = field(default_factory=dict)  # point -> safety cap in force (the CDU limit)
    # The dispatch plan's step: None (no command), "applied", "yielded:<why>" (cooling first) or "inactive:<mode>".
    dispatch: str | None = None
    # pump id -> capacity limit (%) the arbiter let through this cycle, for pumps with a capacity_limit point
    capacity_limits: dict[str, float] = field(default_factory=dict)


class Controller:
    """Target, PID with feedforward, CDU limit (min-select override), staging, safe state and the arbiter."""

    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg
        self.mode: Mode = cfg.initial_mode
        self.override: float | None = None
        self.manual_setpoint: float | None = None
        self.curve = CompensationCurve([(p.outdoor, p.supply) for p in cfg.curve], cfg.target_min, cfg.target_max)
        self.pid = Pid(gains(cfg.pid))
        envelopes: dict[str, Envelope] = {}
        for hp in cfg.heat_pumps:
            envelopes[hp.setpoint] = Envelope(cfg.setpoint_min, cfg.setpoint_max, cfg.setpoint_rate_k_per_s)
            if hp.sg_ready:
                envelopes[hp.sg_ready] = Envelope(0.0, 3.0)
            if hp.capacity_limit:
                envelopes[hp.capacity_limit] = Envelope(0.0, CAPACITY_FULL)  # no rate: a release acts at once
            if hp.heartbeat:
                envelopes[hp.heartbeat] = Envelope(0.0, 65535.0)
        self.arbiter = Arbiter(envelopes)
        st = cfg.staging
        self.staging = Staging([PumpStage(h.id, h.capacity_kw) for h in cfg.heat_pumps], st.min_run_s,
                               st.min_stop_s, st.stage_up_delay_s, st.stage_down_delay_s, st.stage_up_load,
                               st.stage_down_load)
        self._staged = any(h.sg_ready for h in cfg.heat_pumps)
        self._target: float | None = None
        self._output: float | None = None
        self._lim_reset: float | None = None  # external-reset state of the CDU limit controller
        self._frozen: dict[str, tuple[float, float]] = {}  # point -> (value, since when unchanged)
        self._disagree_since: float | None = None  # when the two supply sensors began to disagree
        self._agree_since: float | None = None  # when they last began to agree within the band
        self._distrusted = False  # the disagreement lasted: the supply input is not believed until it agrees
        self._beat = 0
        self._direct = False
        self._target_rate = 0.0
        self._seen_inputs = False
        self._cap_active = False
        self._last_headroom: float | None = None
        self._headroom_d = 0.0
        self._headroom_f: float | None = None  # the headroom low-passed for the derivative
        self._pid_live = False
        self.last: StepResult | None = None
        # Set by the dispatch task (service/dispatch/task.py); None: today's control, exactly.
        self.dispatch: DispatchCommand | None = None
        self._dispatch_yield: str | None = None  # why the plan is ignored until IT cooling has recovered
        self._dispatch_state: str | None = None

    # --- operator side (validated by ControlLoop.request) ---------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Change mode; entering manual holds the present output (bumpless)."""
        if mode == "manual" and self.mode != "manual" and self._output is not None:
            self.manual_setpoint = round(self._output, 2)
        self.mode = mode

    # --- the cycle ------------------------------------------------------------------------------

    def _frozen_check(self, point: str, r: Reading, now: float) -> Reading:
        """The reading, or a "frozen" one when its value has not changed at all for frozen_after_s."""
        if self.cfg.frozen_after_s is None or r.value is None:
            return r
        last = self._frozen.get(point)
        if last is None or r.value != last[0]:
            self._frozen[point] = (r.value, now)
        elif now - last[1] >= self.cfg.frozen_after_s:
            return Reading(None, "frozen")
        return r

    def _cross_check(self, image: ProcessImage, pv: float | None, now: float) -> str | None:
        """Why the supply temperature is not believed (it disagrees with its second sensor for too long), or None.

        The steering input may come over a path that can be spoofed (an MQTT telegram); a second sensor on
        another path (the heat pump's own, over Modbus) must tell the same story within the band. An episode
        of disagreement ends only after the delay of agreement in a row, going in and coming out.
        """
        cfg = self.cfg
        check = cfg.supply_temperature_check
        other = image.get(check).value if check else None
        if check is None:
            self._disagree_since, self._agree_since, self._distrusted = None, None, False
            return None
        if pv is None or other is None:
            # Nothing to compare this cycle: the supply input's own checks stand alone, and an episode stands as
            # it is. A gap in either sensor proves nothing, so it neither ends a distrust (else an attacker who
            # also makes the check sensor miss a poll would escape the check) nor restarts the delay.
            if self._distrusted:
                return (f"disagreeing:{cfg.supply_temperature} distrusted and {check} not usable to clear it: "
                        "the two must agree for the delay")
            return None
        gap = abs(pv - other)
        hold = cfg.supply_temperature_check_delay_s
        if gap <= cfg.supply_temperature_check_band_k:
            # One agreeing sample proves little when a spoofer interleaves its telegrams with the real ones:
            # an episode ends only after the two have agreed for the whole delay in a row.
            if self._agree_since is None:
                self._agree_since = now
            if now - self._agree_since >= hold:
                self._disagree_since, self._distrusted = None, False
        else:
            self._agree_since = None
            if self._disagree_since is None:
                self._disagree_since = now
        if self._disagree_since is None:
            return None
        lasted = now - self._disagree_since
        if not self._distrusted and (lasted < hold or self._agree_since is not None):
            return None  # an episode trips on a disagreeing sample once it has lasted the delay
        self._distrusted = True
        agreeing = f", agreeing for {now - self._agree_since:.0f} s" if self._agree_since is not None else ""
        return (f"disagreeing:{cfg.supply_temperature} ({pv:.1f} °C) and {check} ({other:.1f} °C) are {gap:.1f} K "
                f"apart (band {cfg.supply_temperature_check_band_k:g} K) since {lasted:.0f} s{agreeing}")

    @property
    def seen_inputs(self) -> bool:
        """Whether every input has been usable at least once since start."""
        return self._seen_inputs

    def _raw_target(self, outdoor: Reading) -> tuple[float | None, TargetSource]:
        cfg = self.cfg
        if self.override is not None:
            return self.override, "override"
        if cfg.target == "fixed" and cfg.fixed_target is not None:
            return min(max(cfg.fixed_target, cfg.target_min), cfg.target_max), "fixed"
        return (self.curve(outdoor.value) if outdoor.value is not None else None), "curve"

    def _cdu(self, image: ProcessImage) -> tuple[float | None, str | None]:
        """Smallest headroom (allowable max - supply) over the CDUs, or the first unusable input.

        A heat pump whose status word is unusable counts too: whether it still takes heat from the CDUs
        (or has tripped) is then unknown, so IT cooling cannot be vouched for.
        """
        headroom: float | None = None
        for hp in self.cfg.heat_pumps:
            status = image.get(hp.status) if hp.status else None
            if status is not None and status.value is None:
                return None, f"{status.problem}:{hp.status}"
        for cdu in self.cfg.cdus:
            sup = self._frozen_check(cdu.supply_temperature, image.get(cdu.supply_temperature), image.now_s)
            if sup.value is None:
                return None, f"{sup.problem}:{cdu.supply_temperature}"
            limit = cdu.allowable_max_value
            if cdu.allowable_max is not None:
                lim = image.get(cdu.allowable_max)
                if lim.value is None and limit is None:
                    return None, f"{lim.problem}:{cdu.allowable_max}"
                limit = lim.value if lim.value is not None else limit
            assert limit is not None  # the config requires a point or a value
            room = limit - sup.value
            headroom = room if headroom is None else min(headroom, room)
        return headroom, None

    def step(self, image: ProcessImage, dt: float) -> StepResult:
        """One cycle on a frozen image; returns the writes the arbiter let through."""
        cfg, now = self.cfg, image.now_s
        pv_r = self._frozen_check(cfg.supply_temperature, image.get(cfg.supply_temperature), now)
        pv = pv_r.value
        disagreeing = self._cross_check(image, pv, now)
        outdoor = image.get(cfg.outdoor_temperature) if cfg.outdoor_temperature else Reading(None, "missing")
        raw, source = self._raw_target(outdoor)
        note: str | None = None
        if raw is None:
            raw = self._target  # outdoor input lost: hold the last target rather than guess
            note = f"target_held:outdoor_{outdoor.problem}" if raw is not None else None
        if raw is not None:
            # At start-up the target ramps from the measured supply, so taking over is bumpless too.
            start = self._target if self._target is not None else (pv if pv is not None else raw)
            self._target = ramp(start, raw, cfg.target_ramp_k_per_min / 60.0 * dt)
        prev_target = self.last.target if self.last else self._target
        target = self._target
        ff = self._feedforward(image, target, prev_target, dt)
        headroom, cdu_problem = self._cdu(image)
        if headroom is None:
            self._last_headroom, self._headroom_d, self._headroom_f = None, 0.0, None

        safe_reason: str | None = None
        if self.mode != "off":
            if cdu_problem is not None:
                safe_reason = cdu_problem
            elif self.mode == "auto" and pv is None:
                safe_reason = f"{pv_r.problem}:{cfg.supply_temperature}"
            elif self.mode == "auto" and target is None:
                safe_reason = f"{outdoor.problem}:{cfg.outdoor_temperature}"
            elif self.mode == "auto" and disagreeing is not None:
                safe_reason = disagreeing
        if self._output is None or (safe_reason is None and not self._seen_inputs):
            # First usable cycle: nothing was written yet, so the pumps hold what the supply shows.
            self._output = pv if pv is not None else (target if target is not None else cfg.setpoint_min)
            self._output = min(max(self._output, cfg.setpoint_min), cfg.setpoint_max)
            self.pid.reset_to(self._output, pv, target, ff)

        requests: list[Request] = []
        caps: list[Cap] = []
        constraint: str | None = note
        holds: list[Cap] = []  # the capacity hold: the setpoint may not rise while the plan's caps bind
        running = [h.id for h in cfg.heat_pumps]
        dispatching = False
        self._dispatch_state = None
        if safe_reason is not None:
            constraint = f"safe_state:{safe_reason.split(':', 1)[0]}_input"
            self.staging.force_all_on(now)
            if self.dispatch is not None:
                self._dispatch_yield, self._dispatch_state = "safe_state", "yielded:safe_state"
            # Until the inputs were usable once (start-up), nothing is written: the pumps keep what they have.
            if cfg.safe_setpoint is not None and self._seen_inputs:
                requests += self._pump_requests(cfg.safe_setpoint, Priority.SAFETY, "safe_state", running)
            else:
                for hp in cfg.heat_pumps:  # released: the device's watchdog takes over; rates restart later
                    self.arbiter.forget(hp.setpoint)
                requests += self._release_requests()
            writing = cfg.safe_setpoint is not None and self._seen_inputs
            held = cfg.safe_setpoint if writing and cfg.safe_setpoint is not None else (
                pv if pv is not None else self._output)
            self._output = held
            self.pid.reset_to(held, pv, target, ff)
            self._lim_reset = held
            self._cap_active = False
        elif self.mode == "off":
            constraint = "off"
            for hp in cfg.heat_pumps:
                self.arbiter.forget(hp.setpoint)
            requests += self._release_requests()
            held = pv if pv is not None else self._output
            self.pid.reset_to(held, pv, target, ff)
            self._output = self._lim_reset = held
            self._cap_active = False
        else:
            proposed: float
            if self.mode == "auto" and target is not None and pv is not None:
                if not self._pid_live:
                    # Taking over (start-up, after a safe state, off or manual): the integral restarts from
                    # the output in force with this cycle's feedforward, so the first output does not jump.
                    self.pid.reset_to(self._output, pv, target, ff)
                proposed = self.pid.update(target, pv, dt, ff)
                prio = Priority.AUTOMATIC
            else:
                proposed = self.manual_setpoint if self.manual_setpoint is not None else self._output
                prio = Priority.OPERATOR
            if headroom is not None:
                # IT cooling first: a PI with external reset (the applied output) caps the setpoint;
                # min-select with the main loop, so neither winds up while the other is in charge.
                if self._lim_reset is None:
                    self._lim_reset = self._output
                g = cfg.cdu_pid
                if self._cap_active:  # integrate only while the limit is in charge ...
                    self._lim_reset += (self._output - self._lim_reset) * min(dt / (g.ti_s or 1e9), 1.0)
                else:  # ... otherwise sit on the output, so a fast-moving main loop never meets a stale cap
                    self._lim_reset = self._output
                # Derivative on the headroom: a shrinking headroom lowers the cap before the margin is gone,
                # because the heat pump answers a setpoint change slower than the CDU loop warms.
                # The headroom is low-passed first (tf = Td/N), then differentiated and filtered again:
                # a single filter lets a real sensor's 0.02 K noise through as kelvins of cap.
                tf = g.td_s / g.derivative_filter
                if self._headroom_f is None or g.td_s <= 0:
                    self._headroom_f = headroom
                prev_f = self._headroom_f
                self._headroom_f += (headroom - self._headroom_f) * dt / (tf + dt) if g.td_s > 0 else 0.0
                if self._last_headroom is not None and dt > 0 and g.td_s > 0:
                    d_raw = g.td_s * (self._headroom_f - prev_f) / dt
                    self._headroom_d += (d_raw - self._headroom_d) * dt / (tf + dt)
                limit = self._lim_reset + g.kp * (headroom - cfg.cdu_margin_k + min(self._headroom_d, 0.0))
                # Below the floor a lower setpoint takes less heat from the CDUs (the condenser cannot pass it
                # to the network): the cap stops there, and so does its integral (it follows the output).
                floor = cfg.cdu_limit_setpoint_min if cfg.cdu_limit_setpoint_min is not None else cfg.setpoint_min
                limit = max(limit, floor)
                # A cap above where the rate clamp can go this cycle cannot bind: leave it out (and out of status).
                if limit < self._output + cfg.setpoint_rate_k_per_s * dt:
                    caps += [Cap(h.setpoint, limit, "cdu_limit") for h in cfg.heat_pumps]
            dispatching = self._dispatch_applies(headroom, now)
            running = self._dispatch_running(image) if dispatching else \
                self._stage(image, now, target, proposed, headroom)
            requests += self._pump_requests(proposed, prio, self.mode, running, dispatching)
            if dispatching and self._capacity_binds(image, running, pv, target):
                # Anti-windup: more setpoint gives no more heat while every running pump sits at the plan's cap.
                # Held where it is (never lowered), the PID's tracking bleeds its integral; the CDU limit, if
                # lower, still wins (the arbiter takes the least cap). Not in `caps`: those bound every writer.
                holds = [Cap(h.setpoint, self.arbiter.last.get(h.setpoint, self._output), "capacity_limit")
                         for h in cfg.heat_pumps if h.id in running]
        if safe_reason is None:
            self._seen_inputs = True
        if safe_reason is None or (cfg.safe_setpoint is not None and self._seen_inputs):
            if self.mode != "off":
                self._beat = (self._beat + 1) % 65536
                requests += [Request(h.heartbeat, float(self._beat), Priority.SAFETY, "heartbeat")
                             for h in cfg.heat_pumps if h.heartbeat]
        decisions = self.arbiter.resolve(requests, caps + holds, dt)
        self._pid_live = safe_reason is None and self.mode == "auto"
        self._last_headroom = headroom
        setpoints = {h.id: (decisions[h.setpoint].value if h.setpoint in decisions else None)
                     for h in cfg.heat_pumps}
        # A pump the plan holds at its least output (no SG-Ready point) does not steer the PID's tracking.
        applied = [v for k, v in setpoints.items() if v is not None and (not dispatching or k in running)]
        if applied and safe_reason is not None:
            # Walking to the safe setpoint at the rate clamp: the PID resumes from where the pumps really are.
            self._output = self._lim_reset = sum(applied) / len(applied)
            self.pid.reset_to(self._output, pv, target, ff)
        if applied and safe_reason is None and self.mode != "off":
            out = sum(applied) / len(applied)
            if self.mode == "auto":
                self.pid.track(proposed, out, dt)
            else:
                self.pid.reset_to(out, pv, target, ff)
            self._output = out
            limits = {decisions[h.setpoint].limited_by for h in cfg.heat_pumps if h.setpoint in decisions}
            if holds:
                # Cooling first sees the CDU limit bind even where the (lower) capacity hold named the decision.
                cdu_caps = {c.point: c.high for c in caps if c.source == "cdu_limit"}
                self._cap_active = any(r.priority < Priority.SAFETY and r.value > cdu_caps[r.point]
                                       for r in requests if r.point in cdu_caps)
            else:  # without a hold, every cap on a setpoint is the CDU limit's
                self._cap_active = any(lim and lim.startswith("cap:") for lim in limits)
            if self._cap_active or (headroom is not None and headroom < 0):
                constraint = "cdu_limit"
            elif "cap:capacity_limit" in limits:
                constraint = constraint or "capacity_limit"
            elif "envelope" in limits:
                constraint = constraint or "setpoint_limit"
            elif "rate" in limits:
                constraint = constraint or "rate_limit"
        reported, not_running = self._reported(image, running)
        result = StepResult(
            writes={p: d.value for p, d in decisions.items()}, mode=self.mode, target=target,
            target_requested=raw, target_source=source, measured=pv, outdoor=outdoor.value, constraint=constraint,
            safe_state=safe_reason is not None, safe_state_reason=safe_reason, setpoints=setpoints,
            running=running, cdu_headroom_k=headroom, strategy="direct" if self._direct else "boost",
            caps={c.point: c.high for c in caps},
            decisions=decisions, reported_running=reported, not_running=not_running, dispatch=self._dispatch_state,
            capacity_limits={h.id: decisions[h.capacity_limit].value for h in cfg.heat_pumps
                             if h.capacity_limit and h.capacity_limit in decisions})
        self.last = result
        return result

    def _feedforward(self, image: ProcessImage, target: float | None, prev_target: float | None,
                     dt: float) -> float:
        """Static feedforward: the target itself, its rate (lead), recovered heat and outdoor temperature."""
        cfg = self.cfg
        if not cfg.feedforward or target is None:
            return 0.0
        ff = target
        if cfg.feedforward_lead_s > 0 and prev_target is not None and dt > 0:
            # The target moves in small steps (sensor resolution, ramp): filter its rate, or each step
            # would be a setpoint spike that the rate clamp cuts off.
            rate = (target - prev_target) / dt
            self._target_rate += (rate - self._target_rate) * dt / (TARGET_RATE_FILTER_S + dt)
            ff += cfg.feedforward_lead_s * self._target_rate
        if cfg.feedforward_heat and cfg.feedforward_heat_gain:
            values = [image.get(p).value for p in cfg.feedforward_heat]
            if all(v is not None for v in values):  # a partial sum would be a wrong feedforward
                heat = math.fsum(v for v in values if v is not None)
                ff += cfg.feedforward_heat_gain * (heat - cfg.feedforward_heat_reference_kw) / 1000.0
        if cfg.feedforward_outdoor_gain and cfg.outdoor_temperature:
            out = image.get(cfg.outdoor_temperature).value
            if out is not None:
                ff += cfg.feedforward_outdoor_gain * (out - cfg.feedforward_outdoor_reference)
        return ff

    def _release_requests(self) -> list[Request]:
        """Handing the pumps back: no setpoints, no heartbeats, but none left blocked by staging or capped by a plan.

        A capacity limit is released even before the inputs were usable once: 100 % is never the wrong way for IT
        cooling, and a cap left from before a restart must not outlive it.
        """
        out = [Request(h.capacity_limit, CAPACITY_FULL, Priority.SAFETY, "release")
               for h in self.cfg.heat_pumps if h.capacity_limit]
        if not self._staged or not self._seen_inputs:
            return out
        return out + [Request(h.sg_ready, SG_RUN, Priority.SAFETY, "release")
                      for h in self.cfg.heat_pumps if h.sg_ready]

    def _reported(self, image: ProcessImage, commanded: list[str]) -> tuple[list[str], dict[str, str]]:
        """Which pumps run by their own status word (and why the others do not), not only by command."""
        running: list[str] = []
        why: dict[str, str] = {}
        for hp in self.cfg.heat_pumps:
            # The pump's own word first: a trip or a lost device is the truth whatever staging commands.
            r = image.get(hp.status) if hp.status else None
            word = None if r is None or r.value is None else int(r.value)
            if r is not None and word is None:
                why[hp.id] = f"status unknown: {hp.status} is {r.problem} (device offline or not read)"
            elif word is not None and word & FAULT_BIT:
                why[hp.id] = f"tripped: {hp.status} bit 1 (fault) set"
            elif hp.id not in commanded:
                why[hp.id] = "blocked by staging"
            elif word is not None and not word & RUN_BIT:
                why[hp.id] = f"stopped: {hp.status} bit 0 (running) clear"
            else:
                running.append(hp.id)  # without a status word the command is all that is known
                if word is not None and word & FALLBACK_BIT:
                    why[hp.id] = "running on its local setpoint: watchdog fallback (bit 2)"
        return running, why

    def _pump_requests(self, value: float, prio: Priority, source: str, running: list[str],
                       dispatching: bool = False) -> list[Request]:
        out: list[Request] = []
        cmd = self.dispatch if dispatching else None
        for hp in self.cfg.heat_pumps:
            if cmd is not None and hp.id not in running and not hp.sg_ready:
                # The plan stops a pump that has no SG-Ready input: it is held at its least output instead.
                out.append(Request(hp.setpoint, self.cfg.setpoint_min, prio, "dispatch"))
            else:
                out.append(Request(hp.setpoint, value, prio, source))
            if hp.sg_ready and self._staged:
                if cmd is not None:
                    state = float(cmd.sg_ready.get(hp.id, SG_RUN)) if hp.id in running else SG_BLOCKED
                    out.append(Request(hp.sg_ready, state, prio, "dispatch"))
                else:
                    out.append(Request(hp.sg_ready, SG_RUN if hp.id in running else SG_BLOCKED, prio, source))
            if hp.capacity_limit:
                # The plan's heat as a cap only while the plan is applied, on a pump it runs; otherwise (no plan,
                # yielded to IT cooling, manual, safe state, a pump out of service or tripped) no cap at all.
                if cmd is not None and hp.id in running:
                    limit = min(max(cmd.capacity_limit.get(hp.id, CAPACITY_FULL), 0.0), CAPACITY_FULL)
                    out.append(Request(hp.capacity_limit, limit, prio, "dispatch"))
                else:
                    out.append(Request(hp.capacity_limit, CAPACITY_FULL, prio, source))
        return out

    def _dispatch_applies(self, headroom: float | None, now: float) -> bool:
        """Whether this cycle follows the plan's step: auto mode, and IT cooling not in need of every pump.

        Cooling first: with the CDU headroom below its margin (or the CDU limit capping), the plan is ignored
        and every pump enabled, until the headroom is DISPATCH_RECOVERY_K above the margin again.
        """
        cmd = self.dispatch
        if cmd is None:
            self._dispatch_yield = None
            return False
        if self.mode != "auto":
            self._dispatch_state = f"inactive:{self.mode}"
            return False
        margin = self.cfg.cdu_margin_k
        if headroom is not None and (headroom < margin or self._cap_active):
            if self._dispatch_yield is None:
                self.staging.force_all_on(now)
            self._dispatch_yield = "cdu_headroom"
        elif self._dispatch_yield is not None and headroom is not None and headroom < margin + DISPATCH_RECOVERY_K:
            pass  # recovering: the plan waits until the headroom is back with room to spare
        else:
            self._dispatch_yield = None
        if self._dispatch_yield is not None:
            self._dispatch_state = f"yielded:{self._dispatch_yield}"
            return False
        self._dispatch_state = "applied"
        return True

    def _capacity_binds(self, image: ProcessImage, running: list[str], pv: float | None,
                        target: float | None) -> bool:
        """Whether the plan's capacity limits are what holds the supply below target (the hold may engage).

        Every running pump must have a capacity_limit point with a limit below 100 % and report a heat output
        within CAPACITY_HOLD_BAND of it: a pump without a cap, or with room under it, still answers the setpoint.
        """
        cmd = self.dispatch
        if cmd is None or pv is None or target is None or pv >= target - CAPACITY_HOLD_DEADBAND_K or not running:
            return False
        for hp in self.cfg.heat_pumps:
            if hp.id not in running:
                continue
            limit = min(max(cmd.capacity_limit.get(hp.id, CAPACITY_FULL), 0.0), CAPACITY_FULL)
            heat = image.get(hp.heat_output).value if hp.heat_output else None
            if not hp.capacity_limit or limit >= CAPACITY_FULL or heat is None:
                return False
            if heat < (limit - CAPACITY_HOLD_BAND) / 100.0 * hp.capacity_kw:
                return False
        return True

    def _dispatch_running(self, image: ProcessImage) -> list[str]:
        """The pumps the plan's step has in service, less any that has tripped (its status word's fault bit)."""
        cmd = self.dispatch
        assert cmd is not None
        out = []
        for hp in self.cfg.heat_pumps:
            status = image.get(hp.status).value if hp.status else None
            if hp.id in cmd.in_service and not (status is not None and int(status) & FAULT_BIT):
                out.append(hp.id)
        return out

    def _stage(self, image: ProcessImage, now: float, target: float | None, proposed: float,
               headroom: float | None) -> list[str]:
        cfg = self.cfg
        if not self._staged:
            return [h.id for h in cfg.heat_pumps]
        available: dict[str, bool] = {}
        heat: float | None = 0.0
        running = set(self.staging.running())
        for hp in cfg.heat_pumps:
            status = image.get(hp.status).value if hp.status else None
            available[hp.id] = not (status is not None and int(status) & FAULT_BIT)
            if hp.id in running:
                ho = image.get(hp.heat_output).value if hp.heat_output else None
                heat = None if heat is None or ho is None else heat + ho
        st = cfg.staging
        direct = False
        if st.direct_source_temperature and target is not None:
            src = image.get(st.direct_source_temperature).value
            if src is not None:
                margin = 0.0 if self._direct else st.direct_margin_k
                direct = src - st.direct_approach_k >= target + margin
        self._direct = direct
        cdu_tight = headroom is not None and headroom < cfg.cdu_margin_k
        saturated = proposed >= cfg.setpoint_max and self.mode == "auto"
        return self.staging.step(StagingInputs(now, available, heat, cdu_tight or saturated, direct))
