"""Energy voice activity detection with hangover, for the local backend's server VAD (pure).

Fed 24 kHz PCM16 in any chunk sizes; works on 10 ms blocks and reports positions in milliseconds of
audio fed so far (the Realtime ``audio_start_ms``/``audio_end_ms``), never wall-clock time. A turn
starts after ``min_speech_ms`` of loud blocks (short clicks do not count) and ends after ``silence_ms``
of quiet ones (the hangover keeps pauses between words inside one turn).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipagent.errors import ConfigError
from sipagent.media.kernel import mean_square

RATE = 24000
BLOCK_MS = 10
_BLOCK_BYTES = RATE * BLOCK_MS // 1000 * 2
MAX_MS = 10000  # the longest min_speech_ms, silence_ms or prefix_ms: a turn of speech is seconds long


@dataclass(frozen=True)
class VadConfig:
    threshold_db: float = -40.0
    min_speech_ms: int = 200
    silence_ms: int = 500
    prefix_ms: int = 300

    @classmethod
    def from_mapping(cls, data: Any) -> VadConfig:
        """``realtime.local.vad``; raises ConfigError naming the key, never TypeError or ValueError."""
        key = "realtime.local.vad"
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError("expected a mapping such as {threshold_db: -40, min_speech_ms: 200, silence_ms: 500}",
                              key=key)
        unknown = set(data) - {"threshold_db", "min_speech_ms", "silence_ms", "prefix_ms"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(map(str, unknown))} (expected threshold_db, min_speech_ms, "
                              "silence_ms, prefix_ms)", key=key)
        threshold = data.get("threshold_db", cls.threshold_db)
        # bool is an int to Python; NaN passes no comparison, so it is refused by the range test as written
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -120 <= threshold <= 0:
            raise ConfigError(f"expected a level in dBFS from -120 to 0, got {threshold!r}", key=f"{key}.threshold_db")
        values: dict[str, int] = {}
        for name in ("min_speech_ms", "silence_ms", "prefix_ms"):
            value = data.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MS:
                raise ConfigError(f"expected an integer from 0 to {MAX_MS} ms, got {value!r}", key=f"{key}.{name}")
            values[name] = value
        return cls(threshold_db=float(threshold), **values)


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_start_ms: int
    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


def block_db(block: bytes) -> float:
    """Level of one block in dBFS (-120 for digital silence)."""
    # The kernel's exact sum of squares in C: NumPy's set-up per call (frombuffer, astype, dot) cost five
    # times the arithmetic, for every 10 ms block of every call.
    power = mean_square(block) / (32768.0 * 32768.0)
    return 10.0 * math.log10(power) if power > 1e-12 else -120.0


def block_levels_db(data: bytes, blocks: int) -> list[float]:
    """``block_db`` of each of the first ``blocks`` whole blocks of ``data`` (an append carries two)."""
    return [block_db(data[i * _BLOCK_BYTES : (i + 1) * _BLOCK_BYTES]) for i in range(blocks)]


class EnergyVad:
    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        self._rest = b""
        self._pos_ms = 0  # audio fed so far, in whole blocks
        self._speaking = False
        self._onset_ms: int | None = None  # first loud block of a candidate or current turn
        self._loud_ms = 0  # loud audio inside the candidate
        self._last_loud_end_ms = 0

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def position_ms(self) -> int:
        return self._pos_ms

    def reset(self) -> None:
        """Forget any turn in progress (input buffer cleared); the audio position keeps counting."""
        self._speaking = False
        self._onset_ms = None
        self._loud_ms = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        data = self._rest + pcm
        whole = len(data) - len(data) % _BLOCK_BYTES
        self._rest = data[whole:]
        out: list[VadEvent] = []
        cfg = self.config
        for level in block_levels_db(data, whole // _BLOCK_BYTES):
            loud = level >= cfg.threshold_db
            begin = self._pos_ms
            self._pos_ms += BLOCK_MS
            if loud:
                self._last_loud_end_ms = self._pos_ms
                if self._onset_ms is None:
                    self._onset_ms = begin
                    self._loud_ms = 0
                self._loud_ms += BLOCK_MS
                if not self._speaking and self._loud_ms >= cfg.min_speech_ms:
                    self._speaking = True
                    out.append(SpeechStarted(max(0, self._onset_ms - cfg.prefix_ms)))
                continue
            quiet_ms = self._pos_ms - self._last_loud_end_ms
            if self._speaking and quiet_ms >= cfg.silence_ms:
                assert self._onset_ms is not None
                out.append(SpeechStopped(max(0, self._onset_ms - cfg.prefix_ms), self._last_loud_end_ms))
                self.reset()
            elif not self._speaking and self._onset_ms is not None and quiet_ms >= min(cfg.silence_ms, 200):
                # A short noise that never reached min_speech_ms: drop the candidate.
                self._onset_ms = None
                self._loud_ms = 0
        return out
