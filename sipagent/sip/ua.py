"""The SIP user agent: registers on a PBX, answers calls and places them, like a desk phone (asyncio shell).

The sans-I/O cores parse, build, authenticate, run transactions, registrations and calls (``call.py``) and
negotiate SDP; this module owns the socket, the clock and the tasks. It is the driver of every core: it
feeds each what arrives, carries out the actions it returns, and arms one loop timer per core for its next
deadline, feeding ``loop.time()`` back in when it fires. Each call goes to the layer above as an
:class:`IncomingCall` or, dialled with ``dial``, an :class:`OutgoingCall` (thin awaitable fronts, front.py);
the UA knows nothing of RTP payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sipagent.errors import SdpError, SipBuildError, SipParseError
from sipagent.sdp import NegotiatedMedia, SessionDescription, SrtpPolicy
from sipagent.sdp.crypto import DEFAULT_SUITES
from sipagent.sip.admission import (
    LOOPBACK,
    BudgetLimits,
    IpNetwork,
    LogThrottle,
    SourcePolicy,
    TransactionBudget,
    normalise_ip,
    parse_network,
)
from sipagent.sip.auth import DigestCredentials
from sipagent.sip.call import (
    ALLOW,
    CallAction,
    CallConfig,
    CallCore,
    Ended,
    EndFork,
    Respond,
    Retransmit,
    SendAck,
    SendRequest,
    SipTimeout,
    decorate,
    unsupported,
)
from sipagent.sip.dialog import Dialog
from sipagent.sip.front import CallFront, IncomingCall
from sipagent.sip.headers import new_tag
from sipagent.sip.identity import identify
from sipagent.sip.message import SipRequest, SipResponse, build_response, stamp_source
from sipagent.sip.outgoing import DIAL_OUTCOMES, DialError, OutgoingCall
from sipagent.sip.registration import Registration, RegistrationConfig
from sipagent.sip.session_timer import IntervalTooSmall, TimerPolicy
from sipagent.sip.session_timer import negotiate as timer_terms
from sipagent.sip.tls import TlsSettings
from sipagent.sip.transaction import (
    Action,
    ClientTransaction,
    ResponseEvent,
    Send,
    ServerTransaction,
    Terminated,
    TimeoutEvent,
    cancel_target_key,
    client_key,
    server_key,
)
from sipagent.sip.transport import Peer, SipTransport, TcpTransport, TransportLimits, create_transport
from sipagent.sip.uri import NameAddr, SipUri, host_port, parse_name_addr_list, parse_target_uri, uri_host

logger = logging.getLogger(__name__)

# Registration states of the core's machine that the shell acts on.
UNREGISTERED = "unregistered"
REGISTERED = "registered"
BACKING_OFF = "backing-off"
FAILED = "failed"


@dataclass
class SipAccount:
    """One extension the UA registers: its own AoR, credentials and expiry, its own registration state
    machine (refresh and back-off) and its own user part for admission. ``name`` labels it in logs, metrics
    and ``IncomingCall.account``; ``auth_user`` is the digest user name when it is not ``username``."""

    name: str
    username: str
    password: str = ""
    auth_user: str = ""
    expires: int = 300

    def __repr__(self) -> str:  # never let the password reach a log line
        return f"SipAccount(name={self.name!r}, username={self.username!r}, password=***)"


@dataclass
class UaSettings:
    """What the user agent needs from the ``sip:`` configuration section.

    ``registrar`` is "host[:port]" or None for direct mode; ``public_host`` is the address advertised
    in Via/Contact when it differs from the bound one (NAT); ``trusted_hosts`` (addresses, CIDR networks
    or names) may send requests besides the registrar; direct mode with none accepts loopback only, unless
    ``allow_any_caller``. ``aliases`` are user parts that are ours besides ``username``. ``session_expires``
    and ``min_se`` are the session timer's longest and shortest interval (RFC 4028; see session_timer.py).
    ``accounts`` are the extensions to register; none given, ``username``/``password``/``expires`` are the
    one account (when a registrar is set).
    """

    registrar: str | None
    transport: str
    username: str
    password: str
    domain: str
    listen_host: str
    listen_port: int
    public_host: str | None
    expires: int
    max_calls: int
    trusted_hosts: list[str]
    codecs: list[str]
    user_agent: str = "sipagent"
    aliases: list[str] = field(default_factory=list)
    allow_any_caller: bool = False
    session_expires: int = 1800
    min_se: int = 90
    context_headers: list[str] = field(default_factory=list)  # INVITE headers kept in ``IncomingCall.identity``
    accounts: list[SipAccount] = field(default_factory=list)
    srtp: str = "off"  # media.srtp: off | optional | required
    srtp_suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))  # media.srtp_suites
    srtp_over_insecure_signalling: bool = False  # SDES keys taken from offers that did not come over TLS
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    transport_limits: TransportLimits = field(default_factory=TransportLimits)
    tls: TlsSettings = field(default_factory=TlsSettings)  # used when transport is "tls"
    # RFC 5626 CRLF pings on the connections we open over TCP and TLS (0: none), and how long a pong may take.
    keepalive_s: float = 90.0
    keepalive_timeout_s: float = 10.0
    # Where the calls we place go first ("host[:port]"), when not to the registrar; None: the registrar (or, in
    # direct mode, the target's host).
    outbound_proxy: str | None = None


class _Machine(Protocol):
    """What the shell needs from a core state machine to drive its timers."""

    @property
    def next_deadline(self) -> float | None: ...

    def timeout(self, now: float) -> list[Action]: ...


EventHandler = Callable[[ResponseEvent | TimeoutEvent | Terminated], None]


def _split_hostport(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and host and ":" not in host:
        return host, int(port)
    return text, default_port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# RFC 3261 20.43: what a 488 says when the offer's media address is of a family we cannot send to.
INCOMPATIBLE_ADDRESS = '301 sipagent "Incompatible network address formats"'


def media_reachable(bind_host: str, address: str) -> bool:
    """Whether RTP sockets bound to ``bind_host`` (``sip.listen``'s host: rtp/ports.py binds the pair there, in
    its family) can exchange packets with the IP literal ``address``. A dual-stack ``::`` reaches both
    families; ``0.0.0.0`` or an IPv4 address only IPv4 (and IPv4-mapped IPv6); a specific IPv6 address only
    IPv6. Anything else would be a call answered with audio in neither direction."""
    try:
        ip = ipaddress.ip_address(address)
        bound = ipaddress.ip_address(bind_host.strip("[]") or "0.0.0.0")
    except ValueError:
        return True  # not ours to judge here: the negotiation refuses what is not an IP address
    if ip.is_unspecified or (bound.version == 6 and bound.is_unspecified):
        return True
    if bound.version == 4:
        return ip.version == 4 or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None)
    return ip.version == 6 and ip.ipv4_mapped is None


@dataclass
class _Line:
    """One account's registration as it runs: the state machine, the task that drives it, and whether the
    registrar has accepted it."""

    account: SipAccount
    registration: Registration | None = None
    task: asyncio.Task[None] | None = None
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # something to do before the deadline

    @property
    def state(self) -> str:
        return self.registration.state if self.registration is not None else UNREGISTERED


def _route_source(target: str, wildcard_v6: bool) -> str:
    """Our source address on the route towards ``target`` (a connected UDP socket sends nothing)."""
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            return normalise_ip(str(probe.getsockname()[0]))
    except (OSError, ValueError):
        return "::1" if wildcard_v6 else "127.0.0.1"


def _approximate_size(request: SipRequest) -> int:
    """What a server transaction holds for this request: its header text and body, plus its response."""
    return 2 * (sum(len(name) + len(value) + 4 for name, value in request.headers) + len(request.body)) + 256


class UserAgent:
    """A registering SIP phone that answers calls and hands them to ``on_call``, and places calls (``dial``).

    ``start()`` binds and starts registering (when a registrar is set); ``stop()`` ends calls politely,
    unregisters and closes. ``registration_state`` names the core's registration state. It is the driver of
    every call's core (``drive``): the fronts it gives out ask the core, and the core's actions come back here.
    """

    def __init__(self, settings: UaSettings, on_call: Callable[[IncomingCall], Awaitable[None]],
                 on_refused: Callable[[int], None] | None = None,
                 on_shed: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_call = on_call
        # Told the status of every INVITE refused before a call object exists (403, 404, 486, 420, 488).
        self.on_refused = on_refused
        # Told the reason of every request dropped without state: "untrusted", or a transaction limit.
        self.on_shed = on_shed
        self.local_address: tuple[str, int] = (settings.listen_host, settings.listen_port)
        self.domain = settings.domain or (
            _split_hostport(settings.registrar, 5060)[0] if settings.registrar else settings.listen_host
        )
        self._transport: SipTransport | None = None
        self._advertised: tuple[str, int] = self.local_address
        self._routes: dict[str, str] = {}  # peer address -> our source address towards it
        self._registrar: Peer | None = None
        self.policy = SourcePolicy(())  # trusts nobody until start() has resolved who may call
        self._budget = TransactionBudget(settings.limits)
        self._timer_policy = TimerPolicy(settings.session_expires, settings.min_se)
        self._throttle = LogThrottle()
        self._tag_secret = os.urandom(16)  # keys the To tags of stateless responses
        self._calls: dict[str, CallFront] = {}
        self._resolving = 0  # dials awaiting their first hop (DNS): counted in active_calls
        self._server: dict[tuple[str, str, str], tuple[ServerTransaction, Peer]] = {}
        self._client: dict[tuple[str, str], tuple[ClientTransaction, Peer, EventHandler]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.accounts: list[SipAccount] = list(settings.accounts) or (
            [SipAccount(settings.username, settings.username, settings.password, expires=settings.expires)]
            if settings.registrar and settings.username else [])
        self._lines = {account.name: _Line(account) for account in self.accounts}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Name lookups under way, by host: requests that need the same name wait for the one lookup, and go on in
        # the order they asked (two lookups of their own could finish the other way round, and a dialog's NOTIFY
        # 100 and 200 to a named Contact go out in the wrong CSeq order).
        self._lookups: dict[str, asyncio.Future[list[str]]] = {}
        self._stopping = False
        # Why the last REGISTER got no answer, in plain words (a certificate problem, a refused connection);
        # None once registered. ``sipagent check --connect`` prints it.
        self.registration_problem: str | None = None
        self._transport_errors: dict[Peer, str] = {}  # the last send failure per destination, for messages
        self.reconnects = 0  # registrar connections lost and registered again over a new one

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def transport_name(self) -> str:
        return self.settings.transport.upper()

    @property
    def _default_port(self) -> int:
        return 5061 if self.transport_name == "TLS" else 5060

    @property
    def server_transactions(self) -> int:
        """Server transactions held now (bounded by ``settings.limits``)."""
        return len(self._server)

    @property
    def active_calls(self) -> int:
        """Calls not ended, both ways, and dials still finding their first hop (counted from the moment
        ``dial`` is called, so that a check of ``max_calls`` made just before it sees every earlier dial)."""
        return sum(1 for call in self._calls.values() if call.state != "ended") + self._resolving

    async def start(self) -> None:
        """Bind the listening socket, then register in the background (when a registrar is set)."""
        s = self.settings
        self._transport = create_transport(s.transport, s.listen_host, s.listen_port, self._on_message,
                                           self._on_transport_error, limits=s.transport_limits,
                                           on_shed=self.on_shed, tls=s.tls, keepalive_s=s.keepalive_s,
                                           keepalive_timeout_s=s.keepalive_timeout_s)
        if isinstance(self._transport, TcpTransport):
            self._transport.on_closed = self._on_connection_closed
        await self._transport.start()
        self.local_address = self._transport.local_address
        if self.local_address[1] == 0:
            # TLS without a certificate listens nowhere: the registrar reaches us over the connection we open, and
            # the Contact's port only has to be a valid one (the registrar keys on the connection, not on it).
            self.local_address = (self.local_address[0], self._default_port)
        registrar_addresses: list[str] = []
        if s.registrar:
            host, port = _split_hostport(s.registrar, self._default_port)
            registrar_addresses = await self._resolve_all(host)
            self._registrar = Peer(self.transport_name, registrar_addresses[0], port)
            if isinstance(self._transport, TcpTransport) and self.transport_name == "TLS":
                # The certificate must carry the name we were configured with, not the address it resolved to.
                self._transport.server_names[(self._registrar.host, port)] = s.tls.server_name or host
                if not s.tls.verify:
                    logger.warning("sip.tls.verify is false: the registrar's certificate is not checked, and "
                                   "anyone on the path can read and change the signalling")
        self.policy = await self._source_policy(registrar_addresses)
        self._transport.trusts = self.policy.trusts
        self._advertised = (self.advertised_host(), self.local_address[1])
        logger.info("SIP %s listening on %s:%s, advertising %s:%s; requests accepted from %s",
                    self.transport_name, uri_host(self.local_address[0]), self.local_address[1],
                    uri_host(self._advertised[0]), self._advertised[1], self.policy.describe())
        if self._registrar is not None:
            for line in self._lines.values():
                line.registration = self._new_registration(line.account)
                line.task = asyncio.create_task(self._register_loop(line))

    def advertised_host(self, peer_host: str | None = None) -> str:
        """The one address we advertise to ``peer_host`` in Via, Contact and SDP (o= and c=): ``public_host``
        when set, else the bound address when it is a specific one, else the source address of the route
        towards the peer (the registrar when no peer is named). Never a wildcard: a PBX reads
        ``c=0.0.0.0`` as hold, and across a network it would send the caller's audio nowhere."""
        if self.settings.public_host:
            return self.settings.public_host
        host = self.local_address[0]
        if host not in ("0.0.0.0", "::", ""):
            return host
        target = peer_host or (self._registrar.host if self._registrar else None)
        if target is None:
            target = "::1" if host == "::" else "127.0.0.1"
        elif not _is_ip(target):  # never a lookup here: our address towards the registrar stands in
            return self._advertised[0] if self._advertised[0] not in ("0.0.0.0", "::", "") else "127.0.0.1"
        cached = self._routes.get(target)
        if cached is None:
            cached = _route_source(target, host == "::")
            if len(self._routes) >= 256:
                self._routes.clear()
            self._routes[target] = cached
        return cached

    async def _resolve(self, host: str) -> str:
        return (await self._resolve_all(host))[0]

    async def _resolve_all(self, host: str) -> list[str]:
        """Every address of ``host`` (a name may have several, and the PBX may use any); OSError if none."""
        host = host.strip("[]")
        if _is_ip(host):
            return [host]
        lookup = self._lookups.get(host)
        if lookup is None:
            lookup = self._lookups[host] = asyncio.ensure_future(self._lookup(host))
            lookup.add_done_callback(lambda done: self._lookup_done(host, done))
        return list(await asyncio.shield(lookup))  # a waiter cancelled does not cancel the others' lookup

    @staticmethod
    async def _lookup(host: str) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return list(dict.fromkeys(normalise_ip(str(info[4][0])) for info in infos))

    def _lookup_done(self, host: str, lookup: asyncio.Future[list[str]]) -> None:
        if self._lookups.get(host) is lookup:
            del self._lookups[host]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: every waiter may have been cancelled meanwhile

    async def _source_policy(self, registrar_addresses: list[str]) -> SourcePolicy:
        """Who may send us requests: the registrar's addresses, the outbound proxy's (the far end of a call we
        placed through it sends its BYE that way) and ``trusted_hosts`` (names resolved now; one that does not
        resolve adds nothing: it fails closed); loopback only in direct mode without a list; anyone with
        ``allow_any_caller``."""
        s = self.settings
        networks: list[IpNetwork] = [ipaddress.ip_network(address) for address in registrar_addresses]
        proxy = [_split_hostport(s.outbound_proxy, self._default_port)[0]] if s.outbound_proxy else []
        for entry in [*proxy, *s.trusted_hosts]:
            network = parse_network(entry)
            if network is not None:
                networks.append(network)
                continue
            try:
                networks.extend(ipaddress.ip_network(address) for address in await self._resolve_all(entry))
            except OSError as exc:
                logger.error("trusted host %s does not resolve (%s): requests from it are refused", entry, exc)
        if s.registrar is None and not s.trusted_hosts:
            networks.extend(LOOPBACK)
        users = [s.username] if s.username else []
        users += [account.username for account in self.accounts] + list(s.aliases)
        return SourcePolicy(networks, any_source=s.allow_any_caller, users=users)

    async def wait_registered(self, timeout: float, account: str | None = None) -> bool:
        """Wait until the registrar accepted every account (or the one named); False after ``timeout``
        seconds."""
        lines = [self._lines[account]] if account is not None else list(self._lines.values())
        if not lines:
            return False  # direct mode: nothing registers
        try:
            await asyncio.wait_for(asyncio.gather(*(line.registered.wait() for line in lines)), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """End calls (BYE, or 480 while ringing), unregister (Expires: 0) and close the socket."""
        self._stopping = True
        for call in list(self._calls.values()):
            if isinstance(call, IncomingCall) and call.state == "ringing":
                self.drive(call, call.core.end(480, self._now(), "shutdown"))
            elif call.state != "ended":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(call.hangup(), 2.0)
        lines = [line for line in self._lines.values() if line.task is not None]
        for line in lines:
            assert line.task is not None
            line.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await line.task
        # All accounts unregister at once: a stop takes as long as the slowest, not the sum.
        await asyncio.gather(*(self._unregister(line) for line in lines))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- driving the core's state machines -------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _run(self, machine: _Machine, actions: list[Action], dest: Peer,
             on_event: EventHandler | None) -> None:
        """Carry out a machine's actions, then arm a loop timer for its next deadline (armed even when an
        action fails, so that no machine is ever left without the timer that ends it)."""
        try:
            for action in actions:
                if isinstance(action, Send):
                    if self._transport is not None:
                        self._transport.send(action.data, dest)
                elif on_event is not None:
                    on_event(action)
        finally:
            self._arm(machine, dest, on_event)

    def _arm(self, machine: _Machine, dest: Peer, on_event: EventHandler | None) -> None:
        handle = self._timers.pop(id(machine), None)
        if handle is not None:
            handle.cancel()
        deadline = machine.next_deadline
        if deadline is not None and self._transport is not None:
            self._timers[id(machine)] = asyncio.get_running_loop().call_at(
                deadline, self._fire, machine, dest, on_event
            )

    def _fire(self, machine: _Machine, dest: Peer, on_event: EventHandler | None) -> None:
        self._timers.pop(id(machine), None)
        self._run(machine, machine.timeout(self._now()), dest, on_event)

    def _disarm(self, machine: object) -> None:
        handle = self._timers.pop(id(machine), None)
        if handle is not None:
            handle.cancel()

    # -- driving the calls' cores --------------------------------------------------------------------

    def now(self) -> float:
        return self._now()

    def drive(self, call: CallFront, actions: list[CallAction]) -> list[asyncio.Task[None]]:
        """Carry out a call core's actions (the front gets its events), then arm the loop timer for the core's
        next deadline; returns the tasks of the requests started."""
        tasks: list[asyncio.Task[None]] = []
        try:
            for action in actions:
                if isinstance(action, Respond):
                    self._send_response(action.request, action.response)
                elif isinstance(action, Retransmit):
                    if self._transport is not None:
                        self._transport.send(action.data, call.peer)
                elif isinstance(action, SendRequest):
                    tasks.append(self._spawn(self._call_request(call, action.request)))
                elif isinstance(action, SendAck):
                    tasks.append(self._spawn(self._call_ack(call, action.request)))
                elif isinstance(action, EndFork):
                    tasks.append(self._spawn(self._end_fork(call, action)))
                else:
                    call.handle(action)
                    if isinstance(action, Ended):
                        self._call_ended(call)
        finally:
            self._arm_call(call)
        return tasks

    def _arm_call(self, call: CallFront) -> None:
        self._disarm(call.core)
        deadline = call.core.next_deadline
        if deadline is not None and self._transport is not None:
            self._timers[id(call.core)] = asyncio.get_running_loop().call_at(deadline, self._call_due, call)

    def _call_due(self, call: CallFront) -> None:
        self._timers.pop(id(call.core), None)
        self.drive(call, call.core.timeout(self._now()))

    async def _call_request(self, call: CallFront, request: SipRequest) -> None:
        """A request of a call's core in its own client transaction; every response goes back to the core, as
        it is read: not when this task next runs, which may be after a request the far end sent right behind the
        response and the transport read with it (Asterisk's BYE after the 202 to our REFER)."""
        core = call.core

        def provisional(response: SipResponse) -> None:
            self.drive(call, core.receive_response(response, self._now()))

        def final(response: SipResponse) -> None:
            try:
                actions = core.receive_response(response, self._now())
            except SipParseError as exc:
                # A 2xx whose Record-Route does not parse (a malformed IPv6 reference) cannot be ACKed: the core
                # reads the route only as it builds the ACK. The call ends as one that could not be placed.
                logger.warning("call %s: unusable answer to our %s: %s", call.call_id, request.method, exc.reason)
                actions = core.request_failed(request, self._now())
            self.drive(call, actions)

        try:
            dest = await self._request_peer(call, request)
            await self._send_request(request, dest, on_provisional=provisional, on_final=final)
        except (SipTimeout, OSError, SipBuildError) as exc:
            logger.info("call %s: %s got no answer: %s", call.call_id, request.method, exc)
            self.drive(call, core.request_failed(request, self._now()))

    async def _call_ack(self, call: CallFront, ack: SipRequest) -> None:
        """The ACK of a 2xx: no transaction (RFC 3261 13.2.2.4); the core sends it again for each 2xx copy."""
        try:
            dest = await self._dialog_peer(call)
            data = ack.to_bytes()
        except (OSError, SipBuildError) as exc:
            logger.info("call %s: ACK not sent: %s", call.call_id, exc)
            return
        if self._transport is not None:
            self._transport.send(data, dest)

    async def _request_peer(self, call: CallFront, request: SipRequest) -> Peer:
        """Where a call's request goes: the INVITE and its CANCEL to where the call went first, the rest of
        the dialog to its next hop."""
        if call.core.dialog is None or not request.to_addr.tag:
            return call.peer
        return await self._dialog_peer(call)

    def _call_config(self, local_host: str, user: str, transport: str, accept_refer: bool = False) -> CallConfig:
        s = self.settings
        reliable = self._transport.reliable if self._transport is not None else False
        return CallConfig(codecs=tuple(s.codecs), local_contact=self._contact(local_host, user),
                          via_sent_by=self._sent_by(local_host), transport=self.transport_name, reliable=reliable,
                          srtp=srtp_policy(s, transport), timer_policy=self._timer_policy, user_agent=s.user_agent,
                          accept_refer=accept_refer)

    def _referred_by(self, account: str) -> str:
        return f"<{self._scheme}:{self.user_of(account)}@{uri_host(self.domain)}>"

    # -- placing calls -----------------------------------------------------------------------------------

    async def dial(self, target: str, *, rtp_port: int, codecs: list[str] | None = None, account: str | None = None,
                   ring_timeout: float = 30.0, headers: list[tuple[str, str]] | None = None,
                   on_progress: Callable[[int, NegotiatedMedia | None], None] | None = None) -> OutgoingCall:
        """Call ``target`` ("sip:2002@pbx", or a bare extension at the account's domain) and wait for the
        answer; returns the answered call.

        The INVITE goes to ``sip.outbound_proxy`` when set, else to the registrar of ``account`` (default: the
        first account; in direct mode, to the target's host), from the account's AoR, answering 401/407 with
        its credentials. 18x responses go to ``on_progress`` (with the early media of an SDP answer). Raises
        DialError with the outcome (busy, no-answer, rejected, failed; "no-answer" after ``ring_timeout``
        seconds and a CANCEL); cancelling the awaiting task CANCELs the call, and raises CancelledError once
        the CANCEL is handled (a 200 that crosses it is ACKed, then ended with BYE). ValueError for an
        unknown account or a header the call writes itself.
        """
        if self._transport is None or self._stopping:
            raise DialError("failed", 0, "the SIP user agent is not running")
        line = self._dial_line(account)
        uri = self._dial_uri(target)
        self._resolving += 1  # counted in active_calls until the call itself is (nothing awaits in between)
        try:
            dest, route = await self._first_hop(uri)
        finally:
            self._resolving -= 1
        local_host = self.advertised_host(dest.host)
        if line is not None:
            user = line.account.username
            from_aor = f"{self._scheme}:{user}@{uri_host(self.domain)}"
            credentials = DigestCredentials(line.account.auth_user or user, line.account.password)
        else:
            user = self.settings.username
            from_aor = f"{self._scheme}:{user or 'sipagent'}@{uri_host(local_host)}"
            credentials = None
        # A call we place may be transferred by its far end (REFER): ``OutgoingCall.on_refer`` decides.
        config = self._call_config(local_host, user, dest.transport, accept_refer=True)
        if codecs:
            config = replace(config, codecs=tuple(codecs))
        core = CallCore.outgoing(str(uri), from_aor, config, credentials=credentials, route=route, headers=headers)
        name = line.account.name if line is not None else ""
        call = OutgoingCall(self, core, dest, local_host, account=name, referred_by=self._referred_by(name),
                            on_progress=on_progress)
        self._calls[call.call_id] = call
        logger.info("call %s to %s: dialling via %s:%s%s", call.call_id, call.to_uri, uri_host(dest.host), dest.port,
                    f" on account {name}" if name else "")
        self.drive(call, core.dial(local_host, rtp_port, self._now(), ring_timeout=ring_timeout))
        await call.established()
        return call

    def _dial_line(self, account: str | None) -> _Line | None:
        if account is None:
            return next(iter(self._lines.values()), None)
        line = self._lines.get(account)
        if line is None:
            raise ValueError(f"no SIP account named {account!r} (known: {', '.join(self._lines) or 'none'})")
        return line

    def _dial_uri(self, target: str) -> SipUri:
        """A SIP URI, or a bare extension at our domain (with the registrar's port when the domain is its host)."""
        text = target.strip()
        try:
            if ":" not in text:
                if not text or not all(c.isalnum() or c in "+*#._-" for c in text):
                    raise SipParseError("not an extension")
                host = uri_host(self.domain)
                if self.settings.registrar:
                    registrar_host, port = _split_hostport(self.settings.registrar, 0)
                    if port and registrar_host.strip("[]") == self.domain.strip("[]"):
                        host += f":{port}"
                text = f"{self._scheme}:{text}@{host}"
            return parse_target_uri(text)
        except SipParseError as exc:
            raise DialError("failed", 0, f"bad target {target[:80]!r}: {exc.reason}") from None

    async def _first_hop(self, uri: SipUri) -> tuple[Peer, list[str]]:
        """Where our INVITE goes, and its pre-loaded Route (an outbound proxy's)."""
        proxy = self.settings.outbound_proxy
        try:
            if proxy:
                host, port = _split_hostport(proxy, self._default_port)
                peer = Peer(self.transport_name, await self._resolve(host), port)
                return peer, [f"<{self._scheme}:{uri_host(host)}:{port};lr>"]
            if self._registrar is not None:
                return self._registrar, []
            host, uri_port = uri.host_port
            return Peer(self.transport_name, await self._resolve(host), uri_port or self._default_port), []
        except OSError as exc:
            raise DialError("failed", 0, f"cannot resolve the next hop: {exc}") from None

    # -- registration ----------------------------------------------------------------------------

    @property
    def registration_state(self) -> str:
        """The first account's registration state: unregistered, registering, registered, refreshing,
        backing-off, failed or unregistering."""
        line = next(iter(self._lines.values()), None)
        return line.state if line is not None else UNREGISTERED

    def forget_calls(self) -> None:
        """Drop every call without a word to the far end (``stop`` then sends no BYE for them): a test's or a
        benchmark's phone that vanishes, as a real one behind a restarted PBX does."""
        self._calls.clear()

    @property
    def registration_states(self) -> dict[str, str]:
        """Each account's registration state, by account name (empty in direct mode)."""
        return {name: line.state for name, line in self._lines.items()}

    @property
    def registration_failures(self) -> dict[str, Counter[str]]:
        """Each account's REGISTER attempts that did not register, by reason (``Registration.failed``): counts
        that only grow, for as long as the user agent runs."""
        return {name: line.registration.failed for name, line in self._lines.items()
                if line.registration is not None}

    def account_for(self, request: SipRequest) -> str:
        """The name of the account an INVITE is addressed to: by the Request-URI's user part, else the
        To's (a proxy may rewrite the Request-URI to our Contact); "" when neither is an account's."""
        by_user = {account.username: account.name for account in self.accounts}
        users: list[str | None] = []
        with contextlib.suppress(SipParseError):
            users.append(SipUri.parse(request.uri).user)
        with contextlib.suppress(SipParseError):
            users.append(request.to_addr.uri.user)
        return next((by_user[user] for user in users if user in by_user), "")

    def user_of(self, account: str) -> str:
        """The user part we use on a call that came in on ``account`` ("" : ``settings.username``)."""
        line = self._lines.get(account)
        return line.account.username if line is not None else self.settings.username

    def _new_registration(self, account: SipAccount) -> Registration:
        s = self.settings
        registrar_uri = f"{self._scheme}:{uri_host(self.domain)}"
        registrar_port = _split_hostport(s.registrar or "", 0)[1]
        if registrar_port:
            registrar_uri += f":{registrar_port}"
        return Registration(RegistrationConfig(
            registrar_uri=registrar_uri, aor=f"{self._scheme}:{account.username}@{uri_host(self.domain)}",
            contact=self._contact(user=account.username), via_sent_by=self._sent_by(),
            transport=self.transport_name,
            credentials=DigestCredentials(account.auth_user or account.username, account.password),
            expires=account.expires, user_agent=s.user_agent, allow=ALLOW,
            backoff_jitter=0.5,  # 50-100 % of each delay: agents on one PBX do not retry in step after its restart
            account=account.name if len(self.accounts) > 1 else "",  # one account: the lines stay as they were
        ))

    async def _exchange(self, registration: Registration, request: SipRequest | None) -> None:
        """Send REGISTERs until the machine has nothing more to say (auth retries, 423 retries)."""
        assert self._registrar is not None
        while request is not None:
            try:
                response = await self._send_request(request, self._registrar)
            except (SipTimeout, SipBuildError) as exc:
                # SipBuildError: a REGISTER we cannot serialize must back off like a lost one, not end the
                # account's task (and with it every later attempt) in silence.
                registration.log.warning("REGISTER to %s: %s", self.settings.registrar, exc)
                self.registration_problem = str(exc)
                registration.on_timeout(self._now())
                return
            request = registration.on_response(response, self._now())
            if request is None and registration.problem is not None:
                self.registration_problem = registration.problem  # a 200 granting nothing says so too
        if registration.state == REGISTERED:
            self.registration_problem = None

    async def _register_loop(self, line: _Line) -> None:
        """One account's registration: refreshes and back-off run on their own, whatever the others do."""
        registration = line.registration
        assert registration is not None
        await self._exchange(registration, registration.start(self._now()))
        while True:
            if registration.state == REGISTERED and not self._registrar_reachable():
                # The connection closed while the 200 OK was on its way to us: what _on_connection_closed
                # does for a registration already in place.
                self._registrar_lost([line])
            if registration.state == REGISTERED:
                line.registered.set()
            elif registration.state in (BACKING_OFF, FAILED):
                line.registered.clear()
            deadline = registration.next_deadline
            if deadline is None:
                return
            line.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(line.wake.wait(), max(0.0, deadline - self._now()))
            await self._exchange(registration, registration.timeout(self._now()))

    async def _unregister(self, line: _Line) -> None:
        registration = line.registration
        if registration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exchange(registration, registration.stop(self._now())), 3.0)
        line.registered.clear()

    def _on_connection_closed(self, peer: Peer) -> None:
        """A connection we opened has ended (the registrar closed it, restarted, or stopped answering pings).

        Transactions waiting on it fail now rather than at timer F (RFC 3261 18.4: a transport error). When it
        carried our registrations, the registrar can no longer reach us through it: every account registers
        again at once, over a new connection (RFC 5626 4.4: the flow failed)."""
        self._on_transport_error(peer, ConnectionError("connection closed"))
        if peer == self._registrar and not self._stopping:
            self._registrar_lost([line for line in self._lines.values() if line.state == REGISTERED])

    def _registrar_reachable(self) -> bool:
        return self._registrar is None or self._transport is None or self._transport.can_reach(self._registrar)

    def _registrar_lost(self, lines: list[_Line]) -> None:
        if not lines:
            return
        assert self._registrar is not None
        logger.warning("connection to the registrar %s lost: registering again over a new one",
                       host_port(self._registrar.host, self._registrar.port))
        self.reconnects += 1
        for line in lines:
            assert line.registration is not None
            line.registration.connection_lost(self._now())
            line.registered.clear()
            line.wake.set()

    # -- messages out ----------------------------------------------------------------------------

    @property
    def _scheme(self) -> str:
        """``sips`` when configured (TLS only): every hop to us must then be TLS (RFC 3261 19.1.2)."""
        return "sips" if self.transport_name == "TLS" and self.settings.tls.sips else "sip"

    def _contact_uri(self, host: str | None = None, user: str | None = None) -> str:
        host, port = host or self._advertised[0], self._advertised[1]
        transport = "" if self.transport_name == "UDP" else f";transport={self.transport_name.lower()}"
        if self._scheme == "sips":
            transport = ""  # sips: already says TLS; RFC 5630 deprecates ;transport=tls with it
        # Direct mode may run without a username: then the Contact has no user part at all. Each account
        # registers (and answers) with its own user part, so the PBX routes its calls back to it.
        user = self.settings.username if user is None else user
        return f"{self._scheme}:{user + '@' if user else ''}{uri_host(host)}:{port}{transport}"

    def _contact(self, host: str | None = None, user: str | None = None) -> str:
        return f"<{self._contact_uri(host, user)}>"

    def _sent_by(self, host: str | None = None) -> str:
        return f"{uri_host(host or self._advertised[0])}:{self._advertised[1]}"

    async def _send_request(self, request: SipRequest, dest: Peer,
                            on_provisional: Callable[[SipResponse], None] | None = None,
                            on_final: Callable[[SipResponse], None] | None = None) -> SipResponse:
        """Run a client transaction; the final response, or SipTimeout (timer F, unreachable peer).
        ``on_provisional`` is told each 1xx, ``on_final`` the final response, both as they are read."""
        if self._transport is None:
            raise SipTimeout("transport closed")
        self._transport_errors.pop(dest, None)  # an older failure must not explain this request's fate
        tx = ClientTransaction(request, self._transport.reliable)
        key = tx.key
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()

        def on_event(event: ResponseEvent | TimeoutEvent | Terminated) -> None:
            if isinstance(event, ResponseEvent):
                if event.response.status >= 200:
                    if not future.done():
                        future.set_result(event.response)
                        if on_final is not None:
                            on_final(event.response)
                elif on_provisional is not None and not future.done():
                    on_provisional(event.response)
            elif isinstance(event, TimeoutEvent):
                if not future.done():
                    where = host_port(dest.host, dest.port)
                    reason = self._transport_errors.get(dest)
                    future.set_exception(SipTimeout(f"{request.method} to {where} failed: {reason}" if reason
                                                    else f"no answer to {request.method} from {where}"))
            elif self._client.get(key, (None,))[0] is tx:
                del self._client[key]

        self._client[key] = (tx, dest, on_event)
        self._run(tx, tx.start(self._now()), dest, on_event)
        return await future

    async def _end_fork(self, call: CallFront, fork: EndFork) -> None:
        """ACK another branch's 2xx and BYE its dialog (with credentials when challenged); the BYE's final
        answer is only logged."""
        try:
            dest = await self._dialog_peer(call, fork.dialog)
            if self._transport is not None:
                self._transport.send(fork.ack.to_bytes(), dest)
            if fork.bye is not None:
                response = await self._send_request(fork.bye, dest)
                retry = call.core.fork_bye_challenged(fork, response)
                if retry is not None:  # a PBX that authenticates BYE: once more with credentials
                    response = await self._send_request(retry, dest)
                logger.info("call %s: the other branch's BYE answered %d", call.call_id, response.status)
        except (SipTimeout, OSError, SipBuildError) as exc:
            logger.info("call %s: the other branch not ended: %s", call.call_id, exc)

    async def _dialog_peer(self, call: CallFront, dialog: Dialog | None = None) -> Peer:
        """Where the call's in-dialog requests go (or those of ``dialog``, another branch of its INVITE): the
        next hop (first route, else the remote target)."""
        dialog = dialog or call.core.dialog
        assert dialog is not None
        host, port = dialog.next_hop().host_port
        if (self.transport_name != "UDP" and not dialog.route_set and self._transport is not None
                and self._transport.can_reach(call.peer)):
            return call.peer  # reuse the connection the INVITE went over, while it is open
        return Peer(self.transport_name, await self._resolve(host), port or self._default_port)

    @staticmethod
    def _response_peer(request: SipRequest, peer: Peer) -> Peer:
        """Where responses to ``request`` go: always the address it came from (and over TCP the same
        connection). RFC 3261 18.2.2 would send to the Via's sent-by port when the client did not ask for
        rport; a Via is written by the sender, though, and following it let one forged request make us send
        a dozen responses to a third party. Every PBX and phone listens where it sends from (symmetric
        signalling), and the Via we answer records the address we used (``received``/``rport``)."""
        return peer

    def _decorate(self, request: SipRequest, status: int, response: SipResponse,
                  extra: list[tuple[str, str]] | None) -> None:
        """The headers every response of ours carries for its method (Allow, Accept, Contact, Server)."""
        contact = None
        if request.method == "OPTIONS" and status < 300:
            via = request.vias[0]  # its host may be an IPv6 reference: brackets off, or it is taken for a name
            contact = self._contact(self.advertised_host((via.received or via.host).strip("[]")))
        decorate(request, status, response, self.settings.user_agent, contact, extra)

    def _respond(self, request: SipRequest, status: int, *, reason: str | None = None,
                 extra: list[tuple[str, str]] | None = None) -> None:
        """Answer through the request's server transaction (outside any call: the 100 to a new INVITE)."""
        to_tag = None if request.to_addr.tag or status == 100 else new_tag()
        response = build_response(request, status, reason, to_tag=to_tag)
        self._decorate(request, status, response, extra)
        self._send_response(request, response)

    def _send_response(self, request: SipRequest, response: SipResponse) -> None:
        """Send a complete response through its request's server transaction."""
        entry = self._server.get(server_key(request))
        if entry is None:
            logger.debug("no server transaction for %s %s", request.method, request.call_id)
            return
        tx, dest = entry
        try:
            actions = tx.respond(response, self._now())
        except SipBuildError as exc:  # a value that would break the message: nothing goes out
            logger.error("%s %s: response %d not sent: %s", request.method, request.call_id, response.status, exc)
            actions = tx.respond(build_response(request, 500, to_tag=response.to_addr.tag), self._now())
        self._run(tx, actions, dest, self._server_events(tx))

    def _respond_statelessly(self, request: SipRequest, peer: Peer, status: int, *, reason: str | None = None,
                             extra: list[tuple[str, str]] | None = None) -> None:
        """Answer without a transaction (RFC 3261 8.2.7): what is not part of a call (OPTIONS, a refused
        INVITE, a request for no dialog) costs no memory, however many arrive. A retransmission gets the
        same response again: its To tag is derived from the request, not drawn at random."""
        if self._transport is None:
            return
        to_tag = None if request.to_addr.tag else self._stateless_tag(request)
        response = build_response(request, status, reason, to_tag=to_tag)
        self._decorate(request, status, response, extra)
        try:
            data = response.to_bytes()
        except SipBuildError as exc:
            logger.error("%s %s: response %d not sent: %s", request.method, request.call_id, status, exc)
            return
        self._transport.send(data, self._response_peer(request, peer))

    def _stateless_tag(self, request: SipRequest) -> str:
        key = f"{request.branch}|{request.call_id}|{request.from_addr.tag}".encode()
        return hashlib.blake2b(key, key=self._tag_secret, digest_size=6).hexdigest()

    def _server_events(self, tx: ServerTransaction) -> EventHandler:
        def on_event(event: ResponseEvent | TimeoutEvent | Terminated) -> None:
            if isinstance(event, Terminated):
                key = tx.key
                if self._server.get(key, (None,))[0] is tx:
                    del self._server[key]
                    self._budget.release(key)
            elif isinstance(event, TimeoutEvent) and event.timer == "H":
                logger.info("%s from %s: no ACK for our final response", tx.request.method,
                            tx.request.from_addr.uri)

        return on_event

    # -- messages in -----------------------------------------------------------------------------

    def _on_transport_error(self, peer: Peer, exc: Exception) -> None:
        self._transport_errors[peer] = str(exc)
        if len(self._transport_errors) > 64:  # one per destination we sent to: bounded all the same
            self._transport_errors.pop(next(iter(self._transport_errors)))
        for tx, dest, on_event in list(self._client.values()):
            if dest == peer:
                self._run(tx, tx.transport_error(), dest, on_event)

    def _on_message(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        try:
            if isinstance(message, SipResponse):
                self._on_response(message, peer)
            else:
                self._on_request(message, peer)
        except SipParseError as exc:  # a header the parser accepted leniently but we cannot use
            if self._throttle.allow("unusable", peer.host, self._now()):
                logger.info("unusable message from %s:%s: %s (logged once a minute per source)", peer.host,
                            peer.port, exc.reason)

    def _on_response(self, response: SipResponse, peer: Peer) -> None:
        entry = self._client.get(client_key(response))
        if entry is None:
            # Past its transaction, only a 2xx to an INVITE may come again (its core re-sends the ACK); any
            # other response without a transaction of ours is a stranger's.
            call = self._calls.get(response.call_id) if 200 <= response.status < 300 \
                and response.cseq.method == "INVITE" else None
            if call is not None:
                self.drive(call, call.core.receive_response(response, self._now()))
            else:
                logger.debug("stray response %s %s", response.status, response.cseq)
            return
        tx, dest, on_event = entry
        self._run(tx, tx.receive(response, self._now()), dest, on_event)

    def _on_request(self, request: SipRequest, peer: Peer) -> None:
        """Screen a request before it may cost state: a stranger's is refused; what is not part of a call
        is answered statelessly; only an admitted INVITE or a request in a call's dialog gets a server
        transaction, and those are bounded per source (``settings.limits``)."""
        if not self.policy.trusts(peer.host) and not self._in_known_dialog(request):
            self._refuse_stranger(request, peer)
            return
        key = server_key(request)
        entry = self._server.get(key)
        if entry is not None:  # a retransmission, or the ACK of a non-2xx final response
            tx, dest = entry
            self._run(tx, tx.receive(request, self._now()), dest, self._server_events(tx))
            return
        if request.method == "ACK":
            self._on_2xx_ack(request)
            return
        call = self._calls.get(request.call_id)
        if call is not None and call.core.is_retransmitted_invite(request):
            return  # INVITE retransmitted after our 2xx: the 2xx retransmitter answers it
        if self._transport is None:
            return
        stamp_source(request, peer.host, peer.port)
        if request.method == "CANCEL":
            self._on_cancel(request, peer)
            return
        try:
            status, extra, offer = self._screen(request, call, peer)
        except SipParseError as exc:
            if self._throttle.allow("bad-request", peer.host, self._now()):
                logger.info("bad %s from %s:%s: %s (logged once a minute per source)", request.method,
                            peer.host, peer.port, exc.reason)
            self._respond_statelessly(request, peer, 400, reason=exc.reason)
            return
        if status:
            self._respond_statelessly(request, peer, status, extra=extra)
            # A 422 refuses no call: the PBX sends the INVITE again at once with our Min-SE (RFC 4028 6).
            if request.method == "INVITE" and not request.to_addr.tag and status != 422 \
                    and self.on_refused is not None:
                self.on_refused(status)
            return
        shed = self._budget.admit(key, peer.host, _approximate_size(request))
        if shed is not None:
            self._shed(shed, peer, request.method)
            if request.method == "BYE" and call is not None:
                # Over the limit, a call can still be ended: a flood must not keep a dead call up.
                actions = call.core.peer_hung_up(request, self._now())
                if actions:
                    self._respond_statelessly(request, peer, 200)
                    self.drive(call, actions)
            return
        tx = ServerTransaction(request, self._transport.reliable, self._now())
        self._server[key] = (tx, self._response_peer(request, peer))
        self._arm(tx, peer, self._server_events(tx))  # its guard timer runs from the start
        if call is not None and request.to_addr.tag:
            self.drive(call, call.core.receive_request(request, self._now()))
        else:
            self._on_invite(request, peer, offer)

    def _screen(self, request: SipRequest, call: CallFront | None,
                peer: Peer) -> tuple[int, list[tuple[str, str]] | None, SessionDescription | None]:
        """The status to answer statelessly with (0: the request belongs to a call and needs a transaction),
        extra headers for it, and a new INVITE's SDP offer (None for a late offer)."""
        method = request.method
        if request.to_addr.tag:
            if call is None or not call.core.matches(request) or (call.state == "ended" and method != "BYE"):
                return 481, None, None
            return 0, None, None
        if method == "OPTIONS":
            return 200, None, None
        if method in ("BYE", "INFO", "NOTIFY", "REFER", "UPDATE", "PRACK"):
            return 481, None, None
        if method != "INVITE":
            return (405 if method in ("REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE") else 501), None, None
        if call is not None:  # a second INVITE with a call's Call-ID and no To tag (RFC 3261 8.2.2.2)
            return 482, None, None
        return self._admit(request, peer)

    def _in_known_dialog(self, request: SipRequest) -> bool:
        """A request in one of our dialogs (its Call-ID and both tags, which a stranger cannot guess) is taken
        from any address: the dialog's far end may be a phone the PBX let talk to us directly (a NOTIFY
        about a transfer, a BYE)."""
        if not request.to_addr.tag:
            return False
        call = self._calls.get(request.call_id)
        return call is not None and call.core.matches(request)

    def _refuse_stranger(self, request: SipRequest, peer: Peer) -> None:
        """A request from an address that may not call us: an INVITE gets one stateless 403 (a misconfigured
        PBX then sees why, and a spoofed source gets no more than it sent: no 100, no retransmissions);
        anything else is dropped unanswered, so a scanner learns nothing."""
        self._shed("untrusted", peer, request.method)
        if request.method != "INVITE" or request.to_addr.tag:
            return
        stamp_source(request, peer.host, peer.port)
        self._respond_statelessly(request, peer, 403)
        if self.on_refused is not None:
            self.on_refused(403)

    def _shed(self, reason: str, peer: Peer, method: str) -> None:
        """Count a request dropped without state; log it once a minute per source and reason."""
        if self.on_shed is not None:
            self.on_shed(reason)
        if self._throttle.allow(reason, peer.host, self._now()):
            what = "not trusted (sip.trusted_hosts)" if reason == "untrusted" else f"over the {reason} limit"
            logger.warning("%s from %s:%s dropped: %s (logged once a minute per source)", method, peer.host,
                           peer.port, what)

    def _on_2xx_ack(self, request: SipRequest) -> None:
        call = self._calls.get(request.call_id)
        if call is not None and call.core.matches(request):
            self.drive(call, call.core.receive_request(request, self._now()))

    def _on_cancel(self, request: SipRequest, peer: Peer) -> None:
        """CANCEL is answered statelessly; a CANCEL for a ringing call ends its INVITE with 487."""
        target = self._server.get(cancel_target_key(request))
        call = self._calls.get(request.call_id)
        if target is None or call is None:
            self._respond_statelessly(request, peer, 481)
            return
        self._respond_statelessly(request, peer, 200)
        self.drive(call, call.core.cancelled(self._now()))

    def _admit(self, request: SipRequest,
               peer: Peer) -> tuple[int, list[tuple[str, str]] | None, SessionDescription | None]:
        """Whether a new INVITE may become a call: (0, None, its offer) or (the status to refuse it with,
        extra headers, None). The offer is None for a late offer (no body)."""
        missing = unsupported(request)
        if not self.policy.is_ours(SipUri.parse(request.uri).user):
            # Our PBX may route any number to any extension; a call to another user part is not ours to
            # answer (a bot dialling premium numbers through us, or a PBX misconfiguration).
            if self._throttle.allow("not-ours", peer.host, self._now()):
                logger.warning("INVITE for %s from %s refused: not our user part (sip.username, sip.aliases)",
                               request.uri[:80], peer.host)
            return 404, None, None
        if self._stopping or self.active_calls >= self.settings.max_calls:
            if self._throttle.allow("busy", peer.host, self._now()):
                logger.info("INVITE %s refused: busy (%d calls; logged once a minute per source)",
                            request.call_id[:80], self.active_calls)
            return 486, None, None
        if missing:
            return 420, [("Unsupported", ", ".join(missing))], None
        try:
            timer_terms(request.headers, self._timer_policy)
        except IntervalTooSmall as exc:
            if self._throttle.allow("too-brief", peer.host, self._now()):
                logger.info("INVITE %s: session interval below %d s, answered 422 (logged once a minute per "
                            "source)", request.call_id[:80], exc.min_se)
            return 422, [("Min-SE", str(exc.min_se))], None
        # The dialog's remote target and route set are read only when we send in it (a BYE): one that cannot be
        # parsed (a malformed IPv6 reference) must refuse the call now, not fail our hang-up later.
        contacts = request.headers.get_all("Contact")
        if not contacts:
            raise SipParseError("INVITE without Contact")
        NameAddr.parse(contacts[0])
        for route in request.headers.get_all("Record-Route"):
            parse_name_addr_list(route)
        if not request.body.strip():
            return 0, None, None
        try:
            offer = SessionDescription.parse(request.body)
            address = _offered_address(offer)
        except SdpError as exc:
            if self._throttle.allow("bad-offer", peer.host, self._now()):
                logger.info("INVITE %s without a usable SDP offer: %s", request.call_id[:80], exc)
            return 488, None, None
        if address is not None and not media_reachable(self.settings.listen_host, address):
            if self._throttle.allow("address-family", peer.host, self._now()):
                logger.warning("INVITE %s refused (488): its media address %s is of another IP family than "
                               "sip.listen %s, from which RTP is sent (listen on \"[::]\" for both)",
                               request.call_id[:80], address[:60], self.settings.listen_host)
            return 488, [("Warning", INCOMPATIBLE_ADDRESS)], None
        return 0, None, offer

    def _media_host(self, local_host: str, offer: SessionDescription | None) -> str:
        """The address for our SDP answer: ``local_host`` (the one Via and Contact carry), unless a dual-stack
        agent was offered media in the other family than the signalling's (an SBC with IPv6 signalling and an
        IPv4 media relay): then our address of the offer's family, towards it, since a media stack of one
        family cannot send to an address of the other. ``public_address`` is always taken as it is."""
        address = _offered_address(offer) if offer is not None else None
        if self.settings.public_host or address is None or not _is_ip(address) or not _is_ip(local_host):
            return local_host
        offered, ours = ipaddress.ip_address(normalise_ip(address)), ipaddress.ip_address(local_host)
        if offered.is_unspecified or offered.version == ours.version:
            return local_host
        return self.advertised_host(str(offered))

    def _on_invite(self, request: SipRequest, peer: Peer, offer: SessionDescription | None) -> None:
        self._respond(request, 100)
        local_host = self.advertised_host(peer.host)
        account = self.account_for(request)
        core = CallCore.incoming(request, self._call_config(local_host, self.user_of(account), peer.transport), offer)
        # IncomingCall.local_host goes into the SDP answer only (agent.py); Via and Contact are in the core.
        call = IncomingCall(self, core, peer, self._media_host(local_host, offer),
                            identify(request, self.settings.context_headers),
                            account=account, referred_by=self._referred_by(account))
        self._calls[call.call_id] = call
        self.drive(call, core.ring(self._now()))
        logger.info("call %s from %s ringing%s", call.call_id, call.from_uri,
                    f" on account {account}" if account else "")
        self._spawn(self._run_on_call(call))

    async def _run_on_call(self, call: IncomingCall) -> None:
        try:
            await self.on_call(call)
        except Exception:
            logger.exception("call %s: on_call failed", call.call_id)
            if call.state == "ringing":
                self.drive(call, call.core.end(500, self._now(), "error"))
            elif call.state != "ended":
                await call.hangup()

    def _call_ended(self, call: CallFront) -> None:
        # Keep the dialog a while so retransmitted BYEs and late ACKs still find it.
        asyncio.get_running_loop().call_later(32.0, self._forget_call, call)

    def _forget_call(self, call: CallFront) -> None:
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        if call.core.role == "uac":
            # An INVITE of ours that a provisional response put in "proceeding" has no timer of its own: when
            # no final response came (not even the 487 to our CANCEL), its transaction and the task awaiting it
            # would live as long as the process. The call gave it up 64*T1 after the CANCEL (RFC 3261 9.1);
            # now the transaction goes too.
            for tx, dest, on_event in list(self._client.values()):
                if tx.is_invite and tx.request.call_id == call.call_id:
                    self._run(tx, tx.transport_error(), dest, on_event)


def _offered_address(offer: SessionDescription) -> str | None:
    """The connection address of the offer's first audio stream (None: no stream we could take)."""
    for media in offer.media:
        if media.media == "audio" and media.port != 0:
            return media.connection_address or offer.connection_address
    return None


def srtp_policy(settings: UaSettings, transport: str) -> SrtpPolicy:
    """What a call may negotiate for SRTP: ``media.srtp`` and its suites, with SDES keys taken only from
    signalling that protects them (TLS, the transport of the INVITE), unless the operator allowed them over
    any (``media.srtp_over_insecure_signalling``)."""
    return SrtpPolicy(mode=settings.srtp, suites=tuple(settings.srtp_suites),
                      keys_allowed=transport == "TLS" or settings.srtp_over_insecure_signalling)


__all__ = [
    "DIAL_OUTCOMES",
    "DialError",
    "IncomingCall",
    "OutgoingCall",
    "SipAccount",
    "SipTimeout",
    "UaSettings",
    "UserAgent",
    "srtp_policy",
]
