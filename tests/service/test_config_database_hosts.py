"""[database] hosts and target_session_attrs: what they accept, what they refuse (naming the file and field), and
what every connection is then built from (asyncpg's arguments, the pools' host-by-host connect, the spool name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

import service.fleet.central as central
import service.storage.journal as journal
from service.config import ConfigError, DatabaseConfig, load_central_config, parse_config
from service.storage import database
from service.storage.database import DB_ERRORS, NoServerMatches, connect_in_turn, connect_kwargs
from service.storage.spool import spool_path


def test_hosts_are_tried_in_order_with_their_own_ports_or_port() -> None:
    cfg = DatabaseConfig(hosts=["db1:5433", "db2", "[2001:db8::7]:6000", "/run/postgresql"], port=5440,
                         target_session_attrs="read-write")
    assert cfg.addresses == [("db1", 5433), ("db2", 5440), ("2001:db8::7", 6000), ("/run/postgresql", 5440)]
    assert cfg.where == "db1:5433,db2:5440,[2001:db8::7]:6000,/run/postgresql:5440"
    assert cfg.dsn() == ("postgresql://heatrec@db1:5433,db2:5440,[2001:db8::7]:6000,/run/postgresql:5440/heatrec"
                         "?target_session_attrs=read-write")
    # One host, as always.
    assert DatabaseConfig().addresses == [("127.0.0.1", 5432)]
    assert DatabaseConfig(host="db1", port=6543).dsn() == "postgresql://heatrec@db1:6543/heatrec"


def test_tls_default_is_verify_full_unless_every_host_is_loopback() -> None:
    assert DatabaseConfig(hosts=["127.0.0.1:5432", "localhost:5433", "[::1]:5434"]).tls_mode == "disable"
    assert DatabaseConfig(hosts=["127.0.0.1:5432", "db2.example:5432"]).tls_mode == "verify-full"


@pytest.mark.parametrize(("database_section", "message"), [
    ({"host": "db1", "hosts": ["db1", "db2"]}, r"plant.toml: database: host and hosts are both set"),
    ({"hosts": []}, r"plant.toml: database.hosts: hosts is empty"),
    ({"hosts": ["db1:0"]}, r"plant.toml: database.hosts: 'db1:0': the port must be 1..65535"),
    ({"hosts": ["db1:x"]}, r"plant.toml: database.hosts: 'db1:x': the port must be 1..65535"),
    ({"hosts": ["db1:"]}, r"plant.toml: database.hosts: 'db1:' is not a server"),
    ({"hosts": ["db1,db2"]}, r"plant.toml: database.hosts: 'db1,db2' is not a server: write one"),
    ({"hosts": ["2001:db8::7"]}, r"database.hosts: '2001:db8::7': write an IPv6 address in brackets"),
    ({"hosts": ["[db1]:5432"]}, r"database.hosts: '\[db1\]:5432': 'db1' is not an IPv6 address"),
    ({"hosts": ["db1", "db1"]}, r"database.hosts: 'db1' is listed twice"),
    ({"hosts": ["db1", "db1:5432"]}, r"plant.toml: database: hosts: .* names one server twice"),
    ({"hosts": "db1,db2"}, r"database.hosts: Input should be a valid list"),
    ({"target_session_attrs": "master"}, r"database.target_session_attrs: Input should be 'any', 'read-write'"),
])
def test_bad_hosts_are_refused_naming_the_file_and_field(database_section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"database": database_section}, "plant.toml")


def test_central_toml_takes_hosts_and_target_session_attrs(tmp_path: Path) -> None:
    path = tmp_path / "central.toml"
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1883"\n'
                    '[database]\nhosts = ["db1:5432", "db2:5432"]\ntarget_session_attrs = "read-write"\n')
    cfg = load_central_config(path).database
    assert cfg.addresses == [("db1", 5432), ("db2", 5432)] and cfg.target_session_attrs == "read-write"
    path.write_text('[broker]\nurl = "mqtt://127.0.0.1:1883"\n[database]\nhost = "db1"\nhosts = ["db2"]\n')
    with pytest.raises(ConfigError, match=r"central.toml: database: host and hosts are both set"):
        load_central_config(path)


def test_connect_kwargs_list_every_host_and_the_session_attrs() -> None:
    kw = connect_kwargs(DatabaseConfig(hosts=["db1:5433", "db2"], target_session_attrs="read-write",
                                       sslmode="disable"))
    assert kw["host"] == ["db1", "db2"] and kw["port"] == [5433, 5432]
    assert kw["target_session_attrs"] == "read-write"
    assert "target_session_attrs" not in connect_kwargs(DatabaseConfig())  # unset: as before, asyncpg's default
    # A pool over several hosts (or with session attrs) connects host by host; one plain host as before.
    assert database._pool_kwargs(DatabaseConfig(hosts=["db1", "db2"], sslmode="disable"))["connect"] is \
        connect_in_turn
    assert database._pool_kwargs(DatabaseConfig(target_session_attrs="primary"))["connect"] is connect_in_turn
    assert "connect" not in database._pool_kwargs(DatabaseConfig())
    assert database.connect_budget_s(DatabaseConfig(hosts=["a", "b", "c"], sslmode="disable",
                                                    connect_timeout_s=2)) == 6


class _FakeServers:
    """asyncpg.connect, as connect_in_turn calls it, over scripted servers: 'down', 'primary' or 'standby'."""

    def __init__(self, roles: dict[str, str]) -> None:
        self.roles = roles
        self.calls: list[tuple[str, int, str, float]] = []

    async def connect(self, *args: Any, host: str, port: int, target_session_attrs: str, timeout: float,
                      **kwargs: Any) -> str:
        self.calls.append((host, port, target_session_attrs, timeout))
        role = self.roles[host]
        if role == "down":
            raise ConnectionRefusedError(111, "Connection refused")
        wanted = {"read-write": "primary", "primary": "primary", "standby": "standby", "read-only": "standby"}
        if target_session_attrs in wanted and wanted[target_session_attrs] != role:
            raise asyncpg.TargetServerAttributeNotMatched(f"not {target_session_attrs}")
        return f"connection to {host}"


async def _connect(fake: _FakeServers, monkeypatch: pytest.MonkeyPatch, attrs: Any) -> str:
    monkeypatch.setattr(database.asyncpg, "connect", fake.connect)
    kw = connect_kwargs(DatabaseConfig(hosts=["db1", "db2"], target_session_attrs=attrs, sslmode="disable",
                                       connect_timeout_s=3))
    return str(await connect_in_turn(None, loop=None, **kw))


async def test_each_host_gets_the_whole_timeout_and_read_write_skips_a_standby(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServers({"db1": "down", "db2": "primary"})
    assert await _connect(fake, monkeypatch, "read-write") == "connection to db2"
    assert fake.calls == [("db1", 5432, "read-write", 3), ("db2", 5432, "read-write", 3)]
    fake = _FakeServers({"db1": "standby", "db2": "primary"})  # after a failover, listed in the old order
    assert await _connect(fake, monkeypatch, "read-write") == "connection to db2"


async def test_no_read_write_server_is_a_connection_error_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServers({"db1": "down", "db2": "standby"})  # the primary gone, the standby not promoted yet
    with pytest.raises(NoServerMatches, match=r"no server is read-write \(db1:5432: ConnectionRefusedError.*; "
                                              r"db2:5432 is not read-write\): a standby not promoted yet\?"):
        await _connect(fake, monkeypatch, "read-write")
    assert issubclass(NoServerMatches, ConnectionError)
    fake = _FakeServers({"db1": "down", "db2": "down"})
    with pytest.raises(ConnectionRefusedError):  # nothing answered: the socket's own error, as asyncpg gives it
        await _connect(fake, monkeypatch, None)


async def test_prefer_standby_takes_a_standby_else_what_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeServers({"db1": "primary", "db2": "standby"})
    assert await _connect(fake, monkeypatch, "prefer-standby") == "connection to db2"
    fake = _FakeServers({"db1": "primary", "db2": "down"})
    assert await _connect(fake, monkeypatch, "prefer-standby") == "connection to db1"
    assert [c[:3] for c in fake.calls] == [("db1", 5432, "standby"), ("db2", 5432, "standby"),
                                           ("db1", 5432, "any")]


def test_one_definition_of_the_database_errors() -> None:
    assert journal.DB_ERRORS is DB_ERRORS
    assert central.DB_ERRORS is DB_ERRORS
    # A standby where read-write is asked (TargetServerAttributeNotMatched) and asyncpg#1069 are among them.
    assert asyncpg.InternalClientError in DB_ERRORS
    assert issubclass(asyncpg.TargetServerAttributeNotMatched, DB_ERRORS)


def test_spool_of_one_host_keeps_its_name_and_several_hosts_have_their_own(tmp_path: Path) -> None:
    assert spool_path(tmp_path, DatabaseConfig(host="db1", port=5432, name="plant")) == tmp_path / "db1-5432-plant"
    assert spool_path(tmp_path, DatabaseConfig(hosts=["db1", "db2:5433"], name="plant", sslmode="disable")) == \
        tmp_path / "db1-5432-db2-5433-plant"


def test_fleet_md_central_database_example_is_valid() -> None:
    import re
    import tomllib

    from service.fleet_config import CentralConfig

    doc = (Path(__file__).resolve().parents[2] / "docs" / "FLEET.md").read_text()
    (block,) = re.findall(r"```toml central-database\n(.*?)```", doc, re.S)
    cfg = CentralConfig.model_validate({"broker": {"url": "mqtt://h"}, **tomllib.loads(block)}).database
    assert len(cfg.addresses) == 2 and cfg.target_session_attrs == "read-write"
