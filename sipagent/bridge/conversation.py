"""Bookkeeping of one call's conversation with the model: what was said, what the caller actually heard.

Pure: no I/O, no clock of its own. The bridge feeds it server events and playout counts, and asks it
what to send on barge-in (truncate at the milliseconds heard, or delete an item nobody heard) and what to
replay into a new session after a reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str


@dataclass
class AgentItem:
    """An assistant audio item being played to the caller."""

    item_id: str
    start_ms: int  # playout position (ms of audio queued before this item) where it begins
    queued_ms: int = 0  # how much of it has been queued so far

    def heard_ms(self, played_ms: int) -> int:
        return max(0, min(self.queued_ms, played_ms - self.start_ms))


@dataclass
class Conversation:
    turns: list[Turn] = field(default_factory=list)
    queued_ms: int = 0  # total ms of agent audio ever queued for playout on this call
    current: AgentItem | None = None
    first: AgentItem | None = None  # the call's first agent item: the greeting, when there is one
    response_active: bool = False
    cut_item: str = ""  # the item the caller last interrupted: its deltas still in flight are not played
    usage: dict[str, int] = field(default_factory=dict)

    def agent_audio(self, item_id: str, ms: int) -> None:
        """``ms`` of audio of ``item_id`` were queued for playout."""
        if self.current is None or self.current.item_id != item_id:
            self.current = AgentItem(item_id, start_ms=self.queued_ms)
            if self.first is None:
                self.first = self.current
        self.current.queued_ms += ms
        self.queued_ms += ms

    def interrupted(self, played_ms: int) -> tuple[str, int] | None:
        """Barge-in: returns (item_id, ms the caller heard) of the item to truncate, and forgets it."""
        item, self.current = self.current, None
        if item is None:
            return None
        self.cut_item = item.item_id
        # Audio queued but never played is gone: the next item starts where playout really is.
        self.queued_ms = played_ms
        return item.item_id, item.heard_ms(played_ms)

    def caller_said(self, text: str) -> None:
        if text.strip():
            self.turns.append(Turn("user", text.strip()))

    def agent_said(self, text: str) -> None:
        if text.strip():
            self.turns.append(Turn("assistant", text.strip()))

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        for key in ("total_tokens", "input_tokens", "output_tokens"):
            value = (usage or {}).get(key)
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value

    def history_text(self, limit: int = 40) -> str:
        """The conversation so far, as context for a new session after a reconnect."""
        lines = [f"{'Caller' if t.role == 'user' else 'You'}: {t.text}" for t in self.turns[-limit:]]
        return "\n".join(lines)
