"""Prometheus metrics of one agent process, behind typed methods the agent and the bridge call.

Every ``Metrics`` owns its own ``CollectorRegistry`` (never prometheus_client's global one), so tests
and several agents in one process do not clash. Methods never raise on odd input: a metrics call must
not break a call's teardown, so unknown outcomes count as ``error`` and negative deltas are ignored.
"""

from __future__ import annotations

import logging
from typing import Final, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

PREFIX: Final = "sipagent_"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

CallOutcome = Literal[
    "answered", "rejected-busy", "rejected-forbidden", "rejected-not-ours", "rejected-codec", "cancelled",
    "rejected-srtp",  # 488 for the offer's media security alone (media.srtp, SDES keys over clear signalling)
    "remote-hangup",
    "agent-hangup", "transferred", "failover-hangup", "failover-transferred", "error",
    "time-limit",  # agent.max_call_s reached: the agent said max_call_message and hung up
    "media-timeout",  # no RTP from the far end for media.rtp_timeout_s (not on hold): the agent hung up
    "session-expired",  # RFC 4028: the session was not refreshed in time (or our refresh failed): BYE
    # Outbound calls answered by a machine: hung up on (outbound.answering_machine on_machine: hang_up), or
    # after the profile's message was left.
    "answering-machine", "message-left",
]
CALL_OUTCOMES: Final[tuple[str, ...]] = get_args(CallOutcome)
TokenKind = Literal["input", "output"]
PauseOutcome = Literal["barge-in", "resumed"]  # confirmed as speech, or a false alarm (cough, door, "uh-huh")
RecordingKind = Literal["transcript", "audio"]  # the JSON Lines transcript, the stereo WAV
# The failures of a Realtime response that are asked for again (bridge/response_retry.py); "response_failed":
# a failure with no code, as in realtime_errors.
RETRIED_CODES: Final = ("rate_limit_exceeded", "server_error", "response_failed")
# What became of a call event (events.webhook): 2xx; refused for good (a 4xx other than 408/429, or a request
# that could not be sent); attempts or time used up; never sent (the queue was full, or shutdown came first).
EventResult = Literal["delivered", "rejected", "failed", "dropped"]
EVENT_TYPES: Final = ("call.started", "call.transferred", "call.ended")
# How an outbound call ended (sipagent.outbound.calls.OUTCOMES): the dialer's outcomes, and "machine" for an
# answer the answering-machine detector classified as a machine.
OUTBOUND_OUTCOMES: Final = ("answered", "busy", "no-answer", "rejected", "failed", "cancelled", "machine")

# The registration core's state names (DESIGN: unregistered → registering → registered → refreshing →
# failed/backing-off). Others are accepted too: they get their own series the first time they appear.
REGISTRATION_STATES: Final = (
    "unregistered", "registering", "registered", "refreshing", "backing-off", "failed",
)

# Why a SIP request or connection was dropped without state (docs/security.md): a source not trusted, a
# limit of the UA's server transactions, or one of the transport's limits.
SHED_REASONS: Final = (
    "untrusted", "transactions", "transactions-per-source", "transaction-bytes", "too-large",
    "tcp-connections", "tcp-connections-per-source", "tcp-idle", "tcp-slow-message", "unframeable",
    "tls-handshake",
)

# Turn and barge-in latency: 10 ms … 5 s, denser where a phone conversation feels the difference.
LATENCY_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
CALL_DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
JITTER_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
_MAX_LABEL = 64  # error codes and reasons come from peers: bound what a label may hold


MAX_LABEL_VALUES = 64  # distinct values of a label that a peer names (a tool, an error code)


def _label(value: str, default: str = "unknown") -> str:
    value = value.strip()
    return value[:_MAX_LABEL] if value else default


