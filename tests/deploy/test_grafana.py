"""Grafana provisioning: dashboards are well formed and every panel's SQL runs against the real schema."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.config import parse_config
from service.dispatch import plan_points
from service.localservers import PostgresCluster
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from service.storage.points import register_point, sync_points
from tests.deploy.stack_db import init_like_compose
from tests.support import demo_config_text

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DS_UID = "heatrec-timescaledb"
# Panels, targets and query variables name the datasource through the dashboard variable DS_HEATREC: file
# provisioning resolves it at run time (to its current value, the provisioned uid), and the UI import replaces
# ${DS_HEATREC} with the datasource picked for the __inputs entry of the same name.
DS_INPUT = "DS_HEATREC"
DS_REF = "${" + DS_INPUT + "}"
# The fleet dashboard also reads the centre's metrics, through a Prometheus picked the same way.
PROM_INPUT = "DS_PROMETHEUS"
PROM_REF = "${" + PROM_INPUT + "}"
START = datetime(2026, 1, 1, tzinfo=UTC)
DISPATCH_POINTS = (plan_points.STATUS, plan_points.PLANNED_HEAT, plan_points.PRICE, plan_points.EXPECTED,
                   plan_points.BASELINE)
END = START + timedelta(hours=2)


def expand(sql: str, variables: dict[str, Any]) -> str:
    """Expand Grafana's PostgreSQL macros and template variables the way Grafana does for raw SQL."""
    iso = "'{}'".format
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} BETWEEN {iso(START.isoformat())} AND {iso(END.isoformat())}", sql)
    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)",
                 lambda m: f"time_bucket('{m.group(2).strip().strip(chr(39))}', {m.group(1)}) AS \"time\"", sql)
    sql = sql.replace("$__interval", "1m")
    sql = sql.replace("$__timeFrom()", iso(START.isoformat())).replace("$__timeTo()", iso(END.isoformat()))
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        text = ",".join(f"'{v}'" for v in value) if isinstance(value, list) else str(value)
        sql = sql.replace(f"${name}", text)
    assert "$" not in sql, f"unexpanded macro or variable in: {sql}"
    return sql


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def sql_targets(p: dict[str, Any]) -> list[dict[str, Any]]:
    """A panel's SQL targets (the fleet dashboard's Prometheus ones are checked by test_fleet_dashboard_metrics)."""
    return [t for t in p["targets"] if t["datasource"]["uid"] == DS_REF]


def query_variables(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The SQL template variables (the datasource variable DS_HEATREC is not a query)."""
    return [v for v in d["templating"]["list"] if v["type"] != "datasource"]


def provisioned_datasource() -> dict[str, Any]:
    import yaml

    [ds] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "heatrec.yaml").read_text())["datasources"]
    assert isinstance(ds, dict)
    return ds


def datasource_refs(node: Any) -> list[Any]:
    """Every value of a "datasource" key anywhere in a dashboard."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "datasource"] + [
            r for v in node.values() for r in datasource_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in datasource_refs(v)]
    return []


