from __future__ import annotations

import numpy as np
import pytest

from sipagent.media.gain import duck_gain
from sipagent.media.kernel import CODEC_SILENCE, Decoder24k, Encoder24k, mean_square
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.media.playout import PlayoutQueue

SIL = b"\xff" * 160


def test_silence_when_empty() -> None:
    q = PlayoutQueue()
    assert q.pop_frame() == (SIL, False)
    assert not q.is_playing and q.played_ms == 0


def test_frames_any_length_input() -> None:
    q = PlayoutQueue()
    data = bytes(range(256)) * 2  # 512 bytes = 3 frames + 32 bytes
    q.push(data[:100])
    q.push(data[100:])
    assert q.buffered_ms == 64 and q.is_playing
    frames = [q.pop_frame() for _ in range(3)]
    assert b"".join(f for f, _ in frames) == data[:480] and all(a for _, a in frames)
    assert q.played_ms == 60
    # The 32-byte tail waits two ticks for more audio, then goes out padded with silence.
    assert q.pop_frame() == (SIL, False)
    assert q.pop_frame() == (SIL, False)
    frame, audio = q.pop_frame()
    assert audio and frame == data[480:] + SIL[32:]
    assert q.played_ms == 64 and not q.is_playing


def test_tail_completed_by_next_push() -> None:
    q = PlayoutQueue()
    q.push(b"\x01" * 100)
    assert q.pop_frame() == (SIL, False)
    q.push(b"\x02" * 60)
    assert q.pop_frame() == (b"\x01" * 100 + b"\x02" * 60, True)


def test_flush_and_played() -> None:
    q = PlayoutQueue(silence=b"\xd5" * 160)
    q.push(b"\x00" * 1600)
    q.pop_frame()
    assert q.flush() == 180
    assert q.pop_frame() == (b"\xd5" * 160, False)
    assert q.played_ms == 20
    q.reset_played()
    assert q.played_ms == 0 and q.buffered_ms == 0


def test_rejects_mismatched_silence() -> None:
    with pytest.raises(ValueError):
        PlayoutQueue(frame_bytes=160, silence=b"\xff" * 10)


def test_pause_holds_the_queue_and_resume_goes_on_where_it_stopped() -> None:
    q = PlayoutQueue()
    q.push(b"\x01" * 160 + b"\x02" * 160 + b"\x03" * 100)
    assert q.pop_frame() == (b"\x01" * 160, True)
    q.pause()
    for _ in range(5):  # silence on every tick; nothing consumed, the partial tail does not age
        assert q.pop_frame() == (SIL, False)
    assert q.paused and q.is_playing and q.buffered_ms == 32 and q.played_ms == 20
    q.resume()
    assert q.pop_frame() == (b"\x02" * 160, True)
    assert q.pop_frame() == (SIL, False)  # the tail is held as before the pause
    assert q.pop_frame() == (SIL, False)
    assert q.pop_frame() == (b"\x03" * 100 + SIL[100:], True)
    assert q.played_ms == 52


def test_flush_ends_a_pause() -> None:
    q = PlayoutQueue()
    q.push(b"\x01" * 320)
    q.pause()
    assert q.flush() == 40
    assert not q.paused
    q.push(b"\x02" * 160)  # the next answer plays at once
    assert q.pop_frame() == (b"\x02" * 160, True)


def test_reframe_converts_what_is_queued_and_keeps_played_ms_and_a_pause() -> None:
    """A re-INVITE moves the call to another codec mid-utterance: nothing queued is lost or replayed."""
    q = PlayoutQueue()
    q.push(b"\x01" * 160 * 3 + b"\x02" * 100)
    assert q.pop_frame() == (b"\x01" * 160, True)
    q.pause()
    q.reframe(b"\xd5" * 160, lambda data: bytes(b ^ 0xFF for b in data))
    assert q.played_ms == 20 and q.buffered_ms == 52 and q.paused
    assert q.pop_frame() == (b"\xd5" * 160, False)  # paused: the new codec's silence
    q.resume()
    assert [q.pop_frame() for _ in range(2)] == [(b"\xfe" * 160, True)] * 2
    q.push(b"\x03" * 60)  # the encoder's next audio, already in the new codec
    assert q.pop_frame() == (b"\xfd" * 100 + b"\x03" * 60, True)
    assert q.pop_frame() == (b"\xd5" * 160, False) and q.played_ms == 80


def test_reframe_to_another_frame_size_counts_played_ms_on() -> None:
    q = PlayoutQueue()
    q.push(b"\x01" * 320)
    q.pop_frame()
    q.reframe(b"\x00" * 320)  # no conversion: the queued bytes are valid as they are
    assert q.frame_bytes == 320 and q.played_ms == 20 and q.buffered_ms == 10
    with pytest.raises(ValueError):
        q.reframe(b"")


