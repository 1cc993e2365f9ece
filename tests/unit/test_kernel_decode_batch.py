"""G.722 frames of several calls decoded together (DecoderBatch -> sk_frame_finish, eight calls' ADPCM in
the lanes of AVX2 registers) give exactly what each call's own FrameDecoder.push gives (PCM, level and
text), whatever the mix of calls, payload lengths and codecs, at both SIMD levels; and each frame's
handler runs once, in staging order, when the batch runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import pytest
from test_kernel_g722_lanes import call_audio

from sipagent.errors import KernelError
from sipagent.media.kernel import LANES, DecoderBatch, Encoder24k, FrameDecoder

HEAD, TAIL = b'{"audio":"', b'"}'
Decoded = tuple[float, bytes, bytes]


def g722_stream(call: int, frames: int) -> list[bytes]:
    """Real G.722 payloads: the call's signal (call_audio) through an encoder, 160 bytes per frame."""
    encoder = Encoder24k("G722")
    return [encoder.encode(pcm) for pcm in call_audio(call, frames)]


def decoder(codec: str = "G722", text_of: str | None = "pcm") -> FrameDecoder:
    return FrameDecoder(codec, text_of, HEAD, TAIL)


class Pass:
    """A DecoderBatch whose scheduled runs are collected, as the event loop's call_soon would hold them."""

    def __init__(self) -> None:
        self.batch = DecoderBatch()
        self.scheduled: list[Callable[[], None]] = []
        self.batch.schedule = self.scheduled.append

    def end(self) -> None:
        """The end of the loop's pass: the scheduled runs."""
        runs = self.scheduled[:]
        self.scheduled.clear()  # in place: the batch holds its append
        for run in runs:
            run()


def decode_in_passes(streams: list[list[bytes]], codecs: list[str] | None = None) -> list[list[Decoded]]:
    """Each call's frames, one loop pass per frame time: every call's frame staged, then the pass ends."""
    codecs = codecs or ["G722"] * len(streams)
    decoders = [decoder(codec) for codec in codecs]
    got: list[list[Decoded]] = [[] for _ in streams]
    loop = Pass()
    for t in range(max(len(s) for s in streams)):
        for call, frames in enumerate(streams):
            if t < len(frames):
                d = decoders[call]
                loop.batch.stage(d, frames[t], lambda ms, call=call, d=d: got[call].append((ms, d.pcm, d.text)))
        loop.end()
    assert len(loop.batch) == 0
    return got


def decode_alone(frames: list[bytes], codec: str = "G722") -> list[Decoded]:
    d = decoder(codec)
    return [(d.push(frame), d.pcm, d.text) for frame in frames]


@pytest.mark.parametrize("calls", [1, 2, 3, 8, 9, 17])
def test_calls_decoded_together_get_what_their_own_decoders_give(level: int, calls: int) -> None:
    streams = [g722_stream(call, 12) for call in range(calls)]
    assert decode_in_passes(streams) == [decode_alone(frames) for frames in streams]


def test_hostile_payloads_of_any_length_and_codecs_mixed_in_one_batch(level: int) -> None:
    rng = np.random.default_rng(7)
    # 0 bytes, odd lengths, the 256-byte staging bound and past it (decoded at once), G.711 beside G.722.
    lengths = [160, 160, 0, 1, 80, 255, 256, 257, 600, 160, 160, 160, 240]
    codecs = ["G722"] * len(lengths) + ["PCMU", "PCMA"]
    lengths += [160, 160]
    streams = [[rng.integers(0, 256, n if (t + call) % 3 else 160, dtype=np.uint8).tobytes() for t in range(9)]
               for call, n in enumerate(lengths)]
    got = decode_in_passes(streams, codecs)
    assert got == [decode_alone(frames, codec) for frames, codec in zip(streams, codecs, strict=True)]
    assert all(len(pcm) == 6 * len(frame) for call in range(len(streams))
               for (_, pcm, _), frame in zip(got[call], streams[call], strict=True))


def test_payload_text_passes_the_staged_payload_itself(level: int) -> None:
    frames = g722_stream(3, 4)
    d, ref = decoder(text_of="payload"), decoder(text_of="payload")
    loop = Pass()
    got: list[bytes] = []
    others = [decoder() for _ in range(4)]  # a group of five: the lanes
    for frame in frames:
        for other in others:
            loop.batch.stage(other, frame, lambda ms: None)
        loop.batch.stage(d, frame, lambda ms: got.append(d.text))
        loop.end()
        ref.push(frame)
        assert got[-1] == ref.text


