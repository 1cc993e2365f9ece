"""asyncio SIP transports (RFC 3261 section 18): UDP datagrams and TCP streams (TLS-ready).

A transport only moves bytes: it parses what arrives with the sans-I/O core, answers hopeless requests
with ``400`` (or drops them), and hands each message to the user agent together with the :class:`Peer`
it came from. Sending a response back to that ``Peer`` reuses the same TCP connection, as RFC 3261
18.2.2 asks. Handler exceptions are logged and swallowed so one bad message never stops the loop, and
``send`` never raises: a failure goes to ``on_error``.

Wire tracing: set the ``sipagent.sip.wire`` logger to DEBUG to log every message with ``>`` (sent) or
``<`` (received); digest credentials are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sipagent.errors import SipParseError
from sipagent.sip.message import (
    SipRequest,
    SipResponse,
    StreamFramer,
    bad_request_for,
    is_keepalive,
    parse_message,
)

logger = logging.getLogger(__name__)
wire_logger = logging.getLogger("sipagent.sip.wire")

_AUTH_LINE = re.compile(
    rb"^((?:Proxy-)?Authorization:[ \t]*\S+)[^\r\n]*", re.IGNORECASE | re.MULTILINE
)
_USERNAME = re.compile(rb'username="[^"]*"', re.IGNORECASE)


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


def redact(data: bytes) -> bytes:
    """Hide digest credentials (all but the username) in a traced message."""

    def keep_username(m: re.Match[bytes]) -> bytes:
        user = _USERNAME.search(m.group(0))
        return m.group(1) + b" " + (user.group(0) if user else b"") + b", <redacted>"

    return _AUTH_LINE.sub(keep_username, data)


def _trace(direction: str, peer: Peer, data: bytes) -> None:
    if wire_logger.isEnabledFor(logging.DEBUG):
        text = redact(data).decode("utf-8", "replace").rstrip("\r\n")
        wire_logger.debug("%s %s %s:%s (%d bytes)\n%s", direction, peer.transport, peer.host, peer.port,
                          len(data), text)


def _destination(peer: Peer) -> tuple[str, int]:
    """The socket address for ``peer``; ValueError unless it is an IP address and a valid port.

    Names are the user agent's to resolve, off the loop: the standard loop's ``sendto`` would resolve one
    synchronously, and a port out of range closes its UDP socket (uvloop wraps it around instead).
    """
    ipaddress.ip_address(peer.host)
    if not 0 < peer.port < 65536:
        raise ValueError(f"port {peer.port} out of range")
    return peer.host, peer.port


class SipTransport:
    """Common part of the transports: parse, answer unparsable requests, dispatch, trace."""

    name = "UDP"
    reliable = False

    def __init__(self, host: str, port: int, on_message: MessageHandler,
                 on_error: ErrorHandler | None = None) -> None:
        self.bind_host = host
        self.bind_port = port
        self.on_message = on_message
        self.on_error = on_error
        self.local_address: tuple[str, int] = (host, port)

    async def start(self) -> None:
        raise NotImplementedError

    def send(self, data: bytes, peer: Peer) -> None:
        """Queue ``data`` for ``peer``; failures are reported through ``on_error``, never raised."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _received(self, data: bytes, peer: Peer) -> None:
        if is_keepalive(data):
            return
        _trace("<", peer, data)
        try:
            message = parse_message(data)
        except SipParseError as exc:
            reply = bad_request_for(data, exc.reason)
            logger.info("unparsable message from %s:%s (%s): %s", peer.host, peer.port, exc.reason,
                        "answered 400" if reply else "dropped")
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


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner._received(data, Peer("UDP", str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on an unconnected socket cannot be tied to a destination: log only.
        logger.debug("UDP socket error: %s", exc)


class UdpTransport(SipTransport):
    """SIP over UDP on one socket, used for both sending and receiving (symmetric, for NAT and rport)."""

    name = "UDP"

    def __init__(self, host: str, port: int, on_message: MessageHandler,
                 on_error: ErrorHandler | None = None) -> None:
        super().__init__(host, port, on_message, on_error)
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.bind_host, self.bind_port)
        )
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.local_address = (str(sockname[0]), int(sockname[1]))

    def send(self, data: bytes, peer: Peer) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        _trace(">", peer, data)
        try:
            self._transport.sendto(data, _destination(peer))
        except Exception as exc:  # OSError, and ValueError/TypeError from uvloop: never the caller's problem
            self._failed(peer, exc)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class _Connection:
    """One TCP/TLS connection: a framer on the read side, a writer on the other."""

    def __init__(self, owner: TcpTransport, peer: Peer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.owner = owner
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer()

    async def run(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                pings = self.framer.pings
                messages = self.framer.feed(data)
                if self.framer.pings != pings:
                    self.writer.write(b"\r\n" * (self.framer.pings - pings))  # RFC 5626 4.4.1: a pong per ping
                for message in messages:
                    self.owner._received(message, self.peer)
                if self.framer.error is not None:
                    # The stream cannot be re-synchronised: close it (RFC 3261 18.3).
                    logger.info("closing %s connection to %s:%s: %s", self.owner.name, self.peer.host,
                                self.peer.port, self.framer.error.reason)
                    break
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            logger.debug("%s connection %s:%s lost: %s", self.owner.name, self.peer.host, self.peer.port, exc)
        finally:
            self.owner._forget(self)
            self.writer.close()


class TcpTransport(SipTransport):
    """SIP over TCP, or TLS when ``ssl_server``/``ssl_client`` contexts are given.

    Connections are kept by their remote address and shared by both directions; an outgoing message to
    an address without a connection opens one (the message waits for the connect).
    """

    name = "TCP"
    reliable = True

    def __init__(self, host: str, port: int, on_message: MessageHandler, on_error: ErrorHandler | None = None,
                 *, ssl_server: ssl.SSLContext | None = None, ssl_client: ssl.SSLContext | None = None):
        super().__init__(host, port, on_message, on_error)
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        if ssl_server is not None or ssl_client is not None:
            self.name = "TLS"
        self._server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._connecting: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.name == "TLS" and self.ssl_server is None:
            # Client-only TLS (no certificate): the registrar reaches us over the connection we open.
            return
        self._server = await asyncio.start_server(
            self._accepted, self.bind_host, self.bind_port, ssl=self.ssl_server
        )
        sockname = self._server.sockets[0].getsockname()
        self.local_address = (str(sockname[0]), int(sockname[1]))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        conn = _Connection(self, Peer(self.name, str(remote[0]), int(remote[1])), reader, writer)
        self._connections[(conn.peer.host, conn.peer.port)] = conn
        await conn.run()

    def _forget(self, conn: _Connection) -> None:
        key = (conn.peer.host, conn.peer.port)
        if self._connections.get(key) is conn:
            del self._connections[key]

    def send(self, data: bytes, peer: Peer) -> None:
        key = (peer.host, peer.port)
        conn = self._connections.get(key)
        if conn is not None and not conn.writer.is_closing():
            _trace(">", conn.peer, data)
            try:
                conn.writer.write(data)
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
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*_destination(peer), ssl=self.ssl_client), timeout=10.0
            )
        except Exception as exc:  # anything, or the queued messages would stay in _connecting for good
            self._connecting.pop(key, None)
            self._failed(peer, exc)
            return
        conn = _Connection(self, peer, reader, writer)
        self._connections[key] = conn
        for data in self._connecting.pop(key, []):
            _trace(">", peer, data)
            writer.write(data)
        await conn.run()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


def create_transport(name: str, host: str, port: int, on_message: MessageHandler,
                     on_error: ErrorHandler | None = None) -> SipTransport:
    """The transport for ``sip.transport`` ("udp" | "tcp"). TLS needs contexts: build TcpTransport."""
    kind = name.lower()
    if kind == "udp":
        return UdpTransport(host, port, on_message, on_error)
    if kind == "tcp":
        return TcpTransport(host, port, on_message, on_error)
    if kind == "tls":
        return TcpTransport(host, port, on_message, on_error,
                            ssl_server=None, ssl_client=ssl.create_default_context())
    raise ValueError(f"unknown SIP transport {name!r}")
