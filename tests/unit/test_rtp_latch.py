"""SourceLatch: which address media is taken from, with scripted packets and a clock of 20 ms ticks."""

from __future__ import annotations

import random

from sipagent.rtp.latch import PROBATION, SILENCE_TICKS, Address, SourceLatch

SIGNALLED = ("192.0.2.10", 4000)  # what the SDP says
NAT = ("198.51.100.7", 31000)  # where the caller's packets really come from, behind a NAT
REBOUND = ("198.51.100.7", 31544)  # the same caller after its NAT binding changed
SPRAYER = ("203.0.113.66", 5004)


class Stream:
    """One RTP sender: one SSRC, consecutive sequence numbers (wrapping), from one address."""

    def __init__(self, addr: Address, ssrc: int = 0x1234, seq: int = 100) -> None:
        self.addr, self.ssrc, self.seq = addr, ssrc, seq

    def send(self, latch: SourceLatch, now: int) -> bool:
        taken = latch.accept(self.addr, self.ssrc, self.seq, now)
        self.seq = (self.seq + 1) & 0xFFFF
        return taken


def latch_at(signalled: Address | None = SIGNALLED, *, symmetric: bool = True, now: int = 0) -> SourceLatch:
    latch = SourceLatch(symmetric=symmetric)
    latch.set_signalled(signalled, now)
    return latch


def test_constants_are_a_second_and_asterisks_probation() -> None:
    assert (SILENCE_TICKS, PROBATION) == (50, 5)


def test_a_spray_that_starts_before_the_caller_never_wins() -> None:
    # The sprayer sends a perfect run (one SSRC, consecutive sequence numbers), three packets a tick, from
    # the very first tick; the caller starts one tick later, or as late as 0.9 s into the call.
    for start in (0, 1, 45):
        latch = latch_at()
        caller, sprayer = Stream(SIGNALLED), Stream(SPRAYER, ssrc=0xBAD)
        for now in range(500):
            assert not any(sprayer.send(latch, now) for _ in range(3))
            if now >= start:
                assert caller.send(latch, now)
        assert latch.source == SIGNALLED


def test_a_spray_during_the_call_never_wins_even_across_a_pause_shorter_than_the_window() -> None:
    latch = latch_at()
    caller, sprayer = Stream(SIGNALLED), Stream(SPRAYER, ssrc=0xBAD)
    for now in range(600):
        if not 200 <= now < 200 + SILENCE_TICKS - 1:  # the caller pauses for 0.98 s
            assert caller.send(latch, now)
        if now >= 100:
            assert not any(sprayer.send(latch, now) for _ in range(5))
    assert latch.source == SIGNALLED


def test_after_a_whole_silent_window_a_run_takes_over_and_the_signalled_address_takes_it_back() -> None:
    # The limit of symmetric RTP, stated: a well-formed stream wins once the peer has been silent a second.
    latch = latch_at()
    caller, other = Stream(SIGNALLED), Stream(SPRAYER)
    assert caller.send(latch, 0)
    taken = [now for now in range(1, 80) if other.send(latch, now)]
    assert taken[0] == SILENCE_TICKS + PROBATION - 1 and taken == list(range(taken[0], 80))
    assert latch.source == SPRAYER
    assert caller.send(latch, 80)  # what the SDP says wins at once
    assert latch.source == SIGNALLED
    assert not other.send(latch, 81)


def test_nat_a_caller_never_heard_at_its_signalled_address_latches_after_the_window_and_probation() -> None:
    latch = latch_at(now=1000)
    caller = Stream(NAT)
    taken = [now for now in range(1000, 1200) if caller.send(latch, now)]
    # Silence counts from the SDP; the run of PROBATION packets starts once it is a second old.
    assert taken == list(range(1000 + SILENCE_TICKS + PROBATION - 1, 1200))
    assert latch.source == NAT
    # The NAT latch holds against others while the caller speaks.
    sprayer = Stream(SPRAYER)
    for now in range(1200, 1400):
        assert caller.send(latch, now)
        assert not sprayer.send(latch, now)


def test_nat_rebinding_mid_call_moves_the_stream_after_the_old_binding_falls_silent() -> None:
    latch = latch_at()
    old = Stream(NAT, ssrc=0x77)
    taken = [now for now in range(200) if old.send(latch, now)]  # the old binding sends until tick 199
    assert taken[0] == SILENCE_TICKS + PROBATION - 1
    new = Stream(REBOUND, ssrc=0x77, seq=old.seq)  # same stream, new source port
    taken = [now for now in range(200, 400) if new.send(latch, now)]
    assert taken == list(range(199 + SILENCE_TICKS + PROBATION - 1, 400))
    assert latch.source == REBOUND


