"""The offline Realtime backend and the webhook tools against a hostile client or service, on loopback.

Each attack runs against a real ``LocalRealtimeServer`` (or the session core it wraps) and checks the
safe outcome: oversized frames close cleanly (1009), malformed, wrongly typed or deeply nested events get
an ``error`` event and the session goes on, the backend refuses to listen off loopback without a token
and answers a missing or wrong token with 401, sessions beyond the cap get 503, and what one client can
make a session hold (input audio, conversation items, recognition jobs) is capped. A slow webhook holds
neither the backend nor anyone's DNS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from sipagent.bridge.settings import ToolConfig
from sipagent.bridge.tools import run_webhook
from sipagent.errors import RealtimeError
from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient, RealtimeConnectError
from sipagent.realtime.local import server as server_module
from sipagent.realtime.local import session as session_module
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.server import LocalRealtimeServer
from sipagent.realtime.local.session import CLIENT_EVENTS, Ids, LocalSession, Respond, Transcribe
from sipagent.realtime.providers import endpoint_for

pytestmark = pytest.mark.timeout(120)

CONFIG = LocalBrainConfig()
TOKEN = "s3cret-local-token-0123456789"


@asynccontextmanager
async def backend(**options: Any) -> AsyncIterator[LocalRealtimeServer]:
    async with LocalRealtimeServer(CONFIG, **options) as server:
        yield server


async def receive(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return event


@asynccontextmanager
async def raw_session(server: LocalRealtimeServer, **headers: str) -> AsyncIterator[ClientConnection]:
    """A plain websockets client (no sipagent code between the attack and the server)."""
    async with connect(server.url, additional_headers=headers, max_size=None, open_timeout=10) as ws:
        assert (await receive(ws))["type"] == "session.created"
        yield ws


async def still_answers(ws: ClientConnection) -> None:
    """The session answers a session.update (after whatever else it had to send, none of it an error)."""
    await ws.send(json.dumps(ev.session_update(ev.SessionSettings(instructions="still here"))))
    while (event := await receive(ws))["type"] != "session.updated":
        assert event["type"] != "error", event


def run(main: Any) -> None:
    asyncio.run(main)


# --- oversized, malformed, too deep ---------------------------------------------------------------------


async def close_code_after(server: LocalRealtimeServer, frame: bytes) -> int:
    """Open a WebSocket by hand, send ``frame`` as is, and return the code of the server's close frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(frame)
        async with asyncio.timeout(10):
            while True:  # server frames are unmasked: opcode, length, payload
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length >= 126:
                    length = int.from_bytes(await reader.readexactly(2 if length == 126 else 8), "big")
                payload = await reader.readexactly(length)
                if first & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big")
    finally:
        writer.transport.abort()


def test_an_oversized_message_closes_the_connection_with_1009_and_the_backend_serves_on() -> None:
    async def main() -> None:
        async with backend() as server:
            # A frame header announcing 5 MiB: refused on the header, before any of it is buffered.
            huge = struct.pack("!BBQ", 0x81, 0xFF, 5 << 20) + os.urandom(4) + b"x" * 1024
            assert await close_code_after(server, huge) == 1009
            # The same size in fragments of 1 MiB: refused once the message passes its cap.
            fragments = b"".join(struct.pack("!BBQ", opcode, 0xFF, 1 << 20) + b"\0\0\0\0" + b"A" * (1 << 20)
                                 for opcode in (0x01, 0x00, 0x00, 0x00, 0x80))
            assert await close_code_after(server, fragments) == 1009
            async with raw_session(server) as ws:  # the next client is served as usual
                await still_answers(ws)

    run(main())


def test_deep_nesting_gets_an_error_event_and_the_session_goes_on() -> None:
    async def main() -> None:
        async with backend() as server, raw_session(server) as ws:
            for payload in ("[" * 100_000, '{"type": "session.update", "session": ' + "[" * 50 + "]" * 50 + "}"):
                await ws.send(payload)
                error = await receive(ws)
                assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
                assert "nested deeper" in error["error"]["message"]
                await still_answers(ws)

    run(main())


BAD_EVENTS: list[str | bytes] = [
    "not json",
    b"\xff\xfe binary garbage",
    "[]",
    '{"type": 5}',
    '{"type": "no.such.event"}',
    '{"type": "session.update", "session": {"audio": 5}}',
    '{"type": "session.update", "session": {"audio": {"input": {"format": 7}}}}',
    '{"type": "session.update", "session": {"tools": 5}}',
    '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [1]}}',
    '{"type": "conversation.item.create", "item": {"id": [1], "type": "message"}}',
    '{"type": "conversation.item.truncate", "item_id": {}}',
    '{"type": "input_audio_buffer.append", "audio": "not base64!"}',
    '{"type": "input_audio_buffer.append", "audio": 12}',
    '{"type": "response.cancel"}',
]


