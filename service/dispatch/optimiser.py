"""The dispatch plan: a MILP over a rolling horizon of 15-minute steps, solved by HiGHS, with its fallbacks.

`optimise(inputs, previous_plan, timeout_s)` always returns a Plan whose `status` says what it is:

- "optimal": the solver's plan;
- "kept_previous": the solver ran out of time; the previous plan, shifted to now (`reason` says so);
- "follow_demand": prices are missing; no steps, the caller runs today's supply-temperature control;
- "safe": the problem is infeasible (or the solver failed): every available heat pump may run at full and
  the dry coolers reject at full, so cooling-first control has every means to remove the IT heat.

The model (docs/DISPATCH.md): per step t and heat pump u, heat output q[u,t] with an on/off binary
(minimum load when on, minimum run and stop times), direct exchange d[t], dry-cooler rejection r[t], store
charge c[t], discharge x[t] and content s[t]. Hard: the IT heat leaves every step,
Σ q·(1 - 1/COP) + d + r = IT heat, with r within the dry coolers' capacity; the network takes at most its
demand, 0 ≤ Σ q + d + x - c ≤ demand. Objective: heat revenue - electricity (q/COP at spot + tariffs +
taxes) - start wear - a small rejection cost, plus the value of the heat left in the store at the end.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

import highspy
import numpy as np

from service.dispatch.models import HeatStore

PlanStatus = Literal["optimal", "kept_previous", "follow_demand", "safe"]
CENT = Decimal("0.01")
_TOL = 1e-6
# A pump "on" at zero output is the same as off: a tiny cost per step on makes the plan say off.
_ON_TIE_BREAK = 1e-4


@dataclass(frozen=True)
class UnitInput:
    """A heat pump, or `count` identical ones dispatched together (one integer: how many run), over the horizon."""

    id: str
    capacity_kw: float  # of one pump
    cop: tuple[float, ...]  # per step, from the COP model at the forecast temperatures
    min_load_fraction: float = 0.0
    min_run_steps: int = 1
    min_stop_steps: int = 1
    start_cost_dkk: Decimal = Decimal(0)
    available: bool = True
    was_on: int = 0  # pumps running before the first step (True/False for a single pump)
    steps_in_state: int = 1_000_000  # how long they have been in that state before the first step
    count: int = 1


@dataclass(frozen=True)
class StoreInput:
    """The heat store as the plan sees it."""

    capacity_kwh: float
    initial_kwh: float
    loss_per_hour: float = 0.0
    max_charge_kw: float | None = None
    max_discharge_kw: float | None = None

    @classmethod
    def of(cls, store: HeatStore, initial_kwh: float) -> StoreInput:
        """From the tank model and its content now."""
        return cls(store.capacity_kwh, min(max(initial_kwh, 0.0), store.capacity_kwh), store.loss_per_hour,
                   store.max_charge_kw, store.max_discharge_kw)


@dataclass(frozen=True)
class Inputs:
    """Everything one solve needs; sequences are per step and equally long."""

    start: datetime
    heat_price_dkk_per_kwh: Decimal
    electricity_dkk_per_kwh: tuple[Decimal, ...] | None  # spot + tariffs + taxes; None = no prices
    it_heat_kw: tuple[float, ...]
    demand_kw: tuple[float, ...]
    dry_cooler_kw: tuple[float, ...]
    units: tuple[UnitInput, ...]
    direct_exchange_kw: tuple[float, ...] | None = None  # capacity per step; None = no direct exchanger
    store: StoreInput | None = None
    step_s: float = 900.0
    rejection_cost_dkk_per_kwh: Decimal = Decimal("0.001")
    terminal_value_dkk_per_kwh: Decimal | None = None  # None: median of min(heat price, electricity/COP)
    mip_rel_gap: float = 1e-4  # HiGHS's default: stop within 0.01 % of the best bound

    @property
    def steps(self) -> int:
        """Length of the horizon in steps."""
        return len(self.it_heat_kw)


@dataclass(frozen=True)
class Step:
    """One step of a plan (powers are means over the step, kW; store content at its end, kWh)."""

    start: datetime
    heat_kw: tuple[float, ...]
    on: tuple[int, ...]  # pumps running per unit (0/1 for a single pump)
    electricity_kw: float
    direct_kw: float
    rejected_kw: float
    charge_kw: float
    discharge_kw: float
    store_kwh: float
    delivered_kw: float
    it_heat_kw: float


@dataclass(frozen=True)
class Plan:
    """A plan and how it came about."""

    start: datetime
    step_s: float
    unit_ids: tuple[str, ...]
    steps: tuple[Step, ...]
    status: PlanStatus
    reason: str = ""
    expected_margin_dkk: Decimal | None = None
    solve_s: float = 0.0
    mip_gap: float | None = None

    @property
    def is_fallback(self) -> bool:
        """Whether this is not a fresh solver plan."""
        return self.status != "optimal"


class _Model:
    """Columns and rows collected before one pass to HiGHS."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.cost: list[float] = []
        self.integer: list[int] = []
        self.row_lb: list[float] = []
        self.row_ub: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def col(self, lb: float, ub: float, cost: float = 0.0, integer: bool = False) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.cost.append(cost)
        if integer:
            self.integer.append(len(self.lb) - 1)
        return len(self.lb) - 1

    def row(self, lb: float, terms: Sequence[tuple[int, float]], ub: float) -> None:
        self.starts.append(len(self.index))
        for i, v in terms:
            self.index.append(i)
            self.value.append(v)
        self.row_lb.append(lb)
        self.row_ub.append(ub)

    def solver(self, timeout_s: float, gap: float) -> highspy.Highs:
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", max(float(timeout_s), 0.0))
        h.setOptionValue("mip_rel_gap", gap)
        h.setOptionValue("threads", 1)
        n = len(self.lb)
        h.addCols(n, np.array(self.cost), np.array(self.lb), np.array(self.ub), 0,
                  np.array([], dtype=np.int32), np.array([], dtype=np.int32), np.array([], dtype=np.float64))
        if self.integer:
            h.changeColsIntegrality(len(self.integer), np.array(self.integer, dtype=np.int32),
                                    np.array([highspy.HighsVarType.kInteger] * len(self.integer), dtype=np.uint8))
        h.addRows(len(self.row_lb), np.array(self.row_lb), np.array(self.row_ub), len(self.index),
                  np.array(self.starts, dtype=np.int32), np.array(self.index, dtype=np.int32),
                  np.array(self.value, dtype=np.float64))
        return h


