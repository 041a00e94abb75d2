"""A database initialised the way compose's TimescaleDB container initialises its volume, on the session cluster.

The image's entrypoint creates POSTGRES_DB as the superuser POSTGRES_USER, its own script creates the TimescaleDB
extension there, then it runs deploy/timescaledb/*.sql in name order with `psql -v ON_ERROR_STOP=1 --no-psqlrc`
as that superuser in that database, the container's environment (HEATREC_DB_PASSWORD, …) passed on. Roles are
cluster-wide and the session cluster has its own `heatrec` role, so the scripts' roles get a unique suffix; the
SQL is otherwise the files'.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from service.config import DatabaseConfig
from service.localservers import PostgresCluster
from service.localservers.postgres import PG_BIN

ROOT = Path(__file__).resolve().parents[2]
INIT_SCRIPTS = sorted((ROOT / "deploy" / "timescaledb").glob("*.sql"))
OWNER_ROLE, GRAFANA_ROLE = "heatrec", "grafana"  # as the scripts name them


@dataclass(frozen=True)
class StackDatabase:
    owner: DatabaseConfig      # heatrec's role, as the service logs in
    grafana_user: str
    grafana_password: str

    @property
    def name(self) -> str:
        return self.owner.name


def renamed(sql: str, owner: str, grafana: str) -> str:
    """The script with its role names replaced (whole words only)."""
    return re.sub(rf"\b{GRAFANA_ROLE}\b", grafana, re.sub(rf"\b{OWNER_ROLE}\b", owner, sql))


def run_as_entrypoint(postgres: PostgresCluster, db: str, script: Path, sql: str, env: dict[str, str]) -> None:
    """One init script, as the postgres image's docker_process_sql runs it."""
    r = subprocess.run([str(PG_BIN / "psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-h", postgres.host,
                        "-p", str(postgres.port), "-U", postgres.admin_user, "-d", db, "-f", "-"], input=sql,
                       env={**os.environ, "PGPASSWORD": postgres.admin_password, **env}, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, f"{script.name} failed as compose runs it: {r.stderr}"


def init_like_compose(postgres: PostgresCluster) -> StackDatabase:
    """A new database made and initialised as compose's TimescaleDB container does on a fresh volume."""
    assert [p.name for p in INIT_SCRIPTS] == ["050_heatrec_owner.sql", "100_heatrec_grafana.sql"], INIT_SCRIPTS
    suffix = secrets.token_hex(4)
    db, owner, grafana = f"stack_{suffix}", f"heatrec_{suffix}", f"grafana_{suffix}"
    env = {"HEATREC_DB_PASSWORD": secrets.token_urlsafe(16), "HEATREC_GRAFANA_DB_PASSWORD": secrets.token_urlsafe(16)}
    # The entrypoint's CREATE DATABASE (owner: the superuser) and the image's 000_install_timescaledb.sh.
    postgres.psql_script(f'CREATE DATABASE "{db}";\n\\connect "{db}"\nCREATE EXTENSION IF NOT EXISTS timescaledb;\n')
    for script in INIT_SCRIPTS:
        run_as_entrypoint(postgres, db, script, renamed(script.read_text(), owner, grafana), env)
    return StackDatabase(DatabaseConfig(host=postgres.host, port=postgres.port, name=db, user=owner,
                                        password=env["HEATREC_DB_PASSWORD"]),
                         grafana, env["HEATREC_GRAFANA_DB_PASSWORD"])
