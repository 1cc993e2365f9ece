"""Packets of 10, 30 and 50 ms cut into 20 ms frames on the source's grid (sipagent.rtp.reframe)."""

from __future__ import annotations

import pytest

from sipagent.rtp.reframe import GIVE_UP_FRAMES, HELD_FRAMES, Reframer

SILENCE = b"\xff" * 160


def stream(ms: int, packets: int, first_ts: int = 1000) -> list[tuple[int, bytes]]:
    """A sender's packets of ``ms``: each byte is its own timestamp unit (mod 251), so any misplacement shows."""
    size = ms * 8
    return [(first_ts + i * size, bytes((first_ts + i * size + k) % 251 for k in range(size))) for i in range(packets)]


def expected(first_ts: int, frames: int) -> list[tuple[int, bytes]]:
    return [(first_ts + i * 160, bytes((first_ts + i * 160 + k) % 251 for k in range(160))) for i in range(frames)]


@pytest.mark.parametrize("ms", [10, 30, 50])
def test_whole_frames_in_order(ms: int) -> None:
    cutter = Reframer(SILENCE)
    out = [frame for ts, payload in stream(ms, 12) for frame in cutter.feed(ts, payload)]
    assert out == expected(1000, ms * 12 // 20)


def test_a_reordered_and_duplicated_30_ms_stream_still_makes_each_frame_once() -> None:
    packets = stream(30, 20)
    shuffled = packets[:]
    for i in (2, 5, 9, 14):  # neighbours swapped, as a network reorders (within GIVE_UP_FRAMES)
        shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    shuffled.insert(9, packets[4])  # a duplicate, after the frames it shares went out
    shuffled.insert(3, shuffled[2])  # and one at once
    cutter = Reframer(SILENCE)
    out = [frame for ts, payload in shuffled for frame in cutter.feed(ts, payload)]
    assert sorted(out) == expected(1000, 30)  # each frame once, whole


def test_a_lost_packet_gives_up_its_shared_frames_with_silence_in_the_gap() -> None:
    packets = stream(30, 12)
    del packets[3]  # units 1720..1959: the second half of frame 1640, the first of 1800... (30 ms = 240 units)
    cutter = Reframer(SILENCE)
    out = dict(frame for ts, payload in packets for frame in cutter.feed(ts, payload))
    whole = dict(expected(1000, 18))
    lost = range(1720, 1960)
    for ts, frame in whole.items():
        if ts + 160 <= lost.start or ts >= lost.stop:
            assert out[ts] == frame
        elif lost.start <= ts and ts + 160 <= lost.stop:
            assert ts not in out  # wholly lost: the jitter buffer conceals it
        else:
            kept = bytes(frame[k] if ts + k not in lost else 0xFF for k in range(160))
            assert out[ts] == kept  # given up after GIVE_UP_FRAMES newer frames, silence where it was lost
    assert GIVE_UP_FRAMES >= 2


def test_at_most_held_frames_wait_and_a_jump_starts_a_new_grid() -> None:
    cutter = Reframer(SILENCE)
    # Only first halves, far apart: each waits for a second half that never comes.
    out = [frame for i in range(HELD_FRAMES + 3) for frame in cutter.feed(1000 + i * 160, b"\x01" * 80)]
    assert len(out) >= 3 and len(cutter._held) <= HELD_FRAMES
    assert cutter.feed(1000 + 5_000_000, b"\x02" * 240) == [(1000 + 5_000_000, b"\x02" * 160)]  # re-anchored
    assert cutter.fits(80) and cutter.fits(240) and not cutter.fits(160) and not cutter.fits(100)


def test_the_grid_wraps_with_the_timestamp() -> None:
    cutter = Reframer(SILENCE)
    first = 2**32 - 240
    out = [frame for ts, payload in stream(30, 4, first) for frame in cutter.feed(ts % 2**32, payload)]
    assert [ts for ts, _ in out] == [(first + i * 160) % 2**32 for i in range(6)]