def test_duck_turns_frames_down_as_they_leave_and_holds_nothing() -> None:
    q = PlayoutQueue()
    q.push(b"\x01" * 160 * 4)
    seen: list[tuple[float, float]] = []

    def shaper(frame: bytes, start: float, end: float) -> bytes:
        seen.append((start, end))
        return b"\x09" * len(frame)

    q.shaper = shaper
    assert q.pop_frame() == (b"\x01" * 160, True)  # full level: the shaper is not called
    q.duck(0.1)
    assert q.pop_frame() == (b"\x09" * 160, True)  # ramped down, and played: nothing is held
    assert q.pop_frame() == (b"\x09" * 160, True)
    q.unduck()
    assert q.pop_frame() == (b"\x09" * 160, True)  # ramped back up
    assert seen == [(1.0, 0.1), (0.1, 0.1), (0.1, 1.0)]
    assert q.played_ms == 80 and not q.is_playing


def test_duck_without_a_shaper_sends_silence_and_flush_ends_it() -> None:
    q = PlayoutQueue()
    q.push(b"\x01" * 160 * 3)
    q.duck(0.1)
    assert q.pop_frame() == (SIL, True)  # no shaper: muted, but played on
    assert q.flush() == 40 and q.gain == 1.0
    q.push(b"\x02" * 160)
    assert q.pop_frame() == (b"\x02" * 160, True)  # the next answer at full level


def test_scale_pcm_ramps_and_scales() -> None:
    from sipagent.media.gain import RAMP_SAMPLES, duck_gain, scale_pcm

    pcm = np.full(480, 8000, dtype="<i2").tobytes()
    gain = duck_gain(30)
    assert abs(gain - 0.0316) < 1e-3
    steady = np.frombuffer(scale_pcm(pcm, gain, gain), dtype="<i2")
    assert np.all(steady == round(8000 * gain))
    ramp = np.frombuffer(scale_pcm(pcm, 1.0, gain), dtype="<i2")
    assert ramp[0] == 8000 and np.all(np.diff(ramp[:RAMP_SAMPLES].astype(int)) <= 0)  # falls over 5 ms
    assert ramp[RAMP_SAMPLES - 1] > 8000 * gain and np.all(ramp[RAMP_SAMPLES:] == round(8000 * gain))
    full = np.frombuffer(scale_pcm(np.full(480, -32768, dtype="<i2").tobytes(), 1.0, 1.0), dtype="<i2")
    assert np.all(full == -32768)


def tone(ms: int, db: float = -12.0, hz: float = 440.0) -> bytes:
    t = np.arange(24 * ms) / 24000
    return (np.sin(2 * np.pi * hz * t) * 32767 * 10 ** (db / 20)).astype("<i2").tobytes()


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_pcm_playout_encodes_each_frame_as_it_leaves(codec: str) -> None:
    pcm = tone(70)
    q = PcmPlayout(codec, hold_ticks=0)
    q.push(pcm)
    assert q.buffered_ms == 70
    frames = [q.pop_frame() for _ in range(5)]
    assert all(audio for _, audio in frames[:4]) and frames[4] == (CODEC_SILENCE[codec], False)
    # The frames are those of one encoder over the PCM, its last 10 ms padded with digital silence.
    padded = pcm + bytes(960 * 4 - len(pcm))
    assert b"".join(f for f, _ in frames[:4]) == Encoder24k(codec).encode(padded)
    assert q.played_ms == 70 and not q.is_playing
    # What went out last, as PCM with its level (the echo reference), then silence.
    q.push(pcm[:960])
    q.pop_frame()
    assert q.sent_pcm == pcm[:960] and q.sent_mean_square == mean_square(pcm[:960]) > 0
    q.pop_frame()
    assert q.sent_pcm == bytes(960) and q.sent_mean_square == 0.0


def test_pcm_playout_ducks_g722_by_scaling_its_samples() -> None:
    # An adaptive codec cannot be scaled once encoded: the queue scales the PCM before the encoder, so a
    # duck on a G.722 call turns the agent down (it used to mute it) and ramps back up.
    q = PcmPlayout("G722")
    q.push(tone(200, db=-6.0))
    decoder = Decoder24k("G722")
    levels = []
    for i in range(10):
        if i == 3:
            q.duck(duck_gain(20))
        if i == 7:
            q.unduck()
        frame, audio = q.pop_frame()
        assert audio
        levels.append(10 * np.log10(mean_square(decoder.decode(frame)) / 32768**2))
        assert q.sent_mean_square == mean_square(q.sent_pcm)
    assert all(abs(level - levels[1]) < 1.0 for level in levels[1:3])  # full level
    assert all(abs(level - (levels[1] - 20)) < 1.5 for level in levels[4:7])  # 20 dB down, not muted
    assert abs(levels[8] - levels[1]) < 1.0  # back up
    assert q.played_ms == 200


def test_pcm_playout_changes_codec_with_nothing_lost() -> None:
    pcm = tone(100)
    q = PcmPlayout("PCMU")
    q.push(pcm)
    first, _ = q.pop_frame()
    assert first == Encoder24k("PCMU").encode(pcm[:960])
    q.use_codec("G722")  # a re-INVITE: the queued PCM leaves in the new codec, from a fresh encoder
    q.reframe(CODEC_SILENCE["G722"])
    rest = b"".join(q.pop_frame()[0] for _ in range(4))
    assert rest == Encoder24k("G722").encode(pcm[960:])
    assert q.played_ms == 100 and q.pop_frame() == (CODEC_SILENCE["G722"], False)
