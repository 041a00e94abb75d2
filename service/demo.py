"""`heatrec demo`: the whole plant on one machine, with servers heatrec starts and stops itself."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.config import ConfigError, HeatrecConfig, load_config
from service.localservers import MosquittoServer, PostgresCluster, check_ports_free
from service.localservers.mosquitto import plant_broker_users
from service.private_files import write_private
from service.scada.pki import DEMO_CLIENT_URI, ensure_client_identity
from service.signals import run_until_signal
from simulators.config import SimHeatMeter

log = logging.getLogger(__name__)
SCADA_PORT = 4840  # reserved for the SCADA OPC UA server (contract), checked so the demo owns it


def _load_credentials(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"database": {"user": "heatrec", "password": secrets.token_urlsafe(18)},
            "mqtt": {"username": "heatrec", "password": secrets.token_urlsafe(18)},
            "opcua": {"username": "scada", "password": secrets.token_urlsafe(18)}}


def _save_credentials(path: Path, data: dict[str, Any]) -> None:
    """Tokens and passwords: created 0600 (never readable by others, not even while written), replaced atomically."""
    write_private(path, json.dumps(data, indent=2) + "\n")


def _save_env_file(path: Path, creds: dict[str, Any]) -> None:
    """The demo's passwords as KEY=VALUE lines, for the config's env_file: CLI commands then find them too."""
    write_private(path, "# written by `heatrec demo`; the plant config names it in env_file\n"
                         f"HEATREC_DB_PASSWORD={creds['database']['password']}\n"
                         f"HEATREC_MQTT_PASSWORD={creds['mqtt']['password']}\n"
                         f"HEATREC_MQTT_ALARMS_PASSWORD={creds['mqtt_alarms']['password']}\n"
                         f"HEATREC_SCADA_PASSWORD={creds['opcua']['password']}\n")


def demo_ports(cfg: HeatrecConfig) -> dict[str, tuple[str, int]]:
    """Every loopback port the demo will listen on, by what uses it."""
    ports: dict[str, tuple[str, int]] = {"HTTP API": (cfg.api.host, cfg.api.port),
                                         "PostgreSQL": (cfg.database.host, cfg.database.port)}
    if cfg.scada is not None:
        su = urlsplit(cfg.scada.endpoint)
        ports["SCADA OPC UA server"] = (su.hostname or "127.0.0.1", su.port or SCADA_PORT)
    sim = cfg.simulation
    if sim is not None:
        u = urlsplit(sim.mqtt_broker)
        ports["MQTT broker"] = (u.hostname or "127.0.0.1", u.port or 1883)
        for c in sim.cdus:
            cu = urlsplit(c.endpoint)
            ports[f"CDU simulator {c.id} (OPC UA)"] = (cu.hostname or "127.0.0.1", cu.port or 4840)
        for h in sim.heat_pumps:
            host, _, port = h.endpoint.rpartition(":")
            ports[f"heat pump simulator {h.id} (Modbus TCP)"] = (host, int(port))
        for m in sim.heat_meters:
            if m.protocol != "mqtt":  # M-Bus meters on one endpoint share its gateway port
                host, _, port = m.endpoint.rpartition(":")
                kind = "Modbus TCP" if m.protocol == "modbus" else "M-Bus gateway"
                ports.setdefault(f"heat meter simulator {m.endpoint} ({kind})", (host, int(port)))
    return ports


async def _ensure_tokens(cfg: HeatrecConfig, creds: dict[str, Any]) -> None:
    """Reuse the demo's tokens if the token store still admits them, else create a viewer and an operator token."""
    from service.storage.database import connect_pool
    from service.storage.migrations import migrate
    from service.token_store import TokenStore

    store = TokenStore(Path(cfg.api.token_store))
    pool = await connect_pool(cfg.database)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            # Pull first: a demo from before the token store has its tokens only in the database.
            await store.mirror(conn)
            tokens = creds.setdefault("tokens", {})
            for role in ("viewer", "operator"):
                tok = tokens.get(role)
                if not tok or store.principal(tok) is None:
                    tokens[role] = store.create(role, f"demo-{role}")[1]
            await store.mirror(conn)
    finally:
        await pool.close()


