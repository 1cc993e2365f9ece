"""Barge-in policy: when the caller talks over the agent, decide whether to cut the agent off.

A plain object, no I/O: the bridge tells it what happens (agent audio played, caller speech detected
locally, the server's ``speech_started``) with the current time, and it answers with a decision. The
bridge then performs it (flush playout, truncate the item, cancel the response).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Trigger(Enum):
    LOCAL_VAD = "local-vad"
    SERVER_VAD = "server-vad"


@dataclass(frozen=True)
class BargeIn:
    """A decision to interrupt the agent."""

    trigger: Trigger
    at: float


class BargeInPolicy:
    """Modes: ``local`` (our echo-aware VAD interrupts at once), ``server`` (the server's speech_started
    interrupts, unless our VAD heard nothing louder than echo: then it was the agent's own voice coming
    back), ``off`` (the agent is never interrupted; the server may still cancel on its own).
    """

    def __init__(self, mode: str, protect_greeting_ms: int, confirm_window_ms: int = 400) -> None:
        if mode not in ("local", "server", "off"):
            raise ValueError(f"unknown barge-in mode {mode!r}")
        self.mode = mode
        self.protect_greeting_s = protect_greeting_ms / 1000.0
        self.confirm_window_s = confirm_window_ms / 1000.0
        self._greeting_started: float | None = None
        self._last_local_speech: float | None = None
        self.ignored_as_echo = 0

    def greeting_started(self, now: float) -> None:
        self._greeting_started = now

    def _protected(self, now: float) -> bool:
        return self._greeting_started is not None and now - self._greeting_started < self.protect_greeting_s

    def greeting_finished(self) -> None:
        self._greeting_started = None

    def local_speech(self, now: float, agent_playing: bool) -> BargeIn | None:
        """Our VAD says the caller has been speaking for min_speech_ms (already echo-filtered)."""
        self._last_local_speech = now
        if self.mode == "local" and agent_playing and not self._protected(now):
            return BargeIn(Trigger.LOCAL_VAD, now)
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
        return BargeIn(Trigger.SERVER_VAD, now)
