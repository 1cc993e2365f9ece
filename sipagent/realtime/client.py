"""The asyncio WebSocket client of a Realtime session (OpenAI, Azure OpenAI or the local backend).

A thin shell over ``websockets``: it connects with the endpoint's URL and headers, sends client events
(dicts, or JSON text for the hot audio path), and yields server events normalised to GA names by
:mod:`sipagent.realtime.events`. It owns no policy: the bridge decides what to send, and reconnects
when :class:`RealtimeConnectionLost` tells it the connection dropped.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import Event as WsEvent
from websockets.protocol import State

from sipagent.errors import RealtimeError
from sipagent.realtime import events
from sipagent.realtime.events import Dialect, Event, check_dialect
from sipagent.realtime.providers import (
    Endpoint,
    azure_endpoint,
    endpoint_for,
    local_endpoint,
    openai_endpoint,
)

try:  # websockets' C masking, what its own frames use; the pure-Python one if it was built without it
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = [
    "SHARED_MASKS",
    "Endpoint",
    "MaskSource",
    "RealtimeClient",
    "RealtimeConnectError",
    "RealtimeConnectionLost",
    "RealtimeNotConnected",
    "azure_endpoint",
    "client_text_frame",
    "endpoint_for",
    "local_endpoint",
    "openai_endpoint",
    "send_masked_text_now",
    "send_text_now",
]

log = logging.getLogger(__name__)

# The largest server message we take (a session or conversation item with long instructions and tools is
# the biggest real one, well under this); a larger one closes the connection (1009) instead of growing
# without bound, and the bridge reconnects as for any dropped connection.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A server (or a middlebox) that stops answering: websockets' defaults (a ping every 20 s, 20 s for its pong,
# then 10 s for a close handshake that will not come) left a caller in up to 50 s of dead air before the
# bridge reconnected. A pong takes milliseconds; these find a dead link in 5-10 s, plus 2 s to give up on it.
PING_INTERVAL_S = 5.0
PING_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0


class RealtimeConnectError(RealtimeError):
    """The WebSocket could not be opened. ``status`` is the HTTP status when the server refused it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RealtimeConnectionLost(RealtimeError):
    """The connection closed without us asking (network drop, server restart, session expiry)."""

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"realtime connection lost (code {code}, {reason or 'no reason'})")


class RealtimeNotConnected(RealtimeError):
    """send()/recv() before connect() or after close()."""


class _RedactSecrets(logging.Filter):
    """websockets logs handshake headers at DEBUG; keep the key out of any log."""

    _NAMES = ("authorization", "api-key")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in self._NAMES:
            record.args = (args[0], "***")
        return True


_wire_log = logging.getLogger(__name__ + ".wire")
_wire_log.addFilter(_RedactSecrets())

EventCallback = Callable[[Event], Awaitable[None] | None]


def send_text_now(ws: Connection, text: str) -> bool:
    """Send a text message synchronously when nothing stands in the way: the connection is open, no
    fragmented message is being sent and the write buffer is under its high-water mark (so the
    ``drain()`` that ``Connection.send`` awaits would return at once). The Sans-I/O core frames (and, on
    the client side, masks) the message and ``send_data()`` writes it, as ``send`` does after the same
    checks. Returns False, having sent nothing, otherwise: then await ``ws.send``. A websockets release
    whose connections have no ``send_in_progress`` always gets False (the checks rely on it)."""
    return _send_encoded_now(ws, text.encode())


def _send_encoded_now(ws: Connection, data: bytes) -> bool:
    if ws.paused or ws.protocol.state is not State.OPEN or getattr(ws, "send_in_progress", False) is not None:
        return False
    ws.protocol.send_text(data)
    ws.send_data()
    return True


class MaskSource:
    """Masking keys for client frames, cut four bytes at a time from one ``os.urandom`` block.

    RFC 6455 (5.3) wants a fresh key per frame that the application cannot predict; websockets draws
    each with ``secrets.token_bytes(4)``, one getrandom system call per frame, which at 50 audio appends
    per second per call was a measurable share of the uplink. The same source, one call per 1024 frames.
    The clients share one (``SHARED_MASKS``): keys cut in advance cost memory (about 45 kB a block).
    """

    __slots__ = ("_keys",)
    BLOCK_BYTES = 4096

    def __init__(self) -> None:
        self._keys: list[bytes] = []

    def next(self) -> bytes:
        keys = self._keys
        if not keys:
            block = os.urandom(self.BLOCK_BYTES)
            keys.extend(block[i : i + 4] for i in range(0, self.BLOCK_BYTES, 4))
        return keys.pop()


