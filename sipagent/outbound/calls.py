"""The outbound calls of one process: who may start one now, what each is doing, how it ended.

Two parts. ``CallRegistry`` is the bookkeeping, with no I/O: admission under ``max_calls`` and a token
bucket of ``calls_per_second`` (times come in as arguments), each call's state as a table of allowed
transitions, and a bounded history of finished calls. ``OutboundCalls`` is the asyncio shell: it runs
the ``place`` coroutine the agent injects (dial, bridge, wait for the end) as one task per call, and
cancels that task to hang up or to CANCEL.

States::

    queued -> dialing -> ringing -> answered -> ended
       \\________\\___________\\______________/^

A request over a limit is refused, not queued (the API answers 429 with Retry-After): a campaign
dialer already keeps its own list, and a queue here would hold calls nobody can see through a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sipagent.errors import RtpError, SipagentError
from sipagent.observability.metrics import Metrics

log = logging.getLogger(__name__)

CallState = Literal["queued", "dialing", "ringing", "answered", "ended"]
# How an outbound call ended. The first six are the dialer's (sip: DIAL_OUTCOMES); "machine" is an answer
# that the answering-machine detector classified as a machine (with or without a message left).
Outcome = Literal["answered", "busy", "no-answer", "rejected", "failed", "cancelled", "machine"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
AmdVerdict = Literal["human", "machine", "unknown"]

_NEXT: dict[str, frozenset[str]] = {
    "queued": frozenset({"dialing", "ended"}),
    "dialing": frozenset({"ringing", "answered", "ended"}),
    "ringing": frozenset({"answered", "ended"}),
    "answered": frozenset({"ended"}),
    "ended": frozenset(),
}
BUSY_RETRY_AFTER_S = 1.0  # what a 429 for max_calls suggests (a call's length is unknown)


RefusalReason = Literal["max_calls", "sip_max_calls", "rate", "shutdown"]
_REFUSALS: dict[str, str] = {
    "max_calls": "outbound.max_calls calls are in progress",
    "sip_max_calls": "sip.max_calls calls (answered and placed) are in progress",
    "rate": "outbound.calls_per_second exceeded",
    "shutdown": "the agent is shutting down",
}
SHUTDOWN_RETRY_AFTER_S = 10.0  # what a refusal during shutdown suggests (a restart, or another instance)


class CallRefused(SipagentError):
    """No new call now: ``reason`` is ``max_calls``, ``sip_max_calls`` (the budget answered calls share),
    ``rate`` or ``shutdown``; ``retry_after_s`` when to try again."""

    def __init__(self, reason: RefusalReason, retry_after_s: float) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"call refused: {_REFUSALS[reason]}; retry after {retry_after_s:.1f} s")


class BadTransition(SipagentError):
    """A state change the table does not allow (a bug in whoever drives the call)."""


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per call. Times are seconds."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)

    def wait_s(self, now: float) -> float:
        """0 when a token is there now, else how long until one is."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0


@dataclass(frozen=True)
class CallRequest:
    """What a client asked for, already checked: ``to`` a SIP URI, ``profile`` a known one."""

    to: str
    profile: str
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass
class OutboundCall:
    """One call's public record. Times are wall-clock seconds (``to_json`` formats them)."""

    id: str
    request: CallRequest
    created_at: float
    state: CallState = "queued"
    outcome: Outcome | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    sip_call_id: str = ""  # the SIP Call-ID once dialing (logs, transcripts and webhook events use it)
    answering_machine: AmdVerdict | None = None  # None: not detected (off, or not answered)
    message_left: bool = False

    @property
    def finished(self) -> bool:
        return self.state == "ended"

    @property
    def success(self) -> bool:
        """Answered by a person, or by a machine that got the profile's message."""
        return self.outcome == "answered" or (self.outcome == "machine" and self.message_left)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "to": self.request.to, "profile": self.request.profile, "state": self.state,
                "outcome": self.outcome, "started_at": _iso(self.created_at), "answered_at": _iso(self.answered_at),
                "ended_at": _iso(self.ended_at), "end_reason": self.end_reason or None,
                "answering_machine": self.answering_machine, "message_left": self.message_left}


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PlaceResult:
    """What ``place`` returns once the call is over."""

    outcome: Outcome
    end_reason: str = ""
    answering_machine: AmdVerdict | None = None
    message_left: bool = False


