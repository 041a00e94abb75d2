"""Heat accounting endpoints: energy per interval, settlements (close, correct, CSV), manual readings, KPIs."""

# No `from __future__ import annotations`: FastAPI must resolve the dependency aliases defined
# inside add_accounting_routes, which string annotations would hide from it.
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.accounting.documents import close_refusal, period_documents
from service.accounting.engine import meter_intervals, month_bounds, settle_month, year_bounds
from service.accounting.export import annual_report, settlements_csv
from service.accounting.kpis import kpis
from service.accounting.store import (
    SettlementConflict,
    add_manual_reading,
    add_replacement,
    save_settlement,
)
from service.api.params import NO_NUL, iso_times_only, within_span
from service.api.params import operation_ref as _op
from service.auth import Principal, Role
from service.config import AccountingConfig, HeatrecConfig
from service.model import utcnow
from service.storage.database import connection, translated

PERIOD_PATTERN = r"^(199\d|20\d\d|2100)-(0[1-9]|1[0-2])$"
ID_PATTERN = r"^[a-z][a-z0-9_]*$"
MAX_INTERVALS = 10_000
_EARLIEST, _LATEST = datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


class IntervalOut(BaseModel):
    """One meter's energy in one interval."""

    meter: str
    start: datetime
    end: datetime
    energy_gj: float
    estimated_gj: float
    estimated: bool
    manual: bool
    integrated_gj: float | None = Field(description="energy from flow x k x delta-T, the cross-check")
    drift_percent: float | None = Field(description="(register - integrated) / integrated, percent")
    envelope_percent: float | None = Field(description="MID maximum permissible error at the mean flow and delta-T")
    flags: list[str]


class EnergyOut(BaseModel):
    """Per-meter, per-interval energy from the meters' registers, and totals."""

    start: datetime
    end: datetime
    interval_s: int
    intervals: list[IntervalOut]
    energy_gj: dict[str, float] = Field(description="per meter and 'total' over the range")


class SettlementList(BaseModel):
    """Settlements: closed versions from the database, or computed drafts (status 'open')."""

    settlements: list[dict[str, Any]]


class CloseIn(BaseModel):
    """Close a settlement; the note is kept as the version's reason."""

    model_config = ConfigDict(extra="forbid", strict=True)
    note: str = Field(default="", max_length=1000, pattern=NO_NUL)
    incomplete_reason: str = Field(default="", max_length=1000, pattern=NO_NUL,
                                   description="why the period may be closed although its data is incomplete")


class CorrectIn(BaseModel):
    """A correction: a new version, computed again from the data, with the reason for it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field(min_length=3, max_length=1000, pattern=NO_NUL,
                        json_schema_extra={"examples": ["meter 1 read on site"]})

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("reason must not be blank")
        return v


def _iso_text(v: Any) -> Any:
    # pydantic would read a number as epoch seconds; the schema says an ISO 8601 date-time string.
    if not isinstance(v, str | datetime):
        raise ValueError("expected an ISO 8601 date-time string such as 2024-03-01T00:00:00Z")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class ManualReadingIn(BaseModel):
    """A register value read on site."""

    model_config = ConfigDict(extra="forbid")
    time: datetime = Field(description="when the register was read (ISO 8601; no zone means UTC)")
    value_gj: float = Field(ge=0, le=1e12, description="the energy register, GJ")
    note: str = Field(default="", max_length=1000, pattern=NO_NUL)

    _check = field_validator("value_gj")(_finite)
    _time = field_validator("time", mode="before")(_iso_text)


class ReplacementIn(BaseModel):
    """A meter exchanged in the field."""

    model_config = ConfigDict(extra="forbid")
    time: datetime = Field(description="when the old meter was removed and the new one started")
    new_serial: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    old_serial: str = Field(default="", max_length=64, pattern=NO_NUL)
    old_final_gj: float = Field(ge=0, le=1e12, description="the old meter's last register value")
    new_initial_gj: float = Field(default=0.0, ge=0, le=1e12, description="the new meter's register at start")

    _time = field_validator("time", mode="before")(_iso_text)


class RecordedOut(BaseModel):
    """The stored entry's id; during a database outage (202) no id yet: the entry is queued durably."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": 12, "meter": "meter1", "time": "2026-03-01T12:00:00Z", "queued": False},
        {"id": None, "meter": "meter1", "time": "2026-03-01T12:00:00Z", "queued": True}]})
    id: int | None
    meter: str
    time: datetime
    queued: bool = Field(default=False, description="true: held in the plant's journal while the database is "
                                                    "away, stored when it is back (a duplicate is then refused "
                                                    "and audited)")


class AccountingErrorOut(BaseModel):
    """An error: what to do, and the status repeated (the shape of every heatrec error)."""

    error: str
    status: int
    details: list[dict[str, str]] | None = None


