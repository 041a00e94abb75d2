"""The compose path of docs/DEPLOY.md without a Docker daemon: the compose file against the Compose Specification's
schema, the image's contents by what the Dockerfile copies, the plant example against what compose provides, and the
documented commands against the CLI and the stack they address."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from service.localservers import PostgresCluster
from service.storage.database import connect_pool
from service.storage.migrations import migrate
from tests.deploy.stack_db import GRAFANA_ROLE, INIT_SCRIPTS, OWNER_ROLE, init_like_compose, renamed, run_as_entrypoint

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "DEPLOY.md"
EXAMPLE = DEPLOY / "plant.example.toml"
GRAFANA_SQL = DEPLOY / "timescaledb" / "100_heatrec_grafana.sql"
# Variables of the images themselves (the postgres entrypoint's), not heatrec's to document.
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
# Options of `docker compose exec` and `run` the documented commands use; none takes a value.
COMPOSE_FLAGS = {"-T", "--rm", "--no-deps"}
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


def stack() -> dict[str, Any]:
    """deploy/compose.yaml as YAML."""
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def compose_section() -> str:
    """The "Docker compose" section of docs/DEPLOY.md."""
    text = DOC.read_text()
    return text[text.index("\n## Docker compose\n"):].split("\n## ", 2)[1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container target -> host source (or volume name) of a service's volumes, short and long syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        out[target] = source
    return out


def published(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes."""
    return {int(str(p).rsplit(":", 1)[1]) for p in service.get("ports", [])}


def compose_environment(service: str) -> dict[str, str]:
    """The environment compose gives a service, with a made-up value for each variable it takes from deploy/.env."""
    env = stack()["services"][service]["environment"]
    assert isinstance(env, dict), "write environment as a mapping"
    return {k: _INTERPOLATION.sub(lambda m: f"value-of-{m.group(1)}", str(v)) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_compose_file_matches_the_compose_specification() -> None:
    import jsonschema_rs  # schemathesis's validator; supports the schema's draft 2020-12

    schema_file = DEPLOY / "schema" / "compose-spec.json"
    digest = hashlib.sha256(schema_file.read_bytes()).hexdigest()
    assert digest in (DEPLOY / "schema" / "README.md").read_text(), "vendored schema changed without its README"
    validator = jsonschema_rs.validator_for(json.loads(schema_file.read_text()))
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(stack())]
    assert not errors, "\n".join(errors)
    # The schema accepts any key under x-*; make sure it rejects what compose would, so the check is real.
    broken = stack()
    broken["services"]["heatrec"]["enviroment"] = {}
    assert not validator.is_valid(broken)


def test_every_variable_compose_passes_is_documented() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    from_env_file = set(_INTERPOLATION.findall(text))
    assert {"HEATREC_DB_PASSWORD", "HEATREC_MQTT_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"} <= from_env_file
    section = compose_section()
    for name in from_env_file:  # what the operator writes into deploy/.env
        assert f"`{name}`" in section, f"{name} (compose takes it from deploy/.env) is not in DEPLOY.md's compose steps"
    doc = DOC.read_text()
    for name, service in stack()["services"].items():
        for var in service.get("environment", {}):
            if var not in IMAGE_VARIABLES:
                assert f"`{var}`" in doc, f"{name}: {var} is not documented in docs/DEPLOY.md"


