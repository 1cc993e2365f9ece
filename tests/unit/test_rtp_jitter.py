from __future__ import annotations

import random
from collections.abc import Callable

from sipagent.rtp.jitter import FrameKind, JitterBuffer, PutResult

SIL = b"\x00" * 160
SSRC = 0x1234
BASE = 2**32 - 3 * 160  # the timestamp wraps during every test


def frame(i: int) -> bytes:
    return bytes([i % 256]) * 160


def ts(i: int, base: int = BASE) -> int:
    return (base + 160 * i) & 0xFFFFFFFF


def run(jb: JitterBuffer, arrivals: list[list[int]], ssrc: int = SSRC, base: int = BASE) -> list[str]:
    """Per tick: put the listed frame indices, then pull once. Returns what came out, compactly."""
    out = []
    for batch in arrivals:
        for i in batch:
            jb.put(ts(i, base), ssrc, frame(i))
        got = jb.pop()
        if got is None:
            out.append("-")
        elif got[1] is FrameKind.AUDIO:
            out.append(str(got[0][0]))
        elif got[1] is FrameKind.REPEAT:
            out.append(f"r{got[0][0]}")
        else:
            assert got[0] == SIL
            out.append("s")
    return out


def test_nothing_before_first_packet() -> None:
    jb = JitterBuffer(SIL, depth_frames=3)
    assert [jb.pop() for _ in range(5)] == [None] * 5


def test_in_order_with_prebuffer() -> None:
    jb = JitterBuffer(SIL, depth_frames=3)
    assert run(jb, [[i] for i in range(6)]) == ["-", "-", "0", "1", "2", "3"]
    assert jb.stats.played == 4 and jb.stats.concealed == 0


def test_reorder_within_depth() -> None:
    jb = JitterBuffer(SIL, depth_frames=3)
    arrivals = [[1], [0], [3], [2, 4], [6], [5], [7], [], []]
    assert run(jb, arrivals) == ["-", "-", "0", "1", "2", "3", "4", "5", "6"]


def test_loss_is_concealed_repeat_once_then_silence() -> None:
    jb = JitterBuffer(SIL, depth_frames=2)
    arrivals = [[0], [1], [], [3], [], [], [6], [7], [], []]
    assert run(jb, arrivals) == ["-", "0", "1", "r1", "3", "r3", "s", "6", "7", "r7"]
    assert jb.stats.concealed == 4


def test_duplicates_and_late_packets_dropped() -> None:
    jb = JitterBuffer(SIL, depth_frames=2)
    assert run(jb, [[0], [1], [1]]) == ["-", "0", "1"]
    assert jb.put(ts(1), SSRC, frame(1)) is PutResult.DUPLICATE  # already played
    assert jb.put(ts(3), SSRC, frame(3)) is PutResult.ACCEPTED
    assert jb.put(ts(3), SSRC, frame(3)) is PutResult.DUPLICATE  # still buffered
    assert run(jb, [[], []]) == ["r1", "3"]  # 2 was lost ...
    assert jb.put(ts(2), SSRC, frame(2)) is PutResult.LATE  # ... and arrives after its turn
    assert jb.stats.duplicates == 3 and jb.stats.late == 1


def test_silence_gap_from_dtx_keeps_timing() -> None:
    # A sender that stops during silence: timestamps jump 10 frames, the sequence does not.
    jb = JitterBuffer(SIL, depth_frames=2)
    arrivals: list[list[int]] = [[0], [1]] + [[] for _ in range(9)] + [[11], [12], []]
    out = run(jb, arrivals)
    assert out[:3] == ["-", "0", "1"] and out[3:12] == ["r1"] + ["s"] * 8
    assert out[12:] == ["11", "12"] and jb.stats.resyncs == 0


def test_timestamp_jump_resyncs() -> None:
    jb = JitterBuffer(SIL, depth_frames=2, max_jump_frames=50)
    assert run(jb, [[0], [1], [2]]) == ["-", "0", "1"]
    assert jb.put(ts(1000), SSRC, frame(1000)) is PutResult.RESYNC
    assert run(jb, [[], [1001], [1002]]) == ["-", str(1000 % 256), str(1001 % 256)]
    assert jb.stats.resyncs == 1