def test_random_spraying_never_latches() -> None:
    rng = random.Random(14)
    latch = latch_at()  # the worst case: the signalled peer is never heard
    sources = [SPRAYER, ("203.0.113.66", 5006), ("203.0.113.67", 5004)]
    for now in range(5000):
        for _ in range(20):
            addr = rng.choice(sources) if rng.random() < 0.8 else ("203.0.113.68", rng.randrange(1024, 65536))
            assert not latch.accept(addr, rng.getrandbits(32), rng.getrandbits(16), now)
    assert latch.source == SIGNALLED


def test_near_misses_of_a_valid_run_never_latch() -> None:
    latch = latch_at()
    for now in range(SILENCE_TICKS, 1000):
        k = now - SILENCE_TICKS
        assert not latch.accept(SPRAYER, 0xAA, (2 * k) & 0xFFFF, now)  # every other sequence number
    for now in range(1000, 2000):
        assert not latch.accept(SPRAYER, 0xAA + now % 2, now & 0xFFFF, now)  # two SSRCs in turn
    for now in range(2000, 3000):  # one run, shared by two addresses in turn
        assert not latch.accept(SPRAYER if now % 2 else NAT, 0xAA, now & 0xFFFF, now)
    assert latch.source == SIGNALLED


def test_a_run_is_void_once_the_current_source_speaks() -> None:
    latch = latch_at()
    caller, other = Stream(SIGNALLED), Stream(NAT)
    for now in range(SILENCE_TICKS, SILENCE_TICKS + PROBATION - 1):
        assert not other.send(latch, now)
    assert caller.send(latch, SILENCE_TICKS + PROBATION - 1)
    # The run has to start again, a whole window after the caller's packet.
    taken = [now for now in range(SILENCE_TICKS + PROBATION, 200) if other.send(latch, now)]
    assert taken[0] == SILENCE_TICKS + PROBATION - 1 + SILENCE_TICKS + PROBATION - 1


def test_a_run_across_the_sequence_wrap_counts() -> None:
    latch = latch_at()
    caller = Stream(NAT, seq=65533)
    assert next(now for now in range(100) if caller.send(latch, now)) == SILENCE_TICKS + PROBATION - 1


def test_without_symmetric_rtp_only_the_signalled_address_is_ever_taken() -> None:
    latch = latch_at(symmetric=False)
    natted, other = Stream(NAT), Stream(SPRAYER)
    assert not any(natted.send(latch, now) or other.send(latch, now) for now in range(2000))
    assert latch.source == SIGNALLED
    caller = Stream(SIGNALLED)
    assert all(caller.send(latch, now) for now in range(2000, 2100))


def test_a_new_signalled_address_starts_over() -> None:
    latch = latch_at()
    caller = Stream(NAT)
    assert any(caller.send(latch, now) for now in range(100))
    assert latch.source == NAT
    # A re-INVITE moves media to 192.0.2.20: the NAT latch and its source are history.
    moved = ("192.0.2.20", 4002)
    assert latch.set_signalled(moved, 100)
    assert latch.source == moved
    taken = [now for now in range(100, 300) if caller.send(latch, now)]
    assert taken[0] == 100 + SILENCE_TICKS + PROBATION - 1  # the window counts from the re-INVITE


def test_a_run_in_progress_does_not_survive_a_new_signalled_address() -> None:
    latch = latch_at()
    other = Stream(SPRAYER)
    for now in range(SILENCE_TICKS, SILENCE_TICKS + PROBATION - 1):
        assert not other.send(latch, now)
    assert latch.set_signalled(("192.0.2.20", 4002), SILENCE_TICKS + PROBATION - 1)
    assert not any(other.send(latch, now) for now in range(SILENCE_TICKS + PROBATION - 1, 100))


def test_the_same_signalled_address_again_keeps_a_nat_latch() -> None:
    latch = latch_at()
    caller = Stream(NAT)
    assert any(caller.send(latch, now) for now in range(100))
    assert not latch.set_signalled(SIGNALLED, 100)  # a session refresh
    assert latch.source == NAT and caller.send(latch, 101)


def test_no_signalled_address_takes_nothing() -> None:
    # c=0.0.0.0 (hold, RFC 2543 style), or before the SDP: there is no peer, so nothing to learn.
    latch = latch_at(None)
    assert latch.source is None
    caller = Stream(NAT)
    assert not any(caller.send(latch, now) for now in range(1000))
    assert latch.source is None
    assert not SourceLatch().accept(NAT, 1, 1, 1000)