@pytest.mark.integration  # heatrec check-config as a child process
def test_plant_example_checks_with_what_compose_provides(tmp_path: Path) -> None:
    """check-config with exactly the heatrec service's environment (nothing else of ours), from elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATREC_")} | compose_environment("heatrec")
    r = subprocess.run([sys.executable, "-m", "service.cli", "check-config", "-c", str(EXAMPLE)], cwd=tmp_path,
                       env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "3 devices" in r.stdout and "simulation" not in r.stdout, r.stdout
    # Every ${VAR} without a default in the example is one compose passes.
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", EXAMPLE.read_text()))
    assert needed and needed <= set(compose_environment("heatrec")), needed


def test_plant_example_listens_where_compose_publishes_and_reaches_the_stack() -> None:
    cfg = tomllib.loads(EXAMPLE.read_text())
    services = stack()["services"]
    heatrec = services["heatrec"]
    listeners = {cfg["api"]["port"]: cfg["api"]["host"]}
    scada = urlsplit(cfg["scada"]["endpoint"])
    listeners[scada.port] = scada.hostname
    assert published(heatrec) == set(listeners)
    for port, host in listeners.items():  # inside the container loopback would be unreachable from the host
        assert host == "0.0.0.0", f"port {port} is published but heatrec listens on {host}"
    assert "simulation" not in cfg and "env_file" not in cfg
    db = cfg["database"]
    assert db["host"] == "timescaledb" and db["port"] == 5432 and db["password"] == "${HEATREC_DB_PASSWORD}"
    # The stack's own network on this host: no TLS there (a database elsewhere: verify-full, docs/DEPLOY.md).
    assert db["sslmode"] == "disable"
    env = services["timescaledb"]["environment"]
    assert db["name"] == env["POSTGRES_DB"] and db["user"] != env["POSTGRES_USER"]  # the owner role, no superuser
    assert services["heatrec"]["environment"]["HEATREC_DB_PASSWORD"] == env["HEATREC_DB_PASSWORD"]
    listener = re.search(r"(?m)^listener (\d+)", (DEPLOY / "mosquitto" / "mosquitto.conf").read_text())
    assert listener is not None
    for device in cfg["devices"]:
        if device["protocol"] == "mqtt":
            u = urlsplit(device["endpoint"])
            assert (u.hostname, u.port) == ("mosquitto", int(listener.group(1))), device["endpoint"]
    # The image's command reads the file compose mounts; its working directory is the volume.
    instructions = dockerfile_instructions()
    cmd = json.loads([a for i, a in instructions if i == "CMD"][-1])
    config_path = cmd[cmd.index("-c") + 1]
    workdir = [a for i, a in instructions if i == "WORKDIR"][-1]
    volume_mounts = mounts(heatrec)
    assert volume_mounts[config_path] == "./plant.toml"
    assert volume_mounts[workdir] == "heatrec" and workdir in json.loads([a for i, a in instructions
                                                                           if i == "VOLUME"][-1])
    [bind] = [v for v in heatrec["volumes"] if isinstance(v, dict)]
    assert bind["read_only"] is True and bind["bind"]["create_host_path"] is False


def test_documented_compose_commands_address_the_stack() -> None:
    """Every `docker compose -f deploy/compose.yaml …` of the compose section (and of the upgrade from before the
    owner role) names a service, and the heatrec commands parse with heatrec's own CLI (with -c, the file compose
    mounts)."""
    from service.cli import build_parser

    doc = DOC.read_text()
    upgrade = doc[doc.index("\n## A database from before the owner role\n"):].split("\n## ", 2)[1]
    section = compose_section() + "\n" + upgrade
    commands = re.findall(r"(?m)^(docker compose .*)$", section) + re.findall(r"`(docker compose [^`]+)`", section)
    assert len(commands) >= 4, commands
    services = stack()["services"]
    config_target = next(t for t, s in mounts(services["heatrec"]).items() if s == "./plant.toml")
    parsed = 0
    for command in commands:
        argv = shlex.split(command)
        assert argv[:4] == ["docker", "compose", "-f", "deploy/compose.yaml"], command
        sub = argv[4]
        if sub in ("up", "pull", "stop", "down"):  # the services they name, if any, are the stack's
            assert {w for w in argv[5:] if not w.startswith("-")} <= set(services), command
            continue
        assert sub in ("exec", "run"), command
        i = 5
        while argv[i].startswith("-"):  # options of exec/run themselves, before the service
            assert argv[i] in COMPOSE_FLAGS, f"teach this test {argv[i]} (takes it a value?): {command}"
            i += 1
        service, program = argv[i], argv[i + 1:]
        assert service in services, command
        if service == "heatrec":
            if sub == "exec":  # exec runs a program; `run` passes its arguments to the ENTRYPOINT, heatrec
                assert program[0] == "heatrec", command
                program = program[1:]
            try:
                ns = build_parser().parse_args(program)
            except SystemExit:
                pytest.fail(f"heatrec refuses the documented arguments: {command}")
            assert (getattr(ns, "config", None) or getattr(ns, "config_option", None)) == config_target, command
            parsed += 1
        elif service == "timescaledb" and "-f" in program:
            assert program[program.index("-f") + 1] in mounts(services["timescaledb"]), command
    assert parsed >= 2  # the token and the check-config commands


def test_init_scripts_make_an_owner_role_and_a_read_only_grafana_role(postgres: PostgresCluster) -> None:
    """The init scripts compose runs, then heatrec's migrations as heatrec's role: it owns everything and is no
    superuser; grafana reads every table and view the migrations made except the API tokens, and writes nothing."""
    import asyncio

    services = stack()["services"]
    timescaledb = services["timescaledb"]
    for script in INIT_SCRIPTS:
        assert mounts(timescaledb)["/docker-entrypoint-initdb.d/" + script.name] == "./timescaledb/" + script.name
    env = timescaledb["environment"]
    assert {"HEATREC_DB_PASSWORD", "HEATREC_GRAFANA_DB_PASSWORD"} <= set(env)
    cfg = tomllib.loads(EXAMPLE.read_text())["database"]
    # heatrec logs in as the role the owner script makes, never as the image's superuser.
    assert cfg["user"] == OWNER_ROLE != env["POSTGRES_USER"] and cfg["name"] == env["POSTGRES_DB"]
    assert "HEATREC_DB_ADMIN_PASSWORD" in env["POSTGRES_PASSWORD"]
    assert services["grafana"]["environment"]["HEATREC_GRAFANA_DB_USER"] == GRAFANA_ROLE
    sql = GRAFANA_SQL.read_text()
    assert f"FOR ROLE {OWNER_ROLE} IN SCHEMA public" in sql and f"CREATE ROLE {GRAFANA_ROLE} " in sql

    db = init_like_compose(postgres)

    async def check() -> None:
        pool = await connect_pool(db.owner)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                me = await conn.fetchrow("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                                         "WHERE rolname = current_user")
                assert me is not None and not any(me.values()), dict(me or {})
                owners = {r["relname"]: r["owner"] for r in await conn.fetch(
                    "SELECT relname, pg_get_userbyid(relowner) AS owner FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE nspname = 'public' AND relkind IN ('r', 'v', 'm', 'p')")}
                assert await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                           "WHERE datname = current_database()") == db.owner.user
        finally:
            await pool.close()
        assert {"samples", "readings", "settlements", "register_hours", "api_tokens"} <= set(owners)
        assert set(owners.values()) == {db.owner.user}, owners
        conn = await asyncpg.connect(host=db.owner.host, port=db.owner.port, user=db.grafana_user,
                                     password=db.grafana_password, database=db.name)
        try:
            for rel in sorted(set(owners) - {"api_tokens"}):
                await conn.fetchval(f'SELECT count(*) FROM "{rel}"')
            for forbidden in ("SELECT token_hash FROM api_tokens", "DELETE FROM events",
                              "INSERT INTO events (time, source, kind, message) VALUES (now(), 'g', 'x', 'y')",
                              "UPDATE points SET description = 'x'", "CREATE TABLE mine (x int)",
                              "CREATE TEMP TABLE mine (x int)"):
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.ReadOnlySQLTransactionError)):
                    await conn.execute(forbidden)
        finally:
            await conn.close()
        # No role beyond the two reaches the database (CONNECT revoked from PUBLIC): here the session's heatrec role.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(host=postgres.host, port=postgres.port, user=postgres.user,
                                  password=postgres.password, database=db.name)

    asyncio.run(check())


def test_grafana_script_run_again_after_the_migrations_grants_no_tokens(postgres: PostgresCluster) -> None:
    """DEPLOY.md's "run it once by hand" on a volume heatrec has migrated already: api_tokens stays private."""
    import asyncio

    db = init_like_compose(postgres)

    async def migrate_as_owner() -> None:
        pool = await connect_pool(db.owner)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        finally:
            await pool.close()

    asyncio.run(migrate_as_owner())
    other = f"grafana_{secrets.token_hex(4)}"
    run_as_entrypoint(postgres, db.name, GRAFANA_SQL, renamed(GRAFANA_SQL.read_text(), db.owner.user, other),
                      {"HEATREC_GRAFANA_DB_PASSWORD": "pw-of-the-second-role"})
    privileges = postgres.psql(f"SELECT has_table_privilege('{other}', 'api_tokens', 'SELECT'), "
                               f"has_table_privilege('{other}', 'samples', 'SELECT'), "
                               f"has_table_privilege('{db.grafana_user}', 'api_tokens', 'SELECT')", db=db.name)
    assert privileges == "f|t|f"


