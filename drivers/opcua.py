"""Generic OPC UA driver: reads declared nodes by polling (default) or a data-change subscription.

Over 400 lines because polling, subscriptions, security (certificates) and typed writes share one session
life cycle; split, each part would need the session's internals.

With a security policy the server's certificate must be in the device's trust list (drivers/opcua_trust.py:
`trusted_certificates_dir`, `trusted_ca_file`); an untrusted server is refused (ServerUntrusted, the
device BAD and backing off) and its certificate written to `rejected_certificates_dir` for review.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeNotif
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from drivers.backoff import Backoff
from drivers.base import Driver, raise_if_cancelled
from drivers.config import OpcUaDevice, OpcUaPoint, PointBase
from drivers.errors import (
    DeviceException,
    DeviceRefused,
    DriverConnectionError,
    DriverError,
    DriverTimeout,
    WriteRejected,
)
from drivers.opcua_trust import TrustList, first_certificate
from service.bus import SampleSink
from service.clock import SleepingClock
from service.model import Quality, utcnow
from service.private_files import ensure_private_key

T = TypeVar("T")
_Change = tuple[ua.NodeId, ua.DataValue] | ua.StatusChangeNotification

# Below the MaxNodesPerRead of the servers we know; larger maps take more reads. Also the number of
# browse paths per TranslateBrowsePathsToNodeIds request.
MAX_NODES_PER_READ = 500
_WHOLE_PATH = 0xFFFFFFFF  # RemainingPathIndex of a target the whole path led to
_ROOT = ua.NodeId(ua.Int32(ua.ObjectIds.RootFolder))  # where browse paths start
_HIERARCHICAL = ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences))  # Organizes, HasComponent, ...

# Answers meaning "no subscription from this server", after which the driver polls instead.
_NO_SUBSCRIPTION = frozenset({
    ua.StatusCodes.BadTooManySubscriptions, ua.StatusCodes.BadServiceUnsupported, ua.StatusCodes.BadNotSupported,
    ua.StatusCodes.BadNotImplemented, ua.StatusCodes.BadTooManyMonitoredItems,
    ua.StatusCodes.BadMonitoredItemFilterUnsupported, ua.StatusCodes.BadFilterNotAllowed,
    ua.StatusCodes.BadDeadbandFilterInvalid,
})

# Integer OPC UA types a write may target, with their ranges.
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}


SECURITY_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_CERT_LOCKS: dict[tuple[int, Path], asyncio.Lock] = {}


def certificate_paths(device: OpcUaDevice) -> tuple[Path, Path]:
    """(certificate, private key) of the client's application instance, one pair per ApplicationUri."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", device.application_uri).strip("_") or "client"
    base = Path(device.certificate_dir)
    return base / f"{stem}.der", base / f"{stem}.key.pem"


class ServerUntrusted(DriverConnectionError):
    """The server's certificate is not in the device's trust list (or not valid): nothing is sent to it."""


def trust_list(device: OpcUaDevice) -> TrustList:
    """The server certificates a device trusts: its directory, its CA file, and where refused ones go."""
    base = Path(device.certificate_dir)
    return TrustList(Path(device.trusted_certificates_dir or base / "trusted"),
                     Path(device.rejected_certificates_dir or base / "rejected"),
                     Path(device.trusted_ca_file) if device.trusted_ca_file else None,
                     peer=f"server ({device.id})", log_refusals=False)


