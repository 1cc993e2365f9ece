"""The offline Realtime backend over a real WebSocket: spoken turns, tools, errors, barge-in.

Every server event received is validated against the official openai package's models (GA or beta),
and the openai package's own realtime client completes a spoken turn against the backend.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaServerEvent
from pydantic import TypeAdapter

from sipagent.errors import RealtimeError
from sipagent.media import kernel
from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient
from sipagent.realtime.local import server as server_mod
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.server import LocalRealtimeServer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"
    ),
]

SERVER_MODELS = {"ga": TypeAdapter(GaServerEvent), "beta": TypeAdapter(BetaServerEvent)}
# Fields the live beta API sends that its generated models do not declare.
BETA_EXTRAS = {"response.function_call_arguments.done": {"name"}}

CONFIG = LocalBrainConfig.from_mapping(
    {
        "response_delay_ms": 20,
        "vad": {"threshold_db": -40, "min_speech_ms": 150, "silence_ms": 400},
        "intents": [
            {
                "name": "hours",
                "phrases": ["what are your opening hours", "when are you open"],
                "reply": "We are open from nine to five.",
            },
            {
                "name": "order_status",
                "phrases": ["where is my order", "track my order"],
                "reply": "Let me look that up.",
                "tool": {"name": "lookup_order", "arguments": {"order_id": "{digits}"}},
                "reply_after_tool": "Your order {status}.",
            },
        ],
        "fallback": "Sorry, I did not catch that.",
    }
)
HOURS_REPLY = "We are open from nine to five."


def validate(event: dict[str, Any], dialect: str) -> None:
    model = SERVER_MODELS[dialect].validate_python(event)
    assert model.type == event["type"]
    extra = set(event) - set(type(model).model_fields) - BETA_EXTRAS.get(event["type"], set())
    assert not extra, f"{event['type']}: fields unknown to the openai model: {extra}"


def speech(text: str) -> bytes:
    """24 kHz PCM16 speech from espeak-ng (resampled by sox, independent of the code under test). ``-R``:
    sox dithers with a fixed seed, so every run feeds the recogniser the same samples."""
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "-s", "150", text], capture_output=True, check=True
    ).stdout
    return subprocess.run(
        [
            "sox",
            "-R",
            "-t",
            "wav",
            "-",
            "-r",
            "24000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-L",
            "-t",
            "raw",
            "-",
        ],
        input=wav,
        capture_output=True,
        check=True,
    ).stdout


def utterance(text: str) -> bytes:
    return b"\x00" * 9600 + speech(text) + b"\x00" * 48000  # 200 ms before, 1 s of silence after


class Wire:
    """A raw websockets client that records and validates every server event (no normalisation)."""

    def __init__(self, client: RealtimeClient, dialect: str) -> None:
        self.client = client
        self.dialect = dialect
        self.events: list[dict[str, Any]] = []
        self.server: LocalRealtimeServer | None = None

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.client.send(event)

    async def send_audio(self, pcm: bytes, chunk: int = 960) -> None:
        for start in range(0, len(pcm), chunk):
            await self.client.send_audio(pcm[start : start + chunk])

    async def next(self) -> dict[str, Any]:
        ws = self.client._ws
        assert ws is not None
        raw = json.loads(await asyncio.wait_for(ws.recv(), 30))
        validate(raw, self.dialect)
        self.events.append(raw)
        return raw

    async def until(
        self, kind: str, on_event: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    ) -> dict[str, Any]:
        while True:
            event = await self.next()
            if on_event is not None:
                await on_event(event)
            if event["type"] == kind:
                return event

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@asynccontextmanager
async def session(dialect: str = "ga", lead_ms: int = 100, **settings: Any) -> AsyncIterator[Wire]:
    async with LocalRealtimeServer(CONFIG, lead_ms=lead_ms) as server:
        headers = {"OpenAI-Beta": "realtime=v1"} if dialect == "beta" else {}
        client = RealtimeClient(server.url + "?model=gpt-realtime", headers, dialect)
        await client.connect()
        wire = Wire(client, dialect)
        wire.server = server
        assert (await wire.next())["type"] == "session.created"
        base = {
            "transcription_model": "gpt-4o-mini-transcribe",
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
        }
        await wire.send(ev.session_update(ev.SessionSettings(**{**base, **settings}), dialect))  # type: ignore[arg-type]
        assert (await wire.next())["type"] == "session.updated"
        try:
            yield wire
        finally:
            await client.close()


AUDIO_DELTA = {"ga": "response.output_audio.delta", "beta": "response.audio.delta"}
TRANSCRIPT_DONE = {"ga": "response.output_audio_transcript.done", "beta": "response.audio_transcript.done"}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_spoken_turn_streams_audio_reply(dialect: str) -> None:
    async def run() -> None:
        async with session(dialect) as wire:
            loop = asyncio.get_running_loop()
            arrivals: list[float] = []

            async def stamp(event: dict[str, Any]) -> None:
                if event["type"] == AUDIO_DELTA[dialect]:
                    arrivals.append(loop.time())

            await wire.send_audio(utterance("what are your opening hours"))
            done = await wire.until("response.done", stamp)
            assert done["response"]["status"] == "completed"
            types = [e["type"] for e in wire.events]
            for kind in [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "response.created",
            ]:
                assert kind in types
            assert types.index("input_audio_buffer.speech_started") < types.index(
                "input_audio_buffer.speech_stopped"
            )
            started = wire.of("input_audio_buffer.speech_started")[0]
            stopped = wire.of("input_audio_buffer.speech_stopped")[0]
            assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
            heard = wire.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
            assert heard == "what are your opening hours"
            assert wire.of(TRANSCRIPT_DONE[dialect])[0]["transcript"] == "We are open from nine to five."
            audio = b"".join(base64.b64decode(e["delta"]) for e in wire.of(AUDIO_DELTA[dialect]))
            seconds = len(audio) / 48000
            assert seconds > 1.0
            # Paced in real time (at most lead_ms ahead), not sent all at once.
            assert arrivals[-1] - arrivals[0] >= 0.5 * seconds
            assert all(
                len(base64.b64decode(e["delta"])) <= 48000 * 100 // 1000
                for e in wire.of(AUDIO_DELTA[dialect])
            )
            if dialect == "beta":
                assert "conversation.item.created" in types and "response.output_audio.delta" not in types
            else:
                assert "conversation.item.added" in types and "response.audio.delta" not in types

    asyncio.run(run())


def test_a_long_lead_sends_the_reply_ahead_of_real_time() -> None:
    """As the real API does: --lead-ms 60000 streams a whole short reply at once, in order."""

    async def run() -> None:
        async with session(lead_ms=60_000) as wire:
            loop = asyncio.get_running_loop()
            arrivals: list[float] = []

            async def stamp(event: dict[str, Any]) -> None:
                if event["type"] == AUDIO_DELTA["ga"]:
                    arrivals.append(loop.time())

            await wire.send(ev.user_text("what are your opening hours"))
            await wire.send(ev.response_create())
            await wire.until("response.done", stamp)
            audio = b"".join(base64.b64decode(e["delta"]) for e in wire.of(AUDIO_DELTA["ga"]))
            seconds = len(audio) / 48000
            assert seconds > 1.0
            assert arrivals[-1] - arrivals[0] < 0.25 * seconds

    asyncio.run(run())


def test_lead_out_of_range_is_refused() -> None:
    with pytest.raises(RealtimeError, match="lead_ms"):
        LocalRealtimeServer(CONFIG, lead_ms=-1)


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_tool_call_turn(dialect: str) -> None:
    async def run() -> None:
        async with session(dialect) as wire:
            await wire.send(ev.user_text("where is my order 7721", dialect))  # type: ignore[arg-type]
            await wire.send(ev.response_create())
            first = await wire.until("response.done")
            assert first["response"]["status"] == "completed"
            call = wire.of("response.function_call_arguments.done")[0]
            assert call["name"] == "lookup_order" and json.loads(call["arguments"]) == {"order_id": "7721"}
            deltas = "".join(e["delta"] for e in wire.of("response.function_call_arguments.delta"))
            assert deltas == call["arguments"]
            assert [o["type"] for o in first["response"]["output"]] == ["message", "function_call"]
            await wire.send(
                ev.function_call_output(call["call_id"], json.dumps({"status": "shipped yesterday"}))
            )
            await wire.send(ev.response_create())
            second = await wire.until("response.done")
            assert second["response"]["status"] == "completed"
            assert wire.of(TRANSCRIPT_DONE[dialect])[-1]["transcript"] == "Your order shipped yesterday."

    asyncio.run(run())


def test_dtmf_digits_complete_a_waiting_intent() -> None:
    async def run() -> None:
        async with session("ga", turn_detection=None) as wire:
            await wire.send(ev.user_text("where is my order"))
            await wire.send(ev.response_create())
            await wire.until("response.done")
            assert not wire.of("response.function_call_arguments.done")  # no digits yet: ask, wait
            await wire.send(ev.user_text("caller pressed 4 2 #"))
            await wire.send(ev.response_create())
            await wire.until("response.done")
            call = wire.of("response.function_call_arguments.done")[0]
            assert json.loads(call["arguments"]) == {"order_id": "42"}

    asyncio.run(run())


def test_g711_ulaw_in_and_out() -> None:
    async def run() -> None:
        async with session("ga", audio_format="g711_ulaw") as wire:
            pcm8k = kernel.Resampler(24000, 8000).process(utterance("when are you open"))
            await wire.send_audio(kernel.ulaw_encode(pcm8k), chunk=160)
            done = await wire.until("response.done")
            assert done["response"]["status"] == "completed"
            # Narrowband (8 kHz) speech is harder for the 16 kHz model: part of the phrase must be heard
            # (a stray extra word such as "two" happens), and the intent must still be found.
            heard = wire.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
            assert len(set(heard.split()) & {"when", "are", "you", "open"}) >= 2, heard
            assert wire.of("response.output_audio_transcript.done")[-1]["transcript"] == HOURS_REPLY
            payload = b"".join(base64.b64decode(e["delta"]) for e in wire.of("response.output_audio.delta"))
            pcm = kernel.ulaw_decode(payload)
            assert len(payload) > 8000  # > 1 s at 8000 bytes/s
            assert (
                max(abs(int.from_bytes(pcm[i : i + 2], "little", signed=True)) for i in range(0, len(pcm), 2))
                > 1000
            )

    asyncio.run(run())


def test_error_events_for_bad_input_and_session_goes_on() -> None:
    async def run() -> None:
        async with session("ga", turn_detection=None) as wire:
            bad: list[tuple[str | dict[str, Any], str]] = [
                ("{not json", "invalid_json"),
                ({"type": "no.such.event", "event_id": "e1"}, "invalid_value"),
                (ev.item_truncate("item_missing", 100), "item_not_found"),
                (ev.item_delete("item_missing"), "item_not_found"),
                (ev.response_cancel(), "response_cancel_not_active"),
                (ev.audio_commit(), "input_audio_buffer_commit_empty"),
                (ev.function_call_output("call_unknown", "{}"), "invalid_value"),
                ({"type": "input_audio_buffer.append", "audio": "%%%"}, "invalid_value"),
                ({"type": "conversation.item.create"}, "missing_required_parameter"),
            ]
            for event, code in bad:
                await wire.send(event)
                error = await wire.next()
                assert error["type"] == "error" and error["error"]["code"] == code, (event, error)
            assert wire.events[-8]["error"]["event_id"] == "e1"
            await wire.send(ev.response_create('Say "hello there".'))
            await wire.send(ev.response_create())
            busy = await wire.until("error")
            assert busy["error"]["code"] == "conversation_already_has_active_response"
            done = await wire.until("response.done")
            assert done["response"]["status"] == "completed"
            assert wire.of("response.output_audio_transcript.done")[-1]["transcript"] == "hello there"

    asyncio.run(run())


def test_cancel_and_truncate() -> None:
    async def run() -> None:
        async with session("ga", turn_detection=None) as wire:
            await wire.send(ev.response_create('Say "one two three four five six seven eight nine ten".'))
            delta = await wire.until("response.output_audio.delta")
            await wire.send(ev.response_cancel())
            done = await wire.until("response.done")
            assert done["response"]["status"] == "cancelled"
            assert done["response"]["status_details"]["reason"] == "client_cancelled"
            item_id = delta["item_id"]
            assert done["response"]["output"][0]["status"] == "incomplete"
            await wire.send(ev.item_truncate(item_id, 10_000_000))
            assert (await wire.next())["error"]["code"] == "invalid_value"
            await wire.send(ev.item_truncate(item_id, 20))
            truncated = await wire.next()
            assert truncated["type"] == "conversation.item.truncated" and truncated["audio_end_ms"] == 20
            await wire.send(ev.item_delete(item_id))
            assert (await wire.next())["type"] == "conversation.item.deleted"
            await asyncio.sleep(0.3)
            await wire.send(ev.audio_clear())
            assert (await wire.next())["type"] == "input_audio_buffer.cleared"  # no audio after response.done

    asyncio.run(run())


def test_caller_speech_interrupts_the_response() -> None:
    async def run() -> None:
        async with session("ga") as wire:
            await wire.send(
                ev.response_create('Say "one two three four five six seven eight nine ten eleven".')
            )
            await wire.until("response.output_audio.delta")
            await wire.send_audio(utterance("when are you open"))
            await wire.until("input_audio_buffer.speech_started")
            done = await wire.until("response.done")
            assert done["response"]["status"] == "cancelled"
            assert done["response"]["status_details"]["reason"] == "turn_detected"
            answer = await wire.until("response.done")  # then the caller's turn is answered
            assert answer["response"]["status"] == "completed"
            assert wire.of("response.output_audio_transcript.done")[-1]["transcript"] == HOURS_REPLY

    asyncio.run(run())


def test_openai_package_client_completes_a_spoken_turn() -> None:
    from openai import AsyncOpenAI

    async def run() -> None:
        async with LocalRealtimeServer(CONFIG) as server:
            client = AsyncOpenAI(
                api_key="sk-local",
                base_url=f"http://127.0.0.1:{server.port}/v1",
                websocket_base_url=f"ws://127.0.0.1:{server.port}/v1",
            )
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "output_modalities": ["audio"],
                        "audio": {
                            "input": {
                                "format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "gpt-4o-mini-transcribe"},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                            },
                            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
                        },
                    }
                )
                pcm = utterance("what are your opening hours")
                for start in range(0, len(pcm), 4800):
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode(pcm[start : start + 4800]).decode()
                    )
                seen: list[str] = []
                audio = bytearray()
                transcript = ""
                heard = ""
                async with asyncio.timeout(30):
                    async for event in conn:
                        seen.append(event.type)
                        if event.type == "response.output_audio.delta":
                            audio += base64.b64decode(event.delta)
                        elif event.type == "response.output_audio_transcript.done":
                            transcript = event.transcript
                        elif event.type == "conversation.item.input_audio_transcription.completed":
                            heard = event.transcript
                        elif event.type == "response.done":
                            assert event.response.status == "completed"
                            break
                assert seen[0] == "session.created" and "session.updated" in seen
                assert heard == "what are your opening hours"
                assert transcript == "We are open from nine to five."
                assert len(audio) > 48000

    asyncio.run(run())


def added_texts(wire: Wire) -> list[str]:
    return [e["item"]["content"][0]["text"] for e in wire.of("conversation.item.added")
            if e["item"].get("role") == "user"]


def test_client_events_are_handled_as_they_arrive_and_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are taken in the connection's data callback (no queue and task switch per audio append)
    and answered in the order sent."""
    taken: list[bool] = []
    take = server_mod._Connection._take

    def counting(self: server_mod._Connection, text: str) -> bool:
        taken.append(took := take(self, text))
        return took

    monkeypatch.setattr(server_mod._Connection, "_take", counting)

    async def run() -> None:
        async with session() as wire:
            for n in range(30):
                await wire.send(ev.user_text(f"line {n}"))
            while len(added_texts(wire)) < 30:
                await wire.next()
            assert added_texts(wire) == [f"line {n}" for n in range(30)]
            assert taken.count(True) >= 25  # a few may meet the loop still busy with an earlier one

    asyncio.run(run())