def test_compose_services_run_with_least_privilege() -> None:
    """Every container: all capabilities dropped (only the few a service needs added back), no new privileges,
    a read-only root file system, and an image pinned to an exact version."""
    # What each may add back, and why; anything else is a finding. None needs any today.
    allowed_caps: dict[str, set[str]] = {}
    for name, service in stack()["services"].items():
        assert service.get("cap_drop") == ["ALL"], name
        assert set(service.get("cap_add", [])) <= allowed_caps.get(name, set()), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("read_only") is True, name
        assert service.get("privileged", False) is False and "network_mode" not in service, name
        if "image" in service:
            image = service["image"]
            tag = image.split("@")[0].rsplit(":", 1)[1]
            # An exact version (major.minor.patch), never a moving tag such as latest or a bare major.
            assert re.match(r"^v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to an exact version"
    # Those whose images start as root run as their own users instead (heatrec's and Grafana's images do already).
    assert stack()["services"]["timescaledb"]["user"] == "postgres"
    assert stack()["services"]["mosquitto"]["user"] == "1883:1883"


def _image_tree(dest: Path) -> Path:
    """The files the Dockerfile COPYs, at their image paths under `dest`; the directory `pip install .` runs in."""
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "teach this test .dockerignore exceptions"

    def regex(p: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/|\*\*|\*|\?)", p.strip("/"))
        table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(table.get(x, re.escape(x)) for x in parts))

    ignored = [regex(p) for p in patterns]

    def excluded(rel: Path) -> bool:  # a matching directory excludes everything below it
        return any(r.fullmatch(str(Path(*rel.parts[:n]))) for n in range(1, len(rel.parts) + 1) for r in ignored)

    workdir, install_dir = "/", ""
    for instruction, args in dockerfile_instructions():
        if instruction == "WORKDIR":
            workdir = str(Path(workdir) / args)
        elif instruction == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            assert not args.startswith("--from"), "a multi-stage build: teach this test"
            *sources, target = words
            target_dir = Path(workdir) / target
            for src in sources:
                path = ROOT / src
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for f in files:
                    rel = f.relative_to(ROOT)
                    if excluded(rel):
                        continue
                    # A file into a directory target keeps its name; a directory's content goes under the target.
                    inside = Path(f.name) if path.is_file() else f.relative_to(path)
                    out = dest / (target_dir / inside).relative_to("/")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(f.read_bytes())
        elif instruction == "RUN" and re.search(r"\bpip install \.(\s|$)", args):
            install_dir = workdir
    assert install_dir, "the Dockerfile no longer runs `pip install .`"
    return dest / install_dir.lstrip("/")


