"""The hot-path shortcuts on a real loop: overdue ticks run from an I/O callback (both loops), and audio
appends written at once over a real WebSocket, falling back when the connection is not open."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from test_rtp_clock import assert_paced
from websockets.asyncio.server import ServerConnection, serve

from sipagent.media.clock import MediaClock
from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient

pytestmark = pytest.mark.timeout(60)

LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run,
}


class Stamps:
    def __init__(self) -> None:
        self.at: list[float] = []
        self.elapsed: list[int] = []

    def on_tick(self, elapsed: int) -> None:
        self.at.append(time.monotonic())
        self.elapsed.append(elapsed)


@pytest.mark.parametrize("loop", LOOPS)
def test_run_due_sends_an_overdue_tick_from_inside_a_busy_callback(loop: str) -> None:
    async def body() -> None:
        clock = MediaClock(phases=1)
        stream = Stamps()
        clock.register(stream)
        clock.start()
        await asyncio.sleep(0.1)  # ticking
        ran_inside: list[bool] = []

        def busy_callback() -> None:
            # One long batch of I/O work: the timer cannot fire until it returns, run_due() can. At least
            # 50 ms (2-3 periods), and on until a tick has run (bounded: a process descheduled for the
            # whole 50 ms has had no chance to run one yet).
            before = len(stream.at)
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < 0.05 or (len(stream.at) == before and elapsed < 1.0):
                clock.run_due()
            ran_inside.append(len(stream.at) > before)

        asyncio.get_running_loop().call_soon(busy_callback)
        await asyncio.sleep(0.1)
        clock.stop()
        assert ran_inside == [True]
        # Ticks run from inside the callback are on the grid, not bunched, even when the machine stalls.
        assert_paced(stream.at, stream.elapsed, 0.015)

    LOOPS[loop](body())


@pytest.mark.parametrize("loop", LOOPS)
def test_send_now_writes_appends_in_order_and_declines_when_closed(loop: str) -> None:
    async def body() -> None:
        received: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                received.append(json.loads(message))
                if len(received) == 4:
                    done.set()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            client = RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime")
            await client.connect()
            assert client.send_now(ev.audio_append_json(b"\x01\x02").encode())
            await client.send(ev.audio_commit())
            assert client.send_now(ev.audio_append_json(b"\x03").encode())
            assert client.send_now(ev.audio_append_json(b"\x04").encode())
            await asyncio.wait_for(done.wait(), 10)
            assert [e["type"] for e in received] == ["input_audio_buffer.append", "input_audio_buffer.commit",
                                                     "input_audio_buffer.append", "input_audio_buffer.append"]
            assert received[0]["audio"] == "AQI=" and received[3]["audio"] == "BA=="
            await client.close()
            assert not client.send_now(ev.audio_append_json(b"\x05").encode())

    LOOPS[loop](body())


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("wire_debug", [False, True])
def test_send_now_frames_of_every_length_form_reach_a_real_server(loop: str, wire_debug: bool) -> None:
    """The client frames the appends itself (7-, 16- and 64-bit length forms) between events websockets
    frames; with the wire log at DEBUG it leaves the framing to websockets (which logs each frame)."""
    wire = logging.getLogger("sipagent.realtime.client.wire")

    async def body() -> None:
        received: list[str] = []
        done = asyncio.Event()
        audio = [bytes(range(256)) * (n // 256) + bytes(n % 256) for n in (0, 40, 60, 960, 49000, 50000)]
        expected = [ev.audio_append_json(a) for a in audio] + [ev.to_json(ev.audio_commit())]

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                assert isinstance(message, str)  # text frames, whichever side framed them
                received.append(message)
                if len(received) == len(expected) + 1:
                    done.set()

        async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            client = RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime")
            await client.connect()
            assert (client._masks is None) == wire_debug
            await client.send(ev.audio_commit())
            for text in expected[:-1]:
                assert client.send_now(text.encode())
            await client.send(ev.audio_commit())
            await asyncio.wait_for(done.wait(), 10)
            assert received == [expected[-1], *expected]
            await client.close()

    level = wire.level
    wire.setLevel(logging.DEBUG if wire_debug else logging.NOTSET)
    try:
        LOOPS[loop](body())
    finally:
        wire.setLevel(level)