def test_a_call_staged_twice_in_one_pass_is_handled_in_order(level: int) -> None:
    frames = g722_stream(1, 6)
    loop = Pass()
    d = decoder()
    others = [decoder() for _ in range(3)]
    order: list[tuple[str, Decoded]] = []
    for i, frame in enumerate(frames):
        for j, other in enumerate(others):
            loop.batch.stage(other, frames[(i + j) % len(frames)], lambda ms: None)
        loop.batch.stage(d, frame, lambda ms, i=i: order.append((f"frame {i}", (ms, d.pcm, d.text))))
        if i % 2 == 0:
            continue  # two frames of d in one pass: the second stage runs the batch for the first
        loop.end()
    loop.end()
    expected = decode_alone(frames)
    assert order == [(f"frame {i}", expected[i]) for i in range(len(frames))]


def test_runs_by_itself_once_a_full_group_waits_and_schedules_once_per_pass() -> None:
    loop = Pass()
    handled: list[int] = []
    decoders = [decoder() for _ in range(LANES + 3)]
    payload = g722_stream(0, 1)[0]
    for i, d in enumerate(decoders):
        loop.batch.stage(d, payload, lambda ms, i=i: handled.append(i))
        if i < LANES - 1:
            assert handled == [] and len(loop.batch) == i + 1
    assert handled == list(range(LANES)) and len(loop.batch) == 3
    assert len(loop.scheduled) == 2  # the first stage into an empty batch, and the first after the run
    loop.end()
    assert handled == list(range(LANES + 3))
    assert (loop.batch.frames, loop.batch.runs) == (LANES + 3, 2)


def test_without_a_schedule_or_for_g711_each_frame_is_handled_at_once() -> None:
    batch = DecoderBatch()
    handled: list[float] = []
    g722, pcmu = decoder(), decoder("PCMU")
    batch.stage(g722, g722_stream(0, 1)[0], handled.append)
    assert len(handled) == 1 and len(batch) == 0  # no loop to end the pass: nothing waits
    loop = Pass()
    loop.batch.stage(pcmu, os.urandom(160), handled.append)
    assert len(handled) == 2 and len(loop.batch) == 0 and loop.scheduled == []
    assert handled[1] == pcmu.mean_square > 0


def test_a_handler_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    loop = Pass()
    handled: list[int] = []
    payload = g722_stream(2, 1)[0]

    def broken(ms: float) -> None:
        raise RuntimeError("boom")

    for i in range(4):
        loop.batch.stage(decoder(), payload, broken if i == 1 else lambda ms, i=i: handled.append(i))
    with caplog.at_level(logging.ERROR):
        loop.end()
    assert handled == [0, 2, 3]
    assert "handling a decoded frame failed" in caplog.text


def test_a_payload_longer_than_any_before_grows_the_buffers_first(level: int) -> None:
    loop = Pass()
    long = g722_stream(4, 2)[0] + g722_stream(4, 2)[1][:90]  # 250 bytes: staged, past the first buffer
    ds = [decoder() for _ in range(3)]
    got: list[Decoded] = []
    for d in ds:
        loop.batch.stage(d, long, lambda ms, d=d: got.append((ms, d.pcm, d.text)))
    loop.end()
    assert got == decode_alone([long]) * 3


def test_a_decoder_waits_in_one_batch_at_a_time() -> None:
    frames = g722_stream(5, 3)
    d = decoder()
    first, second = Pass(), Pass()
    got: list[Decoded] = []
    first.batch.stage(d, frames[0], lambda ms: got.append((ms, d.pcm, d.text)))
    assert d.pending
    with pytest.raises(KernelError, match="another DecoderBatch"):
        second.batch.stage(d, frames[1], lambda ms: got.append((ms, d.pcm, d.text)))
    assert len(second.batch) == 0 and second.scheduled == []
    first.end()
    assert not d.pending
    second.batch.stage(d, frames[1], lambda ms: got.append((ms, d.pcm, d.text)))
    second.end()
    assert got == decode_alone(frames[:2])
    # A batch dropped before its run decodes what it holds (handled nowhere): the decoder is free again.
    first.batch.stage(d, frames[2], lambda ms: got.append((ms, d.pcm, d.text)))
    first.scheduled.clear()
    del first
    assert not d.pending and len(got) == 2
    assert (d.mean_square, d.pcm, d.text) == decode_alone(frames)[2]


def test_a_frame_whose_run_could_not_be_scheduled_waits_for_the_next_run() -> None:
    frames = g722_stream(6, 2)
    d = decoder()
    got: list[Decoded] = []
    batch = DecoderBatch()

    def closed_loop(run: Callable[[], None]) -> None:
        raise RuntimeError("Event loop is closed")

    batch.schedule = closed_loop
    with pytest.raises(RuntimeError):
        batch.stage(d, frames[0], lambda ms: got.append((ms, d.pcm, d.text)))
    assert len(batch) == 1 and d.pending  # listed in the batch, not lost between it and the kernel
    batch.run()
    assert got == decode_alone(frames[:1]) and not d.pending
