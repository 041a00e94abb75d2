"""Dispatch: a simulated year of the rolling MILP plan against follow-demand control, at the model level.

Run: .venv/bin/python bench/bench_dispatch.py [--days 365] [--seed 7] [--timeout 5]

Synthetic and seeded (docs/BENCHMARKS.md says how each series is made; no real price series can be
fetched here): outdoor temperature, IT heat, network demand and 15-minute prices in the DayAheadPrices
format (parsed back through service.dispatch.prices). Two plants shaped like the aircooled-heatpump
archetype, one with a 2000 m³ heat store and one without. Every hour the plan is re-solved over the
prices known then (Nord Pool publishes the next day at 13:00 Danish time: 11-35 h, at most 36 h), with
forecasts of IT heat (hour of week, last 28 days) and demand (heating-degree regression, last 28 days,
on an outdoor forecast with an error growing with the lead time); the first hour is executed against
the actual values by a simple executor (the store absorbs forecast errors, the running pumps follow the
demand within their limits). The baseline follows demand: the pumps make what the network takes as it
comes, the store unused. Printed: net margin of each, the difference, cooling violations, solve times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.dispatch.forecast import fit_demand, fit_profile
from service.dispatch.models import CarnotCop, DryCoolers, HeatStore
from service.dispatch.optimiser import Inputs, Plan, StoreInput, UnitInput, optimise
from service.dispatch.prices import PriceSeries, parse_json, to_records
from service.dispatch.tariffs import load_tariffs

DK = ZoneInfo("Europe/Copenhagen")
STEP = timedelta(minutes=15)
DT_H = 0.25
START = datetime(2026, 1, 1, tzinfo=UTC)
HISTORY_DAYS = 28
HEAT_PRICE = Decimal("400")  # DKK per MWh of heat
REJECTION_COST = Decimal("0.001")  # DKK per kWh sent to the dry coolers (fans), keeps rejection honest

# The plant: aircooled-heatpump (config/plants/aircooled-heatpump.toml): 15 MW of IT heat in 27 °C water,
# nine 2.4 MW heat pumps at 0.5 of Carnot and 25 % minimum load, a 25 MW network.
SOURCE_C = 27.0
COP = CarnotCop(0.5)
PUMPS = 9
PUMP_KW = 2400.0
MIN_LOAD = 0.25
MIN_RUN, MIN_STOP = 4, 2  # steps: 1 h, 30 min
START_COST = Decimal("50")  # DKK of wear per pump start
COOLERS = DryCoolers(18000.0, 20.0, 0.03)
STORE = HeatStore(volume_m3=2000.0, min_temperature=40.0, max_temperature=75.0, loss_w_per_k=400.0,
                  max_charge_kw=15000.0, max_discharge_kw=15000.0)


def sink_c(outdoor: float) -> float:
    """Network supply: 75 °C at or below -5 °C, 68 °C at or above 15 °C."""
    return 75.0 - 7.0 * min(max((outdoor + 5.0) / 20.0, 0.0), 1.0)


@dataclass
class World:
    """The actual quarter-hour series from START - HISTORY_DAYS."""

    t0: datetime
    outdoor: list[float]
    it: list[float]
    demand: list[float]
    prices: PriceSeries

    def time(self, i: int) -> datetime:
        return self.t0 + STEP * i


def make_world(days: int, seed: int) -> World:
    """Weather, IT heat, demand and prices, seeded."""
    rng = random.Random(seed)
    t0 = START - timedelta(days=HISTORY_DAYS)
    n = (days + HISTORY_DAYS + 2) * 96
    outdoor, it, demand, prices = [], [], [], []
    noise = wind = 0.0
    spike_left = 0
    spike = 1.0
    for i in range(n):
        t = t0 + STEP * i
        local = t.astimezone(DK)
        doy = t.timetuple().tm_yday + t.hour / 24
        hour = local.hour + local.minute / 60
        if i % 4 == 0:  # hourly AR(1) weather noise (sigma ~ 3 K) and a multi-day wind index
            noise = 0.97 * noise + rng.gauss(0.0, 0.75)
            wind = 0.97 * wind + rng.gauss(0.0, 0.15)
        season = -math.cos(2 * math.pi * (doy - 20) / 365.25)  # -1 late January, +1 late July
        temp = 8.5 + 8.5 * season + 3.0 * math.cos(2 * math.pi * (hour - 15) / 24) + noise
        outdoor.append(temp)
        weekday = local.weekday() < 5
        it.append(15000.0 * (0.86 + (0.04 if weekday else 0.0) + 0.03 * math.sin(2 * math.pi * (hour - 8) / 24))
                  + rng.gauss(0.0, 150.0))
        shape = 1.0 + (0.10 if 6 <= hour < 9 else 0.0) + (0.05 if 17 <= hour < 21 else 0.0) - \
            (0.05 if hour < 5 else 0.0)
        demand.append(max(3750.0 + 733.0 * max(17.0 - temp, 0.0), 2500.0) * shape * (1 + rng.gauss(0.0, 0.02)))
        # Prices, DKK/MWh: a seasonal level, a morning and an evening peak, a midday solar dip in summer,
        # cheaper weekends, wind pushing prices down (to below zero when strong), rare spikes.
        level = 600.0 - 150.0 * season
        daily = 1.0 + 0.35 * math.exp(-((hour - 8.0) / 1.5) ** 2) + 0.55 * math.exp(-((hour - 18.5) / 2.0) ** 2) \
            - 0.25 * (hour < 5)
        solar = 500.0 * max(season, 0.0) * math.exp(-((hour - 13.0) / 2.5) ** 2)
        week = 0.85 if not weekday else 1.0
        windy = max(wind, -1.5)
        p = level * daily * week * math.exp(-0.7 * windy) - solar - 500.0 * max(windy - 0.5, 0.0)
        if i % 4 == 0:
            if spike_left == 0 and rng.random() < 0.003 and 7 <= hour < 21:
                spike_left, spike = rng.randint(1, 3) * 4, rng.uniform(2.0, 3.5)
        if spike_left:
            p *= spike
            spike_left -= 1
        p += rng.gauss(0.0, 25.0)  # quarter-hour jitter
        prices.append(Decimal(str(round(max(p, -400.0), 2))))
    series = PriceSeries("DK1", t0, tuple(prices))
    # Through the DayAheadPrices format and the real parser, as the service would read it.
    text = json.dumps({"records": to_records(series)[::-1]}, default=str)
    return World(t0, outdoor, it, demand, parse_json(text, "DK1", "synthetic"))


def known_until(now: datetime) -> datetime:
    """End of the prices known at `now`: tomorrow's after 13:00 Danish time, else today's."""
    local = now.astimezone(DK)
    end_day = local.date() + timedelta(days=1 if local.hour >= 13 else 0)
    return datetime(end_day.year, end_day.month, end_day.day, tzinfo=DK).astimezone(UTC) + timedelta(days=1)


@dataclass
class Units:
    """Actual state of the pumps: how many run, for how many steps."""

    on: int = 0
    since: int = 1_000


@dataclass
class Tally:
    """What one strategy earned and did."""

    revenue: float = 0.0
    electricity: float = 0.0
    wear: float = 0.0
    rejection: float = 0.0
    heat_mwh: float = 0.0
    unserved_mwh: float = 0.0
    violations: int = 0
    starts: int = 0
    forced: int = 0
    solve_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    horizons: list[int] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.revenue - self.electricity - self.wear - self.rejection

    def add(self, other: Tally) -> None:
        for name in ("revenue", "electricity", "wear", "rejection", "heat_mwh", "unserved_mwh", "violations",
                     "starts", "forced"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.solve_s += other.solve_s
        self.horizons += other.horizons
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v


def execute(w: World, i: int, heat: float, n_on: int, units: Units, store_kwh: float | None, tally: Tally,
            elec: float) -> float | None:
    """Run one actual step with the planned heat and pumps; returns the store content after it."""
    cop = COP.cop(SOURCE_C, sink_c(w.outdoor[i]))
    it, demand, dc = w.it[i], w.demand[i], COOLERS.capacity_at(w.outdoor[i])
    src = 1.0 - 1.0 / cop

    def bounds(n: int) -> tuple[float, float]:
        return n * PUMP_KW * MIN_LOAD, min(n * PUMP_KW, it / src)

    lo, hi = bounds(n_on)
    q = min(max(heat, lo), hi) if n_on else 0.0
    room = take = 0.0
    if store_kwh is not None:
        room = min((STORE.capacity_kwh - store_kwh) / DT_H, STORE.max_charge_kw or math.inf)
        take = min(store_kwh / DT_H, STORE.max_discharge_kw or math.inf)
    # The network takes its demand: the store absorbs the difference, then the running pumps follow it.
    if q - demand > room:
        q = max(demand + room, lo)
        while n_on and q - demand > room:  # too much even at minimum load: stop a pump (a forced stop)
            n_on -= 1
            tally.forced += 1
            lo, hi = bounds(n_on)
            q = min(max(demand + room, lo), hi) if n_on else 0.0
    elif demand - q > take and n_on:
        q = min(max(demand - take, lo), hi)
    # Cooling first: what the dry coolers cannot take goes through the pumps, started if need be.
    if it - q * src > dc + 1e-6:
        n_on = PUMPS
        q = min((it - dc) / src, PUMPS * PUMP_KW, demand + room)
    rejected = it - q * src
    if rejected > dc + 1e-3:
        tally.violations += 1
    rejected = max(rejected, 0.0)
    store_after = None
    if store_kwh is not None:
        flow = min(max(q - demand, -take), room)
        store_after = (store_kwh + flow * DT_H) * (1.0 - STORE.loss_per_hour * DT_H)
        delivered = q - flow
    else:
        delivered = min(q, demand)
    tally.unserved_mwh += max(demand - delivered, 0.0) * DT_H / 1000
    tally.heat_mwh += delivered * DT_H / 1000
    tally.revenue += float(HEAT_PRICE) / 1000 * delivered * DT_H
    tally.electricity += elec * q / cop * DT_H
    tally.rejection += float(REJECTION_COST) * rejected * DT_H
    running = n_on if q > 0 else 0
    if running > units.on:
        tally.starts += running - units.on
        tally.wear += float(START_COST) * (running - units.on)
    units.since = units.since + 1 if running == units.on else 1
    units.on = running
    return store_after


def follow_demand(w: World, i: int, units: Units) -> tuple[float, int]:
    """Baseline: the pumps make the demand (within capacity and the IT heat), staged with a hysteresis."""
    cop = COP.cop(SOURCE_C, sink_c(w.outdoor[i]))
    q = min(w.demand[i], PUMPS * PUMP_KW, w.it[i] / (1 - 1 / cop))
    n = max(units.on, 1)
    while n < PUMPS and q > n * PUMP_KW:
        n += 1
    while n > 1 and q < (n - 1) * PUMP_KW * 0.9:
        n -= 1
    return q, n


def elec_prices(w: World, tariffs_name: str) -> list[float]:
    tariffs = load_tariffs(tariffs_name)
    return [float(tariffs.electricity_dkk_per_kwh(w.time(i), p)) for i, p in enumerate(w.prices.dkk_per_mwh)]


def run_optimiser(w: World, first: int, steps: int, elec: list[float], with_store: bool, timeout: float,
                  seed: int) -> Tally:
    rng = random.Random(seed)
    tally, units = Tally(), Units()
    store_kwh: float | None = STORE.capacity_kwh / 2 if with_store else None
    plan: Plan | None = None
    demand_model = profile = None
    for i in range(first, first + steps):
        now = w.time(i)
        if (i - first) % 96 == 0:  # refit the forecasts daily on the last 28 days
            if i > first and (i - first) % (7 * 96) == 0:  # a contiguous year: progress every week
                print(f"      {'store' if with_store else 'no store'}: {now:%Y-%m-%d}, margin so far "
                      f"{tally.margin / 1000:.1f} kDKK, {len(tally.solve_s)} solves", file=sys.stderr, flush=True)
            hist = range(i - HISTORY_DAYS * 96, i)
            times = [w.time(k) for k in hist]
            profile = fit_profile(times, [w.it[k] for k in hist])
            demand_model = fit_demand(times, [w.outdoor[k] for k in hist], [w.demand[k] for k in hist])
        if (i - first) % 4 == 0:  # re-plan every hour
            assert profile is not None and demand_model is not None
            n = min(int((known_until(now) - now) / STEP), 36 * 4)
            error = rng.gauss(0.0, 2.0)
            fc_out = [w.outdoor[i + k] + error * min(k / 96, 1.0) for k in range(n)]
            cops = tuple(COP.cop(SOURCE_C, sink_c(o)) for o in fc_out)
            tally.horizons.append(n)
            inputs = Inputs(
                start=now, heat_price_dkk_per_kwh=HEAT_PRICE / 1000,
                electricity_dkk_per_kwh=tuple(Decimal(repr(round(e, 5))) for e in elec[i:i + n]),
                it_heat_kw=tuple(profile.at(w.time(i + k)) for k in range(n)),
                demand_kw=tuple(demand_model.at(w.time(i + k), fc_out[k]) for k in range(n)),
                dry_cooler_kw=tuple(COOLERS.capacity_at(o) for o in fc_out),
                units=(UnitInput("hp", PUMP_KW, cops, MIN_LOAD, MIN_RUN, MIN_STOP, START_COST, True, units.on,
                                 units.since, PUMPS),),
                store=StoreInput.of(STORE, store_kwh) if store_kwh is not None else None,
                rejection_cost_dkk_per_kwh=REJECTION_COST)
            plan = optimise(inputs, plan, timeout)
            tally.solve_s.append(plan.solve_s)
            tally.statuses[plan.status] = tally.statuses.get(plan.status, 0) + 1
            if plan.reason:  # each fallback's reason, by its first words
                key = " ".join(plan.reason.split()[:3])
                tally.reasons[key] = tally.reasons.get(key, 0) + 1
        assert plan is not None
        planned = next((s for s in plan.steps if s.start == now), None)
        if plan.status in ("optimal", "kept_previous") and planned is not None:
            heat, n_on = planned.heat_kw[0], planned.on[0]
        else:  # follow-demand or safe plan: today's control, cooling first
            heat, n_on = follow_demand(w, i, units)
        store_kwh = execute(w, i, heat, n_on, units, store_kwh, tally, elec[i])
    return tally


def run_baseline(w: World, first: int, steps: int, elec: list[float]) -> Tally:
    tally, units = Tally(), Units()
    for i in range(first, first + steps):
        execute(w, i, *follow_demand(w, i, units), units, None, tally, elec[i])
    return tally


def pct(a: float, b: float) -> float:
    return (a - b) / abs(b) * 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=5.0, help="solver time limit per solve, s")
    ap.add_argument("--tariffs", default="dk1_10kv_illustrative")
    ap.add_argument("--plant", choices=("both", "store", "no-store"), default="both",
                    help="run one plant only (two processes can then share the year)")
    ap.add_argument("--sample-weeks", type=int, default=1, metavar="K",
                    help="evaluate one week in every K (each from a half-full store), to save time; 1 = all days")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)", flush=True)
    began = time.perf_counter()
    w = make_world(args.days, args.seed)
    elec = elec_prices(w, args.tariffs)
    first, steps = HISTORY_DAYS * 96, args.days * 96
    if args.sample_weeks > 1:
        blocks = [(first + k * 7 * 96, min(7 * 96, steps - k * 7 * 96))
                  for k in range(0, math.ceil(args.days / 7), args.sample_weeks)]
    else:
        blocks = [(first, steps)]
    year = [p for b0, n in blocks for p in w.prices.dkk_per_mwh[b0:b0 + n]]
    neg = sum(1 for p in year if p < 0) / len(year)
    print(f"prices: mean {statistics.fmean(float(p) for p in year):.0f} DKK/MWh, min {min(year)}, max {max(year)}, "
          f"{neg:.1%} of quarter hours negative; outdoor mean "
          f"{statistics.fmean(o for b0, n in blocks for o in w.outdoor[b0:b0 + n]):.1f} °C", flush=True)
    base = Tally()
    for b0, n in blocks:
        base.add(run_baseline(w, b0, n, elec))
    plants = [(n, ws) for n, ws in (("no store", False), ("store", True))
              if args.plant == "both" or args.plant == n.replace(" ", "-")]
    results = {"baseline": base}
    for name, with_store in plants:
        t = time.perf_counter()
        total = Tally()
        partial = Tally()
        for b0, n in blocks:
            total.add(run_optimiser(w, b0, n, elec, with_store, args.timeout, args.seed + b0))
            partial.add(run_baseline(w, b0, n, elec))
            print(f"    {name}: to {w.time(b0 + n):%Y-%m-%d}: margin {total.margin / 1000:.1f} kDKK against "
                  f"{partial.margin / 1000:.1f} kDKK ({pct(total.margin, partial.margin):+.1f} %), "
                  f"{total.violations} cooling violations, {len(total.solve_s)} solves", file=sys.stderr, flush=True)
        results[name] = total
        print(f"  ran '{name}' in {time.perf_counter() - t:.0f} s", flush=True)
    days = sum(n for _, n in blocks) // 96
    sampled = f" (one week in {args.sample_weeks}: {len(blocks)} weeks)" if args.sample_weeks > 1 else ""
    print(f"\n{days} days of {args.days} from {START:%Y-%m-%d}{sampled}, re-planned hourly at 15-min steps:")
    print(f"  {'strategy':<22}{'margin kDKK':>12}{'vs baseline':>12}{'heat MWh':>10}{'unserved':>9}"
          f"{'starts':>7}{'cool viol':>10}")
    out: dict[str, object] = {"days": days, "seed": args.seed, "sample_weeks": args.sample_weeks}
    rows = [("follow demand", base)] + [(f"dispatch, {n}", results[n]) for n, _ in plants]
    for name, tally in rows:
        diff = "" if tally is base else f"{pct(tally.margin, base.margin):+.1f} %"
        print(f"  {name:<22}{tally.margin / 1000:12.1f}{diff:>12}{tally.heat_mwh:10.0f}{tally.unserved_mwh:9.0f}"
              f"{tally.starts:7d}{tally.violations:10d}")
        out[name] = {"margin_dkk": round(tally.margin), "heat_mwh": round(tally.heat_mwh),
                     "violations": tally.violations, "starts": tally.starts, "statuses": tally.statuses}
    for name, _ in plants:
        s = sorted(results[name].solve_s)
        p50, p99 = s[len(s) // 2], s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
        print(f"  solve '{name}': {len(s)} solves, p50 {p50:.3f} s, p99 {p99:.3f} s, max {s[-1]:.3f} s, "
              f"statuses {results[name].statuses}, forced stops {results[name].forced}, "
              f"horizon {min(results[name].horizons)}-{max(results[name].horizons)} steps, "
              f"fallback reasons {results[name].reasons}")
        out[f"solve {name}"] = {"p50": p50, "p99": p99, "max": s[-1]}
    print(f"load after: {os.getloadavg()[0]:.2f}; total {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
