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
FAINT_DB = 15.0
_FULL_SCALE_MS = 32768.0 * 32768.0  # the mean square of a full-scale square wave: 0 dBFS


def level_db(pcm: bytes) -> float:
    """RMS level of PCM16 little-endian audio in dBFS (full-scale sine ≈ -3 dBFS)."""
    return mean_square_db(mean_square(pcm))  # in C: NumPy's set-up costs more than a frame's arithmetic


def mean_square_db(ms: float) -> float:
    """The level in dBFS of PCM16 audio whose mean square is ``ms`` (the kernel's FrameDecoder gives it)."""
    if ms <= 1.0:
        return SILENCE_DB
    return 10.0 * math.log10(ms / _FULL_SCALE_MS)


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
    # The onset (barge-in's reversible first stage) may use a lower threshold than echo_margin_db on a line
    # whose echo has been measured to be quieter: the echo return loss (ERL) is learned from the caller's
    # frames while the agent plays and the caller is quiet: at once when echo gets louder (attack), by at
    # most onset_erl_rise_db per frame when it gets quieter, and only on frames where the agent was audible
    # over the whole echo window; the onset margin stays onset_safety_db inside it. A line with no echo
    # lets the onset fall to threshold_db within about a second of the agent talking; -20 dB echo keeps 15.
    onset_safety_db: float = 6.0
    onset_erl_rise_db: float = 1.0
    onset_erl_max_db: float = 60.0


