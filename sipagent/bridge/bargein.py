"""Barge-in policy: when the caller talks over the agent, decide whether to cut the agent off.

A plain object, no I/O: the bridge tells it what happens (each caller frame's echo-aware VAD result, the
server's ``speech_started``) with the current time, and it answers with a decision the bridge performs.

Two stages, so that the caller hears the agent stop within tens of milliseconds without the model being
told about every cough. The first stage is a duck (``stage1="duck"``: the agent's audio goes on, turned
down, so a cough costs only the frames it overlapped) or a pause (``stage1="pause"``: the queue is held and
the agent is silent until it resumes):

    listening --onset (pause_after_ms of loud frames)--> ducked      : Duck   (playout turned down, goes on)
    ducked    --speech confirmed (local or server VAD)--> listening  : BargeIn (flush, truncate, cancel)
    ducked    --caller quiet (unduck_after_ms, longer -->  listening : Unduck (full level again)
                after a longer loud run, resume_after_ms at most)
    listening --onset (stage1 "pause")------------------> paused     : Pause  (playout holds its queue)
    paused    --speech confirmed------------------------> listening  : BargeIn
    paused    --caller quiet for resume_after_ms-------->  listening : Resume (playout goes on, nothing lost)
    listening --speech confirmed (no first stage)------->  listening : BargeIn

The onset is counted on the VAD's ``onset_ms`` (echo margin learned from the line), confirmation on its
speech decision (the fixed echo margin).

Nothing happens while the agent is silent, during the protected start of the greeting, or in mode ``off``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Trigger(Enum):
    LOCAL_VAD = "local-vad"
    SERVER_VAD = "server-vad"
    DTMF = "dtmf"  # a key pressed during a collect_digits prompt (the bridge decides that one itself)


@dataclass(frozen=True)
class BargeIn:
    """A decision to interrupt the agent. ``paused_at``: when its audio was already paused or ducked at the
    onset (the first stage)."""

    trigger: Trigger
    at: float
    paused_at: float | None = None


@dataclass(frozen=True)
class Pause:
    """Stop the agent's audio on the wire now, keeping it queued; the model is not told."""

    at: float


@dataclass(frozen=True)
class Resume:
    """The pause was not confirmed as speech (a cough, "uh-huh", a door): play on from where it stopped."""

    at: float
    paused_s: float  # how long the caller heard the agent silent


@dataclass(frozen=True)
class Duck:
    """Turn the agent's audio down on the wire now; it plays on (nothing is held), the model is not told."""

    at: float


@dataclass(frozen=True)
class Unduck:
    """The duck was not confirmed as speech (a cough, a knock): full level again."""

    at: float
    ducked_s: float  # how long the caller heard the agent turned down


Decision = BargeIn | Pause | Resume | Duck | Unduck
STAGE1 = ("duck", "pause")


