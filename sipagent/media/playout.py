"""Per-call playout queue: audio of any length in, exactly one frame out per clock tick.

A pure core. The bridge pushes encoded payload bytes as they arrive (any length); the media clock pops
one frame per 20 ms tick and sends it. When the queue runs dry the clock gets the codec's silence frame.
``played_ms`` counts only real audio handed to the wire, which is what barge-in truncation needs.

A partial frame at the end of an utterance is held for ``hold_ticks`` ticks (the next delta usually
completes it), then sent padded with silence so the tail of the utterance is not stuck in the queue.

``pause()`` holds the queue where it is (the clock gets silence, nothing is dropped) until ``resume()``:
the first, reversible stage of barge-in, taken at the caller's speech onset before it is confirmed.

``duck(gain)`` turns the audio down from the next tick on without holding anything (the queue plays on,
``played_ms`` counts on) until ``unduck()``: barge-in's gentler first stage. The gain is applied to each
frame as it leaves by ``shaper(frame, gain_from, gain_to)`` (the agent's queue of PCM scales the samples
with a short ramp: sipagent.media.pcm_playout); with no shaper a ducked frame is sent as silence.

``reframe()`` moves the queue to another codec mid-call (a re-INVITE): what is still queued is converted,
``played_ms`` and a pause carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipagent.media.kernel import EncoderBatch

Shaper = Callable[[bytes, float, float], bytes]  # (frame, gain at its start, gain at its end) -> frame


class PlayoutQueue:
    def __init__(self, frame_bytes: int = 160, silence: bytes = b"\xff" * 160, hold_ticks: int = 2) -> None:
        if frame_bytes <= 0 or len(silence) != frame_bytes:
            raise ValueError("silence must be exactly one frame of frame_bytes bytes")
        self.frame_bytes = frame_bytes
        self.silence = bytes(silence)
        self.hold_ticks = hold_ticks
        self._buf = bytearray()
        self._played_bytes = 0
        self._held = 0  # consecutive ticks a partial frame has waited
        self.paused = False
        self.gain = 1.0  # below 1 while ducked
        self._gain_out = 1.0  # the gain the last audio frame ended at (a change ramps from it)
        self.shaper: Shaper | None = None

    def push(self, payload: bytes) -> None:
        self._buf += payload

    def pop_frame(self) -> tuple[bytes, bool]:
        """Return ``(frame, is_audio)``: the next frame of audio, or the silence frame when there is none."""
        if self.paused:
            return self.silence, False
        n = self.frame_bytes
        buf = self._buf
        if len(buf) >= n:
            frame = bytes(buf[:n])
            del buf[:n]
            self._held = 0
            self._played_bytes += n
            if self.gain != self._gain_out or self.gain != 1.0:
                return self._shape(frame), True
            return frame, True
        if not buf:
            return self.silence, False
        self._held += 1
        if self._held <= self.hold_ticks:
            return self.silence, False
        tail = bytes(buf)
        buf.clear()
        self._held = 0
        self._played_bytes += len(tail)
        frame = tail + self.silence[len(tail) :]
        if self.gain != self._gain_out or self.gain != 1.0:
            return self._shape(frame), True
        return frame, True

    def pop_frame_staged(self, batch: EncoderBatch) -> tuple[bytes | None, bool]:
        """``pop_frame``, for a queue that may leave the coding of its frame to ``batch``: a payload of
        None means the frame is staged there, and the caller names its destination (``batch.send``).
        A queue of payloads has nothing to code: this one never stages."""
        return self.pop_frame()

    encodes_pcm = False  # a queue of payloads has no encoder for frames of its own (sipagent.media.pcm_playout)

    def encode_pcm(self, pcm24k: bytes) -> bytes | None:
        """One 20 ms frame of 24 kHz PCM that is not from the queue (a key's tone), encoded for the wire in
        line with the queue's own frames; None when the queue cannot (``encodes_pcm`` is False)."""
        return None

    def _shape(self, frame: bytes) -> bytes:
        start, self._gain_out = self._gain_out, self.gain
        if self.shaper is None:
            return frame if self.gain >= 1.0 else self.silence
        return self.shaper(frame, start, self.gain)

    def duck(self, gain: float) -> None:
        """From the next audio frame on, send it at ``gain`` (0 < gain < 1), ramped from the current gain."""
        self.gain = min(1.0, max(0.0, gain))

    def unduck(self) -> None:
        """Back to full level from the next audio frame (ramped up)."""
        self.gain = 1.0

    def pause(self) -> None:
        """Send silence from the next tick on, keeping every byte queued (and ``played_ms``) as it is."""
        self.paused = True

    def resume(self) -> None:
        """Carry on from the frame where ``pause()`` stopped."""
        self.paused = False

    def flush(self) -> int:
        """Discard everything not yet sent (a pause ends with it: nothing is left to resume); returns the
        milliseconds discarded."""
        discarded = self.buffered_ms
        self._buf.clear()
        self._held = 0
        self.paused = False
        self.gain = self._gain_out = 1.0  # new audio starts at full level
        return discarded

    def reframe(self, silence: bytes, convert: Callable[[bytes], bytes] | None = None) -> None:
        """Frames of ``len(silence)`` bytes and this silence from the next pop on; what is still queued goes
        through ``convert`` (the old codec's bytes to the new one's; None: kept as it is), so nothing the
        agent had still to say is lost. ``played_ms`` counts on in milliseconds, and a pause (or a duck) stays."""
        if not silence:
            raise ValueError("silence must be one whole frame")
        played_ms = self.played_ms
        if len(silence) != self.frame_bytes:
            self.frame_bytes = len(silence)
            self._played_bytes = played_ms * self.frame_bytes // 20
        self.silence = bytes(silence)
        self.shaper = None  # the old codec's: a duck under way goes on as silence until it ends
        if self._buf and convert is not None:
            self._buf = bytearray(convert(bytes(self._buf)))
        self._held = 0

    def reset_played(self) -> None:
        self._played_bytes = 0

    @property
    def played_ms(self) -> int:
        """Milliseconds of real audio sent since the last ``reset_played()``."""
        return self._played_bytes * 20 // self.frame_bytes

    @property
    def buffered_ms(self) -> int:
        return len(self._buf) * 20 // self.frame_bytes

    @property
    def frame_ready(self) -> bool:
        """True when the next pop would return a whole frame of audio (not paused)."""
        return not self.paused and len(self._buf) >= self.frame_bytes

    @property
    def is_playing(self) -> bool:
        """True while there is audio waiting to be sent (paused or not)."""
        return bool(self._buf)
