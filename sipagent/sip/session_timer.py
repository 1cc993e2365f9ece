"""Session timers (RFC 4028) for the calls we answer, as a pure state machine with deadlines.

Every INVITE and UPDATE of a dialog negotiates the session interval and who refreshes it (``negotiate``);
each 2xx to one of them, in either direction, starts a new interval. When we refresh, ``timeout`` asks
for a refresh (``Refresh``: UPDATE when the peer allows it, else a re-INVITE) at half the interval, and
the shell feeds the refresh's final response to ``on_response``. When the peer refreshes and does not,
``timeout`` ends the session (``Expire``) min(32, interval/3) seconds before the interval runs out
(RFC 4028 10), as it does when our own refreshes keep failing. Times are seconds on the caller's clock.

Who refreshes (RFC 4028 9), "uac" being the PBX that sent the INVITE or UPDATE:

- the request names a refresher: that one;
- the UAC supports timers and leaves it open: the UAC. The PBX then keeps its own timer alive with its
  own refreshes, and we only watch;
- the UAC does not support timers: us, whatever a proxy wrote, since the UAC cannot refresh what it does
  not know. When it asked for no timer at all we still run one (RFC 4028 9 lets a UAS ask for one in its
  2xx): our refreshes are plain re-INVITEs or UPDATEs every UA answers, and an answer that stops coming
  is how we find a call the PBX has forgotten, which would otherwise keep its Realtime session open.
"""

from __future__ import annotations

import random as _random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sipagent.errors import SipParseError
from sipagent.sip._text import parse_params
from sipagent.sip.message import Headers

Refresher = Literal["us", "peer"]

END_MARGIN_MAX = 32.0  # RFC 4028 10: end the session min(32, interval/3) s before it expires
RETRIES = 3  # refreshes answered 422 or 491 that are retried before waiting for the next attempt
# RFC 3261 14.1: after a 491 the UA that made the Call-ID (we did, for a call we place) retries after 2.1-4 s,
# the other one after 0-2 s, so that the two re-INVITEs do not cross again.
GLARE_DELAY = (0.0, 2.0)
OWNER_GLARE_DELAY = (2.1, 4.0)
_DELTA = re.compile(r"[0-9]{1,10}")


class IntervalTooSmall(Exception):
    """The request's session interval is below our minimum: answer 422 with ``Min-SE: min_se``."""

    def __init__(self, min_se: int) -> None:
        super().__init__(f"session interval below {min_se} s")
        self.min_se = min_se


@dataclass(frozen=True)
class TimerPolicy:
    """``session_expires``: the longest interval we agree to, and the one we run when none is asked for;
    ``min_se``: the shortest we accept (RFC 4028 says at least 90; the configuration enforces it)."""

    session_expires: int = 1800
    min_se: int = 90


@dataclass(frozen=True)
class SessionExpires:
    """A Session-Expires value: the interval and the refresher as written ("uac", "uas" or None)."""

    interval: int
    refresher: str | None = None

    @classmethod
    def parse(cls, text: str) -> SessionExpires:
        value, _, params = text.partition(";")
        refresher = parse_params(params, what="Session-Expires").get("refresher")
        refresher = refresher.lower() if refresher else None
        if refresher not in (None, "uac", "uas"):
            raise SipParseError("bad Session-Expires refresher")
        return cls(_delta(value, "Session-Expires"), refresher)


@dataclass(frozen=True)
class Accepted:
    """The session timer's terms in our 2xx to an INVITE or UPDATE."""

    interval: int
    refresher: Refresher
    require: bool  # the UAC supports timers: our 2xx says Require: timer (RFC 4028 9)

    def headers(self) -> list[tuple[str, str]]:
        """Session-Expires names the refresher from the answering side: we are the uas of what we answer."""
        role = "uas" if self.refresher == "us" else "uac"
        headers = [("Session-Expires", f"{self.interval};refresher={role}")]
        if self.require:
            headers.append(("Require", "timer"))
        return headers


@dataclass(frozen=True)
class Refresh:
    """Send a session refresh now: ``method`` is UPDATE or INVITE."""

    method: str


@dataclass(frozen=True)
class Expire:
    """End the session with BYE: "session-expired" (no refresh in time) or "refresh-failed" (ours got
    408, 481 or no answer)."""

    reason: str


TimerAction = Refresh | Expire


def _delta(text: str, what: str) -> int:
    text = text.strip()
    if not _DELTA.fullmatch(text):
        raise SipParseError(f"bad {what}")
    return int(text)