class CallRegistry:
    """Admission, states and history of outbound calls; no I/O (``now``: monotonic, ``wall``: epoch s)."""

    def __init__(self, *, max_calls: int, calls_per_second: float, history: int, now: float,
                 new_id: Callable[[], str] = lambda: secrets.token_urlsafe(16)) -> None:
        self.max_calls = max_calls
        # A burst of at most what one second allows (never less than one call): the bucket starts full.
        self.bucket = TokenBucket(calls_per_second, max(1.0, calls_per_second), now)
        self.history = history
        self._new_id = new_id
        self._active: dict[str, OutboundCall] = {}
        self._finished: OrderedDict[str, OutboundCall] = OrderedDict()

    @property
    def active(self) -> int:
        return len(self._active)

    def admit(self, request: CallRequest, now: float, wall: float) -> OutboundCall:
        """A new call in state queued, or CallRefused (nothing is taken from the limits then)."""
        if len(self._active) >= self.max_calls:
            raise CallRefused("max_calls", BUSY_RETRY_AFTER_S)
        wait = self.bucket.wait_s(now)
        if wait > 0:
            raise CallRefused("rate", wait)
        self.bucket.take(now)
        call_id = self._new_id()
        while call_id in self._active or call_id in self._finished:  # only ever with a fixed new_id in tests
            call_id = self._new_id()
        call = OutboundCall(call_id, request, wall)
        self._active[call_id] = call
        return call

    def get(self, call_id: str) -> OutboundCall | None:
        return self._active.get(call_id) or self._finished.get(call_id)

    def move(self, call: OutboundCall, state: CallState, wall: float) -> bool:
        """``call`` to ``state``: True when it changed, False when it was there already (a second 180);
        BadTransition for a change the table does not allow."""
        if state == call.state:
            return False
        if state not in _NEXT[call.state]:
            raise BadTransition(f"outbound call {call.id}: {call.state} -> {state} is not allowed")
        call.state = state
        if state == "answered":
            call.answered_at = wall
        return True

    def end(self, call: OutboundCall, result: PlaceResult, wall: float) -> None:
        """The call is over: its outcome set, it leaves the active set, the oldest history goes."""
        if call.finished:
            return
        self.move(call, "ended", wall)
        call.outcome = result.outcome
        call.end_reason = result.end_reason
        call.answering_machine = result.answering_machine
        call.message_left = result.message_left
        call.ended_at = wall
        # GET never shows the variables: a finished call need not keep them. With control.history at its
        # maximum they would be up to 100000 x 32 x 256 characters of a client's data, held for nothing.
        call.request = replace(call.request, variables={})
        self._active.pop(call.id, None)
        if self.history > 0:
            self._finished[call.id] = call
            while len(self._finished) > self.history:
                self._finished.popitem(last=False)


class CallProgress:
    """What ``place`` reports while the call goes on (the dialer's progress, the answer)."""

    def __init__(self, calls: OutboundCalls, call: OutboundCall) -> None:
        self._calls = calls
        self.call = call

    @property
    def request(self) -> CallRequest:
        return self.call.request

    def sip_call_id(self, value: str) -> None:
        """The SIP Call-ID of the dialog (logs, transcripts and call events name the call by it)."""
        self.call.sip_call_id = value

    def ringing(self) -> None:
        """A 180/183 came. Several may, and one may straggle in after the answer or a cancel: only the
        first while dialing changes the state (this is called from the UA's callbacks: it never raises)."""
        if self.call.state == "dialing":
            self._calls._move(self.call, "ringing")

    def answered(self) -> None:
        self._calls._move(self.call, "answered")


# The agent's side: dial ``progress.request``, report progress, run the call to its end, return how it went.
# Cancelling its task must hang up an answered call and CANCEL a ringing one (UserAgent.dial does the latter).
Place = Callable[[CallProgress], Awaitable[PlaceResult]]