def _make_private_key(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    ensure_private_key(key_file)


def _certificate_lock(cert_file: Path) -> asyncio.Lock:
    key = (id(asyncio.get_running_loop()), cert_file.resolve())
    lock = _CERT_LOCKS.get(key)
    if lock is None:
        lock = _CERT_LOCKS[key] = asyncio.Lock()
    return lock


def parse_node(text: str) -> tuple[str | None, str]:
    """Split a node string into (namespace URI or None, the rest).

    `nsu=<uri>;s=name` names the namespace by URI, whose index a server may change between restarts;
    `ns=2;s=name` is taken literally.
    """
    if text.startswith("nsu="):
        uri, sep, rest = text[4:].partition(";")
        if not sep or not uri or not rest:
            raise ValueError(f"'{text}' is not a node id like nsu=urn:x;s=name")
        return uri, rest
    ua.NodeId.from_string(text)  # raises on a malformed id
    return None, text


def parse_browse_path(text: str) -> list[ua.QualifiedName]:
    """`0:Objects/2:Plant/2:cdu1` -> the browse names to follow from the Root node."""
    names = []
    for element in text.split("/"):
        index, sep, name = element.partition(":")
        if not sep or not index.isdigit() or not name:
            raise ValueError(f"element '{element}' is not index:BrowseName")
        names.append(ua.QualifiedName(name, int(index)))
    return names


def quality_of(status: ua.StatusCode | None) -> Quality:
    """OPC UA status severity -> sample quality."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def as_number(value: Any) -> float | None:
    """A finite scalar number (booleans as 0/1), or None for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _aware(t: datetime | None) -> datetime | None:
    # asyncua has returned naive UTC datetimes in some versions.
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


class _ChangeHandler:
    """Hands subscription callbacks to the driver's task through a queue (callbacks must not block)."""

    def __init__(self, queue: asyncio.Queue[_Change]) -> None:
        self._queue = queue

    def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
        self._queue.put_nowait((node.nodeid, data.monitored_item.Value))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self._queue.put_nowait(status)


class OpcUaDriver(Driver[OpcUaDevice]):
    """Reads an OPC UA server's nodes; after any failure a brand-new client re-resolves every node."""

    protocol = "opcua"

    def __init__(self, device: OpcUaDevice, sink: SampleSink, *, backoff: Backoff | None = None,
                 clock: SleepingClock | None = None) -> None:
        super().__init__(device, sink, backoff=backoff, clock=clock)
        self._parsed: dict[str, tuple[str | None, str]] = {}
        self._paths: dict[str, list[ua.QualifiedName]] = {}  # point id -> browse names, for browse_path points
        self._browse_paths = {p.id: p.browse_path for p in device.points if p.browse_path is not None}
        for p in device.points:
            try:
                if p.node is not None:
                    self._parsed[p.id] = parse_node(p.node)
                else:
                    self._paths[p.id] = parse_browse_path(p.browse_path or "")
            except Exception as err:
                key = "node" if p.node is not None else "browse_path"
                raise DriverError(f"device '{device.id}' point '{p.id}': bad {key} '{p.address}': {err}") from err
        self._client: Client | None = None
        self._node_ids: dict[str, ua.NodeId] = {}  # point id -> resolved node, on the current connection
        self._variant_types: dict[str, ua.VariantType] = {}  # learned from reads, used to type writes
        self._unresolved_logged: set[str] = set()
        self._changes: asyncio.Queue[_Change] = asyncio.Queue()
        self._polling = not device.subscribe  # also when the server refused a subscription
        self._fallback_logged = False
        self.trust = trust_list(device)

    # ------------------------------------------------------------------ lifecycle hooks

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        self._client = None
        self._node_ids = {}
        # asyncua's watchdog probes the server between our reads, which also keeps the session alive
        # when polls are rarer than the session timeout servers grant (typically 10 min).
        session_s = self.device.session_timeout_s
        # The watchdog's reads keep the session alive; four of them fit in one session timeout.
        client = Client(self.device.endpoint, timeout=self.device.timeout_s,
                        watchdog_intervall=min(60.0, max(1.0, self.device.poll_interval_s), session_s / 4))
        # Short enough that a session we could not close (connection lost, subscriptions keep it
        # alive on the server) expires soon instead of piling up; servers clamp to their own range.
        client.session_timeout = round(session_s * 1000)
        client.application_uri = self.device.application_uri
        if self.device.security_policy != "None":
            await self._secure(client)
        if self.device.username:
            client.set_user(self.device.username)
        if self.device.password:
            client.set_password(self.device.password)
        connected = False

        async def close() -> None:
            self._client = None
            if connected:
                await client.disconnect()
            else:
                client.disconnect_socket()  # a connect cut short by our timeout may leave the socket open

        stack.push_async_callback(close)
        await self._ua(client.connect(), "connect")
        connected = True
        self._client = client
        await self._resolve(client)
        self._polling = not self.device.subscribe
        if self.device.subscribe:
            self._changes = asyncio.Queue()  # fresh, so nothing from the previous session leaks in
            await self._subscribe(client)

    async def _secure(self, client: Client) -> None:
        """Sign (and encrypt) with our application certificate, generated on first use, to a server whose
        certificate the trust list holds: the one its endpoint list offers is checked, never taken on faith."""
        cert_file, key_file = certificate_paths(self.device)
        try:
            async with _certificate_lock(cert_file):  # devices starting together share one certificate
                await asyncio.to_thread(_make_private_key, key_file)  # 0600 from its first byte
                await client.setup_self_signed_certificate(key_file, cert_file,
                                                           subject_attrs={"organizationName": "heatrec"})
        except OSError as err:
            raise DriverError(f"cannot create the application certificate in '{cert_file.parent}': {err}") from err
        policy = SECURITY_POLICIES[self.device.security_policy]
        mode = getattr(ua.MessageSecurityMode, self.device.security_mode)
        what = f"find a {self.device.security_policy}/{self.device.security_mode} endpoint"
        endpoints = await self._ua(client.connect_and_get_server_endpoints(), what)
        try:
            endpoint = Client.find_endpoint(endpoints, mode, policy.URI)
            server_der = first_certificate(endpoint.ServerCertificate or b"")
            server_cert = x509.load_der_x509_certificate(server_der)
        except (UaError, ValueError) as err:
            raise DriverError(f"{what}: {err}") from err
        await self._check_server(server_cert, endpoint.Server)
        await self._ua(client.set_security(policy, cert_file, key_file, server_certificate=server_der, mode=mode),
                       "set up the secure channel")
        # asyncua checks the certificate the server answers CreateSession with as well.
        client.certificate_validator = self.trust.validate

    async def _check_server(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        try:
            await self.trust.validate(cert, app)
        except ServiceError:
            raise ServerUntrusted(f"the server's certificate is refused ({self.trust.last_refusal}); trust it "
                                  f"only if it is this device's") from None  # the status is in the message
        except (OSError, ValueError) as err:  # the trust list itself: a missing CA file, a broken one
            raise DriverError(f"trust list of {self.device.id}: {err}") from err

    async def _resolve(self, client: Client) -> None:
        """Map every point to a NodeId on this server instance (namespace indexes can change on restart)."""
        namespaces: list[str] | None = None
        for p in self.device.points:
            if p.id not in self._parsed:
                continue
            uri, rest = self._parsed[p.id]
            if uri is None:
                self._node_ids[p.id] = ua.NodeId.from_string(rest)
                continue
            if namespaces is None:
                namespaces = await self._ua(client.get_namespace_array(), "read the namespace array")
            if uri in namespaces:
                self._node_ids[p.id] = ua.NodeId.from_string(f"ns={namespaces.index(uri)};{rest}")
            elif p.id not in self._unresolved_logged:
                self._unresolved_logged.add(p.id)
                self._log.warning("%s: point %s: the server has no namespace '%s'; the point is BAD",
                                  self.device_id, p.id, uri)
        if self._paths:
            await self._resolve_browse_paths(client)

    async def _resolve_browse_paths(self, client: Client) -> None:
        """Translate every browse path to the NodeId it leads to on this server instance."""
        ids = list(self._paths)
        for i in range(0, len(ids), MAX_NODES_PER_READ):
            chunk = ids[i:i + MAX_NODES_PER_READ]
            # asyncua annotates booleans with its ua.Boolean marker class, which cannot be instantiated.
            requests = [ua.BrowsePath(StartingNode=_ROOT, RelativePath=ua.RelativePath(
                Elements=[ua.RelativePathElement(ReferenceTypeId=_HIERARCHICAL, IsInverse=False,  # type: ignore[arg-type]
                                                 IncludeSubtypes=True, TargetName=name)  # type: ignore[arg-type]
                          for name in self._paths[pid]])) for pid in chunk]
            results = await self._ua(client.uaclient.translate_browsepaths_to_nodeids(requests),
                                     "translate browse paths")
            if len(results) != len(chunk):
                raise DriverError(f"asked for {len(chunk)} browse paths, the server translated {len(results)}")
            for pid, result in zip(chunk, results, strict=True):
                targets = [t.TargetId for t in result.Targets or [] if t.RemainingPathIndex == _WHOLE_PATH]
                if result.StatusCode.is_good() and targets:
                    target = targets[0]  # an ExpandedNodeId: keep the plain NodeId the session uses
                    self._node_ids[pid] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                    self._unresolved_logged.discard(pid)
                elif pid not in self._unresolved_logged:
                    self._unresolved_logged.add(pid)
                    self._log.warning("%s: point %s: browse path %s does not lead to a node (%s); the point is BAD",
                                      self.device_id, pid, self._browse_paths[pid], result.StatusCode.name)

    async def _subscribe(self, client: Client) -> None:
        """Create the subscription and its monitored items; fall back to polling if the server refuses."""
        period_ms = self.device.poll_interval_s * 1000
        sampling_ms = (self.device.sampling_interval_s or self.device.poll_interval_s) * 1000
        nodes = [client.get_node(nid) for nid in dict.fromkeys(self._node_ids.values())]
        # Absolute deadband; the trigger includes the status so a value turning Bad is always reported.
        value_filter = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue,
                                           DeadbandType=int(ua.DeadbandType.Absolute if self.device.deadband
                                                            else ua.DeadbandType.None_),
                                           DeadbandValue=self.device.deadband)
        try:
            sub = await self._ua(client.create_subscription(period_ms, _ChangeHandler(self._changes)),
                                 "create a subscription")
            # Subscription._subscribe is the one asyncua call taking filter, queue size and sampling
            # interval together (deadband_monitor has no sampling interval).
            results = await self._ua(sub._subscribe(nodes, ua.AttributeIds.Value, value_filter,
                                                    self.device.queue_size, ua.MonitoringMode.Reporting,
                                                    ua.Double(sampling_ms)),
                                     "subscribe to data changes")
        except DriverConnectionError as err:
            cause = err.__cause__
            if not isinstance(cause, UaStatusCodeError) or cause.code not in _NO_SUBSCRIPTION:
                raise
            # The server answered, but will not give us a subscription (limits, no support): poll it.
            self._polling = True
            if not self._fallback_logged:
                self._fallback_logged = True
                self._log.warning("%s: the server refuses subscriptions (%s); polling every %g s instead",
                                  self.device_id, cause, self.device.poll_interval_s)
            return
        refused = {node.nodeid: result.name for node, result in zip(nodes, results, strict=True)
                   if isinstance(result, ua.StatusCode)}
        for p in self.device.points:
            node_id = self._node_ids.get(p.id)
            if node_id is None or node_id not in refused:
                continue
            reason = refused[node_id]
            del self._node_ids[p.id]  # reported BAD from now on, like a node that does not resolve
            if p.id not in self._unresolved_logged:
                self._unresolved_logged.add(p.id)
                self._log.warning("%s: point %s: the server refuses to monitor %s (%s); the point is BAD",
                                  self.device_id, p.id, p.address, reason)

    async def _serve(self) -> None:
        if not self._polling:
            return await self._serve_subscription()
        await self._poll_forever(self._poll_once)

    # ------------------------------------------------------------------ polling

    async def _poll_once(self) -> None:
        client = self._require_client()
        points = [p for p in self.device.points if p.id in self._node_ids]
        now = utcnow()
        for p in self.device.points:
            if p.id not in self._node_ids:
                self._publish(p, None, Quality.BAD, now, now)
        for i in range(0, len(points), MAX_NODES_PER_READ):
            chunk = points[i:i + MAX_NODES_PER_READ]
            params = ua.ReadParameters(TimestampsToReturn=ua.TimestampsToReturn.Both)
            params.NodesToRead = [ua.ReadValueId(NodeId=self._node_ids[p.id],
                                                 AttributeId=ua.AttributeIds.Value) for p in chunk]
            results = await self._ua(client.uaclient.read(params), "read")
            if len(results) != len(chunk):
                raise DriverError(f"asked for {len(chunk)} values, the server returned {len(results)}")
            self.stats.reads += 1
            received = utcnow()
            for p, dv in zip(chunk, results, strict=True):
                self._publish_value(p, dv, received)

    def _publish_value(self, point: OpcUaPoint, dv: ua.DataValue, received: datetime) -> None:
        quality = quality_of(dv.StatusCode)
        variant = dv.Value
        raw = variant.Value if variant is not None else None
        if variant is not None and variant.VariantType is not ua.VariantType.Null:
            self._variant_types[point.id] = variant.VariantType
        source = _aware(dv.SourceTimestamp) or _aware(dv.ServerTimestamp) or received
        if quality is Quality.BAD:
            self.stats.read_errors += 1
            self._publish(point, None, Quality.BAD, source, received)
            return
        value = as_number(raw)
        if value is None:
            if raw is None or isinstance(raw, int | float):  # no value, or NaN/inf: nothing valid to report
                self.stats.read_errors += 1
                self._publish(point, None, Quality.BAD, source, received)
            # Text, arrays and structures are not samples: the stream carries numbers only.
            return
        self._publish(point, value, quality, source, received)

    # ------------------------------------------------------------------ subscription

    async def _serve_subscription(self) -> None:
        """Publish data changes; probe the server every poll interval, since silence is normal here."""
        client = self._require_client()
        by_node: dict[ua.NodeId, list[OpcUaPoint]] = {}
        for p in self.device.points:
            if p.id in self._node_ids:
                by_node.setdefault(self._node_ids[p.id], []).append(p)
        now = utcnow()
        for p in self.device.points:
            if p.id not in self._node_ids:
                self._publish(p, None, Quality.BAD, now, now)
        changes = self._changes
        while True:
            raise_if_cancelled()
            batch: list[_Change] = []
            if changes.empty():
                try:
                    batch.append(await asyncio.wait_for(changes.get(), self.device.poll_interval_s))
                except TimeoutError:
                    await self._ua(client.nodes.server_state.read_value(), "probe the server state")
                    self._mark_healthy()
                    continue
            # One publish response carries many changes: take them all at once rather than paying a
            # wait_for (a task) per change, which could not keep up with 1,000 nodes at 10 Hz.
            while not changes.empty():
                batch.append(changes.get_nowait())
            received = utcnow()
            for item in batch:
                if isinstance(item, ua.StatusChangeNotification):
                    raise DriverConnectionError(f"subscription status changed to {item.Status.name}")
                node_id, dv = item
                self.stats.reads += 1
                for p in by_node.get(node_id, []):
                    self._publish_value(p, dv, received)
            self._mark_healthy()

    def _stale_after(self, point: PointBase) -> float | None:
        # A data-change subscription is silent while values hold still, so only an explicit
        # stale_after_s applies there.
        if not self._polling:
            return point.stale_after_s
        return super()._stale_after(point)

    # ------------------------------------------------------------------ the wire

    def _require_client(self) -> Client:
        if self._client is None:
            raise DriverConnectionError(f"not connected to {self.device.endpoint}")
        return self._client

    async def _ua(self, request: Awaitable[T], what: str) -> T:
        """Await one asyncua request within the device timeout; translate its errors into ours."""
        try:
            async with asyncio.timeout(self.device.timeout_s):
                result = await request
                raise_if_cancelled()
                return result
        except TimeoutError as err:
            raise DriverTimeout(f"{what}: no answer within {self.device.timeout_s} s") from err
        except UaStatusCodeError as err:
            # A failed service call (session gone, server shutting down): only a new session helps.
            raise DriverConnectionError(f"{what}: {err}") from err
        except (OSError, EOFError) as err:  # ConnectionError is an OSError
            raise DriverConnectionError(f"{what}: {err or type(err).__name__}") from err
        except UaError as err:
            raise DriverError(f"{what}: {err}") from err

    # ------------------------------------------------------------------ writes

    async def _read_one(self, node_id: ua.NodeId) -> ua.DataValue:
        params = ua.ReadParameters(TimestampsToReturn=ua.TimestampsToReturn.Both)
        params.NodesToRead = [ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value)]
        results = await self._ua(self._require_client().uaclient.read(params), "read back")
        return results[0]

    async def _write_and_read_back(self, point: PointBase, value: float) -> tuple[float, float]:
        client = self._require_client()
        node_id = self._node_ids.get(point.id)
        if node_id is None:
            raise DriverError(f"node '{getattr(point, 'address', '?')}' is not resolved on this server")
        vtype = self._variant_types.get(point.id)
        if vtype is None:  # not read yet: the write must carry the node's own type
            dv = await self._read_one(node_id)
            vtype = dv.Value.VariantType if dv.Value is not None else ua.VariantType.Null
            if vtype is ua.VariantType.Null:
                raise WriteRejected(f"cannot tell the data type of node '{node_id.to_string()}'")
            self._variant_types[point.id] = vtype
        typed = _typed_value(value, vtype)
        params = ua.WriteParameters()
        params.NodesToWrite = [ua.WriteValue(NodeId=node_id, AttributeId=ua.AttributeIds.Value,
                                             Value=ua.DataValue(ua.Variant(typed, vtype)))]
        status = (await self._ua(client.uaclient.write(params), "write"))[0]
        if not status.is_good():
            raise DeviceRefused(f"the server refused the write: {status.name}")
        back = await self._read_one(node_id)
        if not (back.StatusCode is None or back.StatusCode.is_good()):
            raise DeviceException(f"read back: {back.StatusCode.name}", back.StatusCode.value)
        readback = as_number(back.Value.Value if back.Value is not None else None)
        if readback is None:
            raise DriverError("the read-back value is not a number")
        return float(typed), readback

    def _tolerance(self, point: PointBase, written: float) -> float:
        vtype = self._variant_types.get(point.id)
        if vtype in _INT_RANGES or vtype is ua.VariantType.Boolean:
            return 0.5
        rel = 2.0 ** -23 if vtype is ua.VariantType.Float else 2.0 ** -52
        return 4 * rel * max(1.0, abs(written))


def _typed_value(value: float, vtype: ua.VariantType) -> float | int | bool:
    """The value as the node's type needs it; WriteRejected when it cannot be represented."""
    if vtype is ua.VariantType.Boolean:
        if value not in (0, 1):
            raise WriteRejected(f"the node is Boolean: write 0 or 1, not {value}")
        return bool(value)
    if vtype in _INT_RANGES:
        low, high = _INT_RANGES[vtype]
        raw = round(value)
        if not low <= raw <= high:
            raise WriteRejected(f"{value} does not fit the node's type {vtype.name}")
        return raw
    if vtype is ua.VariantType.Float:
        if abs(value) > 3.4028234663852886e38:
            raise WriteRejected(f"{value} does not fit the node's type Float")
        return float(value)
    if vtype is ua.VariantType.Double:
        return float(value)
    raise WriteRejected(f"the node's type {vtype.name} is not numeric")
