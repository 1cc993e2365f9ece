"""One INVITE dialog usage, answered (UAS) or placed (UAC), as a sans-I/O state machine.

The core owns the call's dialog, its offer/answer state (RFC 3264; late offers, re-INVITE and UPDATE offers,
glare), reliable provisional responses (RFC 3262), the session timer (RFC 4028) and transfer by REFER in both
directions (RFC 3515, RFC 3891). It never touches a socket or a clock: every method takes what happened and
``now``, and returns a list of actions for the shell to carry out:

- ``Respond``: answer a request through its server transaction;
- ``SendRequest``: send a request in a new client transaction, then feed each response to ``receive_response``
  (provisional ones too) or its failure (timeout, transport error) to ``request_failed``;
- ``SendAck``: send an ACK for a 2xx, outside any transaction (RFC 3261 13.2.2.4);
- ``Retransmit``: send our 2xx or reliable 18x to an INVITE again, where the INVITE came from;
- events for the layer above: ``Progress``, ``Established``, ``MediaChanged``, ``Held``, ``Dtmf``,
  ``ProvisionalAcked``, ``TransferProgress``, ``Referred`` and, once, ``Ended``.

The shell calls ``timeout(now)`` whenever ``now >= next_deadline`` (2xx and 18x retransmissions, the session
timer, a ring timeout, a CANCEL that gets no final response). Transactions stay the shell's
(``transaction.py``): the core sees only final and provisional responses, and requests that are not
retransmissions.

States (``TRANSITIONS``): a placed call goes calling → ringing (18x) → confirmed (2xx, ACKed) or cancelling
→ ended; an answered call ringing → answering (our 2xx, until its ACK) → confirmed → ended.
"""

from __future__ import annotations

import logging
import random as _random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sipagent.errors import SdpError, SipBuildError, SipParseError
from sipagent.sdp import NegotiatedMedia, SessionDescription, SrtpPolicy
from sipagent.sip.auth import DigestAuthenticator, DigestCredentials
from sipagent.sip.bodies import parse_dtmf_relay, sipfrag, sipfrag_status
from sipagent.sip.dialog import Dialog
from sipagent.sip.headers import CSeq, Via, new_branch, new_call_id, new_tag
from sipagent.sip.message import REASONS, Headers, SipRequest, SipResponse, build_response
from sipagent.sip.offer_answer import OfferAnswer, media_key
from sipagent.sip.session_timer import (
    Accepted,
    Expire,
    IntervalTooSmall,
    Refresh,
    SessionTimer,
    TimerAction,
    TimerPolicy,
)
from sipagent.sip.transaction import T1, Send, TimeoutEvent, Uas2xxRetransmitter

logger = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE, PRACK"
ACCEPT = "application/sdp, application/dtmf-relay, message/sipfrag"
INFO_ACCEPT = "application/dtmf-relay"  # the only INFO body we act on
SUPPORTED = "timer, 100rel"
SUPPORTED_OPTIONS = frozenset(option.strip() for option in SUPPORTED.split(","))
# Our own INVITEs do not offer 100rel: a reliable 18x would need our PRACK, and we have nothing to gain from it.
# Only a far end that refuses the INVITE without it (421 with Require: 100rel: Asterisk's 100rel=required) gets
# it again with 100rel, and its reliable 18x their PRACK (RFC 3262 4).
UAC_SUPPORTED = "timer"
# A REFER whose outcome is still unknown blocks the next one this long (a second could transfer the caller
# twice); past it, the far end is taken to have given up (Asterisk drops the transferor 60 s on).
REFER_UNDECIDED_S = 120.0
# A CSeq or RSeq number: ASCII digits (str.isdigit() takes "²", which int() refuses).
_SEQ_NUMBER = re.compile(r"[0-9]{1,10}")

# Which state may follow which: every change of ``CallCore.state`` goes through this table.
TRANSITIONS: dict[str, frozenset[str]] = {
    "calling": frozenset({"ringing", "confirmed", "cancelling", "ended"}),  # UAC: our INVITE is out
    "ringing": frozenset({"answering", "confirmed", "cancelling", "ended"}),  # 18x sent (UAS) or received (UAC)
    "cancelling": frozenset({"ended"}),  # UAC: CANCEL sent, or due once a provisional response comes
    "answering": frozenset({"confirmed", "ended"}),  # UAS: our 2xx is out, its ACK not yet in
    "confirmed": frozenset({"ended"}),
    "ended": frozenset(),
}

MAX_FORKS = 8  # other branches of one INVITE that answered too and get ACK + BYE
# PRACKs one call of ours sends: a ring and a progress or two per branch; a far end sending reliable 18x with a
# new RSeq each time would otherwise get a transaction (and its retransmissions) for every one.
MAX_PRACKS = 16
# A 2xx to our INVITE makes a dialog whose every request repeats its To tag and its Record-Route entries. Real
# PBXs and proxies write tags of 8-40 characters and a handful of routes; a 10 KB tag or hundreds of routes
# would be copied into each ACK, BYE and re-INVITE (past a UDP datagram): such a 2xx makes no dialog.
MAX_TAG_LENGTH = 128
MAX_ROUTES = 16

# What the final response to our INVITE means for the layer above: a 5xx, or a refusal of our offer (488,
# 606), is "failed" (the PBX or our configuration, not the callee); every other 3xx-6xx is "rejected".
OUTCOME_BY_STATUS = {486: "busy", 600: "busy", 408: "no-answer", 480: "no-answer", 487: "cancelled",
                     488: "failed", 606: "failed"}

# Headers of our own INVITE that a caller of ``outgoing`` may not set: the core writes them.
RESERVED_HEADERS = frozenset(name.lower() for name in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Route", "Content-Type", "Content-Length",
    "Authorization", "Proxy-Authorization", "Require", "Supported", "Allow",
))


class SipTimeout(Exception):
    """A request got no final response (timer B/F), or the transport could not reach the peer."""


# -- actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Respond:
    request: SipRequest
    response: SipResponse


@dataclass(frozen=True)
class SendRequest:
    request: SipRequest


@dataclass(frozen=True)
class SendAck:
    request: SipRequest


@dataclass(frozen=True)
class EndFork:
    """A 2xx from another branch of our forked INVITE, after the call took the first one's dialog (RFC 3261
    13.2.2.4): ACK it and, the first time, end that branch's dialog with ``bye``. Both go to that dialog's
    next hop; the BYE's answer concerns no one (the call goes on with its own dialog)."""

    dialog: Dialog
    ack: SipRequest
    bye: SipRequest | None


@dataclass(frozen=True)
class Retransmit:
    data: bytes


@dataclass(frozen=True)
class Progress:
    """A provisional response to our INVITE: ``media`` when it carried an SDP answer (early media)."""

    status: int
    media: NegotiatedMedia | None


@dataclass(frozen=True)
class Established:
    """The call is up: our 2xx was ACKed (UAS) or the 2xx to our INVITE came and we ACKed it (UAC)."""

    media: NegotiatedMedia


@dataclass(frozen=True)
class MediaChanged:
    media: NegotiatedMedia


@dataclass(frozen=True)
class Held:
    """The far end put us on hold (``held``) or took us off it."""

    held: bool


@dataclass(frozen=True)
class Dtmf:
    digit: str
    duration: int


@dataclass(frozen=True)
class ProvisionalAcked:
    """The PRACK of our reliable 180 came: the call may now be answered."""


@dataclass(frozen=True)
class TransferProgress:
    """Our REFER's fate: ``phase`` "refer" is its final response (0: none came; 491: not sent, as the REFER
    before it is still undecided), "notify" a status the transfer target reported in a NOTIFY sipfrag (a 2xx:
    the transfer succeeded and the call is ended; a subscription terminated without a final status counts as
    500), "ended" the call ending before any final status: 200 when the far end hung up after accepting the
    REFER (a PBX that takes the caller away and drops our leg, as Asterisk may), 487 otherwise."""

    phase: str
    status: int


@dataclass(frozen=True)
class ReofferAnswered:
    """The final response to our mid-call offer (``reoffer``): its status (0: none came) and the SDP answer of
    a 2xx (already taken: ``MediaChanged`` follows when it moved the media)."""

    status: int
    answer: bytes


@dataclass(frozen=True)
class Referred:
    """The far end REFERs us to ``refer_to``: answer with ``answer_refer``, then report the outcome with
    ``notify_transfer``."""

    refer_to: str
    referred_by: str | None


