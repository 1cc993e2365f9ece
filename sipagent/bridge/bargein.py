"""Barge-in policy: when the caller talks over the agent, decide whether to cut the agent off.

A plain object, no I/O: the bridge tells it what happens (each caller frame's echo-aware VAD result, the
server's ``speech_started``) with the current time, and it answers with a decision the bridge performs.

Two stages, so that the caller hears the agent stop within tens of milliseconds without the model being
told about every cough:

    listening --onset (pause_after_ms of loud frames)--> paused      : Pause  (playout holds its queue)
    paused    --speech confirmed (local or server VAD)--> listening  : BargeIn (flush, truncate, cancel)
    paused    --caller quiet for resume_after_ms-------->  listening : Resume (playout goes on, nothing lost)
    listening --speech confirmed (no pause stage)------->  listening : BargeIn

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
    """A decision to interrupt the agent. ``paused_at``: when its audio was already paused at the onset."""

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


Decision = BargeIn | Pause | Resume


class BargeInPolicy:
    """Modes: ``local`` (our echo-aware VAD confirms speech), ``server`` (the server's speech_started confirms
    it, unless our VAD heard nothing louder than echo: then it was the agent's own voice coming back),
    ``off`` (the agent is never interrupted; the server may still cancel on its own).

    ``pause_after_ms`` of consecutive loud caller frames pauses the agent in ``local`` and ``server`` mode
    (0: no pause stage, the agent plays on until speech is confirmed).
    """

    def __init__(self, mode: str, protect_greeting_ms: int, confirm_window_ms: int = 400,
                 pause_after_ms: int = 0, resume_after_ms: int = 300) -> None:
        if mode not in ("local", "server", "off"):
            raise ValueError(f"unknown barge-in mode {mode!r}")
        if pause_after_ms < 0 or resume_after_ms <= 0:
            raise ValueError("pause_after_ms must be >= 0 and resume_after_ms > 0")
        self.mode = mode
        self.protect_greeting_s = protect_greeting_ms / 1000.0
        self.confirm_window_s = confirm_window_ms / 1000.0
        self.pause_after_ms = pause_after_ms
        self.resume_after_s = resume_after_ms / 1000.0
        self._greeting_started: float | None = None
        self._last_local_speech: float | None = None
        self._paused_at: float | None = None
        self._last_loud = 0.0
        self.ignored_as_echo = 0
        self.pauses = 0
        self.resumes = 0  # pauses that were not confirmed: false alarms the caller heard as a gap

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def greeting_started(self, now: float) -> None:
        self._greeting_started = now

    def _protected(self, now: float) -> bool:
        return self._greeting_started is not None and now - self._greeting_started < self.protect_greeting_s

    def greeting_finished(self) -> None:
        self._greeting_started = None

    def flushed(self) -> None:
        """The agent's queued audio was dropped for another reason (reconnect, shutdown): a pause is over."""
        self._paused_at = None

    def caller_frame(self, now: float, loud_ms: int, speech: bool, agent_playing: bool) -> Decision | None:
        """One caller frame: ``loud_ms`` its VAD's current run of loud (above echo) audio, ``speech`` True on
        the frame the VAD confirms speech (min_speech_ms). ``agent_playing``: agent audio is queued."""
        if speech:
            self._last_local_speech = now
        if self.mode == "off":
            return None
        paused_at = self._paused_at
        if paused_at is not None:
            if not agent_playing:
                self._paused_at = None  # nothing left to resume
                return None
            if speech and self.mode == "local":
                return self._confirm(Trigger.LOCAL_VAD, now)
            if loud_ms:
                self._last_loud = now
            elif now - self._last_loud >= self.resume_after_s:
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
