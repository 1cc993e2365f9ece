"""The first seconds of an answered outbound call: the called party's frames go to ``OutboundAnswer`` until
it decides (the asyncio side of sipagent.outbound.answer, which has no I/O).

The frames are decoded to the codec's own rate (8 kHz G.711, 16 kHz G.722), which is what the detector
measures. A silent line sends no frames, so a deadline on the clock stands behind the detector's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from sipagent.media.kernel import G722Decoder, alaw_decode, ulaw_decode
from sipagent.outbound.answer import AnswerDecision, OutboundAnswer

LEAVE_MESSAGE_LIMIT_S = 30.0  # a machine's greeting with no beep and no pause: speak the message by then
SLACK_S = 1.0  # the clock's deadline comes after the detector's, which goes by frames


class FrameSource(Protocol):
    """Where the called party's frames come from (sipagent.rtp.endpoint.RtpEndpoint)."""

    on_frame: Callable[[bytes], None] | None
    on_gap: Callable[[bytes], None] | None  # the jitter buffer's concealment frames, when set


class EndedCall(Protocol):
    ended: asyncio.Event


def frame_rate(codec: str) -> int:
    """The sample rate the detector is fed at for ``codec``."""
    return 16000 if codec.upper() == "G722" else 8000


def frame_decoder(codec: str) -> Callable[[bytes], bytes]:
    """RTP payload -> PCM16 at ``frame_rate(codec)``."""
    name = codec.upper()
    if name == "G722":
        return G722Decoder().decode
    if name == "PCMA":
        return alaw_decode
    if name == "PCMU":
        return ulaw_decode
    raise ValueError(f"no decoder for codec {codec!r}")


def deadline_s(answer: OutboundAnswer) -> float:
    """How long the listening may last at most, after the answer."""
    config = answer.config
    limit = max(config.timeout_s, LEAVE_MESSAGE_LIMIT_S) if config.on_machine == "leave_message" else config.timeout_s
    return limit + SLACK_S


async def listen_for_machine(call: EndedCall, source: FrameSource, answer: OutboundAnswer, codec: str,
                             clock: Callable[[], float] = time.monotonic) -> AnswerDecision:
    """Feed ``source``'s frames to ``answer`` until it decides, the call ends or the deadline passes.

    Past the deadline: a machine already heard gets its message (or is hung up on), anything else is
    taken for a person. A call that ended meanwhile gets "hang_up" (nothing more to do on it). ``source``'s
    ``on_frame`` and ``on_gap`` are left as they were found.

    A gap in the stream (a lost frame, or none sent in a silence) is heard as silence with G.722, and the
    frames after it are decoded from a fresh state: its decoder is stateful, and decoding a stand-in the far
    end never coded, or carrying on across a loss, can come out louder than anything that was said
    (sipagent.bridge.uplink.Uplink.caller_gap), which the detector would measure as speech."""
    if answer.decision is not None:
        return answer.decision
    decided: asyncio.Future[AnswerDecision] = asyncio.get_running_loop().create_future()
    decode = frame_decoder(codec)
    stateful = codec.upper() == "G722"
    gap_pcm = bytes(2 * frame_rate(codec) // 50)  # 20 ms of silence at the detector's rate
    in_gap = False
    started = clock()
    previous, previous_gap = source.on_frame, source.on_gap

    def feed(pcm: bytes) -> None:
        if decided.done():
            return
        decision = answer.feed(pcm, clock() - started)
        if decision is not None:
            decided.set_result(decision)

    def on_frame(payload: bytes) -> None:
        nonlocal in_gap
        in_gap = False
        feed(decode(payload))

    def on_gap(payload: bytes) -> None:
        nonlocal decode, in_gap
        if not stateful:
            on_frame(payload)
            return
        if not in_gap:
            in_gap, decode = True, frame_decoder(codec)
        feed(gap_pcm)

    source.on_frame, source.on_gap = on_frame, on_gap
    ended: asyncio.Future[bool] = asyncio.ensure_future(call.ended.wait())
    waits: set[asyncio.Future[AnswerDecision] | asyncio.Future[bool]] = {decided, ended}
    try:
        await asyncio.wait(waits, timeout=deadline_s(answer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        source.on_frame, source.on_gap = previous, previous_gap
        ended.cancel()
    if decided.done():
        return decided.result()
    decided.cancel()
    at = clock() - started
    if call.ended.is_set():
        return AnswerDecision("hang_up", None, at, "the call ended while listening")
    if any(event.kind == "machine" for event in answer.events):
        if answer.config.on_machine == "leave_message":
            return AnswerDecision("leave_message", "machine", at, "no beep or pause by the deadline",
                                  answer.message())
        return AnswerDecision("hang_up", "machine", at, "machine")
    return AnswerDecision("converse", "unknown", at, "no verdict by the deadline")


__all__ = ["deadline_s", "frame_decoder", "frame_rate", "listen_for_machine"]