SHARED_MASKS = MaskSource()

_HEAD_7 = struct.Struct("!BB4s")  # FIN + text opcode, MASK + length, masking key
_HEAD_16 = struct.Struct("!BBH4s")  # ... length 126: a 16-bit length follows
_HEAD_64 = struct.Struct("!BBQ4s")  # ... length 127: a 64-bit length follows


def client_text_frame(data: bytes, mask: bytes) -> bytes:
    """One whole masked text frame carrying ``data`` (RFC 6455 5.2): what websockets' ``Frame.serialize``
    makes of ``Frame(OP_TEXT, data)`` on a client connection without extensions, given the same key."""
    n = len(data)
    if n < 126:
        head = _HEAD_7.pack(0x81, 0x80 | n, mask)
    elif n < 65536:
        head = _HEAD_16.pack(0x81, 0xFE, n, mask)
    else:
        head = _HEAD_64.pack(0x81, 0xFF, n, mask)
    return head + apply_mask(data, mask)


def send_masked_text_now(ws: ClientConnection, data: bytes, masks: MaskSource) -> bool:
    """:func:`send_text_now` of UTF-8 text on a client connection, framing it here with a key from
    ``masks`` and writing it to the transport. Only for a connection without extensions and without
    debug logging (the core would compress, or log every frame): then the core's ``send_text`` only
    frames the message, and skipping it leaves the core's state as it was; so the same checks, plus that
    the core holds no unsent frames (this one must not overtake them)."""
    protocol = ws.protocol
    if (ws.paused or protocol.state is not State.OPEN or getattr(ws, "send_in_progress", False) is not None
            or protocol.expect_continuation_frame or protocol.writes):
        return False
    keys = masks._keys  # MaskSource.next inlined (a key cut already, nearly always): every 20 ms per call
    ws.transport.write(client_text_frame(data, keys.pop() if keys else masks.next()))
    return True


class TakingConnection(Connection):
    """A websockets connection (either end) that offers each whole text message to ``take`` as soon as it
    is parsed, in the connection's data callback, while no earlier message waits in the queue that
    ``recv`` reads. ``take`` returns False to leave the message to that queue. Mixed in before
    ``ClientConnection`` or ``ServerConnection``; frames only arrive once the handshake is done."""

    take: Callable[[str], bool] | None = None
    response: Any  # set by the client's or the server's handshake

    def process_event(self, event: WsEvent) -> None:
        take = self.take
        if (take is not None and isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin
                and self.response is not None and not self.recv_messages.frames.queue):
            try:
                text = str(event.data, "utf-8")
            except UnicodeDecodeError:
                pass  # recv() fails the connection for it (1007), as it always did
            else:
                if take(text):
                    return
        super().process_event(event)


class _TakingConnection(TakingConnection, ClientConnection):
    """The client connection of :meth:`RealtimeClient.deliver_to`."""


def can_take(ws: Connection) -> bool:
    """The connection is one of ours and its message queue is the one ``TakingConnection`` knows (the
    websockets release may lay it out otherwise: then every message goes through ``recv``)."""
    frames = getattr(ws.recv_messages, "frames", None)
    return isinstance(ws, TakingConnection) and isinstance(getattr(frames, "queue", None), collections.deque)