_QUEUED: dict[int | str, dict[str, Any]] = {202: {"model": RecordedOut, "description": "the database is away: "
                                                 "the entry is queued durably and stored when it is back"}}
_ERR: dict[int | str, dict[str, Any]] = {
    409: {"model": AccountingErrorOut,
          "description": "the rule set has no figure for these dates (accounting.rules_dir), "
                         "or the settlement is in the wrong state"},
    503: {"model": AccountingErrorOut, "description": "the database is unavailable"}}



_SAME_SETTLEMENT = {"contract_id": "$request.path.contract_id", "period": "$request.path.period"}
# OpenAPI links: a listed settlement can be closed, a closed one corrected (and corrected again).
_LIST_LINKS = {"CloseFirst": {"operationRef": _op("/api/v1/settlements/{contract_id}/{period}/close"),
                              "parameters": {"contract_id": "$response.body#/settlements/0/contract",
                                             "period": "$response.body#/settlements/0/period"},
                              "description": "close the first settlement listed"},
               "CorrectFirst": {"operationRef": _op("/api/v1/settlements/{contract_id}/{period}/correct"),
                                "parameters": {"contract_id": "$response.body#/settlements/0/contract",
                                               "period": "$response.body#/settlements/0/period"},
                                "description": "correct the first settlement listed (once it is closed)"}}
_CLOSED_LINKS = {"Correct": {"operationRef": _op("/api/v1/settlements/{contract_id}/{period}/correct"),
                             "parameters": _SAME_SETTLEMENT, "description": "correct the settlement just stored"}}


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _clamped(t: datetime) -> datetime:
    # Accounting covers 1990..2100; nothing is metered outside, and it keeps the arithmetic in range.
    return min(max(_aware(t), _EARLIEST), _LATEST)


