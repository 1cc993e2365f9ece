"""Gain on encoded phone audio: barge-in's duck turns the agent down frame by frame as frames leave.

G.711 is stateless, so a frame is decoded, scaled and encoded again on its own, with a short linear ramp at
its start when the gain changes (a step of 30 dB at a frame boundary would click). G.722 is adaptive: a
frame re-encoded by another encoder would leave the far end's decoder out of step with ours, so it has no
shaper and a ducked G.722 frame is sent as silence (as a pause does).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sipagent.media.kernel import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from sipagent.media.playout import Shaper

RAMP_SAMPLES = 40  # 5 ms at 8 kHz


def _shaper(decode: Callable[[bytes], bytes], encode: Callable[[bytes], bytes]) -> Shaper:
    def shape(frame: bytes, start: float, end: float) -> bytes:
        pcm = np.frombuffer(decode(frame), dtype="<i2").astype(np.float32)
        if start == end:
            pcm *= end
        else:
            n = min(RAMP_SAMPLES, len(pcm))
            pcm[:n] *= np.linspace(start, end, n, endpoint=False, dtype=np.float32)
            pcm[n:] *= end
        return encode(pcm.astype("<i2").tobytes())

    return shape


_SHAPERS: dict[str, Shaper] = {"PCMU": _shaper(ulaw_decode, ulaw_encode), "PCMA": _shaper(alaw_decode, alaw_encode)}


def gain_shaper(codec: str) -> Shaper | None:
    """The shaper for frames of ``codec``; None when a ducked frame can only be sent as silence."""
    return _SHAPERS.get(codec)


def duck_gain(duck_db: float) -> float:
    """The gain of a duck ``duck_db`` dB down."""
    return float(10.0 ** (-duck_db / 20.0))
