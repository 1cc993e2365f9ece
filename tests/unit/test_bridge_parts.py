"""Pure parts of the bridge: echo-aware VAD, transcript and recording writers, tools."""

from __future__ import annotations

import asyncio
import json
import threading
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from sipagent.bridge.settings import ToolConfig
from sipagent.bridge.tools import parse_arguments, run_webhook, tool_definitions
from sipagent.bridge.transcript import StereoRecorder, TranscriptWriter
from sipagent.media.vad import EchoAwareVad, VadSettings, level_db

RATE = 24000
FRAME = 480


def tone(db: float, n: int = FRAME, freq: float = 440.0, phase: int = 0) -> bytes:
    t = (np.arange(n) + phase) / RATE
    amplitude = 32768 * 10 ** (db / 20) * np.sqrt(2)  # RMS of a sine is peak/sqrt(2)
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def test_level_db_of_tones_and_silence() -> None:
    assert level_db(tone(-20)) == pytest.approx(-20, abs=0.1)
    assert level_db(tone(-40)) == pytest.approx(-40, abs=0.2)
    assert level_db(bytes(FRAME * 2)) == -96.0
    assert level_db(b"") == -96.0


def run_vad(vad: EchoAwareVad, frames: list[tuple[float, float]]) -> list[int]:
    """frames: (agent level, caller level) per 20 ms; returns the indexes where speech was declared."""
    hits = []
    for i, (agent, caller) in enumerate(frames):
        vad.agent_frame(agent)
        if vad.caller_frame(tone(caller, phase=i * FRAME) if caller > -90 else bytes(FRAME * 2)):
            hits.append(i)
    return hits


def test_vad_needs_min_speech_and_ignores_short_noise() -> None:
    vad = EchoAwareVad(VadSettings(threshold_db=-35, min_speech_ms=200))
    # 80 ms burst: a click or a knock, never speech.
    assert run_vad(vad, [(-96, -15)] * 4 + [(-96, -96)] * 20) == []
    vad = EchoAwareVad(VadSettings(threshold_db=-35, min_speech_ms=200))
    assert run_vad(vad, [(-96, -20)] * 30) == [4]  # declared once half of 200 ms was loud, once
    # Speech with soft sounds in it (every third frame quiet) still counts.
    vad = EchoAwareVad(VadSettings(threshold_db=-35, min_speech_ms=200))
    assert run_vad(vad, [(-96, -20), (-96, -20), (-96, -60)] * 10) == [6]


def test_vad_rejects_echo_but_hears_a_caller_over_the_agent() -> None:
    # The agent plays at -12 dBFS; the line returns it at -32 dBFS (20 dB down): echo, not speech.
    vad = EchoAwareVad(VadSettings(threshold_db=-45, min_speech_ms=200))
    assert run_vad(vad, [(-12, -32)] * 100) == []
    # The caller talks over the agent at -18 dBFS: speech.
    assert run_vad(vad, [(-12, -18)] * 20) == [4]


def test_transcript_is_json_lines_flushed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "calls" / "c.jsonl"
    writer = TranscriptWriter(path, clock_origin=100.0)
    writer.write(100.5, "caller", text="where is my order")
    lines = path.read_text().splitlines()  # visible before close
    assert json.loads(lines[0])["text"] == "where is my order"
    writer.write(101.25, "dtmf", digits="12#")
    writer.close()
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["t"], e["type"]) for e in entries] == [(0.5, "caller"), (1.25, "dtmf")]


def test_stereo_recorder_aligns_and_pads(tmp_path: Path) -> None:
    path = tmp_path / "r.wav"
    recorder = StereoRecorder(path)
    caller, agent = tone(-20), tone(-10, freq=1000)
    for _ in range(10):
        recorder.caller(caller)
        recorder.agent(agent)
    for _ in range(30):  # inbound media stopped; the agent side goes on
        recorder.agent(agent)
    recorder.close()
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 24000, 2)
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    left, right = data[0::2], data[1::2]
    assert right.size == 40 * FRAME
    assert level_db(left[: 10 * FRAME].tobytes()) == pytest.approx(-20, abs=0.2)
    assert level_db(left[10 * FRAME :].tobytes()) == -96.0
    assert level_db(right.tobytes()) == pytest.approx(-10, abs=0.2)


