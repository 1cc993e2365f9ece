"""Receive statistics of one RTP source (RFC 3550 §6.4.1, §A.3 loss, §A.8 interarrival jitter).

A pure core: arrival times are passed in (seconds, monotonic).
"""

from __future__ import annotations

from sipagent.rtp.seq import SeqExtender


class ReceiveStats:
    """Counts of the current source (what RTCP reports: a new SSRC or a sequence jump starts them over),
    and the call's totals over every source it had (``total_packets``, ``total_lost``)."""

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self._earlier_packets = 0  # the sources before the current one
        self._earlier_lost = 0
        self._base: int | None = None
        self.reset()

    def reset(self) -> None:
        """A new source."""
        if self._base is not None:
            self._bank(self.highest_seq)
        self.packets = 0
        self.octets = 0
        self._seq = SeqExtender()
        self._base = None
        self.jitter = 0.0  # RFC 3550 J, in timestamp units
        self._transit: float | None = None
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, sequence: int, timestamp: int, arrival: float, size: int = 0) -> None:
        seq = self._seq
        ext = seq.extend(sequence)
        if seq.restarted or self._base is None:
            if self._base is not None:  # a jump ends the run: its counts join the totals
                self._bank(seq.restarted_from)
            self._base = ext
            self._expected_prior = self._received_prior = 0
            self.packets = 0
        self.packets += 1
        self.octets += size
        # A.8: D(i,j) = (Rj - Ri) - (Sj - Si), all in timestamp units; J += (|D| - J) / 16.
        transit = arrival * self.clock_rate - timestamp
        previous = self._transit
        self._transit = transit
        if previous is not None:
            d = transit - previous
            # A timestamp wrap makes transit jump by 2**32: fold it back. (Float constants: comparing a
            # float with an int is the slower path in CPython, and every packet comes through here.)
            if d > 2147483648.0:
                d -= 4294967296.0
            elif d < -2147483648.0:
                d += 4294967296.0
            self.jitter += (abs(d) - self.jitter) / 16.0

    @property
    def highest_seq(self) -> int:
        """Extended highest sequence number received (0 before the first packet)."""
        return self._seq.highest or 0

    @property
    def expected(self) -> int:
        return 0 if self._base is None else self.highest_seq - self._base + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost; duplicates can make it negative, as RFC 3550 allows."""
        return self.expected - self.packets

    @property
    def total_packets(self) -> int:
        return self._earlier_packets + self.packets

    @property
    def total_lost(self) -> int:
        """Packets lost over the call, each source's run counted up to its highest sequence number."""
        return self._earlier_lost + max(0, self.lost)

    def _bank(self, highest: int) -> None:
        assert self._base is not None
        self._earlier_packets += self.packets
        self._earlier_lost += max(0, highest - self._base + 1 - self.packets)

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate

    def interval_fraction_lost(self) -> int:
        """Fraction lost since the previous call, as the 8-bit fixed point of an RTCP report block."""
        expected, received = self.expected, self.packets
        exp_int = expected - self._expected_prior
        rec_int = received - self._received_prior
        self._expected_prior, self._received_prior = expected, received
        lost_int = exp_int - rec_int
        if exp_int <= 0 or lost_int <= 0:
            return 0
        return min(255, (lost_int << 8) // exp_int)