def test_output_that_must_wait_for_room_keeps_every_later_event_behind_it() -> None:
    """A client that stops reading: the server's write buffer fills during a streamed reply, so deltas and
    the answers to the client's next messages wait for room; once the client reads again, it gets the
    whole reply's audio in order and its own items in the order sent, none lost."""

    async def run() -> None:
        async with session(lead_ms=60_000) as wire:
            server = wire.server
            assert server is not None
            (conn,) = server._connections
            ws = conn.ws
            ws.transport.set_write_buffer_limits(high=2048)
            client_ws = wire.client._ws
            assert client_ws is not None
            sockets = [(ws.transport.get_extra_info("socket"), socket.SO_SNDBUF),
                       (client_ws.transport.get_extra_info("socket"), socket.SO_RCVBUF)]
            for sock, option in sockets:  # small kernel buffers: the server's own buffer fills soon
                sock.setsockopt(socket.SOL_SOCKET, option, 4096)
            client_ws.transport.pause_reading()
            await wire.send(ev.user_text("what are your opening hours"))
            await wire.send(ev.response_create())
            for _ in range(100):  # until the server is blocked on a full buffer
                await asyncio.sleep(0.02)
                if ws.paused:
                    break
            assert ws.paused
            pad = " pad" * 4000  # 16 kB echoed back in each conversation.item.added
            for n in range(40):
                await wire.send(ev.user_text(f"meanwhile {n}{pad}"))
            await asyncio.sleep(0.2)
            # Output waits in the outbox, so later messages went to the receive loop, which waits behind it.
            assert ws.paused and conn._outbox and conn._busy
            for sock, option in sockets:
                sock.setsockopt(socket.SOL_SOCKET, option, 1 << 20)
            client_ws.transport.resume_reading()
            await wire.until("response.done")
            while len(added_texts(wire)) < 41:
                await wire.next()
            assert added_texts(wire) == ["what are your opening hours"] + [f"meanwhile {n}{pad}" for n in range(40)]
            audio = b"".join(base64.b64decode(e["delta"]) for e in wire.of(AUDIO_DELTA["ga"]))
            assert server._tts is not None
            assert audio == server._tts.synthesize("We are open from nine to five.")

    asyncio.run(run())