class Metrics:
    """All sipagent_* metrics; ``render()`` gives the exposition text served on /metrics."""

    def __init__(self) -> None:
        self._tool_names: set[str] = set()
        self._error_codes: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        # Both by account: one process may register several extensions, each with its own state.
        self._registration_state = Gauge(p + "registration_state", "1 for each account's current registration "
                                         "state", ["account", "state"], registry=r)
        self._registration_failures = Counter(p + "registration_failures", "Failed REGISTER attempts",
                                              ["account", "reason"], registry=r)
        self._calls_active = Gauge(p + "calls_active", "Calls in progress", registry=r)
        self._calls = Counter(p + "calls", "Calls by outcome", ["outcome"], registry=r)
        self._call_duration = Histogram(p + "call_duration_seconds", "Duration of answered calls",
                                        buckets=CALL_DURATION_BUCKETS, registry=r)
        self._turn_latency = Histogram(p + "turn_latency_seconds",
                                       "End of caller speech to first agent audio sent",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self._barge_in_latency = Histogram(p + "barge_in_latency_seconds",
                                           "Caller speech start to agent playout stopped",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self._barge_in_pauses = Counter(p + "barge_in_pauses",
                                        "Agent audio ducked or paused at a caller's speech onset, by how it ended",
                                        ["outcome"], registry=r)
        self._barge_in_false_pause = Histogram(p + "barge_in_false_pause_seconds",
                                               "How long the agent was down or silent on an unconfirmed duck or pause",
                                               buckets=LATENCY_BUCKETS, registry=r)
        self._rtp_sent = Counter(p + "rtp_packets_sent", "RTP packets sent", registry=r)
        self._rtp_received = Counter(p + "rtp_packets_received", "RTP packets received", registry=r)
        self._rtp_lost = Counter(p + "rtp_packets_lost", "RTP packets lost (RFC 3550 cumulative loss)",
                                 registry=r)
        self._late_ticks = Counter(p + "media_late_ticks", "Media clock ticks that fired late", registry=r)
        self._jitter = Histogram(p + "rtp_jitter_seconds", "RTP interarrival jitter (RFC 3550 A.8)",
                                 buckets=JITTER_BUCKETS, registry=r)
        self._realtime_reconnects = Counter(p + "realtime_reconnects", "Realtime reconnects", registry=r)
        self._realtime_renewals = Counter(p + "realtime_renewals", "Realtime sessions replaced on purpose (the "
                                          "provider's session limit, or the server ending one)", registry=r)
        self._realtime_errors = Counter(p + "realtime_errors", "Realtime errors", ["code"], registry=r)
        self._response_retries = Counter(p + "realtime_response_retries", "Failed Realtime responses asked for "
                                         "again, by the failure's code", ["code"], registry=r)
        self._tool_calls = Counter(p + "tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"],
                                   registry=r)
        self._tokens = Counter(p + "tokens", "Realtime tokens used", ["kind"], registry=r)
        self._loop_lag = Gauge(p + "event_loop_lag_seconds", "Last measured event loop lag", registry=r)
        self._sip_shed = Counter(p + "sip_shed", "SIP requests and connections dropped without state, by reason",
                                 ["reason"], registry=r)
        self._sip_transactions = Gauge(p + "sip_server_transactions", "SIP server transactions held",
                                       registry=r)
        self._rtp_foreign = Counter(p + "rtp_foreign_packets",
                                    "RTP packets dropped because they came from a source other than the call's",
                                    registry=r)
        self._srtp_dropped = Counter(p + "srtp_dropped_packets",
                                     "SRTP and SRTCP packets dropped because they failed authentication or the "
                                     "replay check (forged, corrupted, replayed, or under another key)",
                                     registry=r)
        self._recording_errors = Counter(p + "recording_errors",
                                         "Call transcripts or recordings stopped by a write failure (the call "
                                         "went on without them)", ["kind"], registry=r)
        self._events = Counter(p + "events", "Call events by type and what became of them (each event counted "
                               "once, whatever its retries)", ["type", "result"], registry=r)
        self._events_held = Gauge(p + "events_held", "Call events waiting, being sent or waiting for a retry",
                                  registry=r)

        self._profile_calls = Counter(p + "profile_calls", "Answered calls by the agent profile they were routed "
                                      "to and the account they came in on", ["profile", "account"], registry=r)

        self._outbound_calls = Counter(p + "outbound_calls", "Outbound calls by outcome", ["outcome"], registry=r)
        self._outbound_active = Gauge(p + "outbound_active", "Outbound calls queued, dialing, ringing or answered",
                                      registry=r)

        self._states: dict[str, set[str]] = {}  # account -> the states it has series for
        self._active = 0
        # Pre-create the fixed label sets so rate() queries see zeros instead of missing series (an account's
        # registration states: at its first state).
        for outcome in CALL_OUTCOMES:
            self._calls.labels(outcome=outcome)
        for kind in get_args(TokenKind):
            self._tokens.labels(kind=kind)
        for pause_outcome in get_args(PauseOutcome):
            self._barge_in_pauses.labels(outcome=pause_outcome)
        for reason in SHED_REASONS:
            self._sip_shed.labels(reason=reason)
        for kind in get_args(RecordingKind):
            self._recording_errors.labels(kind=kind)
        for code in RETRIED_CODES:
            self._response_retries.labels(code=code)
        for outcome in OUTBOUND_OUTCOMES:
            self._outbound_calls.labels(outcome=outcome)
        for event_type in EVENT_TYPES:
            for result in get_args(EventResult):
                self._events.labels(type=event_type, result=result)

    # -- registration -------------------------------------------------------------------------------
    def set_registration_state(self, state: str, account: str = "") -> None:
        """``account``: the account's name ("" in direct mode, where nothing registers)."""
        state, account = _label(state), account.strip()[:_MAX_LABEL]
        states = self._states.get(account)
        if states is None:
            states = self._states[account] = set(REGISTRATION_STATES)
        states.add(state)
        for name in states:
            self._registration_state.labels(account=account, state=name).set(1 if name == state else 0)

    def registration_failed(self, reason: str, account: str = "", count: int = 1) -> None:
        """``reason``: the registrar's status (``"401"``, ``"403"``, ``"503"``), ``"timeout"``, ``"no-grant"`` or
        ``"connection-lost"``; ``count``: attempts that failed so."""
        self._registration_failures.labels(account=account.strip()[:_MAX_LABEL], reason=_label(reason)).inc(count)

    # -- calls --------------------------------------------------------------------------------------
    def call_started(self) -> None:
        """A call was answered (or is being set up) and now counts as active."""
        self._active += 1
        self._calls_active.set(self._active)

    def call_profile(self, profile: str, account: str = "") -> None:
        """An answered call was routed to ``profile`` (``account``: the one it came in on, "" for none)."""
        self._profile_calls.labels(profile=_label(profile), account=account.strip()[:_MAX_LABEL]).inc()

    def call_ended(self, outcome: CallOutcome | str, duration_s: float | None = None) -> None:
        """An active call ended; pairs with ``call_started``. ``duration_s`` from answer to hang-up."""
        self._active = max(0, self._active - 1)
        self._calls_active.set(self._active)
        self.call_counted(outcome)
        if duration_s is not None and duration_s >= 0:
            self._call_duration.observe(duration_s)

    def call_counted(self, outcome: CallOutcome | str) -> None:
        """Count a call that never became active (rejected-busy/-forbidden/-codec, cancelled)."""
        if outcome not in CALL_OUTCOMES:
            log.warning("unknown call outcome %r counted as error", outcome)
            outcome = "error"
        self._calls.labels(outcome=outcome).inc()

    def observe_turn_latency(self, seconds: float) -> None:
        if seconds >= 0:
            self._turn_latency.observe(seconds)

    def observe_barge_in_latency(self, seconds: float) -> None:
        if seconds >= 0:
            self._barge_in_latency.observe(seconds)

    def barge_in_pause_ended(self, outcome: PauseOutcome, paused_s: float) -> None:
        """A pause at the caller's onset ended; ``paused_s``: the gap the caller heard (counted if resumed)."""
        self._barge_in_pauses.labels(outcome=outcome).inc()
        if outcome == "resumed" and paused_s >= 0:
            self._barge_in_false_pause.observe(paused_s)

    # -- media --------------------------------------------------------------------------------------
    def add_rtp(self, sent: int = 0, received: int = 0, lost: int = 0) -> None:
        """Add packet deltas (report per call at hang-up or periodically, not per packet)."""
        if sent > 0:
            self._rtp_sent.inc(sent)
        if received > 0:
            self._rtp_received.inc(received)
        if lost > 0:  # RFC 3550 loss can be negative (duplicates): counters only go up
            self._rtp_lost.inc(lost)

    def add_late_ticks(self, count: int = 1) -> None:
        if count > 0:
            self._late_ticks.inc(count)

    def observe_jitter(self, seconds: float) -> None:
        if seconds >= 0:
            self._jitter.observe(seconds)

    def recording_error(self, kind: RecordingKind) -> None:
        """A call's transcript or recording could not be written (full disk, permissions, a directory removed)
        and was stopped; counted once per file."""
        self._recording_errors.labels(kind=kind).inc()

    # -- Realtime -----------------------------------------------------------------------------------
    def realtime_reconnected(self) -> None:
        self._realtime_reconnects.inc()

    def realtime_renewed(self) -> None:
        self._realtime_renewals.inc()

    def realtime_error(self, code: str) -> None:
        """``code``: the server's ``error.code`` (or ``error.type`` when there is no code). The server names
        it, so past MAX_LABEL_VALUES distinct codes the rest count as "other"."""
        self._realtime_errors.labels(code=self._bounded(self._error_codes, _label(code))).inc()

    def response_retried(self, code: str) -> None:
        """A failed response is asked for again (``code``: its failure's, "" for none). Only codes of
        RETRIED_CODES are retried; any other counts as "other"."""
        code = code or "response_failed"
        self._response_retries.labels(code=code if code in RETRIED_CODES else "other").inc()

    def tool_called(self, tool: str, outcome: str) -> None:
        """``outcome``: ``ok``, ``error`` or ``timeout`` (any short token). The model names the tool (an
        unknown one too), so past MAX_LABEL_VALUES distinct names the rest count as "other"."""
        self._tool_calls.labels(tool=self._bounded(self._tool_names, _label(tool)), outcome=_label(outcome)).inc()

    @staticmethod
    def _bounded(seen: set[str], value: str) -> str:
        """``value`` as a label, unless it would be one series too many: a label named by a peer must not
        grow /metrics (and the scraper's storage) without bound."""
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value

    def tokens_used(self, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """From ``response.done`` → ``response.usage.input_tokens`` / ``output_tokens``."""
        if input_tokens > 0:
            self._tokens.labels(kind="input").inc(input_tokens)
        if output_tokens > 0:
            self._tokens.labels(kind="output").inc(output_tokens)

    # -- outbound calls ----------------------------------------------------------------------------
    def outbound_call_ended(self, outcome: str) -> None:
        """An outbound call is over; an outcome not in OUTBOUND_OUTCOMES counts as ``failed``."""
        if outcome not in OUTBOUND_OUTCOMES:
            log.warning("unknown outbound outcome %r counted as failed", outcome)
            outcome = "failed"
        self._outbound_calls.labels(outcome=outcome).inc()

    def set_outbound_active(self, count: int) -> None:
        self._outbound_active.set(max(0, count))

    # -- call events -------------------------------------------------------------------------------
    def event_counted(self, event_type: str, result: EventResult) -> None:
        """One call event's fate, counted once when it is settled (not per attempt)."""
        self._events.labels(type=_label(event_type), result=result).inc()

    def set_events_held(self, count: int) -> None:
        self._events_held.set(max(0, count))

    # -- process ------------------------------------------------------------------------------------
    def sip_shed(self, reason: str) -> None:
        self._sip_shed.labels(reason=_label(reason)).inc()

    def set_sip_transactions(self, count: int) -> None:
        self._sip_transactions.set(count)

    def add_rtp_foreign(self, count: int) -> None:
        if count > 0:
            self._rtp_foreign.inc(count)

    def add_srtp_dropped(self, count: int) -> None:
        if count > 0:
            self._srtp_dropped.inc(count)

    def set_loop_lag(self, seconds: float) -> None:
        self._loop_lag.set(max(0.0, seconds))

    @property
    def calls_active(self) -> int:
        return self._active

    def render(self) -> bytes:
        """The Prometheus text exposition; serve it with ``CONTENT_TYPE``."""
        return generate_latest(self.registry)