def supports_timer(headers: Headers) -> bool:
    """Whether the sender of these headers supports session timers (Supported or Require: timer)."""
    return any(option.lower() == "timer" for option in (*headers.get_all("Supported"), *headers.get_all("Require")))


def min_se_of(headers: Headers) -> int:
    """The Min-SE value, 0 when absent; SipParseError when malformed."""
    text = headers.get("Min-SE")
    return 0 if text is None else _delta(text.split(";")[0], "Min-SE")


def negotiate(headers: Headers, policy: TimerPolicy) -> Accepted:
    """Our terms for an incoming INVITE or UPDATE (RFC 4028 9); raises IntervalTooSmall (→ 422) and
    SipParseError (→ 400)."""
    supports = supports_timer(headers)
    floor = max(policy.min_se, min_se_of(headers))
    text = headers.get("Session-Expires")
    if text is None:
        return Accepted(max(policy.session_expires, floor), "us", supports)
    asked = SessionExpires.parse(text)
    if asked.interval < policy.min_se:
        if supports:
            raise IntervalTooSmall(floor)
        # A proxy wrote it for a UAC that knows nothing of timers: a 422 would only fail the call, so the
        # interval is raised instead (as RFC 4028 8.1 tells a proxy; errata 1687 for the UAS).
        return Accepted(floor, "us", False)
    interval = max(min(asked.interval, policy.session_expires), floor)  # we may shorten it, not below Min-SE
    if not supports or asked.refresher == "uas":
        return Accepted(interval, "us", supports)
    return Accepted(interval, "peer", True)