class OutboundCalls:
    """The asyncio shell: ``start`` admits a request and runs ``place`` for it; ``cancel`` ends it.
    ``sip_room`` says whether the SIP side can take one more call now (``sip.max_calls`` is shared with
    answered calls): without room a request is refused up front instead of failing once admitted."""

    def __init__(self, place: Place, *, max_calls: int, calls_per_second: float, history: int = 1000,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, new_id: Callable[[], str] | None = None,
                 sip_room: Callable[[], bool] | None = None) -> None:
        self._place = place
        self._sip_room = sip_room
        self._admitting = True
        self._clock = clock
        self._wall = wall
        self.metrics = metrics
        extra = {"new_id": new_id} if new_id is not None else {}
        self.registry = CallRegistry(max_calls=max_calls, calls_per_second=calls_per_second, history=history,
                                     now=clock(), **extra)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._cancelled: set[str] = set()

    @property
    def active(self) -> int:
        return self.registry.active

    def start(self, request: CallRequest) -> OutboundCall:
        """Admit and start dialing; CallRefused over a limit. Returns at once (the call runs in a task)."""
        if not self._admitting:
            raise CallRefused("shutdown", SHUTDOWN_RETRY_AFTER_S)
        if self._sip_room is not None and not self._sip_room():  # before admit: nothing taken from the limits
            raise CallRefused("sip_max_calls", BUSY_RETRY_AFTER_S)
        call = self.registry.admit(request, self._clock(), self._wall())
        if self.metrics is not None:
            self.metrics.set_outbound_active(self.registry.active)
        self._done[call.id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(call), name=f"outbound-{call.id}")
        # A task cancelled before its first step never runs _run's handlers: this settles the call anyway.
        task.add_done_callback(lambda _: self._finish(call, _after_cancel(
            call, "cancelled by request" if call.id in self._cancelled else "shutdown")))
        self._tasks[call.id] = task
        log.info("outbound call %s to %s (profile %s) started", call.id, request.to, request.profile)
        return call

    def get(self, call_id: str) -> OutboundCall | None:
        return self.registry.get(call_id)

    def cancel(self, call_id: str) -> OutboundCall | None:
        """Hang up an answered call, CANCEL a dialing one (None: no such call). A finished call is left as
        it was; the outcome of one cancelled before its answer is ``cancelled``."""
        call = self.registry.get(call_id)
        task = self._tasks.get(call_id)
        if call is None or call.finished or task is None:
            return call
        self._cancelled.add(call_id)
        task.cancel()
        return call

    async def wait(self, call_id: str) -> OutboundCall:
        """The call once it has ended (KeyError: not a call of this process)."""
        done = self._done.get(call_id)
        if done is not None:
            await done.wait()
        call = self.registry.get(call_id)
        if call is None:
            raise KeyError(call_id)
        return call

    def stop_admitting(self) -> None:
        """The agent is shutting down: from now on every request is refused (calls going on go on)."""
        self._admitting = False

    async def close(self) -> None:
        """Shutdown: no new call is admitted; every call still going is cancelled (hung up or CANCELled) and
        awaited."""
        self.stop_admitting()
        for call_id in list(self._tasks):
            self.cancel(call_id)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _move(self, call: OutboundCall, state: CallState) -> None:
        if self.registry.move(call, state, self._wall()):
            log.info("outbound call %s: %s", call.id, state)

    async def _run(self, call: OutboundCall) -> None:
        try:
            result = await self._outcome(call)
        except asyncio.CancelledError:  # not by cancel(): the loop is shutting down; still leave a record
            self._finish(call, _after_cancel(call, "shutdown"))
            raise
        self._finish(call, result)

    def _finish(self, call: OutboundCall, result: PlaceResult) -> None:
        if call.finished:
            return
        self.registry.end(call, result, self._wall())
        log.info("outbound call %s ended: %s%s", call.id, result.outcome,
                 f" ({result.end_reason})" if result.end_reason else "")
        if self.metrics is not None:
            self.metrics.outbound_call_ended(result.outcome)
            self.metrics.set_outbound_active(self.registry.active)
        self._tasks.pop(call.id, None)
        self._cancelled.discard(call.id)
        done = self._done.pop(call.id, None)
        if done is not None:
            done.set()

    async def _outcome(self, call: OutboundCall) -> PlaceResult:
        """``place``'s result, or what its failure means: a dialer error carries its outcome (busy,
        no-answer…), a cancellation ends the call as cancelled (or keeps answered), a media error (no RTP
        port) fails it with its words, anything else fails it as an internal error."""
        try:
            self._move(call, "dialing")
            return await self._place(CallProgress(self, call))
        except asyncio.CancelledError:
            if call.id not in self._cancelled:
                raise
            return _after_cancel(call)
        except RtpError as exc:  # no RTP port free, say: the operator's to act on, not a bug
            log.warning("outbound call %s failed: %s", call.id, exc)
            return PlaceResult("failed", f"media: {exc}"[:200])
        except Exception as exc:
            outcome = getattr(exc, "outcome", None)
            if outcome in OUTCOMES:
                status = getattr(exc, "status", 0)
                reason = f"{status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)
                return PlaceResult(outcome, reason[:200])
            log.exception("outbound call %s failed", call.id)
            return PlaceResult("failed", f"internal error: {type(exc).__name__}")


def _after_cancel(call: OutboundCall, why: str = "cancelled by request") -> PlaceResult:
    if call.state == "answered":
        return PlaceResult("answered", f"hung up: {why}", call.answering_machine, call.message_left)
    return PlaceResult("cancelled", why)


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))
