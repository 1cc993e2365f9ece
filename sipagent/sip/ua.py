"""The SIP user agent: registers on a PBX and answers calls, like a desk phone (asyncio shell).

The sans-I/O core parses, builds, authenticates, runs transactions and dialogs and negotiates SDP;
this module owns the socket, the clock and the tasks. Every core state machine reports its next
deadline; the shell arms one loop timer per machine and feeds ``loop.time()`` back in when it fires.
Each call goes to the layer above as an :class:`IncomingCall` (negotiated media, DTMF, hang-up,
transfer); the UA knows nothing of RTP payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipagent.errors import SdpError, SipBuildError, SipParseError
from sipagent.sdp import (
    LocalSession,
    NegotiatedMedia,
    SessionDescription,
    SrtpParams,
    SrtpPolicy,
    accept_answer,
    make_offer,
    negotiate,
    offer_crypto,
)
from sipagent.sdp.crypto import DEFAULT_SUITES
from sipagent.sip.admission import (
    LOOPBACK,
    BudgetLimits,
    IpNetwork,
    LogThrottle,
    SourcePolicy,
    TransactionBudget,
    normalise_ip,
    parse_network,
)
from sipagent.sip.auth import DigestCredentials
from sipagent.sip.dialog import Dialog
from sipagent.sip.headers import new_tag
from sipagent.sip.identity import identify
from sipagent.sip.message import SipRequest, SipResponse, build_response, stamp_source
from sipagent.sip.registration import Registration, RegistrationConfig
from sipagent.sip.session_timer import (
    Accepted,
    Expire,
    IntervalTooSmall,
    Refresh,
    SessionTimer,
    TimerAction,
    TimerPolicy,
)
from sipagent.sip.session_timer import negotiate as timer_terms
from sipagent.sip.tls import TlsSettings
from sipagent.sip.transaction import (
    Action,
    ClientTransaction,
    ResponseEvent,
    Send,
    ServerTransaction,
    Terminated,
    TimeoutEvent,
    Uas2xxRetransmitter,
    cancel_target_key,
    client_key,
    server_key,
)
from sipagent.sip.transport import Peer, SipTransport, TcpTransport, TransportLimits, create_transport
from sipagent.sip.uri import SipUri, parse_target_uri

logger = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE, PRACK"
ACCEPT = "application/sdp, application/dtmf-relay, message/sipfrag"
SUPPORTED = "timer, 100rel"
SUPPORTED_OPTIONS = frozenset(option.strip() for option in SUPPORTED.split(","))
DTMF_SIGNALS = {"10": "*", "11": "#"}

# Registration states of the core's machine that the shell acts on.
UNREGISTERED = "unregistered"
REGISTERED = "registered"
BACKING_OFF = "backing-off"
FAILED = "failed"


@dataclass
class SipAccount:
    """One extension the UA registers: its own AoR, credentials and expiry, its own registration state
    machine (refresh and back-off) and its own user part for admission. ``name`` labels it in logs, metrics
    and ``IncomingCall.account``; ``auth_user`` is the digest user name when it is not ``username``."""

    name: str
    username: str
    password: str = ""
    auth_user: str = ""
    expires: int = 300

    def __repr__(self) -> str:  # never let the password reach a log line
        return f"SipAccount(name={self.name!r}, username={self.username!r}, password=***)"


@dataclass
class UaSettings:
    """What the user agent needs from the ``sip:`` configuration section.

    ``registrar`` is "host[:port]" or None for direct mode; ``public_host`` is the address advertised
    in Via/Contact when it differs from the bound one (NAT); ``trusted_hosts`` (addresses, CIDR networks
    or names) may send requests besides the registrar; direct mode with none accepts loopback only, unless
    ``allow_any_caller``. ``aliases`` are user parts that are ours besides ``username``. ``session_expires``
    and ``min_se`` are the session timer's longest and shortest interval (RFC 4028; see session_timer.py).
    ``accounts`` are the extensions to register; none given, ``username``/``password``/``expires`` are the
    one account (when a registrar is set).
    """

    registrar: str | None
    transport: str
    username: str
    password: str
    domain: str
    listen_host: str
    listen_port: int
    public_host: str | None
    expires: int
    max_calls: int
    trusted_hosts: list[str]
    codecs: list[str]
    user_agent: str = "sipagent"
    aliases: list[str] = field(default_factory=list)
    allow_any_caller: bool = False
    session_expires: int = 1800
    min_se: int = 90
    context_headers: list[str] = field(default_factory=list)  # INVITE headers kept in ``IncomingCall.identity``
    accounts: list[SipAccount] = field(default_factory=list)
    srtp: str = "off"  # media.srtp: off | optional | required
    srtp_suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))  # media.srtp_suites
    srtp_over_insecure_signalling: bool = False  # SDES keys taken from offers that did not come over TLS
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    transport_limits: TransportLimits = field(default_factory=TransportLimits)
    tls: TlsSettings = field(default_factory=TlsSettings)  # used when transport is "tls"
    # RFC 5626 CRLF pings on the connections we open over TCP and TLS (0: none), and how long a pong may take.
    keepalive_s: float = 90.0
    keepalive_timeout_s: float = 10.0


class SipTimeout(Exception):
    """A request got no final response (timer B/F), or the transport could not reach the peer."""


class _Machine(Protocol):
    """What the shell needs from a core state machine to drive its timers."""

    @property
    def next_deadline(self) -> float | None: ...

    def timeout(self, now: float) -> list[Action]: ...


EventHandler = Callable[[ResponseEvent | TimeoutEvent | Terminated], None]


def _split_hostport(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and host and ":" not in host:
        return host, int(port)
    return text, default_port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _AckWait:
    """A response we re-send until the peer acknowledges it (or 64*T1): our 2xx to an INVITE until its ACK
    (RFC 3261 13.3.1.4), or a reliable 18x until its PRACK (RFC 3262 3: the same schedule, capped at T2)."""

    def __init__(self, retransmitter: Uas2xxRetransmitter) -> None:
        self.retransmitter = retransmitter
        self.done = asyncio.Event()
        self.acknowledged = False
        self.body = b""  # the ACK's body: the SDP answer when our 2xx carried the offer
        self.carries_offer = False  # our 2xx carried an offer: the ACK brings the answer

    def finish(self, acknowledged: bool, body: bytes = b"") -> None:
        self.retransmitter.ack_received()  # stops retransmissions either way
        if acknowledged and not self.acknowledged:
            self.body = body
        self.acknowledged = self.acknowledged or acknowledged
        self.done.set()

    async def wait(self) -> bool:
        """True when the ACK arrived, False on timeout or when the call ended first."""
        await self.done.wait()
        return self.acknowledged


class IncomingCall:
    """One incoming call, from INVITE to its end. Created by the UA; given to ``on_call``.

    Public attributes: ``call_id``, ``from_uri``, ``to_uri``, ``identity`` (caller, dialed number, redirecting
    number and the configured headers, cleaned: see identity.py), ``transport`` (how the INVITE came: "UDP",
    "TCP" or "TLS"), ``local_host`` (the address we advertise on
    this call, for the SDP too), ``remote_host`` (where the INVITE came
    from), ``offer`` (parsed SDP offer; None for an INVITE without SDP, a late offer: ours then goes in the
    200 OK and the caller's answer comes in the ACK), ``media`` (after answer), ``ended`` / ``end_reason``, ``state``
    (ringing → answering → confirmed → ended) and the callbacks ``on_media_change`` (a re-INVITE or UPDATE
    offer was accepted) and ``on_dtmf`` (SIP INFO application/dtmf-relay).

    The call also keeps the session timer (RFC 4028): it answers refreshes, refreshes when it is the
    refresher, and ends the call with BYE when the session expires ("session-expired") or a refresh of ours
    finds the peer gone ("refresh-failed").
    """

    def __init__(self, ua: UserAgent, invite: SipRequest, peer: Peer, offer: SessionDescription | None,
                 dialog: Dialog, local_host: str) -> None:
        self._ua = ua
        self._invite = invite
        self._peer = peer
        self.dialog = dialog
        self.call_id = invite.call_id
        self.from_uri = str(invite.from_addr.uri)
        self.to_uri = str(invite.to_addr.uri)
        self.identity = identify(invite, ua.settings.context_headers)
        self.account = ""  # the name of the registered account the call was addressed to ("": none)
        self.remote_host = peer.host
        # "UDP", "TCP" or "TLS": how the INVITE reached us. Media keys (SDES) may only travel over "TLS".
        self.transport = peer.transport
        self.local_host = local_host  # the address we advertise on this call (Via, Contact, SDP)
        self.offer = offer
        self.media: NegotiatedMedia | None = None
        self.on_media_change: Callable[[NegotiatedMedia], None] | None = None
        self.on_dtmf: Callable[[str, int], None] | None = None
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.state = "ringing"
        self._rtp: tuple[str, int] | None = None
        self._answer_sdp: SessionDescription | None = None
        self._sdp_session = LocalSession()  # one o= line per call; its version rises with each new answer
        self._ack_wait: _AckWait | None = None
        self._notify: asyncio.Queue[int] = asyncio.Queue()
        self._timer = SessionTimer(ua._timer_policy)
        self._timer.learn(invite.headers)
        self._prack_wait: _AckWait | None = None  # our reliable 180 until its PRACK (RFC 3262)
        self._rseq = 0  # the RSeq of that 180
        self._refreshing: str | None = None  # the method of our session refresh in flight
        self._refresh_ack: tuple[int, bytes, Peer] | None = None  # CSeq, bytes and peer of our last re-INVITE ACK

    def __repr__(self) -> str:
        return f"IncomingCall({self.call_id!r}, {self.from_uri!r}, state={self.state})"

    # -- the API for the layer above -------------------------------------------------------------

    async def answer(self, rtp_host: str, rtp_port: int) -> NegotiatedMedia:
        """Send 200 OK with our SDP answer (our offer, after an INVITE without SDP) and wait for the ACK;
        returns the negotiated media.

        Raises SdpError when no codec matches (after sending 488; after a late offer, after a BYE),
        RuntimeError when the call is no longer ringing, SipTimeout when no ACK arrives (the call is
        then ended with BYE).
        """
        if self.state != "ringing":
            raise RuntimeError(f"cannot answer a call in state {self.state}")
        await self._ringing_acknowledged()
        if self.offer is None:
            return await self._answer_late_offer(rtp_host, rtp_port)
        try:
            answer, media = negotiate(self.offer, self._ua.settings.codecs, rtp_host, rtp_port,
                                      session=self._sdp_session, srtp=self._srtp_policy())
        except SdpError:
            self._ua._respond_in_dialog(self, self._invite, 488)
            self._end("rejected-sdp")
            raise
        self._rtp = (rtp_host, rtp_port)
        self._answer_sdp = answer
        self.media = media
        self.state = "answering"
        self.dialog.confirm()
        await self._send_200_and_wait_ack(answer)
        logger.info("call %s: answered with %s, remote RTP %s:%s", self.call_id, media.codec,
                    media.remote_host, media.remote_port)
        return media

    async def _answer_late_offer(self, rtp_host: str, rtp_port: int) -> NegotiatedMedia:
        """The INVITE had no SDP: offer every codec we carry in the 200 OK; the ACK carries the answer
        (RFC 3261 13.2.1). An ACK without a usable answer ends the call with BYE (SdpError raised)."""
        srtp = self._srtp_policy()
        offer = make_offer(self._ua.settings.codecs, rtp_host, rtp_port, self._sdp_session,
                           crypto=offer_crypto(srtp) if srtp.offers_srtp else None)
        self._rtp = (rtp_host, rtp_port)
        self._answer_sdp = offer  # our side of the session, re-sent on a refresh as after an answer
        self.state = "answering"
        self.dialog.confirm()
        body = await self._send_200_and_wait_ack(offer, carries_offer=True)
        try:
            media = accept_answer(SessionDescription.parse(body), offer)
        except SdpError as exc:
            logger.warning("call %s: the ACK carried no usable SDP answer (%s), hanging up", self.call_id, exc)
            await self.hangup()
            raise
        self.media = media
        logger.info("call %s: answered a late offer with %s, remote RTP %s:%s", self.call_id, media.codec,
                    media.remote_host, media.remote_port)
        return media

    def _srtp_policy(self) -> SrtpPolicy:
        """What this call may negotiate for SRTP: ``media.srtp`` and its suites, with SDES keys taken only
        from signalling that protects them (TLS, the transport of the INVITE), unless the operator allowed
        them over any (``media.srtp_over_insecure_signalling``)."""
        settings = self._ua.settings
        return SrtpPolicy(mode=settings.srtp, suites=tuple(settings.srtp_suites),
                          keys_allowed=self._peer.transport == "TLS" or settings.srtp_over_insecure_signalling)

    async def _ringing_acknowledged(self) -> None:
        """Wait for the PRACK of our reliable 180, if we sent one: our 2xx may not overtake it (RFC 3262 3
        would allow that for an 18x without SDP, but a PBX then sees its PRACK answered after the call).
        RuntimeError when the call ended meanwhile (CANCEL, or no PRACK: the INVITE got a 500)."""
        if self._prack_wait is not None:
            await self._prack_wait.wait()
        if self.state != "ringing":
            raise RuntimeError(f"call ended before it was answered ({self.end_reason})")

    async def _send_200_and_wait_ack(self, sdp: SessionDescription, carries_offer: bool = False) -> bytes:
        """Send the 200 OK (re-sent until ACKed) and wait for the ACK; returns the ACK's body."""
        terms = self._timer.negotiate(self._invite.headers)  # _admit refused what this could raise on
        self._ack_wait = self._ua._respond_in_dialog(self, self._invite, 200, body=sdp.to_bytes(),
                                                     extra=terms.headers())
        assert self._ack_wait is not None
        self._ack_wait.carries_offer = carries_offer
        self._start_timer(terms)
        logger.info("call %s: session timer %d s, refreshed by %s", self.call_id, terms.interval,
                    "us" if terms.refresher == "us" else "the peer")
        acked = await self._ack_wait.wait()
        if self.ended.is_set():
            raise RuntimeError(f"call ended before ACK ({self.end_reason})")
        self.state = "confirmed"
        if not acked:
            logger.warning("call %s: no ACK for 200 OK, hanging up", self.call_id)
            await self.hangup()
            raise SipTimeout("no ACK for 200 OK")
        return self._ack_wait.body

    async def reject(self, status: int = 486) -> None:
        """Reject an unanswered call with a final error response (486 Busy Here by default)."""
        if self.state != "ringing":
            raise RuntimeError(f"cannot reject a call in state {self.state}")
        self._ua._respond_in_dialog(self, self._invite, status)
        self._end("rejected")

    async def hangup(self) -> None:
        """End the call: BYE once answered, 487 while it is still ringing."""
        if self.state == "ended":
            return
        if self.state == "ringing":
            self._ua._respond_in_dialog(self, self._invite, 487)
            self._end("local-cancel")
            return
        await self._bye("local-bye")

    async def _bye(self, reason: str) -> None:
        self._end(reason)
        try:
            response = await self._ua._send_in_dialog(self, "BYE")
            logger.info("call %s: BYE answered %s", self.call_id, response.status)
        except (SipTimeout, OSError) as exc:
            logger.info("call %s: BYE got no answer: %s", self.call_id, exc)

    async def transfer(self, target: str, timeout: float = 30) -> bool:
        """Blind transfer with REFER; True when the target answered (NOTIFY sipfrag with a 2xx).

        On success the call is ended with BYE and ``end_reason`` "transferred"; on failure it goes on.
        """
        if self.state != "confirmed":
            raise RuntimeError(f"cannot transfer a call in state {self.state}")
        referred_by = f"<sip:{self._ua.user_of(self.account)}@{self._ua.domain}>"
        try:
            refer_to = f"<{parse_target_uri(target)}>"
            response = await self._ua._send_in_dialog(
                self, "REFER", extra=[("Refer-To", refer_to), ("Referred-By", referred_by)]
            )
        except (SipParseError, SipBuildError) as exc:
            logger.warning("call %s: transfer target %r refused: %s", self.call_id, target[:80], exc)
            return False
        except SipTimeout as exc:
            logger.info("call %s: REFER got no answer: %s", self.call_id, exc)
            return False
        if response.status >= 300:
            logger.info("call %s: REFER refused with %s", self.call_id, response.status)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ended.is_set():
            try:
                status = await asyncio.wait_for(self._notify.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                logger.info("call %s: transfer to %s timed out", self.call_id, target)
                return False
            if status >= 300:
                logger.info("call %s: transfer to %s failed with %s", self.call_id, target, status)
                return False
            if status >= 200:
                self._end("transferred")
                with contextlib.suppress(SipTimeout):
                    await self._ua._send_in_dialog(self, "BYE")
                return True
        return False

    # -- events from the UA ----------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.end_reason = reason
        self.dialog.terminate()
        self._timer.stop()
        self._ua._disarm(self._timer)
        for wait in (self._ack_wait, self._prack_wait):
            if wait is not None and not wait.done.is_set():
                wait.finish(acknowledged=False)
        self.ended.set()
        self._ua._call_ended(self)
        logger.info("call %s ended: %s", self.call_id, reason)

    # -- offer/answer in the dialog (re-INVITE, UPDATE) ------------------------------------------

    def _handle_reinvite(self, request: SipRequest) -> None:
        if (self.state != "confirmed" or self._rtp is None or self._answer_sdp is None
                or self._refreshing == "INVITE"):
            # Our own offer/answer is not settled yet, or our refresh re-INVITE crossed theirs (RFC 3261 14.2).
            self._ua._respond_in_dialog(self, request, 491)
            return
        terms = self._timer_terms(request)
        if terms is None:
            return
        changed = False
        if request.body:
            answered = self._answer_offer(request)
            if answered is None:
                return
            changed = answered
        # Without an offer (a session refresh) our current SDP is the offer; the ACK would carry theirs.
        self._ack_wait = self._ua._respond_in_dialog(self, request, 200, body=self._answer_sdp.to_bytes(),
                                                     extra=terms.headers())
        if self._ack_wait is not None:
            self._ack_wait.carries_offer = not request.body
        self._start_timer(terms)
        if changed:
            self._media_changed()

    def _handle_update(self, request: SipRequest) -> None:
        """UPDATE (RFC 3311): a session refresh without a body, or a new offer answered in its 200."""
        if request.body and self._our_offer_pending():
            self._ua._respond_in_dialog(self, request, 491)
            return
        if request.body and self._their_offer_pending():
            retry_after = str(random.randint(0, 10))  # RFC 3311 5.2: a random 0-10 s
            self._ua._respond_in_dialog(self, request, 500, extra=[("Retry-After", retry_after)])
            return
        if self.state != "confirmed":
            self._ua._respond_in_dialog(self, request, 200)  # an early UPDATE: no session to refresh yet
            return
        terms = self._timer_terms(request)
        if terms is None:
            return
        body = b""
        changed = False
        if request.body:
            answered = self._answer_offer(request)
            if answered is None or self._answer_sdp is None:
                return
            changed, body = answered, self._answer_sdp.to_bytes()
        self._ua._respond_in_dialog(self, request, 200, body=body, extra=terms.headers())
        self._start_timer(terms)
        if changed:
            self._media_changed()

    def _our_offer_pending(self) -> bool:
        """An offer of ours awaits its answer: our refresh re-INVITE, or a 2xx with our offer not yet ACKed."""
        wait = self._ack_wait
        return self._refreshing == "INVITE" or (wait is not None and not wait.done.is_set() and wait.carries_offer)

    def _their_offer_pending(self) -> bool:
        """An INVITE of theirs is not answered or not acknowledged yet."""
        wait = self._ack_wait
        return self.state == "ringing" or (wait is not None and not wait.done.is_set())

    def _answer_offer(self, request: SipRequest) -> bool | None:
        """Negotiate the SDP offer of a re-INVITE or UPDATE: whether the media changed, or None after
        answering 488 (no common codec) or 491 (no session of ours to answer from yet)."""
        if self._rtp is None:
            self._ua._respond_in_dialog(self, request, 491)
            return None
        try:
            offer = SessionDescription.parse(request.body)
            answer, media = negotiate(offer, self._ua.settings.codecs, *self._rtp, session=self._sdp_session,
                                      srtp=self._srtp_policy(), current=self.media.srtp if self.media else None)
        except SdpError as exc:
            logger.info("call %s: %s offer refused: %s", self.call_id, request.method, exc)
            self._ua._respond_in_dialog(self, request, 488)
            return None
        self._answer_sdp = answer
        changed = media != self.media
        self.media = media
        return changed

    def _media_changed(self) -> None:
        if self.media is None or self.on_media_change is None:
            return
        logger.info("call %s: media changed: %s %s", self.call_id, self.media.codec, self.media.direction)
        try:
            self.on_media_change(self.media)
        except Exception:
            logger.exception("call %s: on_media_change failed", self.call_id)

    # -- session timer (RFC 4028) ----------------------------------------------------------------

    def _timer_terms(self, request: SipRequest) -> Accepted | None:
        """The session timer's terms for our 2xx to this re-INVITE or UPDATE; None after answering it 422
        (interval below our minimum) or 400 (an unreadable Session-Expires or Min-SE)."""
        try:
            return self._timer.negotiate(request.headers)
        except IntervalTooSmall as exc:
            self._ua._respond_in_dialog(self, request, 422, extra=[("Min-SE", str(exc.min_se))])
        except SipParseError as exc:
            self._ua._respond_in_dialog(self, request, 400, reason=exc.reason)
        return None

    def _start_timer(self, terms: Accepted) -> None:
        """Our 2xx to an INVITE or UPDATE went out: a new session interval begins."""
        self._timer.start(terms, self._ua._now())
        self._ua._arm_session_timer(self)

    def _drive_timer(self, actions: list[TimerAction]) -> None:
        """Carry out what the session timer asks for, then arm it again."""
        for action in actions:
            if isinstance(action, Refresh):
                self._ua._spawn(self._refresh(action.method))
            elif isinstance(action, Expire) and self.state != "ended":
                logger.info("call %s: %s (session interval %d s), hanging up", self.call_id,
                            "no session refresh in time" if action.reason == "session-expired"
                            else "our session refresh found no session", self._timer.interval)
                self._ua._spawn(self._bye(action.reason))
        self._ua._arm_session_timer(self)

    async def _refresh(self, method: str) -> None:
        """Our session refresh (RFC 4028 7.4): an UPDATE, or a re-INVITE offering our SDP unchanged (same
        o= version, RFC 3264 8); its final response goes back to the timer."""
        body = self._answer_sdp.to_bytes() if method == "INVITE" and self._answer_sdp is not None else b""
        extra = [*self._timer.refresh_headers(), ("Allow", ALLOW)]
        self._refreshing = method
        status, headers = 0, None
        try:
            request, response = await self._ua._request_in_dialog(self, method, extra=extra, body=body)
            status, headers = response.status, response.headers
            if 200 <= status < 300:
                self.dialog.target_refreshed(response)
                if method == "INVITE":
                    await self._ua._ack_2xx(self, request)
                    self._take_answer(response.body)
        except (SipTimeout, OSError) as exc:
            logger.info("call %s: session refresh by %s got no answer: %s", self.call_id, method, exc)
        finally:
            self._refreshing = None
        if self.state == "ended":
            return
        logger.info("call %s: session refresh by %s answered %s", self.call_id, method, status or "nothing")
        self._drive_timer(self._timer.on_response(status, headers, self._ua._now()))

    def _take_answer(self, body: bytes) -> None:
        """The answer to an offer of ours made in mid-call (our refresh re-INVITE, or our 2xx to their
        re-INVITE without SDP, answered in the ACK): applied only if it moves the media."""
        try:
            media = accept_answer(SessionDescription.parse(body), self._answer_sdp)
        except SdpError as exc:
            logger.info("call %s: the answer to our mid-call offer is unusable (%s); media kept", self.call_id, exc)
            return
        if self.media is None or _media_key(media) != _media_key(self.media):
            self.media = media
            self._media_changed()

    # -- reliable provisional responses (RFC 3262) -----------------------------------------------

    def _ring_reliably(self) -> None:
        """Send 180 Ringing reliably (the INVITE said Require: 100rel): re-sent until its PRACK comes; after
        64*T1 without one, the INVITE is answered 500 (RFC 3262 3)."""
        self._rseq = random.randint(1, 2**31 - 1)
        extra = [("Require", "100rel"), ("RSeq", str(self._rseq))]
        self._prack_wait = self._ua._respond_reliably(self, self._invite, 180, extra, self._on_no_prack)

    def _on_no_prack(self) -> None:
        if self.state == "ringing":
            logger.warning("call %s: no PRACK for our reliable 180, refusing the call", self.call_id)
            self._ua._respond_in_dialog(self, self._invite, 500, reason="No PRACK")
            self._end("no-prack")

    def _handle_prack(self, request: SipRequest) -> None:
        """A PRACK matches our unacknowledged reliable 180 by its RAck (RSeq, CSeq number and method)."""
        fields = (request.headers.get("RAck") or "").split()
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            self._ua._respond_in_dialog(self, request, 400, reason="Bad RAck")
            return
        wait = self._prack_wait
        rack = (int(fields[0]), int(fields[1]), fields[2].upper())
        if wait is None or wait.done.is_set() or rack != (self._rseq, self._invite.cseq.seq, "INVITE"):
            self._ua._respond_in_dialog(self, request, 481)
            return
        self._ua._respond_in_dialog(self, request, 200)
        wait.finish(acknowledged=True)
        self._ua._disarm(wait.retransmitter)

    def _handle_info(self, request: SipRequest) -> None:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/dtmf-relay":
            self._ua._respond_in_dialog(self, request, 200)
            return
        fields: dict[str, str] = {}
        for line in request.body.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition("=")
            fields[name.strip().lower()] = value.strip()
        signal = fields.get("signal", "")
        digit = DTMF_SIGNALS.get(signal, signal.upper())
        duration = int(fields["duration"]) if fields.get("duration", "").isdigit() else 100
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            self._ua._respond_in_dialog(self, request, 400, reason="Bad dtmf-relay Signal")
            return
        self._ua._respond_in_dialog(self, request, 200)
        logger.info("call %s: DTMF %s (%d ms) by INFO", self.call_id, digit, duration)
        if self.on_dtmf is not None:
            try:
                self.on_dtmf(digit, duration)
            except Exception:
                logger.exception("call %s: on_dtmf failed", self.call_id)

    def _handle_notify(self, request: SipRequest) -> None:
        self._ua._respond_in_dialog(self, request, 200)
        if (request.headers.get("Event") or "").split(";")[0].strip().lower() != "refer":
            return
        first = request.body.decode("utf-8", "replace").strip().splitlines()
        parts = first[0].split(" ") if first else []
        if len(parts) >= 2 and parts[0].upper().startswith("SIP/") and parts[1].isdigit():
            self._notify.put_nowait(int(parts[1]))
        elif "terminated" in (request.headers.get("Subscription-State") or "").lower():
            self._notify.put_nowait(500)  # subscription over without a final status: treat as failed


@dataclass
class _Line:
    """One account's registration as it runs: the state machine, the task that drives it, and whether the
    registrar has accepted it."""

    account: SipAccount
    registration: Registration | None = None
    task: asyncio.Task[None] | None = None
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # something to do before the deadline

    @property
    def state(self) -> str:
        return self.registration.state if self.registration is not None else UNREGISTERED


def _route_source(target: str, wildcard_v6: bool) -> str:
    """Our source address on the route towards ``target`` (a connected UDP socket sends nothing)."""
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            return normalise_ip(str(probe.getsockname()[0]))
    except (OSError, ValueError):
        return "::1" if wildcard_v6 else "127.0.0.1"


def _approximate_size(request: SipRequest) -> int:
    """What a server transaction holds for this request: its header text and body, plus its response."""
    return 2 * (sum(len(name) + len(value) + 4 for name, value in request.headers) + len(request.body)) + 256


def _options(request: SipRequest, header: str) -> list[str]:
    return [option.strip().lower() for option in request.headers.get_all(header)]


def _unsupported(request: SipRequest) -> list[str]:
    """The options a request requires that we do not support (RFC 3261 8.2.2.3: 420)."""
    return [option for option in _options(request, "Require") if option not in SUPPORTED_OPTIONS]


def _media_key(media: NegotiatedMedia) -> tuple[str, int, str, int, str, SrtpParams | None]:
    """What makes two negotiations the same media for the layer above (ptime and DTMF follow the codec;
    a new SRTP key is new media: the receive side must re-key)."""
    return (media.codec, media.payload_type, media.remote_host, media.remote_port, media.direction, media.srtp)


class UserAgent:
    """A registering SIP phone that answers calls and hands them to ``on_call``.

    ``start()`` binds and starts registering (when a registrar is set); ``stop()`` ends calls politely,
    unregisters and closes. ``registration_state`` names the core's registration state.
    """

    def __init__(self, settings: UaSettings, on_call: Callable[[IncomingCall], Awaitable[None]],
                 on_refused: Callable[[int], None] | None = None,
                 on_shed: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_call = on_call
        # Told the status of every INVITE refused before a call object exists (403, 404, 486, 420, 488).
        self.on_refused = on_refused
        # Told the reason of every request dropped without state: "untrusted", or a transaction limit.
        self.on_shed = on_shed
        self.local_address: tuple[str, int] = (settings.listen_host, settings.listen_port)
        self.domain = settings.domain or (
            _split_hostport(settings.registrar, 5060)[0] if settings.registrar else settings.listen_host
        )
        self._transport: SipTransport | None = None
        self._advertised: tuple[str, int] = self.local_address
        self._routes: dict[str, str] = {}  # peer address -> our source address towards it
        self._registrar: Peer | None = None
        self.policy = SourcePolicy(())  # trusts nobody until start() has resolved who may call
        self._budget = TransactionBudget(settings.limits)
        self._timer_policy = TimerPolicy(settings.session_expires, settings.min_se)
        self._throttle = LogThrottle()
        self._tag_secret = os.urandom(16)  # keys the To tags of stateless responses
        self._calls: dict[str, IncomingCall] = {}
        self._server: dict[tuple[str, str, str], tuple[ServerTransaction, Peer]] = {}
        self._client: dict[tuple[str, str], tuple[ClientTransaction, Peer, EventHandler]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.accounts: list[SipAccount] = list(settings.accounts) or (
            [SipAccount(settings.username, settings.username, settings.password, expires=settings.expires)]
            if settings.registrar and settings.username else [])
        self._lines = {account.name: _Line(account) for account in self.accounts}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # Why the last REGISTER got no answer, in plain words (a certificate problem, a refused connection);
        # None once registered. ``sipagent check --connect`` prints it.
        self.registration_problem: str | None = None
        self._transport_errors: dict[Peer, str] = {}  # the last send failure per destination, for messages
        self.reconnects = 0  # registrar connections lost and registered again over a new one

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def transport_name(self) -> str:
        return self.settings.transport.upper()

    @property
    def _default_port(self) -> int:
        return 5061 if self.transport_name == "TLS" else 5060

    @property
    def server_transactions(self) -> int:
        """Server transactions held now (bounded by ``settings.limits``)."""
        return len(self._server)

    @property
    def active_calls(self) -> int:
        return sum(1 for call in self._calls.values() if call.state != "ended")

    async def start(self) -> None:
        """Bind the listening socket, then register in the background (when a registrar is set)."""
        s = self.settings
        self._transport = create_transport(s.transport, s.listen_host, s.listen_port, self._on_message,
                                           self._on_transport_error, limits=s.transport_limits,
                                           on_shed=self.on_shed, tls=s.tls, keepalive_s=s.keepalive_s,
                                           keepalive_timeout_s=s.keepalive_timeout_s)
        if isinstance(self._transport, TcpTransport):
            self._transport.on_closed = self._on_connection_closed
        await self._transport.start()
        self.local_address = self._transport.local_address
        if self.local_address[1] == 0:
            # TLS without a certificate listens nowhere: the registrar reaches us over the connection we open, and
            # the Contact's port only has to be a valid one (the registrar keys on the connection, not on it).
            self.local_address = (self.local_address[0], self._default_port)
        registrar_addresses: list[str] = []
        if s.registrar:
            host, port = _split_hostport(s.registrar, self._default_port)
            registrar_addresses = await self._resolve_all(host)
            self._registrar = Peer(self.transport_name, registrar_addresses[0], port)
            if isinstance(self._transport, TcpTransport) and self.transport_name == "TLS":
                # The certificate must carry the name we were configured with, not the address it resolved to.
                self._transport.server_names[(self._registrar.host, port)] = s.tls.server_name or host
                if not s.tls.verify:
                    logger.warning("sip.tls.verify is false: the registrar's certificate is not checked, and "
                                   "anyone on the path can read and change the signalling")
        self.policy = await self._source_policy(registrar_addresses)
        self._transport.trusts = self.policy.trusts
        self._advertised = (self.advertised_host(), self.local_address[1])
        logger.info("SIP %s listening on %s:%s, advertising %s:%s; requests accepted from %s",
                    self.transport_name, *self.local_address, *self._advertised, self.policy.describe())
        if self._registrar is not None:
            for line in self._lines.values():
                line.registration = self._new_registration(line.account)
                line.task = asyncio.create_task(self._register_loop(line))

    def advertised_host(self, peer_host: str | None = None) -> str:
        """The one address we advertise to ``peer_host`` in Via, Contact and SDP (o= and c=): ``public_host``
        when set, else the bound address when it is a specific one, else the source address of the route
        towards the peer (the registrar when no peer is named). Never a wildcard: a PBX reads
        ``c=0.0.0.0`` as hold, and across a network it would send the caller's audio nowhere."""
        if self.settings.public_host:
            return self.settings.public_host
        host = self.local_address[0]
        if host not in ("0.0.0.0", "::", ""):
            return host
        target = peer_host or (self._registrar.host if self._registrar else None)
        if target is None:
            target = "::1" if host == "::" else "127.0.0.1"
        elif not _is_ip(target):  # never a lookup here: our address towards the registrar stands in
            return self._advertised[0] if self._advertised[0] not in ("0.0.0.0", "::", "") else "127.0.0.1"
        cached = self._routes.get(target)
        if cached is None:
            cached = _route_source(target, host == "::")
            if len(self._routes) >= 256:
                self._routes.clear()
            self._routes[target] = cached
        return cached

    async def _resolve(self, host: str) -> str:
        return (await self._resolve_all(host))[0]

    async def _resolve_all(self, host: str) -> list[str]:
        """Every address of ``host`` (a name may have several, and the PBX may use any); OSError if none."""
        host = host.strip("[]")
        if _is_ip(host):
            return [host]
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return list(dict.fromkeys(normalise_ip(str(info[4][0])) for info in infos))

    async def _source_policy(self, registrar_addresses: list[str]) -> SourcePolicy:
        """Who may send us requests: the registrar's addresses and ``trusted_hosts`` (names resolved now;
        one that does not resolve adds nothing: it fails closed); loopback only in direct mode without a
        list; anyone with ``allow_any_caller``."""
        s = self.settings
        networks: list[IpNetwork] = [ipaddress.ip_network(address) for address in registrar_addresses]
        for entry in s.trusted_hosts:
            network = parse_network(entry)
            if network is not None:
                networks.append(network)
                continue
            try:
                networks.extend(ipaddress.ip_network(address) for address in await self._resolve_all(entry))
            except OSError as exc:
                logger.error("trusted host %s does not resolve (%s): requests from it are refused", entry, exc)
        if s.registrar is None and not s.trusted_hosts:
            networks.extend(LOOPBACK)
        users = [s.username] if s.username else []
        users += [account.username for account in self.accounts] + list(s.aliases)
        return SourcePolicy(networks, any_source=s.allow_any_caller, users=users)

    async def wait_registered(self, timeout: float, account: str | None = None) -> bool:
        """Wait until the registrar accepted every account (or the one named); False after ``timeout``
        seconds."""
        lines = [self._lines[account]] if account is not None else list(self._lines.values())
        if not lines:
            return False  # direct mode: nothing registers
        try:
            await asyncio.wait_for(asyncio.gather(*(line.registered.wait() for line in lines)), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """End calls (BYE, or 480 while ringing), unregister (Expires: 0) and close the socket."""
        self._stopping = True
        for call in list(self._calls.values()):
            if call.state == "ringing":
                self._respond_in_dialog(call, call._invite, 480)
                call._end("shutdown")
            elif call.state != "ended":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(call.hangup(), 2.0)
        lines = [line for line in self._lines.values() if line.task is not None]
        for line in lines:
            assert line.task is not None
            line.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await line.task
        # All accounts unregister at once: a stop takes as long as the slowest, not the sum.
        await asyncio.gather(*(self._unregister(line) for line in lines))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- driving the core's state machines -------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _run(self, machine: _Machine, actions: list[Action], dest: Peer,
             on_event: EventHandler | None) -> None:
        """Carry out a machine's actions, then arm a loop timer for its next deadline (armed even when an
        action fails, so that no machine is ever left without the timer that ends it)."""
        try:
            for action in actions:
                if isinstance(action, Send):
                    if self._transport is not None:
                        self._transport.send(action.data, dest)
                elif on_event is not None:
                    on_event(action)
        finally:
            self._arm(machine, dest, on_event)

    def _arm(self, machine: _Machine, dest: Peer, on_event: EventHandler | None) -> None:
        handle = self._timers.pop(id(machine), None)
        if handle is not None:
            handle.cancel()
        deadline = machine.next_deadline
        if deadline is not None and self._transport is not None:
            self._timers[id(machine)] = asyncio.get_running_loop().call_at(
                deadline, self._fire, machine, dest, on_event
            )

    def _fire(self, machine: _Machine, dest: Peer, on_event: EventHandler | None) -> None:
        self._timers.pop(id(machine), None)
        self._run(machine, machine.timeout(self._now()), dest, on_event)

    def _disarm(self, machine: object) -> None:
        handle = self._timers.pop(id(machine), None)
        if handle is not None:
            handle.cancel()

    def _arm_session_timer(self, call: IncomingCall) -> None:
        """A loop timer for the call's session timer; what it asks for when due is the call's to do."""
        timer = call._timer
        self._disarm(timer)
        deadline = timer.next_deadline
        if deadline is not None and self._transport is not None:
            self._timers[id(timer)] = asyncio.get_running_loop().call_at(deadline, self._session_timer_due, call)

    def _session_timer_due(self, call: IncomingCall) -> None:
        self._timers.pop(id(call._timer), None)
        call._drive_timer(call._timer.timeout(self._now()))

    # -- registration ----------------------------------------------------------------------------

    @property
    def registration_state(self) -> str:
        """The first account's registration state: unregistered, registering, registered, refreshing,
        backing-off, failed or unregistering."""
        line = next(iter(self._lines.values()), None)
        return line.state if line is not None else UNREGISTERED

    @property
    def registration_states(self) -> dict[str, str]:
        """Each account's registration state, by account name (empty in direct mode)."""
        return {name: line.state for name, line in self._lines.items()}

    def account_for(self, request: SipRequest) -> str:
        """The name of the account an INVITE is addressed to: by the Request-URI's user part, else the
        To's (a proxy may rewrite the Request-URI to our Contact); "" when neither is an account's."""
        by_user = {account.username: account.name for account in self.accounts}
        users: list[str | None] = []
        with contextlib.suppress(SipParseError):
            users.append(SipUri.parse(request.uri).user)
        with contextlib.suppress(SipParseError):
            users.append(request.to_addr.uri.user)
        return next((by_user[user] for user in users if user in by_user), "")

    def user_of(self, account: str) -> str:
        """The user part we use on a call that came in on ``account`` ("" : ``settings.username``)."""
        line = self._lines.get(account)
        return line.account.username if line is not None else self.settings.username

    def _new_registration(self, account: SipAccount) -> Registration:
        s = self.settings
        registrar_uri = f"{self._scheme}:{_uri_host(self.domain)}"
        registrar_port = _split_hostport(s.registrar or "", 0)[1]
        if registrar_port:
            registrar_uri += f":{registrar_port}"
        return Registration(RegistrationConfig(
            registrar_uri=registrar_uri, aor=f"{self._scheme}:{account.username}@{_uri_host(self.domain)}",
            contact=self._contact(user=account.username), via_sent_by=self._sent_by(),
            transport=self.transport_name,
            credentials=DigestCredentials(account.auth_user or account.username, account.password),
            expires=account.expires, user_agent=s.user_agent, allow=ALLOW,
            account=account.name if len(self.accounts) > 1 else "",  # one account: the lines stay as they were
        ))

    async def _exchange(self, registration: Registration, request: SipRequest | None) -> None:
        """Send REGISTERs until the machine has nothing more to say (auth retries, 423 retries)."""
        assert self._registrar is not None
        while request is not None:
            try:
                response = await self._send_request(request, self._registrar)
            except SipTimeout as exc:
                registration.log.warning("REGISTER to %s: %s", self.settings.registrar, exc)
                self.registration_problem = str(exc)
                registration.on_timeout(self._now())
                return
            request = registration.on_response(response, self._now())
            if response.status >= 300 and request is None:
                self.registration_problem = f"the registrar answered {response.status} {response.reason}"
        if registration.state == REGISTERED:
            self.registration_problem = None

    async def _register_loop(self, line: _Line) -> None:
        """One account's registration: refreshes and back-off run on their own, whatever the others do."""
        registration = line.registration
        assert registration is not None
        await self._exchange(registration, registration.start(self._now()))
        while True:
            if registration.state == REGISTERED and not self._registrar_reachable():
                # The connection closed while the 200 OK was on its way to us: what _on_connection_closed
                # does for a registration already in place.
                self._registrar_lost([line])
            if registration.state == REGISTERED:
                line.registered.set()
            elif registration.state in (BACKING_OFF, FAILED):
                line.registered.clear()
            deadline = registration.next_deadline
            if deadline is None:
                return
            line.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(line.wake.wait(), max(0.0, deadline - self._now()))
            await self._exchange(registration, registration.timeout(self._now()))

    async def _unregister(self, line: _Line) -> None:
        registration = line.registration
        if registration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exchange(registration, registration.stop(self._now())), 3.0)
        line.registered.clear()

    def _on_connection_closed(self, peer: Peer) -> None:
        """A connection we opened has ended (the registrar closed it, restarted, or stopped answering pings).

        Transactions waiting on it fail now rather than at timer F (RFC 3261 18.4: a transport error). When it
        carried our registrations, the registrar can no longer reach us through it: every account registers
        again at once, over a new connection (RFC 5626 4.4: the flow failed)."""
        self._on_transport_error(peer, ConnectionError("connection closed"))
        if peer == self._registrar and not self._stopping:
            self._registrar_lost([line for line in self._lines.values() if line.state == REGISTERED])

    def _registrar_reachable(self) -> bool:
        return self._registrar is None or self._transport is None or self._transport.can_reach(self._registrar)

    def _registrar_lost(self, lines: list[_Line]) -> None:
        if not lines:
            return
        assert self._registrar is not None
        logger.warning("connection to the registrar %s:%s lost: registering again over a new one",
                       self._registrar.host, self._registrar.port)
        self.reconnects += 1
        for line in lines:
            assert line.registration is not None
            line.registration.connection_lost(self._now())
            line.registered.clear()
            line.wake.set()

    # -- messages out ----------------------------------------------------------------------------

    @property
    def _scheme(self) -> str:
        """``sips`` when configured (TLS only): every hop to us must then be TLS (RFC 3261 19.1.2)."""
        return "sips" if self.transport_name == "TLS" and self.settings.tls.sips else "sip"

    def _contact_uri(self, host: str | None = None, user: str | None = None) -> str:
        host, port = host or self._advertised[0], self._advertised[1]
        transport = "" if self.transport_name == "UDP" else f";transport={self.transport_name.lower()}"
        if self._scheme == "sips":
            transport = ""  # sips: already says TLS; RFC 5630 deprecates ;transport=tls with it
        # Direct mode may run without a username: then the Contact has no user part at all. Each account
        # registers (and answers) with its own user part, so the PBX routes its calls back to it.
        user = self.settings.username if user is None else user
        return f"{self._scheme}:{user + '@' if user else ''}{_uri_host(host)}:{port}{transport}"

    def _contact(self, host: str | None = None, user: str | None = None) -> str:
        return f"<{self._contact_uri(host, user)}>"

    def _sent_by(self, host: str | None = None) -> str:
        return f"{_uri_host(host or self._advertised[0])}:{self._advertised[1]}"

    async def _send_request(self, request: SipRequest, dest: Peer) -> SipResponse:
        """Run a client transaction; the final response, or SipTimeout (timer F, unreachable peer)."""
        if self._transport is None:
            raise SipTimeout("transport closed")
        self._transport_errors.pop(dest, None)  # an older failure must not explain this request's fate
        tx = ClientTransaction(request, self._transport.reliable)
        key = tx.key
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()

        def on_event(event: ResponseEvent | TimeoutEvent | Terminated) -> None:
            if isinstance(event, ResponseEvent):
                if event.response.status >= 200 and not future.done():
                    future.set_result(event.response)
            elif isinstance(event, TimeoutEvent):
                if not future.done():
                    where = f"{dest.host}:{dest.port}"
                    reason = self._transport_errors.get(dest)
                    future.set_exception(SipTimeout(f"{request.method} to {where} failed: {reason}" if reason
                                                    else f"no answer to {request.method} from {where}"))
            elif self._client.get(key, (None,))[0] is tx:
                del self._client[key]

        self._client[key] = (tx, dest, on_event)
        self._run(tx, tx.start(self._now()), dest, on_event)
        return await future

    async def _send_in_dialog(self, call: IncomingCall, method: str,
                              extra: list[tuple[str, str]] | None = None) -> SipResponse:
        return (await self._request_in_dialog(call, method, extra))[1]

    async def _request_in_dialog(self, call: IncomingCall, method: str, extra: list[tuple[str, str]] | None = None,
                                 body: bytes = b"") -> tuple[SipRequest, SipResponse]:
        """Send a new request in the call's dialog; the request and its final response (or SipTimeout)."""
        request = call.dialog.create_request(
            method, self._sent_by(call.local_host), self.transport_name, body=body,
            content_type="application/sdp" if body else None,
            extra=[("User-Agent", self.settings.user_agent), ("Supported", SUPPORTED), *(extra or [])])
        return request, await self._send_request(request, await self._dialog_peer(call))

    async def _dialog_peer(self, call: IncomingCall) -> Peer:
        """Where the call's in-dialog requests go: its next hop (first route, else the remote target)."""
        host, port = call.dialog.next_hop().host_port
        if (self.transport_name != "UDP" and not call.dialog.route_set and self._transport is not None
                and self._transport.can_reach(call._peer)):
            return call._peer  # reuse the connection the INVITE came in on, while it is open
        return Peer(self.transport_name, await self._resolve(host), port or self._default_port)

    async def _ack_2xx(self, call: IncomingCall, invite: SipRequest) -> None:
        """ACK the 2xx to our re-INVITE (the TU's job, RFC 3261 13.2.2.4); kept to answer its retransmissions."""
        ack = call.dialog.create_ack(invite, self._sent_by(call.local_host), self.transport_name)
        dest = await self._dialog_peer(call)
        data = ack.to_bytes()
        call._refresh_ack = (invite.cseq.seq, data, dest)
        if self._transport is not None:
            self._transport.send(data, dest)

    def _reack(self, response: SipResponse, peer: Peer) -> bool:
        """A retransmitted 2xx to our last re-INVITE, from where the ACK went: the ACK again."""
        call = self._calls.get(response.call_id)
        sent = call._refresh_ack if call is not None else None
        if (sent is None or self._transport is None or not 200 <= response.status < 300
                or response.cseq.method != "INVITE" or response.cseq.seq != sent[0] or peer.host != sent[2].host):
            return False
        self._transport.send(sent[1], sent[2])
        return True

    @staticmethod
    def _response_peer(request: SipRequest, peer: Peer) -> Peer:
        """Where responses to ``request`` go: always the address it came from (and over TCP the same
        connection). RFC 3261 18.2.2 would send to the Via's sent-by port when the client did not ask for
        rport; a Via is written by the sender, though, and following it let one forged request make us send
        a dozen responses to a third party. Every PBX and phone listens where it sends from (symmetric
        signalling), and the Via we answer records the address we used (``received``/``rport``)."""
        return peer

    def _decorate(self, request: SipRequest, status: int, response: SipResponse,
                  extra: list[tuple[str, str]] | None) -> None:
        """The headers every response of ours carries for its method (Allow, Accept, Contact, Server)."""
        if request.method == "OPTIONS" and status < 300:
            response.headers.add("Contact", self._contact(self.advertised_host(request.vias[0].received
                                                                               or request.vias[0].host)))
        if request.method in ("INVITE", "OPTIONS") or status == 405:
            response.headers.add("Allow", ALLOW)
        if request.method == "OPTIONS":
            response.headers.add("Accept", ACCEPT)
        if request.method == "OPTIONS" or (request.method in ("INVITE", "UPDATE") and 100 < status < 300):
            response.headers.add("Supported", SUPPORTED)
        response.headers.add("Server", self.settings.user_agent)
        for name, value in extra or []:
            response.headers.add(name, value)

    def _respond(self, request: SipRequest, status: int, *, reason: str | None = None,
                 response: SipResponse | None = None, extra: list[tuple[str, str]] | None = None) -> None:
        """Answer through the request's server transaction (a dialog passes its own ``response``)."""
        if response is None:
            to_tag = None if request.to_addr.tag or status == 100 else new_tag()
            response = build_response(request, status, reason, to_tag=to_tag)
        self._decorate(request, status, response, extra)
        entry = self._server.get(server_key(request))
        if entry is None:
            logger.debug("no server transaction for %s %s", request.method, request.call_id)
            return
        tx, dest = entry
        try:
            actions = tx.respond(response, self._now())
        except SipBuildError as exc:  # a value that would break the message: nothing goes out
            logger.error("%s %s: response %d not sent: %s", request.method, request.call_id, status, exc)
            actions = tx.respond(build_response(request, 500, to_tag=response.to_addr.tag), self._now())
        self._run(tx, actions, dest, self._server_events(tx))

    def _respond_statelessly(self, request: SipRequest, peer: Peer, status: int, *, reason: str | None = None,
                             extra: list[tuple[str, str]] | None = None) -> None:
        """Answer without a transaction (RFC 3261 8.2.7): what is not part of a call (OPTIONS, a refused
        INVITE, a request for no dialog) costs no memory, however many arrive. A retransmission gets the
        same response again: its To tag is derived from the request, not drawn at random."""
        if self._transport is None:
            return
        to_tag = None if request.to_addr.tag else self._stateless_tag(request)
        response = build_response(request, status, reason, to_tag=to_tag)
        self._decorate(request, status, response, extra)
        try:
            data = response.to_bytes()
        except SipBuildError as exc:
            logger.error("%s %s: response %d not sent: %s", request.method, request.call_id, status, exc)
            return
        self._transport.send(data, self._response_peer(request, peer))

    def _stateless_tag(self, request: SipRequest) -> str:
        key = f"{request.branch}|{request.call_id}|{request.from_addr.tag}".encode()
        return hashlib.blake2b(key, key=self._tag_secret, digest_size=6).hexdigest()

    def _respond_in_dialog(self, call: IncomingCall, request: SipRequest, status: int, *,
                           reason: str | None = None, body: bytes = b"",
                           extra: list[tuple[str, str]] | None = None) -> _AckWait | None:
        """A response carrying the dialog's To tag; a 2xx to INVITE returns its ACK wait."""
        content_type = "application/sdp" if body else None
        response = call.dialog.response(request, status, reason, body=body, content_type=content_type)
        self._respond(request, status, response=response, extra=extra)
        if request.method != "INVITE" or not 200 <= status < 300:
            return None
        # The transaction ends with a 2xx: the core's retransmitter re-sends it until ACK (13.3.1.4).
        return self._resend_until_acknowledged(call, request, response, None)

    def _respond_reliably(self, call: IncomingCall, request: SipRequest, status: int, extra: list[tuple[str, str]],
                          on_give_up: Callable[[], None]) -> _AckWait | None:
        """A reliable provisional response (RFC 3262): re-sent until its PRACK; ``on_give_up`` after 64*T1."""
        response = call.dialog.response(request, status)
        self._respond(request, status, response=response, extra=extra)
        return self._resend_until_acknowledged(call, request, response, on_give_up)

    def _resend_until_acknowledged(self, call: IncomingCall, request: SipRequest, response: SipResponse,
                                   on_give_up: Callable[[], None] | None) -> _AckWait | None:
        if self._transport is None:
            return None
        wait = _AckWait(Uas2xxRetransmitter(response.to_bytes(), self._transport.reliable, self._now()))
        dest = self._response_peer(request, call._peer)

        def on_event(event: ResponseEvent | TimeoutEvent | Terminated) -> None:
            if isinstance(event, TimeoutEvent) and not wait.done.is_set():
                wait.finish(acknowledged=False)
                if on_give_up is not None:
                    on_give_up()

        self._run(wait.retransmitter, [], dest, on_event)
        return wait

    def _server_events(self, tx: ServerTransaction) -> EventHandler:
        def on_event(event: ResponseEvent | TimeoutEvent | Terminated) -> None:
            if isinstance(event, Terminated):
                key = tx.key
                if self._server.get(key, (None,))[0] is tx:
                    del self._server[key]
                    self._budget.release(key)
            elif isinstance(event, TimeoutEvent) and event.timer == "H":
                logger.info("%s from %s: no ACK for our final response", tx.request.method,
                            tx.request.from_addr.uri)

        return on_event

    # -- messages in -----------------------------------------------------------------------------

    def _on_transport_error(self, peer: Peer, exc: Exception) -> None:
        self._transport_errors[peer] = str(exc)
        if len(self._transport_errors) > 64:  # one per destination we sent to: bounded all the same
            self._transport_errors.pop(next(iter(self._transport_errors)))
        for tx, dest, on_event in list(self._client.values()):
            if dest == peer:
                self._run(tx, tx.transport_error(), dest, on_event)

    def _on_message(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        try:
            if isinstance(message, SipResponse):
                self._on_response(message, peer)
            else:
                self._on_request(message, peer)
        except SipParseError as exc:  # a header the parser accepted leniently but we cannot use
            if self._throttle.allow("unusable", peer.host, self._now()):
                logger.info("unusable message from %s:%s: %s (logged once a minute per source)", peer.host,
                            peer.port, exc.reason)

    def _on_response(self, response: SipResponse, peer: Peer) -> None:
        entry = self._client.get(client_key(response))
        if entry is None:
            if not self._reack(response, peer):
                logger.debug("stray response %s %s", response.status, response.cseq)
            return
        tx, dest, on_event = entry
        self._run(tx, tx.receive(response, self._now()), dest, on_event)

    def _on_request(self, request: SipRequest, peer: Peer) -> None:
        """Screen a request before it may cost state: a stranger's is refused; what is not part of a call
        is answered statelessly; only an admitted INVITE or a request in a call's dialog gets a server
        transaction, and those are bounded per source (``settings.limits``)."""
        if not self.policy.trusts(peer.host) and not self._in_known_dialog(request):
            self._refuse_stranger(request, peer)
            return
        key = server_key(request)
        entry = self._server.get(key)
        if entry is not None:  # a retransmission, or the ACK of a non-2xx final response
            tx, dest = entry
            self._run(tx, tx.receive(request, self._now()), dest, self._server_events(tx))
            return
        if request.method == "ACK":
            self._on_2xx_ack(request)
            return
        call = self._calls.get(request.call_id)
        if (request.method == "INVITE" and call is not None and not request.to_addr.tag
                and call._invite.branch == request.branch):
            return  # INVITE retransmitted after our 2xx: the 2xx retransmitter answers it
        if self._transport is None:
            return
        stamp_source(request, peer.host, peer.port)
        if request.method == "CANCEL":
            self._on_cancel(request, peer)
            return
        try:
            status, extra, offer = self._screen(request, call, peer)
        except SipParseError as exc:
            if self._throttle.allow("bad-request", peer.host, self._now()):
                logger.info("bad %s from %s:%s: %s (logged once a minute per source)", request.method,
                            peer.host, peer.port, exc.reason)
            self._respond_statelessly(request, peer, 400, reason=exc.reason)
            return
        if status:
            self._respond_statelessly(request, peer, status, extra=extra)
            # A 422 refuses no call: the PBX sends the INVITE again at once with our Min-SE (RFC 4028 6).
            if request.method == "INVITE" and not request.to_addr.tag and status != 422 \
                    and self.on_refused is not None:
                self.on_refused(status)
            return
        shed = self._budget.admit(key, peer.host, _approximate_size(request))
        if shed is not None:
            self._shed(shed, peer, request.method)
            if request.method == "BYE" and call is not None and call.dialog.check_request(request) is None:
                # Over the limit, a call can still be ended: a flood must not keep a dead call up.
                self._respond_statelessly(request, peer, 200)
                call._end("remote-bye")
            return
        tx = ServerTransaction(request, self._transport.reliable, self._now())
        self._server[key] = (tx, self._response_peer(request, peer))
        self._arm(tx, peer, self._server_events(tx))  # its guard timer runs from the start
        if call is not None and request.to_addr.tag:
            self._on_in_dialog(call, request)
        else:
            self._on_invite(request, peer, offer)

    def _screen(self, request: SipRequest, call: IncomingCall | None,
                peer: Peer) -> tuple[int, list[tuple[str, str]] | None, SessionDescription | None]:
        """The status to answer statelessly with (0: the request belongs to a call and needs a transaction),
        extra headers for it, and a new INVITE's SDP offer (None for a late offer)."""
        method = request.method
        if request.to_addr.tag:
            if (call is None or not call.dialog.matches(request)
                    or (call.state == "ended" and method != "BYE")):
                return 481, None, None
            return 0, None, None
        if method == "OPTIONS":
            return 200, None, None
        if method in ("BYE", "INFO", "NOTIFY", "REFER", "UPDATE", "PRACK"):
            return 481, None, None
        if method != "INVITE":
            return (405 if method in ("REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE") else 501), None, None
        if call is not None:  # a second INVITE with a call's Call-ID and no To tag (RFC 3261 8.2.2.2)
            return 482, None, None
        return self._admit(request, peer)

    def _in_known_dialog(self, request: SipRequest) -> bool:
        """A request in one of our dialogs (its Call-ID and both tags, which a stranger cannot guess) is taken
        from any address: the dialog's far end may be a phone the PBX let talk to us directly (a NOTIFY
        about a transfer, a BYE)."""
        if not request.to_addr.tag:
            return False
        call = self._calls.get(request.call_id)
        return call is not None and call.dialog.matches(request)

    def _refuse_stranger(self, request: SipRequest, peer: Peer) -> None:
        """A request from an address that may not call us: an INVITE gets one stateless 403 (a misconfigured
        PBX then sees why, and a spoofed source gets no more than it sent: no 100, no retransmissions);
        anything else is dropped unanswered, so a scanner learns nothing."""
        self._shed("untrusted", peer, request.method)
        if request.method != "INVITE" or request.to_addr.tag:
            return
        stamp_source(request, peer.host, peer.port)
        self._respond_statelessly(request, peer, 403)
        if self.on_refused is not None:
            self.on_refused(403)

    def _shed(self, reason: str, peer: Peer, method: str) -> None:
        """Count a request dropped without state; log it once a minute per source and reason."""
        if self.on_shed is not None:
            self.on_shed(reason)
        if self._throttle.allow(reason, peer.host, self._now()):
            what = "not trusted (sip.trusted_hosts)" if reason == "untrusted" else f"over the {reason} limit"
            logger.warning("%s from %s:%s dropped: %s (logged once a minute per source)", method, peer.host,
                           peer.port, what)

    def _on_2xx_ack(self, request: SipRequest) -> None:
        call = self._calls.get(request.call_id)
        if call is None or not call.dialog.matches(request):
            return
        wait = call._ack_wait
        if wait is not None and not wait.done.is_set():
            wait.finish(acknowledged=True, body=request.body)
            self._disarm(wait.retransmitter)
            if wait.carries_offer and call.state == "confirmed" and request.body.strip():
                # A re-INVITE without SDP (a late offer: a PBX holding this way, or a refresh): our 2xx carried
                # the offer, their ACK the answer, which may put the call on hold or change its codec.
                call._take_answer(request.body)

    def _on_cancel(self, request: SipRequest, peer: Peer) -> None:
        """CANCEL is answered statelessly; a CANCEL for a ringing call ends its INVITE with 487."""
        target = self._server.get(cancel_target_key(request))
        call = self._calls.get(request.call_id)
        if target is None or call is None:
            self._respond_statelessly(request, peer, 481)
            return
        self._respond_statelessly(request, peer, 200)
        if call.state == "ringing":
            self._respond_in_dialog(call, call._invite, 487)
            call._end("cancelled")

    def _on_in_dialog(self, call: IncomingCall, request: SipRequest) -> None:
        error = call.dialog.check_request(request)
        if error is not None:
            self._respond(request, error, reason="CSeq Out of Order" if error == 500 else None)
            return
        method = request.method
        unsupported = _unsupported(request)
        if unsupported and method in ("INVITE", "UPDATE"):
            self._respond(request, 420, extra=[("Unsupported", ", ".join(unsupported))])
            return
        if method == "BYE":
            self._respond(request, 200)
            call._end("remote-bye")
        elif method == "INVITE":
            call._handle_reinvite(request)
        elif method == "UPDATE":
            call._handle_update(request)
        elif method == "PRACK":
            call._handle_prack(request)
        elif method == "INFO":
            call._handle_info(request)
        elif method == "NOTIFY":
            call._handle_notify(request)
        elif method == "OPTIONS":
            self._respond(request, 200)
        else:
            self._respond(request, 405 if method in ("REFER", "SUBSCRIBE", "MESSAGE") else 501)

    def _admit(self, request: SipRequest,
               peer: Peer) -> tuple[int, list[tuple[str, str]] | None, SessionDescription | None]:
        """Whether a new INVITE may become a call: (0, None, its offer) or (the status to refuse it with,
        extra headers, None). The offer is None for a late offer (no body)."""
        unsupported = _unsupported(request)
        if not self.policy.is_ours(SipUri.parse(request.uri).user):
            # Our PBX may route any number to any extension; a call to another user part is not ours to
            # answer (a bot dialling premium numbers through us, or a PBX misconfiguration).
            if self._throttle.allow("not-ours", peer.host, self._now()):
                logger.warning("INVITE for %s from %s refused: not our user part (sip.username, sip.aliases)",
                               request.uri[:80], peer.host)
            return 404, None, None
        if self._stopping or self.active_calls >= self.settings.max_calls:
            if self._throttle.allow("busy", peer.host, self._now()):
                logger.info("INVITE %s refused: busy (%d calls; logged once a minute per source)",
                            request.call_id[:80], self.active_calls)
            return 486, None, None
        if unsupported:
            return 420, [("Unsupported", ", ".join(unsupported))], None
        try:
            timer_terms(request.headers, self._timer_policy)
        except IntervalTooSmall as exc:
            if self._throttle.allow("too-brief", peer.host, self._now()):
                logger.info("INVITE %s: session interval below %d s, answered 422 (logged once a minute per "
                            "source)", request.call_id[:80], exc.min_se)
            return 422, [("Min-SE", str(exc.min_se))], None
        if not request.body.strip():
            return 0, None, None
        try:
            return 0, None, SessionDescription.parse(request.body)
        except SdpError as exc:
            if self._throttle.allow("bad-offer", peer.host, self._now()):
                logger.info("INVITE %s without a usable SDP offer: %s", request.call_id[:80], exc)
            return 488, None, None

    def _on_invite(self, request: SipRequest, peer: Peer, offer: SessionDescription | None) -> None:
        self._respond(request, 100)
        local_host = self.advertised_host(peer.host)
        account = self.account_for(request)
        dialog = Dialog.from_invite(request, self._contact(local_host, self.user_of(account)))
        call = IncomingCall(self, request, peer, offer, dialog, local_host)
        call.account = account
        self._calls[call.call_id] = call
        if "100rel" in _options(request, "Require"):
            call._ring_reliably()
        else:  # with only Supported: 100rel, an unreliable 180 is still allowed (RFC 3262 3), and simpler
            self._respond_in_dialog(call, request, 180)
        logger.info("call %s from %s ringing%s", call.call_id, call.from_uri,
                    f" on account {account}" if account else "")
        self._spawn(self._run_on_call(call))

    async def _run_on_call(self, call: IncomingCall) -> None:
        try:
            await self.on_call(call)
        except Exception:
            logger.exception("call %s: on_call failed", call.call_id)
            if call.state == "ringing":
                self._respond_in_dialog(call, call._invite, 500)
                call._end("error")
            elif call.state != "ended":
                await call.hangup()

    def _call_ended(self, call: IncomingCall) -> None:
        # Keep the dialog a while so retransmitted BYEs and late ACKs still find it.
        asyncio.get_running_loop().call_later(32.0, self._forget_call, call)

    def _forget_call(self, call: IncomingCall) -> None:
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]


__all__ = ["IncomingCall", "SipAccount", "SipTimeout", "UaSettings", "UserAgent"]
