"""Local voice activity detection on inbound 20 ms frames, aware of the agent's own echo.

Energy-based on purpose: it runs on every inbound frame of every call, so it must cost microseconds, and
it only has to answer "is the caller talking over the agent?", not find word boundaries. Echo of the
agent's voice returning from the line is rejected by comparing the caller's level with the level the
agent was playing a moment ago: a hybrid or a speakerphone returns the agent attenuated (typically
15-30 dB), while a caller who talks over the agent is about as loud as the agent.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from sipagent.media.kernel import mean_square

SILENCE_DB = -96.0


def level_db(pcm: bytes) -> float:
    """RMS level of PCM16 little-endian audio in dBFS (full-scale sine ≈ -3 dBFS)."""
    ms = mean_square(pcm)  # in C: NumPy's per-call set-up costs more than a 20 ms frame's arithmetic
    if ms <= 1.0:
        return SILENCE_DB
    return 10.0 * math.log10(ms / (32768.0 * 32768.0))


@dataclass
class VadSettings:
    threshold_db: float = -35.0  # absolute floor: quieter than this is never speech
    min_speech_ms: int = 200  # the window speech is judged over (debounces clicks, coughs, "uh")
    speech_ratio: float = 0.5  # share of that window's frames that must be loud: speech has soft sounds too
    # The caller must be within this of the agent's loudest recent frame to be speech. Line echo returns
    # the agent 15-30 dB down (hybrids, speakerphones), so 15 dB keeps echo out while a caller talking
    # over the agent, a little quieter than it, still counts.
    echo_margin_db: float = 15.0
    echo_window_ms: int = 300  # how far back the agent's level is remembered (covers line echo delay)
    frame_ms: int = 20


class EchoAwareVad:
    """Decides, frame by frame, whether the caller is speaking (as opposed to echo or a short noise).

    Feed it the agent's outgoing frames' levels with :meth:`agent_frame` and the caller's frames with
    :meth:`caller_frame`; the latter returns True on the frame where speech has lasted ``min_speech_ms``.
    """

    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = settings or VadSettings()
        window = max(1, self.settings.echo_window_ms // self.settings.frame_ms)
        self._agent_levels: deque[float] = deque([SILENCE_DB] * window, maxlen=window)
        frames = max(1, self.settings.min_speech_ms // self.settings.frame_ms)
        self._votes: deque[bool] = deque([False] * frames, maxlen=frames)
        self._needed = max(1, math.ceil(frames * self.settings.speech_ratio))
        self._loud = 0
        self.speaking = False
        self.last_level_db = SILENCE_DB

    def agent_frame(self, level: float) -> None:
        """The level of the frame the agent just played (SILENCE_DB when it played silence)."""
        self._agent_levels.append(level)

    def threshold_db(self) -> float:
        agent = max(self._agent_levels)
        return max(self.settings.threshold_db, agent - self.settings.echo_margin_db)

    @property
    def agent_active(self) -> bool:
        """The agent was audible within the echo window: what we hear now may be its echo."""
        return max(self._agent_levels) > self.settings.threshold_db

    @property
    def echo_only(self) -> bool:
        """The last caller frame was below the echo threshold while the agent was audible."""
        return self.agent_active and self.last_level_db < self.threshold_db()

    def caller_frame(self, pcm: bytes) -> bool:
        """Returns True once, on the frame where enough of the last ``min_speech_ms`` was loud speech."""
        level = level_db(pcm)
        self.last_level_db = level
        loud = level >= self.threshold_db()
        self._loud += loud - self._votes[0]
        self._votes.append(loud)
        if self._loud == 0:
            self.speaking = False
        if not self.speaking and self._loud >= self._needed:
            self.speaking = True
            return True
        return False

    @property
    def recent_speech_ms(self) -> int:
        """Milliseconds of loud caller audio within the last ``min_speech_ms``."""
        return self._loud * self.settings.frame_ms
