"""Prometheus metrics of the running service, read live from its parts at scrape time."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from drivers.base import Driver
    from service.alarms.manager import AlarmManager
    from service.alarms.mqtt_publisher import AlarmPublisher
    from service.bus import SampleBus
    from service.control.loop import ControlLoop
    from service.dispatch.task import DispatchTask
    from service.fleet.view import FleetState
    from service.scada.server import ScadaServer
    from service.scada.sparkplug.node import EdgeNode
    from service.storage.database import Database
    from service.storage.journal import Journal
    from service.storage.writer import SampleWriter


class MetricsSource(Protocol):
    """The parts of the running service the metrics read (service.app.Service is one).

    Declared here rather than imported from service.app, which builds the registry: the composition
    root depends on the metrics, never the other way round.
    """

    @property
    def bus(self) -> SampleBus:
        """The sample bus."""
        ...

    @property
    def drivers(self) -> Sequence[Driver[Any]]:
        """One driver per device."""
        ...

    @property
    def alarms(self) -> AlarmManager | None:
        """The alarm manager, once started."""
        ...

    @property
    def alarm_publisher(self) -> AlarmPublisher | None:
        """The alarm MQTT publisher, when [alarms.mqtt] is configured."""
        ...

    @property
    def writer(self) -> SampleWriter | None:
        """The storage writer, once started."""
        ...

    @property
    def control(self) -> ControlLoop | None:
        """The control loop, when [control] is configured."""
        ...

    @property
    def scada(self) -> ScadaServer | None:
        """The SCADA OPC UA server, when [scada] is configured."""
        ...

    @property
    def database(self) -> Database | None:
        """The database link, once the service runs."""
        ...

    @property
    def journal(self) -> Journal | None:
        """The durable journal of audit entries, alarm transitions, events and manual readings."""
        ...

_DRIVER_STATES = ("connecting", "connected", "backing_off", "stopped")
_DRIVER_HELP = {
    "reads": "Successful reads (polled requests, or received MQTT messages)",
    "read_errors": "Reads answered with an error, or values that could not be decoded",
    "malformed_messages": "MQTT payloads that yielded no value",
    "failures": "Connections that failed or were lost",
    "reconnects": "Connections re-established after a failure",
    "samples": "Samples handed to the sample bus",
    "writes": "Successful writes to the device",
    "write_failures": "Writes the device refused or that failed",
}


class ServiceCollector(Collector):
    """Turns the service's own counters into metric families on every scrape (no double bookkeeping)."""

    def __init__(self, service: MetricsSource) -> None:
        self._svc = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Yield every family; called by the registry at scrape time."""
        svc = self._svc
        yield CounterMetricFamily("heatrec_samples_published", "Samples published on the sample bus",
                                  value=svc.bus.published)
        depth = GaugeMetricFamily("heatrec_bus_queue_depth", "Samples waiting for a bus subscriber",
                                  labels=["subscriber"])
        dropped = CounterMetricFamily("heatrec_bus_dropped", "Samples dropped because a subscriber's queue "
                                      "was full", labels=["subscriber"])
        for sub in svc.bus.subscriptions:
            depth.add_metric([sub.name], sub.queue.qsize())
            dropped.add_metric([sub.name], sub.dropped)
        yield depth
        yield dropped

        quality = GaugeMetricFamily("heatrec_points", "Points by the quality of their latest sample",
                                    labels=["quality"])
        for q, n in sorted(Counter(s.quality.name for s in svc.bus.latest.values()).items()):
            quality.add_metric([q], n)
        yield quality

        state = GaugeMetricFamily("heatrec_driver_state", "1 for the connection state each device is in",
                                  labels=["device", "state"])
        counters: dict[str, CounterMetricFamily] = {}
        for d in svc.drivers:
            current = str(d.state.value)
            for s in _DRIVER_STATES:
                state.add_metric([d.device_id, s], 1.0 if s == current else 0.0)
            for f in dataclasses.fields(d.stats):
                fam = counters.setdefault(f.name, CounterMetricFamily(
                    f"heatrec_driver_{f.name}", _DRIVER_HELP.get(f.name, f"Driver counter {f.name.replace('_', ' ')}"),
                    labels=["device"]))
                fam.add_metric([d.device_id], getattr(d.stats, f.name))
        yield state
        yield from counters.values()
        yield from _refusal_families(svc)

        if svc.alarms is not None:
            active = GaugeMetricFamily("heatrec_alarms", "Alarms by state and severity", labels=["state", "severity"])
            for (st_name, sev), n in sorted(Counter((a.state.value, a.severity.value)
                                                    for a in svc.alarms.engine.alarms.values()).items()):
                active.add_metric([st_name, sev], n)
            yield active
        if svc.alarm_publisher is not None:
            ps = svc.alarm_publisher.stats
            yield GaugeMetricFamily("heatrec_alarm_mqtt_connected", "1 while connected to the alarm MQTT broker",
                                    value=1.0 if ps.connected else 0.0)
            yield CounterMetricFamily("heatrec_alarm_mqtt_published", "Alarm messages the broker accepted",
                                      value=ps.published)
            yield CounterMetricFamily("heatrec_alarm_mqtt_dropped", "Alarm changes dropped because the queue was "
                                      "full while the broker was unavailable", value=ps.dropped)
            yield CounterMetricFamily("heatrec_alarm_mqtt_connects", "Connections made to the alarm MQTT broker",
                                      value=ps.connects)
            yield GaugeMetricFamily("heatrec_alarm_mqtt_queue_depth", "Alarm changes waiting to be published",
                                    value=svc.alarm_publisher.queue_depth)

        if svc.writer is not None:
            st = svc.writer.stats
            yield CounterMetricFamily("heatrec_storage_rows_written", "Sample rows committed to the database",
                                      value=st.rows_written)
            yield CounterMetricFamily("heatrec_storage_batches", "Batches written", value=st.batches)
            yield CounterMetricFamily("heatrec_storage_write_errors", "Failed batch writes (retried)",
                                      value=st.write_errors)
            yield GaugeMetricFamily("heatrec_storage_pending", "Samples taken or queued but not yet committed",
                                    value=st.pending)
            yield GaugeMetricFamily("heatrec_storage_last_batch_seconds", "Duration of the last batch write",
                                    value=st.last_batch_seconds)
            yield CounterMetricFamily("heatrec_storage_fallback_batches", "Batches that met stored readings and "
                                      "were written the duplicate-safe way", value=st.fallback_batches)
            yield GaugeMetricFamily("heatrec_storage_spooling", "1 while live samples go to the spool",
                                    value=1.0 if st.spooling else 0.0)
            if svc.writer.spool is not None:
                sp = svc.writer.spool.stats
                yield GaugeMetricFamily("heatrec_storage_spool_bytes", "Bytes held in the spool", value=sp.bytes)
                yield GaugeMetricFamily("heatrec_storage_spool_samples", "Samples held in the spool",
                                        value=sp.samples)
                yield GaugeMetricFamily("heatrec_storage_spool_segments", "Segment files in the spool",
                                        value=sp.segments)
                yield CounterMetricFamily("heatrec_storage_spool_spooled_samples", "Samples appended to the spool",
                                          value=sp.spooled_samples)
                yield CounterMetricFamily("heatrec_storage_spool_replayed_samples", "Spooled samples committed "
                                          "to the database by replay", value=sp.replayed_samples)
                yield CounterMetricFamily("heatrec_storage_spool_dropped_samples", "Samples lost because the "
                                          "spool was full (oldest segment deleted)", value=sp.dropped_samples)
                yield CounterMetricFamily("heatrec_storage_spool_corrupt_records", "Torn spool records cut off "
                                          "at start (a crash mid-append)", value=sp.corrupt_records)
        if svc.scada is not None:
            yield from _scada_families(svc.scada)
        node = getattr(svc, "sparkplug", None)  # [sparkplug]; absent from sources built without it
        if node is not None:
            yield from _sparkplug_families(node)
        if svc.database is not None:
            ds = svc.database.stats
            yield GaugeMetricFamily("heatrec_database_up", "1 while the database answers and is prepared",
                                    value=1.0 if svc.database.up else 0.0)
            yield CounterMetricFamily("heatrec_database_outages", "Times the database was lost while up",
                                      value=ds.outages)
            yield CounterMetricFamily("heatrec_database_failed_probes", "Connection attempts and probes of the "
                                      "database that failed", value=ds.failed_probes)
        if svc.journal is not None:
            js = svc.journal.stats
            yield GaugeMetricFamily("heatrec_journal_pending", "Journal records (audit, alarms, events, manual "
                                    "readings) waiting for the database", value=js.pending)
            yield CounterMetricFamily("heatrec_journal_applied", "Journal records stored in the database",
                                      value=js.applied)
            yield CounterMetricFamily("heatrec_journal_refused", "Journal records the database refused for good "
                                      "(audited)", value=js.refused)
        if svc.control is not None:
            yield from _control_families(svc)
        dispatch = getattr(svc, "dispatch", None)  # [dispatch]: the plan constrains the controller
        if dispatch is not None:
            yield from _dispatch_families(dispatch)
        uplink = getattr(svc, "uplink", None)  # [uplink]: this plant is a fleet site (docs/FLEET.md)
        if uplink is not None:
            box = uplink.outbox
            yield GaugeMetricFamily("heatrec_uplink_connected", "1 while the uplink is connected to the central "
                                    "broker", value=1.0 if uplink.stats.connected else 0.0)
            yield GaugeMetricFamily("heatrec_uplink_backlog_batches", "Batches in the outbox the centre has not "
                                    "acknowledged", value=box.backlog_batches)
            yield GaugeMetricFamily("heatrec_uplink_backlog_samples", "Samples in the outbox the centre has not "
                                    "acknowledged", value=box.backlog_samples)
            yield GaugeMetricFamily("heatrec_uplink_lag_seconds", "Age of the oldest batch the centre has not "
                                    "acknowledged", value=uplink.lag_s)
            yield GaugeMetricFamily("heatrec_uplink_watermark", "Every batch up to this number is acknowledged",
                                    value=box.watermark)
            yield CounterMetricFamily("heatrec_uplink_published_batches", "Batches published (resent ones "
                                      "included)", value=uplink.stats.published_batches)
            yield CounterMetricFamily("heatrec_uplink_resent_batches", "Batches published again after an outage "
                                      "or an acknowledgement timeout", value=uplink.stats.resent_batches)
            yield CounterMetricFamily("heatrec_uplink_lost_batches", "Batches the outbox bound deleted unsent",
                                      value=box.lost_batches)


def _sparkplug_families(node: EdgeNode) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The Sparkplug edge node: session, what it published, commands, and bad input by reason."""
    st = node.stats
    yield GaugeMetricFamily("heatrec_sparkplug_online", "1 while the edge node is born (NBIRTH published)",
                            value=1.0 if st.born else 0.0)
    yield GaugeMetricFamily("heatrec_sparkplug_primary_host_online", "1 while the primary host's STATE is online",
                            value=1.0 if st.host_online else 0.0)
    yield CounterMetricFamily("heatrec_sparkplug_connects", "MQTT sessions opened", value=st.connects)
    server = GaugeMetricFamily("heatrec_sparkplug_server", "1 for the broker the edge node is on (or trying)",
                               labels=["url"])
    server.add_metric([node.server], 1.0)
    yield server
    yield CounterMetricFamily("heatrec_sparkplug_server_moves", "Moves to the next broker in the list",
                              value=st.server_moves)
    yield CounterMetricFamily("heatrec_sparkplug_messages", "Sparkplug messages published", value=st.messages)
    yield CounterMetricFamily("heatrec_sparkplug_metrics", "Data metrics published (live and historical)",
                              value=st.metrics)
    yield CounterMetricFamily("heatrec_sparkplug_historical_metrics", "Spooled samples published as historical",
                              value=st.historical)
    yield CounterMetricFamily("heatrec_sparkplug_spooled_samples", "Samples spooled while the host or broker was "
                              "away", value=st.spooled)
    commands = CounterMetricFamily("heatrec_sparkplug_commands", "DCMD/NCMD writes by outcome", labels=["outcome"])
    commands.add_metric(["accepted"], st.commands_accepted)
    commands.add_metric(["refused"], st.commands_refused)
    yield commands
    bad = CounterMetricFamily("heatrec_sparkplug_bad_input", "Messages from hosts that could not be used",
                              labels=["reason"])
    for reason in ("malformed", "malformed_state", "unknown_metric", "wrong_datatype"):
        bad.add_metric([reason], st.bad_input.get(reason, 0))
    yield bad


