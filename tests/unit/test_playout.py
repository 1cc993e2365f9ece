from __future__ import annotations

import pytest

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
    assert q.pop_frame() == (SIL, True)  # no shaper (G.722): muted, but played on
    assert q.flush() == 40 and q.gain == 1.0
    q.push(b"\x02" * 160)
    assert q.pop_frame() == (b"\x02" * 160, True)  # the next answer at full level


def test_g711_gain_shaper_ramps_and_scales() -> None:
    import numpy as np

    from sipagent.media.gain import RAMP_SAMPLES, duck_gain, gain_shaper
    from sipagent.media.kernel import ulaw_decode, ulaw_encode

    assert gain_shaper("G722") is None
    shape = gain_shaper("PCMU")
    assert shape is not None
    pcm = (np.full(160, 8000)).astype("<i2").tobytes()
    frame = ulaw_encode(pcm)
    gain = duck_gain(30)
    assert abs(gain - 0.0316) < 1e-3
    steady = np.frombuffer(ulaw_decode(shape(frame, gain, gain)), dtype="<i2")
    assert np.all(np.abs(steady - 8000 * gain) < 16)
    ramp = np.frombuffer(ulaw_decode(shape(frame, 1.0, gain)), dtype="<i2")
    assert ramp[0] > 7000 and np.all(np.diff(ramp[:RAMP_SAMPLES].astype(int)) <= 0)  # falls over 5 ms
    assert np.all(np.abs(ramp[RAMP_SAMPLES:] - 8000 * gain) < 16)
