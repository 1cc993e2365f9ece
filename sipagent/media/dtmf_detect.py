"""DTMF keys heard in the caller's audio (ITU-T Q.24), for a line that negotiated no RFC 4733 telephone-event.

A pure core, fed the 20 ms frames of 24 kHz PCM16 the uplink decodes anyway. Each frame's amplitude at the
eight keypad frequencies is one DFT term each at exactly that frequency (a 20 ms frame resolves 50 Hz; the
nearest other key's frequency, 73 Hz away, comes out 13 dB down). A frame holds a key when:
- one row and one column frequency each stand at least 8 dB above the others of their group;
- each is at least −30 dBm0, and they are within 8 dB of each other (twist);
- the two tones carry at least 85 % of the frame's power: speech, music and noise spread theirs, which is
  what keeps a voice from passing for a key (talk-off).
A key is reported once, when it ends, after two frames or more in a row (40 ms, Q.24's shortest key), with
the length it was heard for; a frame where it is missing ends it.
"""

from __future__ import annotations

import numpy as np

from sipagent.media.dtmf_tones import COLUMNS, FRAME_SAMPLES, KEYPAD, RATE, ROWS, ZERO_DBM0

_FREQUENCIES = np.array(ROWS + COLUMNS, dtype=np.float64)
# One DFT term per keypad frequency over a frame: amplitude = |basis @ frame| * 2 / N.
_BASIS = np.exp(-2j * np.pi * np.outer(_FREQUENCIES, np.arange(FRAME_SAMPLES)) / RATE) * (2 / FRAME_SAMPLES)
MIN_AMPLITUDE = ZERO_DBM0 * 10 ** (-30 / 20)
DOMINANCE = 10 ** (8 / 20)  # over the group's next frequency, in amplitude
MAX_TWIST = 10 ** (8 / 20)
MIN_SHARE = 0.85  # of the frame's power, in the two tones
MIN_FRAMES = 2


def frame_key(pcm: bytes, mean_square: float) -> str:
    """The key one 20 ms frame of 24 kHz PCM16 holds, or ""; ``mean_square`` is the frame's (the uplink's
    decoder gives it), so a quiet frame costs nothing more."""
    if mean_square < MIN_AMPLITUDE * MIN_AMPLITUDE or len(pcm) != FRAME_SAMPLES * 2:
        return ""
    amplitude = np.abs(_BASIS @ np.frombuffer(pcm, "<i2").astype(np.float64))
    rows, columns = amplitude[:4], amplitude[4:]
    r, c = int(np.argmax(rows)), int(np.argmax(columns))
    low, high = rows[r], columns[c]
    if min(low, high) < MIN_AMPLITUDE or max(low, high) > MAX_TWIST * min(low, high):
        return ""
    if np.partition(rows, 2)[2] * DOMINANCE > low or np.partition(columns, 2)[2] * DOMINANCE > high:
        return ""
    if (low * low + high * high) / 2 < MIN_SHARE * mean_square:
        return ""
    return KEYPAD[r][c]


class ToneDetector:
    """Frames in (``push``), each key out once as it ends: ``(key, duration_ms)``."""

    def __init__(self) -> None:
        self._key = ""
        self._frames = 0

    def push(self, pcm: bytes, mean_square: float) -> tuple[str, int] | None:
        key = frame_key(pcm, mean_square)
        if key and key == self._key:
            self._frames += 1
            return None
        ended = self._end()
        self._key, self._frames = key, 1 if key else 0
        return ended

    @property
    def in_key(self) -> bool:
        """The last frame pushed holds a key (not yet long enough, maybe, to be reported)."""
        return bool(self._key)

    def _end(self) -> tuple[str, int] | None:
        if self._key and self._frames >= MIN_FRAMES:
            return self._key, self._frames * 20
        return None


__all__ = ["ToneDetector", "frame_key"]