def _check(inputs: Inputs) -> str | None:
    n = inputs.steps
    lengths = {"demand_kw": len(inputs.demand_kw), "dry_cooler_kw": len(inputs.dry_cooler_kw)}
    if inputs.electricity_dkk_per_kwh is not None:
        lengths["electricity_dkk_per_kwh"] = len(inputs.electricity_dkk_per_kwh)
    if inputs.direct_exchange_kw is not None:
        lengths["direct_exchange_kw"] = len(inputs.direct_exchange_kw)
    for u in inputs.units:
        lengths[f"{u.id}.cop"] = len(u.cop)
    wrong = [f"{k} has {v}" for k, v in lengths.items() if v != n]
    if n == 0:
        return "the horizon has no steps"
    if wrong:
        return f"inputs of unequal length: it_heat_kw has {n} steps, " + ", ".join(wrong)
    if any(u.count < 1 for u in inputs.units):
        return "a unit with a count below 1"
    if any(c <= 1.0 for u in inputs.units for c in u.cop):
        return "a COP at or below 1 (a heat pump must move heat from its source)"
    return None


def terminal_value(inputs: Inputs) -> float:
    """What a kWh left in the store at the end is worth: the median avoided production cost, ≤ heat price."""
    if inputs.terminal_value_dkk_per_kwh is not None:
        return float(inputs.terminal_value_dkk_per_kwh)
    prices = inputs.electricity_dkk_per_kwh or ()
    heat = float(inputs.heat_price_dkk_per_kwh)
    if not prices or not inputs.units:
        return 0.0
    cops = [statistics.fmean(u.cop[t] for u in inputs.units) for t in range(inputs.steps)]
    return max(statistics.median(min(heat, float(p) / c) for p, c in zip(prices, cops, strict=True)), 0.0)


