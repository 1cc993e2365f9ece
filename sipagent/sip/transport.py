"""asyncio SIP transports (RFC 3261 section 18): UDP datagrams, TCP and TLS streams.

A transport only moves bytes: it parses what arrives with the sans-I/O core, answers hopeless requests
with ``400`` (or drops them), and hands each message to the user agent together with the :class:`Peer`
it came from. Sending a response back to that ``Peer`` reuses the same TCP connection, as RFC 3261
18.2.2 asks. Handler exceptions are logged and swallowed so one bad message never stops the loop, and
``send`` never raises: a failure goes to ``on_error``.

What one peer may cost is bounded by :class:`TransportLimits`: message size on both transports; on TCP
the number of accepted connections (in total and per source address), how long one may stay silent and
how long a message may take to arrive. Whatever is refused for a limit is "shed": counted in ``shed``
and reported to ``on_shed`` with one of the :data:`ShedReason` labels.

Connections we open ourselves (to the registrar, a dialog's next hop) are kept alive with RFC 5626 CRLF
pings (keepalive.py) and reported to ``on_closed`` when they end, so that the user agent can renew the
registration that lived on one. A TLS connection that cannot be set up is reported to ``on_error`` as a
:class:`~sipagent.sip.tls.TlsHandshakeError` naming the certificate problem.

Wire tracing: set the ``sipagent.sip.wire`` logger to DEBUG to log every message with ``>`` (sent) or
``<`` (received); digest credentials are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from sipagent.errors import SipParseError
from sipagent.sip.admission import LogThrottle
from sipagent.sip.keepalive import DEAD, PING_BYTES, UNSUPPORTED, CrlfKeepalive
from sipagent.sip.message import (
    MAX_MESSAGE,
    MESSAGE_TOO_LARGE,
    SipRequest,
    SipResponse,
    StreamFramer,
    bad_request_for,
    head_within,
    is_keepalive,
    parse_message,
)
from sipagent.sip.tls import TlsHandshakeError, TlsSettings, client_context, describe_handshake_error, server_context
from sipagent.sip.uri import host_port

logger = logging.getLogger(__name__)
wire_logger = logging.getLogger("sipagent.sip.wire")

# a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY|... ("inline" in any case: ABNF literals are case-insensitive)
_SDES_KEY = re.compile(rb"(\binline:)[A-Za-z0-9+/]+=*", re.IGNORECASE)
_AUTH_LINE = re.compile(
    rb"^((?:Proxy-)?Authorization:[ \t]*\S+)[^\r\n]*", re.IGNORECASE | re.MULTILINE
)
_USERNAME = re.compile(rb'username="[^"]*"', re.IGNORECASE)
_READ_SIZE = 65536
# Timers may fire a little before their time (uvloop rounds them to whole milliseconds): a deadline this
# close counts as passed rather than re-arming for a sliver.
_TIMER_SLACK = 0.005
_CONNECT_TIMEOUT = 10.0

# What a stranger's datagram may start with to be parsed at all: an INVITE (the UA answers 403), a response
# (matched to our own transactions), and the requests a dialog's far end may send us from its own address.
_FROM_ANYONE = (b"INVITE ", b"SIP/2.0 ", b"ACK ", b"BYE ", b"CANCEL ", b"INFO ", b"NOTIFY ", b"REFER ",
                b"UPDATE ", b"PRACK ")
ShedReason = Literal[
    "untrusted", "too-large", "tcp-connections", "tcp-connections-per-source", "tcp-idle", "tcp-slow-message",
    "unframeable", "tls-handshake",
]
SHED_REASONS: tuple[ShedReason, ...] = get_args(ShedReason)


@dataclass(frozen=True)
class TransportLimits:
    """What one peer may cost the agent; configured as ``sip.limits.*`` with the same names."""

    max_message_bytes: int = 32768  # header + body; UDP and TCP
    tcp_connections: int = 256  # accepted connections, total
    tcp_connections_per_source: int = 16  # accepted connections per remote IP
    tcp_idle_s: float = 300.0  # an accepted connection with no bytes for this long is closed
    tcp_message_s: float = 10.0  # a message must complete within this long after its first byte

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be positive")
        if self.max_message_bytes > MAX_MESSAGE:
            raise ValueError(f"max_message_bytes must be at most {MAX_MESSAGE}")


@dataclass(frozen=True)
class Peer:
    """The far end of one message: transport name ("UDP", "TCP", "TLS") and the socket address.

    For stream transports ``host``/``port`` are those of the actual connection, so replying to a
    ``Peer`` goes back over the connection the request came in on.
    """

    transport: str
    host: str
    port: int


MessageHandler = Callable[[SipRequest | SipResponse, Peer], None]
ErrorHandler = Callable[[Peer, Exception], None]
ShedHandler = Callable[[str], None]
ClosedHandler = Callable[[Peer], None]


def redact(data: bytes) -> bytes:
    """Hide digest credentials (all but the username) and SDES media keys (``inline:KEY``) in a traced
    message, whatever handler its log record then goes to."""

    def keep_username(m: re.Match[bytes]) -> bytes:
        user = _USERNAME.search(m.group(0))
        return m.group(1) + b" " + (user.group(0) if user else b"") + b", <redacted>"

    return _SDES_KEY.sub(rb"\1<redacted>", _AUTH_LINE.sub(keep_username, data))


def _trace(direction: str, peer: Peer, data: bytes) -> None:
    if wire_logger.isEnabledFor(logging.DEBUG):
        text = redact(data).decode("utf-8", "replace").rstrip("\r\n")
        wire_logger.debug("%s %s %s:%s (%d bytes)\n%s", direction, peer.transport, peer.host, peer.port,
                          len(data), text)


def _destination(peer: Peer, family: int | None = None) -> tuple[str, int]:
    """The socket address for ``peer`` on a socket of ``family``; ValueError unless it is an IP address the
    socket can reach and a valid port.

    Names are the user agent's to resolve, off the loop: the standard loop's ``sendto`` would resolve one
    synchronously, and a port out of range closes its UDP socket (uvloop wraps it around instead). Peers
    are plain IPv4 addresses even on a dual-stack socket (see ``unmapped``): uvloop refuses to send to
    one there ("socket family mismatch"), so it goes out as the IPv4-mapped address the kernel expects.
    """
    ip = ipaddress.ip_address(peer.host)
    if not 0 < peer.port < 65536:
        raise ValueError(f"port {peer.port} out of range")
    if family == socket.AF_INET6 and ip.version == 4:
        return f"::ffff:{ip}", peer.port
    if family == socket.AF_INET and ip.version == 6:
        if ip.ipv4_mapped is None:
            raise ValueError(f"{peer.host} is an IPv6 address and sip.listen an IPv4 one")
        return str(ip.ipv4_mapped), peer.port
    return peer.host, peer.port


def unmapped(host: str) -> str:
    """A source address as the rest of the agent sees it: an IPv4 peer of a dual-stack socket
    (``::ffff:a.b.c.d``, as the kernel writes it) as plain IPv4. Its Via ``received``, the trust checks, the
    per-source limits and the address we advertise to it are then those of the IPv4 host it is."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _is_wildcard_v6(host: str) -> bool:
    return host.strip("[]") == "::"