class SessionTimer:
    """One dialog's session timer. States: off → running ⇄ refreshing → expired (or off again when the
    peer's 2xx turns timers off). ``random`` returns a float in [0, 1) (the 491 back-off); ``owns_call_id``:
    the dialog is a call we placed."""

    def __init__(self, policy: TimerPolicy, random: Callable[[], float] = _random.random,
                 owns_call_id: bool = False) -> None:
        self.policy = policy
        self.glare_delay = OWNER_GLARE_DELAY if owns_call_id else GLARE_DELAY
        self.state = "off"
        self.interval = 0  # the interval in force
        self.asking = 0  # the interval our next refresh asks for: the one in force, or a 422's Min-SE
        self.refresher: Refresher = "us"
        self.peer_supports_timer = False
        self.peer_allows_update = False
        self.min_se = policy.min_se  # the largest Min-SE seen in the dialog: our refreshes carry it
        self._random = random
        self._started_at = 0.0
        self._refresh_at: float | None = None
        self._attempts = 0  # refreshes sent since the last 2xx
        self._pending_method = "INVITE"  # the method of the refresh in flight

    # -- what the peer tells us ----------------------------------------------------------------------

    def learn(self, headers: Headers) -> None:
        """Note what a message of the peer says of it: timer support, whether it allows UPDATE, Min-SE."""
        self.peer_supports_timer = self.peer_supports_timer or supports_timer(headers)
        allowed = headers.get_all("Allow")
        if allowed:
            self.peer_allows_update = any(method.upper() == "UPDATE" for method in allowed)
        try:
            self.min_se = max(self.min_se, min_se_of(headers))
        except SipParseError:
            pass

    def negotiate(self, headers: Headers) -> Accepted:
        """Our terms for an incoming INVITE or UPDATE (see ``negotiate``); call ``start`` once its 2xx is sent."""
        terms = negotiate(headers, self.policy)
        self.learn(headers)
        return terms

    @property
    def method(self) -> str:
        """How we refresh: UPDATE when the peer allows it (no SDP to carry), else a re-INVITE."""
        return "UPDATE" if self.peer_allows_update else "INVITE"

    # -- the interval ----------------------------------------------------------------------------

    def start(self, terms: Accepted, now: float) -> None:
        """A 2xx to an INVITE or UPDATE went out (or came in): a new interval begins."""
        self.state = "running"
        self.interval = self.asking = terms.interval
        self.refresher = terms.refresher
        self._started_at = now
        self._refresh_at = now + terms.interval / 2 if terms.refresher == "us" else None
        self._attempts = 0

    def answered(self, headers: Headers, now: float) -> None:
        """The 2xx to an INVITE of ours that asked for no particular interval: its Session-Expires sets the
        terms (refresher "uac" is us); without one we keep our own timer as a keep-alive, refreshing it
        ourselves, as we do for a UAS call whose INVITE asked for none."""
        self.learn(headers)
        self.asking = self.policy.session_expires
        text = headers.get("Session-Expires")
        try:
            answered = SessionExpires.parse(text) if text is not None else None
        except SipParseError:
            answered = None
        if answered is None:
            self.start(Accepted(self.policy.session_expires, "us", False), now)
            return
        refresher: Refresher = "peer" if answered.refresher == "uas" else "us"
        self.start(Accepted(max(answered.interval, self.policy.min_se), refresher, True), now)

    def stop(self) -> None:
        self.state = "off"
        self._refresh_at = None

    @property
    def ends_at(self) -> float | None:
        """When the session ends without a successful refresh (RFC 4028 10)."""
        if self.state not in ("running", "refreshing"):
            return None
        return self._started_at + self.interval - min(END_MARGIN_MAX, self.interval / 3)

    @property
    def next_deadline(self) -> float | None:
        ends_at = self.ends_at
        if ends_at is None:
            return None
        if self.state == "running" and self._refresh_at is not None:
            return min(self._refresh_at, ends_at)
        return ends_at

    def timeout(self, now: float) -> list[TimerAction]:
        ends_at = self.ends_at
        if ends_at is None:
            return []
        if now >= ends_at:
            self.state = "expired"
            return [Expire("session-expired")]
        if self.state == "running" and self._refresh_at is not None and now >= self._refresh_at:
            return self._refresh(self.method)
        return []

    # -- our refreshes ---------------------------------------------------------------------------

    def refresh_headers(self) -> list[tuple[str, str]]:
        """Session-Expires and Min-SE for a refresh of ours (RFC 4028 7.4): we stay the refresher."""
        return [("Session-Expires", f"{self.asking};refresher=uac"), ("Min-SE", str(self.min_se))]

    def on_response(self, status: int, headers: Headers | None, now: float) -> list[TimerAction]:
        """The final response to our refresh (``status`` 0: none came, or the peer could not be reached)."""
        if 200 <= status < 300 and headers is not None:
            if self.state in ("running", "refreshing"):
                self._accept_answer(headers, now)
            return []
        if self.state != "refreshing":
            return []  # the peer refreshed meanwhile, or the session is over: nothing to retry
        method = self._pending_method
        if status in (0, 408, 481):
            self.state = "expired"
            return [Expire("refresh-failed")]
        if status == 422 and self._attempts < RETRIES and headers is not None:
            wanted = _lenient_min_se(headers)
            if wanted > self.asking:
                self.min_se = max(self.min_se, wanted)
                self.asking = wanted  # the interval in force only changes with a 2xx
                return self._refresh(method)
        if status == 491 and self._attempts < RETRIES:
            low, high = self.glare_delay
            return self._retry_at(now + low + (high - low) * self._random())
        if status in (405, 501) and method == "UPDATE":
            self.peer_allows_update = False
            return self._refresh("INVITE")
        # The peer is there but did not refresh: try again later, until the session ends.
        return self._retry_at(now + max(1.0, self.interval / 10))

    def _refresh(self, method: str) -> list[TimerAction]:
        self.state = "refreshing"
        self._refresh_at = None
        self._pending_method = method
        self._attempts += 1
        return [Refresh(method)]

    def _retry_at(self, at: float) -> list[TimerAction]:
        self.state = "running"
        self._refresh_at = at
        return []

    def _accept_answer(self, headers: Headers, now: float) -> None:
        """A 2xx to our refresh renegotiates (RFC 4028 7.2): its refresher "uac" is us. Without
        Session-Expires, a peer that knows timers turned them off; one that does not just answered the
        re-INVITE or UPDATE we use as our own keep-alive, which goes on."""
        self.learn(headers)
        text = headers.get("Session-Expires")
        if text is None:
            if self.peer_supports_timer:
                self.stop()
            else:
                self.start(Accepted(self.asking, "us", False), now)
            return
        try:
            answered = SessionExpires.parse(text)
        except SipParseError:
            answered = SessionExpires(self.asking, "uac")
        refresher: Refresher = "peer" if answered.refresher == "uas" else "us"
        self.start(Accepted(max(answered.interval, self.policy.min_se), refresher, True), now)


def _lenient_min_se(headers: Headers) -> int:
    try:
        return min_se_of(headers)
    except SipParseError:
        return 0


__all__ = [
    "Accepted",
    "Expire",
    "IntervalTooSmall",
    "Refresh",
    "SessionExpires",
    "SessionTimer",
    "TimerAction",
    "TimerPolicy",
    "negotiate",
    "supports_timer",
]
