"""The little HTTP/1.1 the agent's own listeners need (metrics and health, the control API): read one
request with bounded sizes and times, answer it, close. No keep-alive, no chunked bodies, no framework.

Every byte is a stranger's: the head is read with ``readuntil`` under the stream's ``limit`` (a longer
head is a 431), header names must be tokens, a body is read only up to ``Content-Length`` and only when
the caller allows that much (else 413), and each read has a deadline, so a slow client cannot hold a
connection.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MAX_HEAD_BYTES = 8192   # request line + headers: give this as asyncio.start_server's ``limit``
READ_TIMEOUT_S = 5.0    # a client that sends nothing does not hold a connection open
LINGER_S = 1.0          # how long, after answering, we wait for the client to close
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