def _meter_line(m: SimHeatMeter) -> str:
    """The banner's line for one simulated heat meter, by the face it shows."""
    if m.protocol == "modbus":
        return f"  heat meter   {m.endpoint}   ({m.id}, Modbus TCP unit {m.unit_id})"
    if m.protocol == "mbus":
        return f"  heat meter   {m.endpoint}   ({m.id}, M-Bus over TCP, primary address {m.primary_address})"
    return f"  heat meter   topic {m.topic}   ({m.id}, MQTT)"


def _banner(cfg: HeatrecConfig, creds: dict[str, Any], cred_path: Path) -> str:
    sim = cfg.simulation
    lines = ["", f"heatrec demo is running: {cfg.plant.name} (Ctrl-C stops everything)",
             f"  API          http://{cfg.api.host}:{cfg.api.port}/api/v1   (docs: /docs)",
             f"  database     postgresql://heatrec@{cfg.database.host}:{cfg.database.port}/{cfg.database.name}"
             "  (view: readings)"]
    if cfg.scada:
        lines.append(f"  SCADA        {cfg.scada.endpoint}   (OPC UA; user '{creds['opcua']['username']}', "
                     "password in credentials)")
        if creds["opcua"].get("client_certificate"):
            lines.append(f"  SCADA client {creds['opcua']['client_certificate']}   (trusted; the user logs in over "
                         "Basic256Sha256 or Aes256Sha256RsaPss, Sign or SignAndEncrypt)")
    if sim:
        lines.append(f"  MQTT broker  {sim.mqtt_broker}")
        lines += [f"  CDU sim      {c.endpoint}   ({c.id}, OPC UA)" for c in sim.cdus]
        lines += [f"  heat pump    {h.endpoint}   ({h.id}, Modbus TCP unit {h.unit_id})" for h in sim.heat_pumps]
        lines += [_meter_line(m) for m in sim.heat_meters]
    lines += [f"  viewer token    {creds['tokens']['viewer']}",
              f"  operator token  {creds['tokens']['operator']}",
              f"  credentials     {cred_path}",
              f"  try: curl -s -H 'Authorization: Bearer {creds['tokens']['viewer']}' "
              f"http://{cfg.api.host}:{cfg.api.port}/api/v1/points", ""]
    return "\n".join(lines)


