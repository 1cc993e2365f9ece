"""The local backend's recogniser runs in a child process: audio that pocketsphinx decodes slowly (a constant
tone, music on hold) never stalls the agent's event loop, a recognition past its deadline kills the worker
and reads as empty, a worker that dies is started again, and none outlives the backend."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import tts
from websockets.asyncio.client import ClientConnection, connect

from sipagent.media.kernel import Resampler, alaw_decode, ulaw_decode, ulaw_encode
from sipagent.realtime import events as ev
from sipagent.realtime.local import asr
from sipagent.realtime.local.asr import GrammarRecognizer, RecognizerProcess, recognition_deadline_s
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.server import LocalRealtimeServer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]

PHRASES = ["where is my order", "i would like a refund", "can i speak to a human", "that is all thank you"]
CONFIG = LocalBrainConfig.from_mapping({
    "intents": [{"name": f"intent{i}", "phrases": [phrase], "reply": "OK."} for i, phrase in enumerate(PHRASES)],
    "fallback": "Sorry?",
})


def tone(seconds: float) -> bytes:
    """24 kHz PCM16 of a line sending A-law 0xff (a constant level, as a fax tone or a stuck line): audio the
    grammar search cannot prune, whose decoding time grows faster than its length (12 s: ~5 s)."""
    return Resampler(8000, 24000).process(alaw_decode(b"\xff" * int(8000 * seconds)))


def phone_line(text: str) -> bytes:
    """``text`` spoken through an 8 kHz μ-law line and back to 24 kHz PCM16, as the backend hears a call."""
    pcm8k = Resampler(24000, 8000).process(tts().synthesize(text))
    return Resampler(8000, 24000).process(ulaw_decode(ulaw_encode(pcm8k)))


def gone(pid: int) -> bool:
    """The process has exited and was reaped (a zombie still has its /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def worker_children() -> list[int]:
    """Our child processes running the recogniser's worker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if ppid == os.getpid() and asr.WORKER_MODULE.encode() in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def recognizer() -> Iterator[RecognizerProcess]:
    process = RecognizerProcess(PHRASES)
    process.start()
    try:
        yield process
    finally:
        process.close()
        assert worker_children() == []


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == asr.__name__]


# --- the agent's process never waits for the decoder -----------------------------------------------------


async def receive_until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    for _ in range(10_000):  # bounded: each event is waited for at most 60 s
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if event["type"] == kind:
            return event
    raise AssertionError(f"no {kind}")


async def commit(ws: ClientConnection, pcm: bytes) -> None:
    for start in range(0, len(pcm), 48000):  # a second an append
        await ws.send(json.dumps(ev.audio_append(pcm[start : start + 48000])))
    await ws.send('{"type": "input_audio_buffer.commit"}')


async def manual_session(server: LocalRealtimeServer) -> ClientConnection:
    ws = await connect(server.url, max_size=None)
    await receive_until(ws, "session.created")
    settings = ev.SessionSettings(turn_detection=None, transcription_model="gpt-4o-mini-transcribe")
    await ws.send(json.dumps(ev.session_update(settings)))
    await receive_until(ws, "session.updated")
    return ws


def test_the_loop_keeps_running_while_a_long_tone_is_recognised() -> None:
    """In the agent's process, decoding this tone held the GIL for seconds: every call's SIP and RTP stopped."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        worst_late = 0.0
        stop = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal worst_late
            while not stop.is_set():
                before = loop.time()
                await asyncio.sleep(0.05)
                worst_late = max(worst_late, loop.time() - before - 0.05)

        async with LocalRealtimeServer(CONFIG) as server:
            ws = await manual_session(server)
            try:
                beat = asyncio.create_task(heartbeat())
                await commit(ws, tone(12))
                committed = loop.time()
                done = await receive_until(ws, "conversation.item.input_audio_transcription.completed")
                took = loop.time() - committed
                stop.set()
                await beat
                assert isinstance(done["transcript"], str)  # empty or not: it comes back
                assert took < recognition_deadline_s(12) + 2
                # Then a spoken utterance reads as it should: the worker is still serving.
                await commit(ws, phone_line("where is my order"))
                heard = await receive_until(ws, "conversation.item.input_audio_transcription.completed")
                assert heard["transcript"] == "where is my order"
            finally:
                await ws.close()
        assert worst_late < 0.5, f"the event loop stalled {worst_late:.2f} s"

    asyncio.run(main())


def test_stopping_the_backend_mid_recognition_leaves_no_worker_behind() -> None:
    async def main() -> None:
        server = LocalRealtimeServer(CONFIG)
        await server.start()
        try:
            assert server._asr_process is not None
            pid = server._asr_process.pid
            assert pid is not None and worker_children() == [pid]
            ws = await manual_session(server)
            await commit(ws, tone(20))  # ~17 s of decoding: the backend stops under it
            await asyncio.sleep(1.0)
        finally:
            started = time.monotonic()
            await server.stop()
            stopped_in = time.monotonic() - started
        assert gone(pid) and worker_children() == []
        assert stopped_in < 3, f"stopping took {stopped_in:.1f} s"
        await ws.close()

    asyncio.run(main())


# --- the deadline, the audio cap, restarts -----------------------------------------------------------------


def test_the_deadline_grows_with_the_audio_from_a_floor() -> None:
    assert recognition_deadline_s(0.5) == asr.DEADLINE_FLOOR_S == 5.0
    assert recognition_deadline_s(asr.MAX_RECOGNIZED_S) == 40.0


def test_the_worker_reads_speech_as_the_recogniser_in_process_does(recognizer: RecognizerProcess) -> None:
    in_process = GrammarRecognizer(PHRASES)
    assert recognizer.grammar == in_process.grammar
    for phrase in [*PHRASES, "one two three", "hello there"]:
        audio = phone_line(phrase)
        assert recognizer.recognize(audio) == in_process.recognize(audio), phrase


def test_a_recognition_past_its_deadline_kills_the_worker_and_reads_empty(
    recognizer: RecognizerProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(asr, "DEADLINE_FLOOR_S", 1.0)
    monkeypatch.setattr(asr, "DEADLINE_PER_AUDIO_S", 0.05)  # 20 s of tone: 1 s, against ~17 s of decoding
    first = recognizer.pid
    assert first is not None
    started = time.monotonic()
    assert recognizer.recognize(tone(20)) == ""
    assert time.monotonic() - started < 2.5
    assert gone(first)
    assert warnings(caplog) == [
        "local ASR: recognising a 20.0 s utterance took over 1 s: the recogniser was restarted and the "
        "utterance reads as empty"
    ]
    # The next utterance starts a new worker, which reads it as the first one would have.
    assert recognizer.recognize(phone_line("where is my order")) == "where is my order"
    assert recognizer.pid not in (None, first)


def test_only_the_first_seconds_of_an_utterance_are_recognised(
    recognizer: RecognizerProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(asr, "MAX_RECOGNIZED_S", 3.0)
    caplog.set_level(logging.INFO, asr.__name__)
    audio = phone_line("where is my order") + tone(15)
    started = time.monotonic()
    assert "where is my order" in recognizer.recognize(audio)  # the tone's 15 s would take ~10 s
    assert time.monotonic() - started < 3
    assert any(r.getMessage().startswith("local ASR: recognising the first 3 s of a 16.") for r in caplog.records)


@pytest.mark.parametrize("when", ["idle", "decoding"])
def test_a_worker_that_dies_is_started_again_for_the_next_utterance(
    recognizer: RecognizerProcess, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = recognizer.pid
    assert first is not None
    if when == "idle":
        os.kill(first, signal.SIGKILL)
        for _ in range(200):  # bounded: 2 s
            if recognizer.pid is None:
                break
            time.sleep(0.01)
        assert recognizer.pid is None
        assert recognizer.recognize(phone_line("i would like a refund")) == "i would like a refund"
        assert warnings(caplog) == ["local ASR: the recogniser had exited (code -9); starting it again"]
    else:
        killer = threading.Timer(0.5, os.kill, (first, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        try:
            assert recognizer.recognize(tone(20)) == ""  # the utterance under way is lost
        finally:
            killer.join()
        assert time.monotonic() - started < 2.5
        assert "failed on a 20.0 s utterance" in warnings(caplog)[0]
        assert recognizer.recognize(phone_line("i would like a refund")) == "i would like a refund"
    assert recognizer.pid not in (None, first) and gone(first)
    assert worker_children() == [recognizer.pid]


def test_a_closed_recognizer_starts_no_worker(recognizer: RecognizerProcess) -> None:
    pid = recognizer.pid
    assert pid is not None
    recognizer.close()
    assert gone(pid)
    assert recognizer.recognize(phone_line("where is my order")) == ""
    assert recognizer.pid is None and worker_children() == []


def test_a_backend_that_fails_to_start_leaves_no_worker_behind() -> None:
    async def main() -> None:
        taken = LocalRealtimeServer(CONFIG)
        await taken.start()
        try:
            with pytest.raises(OSError):
                await LocalRealtimeServer(CONFIG, port=taken.port).start()  # its port is in use
            assert taken._asr_process is not None
            assert worker_children() == [taken._asr_process.pid]  # the failed one's worker is gone
        finally:
            await taken.stop()
        assert worker_children() == []

    asyncio.run(main())