@dataclass(frozen=True)
class Ended:
    """The call is over. ``reason`` is the end reason ("remote-bye", "local-bye", "cancelled", "busy",
    "no-answer", "rejected", "failed", ...); ``status`` the final status of our INVITE when it was refused."""

    reason: str
    status: int = 0
    detail: str = ""


CallAction = (Respond | SendRequest | SendAck | EndFork | Retransmit | Progress | Established | MediaChanged | Held
              | Dtmf | ProvisionalAcked | TransferProgress | ReofferAnswered | Referred | Ended)


@dataclass(frozen=True)
class CallConfig:
    """What one call needs from the UA: codecs in our order, SRTP policy for its signalling, session timer
    bounds, our Contact and Via sent-by for it, and the transport (reliable: no retransmissions)."""

    codecs: tuple[str, ...]
    local_contact: str
    via_sent_by: str
    transport: str = "UDP"
    reliable: bool = False
    srtp: SrtpPolicy = field(default_factory=SrtpPolicy)
    timer_policy: TimerPolicy = field(default_factory=TimerPolicy)
    user_agent: str = "sipagent"
    accept_refer: bool = False  # the far end may transfer us (202 + NOTIFY); otherwise REFER gets 405
    random: Callable[[], float] = _random.random


@dataclass
class _Reliable:
    """A response of ours re-sent until acknowledged: a 2xx until its ACK, a reliable 18x until its PRACK."""

    request: SipRequest
    retransmitter: Uas2xxRetransmitter
    carries_offer: bool = False  # a 2xx with our offer: its ACK carries the answer
    rseq: int = 0  # of a reliable 18x

    @property
    def pending(self) -> bool:
        return not self.retransmitter.done


def decorate(request: SipRequest, status: int, response: SipResponse, user_agent: str,
             contact: str | None = None, extra: list[tuple[str, str]] | None = None) -> None:
    """The headers every response of ours carries for its method (Allow, Accept, Supported, Contact of an
    OPTIONS, Server), then ``extra``."""
    if request.method == "OPTIONS" and status < 300 and contact and "Contact" not in response.headers:
        response.headers.add("Contact", contact)
    if request.method in ("INVITE", "OPTIONS") or status == 405:
        response.headers.add("Allow", ALLOW)
    if request.method == "OPTIONS":
        response.headers.add("Accept", ACCEPT)
    if request.method == "OPTIONS" or (request.method in ("INVITE", "UPDATE") and 100 < status < 300):
        response.headers.add("Supported", SUPPORTED)
    response.headers.add("Server", user_agent)
    for name, value in extra or []:
        response.headers.add(name, value)


def options_of(request: SipRequest | SipResponse, header: str) -> list[str]:
    return [option.strip().lower() for option in request.headers.get_all(header)]


def _top_branch(message: SipResponse) -> str | None:
    vias = message.headers.get_all("Via")
    return Via.parse(vias[0]).branch if vias else None


def unsupported(request: SipRequest) -> list[str]:
    """The options a request requires that we do not support (RFC 3261 8.2.2.3: 420)."""
    return [option for option in options_of(request, "Require") if option not in SUPPORTED_OPTIONS]


def outcome_of(status: int) -> str:
    """The dial outcome of a final status to our INVITE: busy, no-answer, cancelled, failed or rejected."""
    return OUTCOME_BY_STATUS.get(status, "failed" if 500 <= status < 600 else "rejected")


def _printable(text: str, limit: int = 80) -> str:
    """Far-end text for an end detail or a log line: printable characters only, bounded."""
    return "".join(c for c in text[: limit * 4] if c.isprintable())[:limit]


def refusal_detail(response: SipResponse) -> str:
    """Words on a final refusal of our INVITE: its reason phrase, where a 3xx redirects to (the Contact, never
    followed) and a Retry-After (a 486, 503 or 603 may carry one; never retried here: the dialer decides)."""
    detail = response.reason
    if 300 <= response.status < 400:
        contact = response.headers.get("Contact") or ""
        detail = f"{detail}; redirected to {contact.strip()[:120] or 'nowhere'}, not followed"
    retry_after = (response.headers.get("Retry-After") or "").split(";")[0].split("(")[0].strip()
    if retry_after.isascii() and retry_after.isdigit() and len(retry_after) <= 6:
        detail = f"{detail}; Retry-After {int(retry_after)} s"
    return _printable(detail, 160)


@dataclass(frozen=True)
class _Sent:
    """One in-dialog request of ours awaiting its final response: what it is for, and what a retry with
    credentials must carry again (the dialog writes the rest)."""

    purpose: str
    body: bytes = b""
    content_type: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


