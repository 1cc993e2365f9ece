"""The bridge's waits are woken by what they wait for, never by a timer: the playout queue running dry as
the clock sends its last frame, a flush, a response's end, a key sent. Driven by hand: no clock runs, no
time passes, and each wait must be over (or not) right after the one thing that ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from sipagent.bridge.call import BridgeSettings, CallBridge
from sipagent.bridge.settings import AgentConfig, DtmfConfig, RecordingConfig, ToolConfig
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.realtime import events as ev


class Line:
    """The answered call and its media: a real playout queue, popped by ``tick`` as the clock would."""

    call_id, from_uri, end_reason, codec = "waits", "sip:caller@example.com", "", "PCMU"
    packets_received = 0
    dtmf_method = "rfc4733"

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.playout = PcmPlayout("PCMU")
        self.keys: list[str] = []
        self.on_sent: Any = None

    def push_audio(self, pcm24k: bytes) -> None:
        self.playout.push(pcm24k)

    def flush_audio(self) -> int:
        return self.playout.flush()

    def pause_audio(self) -> None:
        self.playout.pause()

    def resume_audio(self) -> None:
        self.playout.resume()

    def duck_audio(self, gain: float) -> None:
        self.playout.duck(gain)

    def unduck_audio(self) -> None:
        self.playout.unduck()

    @property
    def played_ms(self) -> int:
        return self.playout.played_ms

    @property
    def buffered_ms(self) -> int:
        return self.playout.buffered_ms

    @property
    def sent_audio(self) -> tuple[bytes, float]:
        return self.playout.sent_pcm, self.playout.sent_mean_square

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.keys.append(digit)

    def media_report(self) -> dict[str, int | float | None]:
        return {"packets_received": 0}

    @property
    def dtmf_sending(self) -> bool:
        return bool(self.keys)

    def tick(self) -> None:
        """One 20 ms tick: a key goes out in place of audio, else a frame of the queue (told to the bridge)."""
        if self.keys:
            self.keys.pop(0)
            return
        frame, is_audio = self.playout.pop_frame()
        self.on_sent(frame, is_audio)


async def no_backend() -> Any:
    raise OSError("not in these tests")


def bridge(line: Line) -> CallBridge:
    agent = AgentConfig(tools=[ToolConfig("send_dtmf"), ToolConfig("collect_digits")], dtmf=DtmfConfig(tone_ms=60))
    made = CallBridge(line, line, no_backend, BridgeSettings(agent, RecordingConfig(transcripts=False),
                                                             ev.SessionSettings()))
    line.on_sent = made.on_outbound_frame
    return made


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(body: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(body, 5))


def test_playout_wait_ends_with_the_frame_that_empties_the_queue() -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        call.downlink.play_pcm24(bytes(960 * 3))  # 60 ms: three frames
        waiting = asyncio.ensure_future(call.downlink.wait_playout())
        for _ in range(2):
            await settle()
            assert not waiting.done()
            line.tick()
        await settle()
        assert not waiting.done() and line.buffered_ms == 20
        line.tick()
        await settle()
        assert waiting.done() and line.buffered_ms == 0

    run(body())


def test_deltas_of_any_length_count_their_milliseconds_exactly() -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        for _ in range(48):
            call.downlink.queue("item-1", bytes(1000))  # 20.83 ms each: 1 s in all
        assert call.conversation.queued_ms == 1000 and line.buffered_ms == 1000
        for _ in range(25):
            line.tick()
        assert call.downlink.cut(line.played_ms) == ("item-1", 500)

    run(body())


def test_audio_far_ahead_of_playout_is_dropped_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    from sipagent.bridge.downlink import MAX_QUEUED_MS

    async def body() -> None:
        line = Line()
        call = bridge(line)
        second = bytes(48_000)
        for _ in range(MAX_QUEUED_MS // 1000 + 30):  # a server streaming half a minute more than the cap
            call.downlink.queue("item-1", second)
        assert line.buffered_ms == MAX_QUEUED_MS and call.conversation.queued_ms == MAX_QUEUED_MS
        for _ in range(50):
            line.tick()
        # Room again, but the rest of item-1 stays dropped: played after a hole, its milliseconds counted would
        # no longer be where they are in the item, and a truncation would be placed by them.
        call.downlink.queue("item-1", second)
        assert line.buffered_ms == MAX_QUEUED_MS - 1000 and call.conversation.queued_ms == MAX_QUEUED_MS
        call.downlink.queue("item-2", second)  # a new item is queued, and counted
        assert line.buffered_ms == MAX_QUEUED_MS and call.conversation.queued_ms == MAX_QUEUED_MS + 1000
        call.downlink.queue("item-2", second)
        assert line.buffered_ms == MAX_QUEUED_MS
        for _ in range(MAX_QUEUED_MS // 20):
            line.tick()
        assert call.downlink.cut(line.played_ms) == ("item-2", 1000)  # all of what was queued of it
        call.downlink.queue("", second)  # audio of no item id is queued like any other
        assert line.buffered_ms == 1000

    with caplog.at_level(logging.WARNING):
        run(body())
    dropped = [r for r in caplog.records if "ahead of playout" in r.getMessage()]
    assert len(dropped) == 2, dropped  # once per item


def test_hostile_tool_calls_get_an_error_result_or_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        outbox = call.realtime.outbox
        deep = '{"digits": ' + "[" * 5000 + "]" * 5000 + "}"  # past the JSON parser's recursion limit
        call._handle({"type": "response.function_call_arguments.done", "name": "send_dtmf",
                              "call_id": "c1", "arguments": deep})
        for _ in range(20):
            await settle()
            if not outbox.empty():
                break
        output = outbox.get_nowait()
        assert output["item"]["call_id"] == "c1" and "bad arguments" in output["item"]["output"], output
        assert outbox.get_nowait()["type"] == "response.create"
        # Without a string call_id no output could answer it: ignored, said once in the log.
        call._handle({"type": "response.function_call_arguments.done", "name": ["send_dtmf"],
                              "call_id": {"x": 1}, "arguments": "{}"})
        await settle()
        assert outbox.empty()

    with caplog.at_level(logging.WARNING):
        run(body())
    assert any("tool call ignored" in r.getMessage() for r in caplog.records)


def test_a_flush_and_the_call_s_end_wake_the_playout_wait() -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        call.downlink.play_pcm24(bytes(960 * 50))
        waiting = asyncio.ensure_future(call.downlink.wait_playout())
        await settle()
        assert not waiting.done()
        call.downlink.flush()
        await settle()
        assert waiting.done()
        call.downlink.play_pcm24(bytes(960 * 50))
        waiting = asyncio.ensure_future(call.downlink.wait_playout())
        await settle()
        line.ended.set()
        await settle()
        assert waiting.done() and line.buffered_ms > 0

    run(body())


def test_renewal_waits_for_the_queue_and_the_response_both() -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        call.responses.created()
        call.downlink.play_pcm24(bytes(960))
        quiet = asyncio.ensure_future(call.downlink.wait_quiet())
        line.tick()  # the queue is dry, the response goes on
        await settle()
        assert not quiet.done()
        call.responses.done()
        await settle()
        assert quiet.done()

    run(body())


def test_send_dtmf_answers_once_the_clock_sends_audio_again_after_the_keys() -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        sending = asyncio.ensure_future(call.tools.send_dtmf({"digits": "12"}))
        await settle()
        line.tick()
        line.tick()  # both keys out; nothing has told the bridge yet
        await settle()
        assert not sending.done()
        line.tick()  # a frame again: the keys are over
        await settle()
        assert sending.done() and sending.result().output == {"sent": "12"}

    run(body())


def test_collect_digits_starts_its_first_digit_timer_when_the_prompt_has_played() -> None:
    async def body() -> None:
        line = Line()
        call = bridge(line)
        call.downlink.play_pcm24(bytes(960))  # the prompt's last 20 ms
        entry = asyncio.ensure_future(call.tools.collect_digits({"max_digits": 2, "timeout_s": 30}))
        await settle()
        collector = call.tools.collector
        assert collector is not None and not collector.prompt_over
        line.tick()
        await settle()
        assert collector.prompt_over  # woken by the queue running dry, not by looking again later
        call.on_dtmf("4", 100)
        call.on_dtmf("2", 100)
        await settle()
        assert entry.done() and entry.result().output == {"digits": "42", "ended_by": "count", "count": 2}

    run(body())
