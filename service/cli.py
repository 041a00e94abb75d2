"""The `heatrec` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from service.config import ConfigError, HeatrecConfig, load_config
from service.errors import HeatrecError
from service.signals import run_until_signal


def setup_logging(verbose: bool) -> None:
    """Plain, timestamped log lines on stderr."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Library chatter would drown the service's own once-per-state-change lines.
    for noisy in ("asyncua", "aiomqtt", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a configuration file: schema, references, rule sets, contract prices, files and state dirs."""
    from service.accounting.checks import check_accounting
    from service.preflight import check_paths

    if (args.file is None) == (args.config_option is None):
        raise ConfigError("check-config: give the config file once, as FILE or as -c FILE")
    args.file = args.file or args.config_option
    cfg = load_config(args.file)
    check_accounting(cfg, str(args.file))
    check_paths(cfg, str(args.file))
    n_points = sum(len(d.points) for d in cfg.devices)
    print(f"{args.file}: OK: plant '{cfg.plant.name}', {len(cfg.devices)} devices, {n_points} points"
          + (", simulation section present" if cfg.simulation else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the service for a plant configuration."""
    from service.accounting.checks import check_accounting
    from service.app import Service

    cfg = load_config(args.config)
    try:
        check_accounting(cfg, str(args.config))
    except ConfigError as err:
        # Billing must not keep the plant from running (control, SCADA and telemetry come first): say it
        # loudly; settlements answer with the same message until it is fixed. check-config refuses it.
        logging.getLogger("heatrec").error("accounting configuration: %s", err)

    async def main(stop: asyncio.Event) -> None:
        svc = Service(cfg)
        task = asyncio.create_task(svc.run(), name="service")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        svc.stop()
        stopper.cancel()
        await task

    run_until_signal(main)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve the simulated plant of a configuration's [simulation] section."""
    from simulators.runner import Simulation
    from simulators.scaled_clock import ScaledClock
    from simulators.scenario import load_scenario

    cfg = load_config(args.config)
    if cfg.simulation is None:
        raise ConfigError(f"{args.config}: simulation: section missing (see config/demo.toml)")
    sim_cfg = cfg.simulation
    scenario = load_scenario(args.scenario) if args.scenario else None
    if not args.speed > 0:
        raise ConfigError(f"--speed must be positive (got {args.speed})")
    clock = ScaledClock(args.speed) if args.speed != 1 else None

    async def main(stop: asyncio.Event) -> None:
        async with Simulation(sim_cfg, clock=clock, scenario=scenario, control_port=args.control_port) as sim:
            for device, where in sim.endpoints().items():
                print(f"  {device}: {where}", flush=True)
            print("simulators running; Ctrl-C stops them", flush=True)
            await stop.wait()

    run_until_signal(main)
    return 0


def cmd_central(args: argparse.Namespace) -> int:
    """Run a central store instance: every site's batches into the central database (docs/FLEET.md)."""
    from service.config import load_central_config
    from service.fleet.central import Central

    cfg = load_central_config(args.config)

    async def main(stop: asyncio.Event) -> None:
        central = Central(cfg)
        task = asyncio.create_task(central.run(), name="central")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        central.stop()
        stopper.cancel()
        await task

    run_until_signal(main)
    return 0


def cmd_site_keys(args: argparse.Namespace) -> int:
    """Issue a fleet site's broker credentials and TLS material into a fleet directory (docs/FLEET.md).

    Made once and kept: the fleet CA (ca/), the site's client certificate, key and broker password
    (sites/SITE/), the centre's identity (central/), and with --broker-host the broker's server
    certificate; broker/passwd and broker/acl are rewritten for every site the directory holds. Running it
    again changes nothing of a site's; --rotate issues the named site's (or the broker's) material anew.
    Prints the [uplink] section for the site's plant file and the [[sites]] entry for central.toml.
    """
    from service.fleet.keys import FleetKeys

    keys = FleetKeys(args.dir, days=args.days)
    done = keys.issue(args.site, url=args.url, broker_hosts=args.broker_host, rotate=args.rotate)
    root = Path(args.dir)
    if args.broker_host:
        print(f"# broker certificate for {', '.join(dict.fromkeys(args.broker_host))}: {root / 'broker'}/server.crt",
              file=sys.stderr)
    if done is None:
        return 0
    site_dir = keys.site_dir(done.site)
    state = "issued" if done.made else "unchanged (already issued; --rotate issues it anew)"
    print(f"# site {done.site}: {state}", file=sys.stderr)
    print(f"# to the site: {site_dir}/pki/ next to its plant file, {site_dir}/uplink.env into its env_file;",
          file=sys.stderr)
    print(f"# to the broker: {root / 'broker'}/passwd and acl (then reload Mosquitto: SIGHUP)", file=sys.stderr)
    print(f"# plant file of {done.site} ({site_dir / 'uplink.toml'}):")
    print(done.uplink_toml)
    print(f"# central.toml ({root / 'central'}/sites.toml holds every site's):")
    print(done.sites_entry, end="")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """Create an API token in this plant's token store (api.token_store), print it once, store only its hash.

    The token is in force at once, database or not; it is mirrored to the database now if it answers,
    else when the service next reaches it.
    """
    _, token = _token_change(args.config, lambda store: store.create(args.role, args.name),
                             "the token is in force at this plant now and reaches the database when the "
                             "service next reaches it")
    print(token)
    print(f"(role {args.role}, name '{args.name}'; shown once, only its hash is stored)", file=sys.stderr)
    return 0


def _token_config(config: str) -> Any:
    """The plant file, or a central.toml (it has a [broker] table): either has [api] token_store and [database]."""
    import tomllib

    from service.config import load_central_config

    try:
        central = "broker" in tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        central = False  # load_config says what is wrong with the file
    return load_central_config(config) if central else load_config(config)


def _token_change(config: str, change: Callable[[Any], Any], note: str) -> Any:
    """Apply `change(store)` to the config's token store, mirrored with the database before and after if it answers.

    The database is best effort: when it cannot be reached within [database] connect_timeout_s, the
    change is made locally all the same and `note` (why it still counts) is printed on stderr.
    """
    import asyncpg

    from service.errors import StorageUnavailable
    from service.storage.database import connect_pool
    from service.storage.migrations import migrate
    from service.token_store import TokenStore

    cfg = _token_config(config)
    store = TokenStore(Path(cfg.api.token_store))
    done: list[Any] = []  # the change's result, once made: never made twice if the database fails after it

    async def main() -> None:
        pool = await asyncio.wait_for(connect_pool(cfg.database, min_size=1, max_size=1),
                                      cfg.database.connect_timeout_s)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                await store.mirror(conn)  # first: a token only the database knows can be listed or revoked here
                done.append(change(store))
                await store.mirror(conn)
        finally:
            await pool.close()

    try:
        asyncio.run(main())
    except (StorageUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
        if not done:
            done.append(change(store))
        why = " ".join(str(err).split()) or err.__class__.__name__  # one line, whatever the driver said
        print(f"heatrec: note: database not reached ({why}): {note}", file=sys.stderr)
    return done[0]


def _with_database(config: str, action: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run `action(conn)` on the config's database, migrated first."""
    from service.storage.database import connect_pool
    from service.storage.migrations import migrate

    cfg: HeatrecConfig = load_config(config)

    async def main() -> Any:
        pool = await connect_pool(cfg.database)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                return await action(conn)
        finally:
            await pool.close()

    return asyncio.run(main())


def cmd_token_list(args: argparse.Namespace) -> int:
    """List this plant's API tokens (id, name, role, created, revoked); tokens themselves are never stored.

    Merged with the database first if it answers, so tokens made there are listed too.
    """
    records = _token_change(args.config, lambda store: store.records(),
                            "listing this plant's token store only; tokens made directly in the database "
                            "since the service last reached it are missing")
    print(f"{'id':>4}  {'name':<20} {'role':<9} {'created':<20} revoked")
    for r in records:
        revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if r.revoked_at else "-"
        print(f"{r.id:>4}  {r.name:<20} {r.role:<9} {r.created_at:%Y-%m-%d %H:%M:%S}  {revoked}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a token by id, or every active token of a name, in this plant's token store and the database.

    Refused at this plant at once, database or not; mirrored to the database now if it answers, else
    when the service next reaches it.
    """
    revoked = _token_change(args.config, lambda store: store.revoke(args.ident),
                            "the revocation is in force at this plant now and reaches the database when the "
                            "service next reaches it")
    if not revoked:
        print(f"heatrec: error: no active token with id or name '{args.ident}' (see 'heatrec token list')",
              file=sys.stderr)
        return 2
    print(f"revoked {len(revoked)} token(s)")
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    """Settle every supply contract for a month: closed versions as stored, the others computed (open)."""
    import json

    from service.accounting.documents import period_documents
    from service.accounting.engine import month_bounds

    cfg = load_config(args.config)
    from zoneinfo import ZoneInfo

    # AccountingError and RuleError are heatrec errors: main prints them as one line (exit 2).
    month_bounds(args.period, ZoneInfo(cfg.plant.timezone))  # a bad period fails before any connection

    async def documents(conn: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for c in args.contract or [None]:
            out += await period_documents(conn, cfg, args.period, c)
        return out

    docs: list[dict[str, Any]] = _with_database(args.config, documents)
    if args.json:
        # A meter shared by two contracts counts once in the plant's total.
        per_meter = {m: gj for d in docs for m, gj in d["energy_gj"].items() if m != "total"}
        energy = {**per_meter, "total": round(sum(per_meter.values()), 6)}
        print(json.dumps({"period": args.period, "energy_gj": energy, "settlements": docs}, indent=2))
        return 0
    print(f"{'contract':<16} {'meter':<10} {'GJ':>14} {'est.%':>6} {'charge DKK':>12} {'payer':<9} "
          f"{'DKK/GJ':>9} {'amount DKK':>14}  status")
    for d in docs:
        price = d["allowed_price_dkk_per_gj"]
        status = d["status"] + (f" v{d['version']}" if d.get("version") else "")
        if d["status"] == "open" and d.get("as_of"):
            status += f" as of {d['as_of'][:19]}"
        print(f"{d['contract']:<16} {'(all)':<10} {d['delivered_gj']:>14.3f} {100 * d['estimated_share']:>6.1f} "
              f"{d['charge_dkk']:>12.2f} {d['charge_payer']:<9} {'-' if price is None else f'{price:.2f}':>9} "
              f"{d['amount_dkk']:>14.2f}  {status}{', provisional' if d['provisional'] else ''}")
        for meter, gj in d["energy_gj"].items():
            if meter != "total":
                print(f"{'':<16} {meter:<10} {gj:>14.3f}")
        if d["flags"]:
            print(f"{'':<16} flags: {', '.join(d['flags'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole demo plant."""
    from service.demo import run_demo

    config = Path(args.config)
    # One data directory per plant file, so an archetype never reuses the demo's database and tokens.
    return run_demo(config, Path(args.var_dir) if args.var_dir else Path("var") / config.stem)


def _quiet_drivers(verbose: bool) -> None:
    """A one-shot read reports each device's error in its output; the drivers' reconnect chatter would mislead."""
    if not verbose:
        logging.getLogger("drivers").setLevel(logging.ERROR)


def cmd_probe(args: argparse.Namespace) -> int:
    """Read every point of a config once (no database); exit 1 when any point is BAD."""
    from service.commissioning import format_probe, probe

    cfg = load_config(args.config)
    _quiet_drivers(args.verbose)
    if args.records:
        return _probe_records(cfg, args.device, args.json)
    rows = asyncio.run(probe(cfg, args.device, args.wait))
    print(format_probe(rows, args.json), flush=True)
    return 1 if any(r.quality == "BAD" for r in rows) else 0


def _probe_records(cfg: HeatrecConfig, device_id: str | None, as_json: bool) -> int:
    """Every record an M-Bus meter sends, with meaning, unit and value, to write its point map from."""
    from drivers.config import MbusDevice
    from drivers.errors import DriverError
    from drivers.mbus import format_records, read_records

    device = next((d for d in cfg.devices if d.id == device_id), None)
    if not isinstance(device, MbusDevice):
        raise ConfigError(f"--records lists an M-Bus meter's records: give --device with the id of a device "
                          f"with protocol \"mbus\" (not {device_id!r})")
    try:
        telegrams = asyncio.run(read_records(device))
    except DriverError as err:
        print(f"{device.id}: {device.address_text} at {device.endpoint}: {err}", file=sys.stderr)
        return 1
    print(format_records(telegrams, as_json), flush=True)
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    """One guarded write with read-back (no database).

    Exit 0: the device holds the value. 1: the write failed or the device refused it (something was
    sent). 3: refused with nothing sent (outside the point's min/max, not writable, not representable).
    """
    import time

    from service.commissioning import format_write, parse_value, write_point

    cfg = load_config(args.config)
    _quiet_drivers(args.verbose)
    value = parse_value(args.value)
    started = time.monotonic()
    result = asyncio.run(write_point(cfg, args.point, value))
    print(format_write(result, time.monotonic() - started), flush=True)
    if result.ok:
        return 0
    return 3 if result.status == "rejected" else 1


SECRETS_HELP = ("Passwords come from ${VAR} references in the file, filled from the environment or the file's "
                "env_file (KEY=VALUE lines): by convention HEATREC_DB_PASSWORD ([database], also used when its "
                "password is empty), HEATREC_MQTT_PASSWORD (MQTT devices) and HEATREC_SCADA_PASSWORD ([scada] "
                "users). `heatrec demo` writes them to var/<plant>/heatrec.env. docs/CONFIG.md, 'Secrets'.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("heatrec")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="heatrec",
        description="heatrec: telemetry, control and heat accounting for data-centre heat-recovery plants.",
        epilog="Quick start: 'make demo' in the checkout. Configuration keys: docs/CONFIG.md.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"heatrec {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", help="run the demo plant: private PostgreSQL+TimescaleDB, Mosquitto, simulators, "
                                    "service", description=cmd_demo.__doc__)
    d.add_argument("-c", "--config", default="config/demo.toml", help="demo plant config (default: %(default)s)")
    d.add_argument("--var-dir", metavar="DIR",
                   help="where data and credentials live (default: var/<config file stem>, e.g. var/demo, "
                        "var/industrial); the config's env_file should name DIR/heatrec.env")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="run the service for a plant config", description=cmd_run.__doc__,
                       epilog=SECRETS_HELP)
    r.add_argument("-c", "--config", required=True, metavar="FILE", help="plant configuration (TOML)")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("simulate", help="serve the simulated plant of a config's [simulation] section",
                       description=cmd_simulate.__doc__)
    s.add_argument("-c", "--config", required=True, metavar="FILE", help="plant configuration (TOML)")
    s.add_argument("--scenario", metavar="FILE", help="scenario file (TOML): load steps, weather, faults")
    s.add_argument("--speed", type=float, default=1.0, metavar="X", help="run plant time X times real time")
    s.add_argument("--control-port", type=int, metavar="PORT",
                   help="HTTP fault-injection endpoint on 127.0.0.1 (overrides simulation.control_port)")
    s.set_defaults(func=cmd_simulate)

    ce = sub.add_parser("central", help="run a central store instance of a fleet (docs/FLEET.md)",
                        description=cmd_central.__doc__, epilog=SECRETS_HELP)
    ce.add_argument("-c", "--config", required=True, metavar="FILE", help="central configuration (central.toml)")
    ce.set_defaults(func=cmd_central)

    sk = sub.add_parser("site-keys", help="issue a fleet site's broker credentials and TLS material (docs/FLEET.md)",
                        description=cmd_site_keys.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="Example: heatrec site-keys --dir fleet --broker-host central.example.net odense-1")
    sk.add_argument("site", metavar="SITE", nargs="?",
                    help="the site id (its [uplink] site: lower case, digits, '_' and '-'); optional with "
                         "--broker-host")
    sk.add_argument("--dir", required=True, metavar="DIR",
                    help="the fleet directory (made if absent); keep it private and backed up: it holds the CA key")
    sk.add_argument("--url", metavar="mqtts://HOST[:PORT]",
                    help="the central broker as the sites reach it; remembered in DIR/fleet.json (default: "
                         "mqtts://<first --broker-host>:8883)")
    sk.add_argument("--broker-host", action="append", metavar="NAME",
                    help="issue the broker's server certificate for this DNS name or IP address (repeatable)")
    sk.add_argument("--rotate", action="store_true",
                    help="issue the named site's key, certificate and password anew (and the broker's certificate "
                         "with --broker-host); without it nothing issued is ever changed")
    sk.add_argument("--days", type=int, default=825, metavar="N",
                    help="validity of new certificates in days (default: %(default)s; the CA: 3650)")
    sk.set_defaults(func=cmd_site_keys)

    c = sub.add_parser("check-config", help="validate a config file and exit", description=cmd_check_config.__doc__)
    c.add_argument("file", metavar="FILE", nargs="?", help="plant configuration (TOML)")
    c.add_argument("-c", "--config", dest="config_option", metavar="FILE",
                   help="the same, as every other command takes it")
    c.set_defaults(func=cmd_check_config)

    t = sub.add_parser("token", help="manage API tokens")
    tsub = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tc = tsub.add_parser("create", help="create a token; prints it once", description=cmd_token_create.__doc__,
                         epilog=SECRETS_HELP)
    tc.add_argument("-c", "--config", required=True, metavar="FILE", help="plant file or central.toml")
    tc.add_argument("--role", required=True, choices=["viewer", "operator", "admin"], help="what the token may do")
    tc.add_argument("--name", required=True, help="who or what holds the token, e.g. grafana, alice")
    tc.set_defaults(func=cmd_token_create)
    tl = tsub.add_parser("list", help="list tokens (never shows the tokens)", description=cmd_token_list.__doc__,
                         epilog=SECRETS_HELP)
    tl.add_argument("-c", "--config", required=True, metavar="FILE", help="plant file or central.toml")
    tl.set_defaults(func=cmd_token_list)
    tr = tsub.add_parser("revoke", help="revoke a token by id or name", description=cmd_token_revoke.__doc__,
                         epilog=SECRETS_HELP)
    tr.add_argument("-c", "--config", required=True, metavar="FILE", help="plant file or central.toml")
    tr.add_argument("ident", metavar="ID|NAME", help="token id (from 'token list') or name")
    tr.set_defaults(func=cmd_token_revoke)

    st = sub.add_parser("settle", help="settle the supply contracts for a month (heat accounting)",
                        description=cmd_settle.__doc__, epilog=SECRETS_HELP)
    st.add_argument("-c", "--config", required=True, metavar="FILE", help="plant configuration (TOML)")
    st.add_argument("--period", required=True, metavar="YYYY-MM", help="the month, in the plant's time zone")
    st.add_argument("--contract", action="append", metavar="ID", help="only this contract (repeatable)")
    st.add_argument("--json", action="store_true", help="print JSON (energy_gj per meter and total)")
    st.set_defaults(func=cmd_settle)

    pr = sub.add_parser("probe", help="read every point once and print it (commissioning; no database)",
                        description=cmd_probe.__doc__, epilog=SECRETS_HELP)
    pr.add_argument("-c", "--config", required=True, metavar="FILE", help="plant configuration (TOML)")
    pr.add_argument("--json", action="store_true", help="print a JSON list of {id, value, unit, quality, ...}")
    pr.add_argument("--device", metavar="ID", help="probe only this device")
    pr.add_argument("--wait", type=float, metavar="SECONDS",
                    help="how long each device may take (default: its timeout_s plus one read)")
    pr.add_argument("--records", action="store_true",
                    help="with --device of an M-Bus meter: list every record of its telegrams (meaning, storage, "
                         "tariff, subunit, value, unit) instead of the points")
    pr.set_defaults(func=cmd_probe)

    w = sub.add_parser("write", help="one guarded write with read-back (commissioning; no database)",
                       description=cmd_write.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("-c", "--config", required=True, metavar="FILE", help="plant configuration (TOML)")
    w.add_argument("point", metavar="POINT", help="full point id, device.point")
    w.add_argument("value", metavar="VALUE", help="number, or true/false for bits")
    w.set_defaults(func=cmd_write)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `heatrec` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:
        # `heatrec probe ... | head`: the reader left. No traceback; stdout must not be flushed again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except HeatrecError as err:  # heatrec's own errors say what to do: one line, no traceback
        print(f"heatrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
