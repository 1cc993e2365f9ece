"""Bookkeeping of one call's conversation with the model: what was said, what the caller actually heard.

Pure: no I/O, no clock of its own. The bridge feeds it server events and playout counts, and asks it
what to send on barge-in (truncate at the milliseconds heard, or delete an item nobody heard) and what to
replay into a new session after a reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HEARD_ITEMS = 8  # cut items whose heard share is kept, for a transcript that comes after the cut
CUT_MARK = "… [the caller cut in here and heard no more]"


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    item_id: str = ""  # the assistant item it is the transcript of


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
    heard: dict[str, float] = field(default_factory=dict)  # item id -> share the caller heard, of items cut

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

    def agent_said(self, text: str, item_id: str = "") -> None:
        """The model's transcript of an item; of one the caller cut off, only what the caller heard of it."""
        text = text.strip()
        if item_id in self.heard:
            text = heard_part(text, self.heard[item_id])
        if text:
            self.turns.append(Turn("assistant", text, item_id))

    def heard_only(self, item_id: str, heard_ms: int, queued_ms: int) -> None:
        """The caller cut ``item_id`` off after ``heard_ms`` of its ``queued_ms``: the conversation replayed
        into a new session must not tell the model it said the rest (the server forgets the rest as well,
        truncating the item). Its transcript may already be here, or come later."""
        share = heard_ms / queued_ms if queued_ms > 0 else 0.0
        if share >= 1.0:
            return
        self.heard[item_id] = share
        while len(self.heard) > HEARD_ITEMS:
            del self.heard[next(iter(self.heard))]
        for i in range(len(self.turns) - 1, max(-1, len(self.turns) - 1 - HEARD_ITEMS), -1):
            turn = self.turns[i]
            if turn.item_id == item_id:
                turn.text = heard_part(turn.text, share)
                if not turn.text:
                    del self.turns[i]
                return

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        for key in ("total_tokens", "input_tokens", "output_tokens"):
            value = (usage or {}).get(key)
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value

    def history_text(self, limit: int = 40) -> str:
        """The conversation so far, as context for a new session after a reconnect."""
        lines = [f"{'Caller' if t.role == 'user' else 'You'}: {t.text}" for t in self.turns[-limit:]]
        return "\n".join(lines)


def heard_part(text: str, share: float) -> str:
    """The first ``share`` of ``text``, to the end of the word it falls in, marked as cut off ("" for none).
    Speech takes about as long per character all through, so the share of the time is one of the text."""
    if share <= 0.0 or not text:
        return ""
    if share >= 1.0 or text.endswith(CUT_MARK):
        return text
    end = round(len(text) * share)
    space = text.find(" ", end)
    kept = (text if space < 0 else text[:space]).rstrip(" ,;:.")
    return f"{kept} {CUT_MARK}" if kept else ""

