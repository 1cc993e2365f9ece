"""A small HTTP/1.1 client for webhook tools: one request, one response, nothing left running after it.

Why not urllib: its timeout applies to each socket operation, so a service sending one byte a second
never times out; and it runs in a thread nothing can stop, on the loop's default executor, which also
serves ``loop.getaddrinfo``, so a few slow services delayed DNS for every call. Here each step (DNS,
connect, TLS, request, response) is a coroutine that the caller's deadline can cancel, and cancelling
aborts the connection. Only the DNS lookup runs in a thread (``getaddrinfo`` blocks and cannot be
interrupted), on this module's own small pool: a stuck resolver can hold at most those threads, never
the default executor. An IP literal is never looked up.

What it does: HTTP and HTTPS (the ``ssl`` module's default context: certificates and host names
verified), one request per connection (``Connection: close``), a response framed by Content-Length,
chunked, or read to the close, with its head and body capped. Redirects are answers like any other:
the caller decides (the tools treat a 3xx as an error). Header values that could split the request
(CR, LF, NUL, other control characters) are refused before anything is written.

:func:`prepare` (URL and headers to request bytes) and :class:`ResponseParser` (bytes to a
:class:`Response`) are pure; :func:`request` is the asyncio shell around them.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from sipagent import __version__

MAX_BODY_BYTES = 1 << 20  # a tool's answer goes to the model as text: 1 MiB is already far too much
MAX_HEAD_BYTES = 64 << 10  # status line and headers; chunked trailers count against it too
MAX_HEADER_FIELDS = 100
MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions
POOL_THREADS = 4  # a stuck resolver holds at most these, never the loop's default executor
READ_BYTES = 64 << 10

# Headers that frame the exchange: ours to write, never taken from the configuration.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "x-sipagent-call-id"})
# The call's context (X-Sipagent-Caller, ...): a receiver must be able to trust that sipagent wrote them.
RESERVED_PREFIX = "x-sipagent-"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field name
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB: CR/LF/NUL split a request
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: (.*))?")
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_SPACE = " \t"
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also accepts "²"


class WebhookError(Exception):
    """A webhook exchange that failed for a reason the model may be told (``str`` is that reason)."""


class RequestRefused(WebhookError):
    """The request was not sent: its URL or a header is invalid or could alter the request's framing."""


class BadResponse(WebhookError):
    """The answer is not an HTTP/1.x response this client reads, or ended before it was complete."""


class ResponseTooLarge(BadResponse):
    """The answer's head or body is over its cap."""


