"""The offline Realtime-compatible backend: a websockets server around :class:`LocalSession`.

Each connection gets its own session state machine; this shell only moves bytes and time: it feeds
client messages in, sends what comes out, runs speech recognition and synthesis in worker threads, and
paces output audio by the event-loop clock (``chunk_ms`` per delta, at most ``lead_ms`` ahead of real
time). The real API sends a response's audio faster than it plays (the client buffers it and reports what
was heard with ``conversation.item.truncate``); the default lead of 100 ms is the harsher case, a client
that must keep up with deltas arriving just in time.

Exposed to a network, it is bounded: a message over 4 MiB closes the connection (1009), at most
``max_sessions`` sessions run at once (more get HTTP 503 at the handshake), each connection has at most
a few utterances waiting for recognition, and the session core answers malformed, wrongly typed or too
deeply nested events with an ``error`` event. Off loopback it needs a bearer token (``token``), checked
at the handshake (HTTP 401 without it) in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from sipagent.errors import RealtimeError
from sipagent.realtime import events
from sipagent.realtime.client import _RedactSecrets, send_text_now
from sipagent.realtime.local.asr import GrammarRecognizer
from sipagent.realtime.local.brain import Brain, LocalBrainConfig
from sipagent.realtime.local.session import Ids, LocalSession, Output, Respond, ResponseRun, Transcribe
from sipagent.realtime.local.tts import Synthesizer

log = logging.getLogger(__name__)
# websockets logs each handshake header at DEBUG: the client's bearer token must not be one of them.
_wire_log = logging.getLogger(__name__ + ".wire")
_wire_log.addFilter(_RedactSecrets())

MAX_MESSAGE_BYTES = 4 << 20  # one client message; a bigger one closes the connection with 1009
MAX_QUEUED_FRAMES = 4  # received frames buffered per connection before reading pauses (16 MiB at most)
MAX_SESSIONS = 64
MAX_TRANSCRIPTIONS = 4  # utterances per connection waiting for (or in) recognition
TOKEN_ENV = "SIPAGENT_LOCAL_TOKEN"


def is_loopback(host: str) -> bool:
    """Only a loopback address (or ``localhost``) is reachable from this host alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "": may be any interface