def test_dashboards_are_well_formed() -> None:
    assert {p.stem for p in DASHBOARDS} == {"plant-overview", "energy", "data-quality", "settlements", "fleet"}
    uids = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] not in uids and len(d["uid"]) <= 40
        uids.add(d["uid"])
        assert isinstance(d["schemaVersion"], int) and d["title"] and d["panels"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in panels(d):
            assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            assert p["datasource"]["uid"] in (DS_REF, PROM_REF)
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"]
                if t["datasource"]["uid"] == PROM_REF:
                    assert path.stem == "fleet" and t["expr"].strip()
                    continue
                assert t["rawSql"].strip() and t["format"] in ("time_series", "table")
        for v in query_variables(d):
            assert v["datasource"]["uid"] == DS_REF and v["query"]
    ds = provisioned_datasource()
    assert ds["uid"] == DS_UID and ds["jsonData"]["timescaledb"] is True


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_imports_through_the_ui_and_provisions_by_uid(path: Path) -> None:
    """`__inputs` asks for the datasource on import; provisioning resolves the same references by variable."""
    ds = provisioned_datasource()
    d = json.loads(path.read_text())
    inp, *more = d["__inputs"]
    assert inp["name"] == DS_INPUT and inp["type"] == "datasource" and inp["pluginId"] == ds["type"]
    # Only the fleet dashboard asks for a second datasource: the Prometheus that scrapes `heatrec central`.
    assert [(m["name"], m["type"], m["pluginId"]) for m in more] == (
        [(PROM_INPUT, "datasource", "prometheus")] if path.stem == "fleet" else [])
    requires = {(r["type"], r["id"]) for r in d["__requires"]}
    assert {("grafana", "grafana"), ("datasource", ds["type"])} <= requires
    assert {("datasource", m["pluginId"]) for m in more} <= requires
    assert {("panel", p["type"]) for p in panels(d)} <= requires
    # The datasource variable comes first (query variables use it) and, unchanged, picks the provisioned one.
    var = d["templating"]["list"][0]
    assert (var["name"], var["type"], var["query"]) == (DS_INPUT, "datasource", ds["type"])
    assert var["current"]["value"] == ds["uid"] and not var.get("multi") and not var.get("includeAll")
    if more:
        prom = d["templating"]["list"][1]
        assert (prom["name"], prom["type"], prom["query"]) == (PROM_INPUT, "datasource", "prometheus")
    refs = datasource_refs(d)
    allowed = [{"type": ds["type"], "uid": DS_REF}] + ([{"type": "prometheus", "uid": PROM_REF}] if more else [])
    assert refs and all(r in allowed for r in refs), refs
    # What Grafana's import does with the picked datasources: every reference then names one of them.
    imported = json.loads(path.read_text().replace(DS_REF, "picked-uid").replace(PROM_REF, "picked-prom"))
    assert all(r["uid"] in ("picked-uid", "picked-prom") for r in datasource_refs(imported))


async def test_every_panel_query_runs_against_seeded_schema(postgres: PostgresCluster) -> None:
    """As Grafana runs them: logged in as the read-only grafana role, on a database compose's scripts initialised."""
    cfg = parse_config(_demo_devices())
    db = init_like_compose(postgres)
    pool = await connect_pool(db.owner)
    reader = await asyncpg.connect(host=db.owner.host, port=db.owner.port, user=db.grafana_user,
                                   password=db.grafana_password, database=db.name)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            keys = await sync_points(conn, cfg)
            # The dispatch task's own points, registered as the writer registers them on their first sample.
            keys.update({p: await register_point(conn, p) for p in DISPATCH_POINTS})
            # Every 7th reading BAD, and the last one of every other point too (for the "not GOOD" panel).
            rows = [(START + timedelta(seconds=30 * i), key, float(i), 2 if i % 7 == 0 or (i == 239 and key % 2) else 0)
                    for key in keys.values() for i in range(240)]
            await conn.copy_records_to_table("samples", records=rows, columns=["time", "point_key", "value", "quality"])
            await conn.execute("INSERT INTO events (time, source, kind, message) VALUES ($1, 'driver:hp1', "
                               "'disconnected', 'connection refused')", START + timedelta(minutes=5))
            await _seed_accounting(conn)
            await _seed_fleet(conn)
            # The CDU limit taking charge, as the control loop records it.
            await conn.execute("INSERT INTO events (time, source, kind, severity, message) VALUES ($1, 'control', "
                               "'cdu_limit', 'warning', 'CDU limit in charge')", START + timedelta(minutes=7))
            await conn.execute("INSERT INTO events (time, source, kind, severity, message) VALUES ($1, 'dispatch', "
                               "'fallback_follow_demand', 'warning', 'missing prices')", START + timedelta(minutes=8))
            # A heat-pump trip: the state alarm's row and its transition, as the alarm manager stores them.
            await conn.execute("INSERT INTO alarms (id, source, kind, severity, message, state, active, value, since) "
                               "VALUES ('hp1.status:trip', 'hp1.status', 'state', 'high', 'heat pump hp1 tripped', "
                               "'unack_active', true, 3, $1)", START + timedelta(minutes=6))
            await conn.execute("INSERT INTO alarm_events (time, alarm_id, old_state, new_state, value, message) "
                               "VALUES ($1, 'hp1.status:trip', 'normal', 'unack_active', 3, 'tripped')",
                               START + timedelta(minutes=6))
            checked = 0
            for path in DASHBOARDS:
                d = json.loads(path.read_text())
                variables: dict[str, Any] = {}
                for v in query_variables(d):
                    options = [r[0] for r in await reader.fetch(v["query"])]
                    default = v["current"]["value"]
                    if default == ["$__all"]:  # "All": Grafana puts every option in
                        assert v["includeAll"] and options, f"{path.name}: ${v['name']} offers nothing"
                        default = options
                    for name in default if isinstance(default, list) else [default]:
                        assert name in options, f"{path.name}: ${v['name']} default {name} is not offered"
                    variables[v["name"]] = default
                for p in panels(d):
                    for t in sql_targets(p):
                        result = await reader.fetch(expand(t["rawSql"], variables))
                        assert result, f"{path.name}: panel '{p['title']}' returned no rows on seeded data"
                        if t["format"] == "time_series":
                            assert "time" in result[0].keys() and "value" in result[0].keys()
                        checked += 1
            assert checked >= 10
    finally:
        await reader.close()
        await pool.close()


async def _seed_accounting(conn: Any) -> None:
    """A closed settlement with a correction, an hour of the register roll-up, a manual reading and a meter
    exchange (settlements dashboard)."""
    for version, reason in ((1, ""), (2, "meter read on site")):
        await conn.execute(
            "INSERT INTO settlements (contract_id, period, version, period_start, period_end, delivered_gj, "
            "estimated_gj, charge_dkk, charge_payer, amount_dkk, allowed_price, provisional, document, reason, "
            "closed_by) VALUES ('demo_supply', '2026-01', $1, $2, $3, 2600, 26, 0, 'none', 234000, 90, false, "
            "'{}', $4, 'operator')", version, START, START + timedelta(days=31), reason)
    await conn.execute("INSERT INTO register_hours (point_key, hour, energy, anomalies, covered_s, samples) "
                       "SELECT key, $1, 2.9, 0, 3600, 120 FROM points WHERE id = 'meter1.energy'", START)
    await conn.execute("INSERT INTO manual_readings (meter_id, time, value_gj, entered_by, note) "
                       "VALUES ('meter1', $1, 1234.5, 'operator', 'read on site')", START + timedelta(minutes=30))
    await conn.execute("INSERT INTO meter_replacements (meter_id, time, old_serial, new_serial, old_final_gj, "
                       "entered_by) VALUES ('meter1', $1, '71234567', '80000001', 1300, 'operator')",
                       START + timedelta(minutes=60))


async def _seed_fleet(conn: Any) -> None:
    """A fleet site with its heat-meter register, as `heatrec central` stores them (fleet dashboard)."""
    await conn.execute("INSERT INTO fleet_sites (site, watermark, batches, samples, last_batch_created, "
                       "last_commit_at) VALUES ('site-a', 4, 4, 240, $1, $1)", END)
    key = await conn.fetchval("INSERT INTO fleet_points (site, id) VALUES ('site-a', 'meter1.energy') RETURNING key")
    await conn.copy_records_to_table("samples", records=[(START + timedelta(seconds=30 * i), key, 100 + 0.01 * i, 0)
                                                         for i in range(240)],
                                     columns=["time", "point_key", "value", "quality"])


def test_fleet_dashboard_reads_only_metrics_the_centre_exports() -> None:
    """Every metric a Prometheus panel names is in `heatrec central`'s /metrics (service/metrics.py)."""
    from prometheus_client import generate_latest

    from service.fleet.store import SiteRow
    from service.fleet.view import FleetState
    from service.metrics import build_central_registry

    state = FleetState({"site-a": ""}, True)
    state.rows = {"site-a": SiteRow(site="site-a", epoch=1, watermark=3, batches=3, samples=300, replayed_batches=0,
                                     lost_batches=0, last_batch_created=START, last_commit_at=START,
                                     backlog_samples=0, backlog_batches=0)}
    state.status("site-a", {"online": True})
    state.count("site-a", "stored")
    exported = set(re.findall(r"^(heatrec_\w+?)(?:\{| )", generate_latest(build_central_registry(state)).decode(),
                              re.MULTILINE))
    d = json.loads((GRAFANA / "dashboards" / "fleet.json").read_text())
    named = {m for p in panels(d) for t in p["targets"] if "expr" in t
             for m in re.findall(r"heatrec_\w+", t["expr"])}
    assert len(named) >= 5 and named <= exported, named - exported


def test_dashboards_name_only_the_dispatch_points_the_task_publishes() -> None:
    """A `dispatch.…` point in a panel's SQL is one service/dispatch/plan_points.py publishes."""
    named = {m for path in DASHBOARDS for p in panels(json.loads(path.read_text())) for t in sql_targets(p)
             for m in re.findall(r"point = '(dispatch\.[\w.]+)'", t["rawSql"])}
    assert named and named <= set(DISPATCH_POINTS), named - set(DISPATCH_POINTS)


def _demo_devices() -> dict[str, Any]:
    import tomllib

    return {"devices": tomllib.loads(demo_config_text())["devices"]}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_is_canonical(path: Path) -> None:
    # Provisioned dashboards are read-only in Grafana: the files are the source and stay reviewable.
    assert path.read_text().endswith("\n") and json.loads(path.read_text())["editable"] is False


@pytest.mark.integration  # npm install and tsc as child processes
def test_dashboards_match_grafana_schema() -> None:
    """Each dashboard, as a TypeScript object literal typed `Dashboard` from @grafana/schema, compiles strictly.

    Excess-property checks make a misspelt or unknown key an error, and every known key must have the right type.
    The npm packages are installed once into var/grafana-schema (pinned in deploy/grafana/schema-check).
    """
    import shutil
    import subprocess

    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node") is not None, "node and npm are missing: run 'make setup'"
    cache = ROOT / "var" / "grafana-schema"
    spec = GRAFANA / "schema-check" / "package.json"
    if not (cache / "node_modules" / "@grafana" / "schema").exists() or \
            (cache / "package.json").read_text() != spec.read_text():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(spec, cache / "package.json")
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=cache,
                           capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, f"npm install failed: {r.stderr[-2000:]}"
    for path in DASHBOARDS:
        # __inputs and __requires are the import envelope, not the dashboard model: @grafana/schema has no type
        # for them (test_dashboard_imports_through_the_ui_and_provisions_by_uid checks them).
        model = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("__inputs", "__requires")}
        src = cache / f"check_{path.stem.replace('-', '_')}.ts"
        src.write_text("import type { Dashboard } from '@grafana/schema';\n"
                       f"const dashboard: Dashboard = {json.dumps(model, indent=2)};\nexport default dashboard;\n")
    tsc = cache / "node_modules" / "typescript" / "bin" / "tsc"
    r = subprocess.run(["node", str(tsc), "--noEmit", "--strict", "--moduleResolution", "node", "--skipLibCheck",
                        *[f"check_{p.stem.replace('-', '_')}.ts" for p in DASHBOARDS]],
                       cwd=cache, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, f"dashboards do not match @grafana/schema:\n{r.stdout}{r.stderr}"


def test_provisioning_outside_compose_is_documented() -> None:
    """DEPLOY.md says where each provisioning file goes and which environment the datasource file reads, as
    compose sets them up."""
    import yaml

    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    section = doc[doc.index("\n## Grafana outside compose\n"):].split("\n## ", 2)[1]
    grafana = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]["grafana"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert targets["/etc/grafana/provisioning"] == "./grafana/provisioning"
    for kind in ("datasources", "dashboards"):
        [file] = (GRAFANA / "provisioning" / kind).glob("*.yaml")
        assert f"`deploy/grafana/provisioning/{kind}/{file.name}`" in section
        assert f"`/etc/grafana/provisioning/{kind}/`" in section
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "heatrec.yaml").read_text())["providers"]
    path = provider["options"]["path"]
    assert targets[path] == "./grafana/dashboards" and f"`{path}/`" in section
    variables = set(re.findall(r"\$\{(\w+)\}", (GRAFANA / "provisioning" / "datasources" / "heatrec.yaml").read_text()))
    assert variables and variables <= set(grafana["environment"]), variables
    for name in variables:
        assert f"`{name}`" in section, f"{name} (the datasource file reads it) is not in 'Grafana outside compose'"
    assert "`__inputs`" in section and f"`{DS_INPUT}`" in section