def _refusal_families(svc: MetricsSource) -> Iterator[CounterMetricFamily]:
    """Well-formed telegrams and samples refused as implausible (clock skew, another meter, a closed period)."""
    refused = CounterMetricFamily("heatrec_driver_refused_telegrams", "Telegrams refused although well-formed: "
                                  "source time too far from arrival (clock_skew) or from another meter "
                                  "(serial_mismatch)", labels=["device", "reason"])
    for d in svc.drivers:
        by_reason: dict[str, int] = getattr(d, "refused_telegrams", {})  # the MQTT driver's
        for reason, n in sorted(by_reason.items()):
            refused.add_metric([d.device_id, reason], n)
    yield refused
    closed = getattr(svc, "closed_periods", None)  # [accounting]: service.accounting.closed_periods
    if closed is not None:
        late = CounterMetricFamily("heatrec_accounting_refused_samples", "Readings refused because they are "
                                   "dated inside a closed settlement period", labels=["point"])
        for point in sorted(closed.points):
            late.add_metric([point], closed.refused.get(point, 0))
        yield late


def _scada_families(scada: ScadaServer) -> Iterator[CounterMetricFamily]:
    """What the SCADA server refused: guessed passwords, lockouts, insecure logins and writes, certificates."""
    login, rules = scada.login_guard.stats, scada.rules
    refused = CounterMetricFamily("heatrec_scada_refused", "SCADA requests refused, by reason", labels=["reason"])
    refused.add_metric(["wrong_password"], login.failures)
    refused.add_metric(["locked_out"], login.refused_locked)
    refused.add_metric(["insecure_login"], rules.insecure_logins_refused)
    refused.add_metric(["insecure_change"], rules.insecure_changes_refused)
    refused.add_metric(["untrusted_certificate"], rules.certificates_refused)
    yield refused
    yield CounterMetricFamily("heatrec_scada_lockouts", "SCADA login lockouts engaged (users and addresses)",
                              value=login.lockouts)