@pytest.mark.integration  # pip builds and installs the wheel in child processes
@pytest.mark.timeout(600)  # the build fetches the pyproject's build requirements, as the image build does
def test_image_installs_everything_heatrec_needs_at_run_time(tmp_path: Path) -> None:
    """`pip install .` of exactly what the Dockerfile copies: migrations, rule sets, drivers, simulators, the CLI."""
    project = _image_tree(tmp_path / "image")
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(project)],
                       capture_output=True, text=True, timeout=540, check=False)
    assert r.returncode == 0, f"the image's `pip install .` would fail:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    [wheel] = wheels.glob("heatrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "service" / "storage" / "migrations").glob("*.sql"))
    rulesets = sorted(p.name for p in (ROOT / "service" / "accounting" / "rulesets").glob("*.toml"))
    assert "dk_surplus_heat.toml" in rulesets and migrations
    for needed in ([f"service/storage/migrations/{m}" for m in migrations]
                   + [f"service/accounting/rulesets/{r}" for r in rulesets]
                   + ["service/cli.py", "drivers/__init__.py", "simulators/__init__.py"]):
        assert needed in names, f"the image lacks {needed}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert re.search(r"(?m)^heatrec = service\.cli:main$", zipfile.ZipFile(wheel).read(entry_points).decode())

    # Installed, it finds its own migrations and rule sets from any working directory (the image's is the volume).
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, timeout=120, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    probe = (f"import sys, json; sys.path.insert(0, {str(site)!r})\n"
             "import service, service.config as c, service.storage.migrations as m\n"
             "print(json.dumps([service.__file__, str(c.PACKAGED_RULES_DIR), "
             "[n for _, n, _ in m.available_migrations()]]))\n"
             "from service.cli import main\n"
             f"sys.exit(main(['check-config', '-c', {str(EXAMPLE)!r}]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEATREC_", "PYTHON"))}
    r = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env | compose_environment("heatrec"),
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    module, rules_dir, applied = json.loads(r.stdout.splitlines()[0])
    assert module.startswith(str(site)) and rules_dir.startswith(str(site)), (module, rules_dir)
    assert applied == migrations