class BargeInPolicy:
    """Modes: ``local`` (our echo-aware VAD confirms speech), ``server`` (the server's speech_started confirms
    it, unless our VAD heard nothing louder than echo: then it was the agent's own voice coming back),
    ``off`` (the agent is never interrupted; the server may still cancel on its own).

    ``pause_after_ms`` of consecutive loud caller frames (the onset) starts the first stage in ``local`` and
    ``server`` mode (0: no first stage, the agent plays on until speech is confirmed): ``stage1`` says
    whether it ducks or pauses the agent. A duck ends once the caller has been quiet for ``unduck_after_ms``
    after a burst (no more than ``burst_ms`` of loud audio since the onset: a cough, a knock), or for
    ``resume_after_ms`` after a longer loud run: the gaps between a caller's words do not bring the agent
    back to full level mid-sentence before the speech is confirmed.
    """

    def __init__(self, mode: str, protect_greeting_ms: int, confirm_window_ms: int = 400,
                 pause_after_ms: int = 0, resume_after_ms: int = 300, stage1: str = "pause",
                 unduck_after_ms: int = 40, burst_ms: int = 80, frame_ms: int = 20) -> None:
        if mode not in ("local", "server", "off"):
            raise ValueError(f"unknown barge-in mode {mode!r}")
        if stage1 not in STAGE1:
            raise ValueError(f"unknown barge-in first stage {stage1!r}")
        if pause_after_ms < 0 or resume_after_ms <= 0 or unduck_after_ms <= 0:
            raise ValueError("pause_after_ms must be >= 0, resume_after_ms and unduck_after_ms > 0")
        self.mode = mode
        self.protect_greeting_s = protect_greeting_ms / 1000.0
        self.confirm_window_s = confirm_window_ms / 1000.0
        self.pause_after_ms = pause_after_ms
        self.resume_after_s = resume_after_ms / 1000.0
        self.stage1 = stage1
        self.unduck_after_s = unduck_after_ms / 1000.0
        self.burst_s = burst_ms / 1000.0
        self.frame_s = frame_ms / 1000.0
        self._greeting_started: float | None = None
        self._last_local_speech: float | None = None
        self._paused_at: float | None = None  # the first stage's start (a pause or a duck)
        self._last_loud = 0.0
        self._last_faint = 0.0
        self._loud_s = 0.0  # loud caller audio since the first stage began
        self.ignored_as_echo = 0
        self.pauses = 0
        self.resumes = 0  # pauses that were not confirmed: false alarms the caller heard as a gap
        self.ducks = 0
        self.unducks = 0  # ducks that were not confirmed: false alarms the caller heard turned down

    @property
    def paused(self) -> bool:
        """The first stage is on (the agent is paused, or ducked)."""
        return self._paused_at is not None

    @property
    def false_alarms(self) -> int:
        """First stages that ended unconfirmed (resumed pauses and ended ducks)."""
        return self.resumes + self.unducks

    def greeting_started(self, now: float) -> None:
        self._greeting_started = now

    def _protected(self, now: float) -> bool:
        return self._greeting_started is not None and now - self._greeting_started < self.protect_greeting_s

    def greeting_finished(self) -> None:
        self._greeting_started = None

    def flushed(self) -> None:
        """The agent's queued audio was dropped for another reason (reconnect, shutdown): a pause is over."""
        self._paused_at = None

    def caller_frame(self, now: float, loud_ms: int, speech: bool, agent_playing: bool,
                     faint: bool = False) -> Decision | None:
        """One caller frame: ``loud_ms`` its VAD's current run of loud (above echo) audio (the onset run),
        ``speech`` True on the frame the VAD confirms speech (min_speech_ms). ``agent_playing``: agent audio
        is queued. ``faint``: not loud, but not quiet either (soft speech between syllables): a duck on a
        burst ends only after ``unduck_after_ms`` of frames neither loud nor faint."""
        if speech:
            self._last_local_speech = now
        if self.mode == "off":
            return None
        paused_at = self._paused_at
        if paused_at is not None:
            if not agent_playing and self.stage1 == "pause":
                self._paused_at = None  # nothing left to resume
                return None
            # A duck goes on while the queue runs dry for a moment (the model's audio comes in real time): the
            # next audio comes turned down while the caller talks, and up again once the caller is quiet.
            if speech and self.mode == "local":
                return self._confirm(Trigger.LOCAL_VAD, now)
            if loud_ms:
                self._last_loud = now
                self._loud_s += self.frame_s
                return None
            quiet_s = now - self._last_loud
            if self.stage1 == "duck":
                if faint:
                    self._last_faint = now
                if self._loud_s <= self.burst_s + 1e-9:
                    hold, quiet_s = self.unduck_after_s, now - max(self._last_loud, self._last_faint)
                else:
                    hold = self.resume_after_s
                if quiet_s > hold - self.frame_s / 2:  # frames come every frame_s, give or take jitter
                    self._paused_at = None
                    self.unducks += 1
                    return Unduck(now, now - paused_at)
            elif quiet_s >= self.resume_after_s:
                self._paused_at = None
                self.resumes += 1
                return Resume(now, now - paused_at)
            return None
        if not agent_playing or self._protected(now):
            return None
        if speech and self.mode == "local":
            return BargeIn(Trigger.LOCAL_VAD, now)
        if self.pause_after_ms and loud_ms >= self.pause_after_ms:
            self._paused_at = self._last_loud = now
            self._loud_s = loud_ms / 1000.0
            if self.stage1 == "duck":
                self.ducks += 1
                return Duck(now)
            self.pauses += 1
            return Pause(now)
        return None

    def server_speech_started(self, now: float, agent_playing: bool, caller_speaking: bool) -> BargeIn | None:
        """The server heard speech. ``caller_speaking``: our VAD currently hears more than echo."""
        if self.mode == "off" or not agent_playing or self._protected(now):
            return None
        recent = self._last_local_speech is not None and now - self._last_local_speech <= self.confirm_window_s
        if not (caller_speaking or recent):
            # The server cannot tell the agent's echo from the caller; our VAD, which knows what we play,
            # heard only echo. Interrupting now would cut the agent off at its own voice.
            self.ignored_as_echo += 1
            return None
        return self._confirm(Trigger.SERVER_VAD, now)

    def _confirm(self, trigger: Trigger, now: float) -> BargeIn:
        paused_at, self._paused_at = self._paused_at, None
        return BargeIn(trigger, now, paused_at)
