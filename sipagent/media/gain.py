"""Gain on the agent's 24 kHz PCM16 as it leaves: barge-in's duck turns the agent down frame by frame.

The playout queue holds PCM and encodes each frame only as it goes out (sipagent.media.pcm_playout), so a
duck works the same in every codec, the adaptive G.722 included. A change of gain ramps linearly over the
frame's first 5 ms: a step of 30 dB at a frame boundary would click.
"""

from __future__ import annotations

import numpy as np

RAMP_SAMPLES = 120  # 5 ms at 24 kHz


def scale_pcm(frame: bytes, start: float, end: float) -> bytes:
    """``frame`` (PCM16) at gain ``end``, ramped from ``start`` over its first RAMP_SAMPLES samples."""
    pcm = np.frombuffer(frame, dtype="<i2").astype(np.float32)
    if start == end:
        pcm *= end
    else:
        n = min(RAMP_SAMPLES, len(pcm))
        pcm[:n] *= np.linspace(start, end, n, endpoint=False, dtype=np.float32)
        pcm[n:] *= end
    return np.rint(pcm).astype("<i2").tobytes()  # |gain| <= 1: always in range


def duck_gain(duck_db: float) -> float:
    """The gain of a duck ``duck_db`` dB down."""
    return float(10.0 ** (-duck_db / 20.0))


__all__ = ["RAMP_SAMPLES", "duck_gain", "scale_pcm"]