def optimise(inputs: Inputs, previous_plan: Plan | None, timeout_s: float) -> Plan:
    """Solve the plan for the horizon of `inputs`, or fall back (the Plan's status and reason say which)."""
    if inputs.electricity_dkk_per_kwh is None or len(inputs.electricity_dkk_per_kwh) < inputs.steps:
        have = 0 if inputs.electricity_dkk_per_kwh is None else len(inputs.electricity_dkk_per_kwh)
        return follow_demand(inputs, f"missing prices: {have} of {inputs.steps} steps priced")
    problem = _check(inputs)
    if problem is not None:
        return safe_plan(inputs, f"invalid inputs: {problem}")
    began = time.perf_counter()
    model, cols = _build(inputs)
    h = model.solver(timeout_s, inputs.mip_rel_gap)
    h.run()
    elapsed = time.perf_counter() - began
    status = h.getModelStatus()
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if status == highspy.HighsModelStatus.kOptimal:
        return _plan(inputs, cols, list(h.getSolution().col_value), "optimal", "", elapsed, info.mip_gap)
    if status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
        reason = f"solver timeout after {elapsed:.2f} s (limit {timeout_s:g} s)"
        kept = keep_previous(previous_plan, inputs.start, reason)
        if kept is not None:
            return replace(kept, solve_s=elapsed)  # this solve's time, not the kept plan's
        if has_solution:
            plan = _plan(inputs, cols, list(h.getSolution().col_value), "optimal",
                         f"{reason}: no previous plan, best plan found (gap {info.mip_gap:.1%})", elapsed,
                         info.mip_gap)
            return plan
        return safe_plan(inputs, f"{reason}: no previous plan and no feasible plan found", elapsed)
    if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return safe_plan(inputs, "infeasible: the IT heat cannot be removed within the heat pumps', direct "
                                 "exchange's and dry coolers' limits over the horizon", elapsed)
    return safe_plan(inputs, f"solver failed: {h.modelStatusToString(status)}", elapsed)


@dataclass(frozen=True)
class _Cols:
    q: list[list[int]]
    on: list[list[int]]
    d: list[int] | None
    r: list[int]
    c: list[int] | None
    x: list[int] | None
    s: list[int] | None


def _build(inputs: Inputs) -> tuple[_Model, _Cols]:
    m = _Model()
    n, dt = inputs.steps, inputs.step_s / 3600.0
    assert inputs.electricity_dkk_per_kwh is not None
    price = [float(p) for p in inputs.electricity_dkk_per_kwh]
    heat = float(inputs.heat_price_dkk_per_kwh)
    reject = float(inputs.rejection_cost_dkk_per_kwh)
    q: list[list[int]] = []
    on: list[list[int]] = []
    starts: list[list[int]] = []
    stops: list[list[int]] = []
    for u in inputs.units:
        cap = u.capacity_kw
        count = u.count if u.available else 0
        was = min(int(u.was_on), count)
        # Fixed by the state before the horizon: pumps still in their minimum run (stop) time stay on (off).
        must_on = max(u.min_run_steps - u.steps_in_state, 0) if was else 0
        must_off = max(u.min_stop_steps - u.steps_in_state, 0) if was < count else 0
        qu, onu, stu, spu = [], [], [], []
        for t in range(n):
            lb_on = float(was) if t < must_on else 0.0
            ub_on = float(was) if t < must_off else float(count)
            qu.append(m.col(0.0, cap * count, -heat * dt + price[t] * dt / u.cop[t]))
            onu.append(m.col(lb_on, ub_on, _ON_TIE_BREAK, integer=True))
            stu.append(m.col(0.0, float(count), float(u.start_cost_dkk)))
            spu.append(m.col(0.0, float(count), 0.0))
        for t in range(n):
            m.row(-math.inf, [(qu[t], 1.0), (onu[t], -cap)], 0.0)
            m.row(0.0, [(qu[t], 1.0), (onu[t], -u.min_load_fraction * cap)], math.inf)
            # starts - stops = on[t] - on[t-1] (counts of pumps)
            prev = [(onu[t - 1], 1.0)] if t else []
            rhs = -float(was) if t == 0 else 0.0
            m.row(rhs, [(stu[t], 1.0), (spu[t], -1.0), (onu[t], -1.0), *prev], rhs)
            # Pumps started within the minimum run time are still on; stopped ones within the stop time off.
            run = [(stu[k], 1.0) for k in range(max(0, t - u.min_run_steps + 1), t + 1)]
            m.row(-math.inf, [*run, (onu[t], -1.0)], 0.0)
            stop = [(spu[k], 1.0) for k in range(max(0, t - u.min_stop_steps + 1), t + 1)]
            m.row(-math.inf, [*stop, (onu[t], 1.0)], float(count))
        q.append(qu)
        on.append(onu)
        starts.append(stu)
        stops.append(spu)
    d = [m.col(0.0, max(inputs.direct_exchange_kw[t], 0.0), -heat * dt) for t in range(n)] \
        if inputs.direct_exchange_kw is not None else None
    r = [m.col(0.0, max(inputs.dry_cooler_kw[t], 0.0), reject * dt) for t in range(n)]
    c = x = s = None
    st = inputs.store
    if st is not None:
        keep = 1.0 - st.loss_per_hour * dt
        c = [m.col(0.0, st.max_charge_kw if st.max_charge_kw is not None else math.inf, heat * dt)
             for _ in range(n)]
        x = [m.col(0.0, st.max_discharge_kw if st.max_discharge_kw is not None else math.inf, -heat * dt)
             for _ in range(n)]
        value = terminal_value(inputs)
        s = [m.col(0.0, st.capacity_kwh, -value if t == n - 1 else 0.0) for t in range(n)]
        for t in range(n):
            terms = [(s[t], 1.0), (c[t], -dt), (x[t], dt)]
            if t:
                m.row(0.0, [*terms, (s[t - 1], -keep)], 0.0)
            else:
                m.row(keep * st.initial_kwh, terms, keep * st.initial_kwh)
    for t in range(n):
        it = [(q[i][t], 1.0 - 1.0 / u.cop[t]) for i, u in enumerate(inputs.units)] + [(r[t], 1.0)]
        if d is not None:
            it.append((d[t], 1.0))
        m.row(inputs.it_heat_kw[t], it, inputs.it_heat_kw[t])
        net = [(q[i][t], 1.0) for i in range(len(inputs.units))]
        if d is not None:
            net.append((d[t], 1.0))
        if c is not None and x is not None:
            net += [(x[t], 1.0), (c[t], -1.0)]
        m.row(0.0, net, max(inputs.demand_kw[t], 0.0))
    return m, _Cols(q, on, d, r, c, x, s)


