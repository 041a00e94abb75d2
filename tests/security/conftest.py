"""Fixtures of the attack tests: the demo plant on free ports behind a broker with the demo's real identities and ACL.

Unlike the session broker (whose `heatrec` may use every topic, for the other tests), this broker is built the
way `heatrec demo` builds it: from the plant config, one identity per role, each limited to its topics.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from service.config import DatabaseConfig, HeatrecConfig, load_config
from service.localservers import MosquittoServer, free_port
from service.localservers.mosquitto import BrokerUser, plant_broker_users
from tests.support import demo_config_text

METER_TOPIC = "mbus/heatmeter/71234567"
SERIAL = "71234567"
ALARMS = '\n[alarms.mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nusername = "heatrec-alarms"\n' \
         'password = "${{HEATREC_MQTT_ALARMS_PASSWORD:-}}"\ntopic_prefix = "site/alarms"\n'


@dataclass
class Plant:
    """The demo plant's config file, its parsed config and the broker that serves it."""

    path: Path
    broker: MosquittoServer

    def config(self) -> HeatrecConfig:
        return load_config(self.path)

    def user(self, name: str) -> BrokerUser:
        return self.broker.user(name)

    def edit(self, old: str, new: str) -> None:
        text = self.path.read_text()
        assert text.count(old) == 1, old
        self.path.write_text(text.replace(old, new))


@pytest.fixture
def passwords(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fresh passwords of the demo's broker identities, where the config's ${VAR} references find them."""
    out = {var: secrets.token_urlsafe(16) for var in ("HEATREC_MQTT_PASSWORD", "HEATREC_MQTT_GATEWAY_PASSWORD",
                                                      "HEATREC_MQTT_ALARMS_PASSWORD")}
    for var, value in out.items():
        monkeypatch.setenv(var, value)
    return out


def _plant_file(tmp: Path, port: int, db: DatabaseConfig | None) -> Path:
    text = demo_config_text({"1883": port} | ({"55432": db.port} if db else {})) + ALARMS.format(port=port)
    if db is not None:
        text = text.replace('name = "heatrec"', f'name = "{db.name}"', 1)
    text = text.replace("[storage]\n", f'[storage]\nspool_dir = "{tmp / "spool"}"\n', 1)
    path = tmp / "plant.toml"
    path.write_text(text)
    return path


@pytest.fixture
def acl_plant(server_root: Path, tmp_path: Path, passwords: dict[str, str]) -> Iterator[Plant]:
    """The demo config (no database needed) and a broker with its identities and ACL."""
    port = free_port()
    path = _plant_file(tmp_path, port, None)
    broker = MosquittoServer(server_root / f"mq-acl-{secrets.token_hex(4)}", port, persistence=False,
                             users=plant_broker_users(load_config(path), "127.0.0.1", port))
    broker.start()
    yield Plant(path, broker)
    broker.stop()


@pytest.fixture
def service_plant(server_root: Path, tmp_path: Path, passwords: dict[str, str], database: DatabaseConfig,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Plant]:
    """The demo config on the test's database and a broker with the demo's identities and ACL."""
    monkeypatch.setenv("HEATREC_DB_PASSWORD", database.password or "")
    port = free_port()
    path = _plant_file(tmp_path, port, database)
    broker = MosquittoServer(server_root / f"mq-svc-{secrets.token_hex(4)}", port, persistence=False,
                             users=plant_broker_users(load_config(path), "127.0.0.1", port))
    broker.start()
    yield Plant(path, broker)
    broker.stop()


class Attacker:
    """`await attacker(broker, user, topic, payload)`: publish with QoS 1 as that identity (the broker has taken it)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[int, str], aiomqtt.Client] = {}

    async def __call__(self, broker: MosquittoServer, user: BrokerUser, topic: str,
                       payload: dict[str, Any] | bytes) -> None:
        key = (broker.port, user.username)
        if key not in self._clients:
            client = aiomqtt.Client(broker.host, broker.port, username=user.username, password=user.password)
            await client.__aenter__()
            self._clients[key] = client
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self._clients[key].publish(topic, data, qos=1)

    async def close(self) -> None:
        """Disconnect every identity used (before its broker stops)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.__aexit__(None, None, None)


@pytest.fixture
async def attacker() -> AsyncIterator[Attacker]:
    """An MQTT client per identity it publishes as."""
    a = Attacker()
    yield a
    await a.close()
