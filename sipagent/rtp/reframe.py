"""Packets of 10, 30, 50… ms cut into the 20 ms frames the jitter buffer and the decoders take. A pure core.

A phone or PBX may send another packetization than the ``ptime:20`` we answer with: Asterisk sends what its
``allow=ulaw:30`` says whatever the answer, and a few devices send 10 ms. For the three codecs one payload
byte is one RTP timestamp unit (G.722's clock is 8000 by convention), so a packet of ``L`` bytes at timestamp
``T`` holds the units ``[T, T + L)``. They are cut on a 20 ms grid anchored at the source's first timestamp:
whole frames go out at once; a frame that two packets share is held until both its halves have come (in any
order), or given up with codec silence in its gap once later frames have gone out (the packet was lost).
A duplicate makes no frame twice.
"""

from __future__ import annotations

from collections import deque

from sipagent.rtp.seq import TS_MOD, ts_diff

HELD_FRAMES = 8  # frames waiting for their other half at once; the oldest goes first when more come
GIVE_UP_FRAMES = 3  # a half-filled frame this far behind the newest is played with silence in its gap
REANCHOR_UNITS = 1 << 20  # a timestamp this far from the grid's origin (131 s at 8 kHz): a new grid


class Reframer:
    """``feed`` one packet's timestamp and payload (any whole number of half frames); get the 20 ms frames
    that are complete, with their timestamps, in the order they completed."""

    def __init__(self, silence: bytes) -> None:
        self.silence = bytes(silence)
        self.frame = len(silence)
        self.half = self.frame // 2
        self.reset()

    def reset(self) -> None:
        """A new source, or another codec."""
        self._origin: int | None = None
        self._held: dict[int, tuple[bytearray, int]] = {}  # frame start (grid units) -> (frame, halves mask)
        self._newest = 0  # the start of the latest frame that went out, in grid units
        self._sent: deque[int] = deque(maxlen=2 * HELD_FRAMES)  # frames that went out: a duplicate is no new half

    def fits(self, size: int) -> bool:
        """Whether a payload of ``size`` bytes is one this cuts: whole half frames, not one whole frame."""
        return size != self.frame and size > 0 and size % self.half == 0

    def feed(self, timestamp: int, payload: bytes) -> list[tuple[int, bytes]]:
        origin = self._origin
        offset = 0 if origin is None else ts_diff(timestamp, origin)
        if origin is None or abs(offset) > REANCHOR_UNITS or offset % self.half:
            # The first packet, a sender that jumped, or one whose timestamps are off our 10 ms grid.
            self.reset()
            self._origin, offset = timestamp, 0
        out: list[tuple[int, bytes]] = []
        n, half = self.frame, self.half
        for pos in range(0, len(payload), half):
            at = offset + pos
            start = at - at % n
            bit = 1 if at == start else 2
            if start in self._sent:
                continue
            frame, mask = self._held.pop(start, (bytearray(self.silence), 0))
            frame[at - start : at - start + half] = payload[pos : pos + half]
            mask |= bit
            if mask == 3:
                self._emit(out, start, frame)
            else:
                self._held[start] = (frame, mask)
        self._give_up(out)
        return out

    def _emit(self, out: list[tuple[int, bytes]], start: int, frame: bytearray) -> None:
        assert self._origin is not None
        out.append(((self._origin + start) % TS_MOD, bytes(frame)))
        self._sent.append(start)
        self._newest = max(self._newest, start)

    def _give_up(self, out: list[tuple[int, bytes]]) -> None:
        """Half frames whose other half will not come now (lost, or too late to be played) go out as they are,
        silence in the gap; and never more than ``HELD_FRAMES`` wait."""
        limit = self._newest - GIVE_UP_FRAMES * self.frame
        for start in sorted(self._held):
            if start <= limit or len(self._held) > HELD_FRAMES:
                frame, _ = self._held.pop(start)
                self._emit(out, start, frame)


__all__ = ["Reframer"]