def _money(x: float) -> Decimal:
    return Decimal(repr(round(x, 6))).quantize(CENT)


def margin_of(inputs: Inputs, steps: Sequence[Step], was_on: Sequence[int]) -> Decimal:
    """Heat revenue - electricity - start wear - rejection cost of a plan's steps, DKK."""
    dt = inputs.step_s / 3600.0
    assert inputs.electricity_dkk_per_kwh is not None
    total = 0.0
    prev = list(was_on)
    for t, step in enumerate(steps):
        total += float(inputs.heat_price_dkk_per_kwh) * step.delivered_kw * dt
        total -= float(inputs.electricity_dkk_per_kwh[t]) * step.electricity_kw * dt
        total -= float(inputs.rejection_cost_dkk_per_kwh) * step.rejected_kw * dt
        for i, u in enumerate(inputs.units):
            total -= float(u.start_cost_dkk) * max(step.on[i] - prev[i], 0)
        prev = list(step.on)
    return _money(total)


def _plan(inputs: Inputs, cols: _Cols, v: list[float], status: PlanStatus, reason: str, elapsed: float,
          gap: float) -> Plan:
    def val(i: int) -> float:
        x = v[i]
        return 0.0 if abs(x) < _TOL else x

    steps = []
    step = timedelta(seconds=inputs.step_s)
    for t in range(inputs.steps):
        heat = tuple(val(cols.q[i][t]) for i in range(len(inputs.units)))
        on = tuple(round(v[cols.on[i][t]]) for i in range(len(inputs.units)))
        elec = sum(h / u.cop[t] for h, u in zip(heat, inputs.units, strict=True))
        direct = val(cols.d[t]) if cols.d is not None else 0.0
        charge = val(cols.c[t]) if cols.c is not None else 0.0
        discharge = val(cols.x[t]) if cols.x is not None else 0.0
        store = val(cols.s[t]) if cols.s is not None else 0.0
        steps.append(Step(inputs.start + step * t, heat, on, elec, direct, val(cols.r[t]), charge, discharge,
                          store, sum(heat) + direct + discharge - charge, inputs.it_heat_kw[t]))
    margin = margin_of(inputs, steps, [min(int(u.was_on), u.count) if u.available else 0 for u in inputs.units])
    return Plan(inputs.start, inputs.step_s, tuple(u.id for u in inputs.units), tuple(steps), status, reason,
                margin, elapsed, gap)