@dataclass(frozen=True)
class Prepared:
    """Where to connect and the exact bytes to send."""

    host: str  # for DNS and TLS (server name indication, certificate check)
    port: int
    tls: bool
    data: bytes


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def prepare(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None = None, *, call_id: str = "",
    own_headers: Mapping[str, str] | None = None,
) -> Prepared:
    """The request as bytes; raises :class:`RequestRefused` rather than write an unsafe byte.

    ``headers`` come from the configuration; ``own_headers`` are the X-Sipagent-* headers sipagent writes
    itself (the call's context, a call event's signature), written after them: the configuration may not
    set any X-Sipagent-* header, so a receiver can trust that sipagent wrote them."""
    if not _TOKEN.fullmatch(method):
        raise RequestRefused(f"method {method!r} is not an HTTP method")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "http://[::1/x": an unclosed IPv6 bracket
        raise RequestRefused(f"the URL is invalid ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestRefused("the URL is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise RequestRefused("credentials in the URL are not supported (use headers)")
    tls = parts.scheme == "https"
    default_port = 443 if tls else 80
    try:
        port = parts.port
        if port == 0:  # not "no port": nothing listens on port 0
            raise ValueError("port 0")
        host = parts.hostname.encode("idna").decode("ascii")  # an international name as its A-labels
    except (ValueError, UnicodeError) as exc:
        raise RequestRefused(f"the URL's host or port is invalid ({exc})") from None
    port = port or default_port
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
        raise RequestRefused("the URL's path or query has spaces, controls or non-ASCII characters")
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"

    fields: dict[str, tuple[str, str]] = {}  # lower-case name → (name, value); later ones replace earlier

    def put(name: str, value: str) -> None:
        fields[name.lower()] = (name, value)

    put("Host", host_header)
    put("User-Agent", f"sipagent/{__version__}")
    put("Accept", "application/json")
    put("Accept-Encoding", "identity")
    if body is not None:
        put("Content-Type", "application/json")
    given: set[str] = set()
    for name, value in headers.items():
        if name.lower() in RESERVED_HEADERS or name.lower().startswith(RESERVED_PREFIX):
            raise RequestRefused(f"header {name} is set by sipagent, not by the configuration")
        if name.lower() in given:  # "X-Api" and "x-api": one field, and which value went would be a guess
            raise RequestRefused(f"header {name} is given twice (header names ignore case)")
        given.add(name.lower())
        put(name, value)
    for name, value in (own_headers or {}).items():
        put(name, value)
    if body is not None:
        put("Content-Length", str(len(body)))
    put("Connection", "close")
    put("X-Sipagent-Call-Id", call_id)

    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields.values():
        if not _TOKEN.fullmatch(name):
            raise RequestRefused(f"header name {name!r} is not a valid HTTP field name")
        if _UNSAFE_VALUE.search(value):
            raise RequestRefused(f"header {name} contains CR, LF, NUL or another control character")
        lines.append(f"{name}: {value.strip(_SPACE)}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise RequestRefused("a header value has characters outside Latin-1") from None
    return Prepared(host, port, tls, head + (body or b""))


# --- the response, sans I/O ---------------------------------------------------------------------------

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TO_CLOSE, _DONE = range(8)


class ResponseParser:
    """Bytes in (:meth:`feed`, :meth:`feed_eof`), a :class:`Response` out once it is complete.

    Raises :class:`BadResponse` (or :class:`ResponseTooLarge`) as soon as the bytes show the answer is
    unusable. Work per byte is constant: consumed input is dropped once per feed and the search for the
    end of the head resumes where the previous one stopped.
    """

    def __init__(self) -> None:
        self.response: Response | None = None
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already consumed
        self._scan = 0  # where the search for the end of the head (or a line) resumes
        self._state = _HEAD
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._remaining = 0  # of the Content-Length body or of the current chunk
        self._trailer_bytes = 0
        self._body = bytearray()

    def feed(self, data: bytes) -> None:
        if self._state == _DONE:
            return  # bytes after a complete response (we asked for Connection: close) are ignored
        self._buf += data
        self._advance()
        del self._buf[: self._pos]
        self._scan = max(0, self._scan - self._pos)
        self._pos = 0

    def feed_eof(self) -> None:
        if self._state == _TO_CLOSE:
            self._finish()
        if self._state != _DONE:
            raise BadResponse("the connection closed before the response was complete")

    def _advance(self) -> None:
        while self._state != _DONE:
            before = (self._state, self._pos)
            if self._state == _HEAD:
                self._read_head()
            elif self._state == _LENGTH:
                self._take_body()
                if self._remaining == 0:
                    self._finish()
            elif self._state == _TO_CLOSE:
                self._take_body()
            elif self._state == _CHUNK_SIZE:
                self._read_chunk_size()
            elif self._state == _CHUNK_DATA:
                self._take_body()
                if self._remaining == 0:
                    self._state = _CHUNK_END
            elif self._state == _CHUNK_END:
                self._read_chunk_end()
            elif self._state == _TRAILERS:
                self._read_trailer()
            if (self._state, self._pos) == before:
                return  # needs more bytes

    def _line(self, limit: int, what: str) -> bytes | None:
        """The next line (without its CRLF or LF), or None until it has arrived."""
        end = self._buf.find(b"\n", max(self._pos, self._scan))
        if (end if end >= 0 else len(self._buf)) - self._pos > limit:
            raise ResponseTooLarge(f"{what} longer than {limit} bytes")
        if end < 0:
            self._scan = len(self._buf)
            return None
        line = bytes(self._buf[self._pos : end]).removesuffix(b"\r")
        self._pos = self._scan = end + 1
        return line

    def _read_head(self) -> None:
        match = _END_OF_HEAD.search(self._buf, max(self._pos, self._scan - 3))
        if match is None:
            if len(self._buf) - self._pos > MAX_HEAD_BYTES:
                raise ResponseTooLarge(f"response headers larger than {MAX_HEAD_BYTES // 1024} KiB")
            self._scan = len(self._buf)
            return
        if match.start() - self._pos > MAX_HEAD_BYTES:
            raise ResponseTooLarge(f"response headers larger than {MAX_HEAD_BYTES // 1024} KiB")
        head = bytes(self._buf[self._pos : match.start()])
        self._pos = self._scan = match.end()
        lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
        status = _STATUS_LINE.fullmatch(lines[0])
        if status is None:
            raise BadResponse("not an HTTP/1.x status line")
        self._status = int(status.group(1))
        self._reason = (status.group(2) or b"").decode("latin-1")
        self._headers = _parse_fields(lines[1:])
        if 100 <= self._status < 200:
            if self._status == 101:
                raise BadResponse("the service switched protocols")
            return  # an interim response (100 Continue, 103 Early Hints): the real one follows
        self._choose_framing()

    def _choose_framing(self) -> None:
        """RFC 9112 6.3: Transfer-Encoding wins over Content-Length; neither means read to the close."""
        if self._status in (204, 304):
            self._finish()
            return
        codings = [v.strip().lower() for k, v in self._headers if k.lower() == "transfer-encoding"]
        if codings:
            last = codings[-1].rsplit(",", 1)[-1].strip()
            self._state = _CHUNK_SIZE if last == "chunked" else _TO_CLOSE
            return
        lengths = {v.strip() for k, v in self._headers if k.lower() == "content-length"}
        if not lengths:
            self._state = _TO_CLOSE
            return
        length = lengths.pop()
        if lengths or not _DIGITS.fullmatch(length):
            raise BadResponse("invalid Content-Length")
        self._remaining = int(length)
        if self._remaining > MAX_BODY_BYTES:
            raise ResponseTooLarge(f"a body of {self._remaining} bytes, over {MAX_BODY_BYTES} bytes")
        self._state = _LENGTH

    def _take_body(self) -> None:
        """Move what has arrived of the body (all of it when reading to the close) into the body."""
        n = len(self._buf) - self._pos
        if self._state != _TO_CLOSE:
            n = min(n, self._remaining)
            self._remaining -= n
        if len(self._body) + n > MAX_BODY_BYTES:
            raise ResponseTooLarge(f"a body over {MAX_BODY_BYTES} bytes")
        self._body += self._buf[self._pos : self._pos + n]
        self._pos += n
        self._scan = self._pos

    def _read_chunk_size(self) -> None:
        line = self._line(MAX_CHUNK_LINE, "a chunk-size line")
        if line is None:
            return
        size = line.split(b";", 1)[0].strip()
        if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
            raise BadResponse("invalid chunk size")
        self._remaining = int(size, 16)
        if len(self._body) + self._remaining > MAX_BODY_BYTES:
            raise ResponseTooLarge(f"a body over {MAX_BODY_BYTES} bytes")
        self._state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _read_chunk_end(self) -> None:
        """CRLF, strictly: a bare LF here would let a chunk one byte longer than its size pass."""
        rest = bytes(self._buf[self._pos : self._pos + 2])
        if rest == b"\r\n":
            self._pos = self._scan = self._pos + 2
            self._state = _CHUNK_SIZE
        elif rest not in (b"", b"\r"):
            raise BadResponse("a chunk longer than its size")

    def _read_trailer(self) -> None:
        start = self._pos
        line = self._line(MAX_HEAD_BYTES - self._trailer_bytes, "trailers")
        if line is None:
            return
        self._trailer_bytes += self._pos - start
        if not line:
            self._finish()  # trailers carry nothing a tool needs: read past them, keep none

    def _finish(self) -> None:
        self.response = Response(self._status, self._reason, self._headers, bytes(self._body))
        self._state = _DONE


def _parse_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    if len(lines) > MAX_HEADER_FIELDS:
        raise ResponseTooLarge(f"more than {MAX_HEADER_FIELDS} header fields")
    fields = []
    for line in lines:
        name, sep, value = line.partition(b":")
        text = name.decode("latin-1")
        if not sep or not _TOKEN.fullmatch(text):  # also refuses obsolete line folding
            raise BadResponse("an invalid header line")
        fields.append((text, value.strip(b" \t").decode("latin-1")))
    return fields


# --- the asyncio shell ---------------------------------------------------------------------------------


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """This module's threads: DNS lookups and loading the trust store, the two calls that block."""
    return ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="sipagent-webhook")


_default_tls: ssl.SSLContext | None = None


async def _default_tls_context() -> ssl.SSLContext:
    """The system's trust store with certificate and host name checks. Loaded once, off the loop: reading
    the CA bundle takes tens of milliseconds, longer than an audio frame may wait."""
    global _default_tls
    if _default_tls is None:
        _default_tls = await asyncio.get_running_loop().run_in_executor(_pool(), ssl.create_default_context)
    return _default_tls


async def request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None = None,
    *,
    call_id: str = "",
    own_headers: Mapping[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Response:
    """One exchange; the caller bounds it (``asyncio.timeout``), and cancelling it leaves nothing open.

    Raises :class:`WebhookError` for what this client refuses or cannot read, ``OSError`` for DNS,
    connection and TLS failures (``ssl.SSLError`` included).
    """
    prepared = prepare(method, url, headers, body, call_id=call_id, own_headers=own_headers)
    context = (tls or await _default_tls_context()) if prepared.tls else None
    reader, writer = await _connect(prepared.host, prepared.port, context)
    try:
        writer.write(prepared.data)
        await writer.drain()
        parser = ResponseParser()
        while parser.response is None:
            data = await reader.read(READ_BYTES)
            if data:
                parser.feed(data)
            else:
                parser.feed_eof()
        return parser.response
    finally:
        # Abort, not close: a TLS close waits for the peer's close_notify, which a hostile service never
        # sends (up to 30 s with the transport still open on the loop).
        writer.transport.abort()


async def probe(url: str, *, tls: ssl.SSLContext | None = None) -> str:
    """Reach ``url``'s host as a request would (DNS, connect, TLS with its certificate checked), send nothing
    and close: ``sipagent check --connect`` for a receiver that must not get a request it did not ask for.
    Returns the address connected to; raises like :func:`request`. The caller bounds it."""
    prepared = prepare("GET", url, {})
    context = (tls or await _default_tls_context()) if prepared.tls else None
    _, writer = await _connect(prepared.host, prepared.port, context)
    try:
        address = writer.get_extra_info("peername")
        return f"{address[0]}:{address[1]}" if address else f"{prepared.host}:{prepared.port}"
    finally:
        writer.transport.abort()


async def _connect(
    host: str, port: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Each address of ``host`` in turn until one connects. The loop is given IP literals only, which
    asyncio and uvloop both connect to without a lookup of their own."""
    failure: OSError = OSError(f"no address for {host}")
    for family, address in await _resolve(host, port):
        try:
            return await asyncio.open_connection(
                address, port, family=family, ssl=tls, server_hostname=host if tls else None, limit=READ_BYTES
            )
        except ssl.SSLError:
            raise  # the service's certificate, not this address: another address would fail the same way
        except OSError as exc:
            failure = exc
    raise failure


async def _resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """(family, IP literal) pairs for ``host``: an IP literal as it is, a name through ``getaddrinfo`` on
    this module's pool (never the default executor, never the loop's thread)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().run_in_executor(
            _pool(), functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        )
        return [(family, str(address[0])) for family, _, _, _, address in infos]
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host)]
