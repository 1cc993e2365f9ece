"""DTMF keys as tones in the audio (ITU-T Q.23), for a line that negotiated no RFC 4733 telephone-event.

A pure core. ``ToneSender`` yields one 20 ms frame of 24 kHz PCM16 per clock tick while keys are queued:
each key's two sines for its duration, then a pause of silence, so that a detector at the far end hears
two presses of the same key as two. The frames take the place of the agent's audio on their ticks (the
endpoint encodes them with the call's own encoder, so a G.722 decoder stays in step), which waits meanwhile.

Levels: −7 dBm0 for the low group and −5 dBm0 for the high one (the high group a little louder, as Q.23
recommends against the line's tilt), with 2 ms ramps at each end so the edges do not splatter into other
keys' frequencies. In G.711, 0 dBm0 is a sine 3.14 dB below a full-scale one.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from sipagent.errors import RtpError

RATE = 24_000
FRAME_SAMPLES = 480  # 20 ms
MIN_TONE_MS = 40  # ITU-T Q.24: a shorter key is not reliably detected (as tones, or turned into them)
MAX_TONE_MS = 5000  # inside RFC 4733's 16-bit duration (8.19 s at 8 kHz): no long-event segments needed
PAUSE_TICKS = 3  # 60 ms of silence after each key (Q.24 asks at least 40 ms between keys)
_RAMP = 48  # 2 ms
ZERO_DBM0 = 32767 * 10 ** (-3.14 / 20)  # a sine's amplitude at 0 dBm0 in G.711, as 16-bit PCM
LOW_AMPLITUDE = ZERO_DBM0 * 10 ** (-7 / 20)
HIGH_AMPLITUDE = ZERO_DBM0 * 10 ** (-5 / 20)

ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
KEYPAD = ("123A", "456B", "789C", "*0#D")
FREQUENCIES: dict[str, tuple[int, int]] = {
    key: (ROWS[r], COLUMNS[c]) for r, line in enumerate(KEYPAD) for c, key in enumerate(line)
}
SILENCE = bytes(FRAME_SAMPLES * 2)


def key_ticks(duration_ms: int) -> int:
    """A key's length in 20 ms ticks (rounded up), however it is sent; RtpError outside the bounds."""
    if not MIN_TONE_MS <= duration_ms <= MAX_TONE_MS:
        raise RtpError(f"a DTMF key lasts {MIN_TONE_MS} to {MAX_TONE_MS} ms, not {duration_ms}")
    return -(-duration_ms // 20)


def tone(digit: str, duration_ms: int) -> bytes:
    """The whole tone of one key, ``duration_ms`` rounded up to whole 20 ms frames: 24 kHz PCM16."""
    low, high = FREQUENCIES[digit.upper()]
    n = -(-duration_ms // 20) * FRAME_SAMPLES
    t = np.arange(n) / RATE
    wave = LOW_AMPLITUDE * np.sin(2 * math.pi * low * t) + HIGH_AMPLITUDE * np.sin(2 * math.pi * high * t)
    ramp = 0.5 - 0.5 * np.cos(math.pi * (np.arange(_RAMP) + 0.5) / _RAMP)
    wave[:_RAMP] *= ramp
    wave[-_RAMP:] *= ramp[::-1]
    return np.round(wave).astype("<i2").tobytes()


class ToneSender:
    """Keys queued as tones, given out one 20 ms frame per tick (``next_frame``)."""

    def __init__(self) -> None:
        self._queue: deque[tuple[str, int]] = deque()  # (key, duration_ms)
        self._frames: deque[bytes] = deque()  # the current key's frames, its pause included

    def queue(self, digit: str, duration_ms: int = 100) -> None:
        if len(digit) != 1 or digit.upper() not in FREQUENCIES:
            raise RtpError(f"not a DTMF digit: {digit!r}")
        key_ticks(duration_ms)
        self._queue.append((digit, duration_ms))

    @property
    def busy(self) -> bool:
        return bool(self._frames) or bool(self._queue)

    def next_frame(self, elapsed: int = 1) -> bytes | None:
        """The frame to send on this tick instead of the agent's audio, or None when no key is going out.
        ``elapsed`` > 1 after the clock skipped ticks: the frames of those ticks are skipped too, so a key
        lasts what it was asked to on the wire's timeline (a skipped pause is still a pause)."""
        for _ in range(elapsed - 1):
            if not self._frames:
                break
            self._frames.popleft()
        if not self._frames:
            if not self._queue:
                return None
            digit, duration_ms = self._queue.popleft()
            whole = tone(digit, duration_ms)
            step = FRAME_SAMPLES * 2
            self._frames.extend(whole[i:i + step] for i in range(0, len(whole), step))
            self._frames.extend([SILENCE] * PAUSE_TICKS)
        return self._frames.popleft()


__all__ = ["FREQUENCIES", "MAX_TONE_MS", "MIN_TONE_MS", "PAUSE_TICKS", "ZERO_DBM0", "ToneSender", "key_ticks",
           "tone"]