class LocalRealtimeServer:
    def __init__(
        self,
        config: LocalBrainConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        chunk_ms: int = 40,
        lead_ms: int = 100,
        token: str | None = None,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if not 20 <= chunk_ms <= 100:
            raise RealtimeError("chunk_ms must be between 20 and 100")
        if not 0 <= lead_ms <= 60_000:
            raise RealtimeError("lead_ms must be between 0 and 60000")
        if max_sessions < 1:
            raise RealtimeError("max_sessions must be at least 1")
        if not token and not is_loopback(host):
            raise RealtimeError(
                f"refusing to listen on {host or 'every interface'} without a token: anyone who can reach it "
                f"could use the backend; set --token or {TOKEN_ENV}, or listen on 127.0.0.1"
            )
        self.config = config
        self.host = host
        self.port = port
        self.chunk_ms = chunk_ms
        self.lead_ms = lead_ms
        self.max_sessions = max_sessions
        # Only a digest is kept: compared in constant time, and of a fixed length whatever the token's.
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None
        self._server: Server | None = None
        self._asr: GrammarRecognizer | None = None
        self._tts: Synthesizer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[_Connection] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/v1/realtime"

    async def start(self) -> None:
        # Loading the recogniser takes ~0.1 s; do it once, off the loop, before accepting calls.
        self._asr = await asyncio.to_thread(GrammarRecognizer, Brain(self.config).vocabulary())
        self._tts = Synthesizer(self.config.tts.voice, self.config.tts.rate)
        self._server = await ws_serve(
            self._connection,
            self.host,
            self.port,
            process_request=self._admit,
            max_size=MAX_MESSAGE_BYTES,
            max_queue=MAX_QUEUED_FRAMES,
            compression=None,
            logger=_wire_log,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        log.info("local realtime backend listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> LocalRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake's checks, in this order: the token (401), the path (404), room for a session
        (503). None lets the handshake go on."""
        if self._token_digest is not None and not self._authorized(request.headers):
            log.info("local realtime: refused a handshake from %s without a valid token",
                     connection.remote_address)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "a bearer token is required\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sipagent"'
            return response
        if not request.path.split("?", 1)[0].rstrip("/").endswith("/realtime"):
            return connection.respond(HTTPStatus.NOT_FOUND, "the Realtime endpoint is /v1/realtime\n")
        if len(self._connections) >= self.max_sessions:
            log.warning("local realtime: refused a session, %d are running", len(self._connections))
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions\n")
        return None

    def _authorized(self, headers: Headers) -> bool:
        values = headers.get_all("Authorization")
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].strip().partition(" ")
        given = hashlib.sha256(credentials.strip().encode("utf-8", "surrogateescape")).digest()
        assert self._token_digest is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._token_digest)

    async def _connection(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        if len(self._connections) >= self.max_sessions:  # handshakes admitted together can overshoot
            await ws.close(CloseCode.TRY_AGAIN_LATER, "too many sessions")
            return
        beta = "realtime=v1" in (ws.request.headers.get("OpenAI-Beta") or "")
        query = ws.request.path.partition("?")[2]
        model = next((p[6:] for p in query.split("&") if p.startswith("model=")), "")
        session = LocalSession(self.config, Ids(secrets.token_hex(3)), "beta" if beta else "ga", model)
        conn = _Connection(self, ws, session)
        self._connections.add(conn)
        log.info("local realtime session %s opened (%s)", session.session_id, session.dialect)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            conn.cancel_all()
            log.info("local realtime session %s closed", session.session_id)


class _Connection:
    """One client connection: the receive loop plus its transcription and response tasks."""

    def __init__(self, server: LocalRealtimeServer, ws: ServerConnection, session: LocalSession) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.tasks: set[asyncio.Task[None]] = set()
        self.transcriptions = 0

    async def run(self) -> None:
        await self.dispatch(self.session.created())
        try:
            async for message in self.ws:
                try:
                    outputs = self.session.handle_text(message)
                except Exception:  # a bug the input found: it costs the client one event, not the session
                    log.exception("local realtime %s: a client event failed", self.session.session_id)
                    outputs = [self.session.error("The server failed on this event", "server_error",
                                                  kind="server_error")]
                await self.dispatch(outputs)
        except ConnectionClosed:
            pass

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        self.server._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.server._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("local realtime task failed", exc_info=task.exception())

    async def dispatch(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Transcribe):
                if self.transcriptions >= MAX_TRANSCRIPTIONS:  # commits faster than recognition: shed
                    await self.dispatch([self.session.error(
                        "Too many utterances waiting for transcription; this one was dropped",
                        "rate_limit_exceeded", None, kind="server_error")])
                    continue
                self.transcriptions += 1
                self.spawn(self.transcribe(out))
            elif isinstance(out, Respond):
                self.spawn(self.respond(out.run))
            else:
                text = _delta_json(out) if out.get("type") == AUDIO_DELTA else events.to_json(out)
                if send_text_now(self.ws, text):  # no task switch for the common case (audio deltas)
                    continue
                try:
                    await self.ws.send(text)
                except ConnectionClosed:
                    return

    async def transcribe(self, job: Transcribe) -> None:
        assert self.server._asr is not None
        try:
            text = await asyncio.to_thread(self.server._asr.recognize, job.pcm24k)
        finally:
            self.transcriptions -= 1
        log.info("local realtime %s < heard %r", self.session.session_id, text)
        await self.dispatch(self.session.transcribed(job.item_id, text, job.respond))

    async def respond(self, run: ResponseRun) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.server.config.response_delay_ms / 1000)
        reply = run.reply
        if reply.text and not run.finished:
            assert self.server._tts is not None
            pcm = await asyncio.to_thread(self.server._tts.synthesize, reply.text)
            if run.finished:
                return
            await self.dispatch(run.start_message())
            await self.stream(run, pcm, reply.text, loop)
            if run.finished:
                return
            await self.dispatch(run.end_message())
        if reply.tool is not None and not run.finished:
            await self.dispatch(run.function_call(reply.tool))
        await self.dispatch(run.finish("completed"))

    async def stream(self, run: ResponseRun, pcm: bytes, text: str, loop: asyncio.AbstractEventLoop) -> None:
        """Send audio deltas in real time; transcript words go out spread across the audio."""
        chunk = 24000 * 2 * self.server.chunk_ms // 1000
        chunks = [pcm[i : i + chunk] for i in range(0, len(pcm), chunk)] or [b""]
        words = text.split()
        per_chunk = max(1, -(-len(words) // len(chunks)))
        t0 = loop.time()
        for index, piece in enumerate(chunks):
            due = t0 + (index * self.server.chunk_ms - self.server.lead_ms) / 1000
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if run.finished:
                return
            spoken = words[index * per_chunk : (index + 1) * per_chunk]
            delta = (" " if index and spoken else "") + " ".join(spoken)
            await self.dispatch(run.audio(run.encode(piece), delta))


AUDIO_DELTA = "response.output_audio.delta"


def _delta_json(event: dict[str, Any]) -> str:
    """An audio delta's JSON with its base64 spliced in (base64 needs no escaping), so json.dumps does not
    scan ~2.5 KB of it for every 40 ms of every call's speech. Same text as events.to_json: ``delta`` is
    the event's last key."""
    delta = event.get("delta")
    if not isinstance(delta, str) or next(reversed(event)) != "delta":
        return events.to_json(event)
    head = events.to_json({key: value for key, value in event.items() if key != "delta"})
    return head[:-1] + ',"delta":"' + delta + '"}'


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise RealtimeError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(
    listen: str,
    brain_config: LocalBrainConfig,
    lead_ms: int = 100,
    *,
    token: str | None = None,
    max_sessions: int = MAX_SESSIONS,
) -> None:
    """What ``sipagent local-realtime --listen HOST:PORT`` runs: serve until cancelled."""
    host, port = parse_listen(listen)
    server = LocalRealtimeServer(brain_config, host, port, lead_ms=lead_ms, token=token, max_sessions=max_sessions)
    await server.start()
    print(f"local realtime backend listening on {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
