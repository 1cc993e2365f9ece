"""A response that failed for a passing cause, asked for again: whether it may be, what to send, and when.

The server gives up on a response that fails (``response.done`` with status ``failed``): nothing asks for it
again, and the caller's question goes unanswered until the idle prompt. When the cause passes
(``rate_limit_exceeded``, ``server_error``, or no code given), asking again after 1 s, then 2 s, usually
gets the answer. Only while nothing has moved on: the caller heard none of the failed response (a reply said
twice is worse than a pause), and when the delay is over the call is still live and off hold, no other
response runs, the caller is not speaking and has said nothing new (the server answers that by itself),
and the session is the same one.

What is asked again is what failed. A response we asked for (a ``response.create``: the greeting, the idle
prompt, a tool's follow-up...) is asked for again with the same event; one the server began on its own
(server VAD, after the caller spoke) with a plain ``response.create``. Telling them apart: each
response.create leaves with a tag in ``response.metadata``, and a server that echoes it in response.created
(the OpenAI API, GA and beta) names the request exactly. One that does not (the local backend) answers the
requests in order, each with a response.created or an error: the oldest unanswered request is paired with
the next response.created, and a request refused because a response was under way (the server's own, begun
while ours was on its way) undoes that pairing.

Pure: no I/O, no clock. The bridge tells it what leaves and arrives, and the time (``RealtimeSession`` tags
what leaves; ``CallBridge`` sends a retry when it is due).
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipagent.realtime import events as ev

# Failures that pass: the same request a moment later usually succeeds. "" (a failure with no code) too.
TRANSIENT_CODES = frozenset({"rate_limit_exceeded", "server_error"})
DELAYS_S = (1.0, 2.0)  # before each retry in a row; then the failure stands (until a response completes)
TAG = "sipagent_ask"  # our key in response.metadata
REFUSED = "conversation_already_has_active_response"  # the error code of a request refused (ResponseRetries.refused)
MAX_ASKS = 16  # requests remembered unanswered: one that never gets an answer must not be kept for good
MAX_TURNS = 8  # caller turns remembered (their late transcripts are not something new)


@dataclass(frozen=True)
class Line:
    """What the call is doing, as the bridge sees it, when a failure comes and when its retry is due."""

    live: bool = True  # live, and not being transferred, saying goodbye or over
    held: bool = False
    connected: bool = True  # a session is there to ask (not reconnecting)
    responding: bool = False  # a response is under way
    caller_speaking: bool = False  # the local voice detector hears the caller now

    def busy(self) -> str:
        """Why a retry may not go now ("" when it may)."""
        if self.held:
            return "the call is on hold"
        if not self.live:
            return "the call is no longer live"
        if not self.connected:
            return "the session is being reconnected"
        if self.responding:
            return "another response is under way"
        if self.caller_speaking:
            return "the caller is speaking"
        return ""


@dataclass(frozen=True)
class Retry:
    """A failed response to ask for again at ``due`` (the clock ``ResponseRetries.done`` was given)."""

    event: dict[str, Any]  # the response.create to send
    code: str  # why the response failed ("" when the server gave no code)
    ours: bool  # the failed response was one we asked for (``event`` is that request), not the server's own
    attempt: int  # 1 for the first retry in a row
    delay_s: float
    due: float


@dataclass(frozen=True)
class NoRetry:
    """A failed response that is not asked for again, and why."""

    reason: str
    gave_up: bool = False  # the retries in a row are used up (else the failure was not one to retry)


class Take(enum.Enum):
    """What to do with a retry whose delay is over (``ResponseRetries.take``)."""

    SEND = "send"  # send its event now
    WAIT = "wait"  # not due yet (a timer may wake a hair early): wait until its ``due``
    DROP = "drop"  # never: ``why_not`` says why


@dataclass
class _Response:
    """The response under way."""

    id: str
    event: dict[str, Any] | None  # the request it answers; None: the server began it on its own
    audio: bool = False  # some of its audio was queued for the caller


class ResponseRetries:
    def __init__(self, delays_s: tuple[float, ...] = DELAYS_S) -> None:
        self.delays_s = delays_s
        self.streak = 0  # retries sent since the last completed response
        self.pending: Retry | None = None  # the retry waiting for its delay
        self.why_not = ""  # why the last retry was dropped
        self._asks: OrderedDict[str, dict[str, Any]] = OrderedDict()  # tag -> request, sent and not yet answered
        self._asked = 0
        self._echoes = False  # the server has echoed a tag: a response.created without one is its own
        self._current: _Response | None = None
        self._turns: deque[str] = deque(maxlen=MAX_TURNS)  # item ids of the caller's latest turns
        self.tagging = True  # off once a server refused response.metadata: requests are paired by order then

    # ---------------------------------------------------------------- what leaves and arrives

    def asked(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A response.create leaves: the event to send in its place (the same, tagged). ``event`` itself is
        what a retry sends again (tagged afresh as it leaves)."""
        self._asked += 1
        tag = str(self._asked)
        self._asks[tag] = dict(event)
        while len(self._asks) > MAX_ASKS:
            self._asks.popitem(last=False)
        if not self.tagging:
            return dict(event)
        params = event.get("response")
        params = dict(params) if isinstance(params, Mapping) else {}
        metadata = params.get("metadata")
        params["metadata"] = {**(metadata if isinstance(metadata, Mapping) else {}), TAG: tag}
        return {**event, "response": params}

    def created(self, response: Mapping[str, Any]) -> None:
        """response.created (its ``response`` object): which request it answers, if any. A retry still waiting
        is dropped: another response has begun."""
        self._drop("another response began")
        rid = response.get("id")
        metadata = response.get("metadata")
        tag = metadata.get(TAG) if isinstance(metadata, Mapping) else None
        event: dict[str, Any] | None = None
        if isinstance(tag, str):
            self._echoes = True
            if tag in self._asks:
                # Requests before it got no response: refused (their errors came first) or forgotten.
                while event is None:
                    key, asked = self._asks.popitem(last=False)
                    if key == tag:
                        event = asked
            # else: ours, but a request no longer remembered: asked again as a plain response.create
        elif not self._echoes and self._asks:
            event = self._asks.popitem(last=False)[1]  # the server answers requests in order
        self._current = _Response(rid if isinstance(rid, str) else "", event)

    def refused(self) -> None:
        """An error conversation_already_has_active_response: the oldest request unanswered was refused, a
        response being under way. If the order had paired that request with the response under way already,
        that response is the server's own (begun while the request was on its way)."""
        if self._asks:
            self._asks.popitem(last=False)
        elif not self._echoes and self._current is not None:
            self._current.event = None

    def metadata_refused(self) -> dict[str, Any] | None:
        """A server that takes no ``response.metadata`` (a "compatible" backend, an older API version) refused
        the oldest request unanswered for it: tagging stops, and that request is what to send again, untagged
        (None when there is none)."""
        self.tagging = False
        return self._asks.popitem(last=False)[1] if self._asks else None

    def audio(self) -> None:
        """Audio of the response under way was queued for the caller: it is not asked for again."""
        if self._current is not None:
            self._current.audio = True

    def caller_spoke(self, item_id: object = None) -> None:
        """The server heard the caller start (input_audio_buffer.speech_started, of ``item_id``): it answers
        the caller's turn itself."""
        if isinstance(item_id, str) and item_id:
            self._turns.append(item_id)
        self._drop("the caller spoke")

    def caller_said(self, item_id: object = None) -> None:
        """A transcript of the caller's ``item_id``: something new, unless it is of a turn already heard (the
        transcript of the turn a failed response answered may come after the failure)."""
        if not (isinstance(item_id, str) and item_id in self._turns):
            self._drop("the caller said something new")

    def new_session(self) -> None:
        """The session was replaced (a reconnect, a renewal): what was asked of the old one is over."""
        self._drop("the session was replaced")
        self._asks.clear()
        self._current = None

    # ---------------------------------------------------------------- deciding

    def done(self, response: Mapping[str, Any], now: float, line: Line) -> Retry | NoRetry | None:
        """response.done (its ``response`` object) at ``now``: a Retry to send when it is due, NoRetry for a
        failed response that is not asked for again, None for any other (a completed one ends the streak of
        retries in a row)."""
        current, self._current = self._current, None
        status = response.get("status")
        if status == "completed":
            self.streak = 0
            return None
        if status != "failed":
            return None  # cancelled (a barge-in) or incomplete (cut short on purpose): nothing to retry
        code = failure_code(response)
        rid = response.get("id")
        if code not in TRANSIENT_CODES and code != "":
            return NoRetry(f"{code} does not pass by itself")
        if current is None or (isinstance(rid, str) and rid and current.id and rid != current.id):
            return NoRetry("it is not the response that began last")
        if current.audio:
            return NoRetry("the caller heard part of it")
        if self.streak >= len(self.delays_s):
            return NoRetry(f"{self.streak} retries in a row failed", gave_up=True)
        why = line.busy()
        if why:
            return NoRetry(why)
        delay = self.delays_s[self.streak]
        ours = current.event is not None
        event = current.event if current.event is not None else ev.response_create()
        self.pending = Retry(event, code, ours, self.streak + 1, delay, now + delay)
        return self.pending

    def take(self, retry: Retry, now: float, line: Line) -> Take:
        """``retry``'s delay is over (at ``now``): send it, wait a little more, or drop it (``why_not``)."""
        if retry is not self.pending:
            return Take.DROP  # dropped meanwhile: why_not says why
        if now < retry.due:
            return Take.WAIT
        why = line.busy()
        if why:
            self._drop(why)
            return Take.DROP
        self.pending = None
        self.streak += 1
        return Take.SEND

    def _drop(self, why: str) -> None:
        if self.pending is not None:
            self.pending = None
            self.why_not = why


def failure_code(response: Mapping[str, Any]) -> str:
    """The code of a failed response, as the log and the metrics name it (status_details: its reason, else
    the error's code, else its type; "" for none), bounded and on one line: it is the server's word."""
    details = response.get("status_details")
    details = details if isinstance(details, Mapping) else {}
    error = details.get("error")
    error = error if isinstance(error, Mapping) else {}
    for value in (details.get("reason"), error.get("code"), error.get("type")):
        if isinstance(value, str) and value:
            return value[:60].encode("unicode_escape").decode()
    return ""


__all__ = ["DELAYS_S", "REFUSED", "TRANSIENT_CODES", "Line", "NoRetry", "ResponseRetries", "Retry", "Take",
           "failure_code"]
