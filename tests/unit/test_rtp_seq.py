from __future__ import annotations

import random

from sipagent.rtp.seq import SeqExtender, seq_diff, seq_newer, ts_diff


def test_seq_diff_wraps() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(10, 5) == 5
    assert seq_newer(2, 65530) and not seq_newer(65530, 2)


def test_ts_diff_wraps() -> None:
    assert ts_diff(80, 2**32 - 80) == 160
    assert ts_diff(2**32 - 80, 80) == -160


def test_extender_counts_cycles_and_misorder() -> None:
    ext = SeqExtender()
    base = ext.extend(65534)
    out = [ext.extend(s) - base for s in (65535, 0, 1, 65535, 2, 3)]
    assert out == [1, 2, 3, 1, 4, 5]
    assert ext.highest == base + 5


def test_extender_restarts_on_large_jump() -> None:
    ext = SeqExtender(max_dropout=100)
    ext.extend(10)
    ext.extend(11)
    ext.extend(30000)
    assert ext.restarted
    nxt = ext.extend(30001)
    assert not ext.restarted and nxt == ext.highest


def test_extender_follows_a_reordered_walk_across_many_wraps() -> None:
    # The sender's true packet index is known here; extend() must give it back (plus the first packet's
    # offset) for every arrival, duplicates and stragglers included, through 5 sequence-number cycles.
    rnd = random.Random(3)
    ext = SeqExtender()
    first = 65000
    base = ext.extend(first)
    index, highest = 0, 0
    while index < 5 * 65536:
        index += rnd.choice([1, 1, 1, 1, 2, 30])  # in order, a loss, a burst lost
        arrival = index - rnd.choice([0, 0, 0, 1, 5, 99]) if index > 100 else index  # some come late
        highest = max(highest, arrival)
        assert ext.extend((first + arrival) & 0xFFFF) == base + arrival
        assert not ext.restarted and ext.highest == base + highest
    too_old = (first + highest - 101) & 0xFFFF  # beyond max_misorder: a new count starts there
    assert ext.extend(too_old) == too_old + 65536 and ext.restarted