class EchoAwareVad:
    """Decides, frame by frame, whether the caller is speaking (as opposed to echo or a short noise).

    Feed it the agent's outgoing frames' levels with :meth:`agent_frame` and the caller's frames with
    :meth:`caller_frame`; the latter returns True on the frame where speech has lasted ``min_speech_ms``.
    ``loud_ms`` is the run of consecutive loud frames up to the last one, with the echo margin speech is
    confirmed with. ``onset_ms`` is the same run against the onset threshold (:meth:`onset_threshold_db`),
    which follows the echo actually measured on the line: the speech *onset*, known tens of milliseconds
    before speech is confirmed (barge-in ducks or pauses the agent on it).
    The threshold follows from ``settings`` whenever the agent's window changes (in :meth:`agent_frame`).
    """

    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = settings or VadSettings()
        window = max(1, self.settings.echo_window_ms // self.settings.frame_ms)
        self._agent_levels: deque[float] = deque([SILENCE_DB] * window, maxlen=window)
        # The loudest level in the window and what follows from it, kept up to date by agent_frame: every
        # caller frame reads them (two or three times), the window changes once per agent frame.
        self._agent_max = SILENCE_DB
        self._threshold = SILENCE_DB
        self._onset_threshold = SILENCE_DB
        self._agent_active = False
        # The echo return loss measured so far: starts at the echo margin (nothing learned: as loud as echo
        # is assumed to get), the smallest gap between the agent's recent peak and the caller's frames.
        self.erl_db = self.settings.echo_margin_db
        self._agent_changed()
        frames = max(1, self.settings.min_speech_ms // self.settings.frame_ms)
        self._votes: deque[bool] = deque([False] * frames, maxlen=frames)
        self._needed = max(1, math.ceil(frames * self.settings.speech_ratio))
        self._loud = 0
        self.loud_ms = 0
        self.onset_ms = 0
        self._run_gap = math.inf  # the smallest gap within the current onset run
        self.speaking = False
        self.last_level_db = SILENCE_DB

    def agent_frame(self, level: float) -> None:
        """The level of the frame the agent just played (SILENCE_DB when it played silence)."""
        levels = self._agent_levels
        oldest = levels[0]  # the window is always full: this one leaves it now
        levels.append(level)
        if level > self._agent_max:
            self._agent_max = level
        elif level < self._agent_max <= oldest:  # the loudest frame left the window, none as loud came
            self._agent_max = max(levels)
        else:
            return  # the loudest level is the same (silence after silence, most of the time)
        self._agent_changed()

    def _agent_changed(self) -> None:
        settings = self.settings
        self._threshold = max(settings.threshold_db, self._agent_max - settings.echo_margin_db)
        self._agent_active = self._agent_max > settings.threshold_db
        self._onset_changed()

    def _onset_changed(self) -> None:
        settings = self.settings
        margin = max(settings.echo_margin_db, self.erl_db - settings.onset_safety_db)
        self._onset_threshold = max(settings.threshold_db, self._agent_max - margin)

    def threshold_db(self) -> float:
        """The level a caller frame needs to count as loud: the floor, or the agent's echo margin."""
        return self._threshold

    def onset_threshold_db(self) -> float:
        """The level a caller frame needs to count towards an onset: never above :meth:`threshold_db`, lower
        by what the measured echo return loss allows beyond the echo margin."""
        return self._onset_threshold

    @property
    def agent_active(self) -> bool:
        """The agent was audible within the echo window: what we hear now may be its echo."""
        return self._agent_active

    @property
    def faint(self) -> bool:
        """The last caller frame was under the onset threshold by less than FAINT_DB: soft sound (a
        consonant, the gap between two syllables), not the quiet after a cough."""
        return self.last_level_db >= self._onset_threshold - FAINT_DB

    @property
    def echo_only(self) -> bool:
        """The last caller frame was below the echo threshold while the agent was audible."""
        return self._agent_active and self.last_level_db < self._threshold

    def caller_frame(self, pcm: bytes) -> bool:
        """Returns True once, on the frame where enough of the last ``min_speech_ms`` was loud speech."""
        return self.caller_mean_square(mean_square(pcm))

    def caller_mean_square(self, ms: float) -> bool:
        """:meth:`caller_frame` for a frame whose PCM16 mean square is already known (FrameDecoder)."""
        level = SILENCE_DB if ms <= 1.0 else 10.0 * math.log10(ms / _FULL_SCALE_MS)  # mean_square_db, inlined
        self.last_level_db = level
        loud = level >= self._threshold
        settings = self.settings
        self.loud_ms = self.loud_ms + settings.frame_ms if loud else 0
        if level >= self._onset_threshold:
            self.onset_ms += settings.frame_ms
            gap = self._agent_max - level  # the caller, or echo louder than learned: known at the run's end
            if gap < self._run_gap:
                self._run_gap = gap
        elif self.onset_ms or (self._agent_active and (self.erl_db < settings.onset_erl_max_db
                                                       or self._agent_max - level < self.erl_db)):
            self._quiet_frame(level)
        self._loud += loud - self._votes[0]
        self._votes.append(loud)
        if self._loud == 0:
            self.speaking = False
        if not self.speaking and self._loud >= self._needed:
            self.speaking = True
            return True
        return False

    def caller_gap(self) -> None:
        """A frame the caller's stream did not bring (the jitter buffer's concealment): quiet, as silence is,
        but no evidence of the echo's level. Taken as silence while the agent talks it would teach a return
        loss the line does not have (a decibel a frame), and the first echo after the gap would pass for the
        caller's voice."""
        self.last_level_db = SILENCE_DB
        self.loud_ms = 0
        if self.onset_ms:
            self._end_onset_run(self.erl_db)
        self._loud -= self._votes[0]
        self._votes.append(False)
        if self._loud == 0:
            self.speaking = False

    def _end_onset_run(self, erl: float) -> float:
        """The onset run ended: the return loss that leaves (``erl``, or less), set."""
        # If the run never reached the fixed echo margin and was not confirmed as speech, it may have been echo
        # after all (a speakerphone came on): the onset gets no more sensitive than that.
        if self._run_gap >= self.settings.echo_margin_db and not self.speaking:
            erl = min(erl, self._run_gap)
        self.onset_ms = 0
        self._run_gap = math.inf
        if erl != self.erl_db:
            self.erl_db = erl
            self._onset_changed()
        return erl

    def _quiet_frame(self, level: float) -> None:
        """A caller frame under the onset threshold: the end of an onset run, and what it says of the echo
        return loss while the agent is audible."""
        settings = self.settings
        erl = self.erl_db
        if self.onset_ms:
            erl = self._end_onset_run(erl)
        if self._agent_active and not self._loud and not self.speaking:
            # Not the caller's own voice (nor its quiet tails): what the line returns of the agent.
            gap = self._agent_max - level
            if gap < erl:
                erl = max(settings.echo_margin_db, gap)  # echo got louder (or so it seems): follow at once
            elif erl < settings.onset_erl_max_db:
                # Quieter than the echo learned so far. That proves something only if the agent was audible
                # over the whole window (so at every echo delay): then the echo is at least agent_min - level
                # down.
                agent_min = min(self._agent_levels)
                if agent_min > settings.threshold_db:
                    erl = min(settings.onset_erl_max_db, erl + settings.onset_erl_rise_db, max(erl, agent_min - level))
        if erl != self.erl_db:
            self.erl_db = erl
            self._onset_changed()

    @property
    def recent_speech_ms(self) -> int:
        """Milliseconds of loud caller audio within the last ``min_speech_ms``."""
        return self._loud * self.settings.frame_ms
