"""Jitter buffer: packets in any order in, one 20 ms frame out per pull, with loss concealment.

A pure core. Frames are indexed by RTP timestamp, not sequence number, so a sender that stops sending
during silence (timestamp jumps, sequence does not) gets silence for the gap instead of being squeezed.

Why pulled by the media clock rather than driven by arrival: the consumer (the bridge) needs exactly one
frame per 20 ms whatever the network does. Pulling on the local clock turns lost packets into concealment
frames at the right moment and spreads bursts out again; an arrival-driven buffer would need its own
timers to notice a loss. The cost is that sender/receiver clock drift must be absorbed here: when the
buffer holds more than ``depth + slack`` frames, the oldest frame is dropped (counted as ``overflow``);
when it runs dry, concealment fills in and the depth rebuilds.

Playout starts ``depth`` pulls after the first packet (the pre-buffer), from the earliest timestamp seen
meanwhile. Timestamp jumps larger than ``max_jump_frames`` in either direction, or a new SSRC, restart
the buffer (a re-INVITE, a transfer, a PBX that re-bridges media), and so does a timestamp off the
20 ms grid of the current stream (a new timestamp base).

A second, low-latency way out serves consumers that are not ears (the Realtime API): ``pop_ready``
releases the next frame the moment it is here, with no pre-buffer, and the clock only steps in with
``pop`` (concealment) once the next frame is overdue by ``depth`` ticks. In-order audio then reaches the
model with no added delay, and reordering and loss still cost at most ``depth`` ticks.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from sipagent.rtp.seq import ts_diff

LATE_RUN_RESYNC = 3  # this many late packets in a row restart the buffer at the sender's timeline
RECENT_PLAYED = 16  # played timestamps remembered to recognise a duplicate of a frame already played


class FrameKind(enum.Enum):
    AUDIO = "audio"
    REPEAT = "repeat"  # concealment: the previous frame once more
    SILENCE = "silence"  # concealment: the silence frame


class PutResult(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    RESYNC = "resync"  # accepted, after restarting the buffer
    STALE_SSRC = "stale_ssrc"  # a straggler from the SSRC we just left


@dataclass(slots=True)
class JitterStats:
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    resyncs: int = 0
    overflow: int = 0
    concealed: int = 0
    played: int = 0


class JitterBuffer:
    def __init__(
        self,
        silence: bytes,
        depth_frames: int = 3,
        samples_per_frame: int = 160,
        slack_frames: int = 3,
        max_jump_frames: int = 50,
    ) -> None:
        self.silence = silence
        self.depth = max(1, depth_frames)
        self.step = samples_per_frame
        self.slack = slack_frames
        self.max_jump = max_jump_frames * samples_per_frame
        self.stats = JitterStats()
        self._frames: dict[int, bytes] = {}  # timestamp -> payload
        self._ssrc: int | None = None
        self._old_ssrc: int | None = None
        self._play_ts: int | None = None  # timestamp of the next frame to pull, once playing
        self._prebuffer = 0  # pulls left before playout starts
        self._first_ts = 0  # earliest timestamp seen during the pre-buffer
        self._last: bytes | None = None
        self._concealing = 0
        # Recently played timestamps, to tell duplicates from late packets.
        self._recent: deque[int] = deque(maxlen=RECENT_PLAYED)
        self._late_run = 0  # consecutive late packets

    @classmethod
    def from_ms(cls, silence: bytes, jitter_ms: int) -> JitterBuffer:
        return cls(silence, depth_frames=max(1, round(jitter_ms / 20)))

    @property
    def buffered(self) -> int:
        return len(self._frames)

    def put(self, timestamp: int, ssrc: int, payload: bytes) -> PutResult:
        resynced = False
        if ssrc != self._ssrc:
            if self._ssrc is not None and ssrc == self._old_ssrc:
                return PutResult.STALE_SSRC
            if self._ssrc is not None:
                self._old_ssrc = self._ssrc
                resynced = True
            self._restart(ssrc, timestamp)
        elif self._play_ts is None:
            delta = ts_diff(timestamp, self._first_ts)
            if abs(delta) > self.max_jump or delta % self.step:
                self._restart(ssrc, timestamp)
                resynced = True
            elif delta < 0:
                self._first_ts = timestamp
        else:
            ahead = ts_diff(timestamp, self._play_ts)
            if ahead < -self.max_jump or ahead > self.max_jump or ahead % self.step:
                self._restart(ssrc, timestamp)
                resynced = True
            elif ahead < 0:
                if timestamp in self._recent:
                    self.stats.duplicates += 1
                    return PutResult.DUPLICATE
                self._late_run += 1
                if self._late_run < LATE_RUN_RESYNC:
                    self.stats.late += 1
                    return PutResult.LATE
                # Several late packets in a row are not stragglers: the sender paused without moving its
                # timestamps on, or its clock is slow. Follow it rather than dropping it forever.
                self._restart(ssrc, timestamp)
                resynced = True
        if timestamp in self._frames:
            self.stats.duplicates += 1
            return PutResult.DUPLICATE
        self._frames[timestamp] = payload
        self._late_run = 0
        self.stats.accepted += 1
        if resynced:
            self.stats.resyncs += 1
            return PutResult.RESYNC
        return PutResult.ACCEPTED

    def take_next(self, timestamp: int, ssrc: int, payload: bytes) -> bool:
        """``put`` then ``pop_ready`` in one step for the common case of the eager path: the frame due next
        arrives, from the current source, with nothing buffered. Then it is played at once (True: the caller
        hands ``payload`` on) with the same bookkeeping as the two calls, without the dict insert and pop.
        Any other case returns False with nothing changed; use ``put`` and ``pop_ready``."""
        if timestamp != self._play_ts or ssrc != self._ssrc or self._frames:
            return False
        self._play_ts = (timestamp + self.step) & 0xFFFFFFFF
        self._late_run = 0
        self._last = payload
        self._concealing = 0
        stats = self.stats
        stats.accepted += 1
        stats.played += 1
        self._recent.append(timestamp)
        return True

    def pop(self) -> tuple[bytes, FrameKind] | None:
        """The frame for this 20 ms, or None before the first packet and during the pre-buffer."""
        if self._play_ts is None:
            if self._ssrc is None:
                return None
            self._prebuffer -= 1
            if self._prebuffer > 0:
                return None
            self._play_ts = self._first_ts
        frames = self._frames
        if len(frames) > self.depth + self.slack:
            self._purge_stale()
        if len(frames) > self.depth + self.slack:
            # More buffered than we need (sender clock faster, or a burst after a stall): skip one frame.
            frames.pop(self._play_ts, None)
            self._advance()
            self.stats.overflow += 1
        ts = self._play_ts
        self._advance()
        payload = frames.pop(ts, None)
        if payload is not None:
            self._last = payload
            self._concealing = 0
            self.stats.played += 1
            self._recent.append(ts)
            return payload, FrameKind.AUDIO
        self.stats.concealed += 1
        self._concealing += 1
        if self._concealing == 1 and self._last is not None:
            return self._last, FrameKind.REPEAT
        return self.silence, FrameKind.SILENCE

    def pop_ready(self) -> bytes | None:
        """The next frame if it has already arrived, else None; starts playout at once (no pre-buffer)."""
        if self._play_ts is None:
            if self._ssrc is None:
                return None
            self._play_ts = self._first_ts
            self._prebuffer = 0
        ts = self._play_ts
        payload = self._frames.pop(ts, None)
        if payload is None:
            return None
        self._advance()
        self._last = payload
        self._concealing = 0
        self.stats.played += 1
        self._recent.append(ts)
        return payload

    @property
    def started(self) -> bool:
        return self._play_ts is not None

    def _advance(self) -> None:
        assert self._play_ts is not None
        self._play_ts = (self._play_ts + self.step) & 0xFFFFFFFF

    def _purge_stale(self) -> None:
        play_ts = self._play_ts
        assert play_ts is not None
        for ts in [t for t in self._frames if ts_diff(t, play_ts) < 0]:
            del self._frames[ts]

    def _restart(self, ssrc: int, timestamp: int) -> None:
        self._ssrc = ssrc
        self._frames.clear()
        self._recent.clear()
        self._play_ts = None
        self._first_ts = timestamp
        self._prebuffer = self.depth
        self._last = None
        self._concealing = 0