class RealtimeClient:
    """One Realtime WebSocket session.

    ``async for event in client`` yields normalised server events until :meth:`close`; a connection
    that drops instead raises :class:`RealtimeConnectionLost` from the iterator (and from ``recv``).
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        dialect: str = "ga",
        *,
        connect_timeout: float = 10.0,
        after_receive: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        # Called after each server message is parsed: the agent runs its media clock's overdue ticks there
        # (MediaClock.run_due), since model events arrive in the same bursts as RTP packets.
        self.after_receive = after_receive
        self._headers = dict(headers or {})
        self.dialect: Dialect = check_dialect(dialect)
        self.connect_timeout = connect_timeout
        self._ws: ClientConnection | None = None
        self._masks: MaskSource | None = None  # when the appends are framed here (send_now)
        self._take: Callable[[Event], bool] | None = None  # deliver_to
        self._closing = False

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint, *, connect_timeout: float = 10.0,
                     after_receive: Callable[[], None] | None = None) -> RealtimeClient:
        return cls(endpoint.url, endpoint.headers, endpoint.dialect, connect_timeout=connect_timeout,
                   after_receive=after_receive)

    def __repr__(self) -> str:
        return f"RealtimeClient({self.url!r}, dialect={self.dialect!r})"

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._closing and self._ws.state is State.OPEN

    async def connect(self) -> None:
        """Open the WebSocket; raises RealtimeConnectError (with the cause chained) on any failure."""
        self._closing = False
        try:
            self._ws = await connect(
                self.url,
                additional_headers=self._headers,
                open_timeout=self.connect_timeout,
                max_size=MAX_MESSAGE_BYTES,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
                compression=None,
                logger=_wire_log,
                create_connection=_TakingConnection,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise RealtimeConnectError(
                f"{self.url}: server refused the WebSocket (HTTP {status})", status
            ) from exc
        except InvalidURI as exc:
            raise RealtimeConnectError(f"{self.url}: invalid URL") from exc
        except TimeoutError as exc:
            raise RealtimeConnectError(f"{self.url}: no answer within {self.connect_timeout} s") from exc
        except (OSError, InvalidHandshake) as exc:
            raise RealtimeConnectError(f"{self.url}: cannot connect ({exc})") from exc
        protocol = self._ws.protocol
        self._masks = None if protocol.extensions or protocol.debug else SHARED_MASKS
        self.deliver_to(self._take)
        log.info("realtime connected to %s (%s dialect)", self.url, self.dialect)

    def _conn(self) -> ClientConnection:
        if self._ws is None:
            raise RealtimeNotConnected("realtime client is not connected")
        return self._ws

    def _lost(self, exc: ConnectionClosed) -> RealtimeError:
        frame = exc.rcvd or exc.sent
        code = frame.code if frame is not None else None
        return RealtimeConnectionLost(code, frame.reason if frame is not None else "")

    async def send(self, event: Mapping[str, Any] | str) -> None:
        """Send one client event (a dict, or JSON text already built, e.g. events.audio_append_json)."""
        text = event if isinstance(event, str) else events.to_json(event)
        try:
            await self._conn().send(text)
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc

    def send_now(self, text: bytes) -> bool:
        """Write one event's JSON text (UTF-8) to the socket now, without a task switch (see
        ``send_masked_text_now``); False when that is not possible, and the caller awaits send() instead
        (which waits for room or raises RealtimeConnectionLost). The 20 ms audio appends take this path:
        one append per call per frame through a queue and a coroutine cost more than building it."""
        ws = self._ws
        if ws is None or self._closing:
            return False
        if self._masks is None:
            return _send_encoded_now(ws, text)
        return send_masked_text_now(ws, text, self._masks)

    def deliver_to(self, take: Callable[[Event], bool] | None) -> None:
        """Offer each server event to ``take`` as it arrives, from the connection's data callback, instead
        of queueing it for :meth:`recv` (a task switch and four coroutine frames per event, for the audio
        deltas about 25 times a second per call). Only while no earlier message waits for ``recv``, and
        only an event that parses: ``take`` returns False to leave it to ``recv`` (which then gets every
        later one in order until its queue is empty again). None: ``recv`` gets every message. Kept
        across :meth:`connect`."""
        self._take = take
        ws = self._ws
        if ws is not None and can_take(ws):
            assert isinstance(ws, TakingConnection)
            ws.take = None if take is None else self._take_text

    def _take_text(self, text: str) -> bool:
        take = self._take
        if take is None or self._closing:
            return False
        try:
            event = events.normalize(events.parse(text))
        except events.RealtimeEventError:
            return False  # recv logs and skips it, as any unparseable message
        if self.after_receive is not None:
            self.after_receive()  # as recv does for each message (a second call, if take declines, is cheap)
        return take(event)

    async def send_audio(self, audio: bytes) -> None:
        await self.send(events.audio_append_json(audio))

    async def recv(self) -> Event:
        """The next server event (GA names). Unparseable messages are logged and skipped."""
        ws = self._conn()
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                if self._closing:
                    raise RealtimeNotConnected("realtime client closed") from exc
                raise self._lost(exc) from exc
            if self.after_receive is not None:
                self.after_receive()
            try:
                return events.normalize(events.parse(message))
            except events.RealtimeEventError as exc:
                log.warning("realtime < unparseable server message skipped: %s", exc)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.recv()
            except RealtimeNotConnected:
                return

    async def run(self, callback: EventCallback) -> None:
        """Call ``callback`` with every server event until close() (returns) or a drop (raises)."""
        async for event in self:
            result = callback(event)
            if result is not None:
                await result

    async def close(self) -> None:
        self._closing = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
            log.info("realtime connection to %s closed", self.url)