def test_tool_definitions_fill_builtins() -> None:
    defs = tool_definitions([ToolConfig(name="end_call"), ToolConfig(name="x", description="d", url="http://h")])
    assert defs[0]["name"] == "end_call" and defs[0]["description"]
    assert defs[1] == {"type": "function", "name": "x", "description": "d",
                       "parameters": {"type": "object", "properties": {}}}
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("") == {}
    with pytest.raises(ValueError):
        parse_arguments("[1]")
    # The model's arguments are hostile input: too deep (the parser's own recursion limit included) or too
    # long is a clear "bad arguments", never an exception out of the tool runner.
    for raw in ('{"a": ' + "[" * 8000 + "]" * 8000 + "}", '{"a": ' + "[" * 20 + "]" * 20 + "}",
                '{"a": "' + "x" * 20_000 + '"}'):
        with pytest.raises(ValueError, match=r"deeper than|longer than"):
            parse_arguments(raw)
    assert parse_arguments('{"a": ' + "[" * 10 + "]" * 10 + "}") == {"a": [[[[[[[[[[]]]]]]]]]]}
    with pytest.raises(ValueError, match="JSON text"):
        parse_arguments({"a": 1})  # the event's field is a string of JSON; an object there is not trusted either


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("order_id") == "slow":
            threading.Event().wait(1.0)
        status = 500 if body.get("order_id") == "boom" else 200
        payload = json.dumps({"status": "shipped", "echo": body, "call": self.headers["X-Sipagent-Call-Id"]})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/orders"
    server.shutdown()
    server.server_close()


def test_webhook_success_error_timeout_unreachable(http_url: str) -> None:
    tool = ToolConfig(name="lookup_order", url=http_url, timeout_s=0.5)
    ok = asyncio.run(run_webhook(tool, {"order_id": "7721"}, "call-1"))
    assert ok.ok and ok.output["echo"] == {"order_id": "7721"} and ok.output["call"] == "call-1"
    failed = asyncio.run(run_webhook(tool, {"order_id": "boom"}, "call-1"))
    assert not failed.ok and "HTTP 500" in failed.output["error"]
    slow = asyncio.run(run_webhook(tool, {"order_id": "slow"}, "call-1"))
    assert not slow.ok and "did not answer in time" in slow.output["error"]
    dead = ToolConfig(name="lookup_order", url="http://127.0.0.1:9/x", timeout_s=1)
    gone = asyncio.run(run_webhook(dead, {}, "call-1"))
    assert not gone.ok and "unreachable" in gone.output["error"]


def test_demo_orders_builtin() -> None:
    tool = ToolConfig(name="lookup_order", url="builtin:demo-orders")
    assert asyncio.run(run_webhook(tool, {"order_id": "7721"}, "c")).output["status"] == "shipped"
    assert not asyncio.run(run_webhook(tool, {"order_id": "0000"}, "c")).ok


def test_conversation_counts_what_the_caller_heard() -> None:
    from sipagent.bridge.conversation import Conversation

    conv = Conversation()
    conv.agent_audio("item-1", 1000)  # 1 s queued
    conv.agent_audio("item-1", 500)  # 1.5 s in all
    # 600 ms were played when the caller cut in: truncate item-1 at 600 ms.
    assert conv.interrupted(played_ms=600) == ("item-1", 600)
    assert conv.interrupted(played_ms=600) is None  # nothing playing any more
    # The next item starts where playout really is, not after the discarded audio.
    conv.agent_audio("item-2", 200)
    assert conv.interrupted(played_ms=600) == ("item-2", 0)  # nothing of it heard: delete, not truncate
    conv.agent_audio("item-3", 200)
    assert conv.interrupted(played_ms=900) == ("item-3", 200)  # capped at what was queued

    conv.caller_said(" where is my order ")
    conv.agent_said("It shipped.")
    conv.caller_said("   ")
    assert conv.history_text() == "Caller: where is my order\nYou: It shipped."
    conv.add_usage({"total_tokens": 10, "input_tokens": 7, "output_tokens": 3})
    conv.add_usage({"total_tokens": 5, "input_tokens": 5, "output_tokens": 0})
    conv.add_usage(None)
    assert conv.usage == {"total_tokens": 15, "input_tokens": 12, "output_tokens": 3}