def test_backward_jump_and_off_grid_resync() -> None:
    jb = JitterBuffer(SIL, depth_frames=1)
    assert run(jb, [[100], [101]]) == ["100", "101"]
    assert jb.put(ts(0), SSRC, frame(0)) is PutResult.RESYNC  # 100 frames back: a new timestamp base
    assert run(jb, [[], [1]]) == ["0", "1"]
    assert jb.put(ts(2) + 7, SSRC, b"x" * 160) is PutResult.RESYNC  # not on the 20 ms grid
    assert jb.stats.resyncs == 2


def test_ssrc_change_resyncs_and_drops_stragglers() -> None:
    jb = JitterBuffer(SIL, depth_frames=2)
    assert run(jb, [[0], [1], [2]]) == ["-", "0", "1"]
    other_base = 5000
    assert jb.put(ts(0, other_base), 0xBEEF, frame(50)) is PutResult.RESYNC
    assert jb.put(ts(3), SSRC, frame(3)) is PutResult.STALE_SSRC
    out = []
    for i in range(1, 4):
        jb.put(ts(i, other_base), 0xBEEF, frame(50 + i))
        got = jb.pop()
        out.append(None if got is None else got[0][0])
    assert out == [None, 50, 51]


def test_overflow_drops_oldest_to_bound_latency() -> None:
    jb = JitterBuffer(SIL, depth_frames=2, slack_frames=2)
    assert run(jb, [[0], [1]]) == ["-", "0"]
    for i in range(2, 10):  # a burst after a stall: 8 frames at once
        jb.put(ts(i), SSRC, frame(i))
    out = run(jb, [[] for _ in range(6)])
    # 9 buffered against a bound of depth + slack = 4: every other frame is skipped until back in bound.
    assert out == ["2", "4", "6", "7", "8", "9"]
    assert jb.stats.overflow == 3


def test_pop_ready_releases_in_order_frames_at_once() -> None:
    jb = JitterBuffer(b"\x00" * 160, depth_frames=3)
    assert jb.pop_ready() is None and not jb.started
    jb.put(1000, 7, b"a" * 160)
    assert jb.pop_ready() == b"a" * 160  # no pre-buffer
    jb.put(1320, 7, b"c" * 160)
    assert jb.pop_ready() is None  # 1160 is missing: wait for it
    jb.put(1160, 7, b"b" * 160)
    assert [jb.pop_ready(), jb.pop_ready(), jb.pop_ready()] == [b"b" * 160, b"c" * 160, None]
    # The clock's concealment and pop_ready share one position: a frame concealed is late afterwards.
    assert jb.pop() == (b"c" * 160, FrameKind.REPEAT)
    assert jb.put(1480, 7, b"d" * 160) is PutResult.LATE
    assert jb.stats.played == 3


def test_a_sender_that_pauses_without_moving_its_timestamps_is_followed_not_dropped() -> None:
    jb = JitterBuffer(b"\x00" * 160, depth_frames=3)
    ts = 0
    for _ in range(20):
        jb.put(ts, 9, b"a" * 160)
        jb.pop()
        ts += 160
    for _ in range(15):  # the sender pauses for 300 ms; playout moves on, concealing
        jb.pop()
    # It resumes where its timestamps left off: the first two are late stragglers, then it is followed.
    results = [jb.put(ts + i * 160, 9, b"b" * 160) for i in range(4)]
    assert results == [PutResult.LATE, PutResult.LATE, PutResult.RESYNC, PutResult.ACCEPTED]
    frames = [jb.pop() for _ in range(6)]
    assert (b"b" * 160, FrameKind.AUDIO) in frames