class SipTransport:
    """Common part of the transports: parse, answer unparsable requests, dispatch, trace, shed."""

    name = "UDP"
    reliable = False

    def __init__(self, host: str, port: int, on_message: MessageHandler, on_error: ErrorHandler | None = None,
                 *, limits: TransportLimits | None = None, on_shed: ShedHandler | None = None) -> None:
        self.bind_host = host
        self.bind_port = port
        self.on_message = on_message
        self.on_error = on_error
        self.on_shed = on_shed
        self.limits = limits or TransportLimits()
        self.shed: Counter[str] = Counter()  # shed events by reason, since start
        self.local_address: tuple[str, int] = (host, port)
        # The UA's trust policy (a source address in, trusted or not out). Only trusted sources get a 400
        # for a message that does not parse (a stranger's garbage is dropped unanswered like the rest of
        # what strangers send), and strangers filling the TCP connection cap cannot lock the PBX out.
        self.trusts: Callable[[str], bool] = lambda host: True
        self._log_throttle = LogThrottle()

    async def start(self) -> None:
        raise NotImplementedError

    def can_reach(self, peer: Peer) -> bool:
        """Whether sending to ``peer`` reaches it as it is: always over UDP; over TCP, while the connection
        that ``peer`` names is still open (a closed one's ephemeral port cannot be connected to again)."""
        return True

    def send(self, data: bytes, peer: Peer) -> None:
        """Queue ``data`` for ``peer``; failures are reported through ``on_error``, never raised."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _received(self, data: bytes, peer: Peer) -> None:
        if is_keepalive(data):
            return
        _trace("<", peer, data)
        if not data.startswith(_FROM_ANYONE) and not self.trusts(peer.host):
            # Scanners' OPTIONS and REGISTERs, and garbage, from a stranger: dropped before they cost a parse.
            self._shed("untrusted", peer)
            return
        try:
            message = parse_message(data)
        except SipParseError as exc:
            reply = bad_request_for(data, exc.reason) if self.trusts(peer.host) else None
            if self._log_throttle.allow("unparsable", peer.host, time.monotonic()):
                logger.info("unparsable message from %s:%s (%s): %s (logged once a minute per source)",
                            peer.host, peer.port, exc.reason, "answered 400" if reply else "dropped")
            if reply is not None:
                self.send(reply, peer)
            return
        try:
            self.on_message(message, peer)
        except Exception:  # a handler bug must not take the transport down
            logger.exception("error handling SIP message from %s:%s", peer.host, peer.port)

    def _failed(self, peer: Peer, exc: Exception) -> None:
        logger.info("%s send to %s:%s failed: %s", self.name, peer.host, peer.port, exc)
        if self.on_error is not None:
            try:
                self.on_error(peer, exc)
            except Exception:
                logger.exception("error in transport error handler")

    def _shed(self, reason: ShedReason, peer: Peer) -> None:
        # Debug only: a flood must not become a flood of log lines; operators watch the counter.
        logger.debug("%s %s:%s shed: %s", self.name, peer.host, peer.port, reason)
        self.shed[reason] += 1
        if self.on_shed is not None:
            try:
                self.on_shed(reason)
            except Exception:
                logger.exception("error in transport shed handler")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner._datagram(data, Peer("UDP", unmapped(str(addr[0])), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on an unconnected socket cannot be tied to a destination: log only.
        logger.debug("UDP socket error: %s", exc)


class UdpTransport(SipTransport):
    """SIP over UDP on one socket, used for both sending and receiving (symmetric, for NAT and rport)."""

    name = "UDP"

    def __init__(self, host: str, port: int, on_message: MessageHandler, on_error: ErrorHandler | None = None,
                 *, limits: TransportLimits | None = None, on_shed: ShedHandler | None = None) -> None:
        super().__init__(host, port, on_message, on_error, limits=limits, on_shed=on_shed)
        self._transport: asyncio.DatagramTransport | None = None
        self._family: int | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if _is_wildcard_v6(self.bind_host):
            # "[::]" means every address of both families, whatever net.ipv6.bindv6only says.
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", self.bind_port))
            except OSError:
                sock.close()
                raise
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=sock)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.bind_host, self.bind_port)
            )
        self._transport = transport
        self._family = transport.get_extra_info("socket").family
        sockname = transport.get_extra_info("sockname")
        self.local_address = (str(sockname[0]), int(sockname[1]))

    def send(self, data: bytes, peer: Peer) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        _trace(">", peer, data)
        try:
            self._transport.sendto(data, _destination(peer, self._family))
        except Exception as exc:  # OSError, and ValueError/TypeError from uvloop: never the caller's problem
            self._failed(peer, exc)

    def _datagram(self, data: bytes, peer: Peer) -> None:
        if len(data) > self.limits.max_message_bytes:
            self._too_large(data, peer)
        else:
            self._received(data, peer)

    def _too_large(self, data: bytes, peer: Peer) -> None:
        """Answer 513 from the head alone when it can be read, else drop (RFC 3261 18.1.1, 21.5.11)."""
        self._shed("too-large", peer)
        head = head_within(data, self.limits.max_message_bytes)
        reply = bad_request_for(head, MESSAGE_TOO_LARGE) if head is not None else None
        logger.debug("%d-byte datagram from %s:%s over the limit: %s", len(data), peer.host, peer.port,
                     "answered 513" if reply else "dropped")
        if reply is not None:
            self.send(reply, peer)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class _Connection:
    """One TCP/TLS connection: a framer on the read side, a writer on the other, and two deadlines.

    Accepted connections are closed after ``tcp_idle_s`` without a byte; every connection is closed when a
    message takes longer than ``tcp_message_s`` from its first byte. Deadlines are checked lazily, so a
    read costs one clock reading: one timer per connection wakes at the earliest deadline that may have
    passed and re-arms itself when the connection was busy meanwhile.
    """

    def __init__(self, owner: TcpTransport, peer: Peer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, accepted: bool) -> None:
        self.owner = owner
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.accepted = accepted  # ours (e.g. to the registrar) carry our registration: never idle-closed
        self.framer = StreamFramer(owner.limits.max_message_bytes)
        self._loop = asyncio.get_running_loop()
        self._last_read = self._loop.time()
        self._message_start: float | None = None  # first byte of the incomplete message, if any
        self._timer: asyncio.TimerHandle | None = None
        # Ours only: the server side answers pings, it does not send them (RFC 5626 4.4.1).
        self.keepalive = None if accepted or owner.keepalive_s <= 0 else CrlfKeepalive(
            owner.keepalive_s, owner.keepalive_timeout_s)
        self._keepalive_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        if self.accepted:
            self._arm(self._last_read + self.owner.limits.tcp_idle_s)
        if self.keepalive is not None:
            self.keepalive.start(self._last_read)
            self._arm_keepalive()
        heard, peer_ended = False, False
        try:
            while data := await self.reader.read(_READ_SIZE):
                heard = True
                if self.writer.is_closing() or not self._feed(data):  # closing: dropped meanwhile
                    break
                await self.writer.drain()  # a peer that does not read our answers is not read either
            else:
                peer_ended = True
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            peer_ended = True
            logger.debug("%s connection %s:%s lost: %s", self.owner.name, self.peer.host, self.peer.port, exc)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()
            self.owner._forget(self)
            self._finish()
            if not self.accepted:
                if peer_ended and not heard:
                    self.owner._closed_unheard(self.peer)
                self.owner._closed(self.peer)

    def write(self, data: bytes) -> None:
        _trace(">", self.peer, data)
        self.writer.write(data)

    def _feed(self, data: bytes) -> bool:
        """Frame ``data`` and dispatch what completed; False when the connection must close."""
        now = self._loop.time()
        self._last_read = now
        if self.keepalive is not None:
            if self.keepalive.awaiting_pong_since is not None:
                self.owner.keepalive_pongs += 1  # a pong, or any traffic: either proves the connection alive
                if not data.strip(b"\r\n"):
                    self.framer.forget_line_ends()  # our pong, not the start of a ping of theirs
            self.keepalive.received(now)
            self._arm_keepalive()
        pings = self.framer.pings
        messages = self.framer.feed(data)
        if self.framer.pings != pings:
            self.writer.write(b"\r\n" * (self.framer.pings - pings))  # RFC 5626 4.4.1: a pong per ping
        self._track_message(now, completed=bool(messages))
        for message in messages:
            self.owner._received(message, self.peer)
        if self.framer.error is not None:
            self._refuse(self.framer.error)
            return False
        return True

    def _track_message(self, now: float, *, completed: bool) -> None:
        """Start the message clock at the first byte of a message, stop it when none is pending."""
        if not self.framer.buffered:
            self._message_start = None
        elif completed or self._message_start is None:
            self._message_start = now
            self._arm(now + self.owner.limits.tcp_message_s)

    def _refuse(self, exc: SipParseError) -> None:
        """The stream cannot be framed any more (RFC 3261 18.3): answer 513 (too large) or 400 when the
        head can be read, and close."""
        self.owner._shed("too-large" if exc.reason == MESSAGE_TOO_LARGE else "unframeable", self.peer)
        reply = bad_request_for(self.framer.head(), exc.reason)
        logger.info("closing %s connection to %s:%s: %s%s", self.owner.name, self.peer.host, self.peer.port,
                    exc.reason, " (answered)" if reply else "")
        if reply is not None:
            self.write(reply)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # the earlier timer re-arms for this deadline when it fires
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        limits = self.owner.limits
        due = self._loop.time() + _TIMER_SLACK
        message_deadline = None if self._message_start is None else self._message_start + limits.tcp_message_s
        idle_deadline = self._last_read + limits.tcp_idle_s if self.accepted else None
        if message_deadline is not None and due >= message_deadline:
            self._drop("tcp-slow-message")
        elif idle_deadline is not None and due >= idle_deadline:
            self._drop("tcp-idle")
        else:
            pending = [d for d in (message_deadline, idle_deadline) if d is not None]
            if pending:
                self._arm(min(pending))

    def _arm_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        deadline = self.keepalive.next_deadline if self.keepalive is not None else None
        if deadline is not None:
            self._keepalive_timer = self._loop.call_at(deadline, self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._keepalive_timer = None
        assert self.keepalive is not None
        action = self.keepalive.timeout(self._loop.time() + _TIMER_SLACK)
        if action == UNSUPPORTED:
            logger.info("%s connection to %s:%s: the server does not answer keep-alive pings; not pinging it",
                        self.owner.name, self.peer.host, self.peer.port)
            return
        if action == DEAD:
            logger.warning("%s connection to %s:%s: no answer to a keep-alive ping within %g s, closing it",
                           self.owner.name, self.peer.host, self.peer.port, self.keepalive.pong_timeout)
            self.owner.keepalive_failures += 1
            self.writer.transport.abort()  # the read loop ends and reports the connection closed
            return
        if action is not None and not self.writer.is_closing():
            self.writer.write(PING_BYTES)
        self._arm_keepalive()

    def _drop(self, reason: ShedReason) -> None:
        self.owner._shed(reason, self.peer)
        logger.info("closing %s connection to %s:%s: %s", self.owner.name, self.peer.host, self.peer.port,
                    reason)
        self.writer.transport.abort()  # the read loop sees EOF and forgets the connection

    def _finish(self) -> None:
        """Close after flushing what is written; abort when the peer is not reading, because bytes it
        never takes would keep the socket open after we forgot it."""
        if self.writer.transport.get_write_buffer_size():
            self.writer.transport.abort()
        else:
            self.writer.close()


class TcpTransport(SipTransport):
    """SIP over TCP, or TLS when ``ssl_server``/``ssl_client`` contexts are given.

    Connections are kept by their remote address and shared by both directions; an outgoing message to
    an address without a connection opens one (the message waits for the connect). Only accepted
    connections count against ``tcp_connections`` and ``tcp_connections_per_source``: one over a cap is
    closed at once.
    """

    name = "TCP"
    reliable = True

    def __init__(self, host: str, port: int, on_message: MessageHandler, on_error: ErrorHandler | None = None,
                 *, limits: TransportLimits | None = None, on_shed: ShedHandler | None = None,
                 ssl_server: ssl.SSLContext | None = None, ssl_client: ssl.SSLContext | None = None,
                 keepalive_s: float = 0.0, keepalive_timeout_s: float = 10.0, client_certificate: bool = False) -> None:
        super().__init__(host, port, on_message, on_error, limits=limits, on_shed=on_shed)
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.client_certificate = client_certificate  # ssl_client presents one when a server asks
        if ssl_server is not None or ssl_client is not None:
            self.name = "TLS"
        self.keepalive_s = keepalive_s  # CRLF pings on connections we open; 0 = none
        self.keepalive_timeout_s = keepalive_timeout_s
        self.keepalive_failures = 0  # connections closed because a ping went unanswered
        self.keepalive_pongs = 0  # pings answered
        # The name a TLS server's certificate must carry (and our SNI), by address; else the address itself.
        self.server_names: dict[tuple[str, int], str] = {}
        self.on_closed: ClosedHandler | None = None  # a connection we opened has ended
        self._closing = False
        self._server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._connecting: dict[tuple[str, int], list[bytes]] = {}
        self._accepted: set[_Connection] = set()
        self._handshaking = 0  # accepted TLS sockets still in their handshake
        self._listener: socket.socket | None = None  # the TLS server's listening socket (our own accept loop)
        self._per_source: dict[str, int] = {}  # accepted connections by remote IP; no zero entries
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.name == "TLS" and self.ssl_server is None:
            # Client-only TLS (no certificate): the registrar reaches us over the connection we open.
            return
        if self.ssl_server is not None:
            # Our own accept loop for TLS: the connection caps apply to the socket before the handshake, so
            # what is over them costs no cryptography (asyncio's server would handshake first).
            family = socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET
            # "[::]" takes IPv4 connections too (create_server alone would make it IPv6-only).
            self._listener = socket.create_server((self.bind_host, self.bind_port), family=family,
                                                  dualstack_ipv6=_is_wildcard_v6(self.bind_host))
            self._listener.setblocking(False)
            sockname = self._listener.getsockname()
            self.local_address = (str(sockname[0]), int(sockname[1]))
            self._spawn(self._accept_tls(self._listener))
            return
        if _is_wildcard_v6(self.bind_host):
            # asyncio makes every IPv6 listener IPv6-only: an IPv4 PBX could not connect to "[::]".
            listener = socket.create_server(("::", self.bind_port), family=socket.AF_INET6, dualstack_ipv6=True)
            self._server = await asyncio.start_server(self._on_accept, sock=listener)
        else:
            self._server = await asyncio.start_server(self._on_accept, self.bind_host, self.bind_port)
        sockname = self._server.sockets[0].getsockname()
        self.local_address = (str(sockname[0]), int(sockname[1]))

    def can_reach(self, peer: Peer) -> bool:
        conn = self._connections.get((peer.host, peer.port))
        return conn is not None and not conn.writer.is_closing()

    @property
    def accepted_connections(self) -> int:
        """Accepted connections open now, TLS handshakes in progress included: what the connection caps count."""
        return len(self._accepted) + self._handshaking

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        if remote is None:  # reset before we saw it
            writer.transport.abort()
            return
        peer = Peer(self.name, unmapped(str(remote[0])), int(remote[1]))
        over = self._over_cap(peer.host)
        if over is not None:
            self._shed(over, peer)
            writer.transport.abort()
            return
        self._per_source[peer.host] = self._per_source.get(peer.host, 0) + 1
        await self._run_accepted(peer, reader, writer)

    async def _run_accepted(self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve an accepted connection already counted in ``_per_source``."""
        conn = _Connection(self, peer, reader, writer, accepted=True)
        self._accepted.add(conn)
        self._connections[(peer.host, peer.port)] = conn
        await conn.run()

    async def _accept_tls(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, or the like: wait rather than spin
                logger.warning("TLS accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._serve_tls(sock, Peer(self.name, unmapped(str(address[0])), int(address[1]))))

    async def _serve_tls(self, sock: socket.socket, peer: Peer) -> None:
        """Caps first, then the handshake within ``tcp_message_s`` (bounded like a message), then SIP."""
        assert self.ssl_server is not None
        over = self._over_cap(peer.host)
        if over is not None:
            self._shed(over, peer)
            sock.close()
            return
        self._handshaking += 1  # counts against the caps like an accepted connection
        self._per_source[peer.host] = self._per_source.get(peer.host, 0) + 1
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.ssl_server, ssl_handshake_timeout=self.limits.tcp_message_s)
        except Exception as exc:  # timeout, a client that does not speak TLS, a refused certificate, a reset
            sock.close()
            self._release_source(peer.host)
            self._shed("tls-handshake", peer)
            if self._log_throttle.allow("handshake-in", peer.host, time.monotonic()):
                logger.info("TLS handshake from %s:%s failed: %s (logged once a minute per source)", peer.host,
                            peer.port, exc or type(exc).__name__)
            return
        finally:
            self._handshaking -= 1
        await self._run_accepted(peer, reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def _over_cap(self, host: str) -> ShedReason | None:
        if self._per_source.get(host, 0) >= self.limits.tcp_connections_per_source:
            return "tcp-connections-per-source"
        if self.accepted_connections >= self.limits.tcp_connections and not self.trusts(host):
            return "tcp-connections"  # a trusted source (the PBX) is bounded by its own cap only
        return None

    def _forget(self, conn: _Connection) -> None:
        key = (conn.peer.host, conn.peer.port)
        if self._connections.get(key) is conn:
            del self._connections[key]
        if conn in self._accepted:
            self._accepted.discard(conn)
            self._release_source(conn.peer.host)

    def _release_source(self, host: str) -> None:
        left = self._per_source.pop(host) - 1
        if left:
            self._per_source[host] = left

    def send(self, data: bytes, peer: Peer) -> None:
        key = (peer.host, peer.port)
        conn = self._connections.get(key)
        if conn is not None and not conn.writer.is_closing():
            try:
                conn.write(data)
            except Exception as exc:  # a transport torn down under us must not reach the caller
                self._failed(peer, exc)
            return
        if key in self._connecting:
            self._connecting[key].append(data)
            return
        self._connecting[key] = [data]
        self._spawn(self._connect(Peer(self.name, peer.host, peer.port)))

    async def _connect(self, peer: Peer) -> None:
        key = (peer.host, peer.port)
        name = self.server_names.get(key, peer.host)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*_destination(peer), ssl=self.ssl_client,
                                        server_hostname=name if self.ssl_client is not None else None),
                timeout=_CONNECT_TIMEOUT,
            )
        except Exception as exc:  # anything, or the queued messages would stay in _connecting for good
            self._connecting.pop(key, None)
            if self.ssl_client is not None:
                # An operator must read "expired" or "wrong name", not "[SSL: CERTIFICATE_VERIFY_FAILED]".
                address = host_port(peer.host, peer.port)
                exc = TlsHandshakeError(describe_handshake_error(exc, name, address))
                if self._log_throttle.allow("handshake", address, time.monotonic()):
                    logger.warning("TLS connection to %s failed: %s (logged once a minute)", address, exc)
            self._failed(peer, exc)
            return
        conn = _Connection(self, peer, reader, writer, accepted=False)
        self._connections[key] = conn
        for data in self._connecting.pop(key, []):
            conn.write(data)
        await conn.run()

    def _closed_unheard(self, peer: Peer) -> None:
        """A connection we opened was ended by the peer before it sent a byte. Over TLS 1.3 that is how a
        server requiring a client certificate refuses one (its alert comes after our handshake is done,
        and asyncio reads it as the end of the stream): say so when we present none."""
        if (self.ssl_client is None or self.client_certificate or self._closing
                or not self._log_throttle.allow("unheard", f"{peer.host}:{peer.port}", time.monotonic())):
            return
        logger.warning("TLS connection to %s:%s was closed by the peer before it sent anything: a server that "
                       "requires a client certificate does this (set sip.tls.cert_file and key_file) "
                       "(logged once a minute)", peer.host, peer.port)

    def _closed(self, peer: Peer) -> None:
        if self._closing or self.on_closed is None:
            return
        try:
            self.on_closed(peer)
        except Exception:
            logger.exception("error in transport closed handler")

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:  # after the accept loop stopped, which would report it closed
            self._listener.close()
            self._listener = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


