"""A Realtime server and a bridged call for tests of the session as the real API behaves: the server is a real
WebSocket server on 127.0.0.1 speaking the GA protocol as OpenAI does, scripted per connection; the bridge is
the real one (RealtimeClient, RealtimeSession, Downlink...) over a fake call and a playout queue that a 20 ms
task drains, as the media clock would. Used by test_realtime_session_quirks and test_response_retry_calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from sipagent.bridge.call import BridgeSettings, CallBridge, CallOutcome, RealtimeLink
from sipagent.bridge.settings import AgentConfig, RecordingConfig
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient
from sipagent.testing.call_leg import StubCallLeg
from sipagent.testing.media_leg import FRAME, QueueMediaLeg

TONE = b"\x00\x20" * (FRAME // 2)  # loud enough to tell from silence
SILENT, TALKING = b"\xff" * 160, b"\x80" * 160  # PCMU: zero, and a loud caller


# --- the server -------------------------------------------------------------------------------------------


@dataclass
class Conn:
    """One WebSocket connection to the fake server, and what it received (audio appends only counted)."""

    ws: ServerConnection
    n: int
    received: list[dict[str, Any]] = field(default_factory=list)
    appends: int = 0
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    responses: int = 0

    def types(self) -> list[str]:
        return [e["type"] for e in self.received]

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def respond(self, ms: int = 200, status: str = "completed", text: str = "Sure.",
                      details: dict[str, Any] | None = None, delta_ms: int = 40) -> str:
        """A whole response as OpenAI streams it: created, audio deltas, transcript, done."""
        self.responses += 1
        rid, item = f"resp_{self.n}_{self.responses}", f"item_{self.n}_{self.responses}"
        await self.send({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
        for _ in range(ms // delta_ms):
            await self.delta(rid, item, delta_ms)
        await self.send({"type": "response.output_audio_transcript.done", "response_id": rid, "item_id": item,
                         "transcript": text})
        await self.done(rid, item, status, text, details)
        return item

    async def delta(self, rid: str, item: str, ms: int) -> None:
        audio = base64.b64encode(TONE[: 48 * ms] if ms <= 20 else TONE * (ms // 20)).decode()
        await self.send({"type": "response.output_audio.delta", "response_id": rid, "item_id": item,
                         "output_index": 0, "content_index": 0, "delta": audio})

    async def done(self, rid: str, item: str, status: str = "completed", text: str = "",
                   details: dict[str, Any] | None = None) -> None:
        response: dict[str, Any] = {
            "id": rid, "status": status, "status_details": details,
            "output": [{"id": item, "type": "message", "role": "assistant",
                        "content": [{"type": "output_audio", "transcript": text}]}],
            "usage": {"total_tokens": 10, "input_tokens": 6, "output_tokens": 4}}
        await self.send({"type": "response.done", "response": response})


Script = Callable[[Conn, dict[str, Any]], Awaitable[None]]


class Server:
    """A Realtime server on loopback: ``hello`` (per connection number) says session.created or not;
    ``script`` answers each client event (the default: a session.updated, and a short response to each
    response.create)."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.port = 0
        self.silent: set[int] = set()  # connection numbers that never say session.created nor answer
        self.script: Script = self.default

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def default(self, conn: Conn, event: dict[str, Any]) -> None:
        if event["type"] == "session.update":
            await conn.send({"type": "session.updated", "session": event["session"]})
        elif event["type"] == "response.create":
            await conn.respond()

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws, len(self.conns) + 1)
        self.conns.append(conn)
        try:
            if conn.n not in self.silent:
                await conn.send({"type": "session.created", "session": {"id": f"sess_{conn.n}", "type": "realtime"}})
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "input_audio_buffer.append":
                    conn.appends += 1
                    continue
                conn.received.append(event)
                if conn.n not in self.silent:
                    await self.script(conn, event)
        except Exception:  # the client went away mid-send: the connection is over
            pass
        finally:
            conn.closed_at = time.monotonic()


@contextlib.asynccontextmanager
async def realtime_server() -> AsyncIterator[Server]:
    server = Server()
    async with serve(server.handler, "127.0.0.1", 0, max_size=None) as ws_server:
        server.port = next(iter(ws_server.sockets)).getsockname()[1]
        yield server


# --- the call ---------------------------------------------------------------------------------------------


class Media(QueueMediaLeg):
    """The call's media leg: a real playout queue of 24 kHz PCM drained one frame per 20 ms tick."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[float, bool]] = []  # (when, audio?) of each frame sent
        self.caller = SILENT  # the PCMU payload the caller sends each tick

    def audio_frames(self, since: float = 0.0) -> int:
        return sum(1 for at, audio in self.heard if audio and at >= since)


@dataclass
class Running:
    bridge: CallBridge
    media: Media
    call: StubCallLeg
    metrics: Metrics
    task: asyncio.Task[CallOutcome]

    async def until(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            if self.task.done():
                raise AssertionError(f"the call ended ({self.task.result().reason}) while waiting for {what}")
            await asyncio.sleep(0.02)

    def events(self, name: str) -> list[dict[str, Any]]:
        transcript = self.bridge.transcript
        entries = list(transcript.entries) if transcript is not None else []
        return [e for e in entries if e["type"] == "event" and e.get("event") == name]

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextlib.asynccontextmanager
async def bridged(server: Server, tmp_path: Path, *, greeting: str = "Hello.", max_session_s: float = 3300.0,
                  reconnect_delays: tuple[float, ...] = (0.05, 0.1)) -> AsyncIterator[Running]:
    """A call bridged to ``server``; a 20 ms task drains the playout and sends the caller's (silent) audio."""
    async def connect() -> RealtimeLink:
        client = RealtimeClient(server.url, connect_timeout=5)
        await client.connect()
        return client

    media, call, metrics = Media(), StubCallLeg("rt-quirks"), Metrics()
    agent = AgentConfig(greeting=greeting, idle_timeout_s=0, max_call_s=0)
    settings = BridgeSettings(agent=agent, recording=RecordingConfig(dir=str(tmp_path)), session=ev.SessionSettings(),
                              max_session_s=max_session_s, reconnect_delays=reconnect_delays, metrics=metrics)
    bridge = CallBridge(call, media, connect, settings)  # type: ignore[arg-type]

    async def clock() -> None:
        while True:
            await asyncio.sleep(0.02)
            payload, audio = media.queue.pop_frame()
            media.heard.append((time.monotonic(), audio))
            media.sent_audio = (payload if audio else bytes(FRAME), 1e6 if audio else 0.0)
            bridge.on_outbound_frame(payload, audio)
            bridge.on_inbound_frame(media.caller)

    ticking = asyncio.ensure_future(clock())
    task = asyncio.ensure_future(bridge.run())
    running = Running(bridge, media, call, metrics, task)
    try:
        yield running
    finally:
        await call.hangup()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking


def run(main: Awaitable[None]) -> None:
    asyncio.run(main)  # type: ignore[arg-type]


async def greeted(call: Running, server: Server) -> None:
    """The greeting was asked for and the caller heard all of it."""
    await call.until(lambda: server.conns and server.conns[0].responses, 5, "the greeting")
    await call.until(lambda: call.media.audio_frames() >= 10 and call.media.buffered_ms == 0, 5, "the greeting heard")


def system_items(conn: Conn) -> list[str]:
    return [part["text"] for e in conn.received if e["type"] == "conversation.item.create"
            and e["item"].get("role") == "system" for part in e["item"]["content"]]
