"""Session fixtures: a real PostgreSQL + TimescaleDB and a real Mosquitto on free loopback ports."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from service.config import DatabaseConfig
from service.localservers import MosquittoServer, PostgresCluster, free_port
from service.localservers.mosquitto import BrokerUser
from tests import hang_report
from tests.isolation import UNIT_ONLY_ENV, UnitGuard, failure_text, mark_integration
from tests.support import demo_config_text

# `make unit` sets HEATREC_UNIT_ONLY=1: then no test may start a server, a process or use the network.
_GUARD = UnitGuard() if os.environ.get(UNIT_ONLY_ENV) == "1" else None


def pytest_configure(config: pytest.Config) -> None:
    """Install the unit guard before any fixture runs (session fixtures included)."""
    if _GUARD is not None:
        _GUARD.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the unit guard."""
    if _GUARD is not None:
        _GUARD.uninstall()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Print the asyncio tasks of a test that is about to time out (see tests/hang_report.py)."""
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker is not None and marker.args else float(item.config.getini("timeout"))
    timer = hang_report.start(timeout)
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a server fixture as integration (`make unit` deselects them)."""
    mark_integration(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Tell the guard which test is running, so a refused attempt is charged to it."""
    if _GUARD is not None:
        _GUARD.current = item.nodeid
    try:
        return (yield)
    finally:
        if _GUARD is not None:
            _GUARD.current = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    """Fail a test that tried to start a server, even when the code under test swallowed the refusal."""
    report = yield
    violations = _GUARD.take(item.nodeid) if _GUARD is not None else []
    if violations:
        report.outcome = "failed"
        report.longrepr = failure_text(violations, str(report.longrepr or ""))
    return report


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    """A scratch directory the postgres/mosquitto system users can traverse (pytest's is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="heatrec-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared_tmp_path() -> Iterator[Path]:
    """A per-test directory other users (postgres, mosquitto, heatrec) can traverse, outside pytest's basetemp:
    pytest resets its basetemp root to 0700 whenever another pytest session starts (e.g. `make fuzz` in a test)."""
    d = Path(tempfile.mkdtemp(prefix="heatrec-shared-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(server_root: Path) -> Iterator[PostgresCluster]:
    """A private PostgreSQL 15 + TimescaleDB cluster for the whole session.

    Tests connect as heatrec's role (`postgres.user`, no superuser, owner of the databases `database` makes);
    `postgres.psql` runs as the cluster's superuser (`postgres.admin_user`), for what only an admin may do.
    """
    # fsync off: tests never survive an OS crash, and it makes the session much faster.
    pg = PostgresCluster(server_root / "pg", free_port(), secrets.token_urlsafe(16),
                         settings={"fsync": "off", "full_page_writes": "off"})
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def mosquitto(server_root: Path) -> Iterator[MosquittoServer]:
    """A private Mosquitto with password authentication for the whole session.

    `heatrec` may use every topic (tests publish and subscribe anywhere); the demo plant's simulated gateway has
    its own identity, `mbus-gateway`, limited to the meter topics, and its password is exported as
    HEATREC_MQTT_GATEWAY_PASSWORD for the demo configs the tests run (tests/security/ checks the real ACLs).
    """
    gateway = BrokerUser("mbus-gateway", secrets.token_urlsafe(16), write=("mbus/heatmeter/#",),
                         role="the demo's simulated M-Bus gateway")
    broker = MosquittoServer(server_root / "mosquitto", free_port(), "heatrec", secrets.token_urlsafe(16),
                             persistence=False, users=[gateway])
    broker.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HEATREC_MQTT_GATEWAY_PASSWORD", gateway.password)
        yield broker
    broker.stop()


@pytest.fixture
def database(postgres: PostgresCluster) -> DatabaseConfig:
    """A new, empty database on the session cluster for one test, owned by heatrec's role (no superuser)."""
    name = f"t_{secrets.token_hex(6)}"
    postgres.create_database(name)
    return DatabaseConfig(host=postgres.host, port=postgres.port, name=name, user=postgres.user,
                          password=postgres.password)


@pytest.fixture
def plant_config_file(tmp_path: Path, database: DatabaseConfig, mosquitto: MosquittoServer,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo plant's config on free ports, pointing at the session's database and broker."""
    text = demo_config_text({"55432": database.port, "1883": mosquitto.port})
    text = text.replace('name = "heatrec"', f'name = "{database.name}"', 1)
    text = text.replace("[storage]\n", f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n', 1)
    monkeypatch.setenv("HEATREC_DB_PASSWORD", database.password or "")
    monkeypatch.setenv("HEATREC_MQTT_PASSWORD", mosquitto.password)
    path = tmp_path / "plant.toml"
    path.write_text(text)
    return path
