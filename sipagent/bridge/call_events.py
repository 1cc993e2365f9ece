"""Call events for an outside system (``events.webhook``): what they say, how they are signed, when a
failed delivery is tried again. No I/O here: times come in as arguments, so every rule is tested with a
fake clock; ``sipagent.bridge.event_sender`` is the asyncio shell that posts them.

An event is one JSON object, the same shape for every type::

    {"version": 1, "type": "call.ended", "id": "evt_…", "timestamp": "2026-12-05T06:00:00.123Z",
     "call_id": "<SIP Call-ID>", "sequence": 3, "data": {…}}

``id`` is unique per event (and stays the same on every retry, so a receiver de-duplicates on it);
``sequence`` counts the events of one call from 1, because retries may deliver them out of order.

Signature (the scheme Stripe and Slack use, so receivers have code for it): each attempt sends
``X-Sipagent-Timestamp: <unix seconds>`` and ``X-Sipagent-Signature: sha256=<hex>``, the HMAC-SHA256
with the secret of ``"<timestamp>." + body`` (the exact body bytes). The timestamp is inside the signed
material, so a receiver that refuses old timestamps refuses replays; it is taken again at each attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sipagent.bridge.settings import CALL_EVENT_TYPES

SCHEMA_VERSION = 1
SIGNATURE_HEADER = "X-Sipagent-Signature"
TIMESTAMP_HEADER = "X-Sipagent-Timestamp"
EVENT_HEADER = "X-Sipagent-Event"
EVENT_ID_HEADER = "X-Sipagent-Event-Id"
# Ours to write: a configured header of one of these names would let the file forge or hide a signature.
EVENT_HEADERS = frozenset(h.lower() for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, EVENT_HEADER, EVENT_ID_HEADER))
REPLAY_TOLERANCE_S = 300  # what the docs tell receivers to accept; ``verify`` defaults to it
MAX_BACKOFF_S = 60.0  # a retry is never scheduled further out than this (Retry-After included)

# What the caller's context may hold: values from the wire (SIP headers) are untrusted, so each is cut to
# a length and the whole to a number of keys; JSON encoding escapes the rest.
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_KEY = 64
MAX_CONTEXT_VALUE = 256
MAX_TOOL_CALLS = 100  # a call.ended lists at most this many tool calls (and says how many there were)

EventType = Literal["call.started", "call.transferred", "call.ended"]
Direction = Literal["inbound", "outbound"]
Verdict = Literal["delivered", "retry", "rejected"]


@dataclass(frozen=True)
class CallEvent:
    type: str
    id: str
    timestamp: str  # ISO 8601, UTC, milliseconds
    call_id: str
    sequence: int
    data: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, "type": self.type, "id": self.id, "timestamp": self.timestamp,
                "call_id": self.call_id, "sequence": self.sequence, "data": self.data}

    def body(self) -> bytes:
        """The exact bytes posted and signed (the same on every attempt)."""
        return json.dumps(self.envelope(), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class ToolUse:
    """One tool call the model made during the call, and whether it succeeded."""

    name: str
    ok: bool


@dataclass(frozen=True)
class CallSummary:
    """What ``call.ended`` reports, gathered by the agent from the bridge's outcome."""

    outcome: str
    duration_s: float
    tools: list[ToolUse] = field(default_factory=list)
    transfer_target: str = ""  # the name the model chose ("default" for the default desk)
    transfer_uri: str = ""
    usage: Mapping[str, int] = field(default_factory=dict)
    transcript_path: str | None = None
    recording_path: str | None = None
    media: Mapping[str, int | float | None] = field(default_factory=dict)  # RtpEndpoint's figures (summary)
    # Outbound calls: the answering-machine verdict (human, machine, unknown; "" when not detected) and
    # whether the profile's message was left. ``outcome`` is then the outbound outcome (busy, machine…).
    answering_machine: str = ""
    message_left: bool = False


