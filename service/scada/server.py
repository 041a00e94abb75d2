"""SCADA OPC UA server: Objects/Plant/<device>/<point>, live values with quality and source time.

Reads are open to anonymous sessions when allowed; writes need an authenticated operator. The
plant variables themselves are read-only: setpoint writes go through the control arbiter, which
exposes its own writable nodes under Plant/Control (service/scada/control_nodes.py).

Security (service/scada/channel.py): user names only over signed channels with the password encrypted,
no writes over a channel without security, client certificates checked against the trust list
(service/scada/pki.py says where), and failed logins delayed and locked out (service/scada/guard.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asyncua import Node, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import ADMIN_TYPES, USER_TYPES, PermissionRuleset, User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua_trust import TrustList
from service.bus import SampleBus, Subscription
from service.config import HeatrecConfig, ScadaConfig
from service.localservers.errors import LocalServerError
from service.model import Quality, Sample
from service.private_files import ensure_private_key
from service.scada.alarm_nodes import AlarmNodes
from service.scada.channel import ChannelRules, GuardedServer
from service.scada.control_nodes import ControlNodes
from service.scada.guard import LoginGuard
from service.scada.pki import rejected_dir, trusted_dir
from service.scada.units import eu_information

if TYPE_CHECKING:
    from service.alarms.manager import AlarmManager
    from service.control.loop import ControlLoop
    from service.writes import WriteArbiter

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:heatrec:scada"
APP_URI = "urn:heatrec:scada:server"

_STATUS = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.UNCERTAIN: ua.StatusCodes.Uncertain,
    Quality.BAD: ua.StatusCodes.BadNoCommunication,
    Quality.STALE: ua.StatusCodes.UncertainLastUsableValue,
}

_POLICY = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128Sha256RsaOaep_Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes128Sha256RsaOaep_SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256Sha256RsaPss_Sign": ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    "Aes256Sha256RsaPss_SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}


def _numeric(i: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(i))


def _string(identifier: str, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


class _ReadOnlyForViewers(PermissionRuleset):
    """Anonymous and viewer sessions may browse, read and subscribe; only operators may write."""

    def __init__(self) -> None:
        user_ids = {_numeric(i) for i in USER_TYPES}
        writes = {_numeric(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
                  _numeric(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)}
        self._allowed = {
            UserRole.Admin: user_ids | {_numeric(i) for i in ADMIN_TYPES},
            UserRole.User: user_ids,
            UserRole.Anonymous: user_ids - writes,
        }

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        return action_type_id in self._allowed[user.role]


class _Users:
    """Username/password check against the configured users (constant-time compare).

    Failures are counted, delayed and logged by the login guard, which also knows the client's address.
    """

    def __init__(self, cfg: ScadaConfig) -> None:
        self._cfg = cfg

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.Anonymous) if self._cfg.allow_anonymous else None
        for u in self._cfg.users:
            if not u.password:
                continue  # an empty password (e.g. an unset ${VAR:-}) disables the user
            if hmac.compare_digest(u.username.encode(), username.encode()) and \
                    hmac.compare_digest(u.password.encode(), (password or "").encode()):
                # Viewers get the anonymous (read-only) permissions under their own name.
                role = UserRole.User if u.role in ("operator", "admin") else UserRole.Anonymous
                return User(role=role, name=u.username)
        return None


class ScadaServer:
    """The plant as an OPC UA address space, fed from the sample bus."""

    def __init__(self, cfg: ScadaConfig, plant: HeatrecConfig, bus: SampleBus, base_dir: Path = Path("."),
                 control: ControlLoop | None = None, alarms: AlarmManager | None = None,
                 arbiter: WriteArbiter | None = None) -> None:
        self.cfg, self._plant, self._bus = cfg, plant, bus
        self.control_nodes = ControlNodes(control, arbiter) if control is not None else None
        self.alarm_nodes = AlarmNodes(alarms) if alarms is not None else None
        self._cert_dir = base_dir / cfg.certificate_dir
        self.login_guard = LoginGuard(cfg.login)
        self.trust = TrustList(trusted_dir(cfg, base_dir), rejected_dir(cfg, base_dir), peer="SCADA client")
        self.rules = ChannelRules(self.login_guard, self.trust)
        self._server: GuardedServer | None = None
        self._nodes: dict[str, Node] = {}
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.updates = 0

    @property
    def endpoint(self) -> str:
        """The URL clients connect to (the real port when configured with port 0)."""
        u = urlsplit(self.cfg.endpoint)
        port = self._server.bserver.port if self._server and self._server.bserver else u.port
        return f"opc.tcp://{u.hostname}:{port}"

    def node_id(self, point_id: str) -> str:
        """NodeId string of a point's variable, e.g. ns=2;s=hp1.supply_temperature."""
        return self._nodes[point_id].nodeid.to_string()

    async def _certificate(self) -> tuple[Path, Path]:
        self._cert_dir.mkdir(parents=True, exist_ok=True)
        key, cert = self._cert_dir / "server-key.pem", self._cert_dir / "server-cert.der"
        host = urlsplit(self.cfg.endpoint).hostname or "localhost"
        await asyncio.to_thread(ensure_private_key, key)  # 0600 from its first byte; asyncua issues the certificate
        await setup_self_signed_certificate(key, cert, APP_URI, socket.gethostname(),
                                            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                            {"commonName": f"heatrec SCADA {host}", "organizationName": "heatrec"})
        key.chmod(0o600)
        return key, cert

    async def start(self) -> None:
        """Build the address space and open the endpoint."""
        u = urlsplit(self.cfg.endpoint)
        server = GuardedServer(self.rules, user_manager=_Users(self.cfg))
        await server.init()
        server.set_endpoint(self.cfg.endpoint)
        server.set_server_name(f"heatrec SCADA: {self._plant.plant.name}")
        await server.set_application_uri(APP_URI)
        server.set_security_policy([_POLICY[p] for p in self.cfg.security_policies],
                                   permission_ruleset=_ReadOnlyForViewers())  # type: ignore[arg-type]
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.cfg.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if any(p != "None" for p in self.cfg.security_policies):
            key, cert = await self._certificate()
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            await self.trust.reload_if_changed()  # makes trusted/ and rejected/ for the operator
        ns = await server.register_namespace(NAMESPACE_URI)
        plant = await server.nodes.objects.add_object(_string("Plant", ns), ua.QualifiedName("Plant", ns))
        for device in self._plant.devices:
            dev = await plant.add_object(_string(device.id, ns), ua.QualifiedName(device.id, ns))
            for p in device.points:
                pid = f"{device.id}.{p.id}"
                var = await dev.add_variable(_string(pid, ns), ua.QualifiedName(p.id, ns),
                                             ua.Variant(0.0, ua.VariantType.Double))
                await var.add_property(_string(f"{pid}.EngineeringUnits", ns),
                                       ua.QualifiedName("EngineeringUnits", 0), eu_information(p.unit))
                # Until the first sample arrives the value is not valid.
                await server.write_attribute_value(var.nodeid, ua.DataValue(
                    ua.Variant(0.0, ua.VariantType.Double),
                    StatusCode=_status(ua.StatusCodes.BadWaitingForInitialData)))
                self._nodes[pid] = var
        if self.control_nodes is not None:
            await self.control_nodes.build(server, plant, ns)
        if self.alarm_nodes is not None:
            await self.alarm_nodes.build(server, plant, ns)
        try:
            await server.start()
        except OSError as err:
            await server.stop()
            raise LocalServerError(f"port {u.port} on {u.hostname} (SCADA OPC UA server) is already in use: "
                                   "stop what listens there or change [scada] endpoint") from err
        if not server.guarded():  # fail closed: never serve without the login guard and the trust list
            await server.stop()
            raise RuntimeError("the SCADA channel rules could not be installed in this asyncua version")
        server.hide_user_names_on_plain_endpoints()
        self._server = server
        # Seed from what is already known, then follow the bus.
        for s in list(self._bus.latest.values()):
            await self._apply(s)
        self._sub = self._bus.subscribe("scada", maxsize=100_000)
        self._task = asyncio.create_task(self._follow(self._sub), name="scada-updates")
        if self.control_nodes is not None:
            self.control_nodes.start()
        if self.alarm_nodes is not None:
            self.alarm_nodes.start()
        log.info("SCADA OPC UA server at %s (%d points; policies %s; client certificates trusted from %s)",
                 self.endpoint, len(self._nodes), ", ".join(self.cfg.security_policies), self.trust.trusted_dir)

    async def _apply(self, s: Sample) -> None:
        node = self._nodes.get(s.point)
        if node is None or self._server is None:
            return
        status = _status(_STATUS[s.quality])
        if s.value is None:
            # Keep the last value: OPC UA clients read the status code to know it is not valid now.
            old = self._server.read_attribute_value(node.nodeid)
            variant = old.Value
        else:
            variant = ua.Variant(float(s.value), ua.VariantType.Double)
        await self._server.write_attribute_value(node.nodeid, ua.DataValue(
            variant, StatusCode=status, SourceTimestamp=s.source_time,  # type: ignore[arg-type]
            ServerTimestamp=s.receive_time))  # type: ignore[arg-type]
        self.updates += 1

    async def _follow(self, sub: Subscription) -> None:
        async for s in sub:
            await self._apply(s)

    async def stop(self) -> None:
        """Close the endpoint and stop following the bus."""
        if self.control_nodes is not None:
            await self.control_nodes.stop()
        if self.alarm_nodes is not None:
            await self.alarm_nodes.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sub is not None:
            self._bus.unsubscribe(self._sub)
            self._sub = None
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def __aenter__(self) -> ScadaServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
