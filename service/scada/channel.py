"""The SCADA server's channel rules, applied where asyncua leaves them to the application.

asyncua advertises token policies but does not enforce them, accepts any client certificate unless
given a validator, validates the certificate named in CreateSession rather than the one the secure
channel was opened with, and answers a wrong password at once. Each connection of heatrec's SCADA
server therefore runs through `_GuardedProcessor`, which, before asyncua handles a request:

- CreateSession on a signed channel: the channel's client certificate must be in the trust list
  (drivers/opcua_trust.py; an unknown one is written to the rejected directory) and must be the
  certificate the request names;
- ActivateSession with a user name: refused on a channel without security (BadSecurityModeInsufficient)
  and, on a signed-only channel, unless the password is encrypted per the token policy
  (BadIdentityTokenRejected); then the login guard (service/scada/guard.py) refuses a locked user or
  address and delays the answer to a wrong password;
- Write, Call and address-space changes on a channel without security: BadSecurityModeInsufficient,
  whoever asks (anonymous sessions are read-only anyway; this does not rely on one guard).

The processor is installed through the one place asyncua creates connections (BinaryServer's protocol
factory, set when the server assigns its BinaryServer); ScadaServer checks it took effect and refuses
to start otherwise, so an asyncua upgrade that moves it fails closed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import UserRole
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary
from cryptography import x509

from drivers.opcua_trust import TrustList, first_certificate
from service.scada.guard import LoginGuard

log = logging.getLogger(__name__)


def _id(i: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(i))


_CREATE_SESSION = _id(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
_ACTIVATE_SESSION = _id(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
# What changes something: never over a channel anyone on the wire can read and alter.
_CHANGES = frozenset(_id(i) for i in (
    ua.ObjectIds.WriteRequest_Encoding_DefaultBinary, ua.ObjectIds.CallRequest_Encoding_DefaultBinary,
    ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary, ua.ObjectIds.AddNodesRequest_Encoding_DefaultBinary,
    ua.ObjectIds.DeleteNodesRequest_Encoding_DefaultBinary, ua.ObjectIds.AddReferencesRequest_Encoding_DefaultBinary,
    ua.ObjectIds.DeleteReferencesRequest_Encoding_DefaultBinary,
    ua.ObjectIds.RegisterServerRequest_Encoding_DefaultBinary,
    ua.ObjectIds.RegisterServer2Request_Encoding_DefaultBinary))
# Password encryptions of the policies offered (RSA-OAEP); RSA PKCS#1 v1.5 (Basic128Rsa15) is not taken.
_TOKEN_ENCRYPTIONS = frozenset({"http://www.w3.org/2001/04/xmlenc#rsa-oaep",
                                "http://opcfoundation.org/UA/security/rsa-oaep-sha2-256"})
_LOGIN_FAILED = frozenset({ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenInvalid})
_NONE = ua.MessageSecurityMode.None_


@dataclass
class ChannelRules:
    """What every connection of one SCADA server is checked against, with counters of what was refused."""

    guard: LoginGuard
    trust: TrustList
    insecure_logins_refused: int = 0  # user names on a channel without security, or unencrypted on Sign
    insecure_changes_refused: int = 0  # writes, calls, node changes on a channel without security
    certificates_refused: int = 0  # CreateSession refused for the client certificate

    async def check_certificate(self, channel_der: bytes | None, params: ua.CreateSessionParameters) -> None:
        """The client certificate of a signed channel: trusted, and the one CreateSession names."""
        try:
            if not channel_der:
                raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
            channel = first_certificate(channel_der)
            if params.ClientCertificate and first_certificate(params.ClientCertificate) != channel:
                # The channel was opened with one key; a session must not borrow a trusted stranger's name.
                raise ServiceError(ua.StatusCodes.BadCertificateInvalid)
            await self.trust.validate(x509.load_der_x509_certificate(channel), params.ClientDescription)
        except ServiceError:
            self.certificates_refused += 1
            raise


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _insecure_token(mode: ua.MessageSecurityMode, encryption: str | None) -> str:
    """Why a user-name token on a channel of `mode` would expose its password; "" when it does not."""
    if mode == _NONE:
        return "no user names on a channel without security"
    if encryption and encryption not in _TOKEN_ENCRYPTIONS:
        return f"the password is encrypted with {encryption}, which is not accepted"
    if not encryption and mode != ua.MessageSecurityMode.SignAndEncrypt:
        return "the password was not encrypted on a signed-only channel"
    return ""


class _GuardedProcessor(UaProcessor):
    """asyncua's request processor with the channel rules in front (see the module docstring)."""

    def __init__(self, rules: ChannelRules, *args: Any) -> None:
        super().__init__(*args)
        self._rules = rules

    async def _process_message(self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any,
                               body: Buffer) -> Any:
        policy = self._connection.security_policy
        secured = policy.Mode != _NONE
        if typeid == _CREATE_SESSION and secured:
            params = struct_from_binary(ua.CreateSessionParameters, body.copy())
            await self._rules.check_certificate(policy.peer_certificate, params)
        elif typeid == _ACTIVATE_SESSION:
            return await self._activate(typeid, requesthdr, seqhdr, body)
        elif typeid in _CHANGES and not secured and not self._anonymous():
            # Anonymous sessions are refused by the permission rules (BadUserAccessDenied); anyone else here.
            self._rules.insecure_changes_refused += 1
            raise ServiceError(ua.StatusCodes.BadSecurityModeInsufficient)
        return await super()._process_message(typeid, requesthdr, seqhdr, body)

    def _anonymous(self) -> bool:
        user = self.session.user if self.session is not None else None
        return user is None or user.role == UserRole.Anonymous

    async def _activate(self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any, body: Buffer) -> Any:
        token = struct_from_binary(ua.ActivateSessionParameters, body.copy()).UserIdentityToken
        if not isinstance(token, ua.UserNameIdentityToken):
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        mode, user, address = self._connection.security_policy.Mode, token.UserName or "", _host(self.name)
        why = _insecure_token(mode, token.EncryptionAlgorithm)
        if why:
            # Refused before the password is looked at: an eavesdropper has it already, a guesser learns nothing.
            self._rules.insecure_logins_refused += 1
            log.warning("SCADA OPC UA: login of user %r from %s refused: %s", user[:64], address, why)
            raise ServiceError(ua.StatusCodes.BadSecurityModeInsufficient if mode == _NONE
                               else ua.StatusCodes.BadIdentityTokenRejected)
        guard = self._rules.guard
        if guard.locked(user, address):
            await asyncio.sleep(guard.refuse_locked())
            raise ServiceError(ua.StatusCodes.BadUserAccessDenied)
        try:
            result = await super()._process_message(typeid, requesthdr, seqhdr, body)
        except (ServiceError, ua.UaStatusCodeError) as err:
            if err.code in _LOGIN_FAILED:
                delay = guard.failed(user, address)
                log.info("SCADA OPC UA: failed login of user %r from %s (answered after %.2f s)",
                         user[:64], address, delay)
                await asyncio.sleep(delay)
            raise
        guard.succeeded(user)
        return result