def test_malformed_and_wrongly_typed_events_get_an_error_and_the_session_goes_on() -> None:
    async def main() -> None:
        async with backend() as server, raw_session(server) as ws:
            for bad in BAD_EVENTS:
                await ws.send(bad)
                answer = await receive(ws)
                assert answer["type"] == "error", (bad, answer)
            await still_answers(ws)

    run(main())


def test_a_bug_on_one_event_costs_one_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: LocalSession, event: dict[str, Any]) -> list[Any]:
        raise RuntimeError("a bug the input found")

    monkeypatch.setattr(LocalSession, "_on_conversation_item_retrieve", broken)

    async def main() -> None:
        async with backend() as server, raw_session(server) as ws:
            await ws.send('{"type": "conversation.item.retrieve", "item_id": "x"}')
            error = await receive(ws)
            assert error["type"] == "error" and error["error"]["code"] == "server_error"
            await still_answers(ws)

    run(main())


def valid_events() -> list[dict[str, Any]]:
    tool = {"type": "function", "name": "lookup", "description": "d",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}
    settings = ev.SessionSettings(instructions="i", transcription_model="m", tools=[tool],
                                  turn_detection={"type": "server_vad", "silence_duration_ms": 500})
    output = {"type": "function_call_output", "call_id": "call_1", "output": "{}"}
    return [
        ev.session_update(settings, "ga"),
        ev.session_update(settings, "beta"),
        ev.user_text("hello"),
        ev.message_item("assistant", "earlier"),
        {"type": "conversation.item.create", "previous_item_id": "root", "item": output},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 10},
        {"type": "conversation.item.delete", "item_id": "item_1"},
        ev.audio_append(b"\x00\x10" * 480),
        {"type": "response.create", "response": {"instructions": "say hi"}},
        {"type": "response.cancel", "response_id": "resp_1"},
    ]


def mutations(value: Any) -> list[Any]:
    """``value`` with one part replaced by a value of another JSON type (or removed), for every part."""
    others: list[Any] = [None, 7, -1.5, "x", [], {}, [1], {"type": 1}]
    out = []
    if isinstance(value, dict):
        for key, child in value.items():
            out += [{**value, key: other} for other in [*others, *mutations(child)]]
            out.append({k: v for k, v in value.items() if k != key})
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += [[*value[:index], other, *value[index + 1 :]] for other in [*others, *mutations(child)]]
    return out


def test_every_wrongly_typed_field_gets_an_error_event_never_an_exception() -> None:
    checked = 0
    for valid in valid_events():
        for event in mutations(valid):
            if not isinstance(event.get("type"), str):
                continue
            session = LocalSession(CONFIG, Ids("t"))
            for text in (json.dumps(event), '{"type": "response.create"}'):
                outputs = session.handle_text(text)
                assert all(isinstance(o, dict | Transcribe | Respond) for o in outputs)
            checked += 1
    assert checked > 500


# Values the handlers look for (so the fuzzer reaches past the first check) mixed with any JSON at all.
WORDS = ["message", "user", "assistant", "system", "function_call", "function_call_output", "input_text",
         "input_audio", "text", "audio", "server_vad", "realtime", "audio/pcm", "pcm16", "g711_ulaw", "root"]
FIELDS = ["type", "session", "item", "item_id", "audio", "response", "response_id", "content_index",
          "audio_end_ms", "previous_item_id", "role", "content", "call_id", "output", "id", "input", "format",
          "turn_detection", "tools", "instructions", "name", "arguments"]
LEAVES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
          | st.text(max_size=6) | st.sampled_from(WORDS))
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(CLIENT_EVENTS)), st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4))
def test_any_event_of_any_shape_gets_events_back_never_an_exception(kind: str, fields: dict[str, Any]) -> None:
    session = LocalSession(CONFIG, Ids("fuzz"))
    for text in (json.dumps({**fields, "type": kind}), json.dumps({"type": "response.create"})):
        outputs = session.handle_text(text)
        assert all(isinstance(o, dict | Transcribe | Respond) for o in outputs)


# --- tokens and the session cap -------------------------------------------------------------------------