def test_a_lone_surrogate_echoed_back_costs_nothing() -> None:
    """JSON may carry an escaped lone surrogate, which UTF-8 cannot: echoed back in an event it is escaped
    again, and the session goes on (it used to close the connection)."""

    async def run() -> None:
        async with session() as wire:
            await wire.send('{"type":"session.update","event_id":"\\ud800","session":7}')
            error = await wire.until("error")
            assert error["error"].get("event_id") == "\ud800", error
            await wire.send(ev.user_text("still here"))
            while "still here" not in added_texts(wire):
                await wire.next()

    asyncio.run(run())


def test_one_response_failing_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audio of every response goes out from one pacer: a response whose audio fails is dropped, and
    the other sessions' responses go on (a failure used to stop the pacer for everyone)."""
    advance = server_mod._Stream.advance
    calls: list[server_mod._Stream] = []
    failed: list[server_mod._Stream] = []

    def failing_first(self: server_mod._Stream, horizon: float) -> bool:
        calls.append(self)
        if self is calls[0] and calls.count(self) == 2:  # in the pacer's first tick, not when added
            failed.append(self)
            raise RuntimeError("a bug in one response")
        return advance(self, horizon)

    monkeypatch.setattr(server_mod._Stream, "advance", failing_first)

    async def run() -> None:
        async with LocalRealtimeServer(CONFIG, lead_ms=100) as server:
            clients = [RealtimeClient(server.url, {}, "ga") for _ in range(2)]
            for client in clients:
                await client.connect()
            wires = [Wire(client, "ga") for client in clients]
            for wire in wires:
                assert (await wire.next())["type"] == "session.created"
                await wire.send(ev.user_text("what are your opening hours"))
                await wire.send(ev.response_create())
                if wire is wires[0]:
                    # The first session's response starts (and fails) first: waited for, not slept on (its
                    # reply is synthesised first, which a loaded machine can make take longer than a sleep,
                    # and the second session's response would then be the one to fail).
                    async with asyncio.timeout(20):
                        while not failed:
                            await asyncio.sleep(0.02)
            await asyncio.wait_for(wires[1].until("response.done"), 20)
            assert wires[1].of(AUDIO_DELTA["ga"]) and len(failed) == 1
            for client in clients:
                await client.close()

    asyncio.run(run())