class CallCore:
    """One call. Build it with ``incoming`` (an INVITE we received) or ``outgoing`` (one we will send)."""

    def __init__(self, role: str, invite: SipRequest, config: CallConfig, dialog: Dialog | None) -> None:
        self.role = role  # "uas" or "uac"
        self.invite = invite  # the INVITE that made the call (UAC: the last one sent, after auth retries)
        self.config = config
        self.dialog = dialog
        self.state = "ringing" if role == "uas" else "calling"
        self.sdp = OfferAnswer(config.codecs, config.srtp)
        self.end_reason = ""
        self.end_status = 0
        self.end_detail = ""  # a few words on why (the reason phrase of a refusal, "no answer to our INVITE")
        # Why ``answer`` failed, for the front to raise: an SdpError, or SipTimeout when no ACK came.
        self.answer_error: Exception | None = None
        self.timer = SessionTimer(config.timer_policy, config.random, owns_call_id=role == "uac")
        self.offer: SessionDescription | None = None  # UAS: the INVITE's offer (None: a late offer)
        # What the far end said it supports or requires (RFC 3261 20.37): from its INVITE (UAS) or from its 2xx
        # to ours (UAC). What it has not advertised is never asked of it.
        self.peer_options: frozenset[str] = frozenset()
        self._ok: _Reliable | None = None  # our 2xx to an INVITE, until its ACK
        self._ringing: _Reliable | None = None  # our reliable 180, until its PRACK
        self._sent: dict[tuple[int, str], _Sent] = {}  # (CSeq number, method) of our requests -> what they are for
        self._refreshing: str | None = None  # the method of our session refresh in flight
        self._reoffer: SessionDescription | None = None  # what we offered before our re-INVITE in flight
        self._last_ack: SipRequest | None = None  # our ACK to the last 2xx: sent again for its retransmissions
        self._forks: dict[str, tuple[Dialog, SipRequest]] = {}  # other branches' 2xx by To tag: dialog, our ACK
        self._auth: DigestAuthenticator | None = None
        self._route: list[str] = []
        self._extra: list[tuple[str, str]] = []
        self._ring_deadline: float | None = None  # UAC: CANCEL when nobody answers by then
        self._cancel_deadline: float | None = None  # UAC: the INVITE is given up when no final comes by then
        self._cancel_reason = "cancelled"
        self._cancel_detail = ""
        self._cancel_due = False  # UAC: CANCEL once a provisional response shows the INVITE arrived
        self._provisional = False
        self._offers_100rel = False  # UAC: our INVITE was refused 421 for want of 100rel, and now offers it
        # UAC, when we offer 100rel: each branch's early dialog (to PRACK its reliable 18x in) and the RSeq of the
        # last one we PRACKed, by To tag (at most MAX_FORKS).
        self._early: dict[str, tuple[Dialog, int]] = {}
        self._pracks = 0
        self._early_media_refused = False  # logged once
        # UAC: the last SDP of an unreliable 18x per To tag (at most MAX_FORKS), for a 2xx of that branch that
        # carries no answer of its own.
        self._early_answers: dict[str, bytes] = {}
        self._refer_in: str | None = None  # the Event id (its CSeq number) of a REFER we accepted
        # The implicit subscription of a REFER of ours (RFC 3515): from the REFER until a NOTIFY says it is
        # terminated, or the REFER fails. Only then does a NOTIFY report an outcome, and only one final one.
        self._refer_out = False
        self._refer_reported = False  # its final outcome went up already
        self._refer_accepted = False  # it got its 2xx (202)
        self._refer_sent_at = 0.0
        # The CSeq numbers of the REFER (with its authenticated retries): a NOTIFY's Event id names the one it
        # reports on (RFC 3515 2.4.6), so a late NOTIFY of an earlier transfer decides nothing of this one.
        self._refer_seqs: set[int] = set()
        self._refer_pending: SipRequest | None = None  # a REFER the layer above has not answered yet
        self._handlers: dict[str, Callable[[SipRequest, float], list[CallAction]]] = {
            "BYE": self._on_bye, "INVITE": self._on_reinvite, "UPDATE": self._on_update, "PRACK": self._on_prack,
            "INFO": self._on_info, "NOTIFY": self._on_notify, "REFER": self._on_refer, "OPTIONS": self._on_options,
        }

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def incoming(cls, invite: SipRequest, config: CallConfig, offer: SessionDescription | None) -> CallCore:
        """The UAS side of ``invite`` (already screened and admitted; ``offer`` its parsed SDP, None for a
        late offer). Raises SipParseError when the INVITE cannot make a dialog (no Contact, no From tag)."""
        core = cls("uas", invite, config, Dialog.from_invite(invite, config.local_contact))
        core.offer = offer
        core.peer_options = frozenset(options_of(invite, "Supported") + options_of(invite, "Require"))
        core.timer.learn(invite.headers)
        return core

    @classmethod
    def outgoing(cls, target: str, from_aor: str, config: CallConfig, *, credentials: DigestCredentials | None = None,
                 route: list[str] | None = None, headers: list[tuple[str, str]] | None = None,
                 call_id: str | None = None) -> CallCore:
        """The UAC side of a call to ``target`` (a SIP URI) from ``from_aor``; ``route`` is a pre-loaded route
        (an outbound proxy), ``headers`` extra headers for the INVITE (ValueError for one the core writes)."""
        for name, _ in headers or []:
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is written by the call itself")
        invite_headers = Headers()
        invite_headers.add("From", f"<{from_aor}>;tag={new_tag()}")
        invite_headers.add("To", f"<{target}>")
        invite_headers.add("Call-ID", call_id or new_call_id())
        invite_headers.add("CSeq", str(CSeq(1, "INVITE")))
        core = cls("uac", SipRequest("INVITE", target, invite_headers), config, None)
        core._auth = DigestAuthenticator(credentials) if credentials is not None else None
        core._route = list(route or [])
        core._extra = list(headers or [])
        return core

    # -- what the shell asks -----------------------------------------------------------------------

    @property
    def media(self) -> NegotiatedMedia | None:
        """The media negotiated so far (None before an answer)."""
        return self.sdp.media

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    @property
    def awaiting_prack(self) -> bool:
        return self._ringing is not None and self._ringing.pending

    @property
    def cancel_deferred(self) -> bool:
        """A CANCEL waits for a provisional response to our INVITE before it may go (RFC 3261 9.1)."""
        return self._cancel_due

    def matches(self, request: SipRequest) -> bool:
        """Whether a request belongs to this call's dialog (Call-ID and both tags)."""
        return self.dialog is not None and self.dialog.matches(request)

    def is_retransmitted_invite(self, request: SipRequest) -> bool:
        """The INVITE that made this (answered) call, sent again after our 2xx ended its transaction."""
        return (self.role == "uas" and request.method == "INVITE" and not request.to_addr.tag
                and request.branch == self.invite.branch)

    @property
    def next_deadline(self) -> float | None:
        deadlines = [self._ring_deadline, self._cancel_deadline]
        for pending in (self._ok, self._ringing):
            if pending is not None:
                deadlines.append(pending.retransmitter.next_deadline)
        if self.state != "ended":
            deadlines.append(self.timer.next_deadline)
        return min((d for d in deadlines if d is not None), default=None)

    def timeout(self, now: float) -> list[CallAction]:
        actions: list[CallAction] = []
        if self._ringing is not None:
            actions += self._reliable_due(self._ringing, now, self._no_prack)
        if self._ok is not None:
            actions += self._reliable_due(self._ok, now, self._no_ack)
        if self._ring_deadline is not None and now >= self._ring_deadline:
            self._ring_deadline = None
            logger.info("call %s: nobody answered in time, cancelling", self.call_id)
            actions += self.cancel(now, reason="no-answer")
        if self._cancel_deadline is not None and now >= self._cancel_deadline:
            self._cancel_deadline = None
            actions += self._end(self._cancel_reason,
                                 detail=self._cancel_detail or "no final response after CANCEL")
        if self.state != "ended":
            actions += self._drive_timer(self.timer.timeout(now), now)
        return actions

    # -- UAS: answering ----------------------------------------------------------------------------

    def ring(self, now: float) -> list[CallAction]:
        """180 Ringing; reliably (re-sent until its PRACK, RFC 3262) when the INVITE requires 100rel."""
        assert self.dialog is not None
        if "100rel" not in options_of(self.invite, "Require"):
            # With only Supported: 100rel an unreliable 180 is still allowed (RFC 3262 3), and simpler.
            return [self._respond(self.invite, 180)]
        rseq = int(self.config.random() * (2**31 - 2)) + 1
        action = self._respond(self.invite, 180, extra=[("Require", "100rel"), ("RSeq", str(rseq))])
        self._ringing = _Reliable(self.invite, self._retransmitter(action.response, now), rseq=rseq)
        return [action]

    def answer(self, rtp_host: str, rtp_port: int, now: float) -> list[CallAction]:
        """Our 2xx with the SDP answer (or our offer, after a late offer), re-sent until its ACK. When no codec
        matches: 488 and the call ends ("rejected-sdp", ``answer_error`` set)."""
        self._require("ringing", "answer")
        if self.awaiting_prack:
            raise RuntimeError("the PRACK of our reliable 180 has not come yet")
        if self.offer is None:
            sdp = self.sdp.offer(rtp_host, rtp_port)
        else:
            try:
                sdp = self.sdp.answer(self.offer, rtp_host, rtp_port)
            except SdpError as exc:
                self.answer_error = exc
                return [self._respond(self.invite, 488), *self._end("rejected-sdp", detail=str(exc))]
        self._goto("answering")
        assert self.dialog is not None
        self.dialog.confirm()
        terms = self.timer.negotiate(self.invite.headers)  # admission refused what this could raise on
        action = self._respond(self.invite, 200, body=sdp.to_bytes(), extra=terms.headers())
        self._ok = _Reliable(self.invite, self._retransmitter(action.response, now), carries_offer=self.offer is None)
        self.timer.start(terms, now)
        logger.info("call %s: session timer %d s, refreshed by %s", self.call_id, terms.interval,
                    "us" if terms.refresher == "us" else "the peer")
        return [action]

    def reject(self, status: int, now: float, reason: str = "rejected") -> list[CallAction]:
        """A final error response to the INVITE we have not answered (486 by default in the front)."""
        self._require("ringing", "reject")
        return [self._respond(self.invite, status), *self._end(reason)]

    def cancelled(self, now: float) -> list[CallAction]:
        """The caller sent CANCEL (the shell answered it 200): 487 to a ringing INVITE."""
        if self.role != "uas" or self.state != "ringing":
            return []
        return [self._respond(self.invite, 487), *self._end("cancelled")]

    # -- UAC: dialing ------------------------------------------------------------------------------

    def dial(self, rtp_host: str, rtp_port: int, now: float, ring_timeout: float | None = None) -> list[CallAction]:
        """Send our INVITE with an SDP offer of every codec we carry; CANCEL after ``ring_timeout`` seconds."""
        self._require("calling", "dial")
        self.sdp.offer(rtp_host, rtp_port)
        if ring_timeout is not None:
            self._ring_deadline = now + ring_timeout
        return [self._send_invite(self.invite.cseq.seq, [])]

    def cancel(self, now: float, reason: str = "cancelled", detail: str = "") -> list[CallAction]:
        """Give up a call we placed before it is answered (RFC 3261 9.1): CANCEL at once when a provisional
        response showed the INVITE arrived, else as soon as one does. The call ends with ``reason`` when the
        INVITE's final response (487) comes; a 2xx that crosses the CANCEL is ACKed and ended with BYE."""
        if self.role != "uac" or self.state not in ("calling", "ringing"):
            return []
        self._cancel_reason, self._cancel_detail = reason, detail
        self._ring_deadline = None
        self._goto("cancelling")
        self._cancel_deadline = now + 64 * T1
        if not self._provisional:
            self._cancel_due = True
            return []
        return [self._send_cancel()]

    # -- both roles ----------------------------------------------------------------------------------

    def hangup(self, now: float) -> list[CallAction]:
        """End the call: BYE once answered; 487 to a ringing INVITE; CANCEL for a call we are placing."""
        if self.state == "ended":
            return []
        if self.role == "uac" and self.state in ("calling", "ringing", "cancelling"):
            return self.cancel(now)
        if self.state == "ringing":
            return [self._respond(self.invite, 487), *self._end("local-cancel")]
        return self._bye("local-bye")

    def end(self, status: int, now: float, reason: str) -> list[CallAction]:
        """End the call for a reason of the layer above: ``status`` to a ringing INVITE (480 on shutdown, 500
        after an error), else BYE."""
        if self.state == "ended":
            return []
        if self.role == "uas" and self.state == "ringing":
            return [self._respond(self.invite, status), *self._end(reason)]
        if self.role == "uac" and self.state in ("calling", "ringing", "cancelling"):
            return self.cancel(now, reason)
        return self._bye(reason)

    def peer_hung_up(self, request: SipRequest, now: float) -> list[CallAction]:
        """A BYE the shell answered statelessly (over its transaction limits: a flood must not keep a dead call
        up): the call ends when the BYE is in order."""
        if self.state == "ended" or self.dialog is None or not self.dialog.matches(request):
            return []
        if self.dialog.check_request(request) is not None:
            return []
        return self._end("remote-bye")

    def reoffer(self, offer: SessionDescription, now: float) -> list[CallAction]:
        """Offer ``offer`` in a re-INVITE (hold, resume, another codec: RFC 3264 8); the outcome comes as
        ``ReofferAnswered``. A refused offer leaves the session as it was. RuntimeError while another offer
        is outstanding."""
        self._require("confirmed", "re-offer on")
        if self._our_offer_pending() or self._their_offer_pending():
            raise RuntimeError("an offer is outstanding in this call")
        self._reoffer = self.sdp.local
        self.sdp.local = offer
        return [self._in_dialog("INVITE", "reoffer", body=offer.to_bytes(), content_type="application/sdp",
                                extra=[("Allow", ALLOW)])]

    def transfer(self, refer_to: str, now: float, referred_by: str | None = None) -> list[CallAction]:
        """REFER the far end to ``refer_to`` (a name-addr, ``<sip:...>``, possibly with ``?Replaces=``); the
        outcome comes as ``TransferProgress``; on a 2xx in a NOTIFY the call ends ("transferred")."""
        self._require("confirmed", "transfer")
        if self._refer_out and not self._refer_reported and now - self._refer_sent_at < REFER_UNDECIDED_S:
            # The far end has not said what became of our last REFER (its NOTIFY is late, or the layer above
            # stopped waiting): it may still be putting the caller through. A second REFER now could have the
            # caller transferred twice, or to two places; it fails at once, and nothing is sent. Not for good:
            # a far end silent this long is not putting anyone through any more.
            logger.info("call %s: REFER not sent: the one before it is still undecided", self.call_id)
            return [TransferProgress("refer", 491)]
        extra = [("Refer-To", refer_to)]
        if referred_by:
            extra.append(("Referred-By", referred_by))
        self._refer_out, self._refer_reported, self._refer_accepted = True, False, False
        self._refer_sent_at = now
        self._refer_seqs = set()
        return [self._in_dialog("REFER", "refer", extra=extra)]

    def notify_transfer(self, status: int, now: float) -> list[CallAction]:
        """Report the transfer the far end asked of us (``Referred``): a NOTIFY with a sipfrag of ``status``;
        a final status ends the subscription."""
        if self._refer_in is None or self.state != "confirmed":
            return []
        event_id = self._refer_in
        final = status >= 200
        state = "terminated;reason=noresource" if final else "active;expires=60"
        if final:
            self._refer_in = None
        return [self._in_dialog("NOTIFY", "notify", body=sipfrag(status, REASONS.get(status, "Unknown")),
                                content_type="message/sipfrag",
                                extra=[("Event", f"refer;id={event_id}"), ("Subscription-State", state)])]

    # -- requests in -------------------------------------------------------------------------------

    def receive_request(self, request: SipRequest, now: float) -> list[CallAction]:
        """A request in this call's dialog (the shell checked ``matches``), or the ACK of our 2xx."""
        if request.method == "ACK":
            return self._on_ack(request, now)
        if self.dialog is None or not self.dialog.matches(request):
            return [self._respond(request, 481)]
        if self.state == "ended":
            # A BYE sent again, or crossing ours: the call is over either way.
            return [self._respond(request, 200 if request.method == "BYE" else 481)]
        error = self.dialog.check_request(request)
        if error is not None:
            return [self._respond(request, error, reason="CSeq Out of Order" if error == 500 else None)]
        if request.method in ("INVITE", "UPDATE"):
            missing = unsupported(request)
            if missing:
                return [self._respond(request, 420, extra=[("Unsupported", ", ".join(missing))])]
        handler = self._handlers.get(request.method)
        if handler is None:
            return [self._respond(request, 405 if request.method in ("SUBSCRIBE", "MESSAGE") else 501)]
        return handler(request, now)

    def _on_options(self, request: SipRequest, now: float) -> list[CallAction]:
        return [self._respond(request, 200)]

    def _on_bye(self, request: SipRequest, now: float) -> list[CallAction]:
        actions: list[CallAction] = [self._respond(request, 200)]
        if self.role == "uas" and self.state == "ringing":
            # A BYE in the early dialog (RFC 3261 15.1.2): the INVITE still needs its final response, or the
            # PBX's INVITE transaction waits for one until its timer gives up.
            actions.append(self._respond(self.invite, 487))
        if self._refer_out and self._refer_accepted and not self._refer_reported:
            # The far end accepted our REFER and hangs up before reporting any final status: a PBX that takes
            # the caller away and drops the transferor's leg (Asterisk when the agent's channel is hung up
            # during the transfer, or its BYE 60 s on while the caller still waits in a silent queue; the
            # NOTIFYs may come after it). The call went where it was transferred.
            logger.info("call %s: transferred (BYE after the REFER's 2xx, before a final NOTIFY)", self.call_id)
            self._refer_reported = True
            return [*actions, TransferProgress("ended", 200), *self._end("transferred")]
        return [*actions, *self._end("remote-bye")]

    def _on_ack(self, request: SipRequest, now: float) -> list[CallAction]:
        ok = self._ok
        if ok is None or not ok.pending or self.dialog is None or not self.dialog.matches(request):
            return []
        if request.cseq.seq != ok.request.cseq.seq:
            return []
        ok.retransmitter.ack_received()
        if self.state == "answering":
            self._goto("confirmed")
            if not ok.carries_offer:
                assert self.media is not None
                return [Established(self.media)]
            try:
                media = self.sdp.take_answer(request.body)
            except SdpError as exc:
                logger.warning("call %s: the ACK carried no usable SDP answer (%s), hanging up", self.call_id, exc)
                self.answer_error = exc
                return self._bye("local-bye")
            return [Established(media)]
        if ok.carries_offer and self.state == "confirmed" and request.body.strip():
            # A re-INVITE without SDP (a PBX holding this way, or a refresh): our 2xx carried the offer, their
            # ACK the answer, which may put the call on hold or change its codec.
            return self._take_answer(request.body)
        return []

    def _on_reinvite(self, request: SipRequest, now: float) -> list[CallAction]:
        if self._our_offer_pending():
            # Glare: our re-INVITE (or our offer in a 2xx) crossed theirs (RFC 3261 14.2); each side retries
            # after its random delay (14.1).
            return [self._respond(request, 491)]
        if self.state != "confirmed" or self.sdp.local is None or (self._ok is not None and self._ok.pending):
            # Their previous INVITE is not finished (not answered yet, or our 2xx not ACKed): RFC 3261 14.2 asks
            # for 500 with a random Retry-After, not 491, which would tell them our own INVITE is in flight.
            return [self._respond(request, 500, extra=[("Retry-After", self._retry_after())])]
        terms = self._timer_terms(request)
        if isinstance(terms, Respond):
            return [terms]
        before = self.media
        if request.body:
            refused = self._answer_offer(request)
            if refused is not None:
                return [refused]
        # Without an offer (a session refresh) our current SDP is the offer; the ACK would carry theirs.
        local = self.sdp.local  # our answer to their offer, or our current SDP as our offer
        assert local is not None
        action = self._respond(request, 200, body=local.to_bytes(), extra=terms.headers())
        self._ok = _Reliable(request, self._retransmitter(action.response, now), carries_offer=not request.body)
        self.timer.start(terms, now)
        return [action, *self._media_events(before)]

    def _on_update(self, request: SipRequest, now: float) -> list[CallAction]:
        """UPDATE (RFC 3311): a session refresh without a body, or a new offer answered in its 200."""
        if request.body and self._our_offer_pending():
            return [self._respond(request, 491)]
        if request.body and self._their_offer_pending():
            return [self._respond(request, 500, extra=[("Retry-After", self._retry_after())])]
        if self.state != "confirmed":
            return [self._respond(request, 200)]  # an early UPDATE: no session to refresh yet
        terms = self._timer_terms(request)
        if isinstance(terms, Respond):
            return [terms]
        before = self.media
        body = b""
        if request.body:
            refused = self._answer_offer(request)
            if refused is not None:
                return [refused]
            assert self.sdp.local is not None
            body = self.sdp.local.to_bytes()
        action = self._respond(request, 200, body=body, extra=terms.headers())
        self.timer.start(terms, now)
        return [action, *self._media_events(before)]

    def _on_prack(self, request: SipRequest, now: float) -> list[CallAction]:
        """A PRACK matches our unacknowledged reliable 180 by its RAck (RSeq, CSeq number and method)."""
        fields = (request.headers.get("RAck") or "").split()
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            return [self._respond(request, 400, reason="Bad RAck")]
        ringing = self._ringing
        rack = (int(fields[0]), int(fields[1]), fields[2].upper())
        if ringing is None or not ringing.pending or rack != (ringing.rseq, self.invite.cseq.seq, "INVITE"):
            return [self._respond(request, 481)]
        ringing.retransmitter.ack_received()
        return [self._respond(request, 200), ProvisionalAcked()]

    def _on_info(self, request: SipRequest, now: float) -> list[CallAction]:
        if request.headers.get("Info-Package") is not None:
            # We announce no Recv-Info, so no package is ours to receive (RFC 6086 4.2.2).
            return [self._respond(request, 469, reason="Bad Info Package")]
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/dtmf-relay":
            if not request.body.strip():
                return [self._respond(request, 200)]  # an empty INFO: a keep-alive some PBXs send
            # A body we cannot read (Asterisk's video fast update, AOC, a vendor's DTMF): 200 would claim we
            # acted on it (RFC 3261 8.2.3, RFC 6086 4.2.2 legacy INFO).
            return [self._respond(request, 415, extra=[("Accept", INFO_ACCEPT)])]
        relay = parse_dtmf_relay(request.body)
        if relay is None:
            return [self._respond(request, 400, reason="Bad dtmf-relay Signal")]
        logger.info("call %s: DTMF %s (%d ms) by INFO", self.call_id, relay.digit, relay.duration)
        return [self._respond(request, 200), Dtmf(relay.digit, relay.duration)]

    def _on_notify(self, request: SipRequest, now: float) -> list[CallAction]:
        event = (request.headers.get("Event") or "").split(";")
        if event[0].strip().lower() != "refer":
            return [self._respond(request, 200)]
        if not self._refer_out or not self._refer_event_ours(event[1:]):
            # No REFER of ours, so no subscription (RFC 6665 4.1.3): a "transfer done" from the far end must not
            # end the call as transferred. Nor may the late NOTIFY of an earlier REFER decide this one.
            return [self._respond(request, 481)]
        actions: list[CallAction] = [self._respond(request, 200)]
        status = sipfrag_status(request.body)
        if "terminated" in (request.headers.get("Subscription-State") or "").lower():
            # The subscription ends here; a final status may have come in an earlier NOTIFY (a 503 "active",
            # then "terminated" on its own), and this one is still ours to acknowledge.
            self._refer_out = False
            if (status is None or status < 200) and not self._refer_reported:
                # Over without any final status (no body, a sipfrag we cannot read, or a last "100 Trying"):
                # nothing more will come, so the transfer failed; waiting on would leave the caller in silence.
                status = 500
        if status is None or self._refer_reported:
            return actions
        if status >= 200:
            self._refer_reported = True
        actions.append(TransferProgress("notify", status))
        if 200 <= status < 300:
            logger.info("call %s: transferred", self.call_id)
            actions += self._bye("transferred")
        return actions

    def _refer_event_ours(self, params: list[str]) -> bool:
        """The Event header's ``id`` (its parameters after "refer") names our REFER, or there is none (only
        required when a dialog has seen more than one REFER)."""
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "id":
                value = value.strip()
                return _SEQ_NUMBER.fullmatch(value) is not None and int(value) in self._refer_seqs
        return True

    def _on_refer(self, request: SipRequest, now: float) -> list[CallAction]:
        """The far end asks us to transfer (RFC 3515): refused (405) unless ``accept_refer``; else the layer
        above decides with ``answer_refer``."""
        refer_to = request.headers.get("Refer-To")
        if not self.config.accept_refer:
            return [self._respond(request, 405)]
        if self.state != "confirmed" or not refer_to or self._refer_pending is not None:
            return [self._respond(request, 491 if refer_to else 400)]
        self._refer_pending = request
        return [Referred(refer_to, request.headers.get("Referred-By"))]

    def answer_refer(self, status: int, now: float) -> list[CallAction]:
        """Answer the REFER of the last ``Referred``: a 2xx (202) accepts it and reports "100 Trying" at once
        (the implicit subscription, RFC 3515 2.4.4); the outcome follows with ``notify_transfer``."""
        request, self._refer_pending = self._refer_pending, None
        if request is None or self.state == "ended":
            return []
        actions: list[CallAction] = [self._respond(request, status)]
        if 200 <= status < 300:
            self._refer_in = str(request.cseq.seq)
            actions += self.notify_transfer(100, now)
        return actions

    # -- responses in ------------------------------------------------------------------------------

    def receive_response(self, response: SipResponse, now: float) -> list[CallAction]:
        """A response to a request of ours (provisional or final), or a 2xx re-sent after its transaction."""
        seq, method = response.cseq.seq, response.cseq.method
        if self.role == "uac" and method == "INVITE" and seq == self.invite.cseq.seq:
            # Only an answer to the INVITE we sent last carries its Via branch (a random one, RFC 3261 17.1.3):
            # a response that merely names our Call-ID and CSeq is a third party's and could end or take the call.
            if _top_branch(response) != self.invite.branch:
                return []
            return self._invite_response(response, now)
        sent = self._sent.get((seq, method))
        if sent is None:
            ack = self._last_ack
            if 200 <= response.status < 300 and method == "INVITE" and ack is not None and ack.cseq.seq == seq:
                return [SendAck(ack)]  # the 2xx again: our ACK was lost
            return []
        if response.status < 200:
            return []
        del self._sent[(seq, method)]
        self._accepted(response.status)
        if response.status in (401, 407) and sent.purpose != "cancel":
            retry = self._authenticated_retry(response, method, sent)
            if retry is not None:
                return [retry]
        return self._final(sent.purpose, response.status, response, now)

    def request_failed(self, request: SipRequest, now: float) -> list[CallAction]:
        """A request of ours got no final response, or could not be sent (timeout, transport error, a value
        that would break the message)."""
        seq, method = request.cseq.seq, request.method
        if self.role == "uac" and method == "INVITE" and seq == self.invite.cseq.seq:
            if self.state in ("calling", "ringing"):
                return self._end("failed", detail="no answer to our INVITE")
            if self.state == "cancelling":
                return self._end(self._cancel_reason, detail=self._cancel_detail)
            return []
        sent = self._sent.pop((seq, method), None)
        return self._final(sent.purpose, 0, None, now) if sent is not None else []

    def _final(self, purpose: str, status: int, response: SipResponse | None, now: float) -> list[CallAction]:
        if purpose == "refresh":
            return self._refresh_answered(status, response, now)
        if purpose == "reoffer":
            return self._reoffer_answered(status, response)
        if purpose == "refer":
            if 200 <= status < 300:
                self._refer_accepted = True
            if status >= 300 or not status:
                self._refer_out = False
                logger.info("call %s: REFER %s", self.call_id, f"refused with {status}" if status else "got no answer")
            return [TransferProgress("refer", status)]
        if purpose == "bye":
            logger.info("call %s: BYE %s", self.call_id, f"answered {status}" if status else "got no answer")
        return []

    def _invite_response(self, response: SipResponse, now: float) -> list[CallAction]:
        status = response.status
        if status < 200:
            return self._provisional_response(response, now)
        if status < 300:
            self._accepted(status)
            return self._answered(response, now)
        if self.state not in ("calling", "ringing", "cancelling"):
            return []
        auth = self._answer_challenge(response, "INVITE", self.invite.uri) if self.state != "cancelling" else None
        if auth is not None:
            self._provisional = False
            return [self._send_invite(self.invite.cseq.seq + 1, auth)]
        if (status == 421 and self.state != "cancelling" and not self._offers_100rel
                and "100rel" in options_of(response, "Require")):
            # The far end takes no INVITE without reliable provisional responses: once more, offering them. It may
            # challenge this one afresh: the credentials went through (a 421, not a 401), so that is no loop.
            logger.info("call %s: the far end requires 100rel: offering it", self.call_id)
            self._accepted(status)
            self._offers_100rel = True
            self._provisional = False
            return [self._send_invite(self.invite.cseq.seq + 1, [])]
        if self.state == "cancelling":  # the 487 of our own CANCEL (or a refusal that crossed it): no status
            return self._end(self._cancel_reason, detail=self._cancel_detail)
        detail = refusal_detail(response)
        logger.info("call %s: refused with %d %s", self.call_id, status, detail)
        return self._end(outcome_of(status), status, detail=detail)

    def _provisional_response(self, response: SipResponse, now: float) -> list[CallAction]:
        actions: list[CallAction] = []
        first = not self._provisional
        self._provisional = True
        if self._cancel_due and first:
            self._cancel_due = False
            actions.append(self._send_cancel())
        if response.status == 100 or self.state not in ("calling", "ringing"):
            return actions
        if "100rel" in options_of(response, "Require"):
            if not self._offers_100rel:
                # A reliable 18x to an INVITE that did not offer 100rel (RFC 3262 3 forbids it): it waits for a
                # PRACK we never send, so the far end re-sends it and fails the INVITE with a 5xx after 64*T1, and
                # one with SDP holds back the 2xx until then (RFC 3262 3). Its SDP is no answer we took; the call
                # is given up now, in plain words, instead of ringing on to that end.
                logger.warning("call %s: %d requires 100rel, which our INVITE did not offer: cancelling",
                               self.call_id, response.status)
                return [*actions, *self.cancel(now, "failed", f"the far end's {response.status} requires 100rel "
                                                             "(PRACK), which we do not offer")]
            prack = self._prack(response)
            if prack is None:
                return actions  # a copy of one we PRACKed already, or past MAX_PRACKS: nothing new
            actions += prack
        if self.state == "calling":  # a 183 after the 180, or the 180 a callee re-sends each minute: no change
            self._goto("ringing")
        media = None
        if response.body.strip():
            try:
                media = self.sdp.read_answer(response.body)
                tag = response.to_addr.tag or ""
                if tag in self._early_answers or len(self._early_answers) < MAX_FORKS:
                    self._early_answers[tag] = response.body
            except SdpError as exc:
                # Once a call: a far end can send any number of 18x, and each must not cost a log line.
                if not self._early_media_refused:
                    self._early_media_refused = True
                    logger.info("call %s: early media refused: %s", self.call_id, exc)
        return [*actions, Progress(response.status, media)]

    def _answered(self, response: SipResponse, now: float) -> list[CallAction]:
        """A 2xx to our INVITE: ACK it (every copy); a call we no longer want, or a second fork, gets a BYE."""
        if self.dialog is not None:
            if response.to_addr.tag == self.dialog.remote_tag:
                return [SendAck(self._last_ack)] if self._last_ack is not None else []
            return self._other_branch(response)
        try:
            dialog = self._dialog_of(response)
        except SipParseError as exc:
            logger.warning("call %s: unusable 2xx to our INVITE: %s", self.call_id, exc.reason)
            return self._end("failed", response.status, detail=exc.reason) if self.state != "cancelling" \
                else self._end(self._cancel_reason, detail=self._cancel_detail)
        early = self._early.get(dialog.remote_tag)
        if early is not None:  # our PRACKs used numbers of this dialog already (RFC 3261 12.2.1.1)
            dialog.local_seq = max(dialog.local_seq, early[0].local_seq)
        self.dialog = dialog
        self._ring_deadline = self._cancel_deadline = None
        ack = dialog.create_ack(self.invite, self.config.via_sent_by, self.config.transport)
        self._last_ack = ack
        if self.state == "ended":
            # Too late: we gave the INVITE up (no final response in time, or it could not be sent) and the layer
            # above has the outcome. The far end's session is ended all the same: ACK, then BYE.
            logger.info("call %s: a 2xx after the call ended: ACK and BYE", self.call_id)
            dialog.terminate()
            return [SendAck(ack), self._in_dialog("BYE", "bye")]
        if self.state == "cancelling":
            logger.info("call %s: answered as we cancelled: ACK and BYE", self.call_id)
            return [SendAck(ack), *self._bye(self._cancel_reason, detail=self._cancel_detail)]
        body = response.body
        if not body.strip():
            # RFC 3261 13.2.1: the answer to the INVITE's offer is in the 2xx. One without it is a protocol error,
            # unless the same branch sent its answer in an 18x already (some gateways leave it out of the 2xx
            # then, and common UAs accept that): that one is taken.
            body = self._early_answers.get(response.to_addr.tag or "", b"")
            if not body:
                logger.warning("call %s: %d without an SDP answer to our offer, hanging up", self.call_id,
                               response.status)
                self._goto("confirmed")
                return [SendAck(ack), *self._bye("failed", status=response.status,
                                                 detail=f"{response.status} without an SDP answer to our offer")]
        try:
            media = self.sdp.take_answer(body)
        except SdpError as exc:
            logger.warning("call %s: answered without a usable SDP answer (%s), hanging up", self.call_id, exc)
            self._goto("confirmed")
            return [SendAck(ack), *self._bye("failed", status=response.status, detail=f"bad SDP answer: {exc}")]
        self._goto("confirmed")
        self.peer_options = frozenset(options_of(response, "Supported") + options_of(response, "Require"))
        self.timer.answered(response.headers, now)
        return [SendAck(ack), Established(media)]

    def _other_branch(self, response: SipResponse) -> list[CallAction]:
        """A 2xx with another To tag: a second phone of a ring group answered too. Left alone, it would
        resend its 2xx for 32 s and its user would talk to no one; it gets an ACK and a BYE (one per branch,
        at most MAX_FORKS: more of them are not a ring group but a flood, and their own timers end them)."""
        tag = response.to_addr.tag or ""
        known = self._forks.get(tag)
        if known is not None:
            return [EndFork(known[0], known[1], None)]  # its 2xx again: our ACK was lost
        if len(self._forks) >= MAX_FORKS:
            return []
        try:
            fork = self._dialog_of(response)
            ack = fork.create_ack(self.invite, self.config.via_sent_by, self.config.transport)
            bye = fork.create_request("BYE", self.config.via_sent_by, self.config.transport,
                                      extra=[("User-Agent", self.config.user_agent)])
        except (SipParseError, SipBuildError) as exc:  # debug: each copy of it would log again
            logger.debug("call %s: unusable 2xx from another branch: %s", self.call_id, exc)
            return []
        fork.terminate()
        self._forks[tag] = (fork, ack)
        logger.info("call %s: another branch answered too (To tag %r): ACK and BYE", self.call_id, tag[:40])
        return [EndFork(fork, ack, bye)]

    def _prack(self, response: SipResponse) -> list[CallAction] | None:
        """The PRACK of a reliable 18x to our INVITE (RFC 3262 7.2), in the early dialog of its branch. None: the
        18x is nothing new (a retransmission of one PRACKed already, whose PRACK's own transaction resends it; or
        one past MAX_PRACKS). No action: an 18x without a usable RSeq, To tag or Contact, which is still progress
        (the far end fails the INVITE by itself if it wants a PRACK)."""
        rseq_text = (response.headers.get("RSeq") or "").strip()
        rseq = int(rseq_text) if _SEQ_NUMBER.fullmatch(rseq_text) else 0
        tag = response.to_addr.tag or ""
        known = self._early.get(tag)
        if not 0 < rseq < 2**31 or (known is None and len(self._early) >= MAX_FORKS):
            logger.info("call %s: a reliable %d we cannot PRACK (RSeq %r)", self.call_id, response.status,
                        rseq_text[:20])
            return []
        if known is not None and rseq <= known[1]:
            return None
        if self._pracks >= MAX_PRACKS:
            if self._pracks == MAX_PRACKS:
                logger.warning("call %s: %d reliable provisional responses PRACKed: no more", self.call_id,
                               MAX_PRACKS)
            self._pracks += 1
            return None
        try:
            early = known[0] if known is not None else self._dialog_of(response)
        except SipParseError as exc:
            logger.info("call %s: a reliable %d we cannot PRACK: %s", self.call_id, response.status, exc.reason)
            return []
        self._early[tag] = (early, rseq)
        self._pracks += 1
        rack = ("RAck", f"{rseq} {self.invite.cseq.seq} INVITE")
        request = early.create_request("PRACK", self.config.via_sent_by, self.config.transport,
                                       extra=[rack, ("User-Agent", self.config.user_agent)])
        self._sent[(request.cseq.seq, "PRACK")] = _Sent("prack", extra=(rack,))
        return [SendRequest(request)]

    def _dialog_of(self, response: SipResponse) -> Dialog:
        """The dialog a 2xx to our INVITE makes (RFC 3261 12.1.2), or SipParseError when it cannot carry our
        ACK and BYE: no To tag or Contact, a tag or a route set past any real PBX's (``MAX_TAG_LENGTH``,
        ``MAX_ROUTES``: each request of the dialog would repeat them), or a remote target that is no SIP URI
        (a tel: Contact) with no route to reach it by."""
        tag = response.to_addr.tag or ""
        if len(tag) > MAX_TAG_LENGTH:
            raise SipParseError(f"a To tag of {len(tag)} characters")
        routes = len(response.headers.get_all("Record-Route"))
        if routes > MAX_ROUTES:
            raise SipParseError(f"{routes} Record-Route entries")
        dialog = Dialog.from_response(self.invite, response, self.config.local_contact)
        target = dialog.remote_target
        if not dialog.route_set and (target.scheme not in ("sip", "sips") or not target.host):
            raise SipParseError(f"a Contact we cannot reach ({_printable(str(target), 60)})")
        return dialog

    def fork_bye_challenged(self, fork: EndFork, response: SipResponse) -> SipRequest | None:
        """The BYE of another branch (``fork``) answered ``response``: when that is a challenge a call we placed
        can answer, the BYE again with credentials and the next CSeq; otherwise None (the branch is left to its
        own timers)."""
        auth = self._answer_challenge(response, "BYE", str(fork.dialog.remote_target)) if fork.bye else None
        if auth is None:
            return None
        return fork.dialog.create_request("BYE", self.config.via_sent_by, self.config.transport,
                                          extra=[("User-Agent", self.config.user_agent), *auth])

    # -- helpers -------------------------------------------------------------------------------------

    def _goto(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"call {self.call_id}: no transition {self.state} -> {state}")
        self.state = state

    def _require(self, state: str, what: str) -> None:
        if self.state != state:
            raise RuntimeError(f"cannot {what} a call in state {self.state}")

    def _end(self, reason: str, status: int = 0, detail: str = "") -> list[CallAction]:
        if self.state == "ended":
            return []
        self._goto("ended")
        undecided: list[CallAction] = []
        if self._refer_out and not self._refer_reported:
            # Whoever waits for our REFER's outcome learns at once that there will be none (not after its
            # timeout, with the call already gone).
            self._refer_reported = True
            undecided.append(TransferProgress("ended", 487))
        self.end_reason, self.end_status, self.end_detail = reason, status, detail
        if self.dialog is not None:
            self.dialog.terminate()
        self.timer.stop()
        self._ring_deadline = self._cancel_deadline = None
        for pending in (self._ok, self._ringing):
            if pending is not None:
                pending.retransmitter.ack_received()
        logger.info("call %s ended: %s", self.call_id, reason)
        return [*undecided, Ended(reason, status, detail)]

    def _bye(self, reason: str, status: int = 0, detail: str = "") -> list[CallAction]:
        """End the call and send BYE (the call is over whatever the BYE's fate)."""
        if self.state == "ended":
            return []
        ended = self._end(reason, status, detail)
        return [self._in_dialog("BYE", "bye"), *ended]

    def _respond(self, request: SipRequest, status: int, *, reason: str | None = None, body: bytes = b"",
                 extra: list[tuple[str, str]] | None = None) -> Respond:
        if self.dialog is not None:
            content_type = "application/sdp" if body else None
            response = self.dialog.response(request, status, reason, body=body, content_type=content_type)
        else:
            response = build_response(request, status, reason)
        decorate(request, status, response, self.config.user_agent, self.config.local_contact, extra)
        return Respond(request, response)

    def _retransmitter(self, response: SipResponse, now: float) -> Uas2xxRetransmitter:
        try:
            data = response.to_bytes()
        except SipBuildError:  # the shell answers 500 instead; nothing to re-send
            return Uas2xxRetransmitter(b"", True, now)
        return Uas2xxRetransmitter(data, self.config.reliable, now)

    def _reliable_due(self, pending: _Reliable, now: float,
                      on_give_up: Callable[[_Reliable, float], list[CallAction]]) -> list[CallAction]:
        actions: list[CallAction] = []
        for event in pending.retransmitter.timeout(now):
            if isinstance(event, Send):
                actions.append(Retransmit(event.data))
            elif isinstance(event, TimeoutEvent):
                actions += on_give_up(pending, now)
        return actions

    def _no_prack(self, pending: _Reliable, now: float) -> list[CallAction]:
        if self.state != "ringing":
            return []
        logger.warning("call %s: no PRACK for our reliable 180, refusing the call", self.call_id)
        return [self._respond(self.invite, 500, reason="No PRACK"), *self._end("no-prack")]

    def _no_ack(self, pending: _Reliable, now: float) -> list[CallAction]:
        if self.state != "answering":
            return []  # the ACK of a re-INVITE's 2xx: the call goes on
        logger.warning("call %s: no ACK for 200 OK, hanging up", self.call_id)
        self._goto("confirmed")
        self.answer_error = SipTimeout("no ACK for 200 OK")
        return self._bye("local-bye")

    def _in_dialog(self, method: str, purpose: str, *, body: bytes = b"", content_type: str | None = None,
                   extra: list[tuple[str, str]] | None = None,
                   auth: list[tuple[str, str]] | None = None) -> SendRequest:
        assert self.dialog is not None
        # UAC_SUPPORTED, not SUPPORTED: 100rel in a request of ours would invite reliable 18x to our re-INVITE,
        # which we never PRACK (the far end would fail it after 64*T1).
        request = self.dialog.create_request(
            method, self.config.via_sent_by, self.config.transport, body=body, content_type=content_type,
            extra=[("User-Agent", self.config.user_agent), ("Supported", UAC_SUPPORTED), *(extra or []),
                   *(auth or [])])
        self._sent[(request.cseq.seq, method)] = _Sent(purpose, body, content_type, tuple(extra or ()))
        if purpose == "refer":
            self._refer_seqs.add(request.cseq.seq)
        return SendRequest(request)

    def _send_invite(self, seq: int, auth: list[tuple[str, str]]) -> SendRequest:
        """Our INVITE (again with the next CSeq and credentials after a 401/407): a new branch each time."""
        old = self.invite.headers
        headers = Headers()
        via = f"SIP/2.0/{self.config.transport.upper()} {self.config.via_sent_by};branch={new_branch()};rport"
        headers.add("Via", via)
        headers.add("Max-Forwards", "70")
        for route in self._route:
            headers.add("Route", route)
        for name in ("From", "To", "Call-ID"):
            headers.add(name, old.get(name) or "")
        headers.add("CSeq", str(CSeq(seq, "INVITE")))
        headers.add("Contact", self.config.local_contact)
        headers.add("Allow", ALLOW)
        headers.add("Supported", f"{UAC_SUPPORTED}, 100rel" if self._offers_100rel else UAC_SUPPORTED)
        headers.add("User-Agent", self.config.user_agent)
        for name, value in [*auth, *self._extra]:
            headers.add(name, value)
        assert self.sdp.local is not None
        headers.add("Content-Type", "application/sdp")
        self.invite = SipRequest("INVITE", self.invite.uri, headers, self.sdp.local.to_bytes())
        return SendRequest(self.invite)

    def _send_cancel(self) -> SendRequest:
        """CANCEL of our INVITE (RFC 3261 9.1): its Request-URI, Call-ID, From, To, Route and top Via (the same
        branch), CSeq number unchanged."""
        invite = self.invite
        headers = Headers()
        headers.add("Via", invite.headers.get_all("Via")[0])
        headers.add("Max-Forwards", "70")
        for route in invite.headers.get_all("Route"):
            headers.add("Route", route)
        for name in ("From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name) or "")
        headers.add("CSeq", str(CSeq(invite.cseq.seq, "CANCEL")))
        headers.add("User-Agent", self.config.user_agent)
        self._sent[(invite.cseq.seq, "CANCEL")] = _Sent("cancel")
        return SendRequest(SipRequest("CANCEL", invite.uri, headers))

    def _authenticated_retry(self, response: SipResponse, method: str, sent: _Sent) -> SendRequest | None:
        """An in-dialog request of ours challenged (a PBX that authenticates BYE, REFER, re-INVITE, UPDATE or
        NOTIFY): sent again with credentials, the same body and headers, and the next CSeq. Only a call we
        placed has credentials (the account's, for its PBX); a call we answered never answers a challenge."""
        if self.dialog is None:
            return None
        auth = self._answer_challenge(response, method, str(self.dialog.remote_target))
        if auth is None:
            return None  # no credentials, no usable challenge, or ours were refused already: the request fails
        return self._in_dialog(method, sent.purpose, body=sent.body, content_type=sent.content_type,
                               extra=list(sent.extra), auth=auth)

    def _answer_challenge(self, response: SipResponse, method: str, uri: str) -> list[tuple[str, str]] | None:
        """The credentials answering a 401/407 to our ``method`` for ``uri``; None when this call has none (a
        call we answered) or a retry would be pointless (no usable challenge, ours refused already)."""
        if self._auth is None or response.status not in (401, 407):
            return None
        name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
        if not self._auth.handle_challenge(response.status, response.headers.get_all(name)):
            return None
        return self._auth.headers_for(method, uri)

    def _accepted(self, status: int) -> None:
        """A final response that is not a challenge: the credentials went through, so the call's next request
        may be challenged afresh (a PBX may challenge each one with a new nonce) without counting as a loop."""
        if self._auth is not None and status not in (401, 407):
            self._auth.succeeded()

    def _timer_terms(self, request: SipRequest) -> Accepted | Respond:
        """The session timer's terms for our 2xx to this re-INVITE or UPDATE, or the 422 (interval below our
        minimum) or 400 (an unreadable Session-Expires or Min-SE) that answers it instead."""
        try:
            return self.timer.negotiate(request.headers)
        except IntervalTooSmall as exc:
            return self._respond(request, 422, extra=[("Min-SE", str(exc.min_se))])
        except SipParseError as exc:
            return self._respond(request, 400, reason=exc.reason)

    def _retry_after(self) -> str:
        """A random 0-10 s for the Retry-After of a 500 to a request that crossed an unfinished one (RFC 3261
        14.2, RFC 3311 5.2)."""
        return str(int(self.config.random() * 11))

    def _our_offer_pending(self) -> bool:
        """An offer of ours awaits its answer: our refresh re-INVITE, or a 2xx with our offer not yet ACKed."""
        ok = self._ok
        return (self._refreshing == "INVITE" or self._reoffer is not None
                or (ok is not None and ok.pending and ok.carries_offer))

    def _their_offer_pending(self) -> bool:
        """An INVITE of theirs is not answered or not acknowledged yet."""
        ok = self._ok
        return (self.role == "uas" and self.state == "ringing") or (ok is not None and ok.pending)

    def _answer_offer(self, request: SipRequest) -> Respond | None:
        """Negotiate the SDP offer of a re-INVITE or UPDATE; the 488 (no common codec) or 491 (no session of
        ours to answer from yet) that refuses it, or None when answered."""
        if self.sdp.rtp is None:
            return self._respond(request, 491)
        try:
            self.sdp.answer(SessionDescription.parse(request.body))
        except SdpError as exc:
            logger.info("call %s: %s offer refused: %s", self.call_id, request.method, exc)
            return self._respond(request, 488)
        return None

    def _media_events(self, before: NegotiatedMedia | None) -> list[CallAction]:
        media = self.media
        if media is None or media == before:
            return []
        logger.info("call %s: media changed: %s %s", self.call_id, media.codec, media.direction)
        actions: list[CallAction] = [MediaChanged(media)]
        if before is not None and before.on_hold != media.on_hold:
            actions.append(Held(media.on_hold))
        return actions

    def _take_answer(self, body: bytes) -> list[CallAction]:
        """The answer to an offer of ours made in mid-call (our refresh re-INVITE, or our 2xx to their
        re-INVITE without SDP, answered in the ACK): applied only if it moves the media."""
        try:
            media = self.sdp.read_answer(body)
        except SdpError as exc:
            logger.info("call %s: the answer to our mid-call offer is unusable (%s); media kept", self.call_id, exc)
            return []
        before = self.media
        if before is not None and media_key(media) == media_key(before):
            return []
        self.sdp.media = media
        return self._media_events(before)

    # -- session timer (RFC 4028) ------------------------------------------------------------------------

    def _drive_timer(self, actions: list[TimerAction], now: float) -> list[CallAction]:
        out: list[CallAction] = []
        for action in actions:
            if isinstance(action, Refresh):
                out.append(self._refresh(action.method))
            elif isinstance(action, Expire) and self.state != "ended":
                logger.info("call %s: %s (session interval %d s), hanging up", self.call_id,
                            "no session refresh in time" if action.reason == "session-expired"
                            else "our session refresh found no session", self.timer.interval)
                out += self._bye(action.reason)
        return out

    def _refresh(self, method: str) -> SendRequest:
        """Our session refresh (RFC 4028 7.4): an UPDATE, or a re-INVITE offering our SDP unchanged (same o=
        version, RFC 3264 8)."""
        local = self.sdp.local
        body = local.to_bytes() if method == "INVITE" and local is not None else b""
        self._refreshing = method
        return self._in_dialog(method, "refresh", body=body, content_type="application/sdp" if body else None,
                               extra=[*self.timer.refresh_headers(), ("Allow", ALLOW)])

    def _refresh_answered(self, status: int, response: SipResponse | None, now: float) -> list[CallAction]:
        method = self._refreshing or "UPDATE"
        self._refreshing = None
        if self.state == "ended":
            return []
        logger.info("call %s: session refresh by %s answered %s", self.call_id, method, status or "nothing")
        actions: list[CallAction] = []
        if response is not None and 200 <= status < 300 and self.dialog is not None:
            self.dialog.target_refreshed(response)
            if method == "INVITE":
                ack = self.dialog.create_ack(self.invite_of(response), self.config.via_sent_by, self.config.transport)
                self._last_ack = ack
                actions += [SendAck(ack), *self._take_answer(response.body)]
        return actions + self._drive_timer(self.timer.on_response(status, response.headers if response else None, now),
                                           now)

    def _reoffer_answered(self, status: int, response: SipResponse | None) -> list[CallAction]:
        previous, self._reoffer = self._reoffer, None
        if self.state == "ended":
            return []
        if response is None or not 200 <= status < 300 or self.dialog is None:
            self.sdp.local = previous  # a refused offer changes nothing (RFC 3264 8)
            return [ReofferAnswered(status, b"")]
        self.dialog.target_refreshed(response)
        ack = self.dialog.create_ack(self.invite_of(response), self.config.via_sent_by, self.config.transport)
        self._last_ack = ack
        return [SendAck(ack), *self._take_answer(response.body), ReofferAnswered(status, response.body)]

    @staticmethod
    def invite_of(response: SipResponse) -> SipRequest:
        """Enough of the INVITE a 2xx answers to build its ACK (only the CSeq number is read)."""
        headers = Headers()
        headers.add("CSeq", str(CSeq(response.cseq.seq, "INVITE")))
        return SipRequest("INVITE", "", headers)


__all__ = [
    "ALLOW",
    "SUPPORTED",
    "CallAction",
    "CallConfig",
    "CallCore",
    "Dtmf",
    "Ended",
    "Established",
    "Held",
    "MediaChanged",
    "Progress",
    "ProvisionalAcked",
    "Referred",
    "ReofferAnswered",
    "Respond",
    "Retransmit",
    "SendAck",
    "SendRequest",
    "SipTimeout",
    "TransferProgress",
    "decorate",
    "outcome_of",
]