def test_off_loopback_without_a_token_the_backend_refuses_to_start() -> None:
    for host in ("0.0.0.0", "::", "", "192.0.2.10", "backend.example"):
        with pytest.raises(RealtimeError, match="--token or SIPAGENT_LOCAL_TOKEN"):
            LocalRealtimeServer(CONFIG, host, 0)
    LocalRealtimeServer(CONFIG, "0.0.0.0", 0, token=TOKEN)  # with one it may (not started here: loopback only)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        LocalRealtimeServer(CONFIG, host, 0)  # the in-process backend needs none
    env = {k: v for k, v in os.environ.items() if k != "SIPAGENT_LOCAL_TOKEN"}
    cli = subprocess.run([sys.executable, "-m", "sipagent.cli", "local-realtime", "--listen", "0.0.0.0:0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 1 and "--token" in cli.stderr and "listening on" not in cli.stdout


def test_with_a_token_a_handshake_without_it_gets_401(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs every handshake header at DEBUG

    async def main() -> None:
        async with backend(token=TOKEN) as server:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN}x"}):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(server.url, additional_headers=headers, open_timeout=10)
                assert refused.value.response.status_code == 401
                assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
            # The agent's way in: realtime.provider local with a url and the token as api_key.
            endpoint = endpoint_for("local", url=server.url, api_key=TOKEN)
            client = RealtimeClient.for_endpoint(endpoint)
            await client.connect()
            assert (await client.recv())["type"] == "session.created"
            await client.close()
            with pytest.raises(RealtimeConnectError) as err:
                await RealtimeClient.for_endpoint(endpoint_for("local", url=server.url)).connect()
            assert err.value.status == 401

    run(main())
    # websockets.client is this test's own client; everything of sipagent's, server and client, is checked.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sipagent"))
    assert "< Authorization: ***" in ours  # the server logged the headers it received ...
    assert TOKEN not in ours  # ... never the token


def test_the_command_takes_its_token_from_the_environment() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SIPAGENT_LOCAL_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "sipagent.cli", "local-realtime", "--listen",
                             f"127.0.0.1:{port}", "--max-sessions", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening on" in proc.stdout.readline()
        url = f"ws://127.0.0.1:{port}/v1/realtime"

        async def main() -> None:
            with pytest.raises(RealtimeConnectError) as err:
                await RealtimeClient(url).connect()
            assert err.value.status == 401
            client = RealtimeClient.for_endpoint(endpoint_for("local", url=url, api_key=TOKEN))
            await client.connect()
            with pytest.raises(RealtimeConnectError) as err:  # --max-sessions 1: the second is refused
                await RealtimeClient.for_endpoint(endpoint_for("local", url=url, api_key=TOKEN)).connect()
            assert err.value.status == 503
            await client.close()

        run(main())
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert TOKEN not in stderr and "refused a handshake" in stderr


def test_the_openai_package_client_uses_its_api_key_as_the_token() -> None:
    from openai import AsyncOpenAI

    async def main() -> None:
        async with backend(token=TOKEN) as server:
            client = AsyncOpenAI(api_key=TOKEN, base_url=f"http://127.0.0.1:{server.port}/v1",
                                 websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(session={"type": "realtime", "instructions": "hi"})
                async with asyncio.timeout(10):
                    async for event in conn:
                        if event.type == "session.updated":
                            break

    run(main())


def test_sessions_beyond_the_cap_get_503() -> None:
    async def main() -> None:
        async with backend(max_sessions=2) as server:
            async with raw_session(server), raw_session(server) as second:
                with pytest.raises(RealtimeConnectError) as err:
                    await RealtimeClient(server.url).connect()
                assert err.value.status == 503
                await still_answers(second)
            async with asyncio.timeout(10):  # once they are closed, there is room again
                while True:
                    try:
                        async with raw_session(server) as ws:
                            await still_answers(ws)
                        break
                    except InvalidStatus:
                        await asyncio.sleep(0.05)

    run(main())


def test_too_many_utterances_waiting_for_recognition_are_shed() -> None:
    release = threading.Event()

    class SlowRecognizer:
        def recognize(self, pcm: bytes) -> str:
            release.wait(10)
            return "hello"

    async def main() -> None:
        async with backend() as server, raw_session(server) as ws:
            server._asr = SlowRecognizer()  # type: ignore[assignment]
            await ws.send(json.dumps(ev.session_update(ev.SessionSettings(turn_detection=None))))
            assert (await receive(ws))["type"] == "session.updated"
            commits = server_module.MAX_TRANSCRIPTIONS + 2
            try:
                for _ in range(commits):
                    await ws.send(json.dumps(ev.audio_append(b"\x00\x10" * 4800)))  # 200 ms
                    await ws.send('{"type": "input_audio_buffer.commit"}')
                seen: list[dict[str, Any]] = []
                errors: list[str] = []
                while len(errors) < 2 or sum(e["type"] == "conversation.item.added" for e in seen) < commits:
                    seen.append(await receive(ws))
                    errors += [seen[-1]["error"]["code"]] if seen[-1]["type"] == "error" else []
                assert errors == ["rate_limit_exceeded"] * 2  # four wait for recognition, two were shed
            finally:
                release.set()
            await still_answers(ws)

    run(main())


# --- what a session may hold ----------------------------------------------------------------------------


def loud(ms: int) -> bytes:
    """Full-scale square wave at 24 kHz: the VAD hears speech that never pauses."""
    return (b"\x00\x60" * 24 + b"\x00\xa0" * 24) * (ms * 24 // 48)


def test_an_endless_turn_is_cut_at_the_buffer_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "MAX_BUFFER_MS", 2000)
    session = LocalSession(CONFIG, Ids("t"))
    outputs: list[Any] = []
    for _ in range(100):  # 10 s of speech that never pauses, 100 ms an append
        outputs += session.handle(ev.audio_append(loud(100)))
        assert len(session._buffer) <= (2000 + 100) * 48
    kinds = [o["type"] if isinstance(o, dict) else type(o).__name__ for o in outputs]
    assert kinds.count("error") >= 4 and kinds.count("Transcribe") >= 4
    full = next(o for o in outputs if isinstance(o, dict) and o["type"] == "error")
    assert full["error"]["code"] == "input_audio_buffer_full"
    assert kinds[kinds.index("error") + 1] == "input_audio_buffer.speech_stopped"


def test_a_manual_buffer_keeps_its_newest_audio_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "MAX_BUFFER_MS", 1000)
    session = LocalSession(CONFIG, Ids("t"))
    session.handle(ev.session_update(ev.SessionSettings(turn_detection=None)))
    outputs: list[Any] = []
    for _ in range(30):
        outputs += session.handle(ev.audio_append(b"\x01\x00" * 2400))  # 100 ms each
    assert len(session._buffer) == 1000 * 48
    assert [o["error"]["code"] for o in outputs] == ["input_audio_buffer_full"]
    session.handle({"type": "input_audio_buffer.commit"})
    again = [o for _ in range(15) for o in session.handle(ev.audio_append(b"\x01\x00" * 2400))]
    assert [o["error"]["code"] for o in again] == ["input_audio_buffer_full"]  # a new buffer, said again


def test_the_conversation_is_capped_in_items_and_bytes() -> None:
    session = LocalSession(CONFIG, Ids("t"))
    for n in range(session_module.MAX_ITEMS + 100):
        session.handle(ev.user_text(f"message {n}"))
    assert len(session.items) == session_module.MAX_ITEMS
    assert session.items[next(reversed(session.items))].data["content"][0]["text"].endswith(
        str(session_module.MAX_ITEMS + 99))
    big = "x" * (1 << 20)
    for _ in range(20):
        session.handle(ev.user_text(big))
    sizes = [item.size for item in session.items.values()]
    assert sum(sizes) <= session_module.MAX_ITEMS_BYTES < sum(sizes) + sizes[0]  # as many as fit
    last = next(reversed(session.items))
    assert session.handle({"type": "conversation.item.delete", "item_id": last})[0]["type"] == (
        "conversation.item.deleted")


def test_deleting_the_item_being_spoken_does_not_break_the_response() -> None:
    session = LocalSession(CONFIG, Ids("t"))
    run_ = next(o.run for o in session.handle(ev.response_create()) if isinstance(o, Respond))
    started = run_.start_message()
    item_id = next(o["item"]["id"] for o in started if o["type"] == "response.output_item.added")
    assert session.handle(ev.item_delete(item_id))[0]["type"] == "conversation.item.deleted"
    assert [o["type"] for o in run_.audio(b"\x00\x00" * 960, "Hello")][-1] == "response.output_audio.delta"
    assert run_.finish("completed")[-1]["type"] == "response.done"
    assert session.response is None  # a new response may start
    assert any(isinstance(o, Respond) for o in session.handle(ev.response_create()))


# --- a slow webhook holds neither the backend nor anyone's DNS ------------------------------------------


def test_slow_webhooks_hold_neither_the_backend_nor_dns() -> None:
    gone = 0

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal gone
        await reader.readuntil(b"\r\n\r\n")
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
            writer.write(bytes([byte]))
            try:
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    break  # the webhook gave up and closed: what the test waits for
            except TimeoutError:
                pass
        gone += 1
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))  # few cores: the executor getaddrinfo needs
        service = await asyncio.start_server(dribble, "127.0.0.1", 0)
        port = service.sockets[0].getsockname()[1]
        async with service, backend() as server:
            tool = ToolConfig(name="lookup_order", url=f"http://localhost:{port}/orders", timeout_s=2)
            calls = [asyncio.create_task(run_webhook(tool, {"n": n}, f"call-{n}")) for n in range(8)]
            await asyncio.sleep(0.5)
            async with raw_session(server) as ws:  # a new session is served meanwhile
                await still_answers(ws)
            assert await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 5)
            results = await asyncio.gather(*calls)
            assert all("did not answer in time" in r.output["error"] for r in results)
            async with asyncio.timeout(5):  # every connection was closed at the deadline
                while gone < 8:
                    await asyncio.sleep(0.05)

    run(main())
