"""RFC 4733 telephone-events (DTMF): payload codec, a de-duplicating receiver and a per-tick sender.

A pure core. One event is identified by its RTP timestamp (the moment it began): every packet of it,
including the three repeated end packets, carries that timestamp. The receiver reports each digit once,
on its first end packet, with the duration that packet announces; if all end packets are lost, the
digit is reported when the next event (another timestamp) begins, or on ``flush()``.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from sipagent.errors import RtpError
from sipagent.media.dtmf_tones import key_ticks

EVENTS = "0123456789*#ABCD"
_PAYLOAD = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    event = EVENTS.find(digit.upper()) if len(digit) == 1 else -1
    if event < 0:
        raise RtpError(f"not a DTMF digit: {digit!r}")
    return event


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int
    duration: int  # in RTP timestamp units

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload too short: {len(payload)} bytes")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        flags = (0x80 if self.end else 0) | (self.volume & 0x3F)
        return _PAYLOAD.pack(self.event, flags, self.duration & 0xFFFF)

    @property
    def digit(self) -> str | None:
        return EVENTS[self.event] if self.event < len(EVENTS) else None


class DtmfReceiver:
    """Turns telephone-event packets into ``(digit, duration_ms)`` reports, each digit once."""

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self._current: int | None = None  # timestamp of the event in progress
        self._event: TelephoneEvent | None = None
        self._done: deque[int] = deque(maxlen=8)  # timestamps already reported

    def feed(self, timestamp: int, payload: bytes) -> list[tuple[str, int]]:
        ev = TelephoneEvent.parse(payload)
        if timestamp in self._done:
            return []  # a repeated end packet, or a straggler of a reported event
        out: list[tuple[str, int]] = []
        if self._current is not None and timestamp != self._current:
            out.extend(self.flush())
        self._current, self._event = timestamp, ev
        if ev.end:
            out.extend(self.flush())
        return out

    def flush(self) -> list[tuple[str, int]]:
        """Report the event in progress as ended (its end packets never came)."""
        if self._current is None or self._event is None:
            return []
        ev, ts = self._event, self._current
        self._current = self._event = None
        self._done.append(ts)
        digit = ev.digit
        if digit is None:
            return []  # a non-DTMF event (flash, tones): not a digit
        return [(digit, ev.duration * 1000 // self.clock_rate)]


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    payload: bytes
    marker: bool
    first_of_event: bool  # the sender stamps every packet of the event with the timestamp of this one


class DtmfSender:
    """Yields one telephone-event payload per 20 ms tick for each queued digit (RFC 4733 §2.5.1).

    Every packet of an event carries the timestamp of the tick the event began on (the endpoint stamps it
    from ``first_of_event``), the first has the marker bit, and each one's duration is the time from that
    start to the end of the packet's own tick, so it grows by 160 per tick. A digit of ``duration_ms`` takes
    ceil(duration/20) ticks, the last carrying the end bit; the end packet is sent three times in all
    (§2.5.1.4: a lost end packet would leave the key held down), with the same duration. Then ``gap_ticks``
    ticks of ordinary audio separate digits (a gateway that turns events into tones needs the pause to hear
    two keys). The events take the place of the audio packets of their ticks, in the same sequence-number
    and timestamp space, so the audio after them goes on at the timestamp the clock has reached.
    """

    def __init__(self, samples_per_tick: int = 160, volume: int = 10, gap_ticks: int = 2) -> None:
        self.step = samples_per_tick
        self.volume = volume
        self.gap_ticks = gap_ticks
        self._queue: deque[tuple[int, int]] = deque()  # (event, ticks)
        self._event: int | None = None
        self._ticks_total = 0
        self._tick = 0  # ticks of the current event so far, this one included
        self._ends = 0  # end packets sent of the current event
        self._gap = 0

    def queue(self, digit: str, duration_ms: int = 100) -> None:
        ticks = key_ticks(duration_ms)  # the bounds of a key sent as tones too
        self._queue.append((digit_to_event(digit), ticks))

    @property
    def busy(self) -> bool:
        return self._event is not None or bool(self._queue)

    def next_packet(self, elapsed: int = 1) -> DtmfPacket | None:
        """The event packet to send on this tick instead of audio, or None to send audio. ``elapsed``: ticks
        since the last call (more than 1 after the media clock skipped ticks): the duration follows the
        timestamp across the skip instead of falling behind it."""
        if self._event is None:
            if self._gap > 0:
                self._gap -= elapsed
                return None
            if not self._queue:
                return None
            self._event, self._ticks_total = self._queue.popleft()
            self._tick, self._ends = 1, 0
        else:
            self._tick += elapsed
        end = self._tick >= self._ticks_total
        duration = min(self._tick, self._ticks_total) * self.step
        payload = TelephoneEvent(self._event, end, self.volume, duration).serialize()
        first = self._tick == 1
        if end:
            self._ends += 1
            if self._ends == 3:
                self._event = None
                self._gap = self.gap_ticks
        return DtmfPacket(payload, marker=first, first_of_event=first)
