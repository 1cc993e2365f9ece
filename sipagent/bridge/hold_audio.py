"""What a caller on hold hears during a warm transfer: a soft tone pattern, silence, or a WAV file in a loop.

All of it as 24 kHz PCM16 (what the bridge encodes for the call's codec), made once per transfer.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

from sipagent.media.kernel import Resampler

RATE = 24000
MAX_WAV_S = 300  # a longer file is refused at load: it would be held in memory for every warm transfer
WAV_RATES = (8000, 16000, 24000)


def tone_pattern(seconds: float = 4.0, beep_s: float = 0.4, hz: float = 440.0, level: float = 0.12) -> bytes:
    """A beep of ``beep_s`` at the start of each ``seconds``: enough to tell a caller the line is alive."""
    total = int(seconds * RATE)
    beep = int(beep_s * RATE)
    ramp = int(0.02 * RATE)  # no clicks: 20 ms fade in and out
    samples = []
    for i in range(total):
        if i < beep:
            fade = min(1.0, i / ramp, (beep - i) / ramp)
            samples.append(int(32767 * level * fade * math.sin(2 * math.pi * hz * i / RATE)))
        else:
            samples.append(0)
    return struct.pack(f"<{total}h", *samples)


def silence(seconds: float = 1.0) -> bytes:
    return bytes(2 * int(seconds * RATE))


def load_hold_wav(path: Path) -> bytes:
    """A WAV file (PCM16 mono at 8, 16 or 24 kHz) as 24 kHz PCM16. Raises ValueError with what is wrong,
    OSError when it cannot be read."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate, frames = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
            if channels != 1 or width != 2 or rate not in WAV_RATES:
                raise ValueError(f"{path}: expected 16-bit mono PCM at 8, 16 or 24 kHz, got {channels} channel(s), "
                                 f"{8 * width}-bit, {rate} Hz")
            if frames > MAX_WAV_S * rate:
                raise ValueError(f"{path}: longer than {MAX_WAV_S} s")
            if frames < rate // 10:
                raise ValueError(f"{path}: shorter than 0.1 s")
            pcm = wav.readframes(frames)
    # EOFError, struct.error: a header cut short; RuntimeError: wave's seek past a chunk's declared size
    except (wave.Error, EOFError, struct.error, RuntimeError) as exc:
        raise ValueError(f"{path}: not a WAV file ({str(exc) or 'cut short'})") from None
    if rate == RATE:
        return pcm
    return Resampler(rate, RATE).process(pcm)


def hold_audio(setting: str) -> bytes:
    """The loop the caller hears for ``transfer.hold_audio`` ("tone", "silence" or a WAV path checked at load)."""
    if setting == "tone":
        return tone_pattern()
    if setting == "silence":
        return silence()
    try:
        return load_hold_wav(Path(setting))
    except (OSError, ValueError):  # gone since the configuration was loaded: a tone is better than nothing
        return tone_pattern()


__all__ = ["hold_audio", "load_hold_wav", "silence", "tone_pattern"]