def keep_previous(previous: Plan | None, now: datetime, reason: str) -> Plan | None:
    """The previous plan from `now` on (status kept_previous), or None if it has no step left."""
    if previous is None or not previous.steps:
        return None
    rest = tuple(s for s in previous.steps if s.start >= now)
    if not rest:
        return None
    return replace(previous, start=rest[0].start, steps=rest, status="kept_previous", reason=reason,
                   expected_margin_dkk=None)


def follow_demand(inputs: Inputs, reason: str) -> Plan:
    """No plan: the caller keeps today's follow-demand control (status follow_demand, no steps)."""
    return Plan(inputs.start, inputs.step_s, tuple(u.id for u in inputs.units), (), "follow_demand", reason)


def follow_demand_steps(inputs: Inputs) -> tuple[Step, ...]:
    """The follow-demand baseline as steps: what today's control makes of the same inputs, to price it.

    As bench/bench_dispatch.py's baseline: the network's demand is made as it comes, the store unused. The
    direct exchanger (free heat) goes first, then the available pumps in turn, each within its capacity, the
    demand left and the IT heat left to lift; what remains of the IT heat goes to the dry coolers. Minimum
    load and run times are not modelled (a pump below its minimum load is taken as cycling to the mean).
    """
    step = timedelta(seconds=inputs.step_s)
    out = []
    for t in range(inputs.steps):
        it, demand = max(inputs.it_heat_kw[t], 0.0), max(inputs.demand_kw[t], 0.0)
        direct = min(max(inputs.direct_exchange_kw[t], 0.0), it, demand) \
            if inputs.direct_exchange_kw is not None else 0.0
        it_left, demand_left = it - direct, demand - direct
        heat: list[float] = []
        on: list[int] = []
        for u in inputs.units:
            cap = u.capacity_kw * u.count if u.available else 0.0
            lift = 1.0 - 1.0 / u.cop[t] if u.cop[t] > 1.0 else 0.0  # share of the output taken from the IT loop
            q = max(min(cap, demand_left, it_left / lift if lift > 0 else 0.0), 0.0)
            heat.append(q)
            on.append(min(math.ceil(q / u.capacity_kw - _TOL), u.count) if q > _TOL else 0)
            demand_left -= q
            it_left -= q * lift
        store = inputs.store.initial_kwh if inputs.store is not None else 0.0
        out.append(Step(inputs.start + step * t, tuple(heat), tuple(on),
                        sum(q / u.cop[t] for q, u in zip(heat, inputs.units, strict=True) if q > 0), direct,
                        max(it_left, 0.0), 0.0, 0.0, store, sum(heat) + direct, inputs.it_heat_kw[t]))
    return tuple(out)


def safe_plan(inputs: Inputs, reason: str, elapsed: float = 0.0) -> Plan:
    """Cooling first: every available heat pump may run at full, the dry coolers and direct exchange at full."""
    step = timedelta(seconds=inputs.step_s)
    steps = []
    for t in range(inputs.steps):
        heat = tuple(u.capacity_kw * u.count if u.available else 0.0 for u in inputs.units)
        cops = [u.cop[t] if t < len(u.cop) else math.inf for u in inputs.units]
        direct = inputs.direct_exchange_kw[t] if inputs.direct_exchange_kw is not None \
            and t < len(inputs.direct_exchange_kw) else 0.0
        rejected = inputs.dry_cooler_kw[t] if t < len(inputs.dry_cooler_kw) else 0.0
        store = inputs.store.initial_kwh if inputs.store is not None else 0.0
        steps.append(Step(inputs.start + step * t, heat, tuple(u.count if u.available else 0 for u in inputs.units),
                          sum(h / c for h, c in zip(heat, cops, strict=True)), direct, rejected, 0.0, 0.0, store,
                          sum(heat) + direct, inputs.it_heat_kw[t]))
    return Plan(inputs.start, inputs.step_s, tuple(u.id for u in inputs.units), tuple(steps), "safe", reason,
                None, elapsed)