async def _status_lines(svc: Any, stop: asyncio.Event, every_s: float = 10.0) -> None:
    """Print a one-line plant summary now and then, so the operator sees it is alive."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
        if stop.is_set():
            return
        q = Counter(s.quality.name for s in svc.bus.latest.values())
        written = svc.writer.stats.rows_written if svc.writer else 0
        print(f"status: {len(svc.bus.latest)} points live ({', '.join(f'{v} {k}' for k, v in sorted(q.items()))}); "
              f"{written} samples stored", flush=True)


def run_demo(config_path: Path, var_dir: Path) -> int:
    """Start PostgreSQL, Mosquitto, simulators and the service; stop them all on Ctrl-C/SIGTERM."""
    from service.app import Service, bind_api_socket
    from simulators.runner import Simulation

    if not config_path.exists():
        raise ConfigError(f"{config_path}: file not found (run 'make demo' in the heatrec checkout, "
                          "or pass --config)")
    var_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(var_dir, 0o755)  # the postgres/mosquitto system users must traverse it when we are root
    cred_path = var_dir / "credentials.json"
    creds = _load_credentials(cred_path)
    # Secrets reach the config through the environment (${HEATREC_DB_PASSWORD} etc.).
    os.environ["HEATREC_DB_PASSWORD"] = creds["database"]["password"]
    os.environ["HEATREC_MQTT_PASSWORD"] = creds["mqtt"]["password"]
    # One broker identity per role (docs/DEPLOY.md): the simulated gateway and the alarm publisher have their own.
    # The gateway's password is the simulator's, not heatrec's: it stays out of heatrec.env (credentials.json only).
    for role in ("mqtt_gateway", "mqtt_alarms"):
        creds.setdefault(role, {"password": secrets.token_urlsafe(18)})
    os.environ["HEATREC_MQTT_GATEWAY_PASSWORD"] = creds["mqtt_gateway"]["password"]
    os.environ["HEATREC_MQTT_ALARMS_PASSWORD"] = creds["mqtt_alarms"]["password"]
    creds.setdefault("opcua", {"username": "scada", "password": secrets.token_urlsafe(18)})
    os.environ["HEATREC_SCADA_PASSWORD"] = creds["opcua"]["password"]
    _save_env_file(var_dir / "heatrec.env", creds)
    cfg = load_config(config_path)
    if "spool_dir" not in cfg.storage.model_fields_set:  # the demo keeps all its data under var_dir
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"spool_dir": str(var_dir / "spool")})})
    if "token_store" not in cfg.api.model_fields_set:
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"token_store": str(var_dir / "tokens.json")})})
    if cfg.control is not None and "state_file" not in cfg.control.model_fields_set:
        cfg = cfg.model_copy(update={"control": cfg.control.model_copy(
            update={"state_file": str(var_dir / "control-state.json")})})
    if cfg.simulation is None:
        raise ConfigError(f"{config_path}: simulation: the demo needs a [simulation] section")
    check_ports_free(demo_ports(cfg))
    if cfg.scada is not None:  # the demo's own SCADA client identity, trusted by its SCADA server
        cert, key = asyncio.run(ensure_client_identity(cfg.scada))
        creds["opcua"].update({"client_certificate": str(cert), "client_key": str(key),
                               "client_application_uri": DEMO_CLIENT_URI})
    _save_credentials(cred_path, creds)

    print(f"starting PostgreSQL + TimescaleDB ({var_dir / 'pg'}) ...", flush=True)
    # heatrec connects as its own role, which owns the database and is no superuser; the cluster's superuser
    # (administration only) keeps its password in var/demo/pg.admin-password (0600).
    pg = PostgresCluster(var_dir / "pg", cfg.database.port, creds["database"]["password"],
                         host=cfg.database.host, user=cfg.database.user, dbname=cfg.database.name)
    creds["database_admin"] = {"user": pg.admin_user, "password_file": str(pg.admin_password_file)}
    broker_url = urlsplit(cfg.simulation.mqtt_broker)
    broker_host, broker_port = broker_url.hostname or "127.0.0.1", broker_url.port or 1883
    # Each client of the broker gets its own identity and ACL, derived from the config (who reads, who writes).
    mq = MosquittoServer(var_dir / "mosquitto", broker_port, host=broker_host,
                         users=plant_broker_users(cfg, broker_host, broker_port))
    pg.start()
    try:
        print("starting Mosquitto ...", flush=True)
        mq.start()
        asyncio.run(_ensure_tokens(cfg, creds))
        creds["endpoints"] = {"api": f"http://{cfg.api.host}:{cfg.api.port}", "mqtt": cfg.simulation.mqtt_broker,
                              "database": f"{cfg.database.host}:{cfg.database.port}",
                              "scada": cfg.scada.endpoint if cfg.scada else None}
        _save_credentials(cred_path, creds)
        sock = bind_api_socket(cfg.api.host, cfg.api.port)
        sim_cfg = cfg.simulation

        async def main(stop: asyncio.Event) -> None:
            print("starting simulators and the service ...", flush=True)
            async with Simulation(sim_cfg, register_file=var_dir / "simulator-registers.json"):
                svc = Service(cfg)
                task = asyncio.create_task(svc.run(api_socket=sock), name="service")
                started = asyncio.create_task(svc.started.wait())
                await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
                if svc.started.is_set():
                    print(_banner(cfg, creds, cred_path), flush=True)
                    status = asyncio.create_task(_status_lines(svc, stop), name="status")
                    await asyncio.wait({task, asyncio.create_task(stop.wait())},
                                       return_when=asyncio.FIRST_COMPLETED)
                    print("stopping ...", flush=True)
                    status.cancel()
                svc.stop()
                started.cancel()
                await task

        run_until_signal(main)
    finally:
        mq.stop()
        pg.stop()
    print("demo stopped; data kept in", var_dir, file=sys.stderr)
    return 0