def iso_timestamp(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clean_context(context: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """The caller's context as JSON-safe data of bounded size: strings cut, keys counted, nesting one level
    deep (e.g. ``headers``), anything else as its text."""
    out: dict[str, Any] = {}
    for key, value in list(context.items())[:MAX_CONTEXT_KEYS]:
        name = str(key)[:MAX_CONTEXT_KEY]
        if isinstance(value, Mapping) and depth == 0:
            out[name] = clean_context(value, depth + 1)
        elif value is None or isinstance(value, bool | int):
            out[name] = value
        elif isinstance(value, float):
            out[name] = value if math.isfinite(value) else None
        else:
            out[name] = str(value)[:MAX_CONTEXT_VALUE]
    return out


class CallEvents:
    """The events of one call, in order: ids and sequence numbers, the context and profile in every one.

    ``context`` (the call's CallContext as webhooks get it, with the From and To URIs and the address the
    INVITE came from) and ``profile`` are given once per call. ``new_id`` makes event ids (random in
    production, fixed in tests). Every event says the call's ``direction``; an outbound call's events also
    carry ``outbound_id``, the id the control API gave it, so a receiver can match them to its request."""

    def __init__(self, call_id: str, context: Mapping[str, Any], profile: str,
                 new_id: Callable[[], str], direction: Direction = "inbound", outbound_id: str = "") -> None:
        self.call_id = call_id
        self.context = clean_context(context)
        self.profile = profile
        self.direction = direction
        self.outbound_id = outbound_id
        self._new_id = new_id
        self._sequence = 0

    def _event(self, kind: EventType, wall: float, data: dict[str, Any]) -> CallEvent:
        self._sequence += 1
        head: dict[str, Any] = {"profile": self.profile, "direction": self.direction, "context": self.context}
        if self.direction == "outbound":
            head["outbound_id"] = self.outbound_id
        return CallEvent(kind, f"evt_{self._new_id()}", iso_timestamp(wall), self.call_id, self._sequence,
                         {**head, **data})

    def started(self, wall: float, codec: str) -> CallEvent:
        return self._event("call.started", wall, {"codec": codec})

    def transferred(self, wall: float, target: str, uri: str) -> CallEvent:
        return self._event("call.transferred", wall, {"target": target, "uri": uri})

    def ended(self, wall: float, summary: CallSummary) -> CallEvent:
        tools = [{"name": t.name, "ok": t.ok} for t in summary.tools[:MAX_TOOL_CALLS]]
        transfer = ({"target": summary.transfer_target, "uri": summary.transfer_uri}
                    if summary.transfer_uri else None)
        extra: dict[str, Any] = {}
        if self.direction == "outbound":
            extra = {"answering_machine": summary.answering_machine or None, "message_left": summary.message_left}
        return self._event("call.ended", wall, {
            **extra,
            "outcome": summary.outcome,
            "duration_s": round(max(0.0, summary.duration_s), 3),
            "tool_calls": tools,
            "tool_calls_total": len(summary.tools),
            "transfer": transfer,
            "usage": dict(summary.usage) or None,  # None: the backend reported none
            "media": dict(summary.media) or None,  # None: the call had no media (not answered)
            "transcript_path": summary.transcript_path,
            "recording_path": summary.recording_path,
        })


# --- signature -------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of ``"<timestamp>." + body`` under ``secret``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str, event: CallEvent, body: bytes, wall: float) -> dict[str, str]:
    """The headers of one attempt: the event's type and id, and the signature for the time ``wall``."""
    timestamp = int(wall)
    return {EVENT_HEADER: event.type, EVENT_ID_HEADER: event.id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float,
           tolerance_s: float = REPLAY_TOLERANCE_S) -> bool:
    """What a receiver does (docs/configuration.md has the same in a few lines): the signature matches the
    exact body and the timestamp is within ``tolerance_s`` of ``now``."""
    if not timestamp.isascii() or not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


# --- delivery: what an answer means, when to try again ------------------------------------------------------


def verdict(status: int) -> Verdict:
    """2xx delivered; 408, 429 and 5xx may succeed later; anything else (a 3xx, another 4xx) never will."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    return "rejected"


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not worth a parser here: the back-off applies)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff_s: float = 1.0
    window_s: float = 300.0
    max_backoff_s: float = MAX_BACKOFF_S

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after the ``failures``-th failed attempt: backoff_s, doubled each time, capped; a
        receiver's Retry-After (429, 503) lengthens it, never beyond the cap."""
        base = self.backoff_s * 2.0 ** min(failures - 1, 30)
        return min(self.max_backoff_s, max(base, retry_after or 0.0))


@dataclass(eq=False)  # identity: two deliveries are never the same one
class Delivery:
    """One event on its way: the body is serialised once, attempts and due time change."""

    event: CallEvent
    body: bytes
    queued_at: float
    due: float
    attempts: int = 0
    sending: bool = False


class Outbox:
    """The bounded set of events held by one process (waiting, being sent, or waiting for a retry), and
    their schedule. ``push`` refuses an event when ``capacity`` are held, so a dead receiver costs bounded
    memory; the shell counts what was refused."""

    def __init__(self, capacity: int, policy: RetryPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self._held: list[Delivery] = []  # in the order queued: the earliest due goes first

    def __len__(self) -> int:
        return len(self._held)

    def push(self, event: CallEvent, now: float) -> Delivery | None:
        if len(self._held) >= self.capacity:
            return None
        delivery = Delivery(event, event.body(), now, now)
        self._held.append(delivery)
        return delivery

    def take(self, now: float) -> Delivery | None:
        """The next delivery due at ``now`` (marked as being sent), or None."""
        due = [d for d in self._held if not d.sending and d.due <= now]
        if not due:
            return None
        delivery = min(due, key=lambda d: d.due)
        delivery.sending = True
        delivery.attempts += 1
        return delivery

    def next_due(self) -> float | None:
        """When ``take`` will next have something (None: nothing is waiting)."""
        return min((d.due for d in self._held if not d.sending), default=None)

    def done(self, delivery: Delivery) -> None:
        """Delivered, or rejected for good: it leaves the outbox."""
        self._remove(delivery)

    def failed(self, delivery: Delivery, now: float, retry_after: float | None = None) -> bool:
        """An attempt that may succeed later failed: True when it is scheduled again, False when the
        attempts or the time window are used up (then it has left the outbox)."""
        delivery.sending = False
        if delivery.attempts > self.policy.retries:
            self._remove(delivery)
            return False
        due = now + self.policy.delay(delivery.attempts, retry_after)
        if due > delivery.queued_at + self.policy.window_s:
            self._remove(delivery)
            return False
        delivery.due = due
        return True

    def hurry(self, now: float) -> None:
        """Events waiting for a retry are due now: at shutdown (one last try within the flush), or for a
        new receiver."""
        for delivery in self._held:
            if not delivery.sending:
                delivery.due = min(delivery.due, now)

    def drain(self) -> list[Delivery]:
        """Everything still held, removed (shutdown: the shell counts them as dropped)."""
        held, self._held = self._held, []
        return held

    def _remove(self, delivery: Delivery) -> None:
        if delivery in self._held:
            self._held.remove(delivery)


__all__ = ["CALL_EVENT_TYPES", "CallEvent", "CallEvents", "CallSummary", "Delivery", "Outbox", "RetryPolicy",
           "ToolUse", "sign", "signed_headers", "verdict", "verify"]