def test_take_next_plays_only_the_frame_due_next_with_nothing_buffered() -> None:
    jb = JitterBuffer(SIL, depth_frames=3)
    assert not jb.take_next(ts(0), SSRC, frame(0))  # not started: the first packet goes through put
    jb.put(ts(0), SSRC, frame(0))
    assert jb.pop_ready() == frame(0)
    assert jb.take_next(ts(1), SSRC, frame(1))  # due next: played at once
    assert jb.take_next(ts(2), SSRC, frame(2))
    assert jb.take_next(ts(3), SSRC, frame(3))  # the timestamp wrapped between 2 and 3
    assert jb.stats.accepted == jb.stats.played == 4 and jb.buffered == 0
    assert not jb.take_next(ts(5), SSRC, frame(5))  # 4 is missing
    assert jb.put(ts(5), SSRC, frame(5)) is PutResult.ACCEPTED
    assert not jb.take_next(ts(4), SSRC, frame(4))  # due, but 5 is waiting: put + pop_ready keep the order
    assert not jb.take_next(ts(3), SSRC, frame(3))  # already played
    assert jb.put(ts(3), SSRC, frame(3)) is PutResult.DUPLICATE
    assert not jb.take_next(ts(4), 0xBEEF, frame(4))  # another source: put resyncs
    assert jb.stats.accepted == 5 and jb.stats.played == 4 and jb.stats.duplicates == 1


def _eager_receiver(
    jb: JitterBuffer, use_take_next: bool, taken: list[int]
) -> Callable[[int, int, bytes], list[bytes]]:
    def receive(timestamp: int, ssrc: int, payload: bytes) -> list[bytes]:
        if use_take_next and jb.take_next(timestamp, ssrc, payload):
            taken.append(timestamp)
            return [payload]
        jb.put(timestamp, ssrc, payload)
        out = []
        while (got := jb.pop_ready()) is not None:
            out.append(got)
        return out

    return receive


def test_take_next_behaves_exactly_as_put_then_pop_ready() -> None:
    # The endpoint's eager path tries take_next first; a scripted stream with reordering, loss, duplicates,
    # late packets, jumps, SSRC changes, stale stragglers and timestamp wrap must come out frame for frame
    # as with put + pop_ready alone, with the same statistics and the same concealment afterwards.
    rnd = random.Random(8)
    fast, slow = JitterBuffer(SIL, depth_frames=3), JitterBuffer(SIL, depth_frames=3)
    taken: list[int] = []
    receive_fast, receive_slow = _eager_receiver(fast, True, taken), _eager_receiver(slow, False, taken)
    ssrc, base, i, held = SSRC, BASE - 40 * 160, 0, []
    for step in range(5000):
        r = rnd.random()
        arrivals: list[tuple[int, int, bytes]] = []
        if r < 0.8:
            arrivals.append((ts(i, base), ssrc, frame(i)))
            i += 1
        elif r < 0.85:
            i += 1  # lost
        elif r < 0.9:
            held.append((ts(i, base), ssrc, frame(i)))  # overtaken by the next one
            i += 1
        elif r < 0.94:
            arrivals.append((ts(i - rnd.randrange(1, 4), base), ssrc, frame(i)))  # duplicate or late
        elif r < 0.96:
            i += rnd.choice([-80, 80, 3])  # a jump
        elif r < 0.97:
            old, ssrc, base = ssrc, ssrc ^ 0x5A5A, rnd.randrange(2**32)
            arrivals += [(ts(i, base), ssrc, frame(i)), (ts(i, base), old, frame(i))]  # plus a straggler
        if held and rnd.random() < 0.6:
            arrivals.append(held.pop(0))
        for packet in arrivals:
            assert receive_fast(*packet) == receive_slow(*packet), step
        if rnd.random() < 0.2:  # the clock conceals an overdue frame
            assert fast.pop() == slow.pop(), step
        assert (fast.stats, fast.buffered, fast.started) == (slow.stats, slow.buffered, slow.started), step
    assert len(taken) > 1000 and fast.stats.played > len(taken)  # both ways were taken, many times
    assert fast.stats.late and fast.stats.duplicates and fast.stats.resyncs