def _control_families(svc: MetricsSource) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The control loop: cycles, overruns, cycle time and jitter, writes, safe state."""
    assert svc.control is not None
    c = svc.control.stats
    yield CounterMetricFamily("heatrec_control_cycles", "Control cycles run", value=c.cycles)
    yield CounterMetricFamily("heatrec_control_overruns", "Cycles that took longer than the period",
                              value=c.overruns)
    yield GaugeMetricFamily("heatrec_control_cycle_seconds", "Duration of the last control cycle",
                            value=c.last_cycle_s)
    for q in (50, 99):
        yield GaugeMetricFamily(f"heatrec_control_jitter_p{q}_seconds", f"{q}th percentile of cycle-start "
                                "lateness over the recent cycles", value=c.jitter_percentile(q))
    yield GaugeMetricFamily("heatrec_control_jitter_max_seconds", "Largest cycle-start lateness since start",
                            value=c.max_jitter_s)
    yield CounterMetricFamily("heatrec_control_writes", "Setpoint and heartbeat writes that the device confirmed",
                              value=c.writes)
    yield CounterMetricFamily("heatrec_control_write_failures", "Control writes refused, mismatched or timed out",
                              value=c.write_failures)
    yield CounterMetricFamily("heatrec_control_safe_state_entries", "Times the loop entered its safe state",
                              value=c.safe_state_entries)
    status = svc.control.status()
    yield GaugeMetricFamily("heatrec_control_safe_state", "1 while the control loop is in its safe state",
                            value=1.0 if status.safe_state else 0.0)
    # IT cooling first, visible: how close the CDUs are to their allowable maximum, and whether the CDU
    # limit is holding the heat pumps back right now.
    yield GaugeMetricFamily("heatrec_control_cdu_limit_active", "1 while the CDU limit caps the heat-pump "
                            "setpoints (IT cooling first)", value=1.0 if status.constraint == "cdu_limit" else 0.0)
    if status.cdu_headroom_k is not None:
        yield GaugeMetricFamily("heatrec_control_cdu_headroom_kelvin", "Smallest CDU allowable maximum minus "
                                "supply temperature", value=status.cdu_headroom_k)
    yield CounterMetricFamily("heatrec_control_cdu_limited_cycles", "Control cycles in which the CDU limit "
                              "capped the heat-pump setpoints", value=c.cdu_limited_cycles)
    constraint = GaugeMetricFamily("heatrec_control_constraint", "1 for what shapes the setpoint now "
                                   "(none, cdu_limit, setpoint_limit, rate_limit, off, safe_state, ...)",
                                   labels=["constraint"])
    constraint.add_metric([(status.constraint or "none").split(":", 1)[0]], 1.0)
    yield constraint


FALLBACKS = ("kept_previous", "follow_demand", "safe")


def _dispatch_families(task: DispatchTask) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The dispatch task: solve time, the fallback in force, expected margin, planned against actual heat."""
    st = task.stats
    yield GaugeMetricFamily("heatrec_dispatch_enabled", "1 while dispatch is switched on",
                            value=1.0 if task.enabled else 0.0)
    yield CounterMetricFamily("heatrec_dispatch_solves", "Plans solved (or fallen back) since start", value=st.solves)
    yield GaugeMetricFamily("heatrec_dispatch_solve_seconds", "Duration of the last solve", value=st.last_solve_s)
    fallback = GaugeMetricFamily("heatrec_dispatch_fallback", "1 for the fallback in force (kept_previous, "
                                 "follow_demand, safe); all 0 while the plan is fresh", labels=["fallback"])
    for kind in FALLBACKS:
        fallback.add_metric([kind], 1.0 if task.episode == kind else 0.0)
    yield fallback
    fallbacks = CounterMetricFamily("heatrec_dispatch_fallbacks", "Solves that ended in a fallback",
                                    labels=["fallback"])
    for kind in FALLBACKS:
        fallbacks.add_metric([kind], float((st.fallbacks or {}).get(kind, 0)))
    yield fallbacks
    yield CounterMetricFamily("heatrec_dispatch_fallback_episodes", "Fallback episodes begun (each logged once)",
                              value=st.episodes)
    plan = task.plan
    if plan is not None and plan.expected_margin_dkk is not None:
        yield GaugeMetricFamily("heatrec_dispatch_expected_margin_dkk", "Expected margin of the plan in force "
                                "(heat revenue - electricity - wear), DKK", value=float(plan.expected_margin_dkk))
    index = task.current_index()
    if plan is not None and index is not None:
        yield GaugeMetricFamily("heatrec_dispatch_planned_heat_kw", "Heat-pump output of the plan's step in force",
                                value=sum(plan.steps[index].heat_kw))
    actual = task.measure().heat_output_kw
    if actual is not None:
        yield GaugeMetricFamily("heatrec_dispatch_actual_heat_kw", "Measured output of the dispatched heat pumps",
                                value=actual)
    last = task.controller.last
    applied = last is not None and task.controller.dispatch is not None and last.dispatch == "applied"
    yield GaugeMetricFamily("heatrec_dispatch_applied", "1 while the controller follows the plan's step (0: off, "
                            "no plan, or cooling first has set it aside)", value=1.0 if applied else 0.0)


