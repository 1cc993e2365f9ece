"""G.722 frames of several calls coded together (EncoderBatch -> sk_enc24k_finish, eight calls in the
lanes of AVX2 registers) carry exactly the codes each call's own encoder gives, whatever the mix of
calls, frame lengths and codecs, at every SIMD level."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from test_kernel_g722_exact import GOLDEN, GOLDEN_FMA, source_24k

from sipagent.errors import KernelError
from sipagent.media.kernel import BATCH_MAX, Encoder24k, EncoderBatch, simd_level


def call_audio(call: int, frames: int) -> list[bytes]:
    """A different 24 kHz signal per call: noise, a loud tone, full-scale squares, near-silence, a chirp,
    speech-like bursts, in turn; 20 ms frames."""
    rng = np.random.default_rng(100 + call)
    n = 480 * frames
    t = np.arange(n) / 24000
    kind = call % 6
    if kind == 0:
        x = rng.integers(-32768, 32768, n).astype(float)
    elif kind == 1:
        x = 30000 * np.sin(2 * np.pi * (200 + 150 * call) * t)
    elif kind == 2:
        x = 32767 * np.sign(np.sin(2 * np.pi * (300 + 1000 * (call % 7)) * t))
    elif kind == 3:
        x = rng.normal(0, 20, n)
    elif kind == 4:
        x = 25000 * np.sin(2 * np.pi * np.cumsum(np.linspace(50, 11000, n)) / 24000)
    else:
        x = rng.normal(0, 8000, n) * (np.sin(2 * np.pi * 3 * t) > 0)
    pcm = np.asarray(np.clip(np.round(x), -32768, 32767), dtype="<i2").tobytes()
    return [pcm[i : i + 960] for i in range(0, len(pcm), 960)]


def code_in_batches(audio: list[list[bytes]], codec: str = "G722") -> list[bytes]:
    """Each call's frames, one tick at a time: every call staged in one batch, then one run."""
    encoders = [Encoder24k(codec) for _ in audio]
    got = [bytearray() for _ in audio]
    batch = EncoderBatch()
    for tick in range(max(len(a) for a in audio)):
        for call, frames in enumerate(audio):
            if tick < len(frames):
                batch.stage(encoders[call], frames[tick])
                batch.send(lambda header, payload, call=call: got[call].extend(header + payload), b"")
        batch.run()
    return [bytes(g) for g in got]


def code_alone(frames: list[bytes], codec: str = "G722") -> bytes:
    encoder = Encoder24k(codec)
    return b"".join(encoder.encode(f) for f in frames)


@pytest.mark.parametrize("calls", [1, 2, 7, 8, 9, 17])
def test_calls_coded_together_get_their_own_encoders_codes(level: int, calls: int) -> None:
    audio = [call_audio(c, 40) for c in range(calls)]
    together = code_in_batches(audio)
    for call in range(calls):
        assert together[call] == code_alone(audio[call]), f"call {call} of {calls}"


def test_the_pinned_stream_comes_out_the_same_from_any_lane(level: int) -> None:
    pcm = source_24k()
    golden = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    # The pinned stream in lane 5 of a group of 8, the other lanes busy with other audio.
    audio = [call_audio(c, len(golden)) for c in range(5)] + [golden] + [call_audio(c, 30) for c in (6, 7)]
    together = code_in_batches(audio)
    pinned = GOLDEN if simd_level(level) == 0 else GOLDEN_FMA  # the resampler's FMA rounding above 0
    assert hashlib.sha256(together[5]).hexdigest()[:32] == pinned["enc24k"]


def test_any_frame_lengths_and_codecs_mixed_in_one_batch(level: int) -> None:
    # Lengths from 0 to 1600 bytes (odd ones split a sample; > 1500 is coded at once, not staged), so
    # calls hold different numbers of pairs at each run; G.711 encoders stage too (coded at once).
    rng = np.random.default_rng(7)
    codecs = ["G722"] * 10 + ["PCMU", "PCMA"]
    streams = [b"".join(call_audio(c, 60)) for c in range(len(codecs))]
    encoders = [Encoder24k(c) for c in codecs]
    alone = [Encoder24k(c) for c in codecs]
    got = [bytearray() for _ in codecs]
    want = [bytearray() for _ in codecs]
    at = [0] * len(codecs)
    batch = EncoderBatch()
    for _ in range(40):
        for call in rng.permutation(len(codecs)):
            n = int(rng.choice([960, 960, 0, 1, 959, 961, 480, 1500, 1501, 1600]))
            chunk = streams[call][at[call] : at[call] + n]
            at[call] += n
            want[call] += alone[call].encode(chunk)
            batch.stage(encoders[call], chunk)
            batch.send(lambda header, payload, call=call: got[call].extend(payload), b"")
        batch.run()
    assert [bytes(g) for g in got] == [bytes(w) for w in want]