def _range(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    """[start, end) clamped to 1990..2100; an inverted range comes back empty (start == end)."""
    t1 = _clamped(end) if end else datetime.now(UTC).replace(microsecond=0)
    t0 = _clamped(start) if start else t1 - default
    return min(t0, t1), t1


def add_accounting_routes(app: FastAPI, require: Callable[[Role], Callable[[Request], Awaitable[Principal]]]) -> None:
    """Register the accounting endpoints on the app."""

    def accounting(request: Request) -> HeatrecConfig:
        cfg: HeatrecConfig = request.app.state.heatrec.config
        if cfg.accounting is None:
            raise HTTPException(404, "heat accounting is not configured ([accounting] in the plant config)")
        return cfg

    def pool(request: Request) -> asyncpg.Pool:
        p: asyncpg.Pool = request.app.state.heatrec.pool
        return p

    Viewer = Annotated[Principal, Depends(require("viewer"))]
    Operator = Annotated[Principal, Depends(require("operator"))]
    Config = Annotated[HeatrecConfig, Depends(accounting)]
    Pool = Annotated[asyncpg.Pool, Depends(pool)]
    Period = Annotated[str, Path(pattern=PERIOD_PATTERN, description="YYYY-MM")]
    ContractId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
    MeterId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]

    async def _queue_if_away(request: Request, kind: str, data: dict[str, Any]) -> JSONResponse | None:
        """While the database is away, an entry typed in on site goes to the durable journal: 202, queued."""
        state = request.app.state.heatrec
        if state.db.up or state.journal is None:
            return None
        await state.journal.append(kind, {**data, "entered_at": utcnow().isoformat()})
        out = RecordedOut(id=None, meter=data["meter_id"], time=datetime.fromisoformat(data["time"]), queued=True)
        return JSONResponse(out.model_dump(mode="json"), status_code=202)

    def acc(cfg: HeatrecConfig) -> AccountingConfig:
        assert cfg.accounting is not None  # the dependency made sure
        return cfg.accounting

    async def guarded(work: Callable[[], Awaitable[Any]]) -> Any:
        # RuleError and SettlementConflict 409, AccountingError 422 (service/errors.py); asyncpg's errors as
        # storage errors, also those of work that acquires on its own.
        async with translated():
            return await work()

    def contract_known(cfg: HeatrecConfig, contract_id: str) -> None:
        if contract_id not in {c.id for c in acc(cfg).contracts}:
            raise HTTPException(404, f"no contract '{contract_id}' in [accounting]")

    def meter_known(cfg: HeatrecConfig, meter_id: str) -> None:
        if meter_id not in {m.id for m in acc(cfg).meters}:
            raise HTTPException(404, f"no accounting meter '{meter_id}'")

    @app.get("/api/v1/energy", response_model=EnergyOut, tags=["accounting"], responses=_ERR)
    async def energy(_: Viewer, cfg: Config, db: Pool, request: Request,
                     start: Annotated[datetime | None, Query(description="range start; default end - 1 day")] = None,
                     end: Annotated[datetime | None, Query(description="range end, exclusive; default now")] = None,
                     interval_s: Annotated[int | None, Query(ge=60, le=86400 * 31,
                                                             description="default accounting.interval_s")] = None,
                     meter: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=64)] = None) -> EnergyOut:
        """Energy per meter and interval from register differences, flagged estimated/manual (viewer).

        A range longer than `[api] max_query_span_days` (366 days by default) is refused with 422.
        """
        iso_times_only(request)
        t0, t1 = _range(start, end, timedelta(days=1))
        now = datetime.now(UTC).replace(microsecond=0)
        t0, t1 = min(t0, now), min(t1, now)  # no energy from the future: nothing is metered there yet
        within_span(request, t0, t1)
        step = interval_s or acc(cfg).interval_s
        # Like point history: a step giving more than MAX_INTERVALS is coarsened; interval_s says what applied.
        step = max(step, math.ceil((t1 - t0).total_seconds() / MAX_INTERVALS))
        meters = [m for m in acc(cfg).meters if meter is None or m.id == meter]
        if meter is not None and not meters:
            raise HTTPException(404, f"no accounting meter '{meter}'")

        async def work() -> EnergyOut:
            out: list[IntervalOut] = []
            totals: dict[str, float] = {}
            async with connection(db) as conn:
                for m in meters:
                    rows = await meter_intervals(conn, m, t0, t1, step)
                    totals[m.id] = round(sum(r.energy_gj for r in rows), 6)
                    out += [IntervalOut(meter=r.meter, start=r.start, end=r.end, energy_gj=round(r.energy_gj, 6),
                                        estimated_gj=round(r.estimated_gj, 6), estimated=r.estimated,
                                        manual=r.manual, integrated_gj=r.integrated_gj,
                                        drift_percent=r.drift_percent, envelope_percent=r.envelope_percent,
                                        flags=list(r.flags)) for r in rows]
            totals["total"] = round(sum(totals.values()), 6)
            return EnergyOut(start=t0, end=t1, interval_s=step, intervals=out, energy_gj=totals)

        result: EnergyOut = await guarded(work)
        return result

    @app.get("/api/v1/settlements", response_model=SettlementList, tags=["accounting"],
             responses={**_ERR, 200: {"content": {"application/json": {}, "text/csv": {}},
                                      "description": "JSON, or CSV with ?format=csv or Accept: text/csv",
                                      "links": _LIST_LINKS}})
    async def settlements(_: Viewer, cfg: Config, db: Pool, request: Request,
                          period: Annotated[str | None, Query(pattern=PERIOD_PATTERN,
                                                              description="YYYY-MM; with it, contracts "
                                                                          "not closed yet are computed")] = None,
                          contract: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=64)] = None,
                          all_versions: bool = False,
                          format: Literal["json", "csv"] | None = None) -> Any:
        """Closed settlements (latest version, or all); for a period, drafts of contracts not closed (viewer)."""
        if contract is not None:
            contract_known(cfg, contract)

        async def work() -> list[dict[str, Any]]:
            async with connection(db) as conn:
                return await period_documents(conn, cfg, period, contract, all_versions)

        docs: list[dict[str, Any]] = await guarded(work)
        wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
        if wants_csv:
            return Response(settlements_csv(docs), media_type="text/csv")
        return JSONResponse(SettlementList(settlements=docs).model_dump(mode="json"))

    async def _close(request: Request, cfg: HeatrecConfig, db: asyncpg.Pool, contract_id: str, period: str,
                     who: Principal, reason: str, correction: bool, incomplete_reason: str = "") -> dict[str, Any]:
        contract_known(cfg, contract_id)

        async def work() -> dict[str, Any]:
            async with connection(db) as conn:
                [s] = await settle_month(conn, cfg, period, [contract_id])
                refusal = close_refusal(s, incomplete_reason or (reason if correction else ""))
                if refusal is not None:
                    raise SettlementConflict(refusal)
                if incomplete_reason.strip():
                    s = replace(s, meta={**s.meta, "incomplete_reason": incomplete_reason})
                saved = await save_settlement(conn, s, who.name, reason, correction)
                if closed_periods is not None:  # at once, not at the guard's next look at the table
                    closed_periods.close(s.contract_id, s.start, s.end)
                return saved

        closed_periods = request.app.state.heatrec.closed_periods
        doc: dict[str, Any] = await guarded(work)
        return doc

    @app.post("/api/v1/settlements/{contract_id}/{period}/close", tags=["accounting"],
              responses={**_ERR, 200: {"description": "the closed version", "links": _CLOSED_LINKS}})
    async def close(contract_id: ContractId, period: Period, body: CloseIn, who: Operator, cfg: Config,
                    db: Pool, request: Request) -> dict[str, Any]:
        """Compute and close a month's settlement as version 1 (operator).

        409 when it is closed already, when the month has not ended, or when its data is incomplete and
        no incomplete_reason is given.
        """
        return await _close(request, cfg, db, contract_id, period, who, body.note, False, body.incomplete_reason)

    @app.post("/api/v1/settlements/{contract_id}/{period}/correct", tags=["accounting"],
              responses={**_ERR, 200: {"description": "the new version", "links": _CLOSED_LINKS}})
    async def correct(contract_id: ContractId, period: Period, body: CorrectIn, who: Operator, cfg: Config,
                      db: Pool, request: Request) -> dict[str, Any]:
        """Recompute a closed settlement as a new version with a reason (operator); 409 if not closed yet."""
        return await _close(request, cfg, db, contract_id, period, who, body.reason, True)

    @app.post("/api/v1/meters/{meter_id}/readings", response_model=RecordedOut, tags=["accounting"],
              responses={**_ERR, **_QUEUED})
    async def manual_reading(meter_id: MeterId, body: ManualReadingIn, who: Operator, cfg: Config,
                             db: Pool, request: Request) -> Any:
        """Enter a register value read on site; it is used like a telemetry reading and flagged manual."""
        meter_known(cfg, meter_id)
        t = _aware(body.time)

        async def work() -> int:
            async with connection(db) as conn:
                return await add_manual_reading(conn, meter_id, t, body.value_gj, who.name, body.note)

        queued = await _queue_if_away(request, "manual_reading", {
            "meter_id": meter_id, "time": t.isoformat(), "value_gj": body.value_gj, "entered_by": who.name,
            "note": body.note})
        if queued is not None:
            return queued
        return RecordedOut(id=await guarded(work), meter=meter_id, time=t)

    @app.post("/api/v1/meters/{meter_id}/replacements", response_model=RecordedOut, tags=["accounting"],
              responses={**_ERR, **_QUEUED})
    async def replacement(meter_id: MeterId, body: ReplacementIn, who: Operator, cfg: Config,
                          db: Pool, request: Request) -> Any:
        """Record a meter exchange: the old meter's last register and the new meter's first (operator)."""
        meter_known(cfg, meter_id)
        t = _aware(body.time)

        async def work() -> int:
            async with connection(db) as conn:
                return await add_replacement(conn, meter_id, t, body.old_serial, body.new_serial,
                                             body.old_final_gj, body.new_initial_gj, who.name)

        queued = await _queue_if_away(request, "replacement", {
            "meter_id": meter_id, "time": t.isoformat(), "old_serial": body.old_serial,
            "new_serial": body.new_serial, "old_final_gj": body.old_final_gj, "new_initial_gj": body.new_initial_gj,
            "entered_by": who.name})
        if queued is not None:
            return queued
        return RecordedOut(id=await guarded(work), meter=meter_id, time=t)

    @app.get("/api/v1/kpis", tags=["accounting"], responses=_ERR)
    async def get_kpis(_: Viewer, cfg: Config, db: Pool, request: Request,
                       period: Annotated[str | None, Query(pattern=PERIOD_PATTERN, description="YYYY-MM")] = None,
                       year: Annotated[int | None, Query(ge=1990, le=2099)] = None,
                       start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
        """Delivered heat, homes, avoided CO2, heat-pump COP, heat share, ERF and PUE (viewer).

        The range is a month (period), a year, or start/end (default: the last 30 days; at most
        `[api] max_query_span_days`, 366 days by default, else 422).
        """
        iso_times_only(request)
        tz = ZoneInfo(cfg.plant.timezone)
        if period is not None:
            t0, t1 = month_bounds(period, tz)
        elif year is not None:
            t0, t1 = year_bounds(year, tz)
        else:
            t0, t1 = _range(start, end, timedelta(days=30))
            within_span(request, t0, t1, "; ?year= and ?period= always work")

        async def work() -> dict[str, Any]:
            async with connection(db) as conn:
                return await kpis(conn, cfg, t0, t1)

        result: dict[str, Any] = await guarded(work)
        return result

    @app.get("/api/v1/reports/annual", tags=["accounting"], responses=_ERR)
    async def annual(_: Viewer, cfg: Config, db: Pool, year: Annotated[int, Query(ge=1990, le=2099)],
                     commissioned: Annotated[date | None, Query(description="start of operation, for the "
                                                                            "EnEfG ERF target")] = None
                     ) -> dict[str, Any]:
        """The year's figures for the EU data-centre database and the German EnEfG report (viewer)."""
        t0, t1 = year_bounds(year, ZoneInfo(cfg.plant.timezone))

        async def work() -> dict[str, Any]:
            async with connection(db) as conn:
                return await kpis(conn, cfg, t0, t1)

        k: dict[str, Any] = await guarded(work)
        return annual_report(year, cfg.plant.name, k, commissioned)