def build_registry(service: MetricsSource) -> tuple[CollectorRegistry, Histogram]:
    """A registry of its own per service (tests run several) plus the API latency histogram."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    latency = Histogram("heatrec_api_request_duration_seconds", "HTTP API request latency",
                        ["method", "route", "status"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
    return registry, latency


class FleetCollector(Collector):
    """The centre's per-site figures (`heatrec central`): lag, backlog, watermark, batches by outcome."""

    def __init__(self, state: FleetState) -> None:
        self._state = state

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Yield every family; called by the registry at scrape time."""
        views = self._state.views()
        lag = GaugeMetricFamily("heatrec_fleet_site_lag_seconds", "Now minus the site-side creation time of the "
                                "site's newest batch committed centrally", labels=["site"])
        backlog = GaugeMetricFamily("heatrec_fleet_site_backlog_samples", "Samples the site holds unacknowledged, "
                                    "as its latest batch reported", labels=["site"])
        backlog_b = GaugeMetricFamily("heatrec_fleet_site_backlog_batches", "Batches the site holds "
                                      "unacknowledged, as its latest batch reported", labels=["site"])
        mark = GaugeMetricFamily("heatrec_fleet_site_watermark", "Every batch of the site up to this number is "
                                 "committed", labels=["site"])
        online = GaugeMetricFamily("heatrec_fleet_site_online", "1 while the site's link is online", labels=["site"])
        samples = CounterMetricFamily("heatrec_fleet_site_samples", "Samples of the site committed centrally",
                                      labels=["site"])
        for v in views:
            if v.lag_s is not None:
                lag.add_metric([v.site], v.lag_s)
            backlog.add_metric([v.site], v.backlog_samples)
            backlog_b.add_metric([v.site], v.backlog_batches)
            mark.add_metric([v.site], v.last_acked_batch)
            online.add_metric([v.site], 1.0 if v.link == "online" else 0.0)
            samples.add_metric([v.site], v.samples)
        yield from (lag, backlog, backlog_b, mark, online, samples)
        batches = CounterMetricFamily("heatrec_fleet_batches", "Batches this instance handled, by site and outcome "
                                      "(stored, replayed, malformed, refused, failed)", labels=["site", "outcome"])
        for (site, outcome), n in sorted(self._state.counts.items()):
            batches.add_metric([site, outcome], n)
        yield batches


def build_central_registry(state: FleetState) -> CollectorRegistry:
    """The centre's registry (one per instance: tests run several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state))
    return registry
