"""Modular arithmetic on 16-bit sequence numbers and 32-bit timestamps (RFC 3550 §A.1)."""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between RTP timestamps, in [-2**31, 2**31 - 1]."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number a comes after b (with wrap-around)."""
    return seq_diff(a, b) > 0


class SeqExtender:
    """Extends 16-bit sequence numbers to a monotonic count of cycles (RFC 3550 §A.1, without probation).

    ``extend(seq)`` returns the extended number of ``seq`` relative to the highest seen so far; a large
    jump (more than ``max_dropout`` ahead or ``max_misorder`` behind) restarts the count at ``seq``
    and sets ``restarted`` so callers can reset what depends on it.
    """

    def __init__(self, max_dropout: int = 3000, max_misorder: int = 100) -> None:
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        self.highest: int | None = None  # extended
        self.restarted = False
        self.restarted_from = 0  # at a restart: the extended highest of the run it ended

    def extend(self, seq: int) -> int:
        highest = self.highest
        if highest is None:
            self.restarted = False
            self.highest = highest = seq + SEQ_MOD  # one cycle up, so early reordered packets stay positive
            return highest
        # seq_diff(seq, highest & 0xFFFF), inlined: this runs for every packet received.
        delta = ((seq - highest + 0x8000) & 0xFFFF) - 0x8000
        if -self.max_misorder <= delta <= self.max_dropout:
            self.restarted = False
            if delta > 0:
                self.highest = highest = highest + delta
                return highest
            return highest + delta
        self.restarted_from = highest
        self.highest = highest = seq + SEQ_MOD
        self.restarted = True
        return highest