class _GuardedProtocol(OPCUAProtocol):
    """One connection: asyncua's protocol, with the guarded processor in place of the plain one."""

    def __init__(self, rules: ChannelRules, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rules = rules

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None when asyncua refused the connection (max_connections)
            processor = _GuardedProcessor(self._rules, self.iserver, self.transport, self.limits)
            processor.set_policies(self.policies)
            self.processor = processor


def _guard_connections(bs: BinaryServer, rules: ChannelRules) -> object:
    def make_protocol() -> OPCUAProtocol:
        # Read at each connection, like asyncua's own factory: the policies are set after construction.
        return _GuardedProtocol(rules, iserver=bs.iserver, policies=bs._policies, clients=bs.clients,
                                closing_tasks=bs.closing_tasks, limits=bs.limits)

    bs._make_protocol = make_protocol  # type: ignore[method-assign]
    return make_protocol


class GuardedServer(Server):
    """asyncua's Server whose every connection goes through `rules`."""

    def __init__(self, rules: ChannelRules, **kwargs: Any) -> None:
        self.rules = rules
        self._guarded_bserver: BinaryServer | None = None
        self._factory: object = None
        super().__init__(**kwargs)

    @property
    def bserver(self) -> BinaryServer | None:
        """The listening socket server; its protocol factory is replaced as asyncua assigns it."""
        return self._guarded_bserver

    @bserver.setter
    def bserver(self, bs: BinaryServer | None) -> None:
        if bs is not None:
            self._factory = _guard_connections(bs, self.rules)
        self._guarded_bserver = bs

    def guarded(self) -> bool:
        """Whether the listening server hands its connections to the guarded processor."""
        bs = self._guarded_bserver
        return bs is not None and self._factory is not None and bs._make_protocol is self._factory

    def hide_user_names_on_plain_endpoints(self) -> None:
        """Advertise no user-name token on endpoints without security (they would be refused anyway)."""
        for edp in self.iserver.endpoints:
            if edp.SecurityMode == _NONE:
                edp.UserIdentityTokens = [t for t in edp.UserIdentityTokens
                                          if t.TokenType != ua.UserTokenType.UserName]
