"""Listening to an answered outbound call: frames from the endpoint's ``on_frame`` to the detector, decoded
for the codec, until a decision, the call's end or the deadline (a fake clock; the frames are pushed by
the test as the endpoint would)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from sipagent.bridge.settings import AnsweringMachineConfig
from sipagent.media.kernel import G722Encoder, alaw_encode, ulaw_encode
from sipagent.outbound.answer import AnswerDecision, OutboundAnswer
from sipagent.outbound.listening import deadline_s, frame_decoder, frame_rate, listen_for_machine


class Source:
    def __init__(self) -> None:
        self.on_frame: Callable[[bytes], None] | None = None
        self.on_gap: Callable[[bytes], None] | None = None


class Call:
    def __init__(self) -> None:
        self.ended = asyncio.Event()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tone(seconds: float, rate: int = 8000, hz: float = 1000.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


@pytest.mark.parametrize(("codec", "encode", "rate"), [("PCMU", ulaw_encode, 8000), ("PCMA", alaw_encode, 8000),
                                                       ("G722", lambda pcm: G722Encoder().encode(pcm), 16000)])
def test_frames_are_decoded_at_the_codec_rate(codec: str, encode: Callable[[bytes], bytes], rate: int) -> None:
    assert frame_rate(codec) == rate
    pcm = tone(0.1, rate)
    decoded = frame_decoder(codec)(encode(pcm))
    assert len(decoded) == len(pcm)
    assert np.abs(np.frombuffer(decoded, "<i2")).max() > 4000  # the tone came through, not silence
    with pytest.raises(ValueError, match="no decoder"):
        frame_decoder("opus")


def test_a_beep_after_a_long_greeting_decides_leave_message_and_on_frame_is_restored() -> None:
    async def scenario() -> None:
        source, call, clock = Source(), Call(), Clock()
        previous = source.on_frame = lambda payload: None
        answer = OutboundAnswer(AnsweringMachineConfig(on_machine="leave_message", message="Call us back."), {})
        listening = asyncio.ensure_future(listen_for_machine(call, source, answer, "PCMU", clock))
        await asyncio.sleep(0)
        assert source.on_frame is not previous
        voice = tone(4.0, hz=300.0)
        audio = voice + bytes(8000) + tone(0.4) + bytes(48000)
        for i in range(0, len(audio), 320):  # 20 ms frames, as the endpoint delivers them
            clock.now += 0.02
            source.on_frame(ulaw_encode(audio[i:i + 320]))
            if listening.done():
                break
        decision = await listening
        assert (decision.action, decision.verdict, decision.message) == ("leave_message", "machine", "Call us back.")
        assert source.on_frame is previous

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_silent_line_gets_the_conversation_at_the_deadline() -> None:
    async def scenario() -> None:
        answer = OutboundAnswer(AnsweringMachineConfig(timeout_s=0.2), {})
        assert deadline_s(answer) == pytest.approx(1.2)
        decision = await listen_for_machine(Call(), Source(), answer, "PCMU")  # no frame at all
        assert (decision.action, decision.verdict) == ("converse", "unknown")

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_call_that_ends_while_listening_stops_it() -> None:
    async def scenario() -> None:
        call = Call()
        listening = asyncio.ensure_future(listen_for_machine(call, Source(), OutboundAnswer(
            AnsweringMachineConfig(), {}), "PCMA"))
        await asyncio.sleep(0.05)
        call.ended.set()
        decision = await asyncio.wait_for(listening, 1)
        assert decision.action == "hang_up" and decision.verdict is None

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_detection_off_decides_without_listening() -> None:
    source = Source()
    answer = OutboundAnswer(AnsweringMachineConfig(detect=False), {})
    decision = asyncio.run(listen_for_machine(Call(), source, answer, "PCMU"))
    assert decision.action == "converse" and source.on_frame is None


class Kept(OutboundAnswer):
    """The detector, keeping every frame it is fed."""

    def __init__(self) -> None:
        super().__init__(AnsweringMachineConfig(timeout_s=5.0), {})
        self.fed: list[bytes] = []

    def feed(self, pcm: bytes, at: float) -> AnswerDecision | None:
        self.fed.append(pcm)
        return super().feed(pcm, at)


@pytest.mark.parametrize("codec", ["G722", "PCMU"])
def test_a_gap_in_the_stream_is_silence_with_g722_and_the_frames_after_it_decode_afresh(codec: str) -> None:
    async def scenario() -> None:
        source, call = Source(), Call()
        answer = Kept()
        rate = frame_rate(codec)
        pcm = tone(0.4, rate, hz=300.0)
        frame_bytes = 2 * rate // 50
        if codec == "G722":
            encoder = G722Encoder()
            payloads = [encoder.encode(pcm[i:i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]
        else:
            payloads = [ulaw_encode(pcm[i:i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]
        listening = asyncio.ensure_future(listen_for_machine(call, source, answer, codec))
        await asyncio.sleep(0)
        assert source.on_frame is not None and source.on_gap is not None
        for i, payload in enumerate(payloads):
            if i in (8, 9):  # two frames lost: the last one repeated, then silence
                source.on_gap(payloads[7] if i == 8 else b"\xff" * 160)
            else:
                source.on_frame(payload)
        call.ended.set()
        await listening
        assert source.on_frame is None and source.on_gap is None  # as they were found
        decode = frame_decoder(codec)
        expected = []
        for i, payload in enumerate(payloads):
            if codec == "G722" and i in (8, 9):
                expected.append(bytes(frame_bytes))
                decode = frame_decoder(codec)  # afresh after the gap
            else:
                expected.append(decode(payload if i not in (8, 9) else payloads[7] if i == 8 else b"\xff" * 160))
        assert answer.fed == expected

    asyncio.run(asyncio.wait_for(scenario(), 5))
