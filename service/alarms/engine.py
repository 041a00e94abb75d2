"""Alarm evaluation: pure, on injected time, over the latest samples and the drivers' states."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.alarms.model import Alarm, AlarmEvent, AlarmState, Severity
from service.config import AlarmsConfig, ControlConfig, LimitAlarm, StateAlarm
from service.errors import Conflict, NotFound
from service.model import Quality, Sample

S = AlarmState


def _state_text(rule: StateAlarm) -> str:
    """The default message of a state alarm."""
    if rule.bit is not None:
        return f"{rule.point} bit {rule.bit} is {rule.bit_value}"
    if rule.equals is not None:
        return f"{rule.point} reports code {rule.equals}"
    return f"{rule.point} reports a fault code"


class AlarmError(Conflict):
    """An operator action that does not apply (nothing to acknowledge, not shelved)."""


class UnknownAlarm(AlarmError, NotFound):
    """No alarm with this id."""

    http_status = 404


@dataclass(frozen=True)
class HeadroomRule:
    """Warn while a CDU's supply is within `warn_k` of its allowable maximum (before the CDU limit runs out)."""

    supply_point: str
    allowable_max_point: str | None  # read from the CDU; falls back to `allowable_max_value`
    allowable_max_value: float | None
    warn_k: float
    on_delay_s: float
    deadband_k: float = 0.2

    @property
    def alarm_id(self) -> str:
        """<supply point>:headroom."""
        return f"{self.supply_point}:headroom"


def headroom_rules(control: ControlConfig | None) -> list[HeadroomRule]:
    """One headroom warning per `[[control.cdus]]` entry, unless `cdu_headroom_alarm_k` turns them off."""
    if control is None or control.cdu_headroom_alarm_k is None:
        return []
    return [HeadroomRule(c.supply_temperature, c.allowable_max, c.allowable_max_value, control.cdu_headroom_alarm_k,
                         control.cdu_headroom_alarm_delay_s) for c in control.cdus]


