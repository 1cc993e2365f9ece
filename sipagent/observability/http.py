"""The little HTTP/1.1 the agent's own listeners need (metrics and health, the control API): read one
request with bounded sizes and times, answer it, close. No keep-alive, no chunked bodies, no framework.

Every byte is a stranger's: the head is read with ``readuntil`` under the stream's ``limit`` (a longer
head is a 431), header names must be tokens, a body is read only up to ``Content-Length`` and only when
the caller allows that much (else 413), and each read has a deadline, so a slow client cannot hold a
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MAX_HEAD_BYTES = 8192   # request line + headers: give this as asyncio.start_server's ``limit``
READ_TIMEOUT_S = 5.0    # a client that sends nothing does not hold a connection open
LINGER_S = 1.0          # how long, after answering, we wait for the client to close
MAX_CONNECTIONS = 64    # open at once per listener: each holds a descriptor the agent's RTP and SIP need too
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: HTTPStatus, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, f"{status.value} {status.phrase}\n".encode(), headers=headers)

    @classmethod
    def json(cls, status: HTTPStatus, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, (json.dumps(value) + "\n").encode(), "application/json", headers)

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status.value} {self.status.phrase}", f"Content-Type: {self.content_type}",
                f"Content-Length: {len(self.body)}", "Connection: close", "Cache-Control: no-store",
                *(f"{name}: {value}" for name, value in self.headers)]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


class HttpError(Exception):
    """The request cannot be served; ``response`` says so to the client."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status.phrase)
        self.response = response


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0"))


def parse_head(raw: bytes) -> RequestHead:
    """The request line and headers of ``raw`` (up to and with the blank line); HttpError(400) if they do
    not parse. A repeated header is refused (two Content-Lengths or Authorizations are an attack, not a
    mistake); Transfer-Encoding is not supported (501)."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not _TOKEN.fullmatch(parts[0]):
        raise HttpError(Response.text(HTTPStatus.BAD_REQUEST))
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # obs-fold, a space before the colon, no colon
            raise HttpError(Response.text(HTTPStatus.BAD_REQUEST))
        key = name.lower()
        if key in headers:
            raise HttpError(Response.text(HTTPStatus.BAD_REQUEST))
        headers[key] = value.strip(" \t")
    if "transfer-encoding" in headers:
        raise HttpError(Response.text(HTTPStatus.NOT_IMPLEMENTED))
    length = headers.get("content-length", "0")
    if not length.isascii() or not length.isdigit() or len(length) > 12:
        raise HttpError(Response.text(HTTPStatus.BAD_REQUEST))
    return RequestHead(parts[0], parts[1], headers)


async def read_head(reader: asyncio.StreamReader) -> RequestHead:
    """The next request's head, within READ_TIMEOUT_S; HttpError(431) when it is longer than the stream's
    limit. TimeoutError and IncompleteReadError when the client is too slow or goes away."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        raise HttpError(Response.text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)) from None
    return parse_head(raw)


async def read_body(reader: asyncio.StreamReader, head: RequestHead, max_bytes: int) -> bytes:
    """The body ``Content-Length`` announces; HttpError(413) when that is over ``max_bytes`` (nothing is
    read then)."""
    length = head.content_length
    if length > max_bytes:
        raise HttpError(Response.text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE))
    if length == 0:
        return b""
    return await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)


async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: Response) -> None:
    writer.write(response.encode())
    await writer.drain()
    await linger(reader, writer)


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read off what the client still sends (bounded) before closing.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the response
    (a 431 to an oversized request, say) before the client reads it.
    """
    if writer.can_write_eof():
        writer.write_eof()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_S
    discarded = 0
    while discarded < 4 * MAX_HEAD_BYTES and (left := deadline - loop.time()) > 0:
        chunk = await asyncio.wait_for(reader.read(MAX_HEAD_BYTES), left)
        if not chunk:
            return
        discarded += len(chunk)


class HttpServer:
    """One listener: one request per connection, answered by ``respond`` (the subclass's), then closed. A
    client that goes away or stalls, or a fault in ``respond``, never takes the listener down. ``port`` is the
    bound port once ``listen`` returns (useful with port 0). Past ``max_connections`` open at once, a new
    connection is answered 503 and closed unread: clients that stall, each for up to READ_TIMEOUT_S, cannot
    take every file descriptor of the process."""

    name = "HTTP listener"  # how a fault names it in the log
    max_connections = MAX_CONNECTIONS

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.host = ""
        self.port = 0

    async def listen(self, host: str, port: int) -> None:
        # ``limit`` bounds what readuntil buffers: a longer header block raises LimitOverrunError → 431.
        self._server = await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD_BYTES)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the bound listener, an IPv6 host in brackets (RFC 3986 3.2.2)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop listening and drop open connections; ``await wait_closed()`` to be sure it is done."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
        """Read the request (``read_head``, and ``read_body`` when it has one) and make its answer; an
        HttpError is answered with its response."""
        raise NotImplementedError

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_connections:
            writer.write(Response.text(HTTPStatus.SERVICE_UNAVAILABLE, (("Retry-After", "1"),)).encode())
            writer.close()  # no linger: that would hold the descriptor the limit is there to save
            return
        self._writers.add(writer)
        try:
            try:
                response = await self.respond(reader, writer)
            except HttpError as exc:
                response = exc.response
            await send(reader, writer, response)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away, was too slow or never sent a request: nothing to answer
        except Exception:  # one bad request must never take the listener down
            log.exception("%s failed to answer", self.name)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