def test_a_call_staged_twice_before_a_run_keeps_its_frames_in_order(level: int) -> None:
    audio = [call_audio(c, 6) for c in range(3)]
    encoders = [Encoder24k("G722") for _ in audio]
    sent: list[tuple[int, bytes]] = []
    batch = EncoderBatch()
    batch.stage(encoders[0], audio[0][0])
    batch.send(lambda h, p: sent.append((0, p)), b"")
    batch.stage(encoders[1], audio[1][0])
    batch.send(lambda h, p: sent.append((1, p)), b"")
    batch.stage(encoders[0], audio[0][1])  # runs the batch first: frame 0 leaves before frame 1 is staged
    batch.send(lambda h, p: sent.append((0, p)), b"")
    batch.run()
    reference = Encoder24k("G722")
    assert [call for call, _ in sent] == [0, 1, 0]
    assert sent[0][1] + sent[2][1] == reference.encode(audio[0][0]) + reference.encode(audio[0][1])


def test_a_frame_whose_stream_failed_before_send_is_coded_but_goes_nowhere(level: int) -> None:
    audio = call_audio(1, 4)
    encoder, other, reference = Encoder24k("G722"), Encoder24k("G722"), Encoder24k("G722")
    got: list[bytes] = []
    batch = EncoderBatch()
    batch.stage(encoder, audio[0])  # its stream raised before naming a destination
    batch.stage(other, audio[0])
    batch.send(lambda h, p: got.append(p), b"")
    batch.run()
    assert got == [reference.encode(audio[0])]
    batch.stage(encoder, audio[1])  # in step: its next frame is the one after the orphan
    batch.send(lambda h, p: got.append(p), b"")
    batch.run()
    assert got[1] == reference.encode(audio[1])
    with pytest.raises(KernelError):
        batch.send(lambda h, p: None, b"")  # nothing staged waits for a destination


def test_a_delivery_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    audio = [call_audio(c, 1) for c in range(3)]
    got: list[int] = []
    after: list[int] = []
    batch = EncoderBatch()

    def broken(header: bytes, payload: bytes) -> None:
        raise OSError("socket closed")

    for call, deliver in enumerate([lambda h, p: got.append(0), broken, lambda h, p: got.append(2)]):
        batch.stage(Encoder24k("G722"), audio[call][0])
        batch.send(deliver, b"")
    batch.after_each = lambda: after.append(1)
    batch.run()
    assert got == [0, 2] and len(after) == 3 and batch.frames == 3 and len(batch) == 0
    assert "delivering a coded frame failed" in caplog.text


def test_more_frames_than_the_kernel_lists_are_all_coded_in_order(level: int) -> None:
    """The kernel lists at most BATCH_MAX staged states: staging one more runs the batch first."""
    audio = call_audio(2, 2)
    encoders = [Encoder24k("G722") for _ in range(BATCH_MAX + 6)]
    batch = EncoderBatch()
    for encoder in encoders:  # streams that failed before naming a destination: nothing runs the batch
        batch.stage(encoder, audio[0])
    assert (batch.frames, len(batch)) == (BATCH_MAX, 6)
    got: list[bytes] = []
    for encoder in encoders:
        batch.stage(encoder, audio[1])
        batch.send(lambda h, p: got.append(p), b"")
    batch.run()
    reference = Encoder24k("G722")
    reference.encode(audio[0])
    assert got == [reference.encode(audio[1])] * len(encoders)


def test_an_encoder_waits_in_one_batch_at_a_time() -> None:
    audio = call_audio(0, 3)
    encoder, reference = Encoder24k("G722"), Encoder24k("G722")
    first, second = EncoderBatch(), EncoderBatch()
    first.stage(encoder, audio[0])
    with pytest.raises(KernelError, match="another EncoderBatch"):
        second.stage(encoder, audio[1])
    assert len(second) == 0
    del first  # dropped before its run: its frame is coded (sent nowhere), and the encoder is free again
    got: list[bytes] = []
    for frame in audio[1:]:
        second.stage(encoder, frame)
        second.send(lambda h, p: got.append(p), b"")
        second.run()
    reference.encode(audio[0])
    assert got == [reference.encode(frame) for frame in audio[1:]]


@pytest.mark.parametrize(("codec", "sizes"), [("PCMU", (960, 1920)), ("G722", (1600, 3200))])
def test_a_longer_frame_staged_after_one_coded_at_once_keeps_the_earlier_payload(codec: str,
                                                                                sizes: tuple[int, int]) -> None:
    """G.711, or a G.722 frame past the staging bound, is coded as it is staged, into the encoder's buffer: a
    longer frame staged after it in the same batch must not replace that buffer before the run."""
    audio = b"".join(call_audio(4, 10))
    frames = [audio[: sizes[0]], audio[sizes[0] : sizes[0] + sizes[1]]]
    encoder, reference = Encoder24k(codec), Encoder24k(codec)
    got: list[bytes] = []
    batch = EncoderBatch()
    for frame in frames:
        batch.stage(encoder, frame)
        batch.send(lambda h, p: got.append(p), b"")
    batch.run()
    assert got == [reference.encode(frame) for frame in frames]
