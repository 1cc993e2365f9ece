"""Which address an RTP endpoint takes media from (and sends to): strict RTP with symmetric-RTP learning.

A pure core: packets' source, SSRC and sequence number in, a yes or no out. Time is a count of the media
clock's 20 ms ticks, passed in by the caller.

Media comes from the **current source**, which starts as the address the SDP signalled. The rules:

1. A packet from the current source is taken (and marks it as heard).
2. A packet from the signalled address is always taken and makes it current again at once: it is what
   the SDP says.
3. With symmetric RTP (NAT support), another address becomes current only when the current source has
   been silent for ``silence_ticks`` (counted from the SDP when it was never heard) and that address
   then sends ``probation`` packets in a row with one SSRC and consecutive sequence numbers; the packet
   that completes the run is taken. A run is void as soon as the current source speaks again, so a
   spray that starts before or with the call cannot outrun a caller who starts sending at once.
4. Everything else is foreign: dropped. Without symmetric RTP, only the signalled address is taken, and
   with no signalled address (none yet, or c=0.0.0.0: hold) nothing is.

This is Asterisk's strict RTP with a silence window in front of the learning. With symmetric RTP an
outsider who can send a well-formed stream still takes over a call whose peer stays silent for the whole
window; only ``symmetric=False`` rules that out.
"""

from __future__ import annotations

SILENCE_TICKS = 50  # 1 s of the current source's silence before another address may start its probation
PROBATION = 5  # packets in a row (one SSRC, consecutive sequence numbers) that make another address current

Address = tuple[str, int]


class SourceLatch:
    """One call's media source. ``source`` is where media is taken from and sent to (None: nowhere yet)."""

    __slots__ = ("_candidate", "_candidate_next", "_candidate_run", "_candidate_ssrc", "heard", "probation",
                 "signalled", "silence_ticks", "source", "symmetric")

    def __init__(self, *, symmetric: bool = True, silence_ticks: int = SILENCE_TICKS,
                 probation: int = PROBATION) -> None:
        self.symmetric = symmetric
        self.silence_ticks = silence_ticks
        self.probation = max(1, probation)
        self.signalled: Address | None = None
        self.source: Address | None = None
        # The tick the current source was last heard, or when the SDP named it. The endpoint writes it
        # itself for a packet from the current source: that is rule 1, inlined on the per-packet path.
        self.heard = 0
        self._candidate: Address | None = None
        self._candidate_ssrc = 0
        self._candidate_next = 0
        self._candidate_run = 0

    def set_signalled(self, signalled: Address | None, now: int) -> bool:
        """The SDP's address (None: none to send to, such as c=0.0.0.0). A new address starts over (True);
        the same address again (a session refresh) keeps the current source, so a NAT latch survives it."""
        if signalled == self.signalled and self.source is not None:
            return False
        self.signalled = self.source = signalled
        self.heard = now
        self._candidate = None
        return True

    def accept(self, addr: Address, ssrc: int, sequence: int, now: int) -> bool:
        """Whether to take a packet (of a negotiated payload type) from ``addr``; all four rules."""
        if addr == self.source:
            self.heard = now
            return True
        return self.consider(addr, ssrc, sequence, now)

    def consider(self, addr: Address, ssrc: int, sequence: int, now: int) -> bool:
        """A packet from an address that is not the current source: True when it becomes current (the
        caller then takes the packet and moves its sending there), False to drop it."""
        if addr == self.signalled:
            self._switch(addr, now)
            return True
        if not self.symmetric or self.signalled is None:
            return False  # no learning: switched off, or no peer (hold) whose NAT we could learn
        if now - self.heard < self.silence_ticks:
            self._candidate = None  # the current source is not silent: a run can only start after it is
            return False
        if addr == self._candidate and ssrc == self._candidate_ssrc and sequence == self._candidate_next:
            self._candidate_run += 1
        else:
            self._candidate, self._candidate_ssrc, self._candidate_run = addr, ssrc, 1
        self._candidate_next = (sequence + 1) & 0xFFFF
        if self._candidate_run < self.probation:
            return False
        self._switch(addr, now)
        return True

    def _switch(self, addr: Address, now: int) -> None:
        self.source = addr
        self.heard = now
        self._candidate = None