def create_transport(name: str, host: str, port: int, on_message: MessageHandler,
                     on_error: ErrorHandler | None = None, *, limits: TransportLimits | None = None,
                     on_shed: ShedHandler | None = None, tls: TlsSettings | None = None,
                     keepalive_s: float = 0.0, keepalive_timeout_s: float = 10.0) -> SipTransport:
    """The transport for ``sip.transport`` ("udp" | "tcp" | "tls"). TLS verifies the server by default
    (``tls``: CA, name, our certificate); it listens only when ``tls`` names a certificate to present.
    TlsSetupError when a file in ``tls`` cannot be used."""
    kind = name.lower()
    if kind == "udp":
        return UdpTransport(host, port, on_message, on_error, limits=limits, on_shed=on_shed)
    if kind == "tcp":
        return TcpTransport(host, port, on_message, on_error, limits=limits, on_shed=on_shed,
                            keepalive_s=keepalive_s, keepalive_timeout_s=keepalive_timeout_s)
    if kind == "tls":
        tls = tls or TlsSettings()
        return TcpTransport(host, port, on_message, on_error, limits=limits, on_shed=on_shed,
                            ssl_server=server_context(tls) if tls.serves else None, ssl_client=client_context(tls),
                            keepalive_s=keepalive_s, keepalive_timeout_s=keepalive_timeout_s,
                            client_certificate=bool(tls.cert_file))
    raise ValueError(f"unknown SIP transport {name!r}")
