"""The state every part of one call's bridge reads, and the one place it changes.

States (logged on every change): answering → connecting → live ⇄ (agent speaking) → transferring /
ending → ended, and live ⇄ held while the far end holds the call. "Agent speaking" is not stored: it is
whether the playout queue holds audio. A hold outlasts what would make the call live again (a tool, a
failed transfer): ``set("live")`` on a held call leaves it held.
"""

from __future__ import annotations

import asyncio
import logging
import time


class CallState:
    def __init__(self, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.log = log
        self.name = "answering"
        self.held = False
        self.held_since = 0.0
        self.closing: str | None = None  # the outcome of a goodbye under way (nothing else starts then)
        self.outcome = "remote-hangup"
        self.done = asyncio.Event()  # the call is over (its outcome stands); set once more by the cleanup
        # The caller's last sound, key or the end of the agent's reply: the idle timer counts from here.
        self.last_activity = time.monotonic()

    @property
    def live(self) -> bool:
        return self.name == "live"

    def set(self, name: str) -> None:
        if name == "live" and self.held:
            name = "held"
        if name != self.name:
            self.log.info("state %s -> %s", self.name, name)
            self.name = name

    def finish(self, outcome: str) -> None:
        """The call is over with ``outcome``; the first outcome stands."""
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()

    def active(self, now: float | None = None) -> None:
        """Something happened that a silent caller would not do: the idle timer starts over."""
        self.last_activity = time.monotonic() if now is None else now


__all__ = ["CallState"]