class AlarmEngine:
    """Evaluates every alarm each cycle and applies ISA-18.2 state transitions."""

    def __init__(self, cfg: AlarmsConfig, devices: list[str], *, serial_devices: list[str] | None = None,
                 headroom: list[HeadroomRule] | None = None) -> None:
        self.cfg = cfg
        self.alarms: dict[str, Alarm] = {}
        self._rules: dict[str, LimitAlarm] = {}
        for rule in cfg.limits:
            for kind, limit in (("high", rule.high), ("low", rule.low)):
                if limit is not None:
                    text = rule.message or f"{rule.point} {'above' if kind == 'high' else 'below'} {limit}"
                    self._add(Alarm(f"{rule.point}:{kind}", rule.point, kind, Severity(rule.severity), text), rule)
            if rule.quality:
                self._add(Alarm(f"{rule.point}:quality", rule.point, "quality", Severity(rule.severity),
                                f"{rule.point} has no valid value (BAD or STALE)"), rule)
        self._states: dict[str, StateAlarm] = {}
        for st in cfg.states:
            self.alarms[st.alarm_id] = Alarm(st.alarm_id, st.point, "state", Severity(st.severity),
                                             st.message or _state_text(st))
            self._states[st.alarm_id] = st
        for dev in devices:
            self._add(Alarm(f"device:{dev}:offline", dev, "offline", Severity(cfg.device_offline_severity),
                            f"device {dev} is not connected"), None)
        # Meters whose telegrams carry a serial: a telegram of another meter is refused and alarms.
        for dev in serial_devices or []:
            self._add(Alarm(f"device:{dev}:meter_serial", dev, "meter_serial", Severity.HIGH,
                            f"device {dev}: telegrams from another meter (serial mismatch), refused"), None)

        self._headroom: dict[str, HeadroomRule] = {}
        for h in headroom or []:
            self._add(Alarm(h.alarm_id, h.supply_point, "headroom", Severity.HIGH,
                            f"{h.supply_point} within {h.warn_k:g} K of the CDU's allowable maximum: the heat "
                            "pumps are being held back for IT cooling, and little margin is left"), None)
            self._headroom[h.alarm_id] = h

    def _add(self, alarm: Alarm, rule: LimitAlarm | None) -> None:
        self.alarms[alarm.id] = alarm
        if rule is not None:
            self._rules[alarm.id] = rule

    # ------------------------------------------------------------------ conditions
    def _condition(self, alarm: Alarm, latest: Mapping[str, Sample], devices: Mapping[str, str],
                   faults: Mapping[str, str | None]) -> bool | None:
        """Raw condition now: True, False, or None to keep the previous one (no usable value)."""
        if alarm.kind == "offline":
            state = devices.get(alarm.source)
            return None if state is None else state != "connected"
        if alarm.kind == "meter_serial":
            if alarm.source not in faults:
                return None
            problem = faults[alarm.source]
            if problem is not None:
                alarm.detail = problem
            return problem is not None
        sample = latest.get(alarm.source)
        if alarm.kind == "headroom":
            return self._headroom_condition(alarm, sample, latest)
        if alarm.kind == "state":
            return self._state_condition(alarm, sample)
        if alarm.kind == "quality":
            return None if sample is None else sample.quality in (Quality.BAD, Quality.STALE)
        if sample is None or sample.value is None or sample.quality != Quality.GOOD:
            return None  # the quality alarm speaks for invalid values; hold the limit alarm as it was
        alarm.value = sample.value
        rule = self._rules[alarm.id]
        v = sample.value
        if alarm.kind == "high":
            assert rule.high is not None
            if v > rule.high:
                return True
            return False if v < rule.high - rule.deadband else None  # inside the deadband: no change
        assert rule.low is not None
        if v < rule.low:
            return True
        return False if v > rule.low + rule.deadband else None

    def _headroom_condition(self, alarm: Alarm, sample: Sample | None, latest: Mapping[str, Sample]) -> bool | None:
        """Allowable maximum minus supply below the warning; None without valid values (other alarms say so)."""
        rule = self._headroom[alarm.id]
        if sample is None or sample.value is None or sample.quality != Quality.GOOD:
            return None
        limit = rule.allowable_max_value
        if rule.allowable_max_point is not None:
            m = latest.get(rule.allowable_max_point)
            if m is not None and m.value is not None and m.quality == Quality.GOOD:
                limit = m.value
        if limit is None:
            return None
        room = limit - sample.value
        alarm.value = round(room, 3)
        alarm.detail = f"headroom {room:.2f} K (allowable maximum {limit:g} °C)"
        if room < rule.warn_k:
            return True
        return False if room > rule.warn_k + rule.deadband_k else None

    def _state_condition(self, alarm: Alarm, sample: Sample | None) -> bool | None:
        """A discrete value's condition: a bit, a code, or one of a set of codes (with its text)."""
        if sample is None or sample.value is None or sample.quality != Quality.GOOD:
            return None  # no valid value: the device's offline or the point's quality alarm says so
        rule = self._states[alarm.id]
        code = round(sample.value)
        alarm.value = sample.value
        if rule.bit is not None:
            return (code >> rule.bit) & 1 == rule.bit_value
        if rule.equals is not None:
            return code == rule.equals
        assert rule.codes is not None
        text = rule.codes.get(str(code))
        if text is not None:
            alarm.detail = f"code {code}: {text}"
        return text is not None

    def _delay(self, alarm: Alarm) -> float:
        if alarm.kind == "offline":
            return self.cfg.device_offline_delay_s
        if alarm.kind == "meter_serial":
            return 0.0  # one foreign telegram is one too many
        if alarm.kind == "state":
            return self._states[alarm.id].on_delay_s
        if alarm.kind == "headroom":
            return self._headroom[alarm.id].on_delay_s
        return self._rules[alarm.id].on_delay_s

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, latest: Mapping[str, Sample], devices: Mapping[str, str], now: datetime,
                 faults: Mapping[str, str | None] | None = None) -> list[AlarmEvent]:
        """Update every alarm from the current values; return the state changes.

        `faults`: per device, what its driver reports wrong with the telegrams now (a serial mismatch), or None.
        """
        faults = faults or {}
        events: list[AlarmEvent] = []
        for alarm in self.alarms.values():
            if alarm.state is S.SHELVED and alarm.shelved_until is not None and now >= alarm.shelved_until:
                alarm.shelved_until = None
                events.append(self._move(alarm, S.UNACK_ACTIVE if alarm.active else S.NORMAL, now, None,
                                         "shelf expired"))
            cond = self._condition(alarm, latest, devices, faults)
            if cond is None:
                continue
            if cond and not alarm.active:
                alarm.pending_since = alarm.pending_since or now
                if (now - alarm.pending_since).total_seconds() >= self._delay(alarm):
                    alarm.active = True
                    alarm.pending_since = None
                    events += self._on_change(alarm, now)
            elif not cond:
                alarm.pending_since = None
                if alarm.active:
                    alarm.active = False
                    events += self._on_change(alarm, now)
        return events

    def _on_change(self, alarm: Alarm, now: datetime) -> list[AlarmEvent]:
        if alarm.state is S.SHELVED:
            return []  # tracked in alarm.active; surfaces when the shelf expires
        if alarm.active:  # from normal or returned-unacknowledged: a new occurrence needs a new ack
            why = "condition active" + (f" ({alarm.detail})" if alarm.detail else "")
            return [self._move(alarm, S.UNACK_ACTIVE, now, None, why)]
        new = S.RTN_UNACK if alarm.state is S.UNACK_ACTIVE else S.NORMAL
        return [self._move(alarm, new, now, None, "condition cleared")]

    def _move(self, alarm: Alarm, new: AlarmState, now: datetime, by: str | None, why: str) -> AlarmEvent:
        old = alarm.state
        alarm.state = new
        alarm.since = now
        if new in (S.UNACK_ACTIVE, S.NORMAL):
            alarm.acked_by = None
        return AlarmEvent(alarm.id, now, old, new, alarm.value, by, f"{alarm.message}: {why}")

    # ------------------------------------------------------------------ operator actions
    def get(self, alarm_id: str) -> Alarm:
        """The alarm with this id, or AlarmError."""
        try:
            return self.alarms[alarm_id]
        except KeyError:
            raise UnknownAlarm(f"no alarm '{alarm_id}'") from None

    def acknowledge(self, alarm_id: str, by: str, now: datetime) -> AlarmEvent:
        """Acknowledge: active → acked active; returned-to-normal → normal."""
        alarm = self.get(alarm_id)
        if alarm.state is S.UNACK_ACTIVE:
            ev = self._move(alarm, S.ACKED_ACTIVE, now, by, f"acknowledged by {by}")
        elif alarm.state is S.RTN_UNACK:
            ev = self._move(alarm, S.NORMAL, now, by, f"acknowledged by {by}")
        else:
            raise AlarmError(f"alarm '{alarm_id}' is {alarm.state.value}: nothing to acknowledge")
        alarm.acked_by = by
        return ev

    def shelve(self, alarm_id: str, by: str, duration_s: float, now: datetime) -> AlarmEvent:
        """Hide an alarm for a while (it re-evaluates when the shelf expires)."""
        alarm = self.get(alarm_id)
        if duration_s <= 0:
            raise AlarmError("shelve duration must be positive")
        alarm.shelved_until = now + timedelta(seconds=duration_s)
        return self._move(alarm, S.SHELVED, now, by, f"shelved by {by} for {duration_s:.0f} s")

    def unshelve(self, alarm_id: str, by: str, now: datetime) -> AlarmEvent:
        """Return a shelved alarm to service now."""
        alarm = self.get(alarm_id)
        if alarm.state is not S.SHELVED:
            raise AlarmError(f"alarm '{alarm_id}' is not shelved")
        alarm.shelved_until = None
        return self._move(alarm, S.UNACK_ACTIVE if alarm.active else S.NORMAL, now, by, f"unshelved by {by}")
