"""The fleet over mqtts with what `heatrec site-keys` issued: docs/FLEET.md's "Adding sites" commands run as written.

The walk-through's commands make a fleet directory for three sites (the broker moved to a free port on
loopback, its name to `localhost`); Mosquitto starts with the TLS listener, passwd and acl they wrote; a
site's real Uplink with its client certificate and a real `heatrec central` with the centre's reach the
broker over TLS: every sample arrives and is acknowledged. A client presenting another CA's certificate, or
none, is refused in the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.bus import SampleBus
from service.config import DatabaseConfig
from service.fleet.keys import CENTRAL_PASSWORD_VAR, SITE_PASSWORD_VAR, FleetKeys
from service.fleet.uplink import Uplink
from service.fleet_config import UplinkConfig
from service.localservers import MosquittoServer, free_port
from service.localservers.mosquitto import BrokerUser
from service.localservers.process import chown_tree
from service.model import Quality, Sample
from tests.fleet.conftest import CentralProcess
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
FLEET_MD = ROOT / "docs" / "FLEET.md"
SITES = ("odense-1", "vestforbraending", "aarhus-dc")


def adding_sites_commands() -> list[str]:
    """The ```sh blocks of FLEET.md's "Adding sites" section (its TLS subsection included)."""
    section = FLEET_MD.read_text().split("\n## Adding sites\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def _env(path: Path, var: str) -> str:
    return path.read_text().split(f"{var}=", 1)[1].splitlines()[0]


class FleetTlsBroker(MosquittoServer):
    """Mosquitto with site-keys' listener file: its TLS listener, passwd and acl, on loopback at `port`."""

    def __init__(self, fleet: Path, workdir: Path, port: int) -> None:
        self.fleet = fleet
        central = BrokerUser("central", _env(fleet / "central" / "central.env", CENTRAL_PASSWORD_VAR))
        super().__init__(workdir, port, persistence=False, users=[central])

    def _write_config(self, passwd_bin: str = "") -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listener = (self.fleet / "broker" / "mosquitto.conf").read_text()
        listener = re.sub(r"^listener \d+$", f"listener {self.port} {self.host}", listener, flags=re.M)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(listener + "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
                        "persistence false\n")
        if self._owner is not None:  # as a deployment would: the broker's user reads its key, passwd and acl
            chown_tree(self.fleet / "broker", self._owner)
            chown_tree(self.workdir, self._owner)
        return conf


@pytest.fixture
def fleet_dir(shared_tmp_path: Path) -> tuple[Path, int]:
    """The fleet directory the walk-through makes, and the broker port it names."""
    port = free_port()
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    work = shared_tmp_path / "admin"
    work.mkdir()
    for script in adding_sites_commands():
        script = script.replace("central.example.net:8883", f"localhost:{port}").replace("central.example.net",
                                                                                           "localhost")
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0, f"{script}\n{r.stderr}"
        assert "Traceback" not in r.stderr
    sites_toml = tomllib.loads((work / "fleet" / "central" / "sites.toml").read_text())
    assert sorted(s["id"] for s in sites_toml["sites"]) == sorted(SITES)
    return work / "fleet", port


def _handshake(port: int, ca: Path, cert: tuple[Path, Path] | None) -> str:
    """TLS to the broker as a client: 'open' if it keeps the connection, else the broker's alert (lower case)."""
    tls = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        tls.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            tls.wrap_socket(raw, server_hostname="localhost") as conn:
        # TLS 1.3 checks the client's certificate after the client's handshake is done: the verdict comes as
        # an alert on the first read. An accepted client gets no data: the broker waits for its CONNECT.
        conn.settimeout(1.0)
        try:
            data = conn.recv(1)
        except TimeoutError:
            return "open"
        except ssl.SSLError as err:
            return str(err).lower()
        return "closed" if not data else "open"


def _uplink_config(fleet: Path, site: str, outbox: Path) -> UplinkConfig:
    """The [uplink] site-keys printed, its paths where the site's bundle is, its password from uplink.env."""
    bundle = fleet / "sites" / site
    doc = tomllib.loads((bundle / "uplink.toml").read_text())["uplink"]
    for k in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        doc[k] = str(bundle / doc[k])
    doc.update(password=_env(bundle / "uplink.env", SITE_PASSWORD_VAR), outbox_dir=str(outbox), batch_size=200,
               batch_max_age_s=0.1, ack_timeout_s=2.0, status_interval_s=0.5, keepalive_s=5, reconnect_max_s=0.3)
    return UplinkConfig.model_validate(doc)


def _central_toml(fleet: Path, db: DatabaseConfig, api_port: int) -> Path:
    """central.toml from site-keys' broker.toml and sites.toml, in fleet/central/ so their paths hold."""
    d = fleet / "central"
    path = d / "central.toml"
    path.write_text("\n".join(['instance = "central-tls"', 'env_file = "central.env"', "[database]",
                               f'host = "{db.host}"', f"port = {db.port}", f'name = "{db.name}"',
                               f'user = "{db.user}"', f'password = "{db.password}"', "[api]", 'host = "127.0.0.1"',
                               f"port = {api_port}", 'token_store = "central-tokens.json"', "[ingest]",
                               "refresh_s = 0.2", ""])
                    + (d / "broker.toml").read_text() + "keepalive_s = 5\nreconnect_max_s = 0.5\n"
                    + (d / "sites.toml").read_text())
    return path


@pytest.mark.integration  # a TLS Mosquitto, `heatrec central` as a child process
async def test_uplink_over_mqtts_with_site_keys_material(fleet_dir: tuple[Path, int], shared_tmp_path: Path,
                                                         database: DatabaseConfig) -> None:
    fleet, port = fleet_dir
    broker = FleetTlsBroker(fleet, shared_tmp_path / "broker", port)
    broker.start()
    api_port = free_port()
    central = CentralProcess(_central_toml(fleet, database, api_port), api_port, shared_tmp_path / "central.log")
    central.start()
    site = "vestforbraending"
    bus = SampleBus()
    uplink = Uplink(_uplink_config(fleet, site, shared_tmp_path / "outbox"), bus)
    task = asyncio.create_task(uplink.run())
    conn: Any = None
    try:
        await uplink.opened.wait()
        t0 = datetime(2026, 7, 1, tzinfo=UTC)
        n = 1000
        for i in range(n):
            t = t0 + timedelta(seconds=i)
            bus.publish(Sample(f"hp{i % 4}.power", float(i), Quality.GOOD, t, t))
        await wait_until(lambda: uplink.stats.connected, 15, "the uplink connected over TLS")
        await wait_until(lambda: uplink.outbox.next_seq > 1 and uplink.outbox.watermark == uplink.outbox.next_seq - 1
                         and uplink.outbox.backlog_samples == 0, 20, "every batch acknowledged by the centre")
        conn = await asyncpg.connect(host=database.host, port=database.port, database=database.name,
                                     user=database.user, password=database.password)
        stored = await conn.fetchval("SELECT count(*) FROM readings WHERE site = $1", site)
        distinct = await conn.fetchval("SELECT count(DISTINCT (point, time)) FROM readings WHERE site = $1", site)
        assert stored == distinct == n
        assert uplink.stats.acked_batches == uplink.outbox.watermark

        # Another CA's certificate for the same site id: refused in the handshake (before any password is read).
        other = shared_tmp_path / "other-fleet"
        FleetKeys(other).issue(site, url=f"mqtts://localhost:{port}")
        pki, other_pki = fleet / "sites" / site / "pki", other / "sites" / site / "pki"
        assert "unknown ca" in await asyncio.to_thread(_handshake, port, pki / "central-ca.crt",
                                                       (other_pki / f"{site}.crt", other_pki / f"{site}.key"))
        # No client certificate at all: refused too.
        assert "certificate required" in await asyncio.to_thread(_handshake, port, pki / "central-ca.crt", None)
        # The site's own certificate passes the handshake (the broker then waits for CONNECT).
        assert await asyncio.to_thread(_handshake, port, pki / "central-ca.crt",
                                       (pki / f"{site}.crt", pki / f"{site}.key")) == "open"
        assert await conn.fetchval("SELECT count(*) FROM readings WHERE site = $1", site) == n
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if conn is not None:
            await conn.close()
        central.stop()
        broker.stop()
