"""Registration with a registrar (RFC 3261 section 10) as a pure state machine.

States: unregistered → registering → registered → refreshing → registered ...; timeouts and transient
refusals (408, 480, 5xx) go to backing-off (retry later, exponential delay with jitter and a cap); rejected
credentials and final refusals (403, 404, a redirect, 6xx) go to failed (retried after the maximum delay,
doubled at each refusal up to 8 times it, in case the PBX is fixed); ``stop`` goes through unregistering,
which ends in unregistered whatever the registrar answers. ``problem`` says in plain words why the last
attempt did not register; ``failed`` counts the attempts that did not, by reason (for the metrics).

The shell sends each returned ``SipRequest`` in a new client transaction, feeds the final response to
``on_response`` (or calls ``on_timeout`` when the transaction times out / the transport fails), and
calls ``timeout(now)`` when ``now >= next_deadline``.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from sipagent.errors import SipParseError
from sipagent.sip._text import unquote
from sipagent.sip.auth import DigestAuthenticator, DigestCredentials
from sipagent.sip.headers import CSeq, new_branch, new_call_id, new_tag
from sipagent.sip.message import Headers, SipRequest, SipResponse
from sipagent.sip.uri import NameAddr, SipUri

logger = logging.getLogger(__name__)
_DIGITS = re.compile(r"[0-9]{1,10}")


@dataclass
class RegistrationConfig:
    registrar_uri: str  # Request-URI, e.g. "sip:pbx.example.com:5060"
    aor: str  # address of record, e.g. "sip:1001@pbx.example.com"
    contact: str  # e.g. "<sip:1001@192.0.2.1:5060;transport=udp>"
    via_sent_by: str  # "host:port" for our Via
    transport: str = "UDP"
    credentials: DigestCredentials | None = None
    expires: int = 300
    user_agent: str = "sipagent"
    allow: str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY"  # the UA passes what it handles
    backoff_initial: float = 2.0
    backoff_max: float = 120.0
    min_refresh: float = 5.0
    # The longest registration we hold: a 423's Min-Expires above it is refused rather than obeyed (a binding
    # for years would outlive this process), and a grant above what we asked is cut to what we asked.
    max_expires: int = 86400
    # Each back-off delay is shortened by a random part of up to this fraction (RFC 5626 4.5: many agents
    # on one PBX must not retry in step after its restart). 0 keeps the core deterministic.
    backoff_jitter: float = 0.0
    account: str = ""  # the account's name, on every log line: one process may register several


class _AccountLog(logging.LoggerAdapter[logging.Logger]):
    """Names the account on each line (text: a prefix; JSON: an ``account`` field)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        account = str((self.extra or {}).get("account", ""))
        if not account:
            return msg, kwargs
        kwargs["extra"] = {"account": account, **(kwargs.get("extra") or {})}
        return f"account {account}: {msg}", kwargs


def refresh_delay(granted: int, min_refresh: float = 5.0) -> float:
    """Refresh well before expiry: min(80 %, expiry − 30 s), but never before half of it."""
    return max(min(granted * 0.8, granted - 30.0), granted * 0.5, min_refresh)


RECONNECT_SPREAD_S = 1.0  # registering again after the registrar's connection closed: within this
# Refusals worth retrying soon; any other refusal of a REGISTER is final until the PBX is changed.
_TRANSIENT = frozenset({408, 480, 500, 502, 503, 504})


class Registration:
    def __init__(self, config: RegistrationConfig, call_id: str | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self.log = _AccountLog(logger, {"account": config.account})
        self.state = "unregistered"
        self.call_id = call_id or new_call_id()
        self.from_tag = new_tag()
        self.expires = config.expires  # what we ask for; raised by 423
        self.granted: int | None = None
        self.registered_until: float | None = None
        self.next_deadline: float | None = None
        self.failures = 0
        self.problem: str | None = None  # why the last attempt did not register, in plain words
        # Attempts that did not register, by reason: the registrar's status ("401": the password was refused,
        # "403", "503"...), "timeout" (no answer, or the transport failed), "no-grant" (a 200 granting 0 s),
        # "connection-lost" (the connection a binding lived on closed). A challenge answered is no failure.
        self.failed: Counter[str] = Counter()
        self._rand = rand
        self._refusals = 0  # final refusals in a row: each one doubles the wait before the next attempt
        self._seq = 0
        self._pending: SipRequest | None = None
        self._auth = DigestAuthenticator(config.credentials) if config.credentials else None

    # -- verbs -------------------------------------------------------------------------------------

    def start(self, now: float) -> SipRequest:
        return self._register(now, "registering")

    def stop(self, now: float) -> SipRequest | None:
        """Unregister (Expires: 0) if we hold a registration, or may: a first REGISTER still unanswered may
        have bound us already, and its 200 would go unheard, leaving the PBX ringing a stopped agent until the
        binding expires (a registrar answers an Expires: 0 for no binding with 200 all the same). None when
        there is nothing to undo."""
        self.next_deadline = None
        if self.state in ("registered", "refreshing", "registering") or (
            self.registered_until is not None and now < self.registered_until
        ):
            return self._build(0, "unregistering")
        self._set_state("unregistered")
        self._pending = None
        return None

    def timeout(self, now: float) -> SipRequest | None:
        """The wake-up time came: refresh, or retry after a back-off."""
        if self.next_deadline is None or now < self.next_deadline:
            return None
        self.next_deadline = None
        if self.state == "registered":
            return self._register(now, "refreshing")
        if self.state in ("backing-off", "failed"):
            if self._auth is not None and self.state == "failed":
                self._auth.reset()
            return self._register(now, "registering")
        return None

    def on_timeout(self, now: float) -> None:
        """The REGISTER transaction timed out or could not be sent (registrar down)."""
        if self.state == "unregistering":
            self._unregistered()
            return
        self.problem = "the registrar did not answer"
        self.log.warning("registrar did not answer")
        self._back_off(now, None, "timeout")

    def connection_lost(self, now: float) -> None:
        """The connection our registration lives on is gone (TCP/TLS): the registrar can no longer reach us
        through it, so the binding is as good as lost. Back off for no time at all: ``timeout(now)`` then
        registers again within RECONNECT_SPREAD_S, over a new connection (RFC 5626 4.4): at a random point of
        it, so that the agents a PBX restart cut off do not all connect and REGISTER in the same instant.
        Nothing to do unless registered: a REGISTER in flight fails by itself and backs off."""
        if self.state != "registered":
            return
        self.failed["connection-lost"] += 1
        self.next_deadline = now + RECONNECT_SPREAD_S * self._rand()
        self._pending = None
        self._set_state("backing-off")

    def on_response(self, response: SipResponse, now: float) -> SipRequest | None:
        """Handle a final response to the pending REGISTER; returns the next request to send, if any."""
        pending = self._pending
        if pending is None or response.status < 200:
            return None
        try:
            if response.cseq != pending.cseq or response.call_id != self.call_id:
                return None  # a stray response to an older REGISTER
        except SipParseError:
            return None
        status = response.status
        if status < 300:
            self._on_success(response, now)
            return None
        if status in (401, 407):
            return self._on_challenge(response, now)
        reason = response.reason[:64]
        if self.state == "unregistering":
            # Even a 423 (which Expires: 0 cannot earn) must not turn a shutdown into a new registration.
            self.log.warning("unregistration refused: %d %s; the binding expires on its own", status, reason)
            self._unregistered()
            return None
        if status == 423:
            return self._on_too_brief(response, now)
        if 300 <= status < 400:
            # Following it would hand our digest to whatever host the Contact names: never.
            self._fail(now, f"the registrar redirected the REGISTER ({status} {reason}); redirects are not "
                            "followed: set sip.registrar to the host that should get it", str(status),
                       _retry_after(response))
        elif status in _TRANSIENT:
            self.problem = f"the registrar answered {status} {reason}"
            self.log.warning("registration rejected: %d %s", status, reason)
            self._back_off(now, _retry_after(response), str(status))
        else:
            self._fail(now, f"the registrar refused the registration: {status} {reason}", str(status),
                       _retry_after(response))
        return None

    # -- internals ---------------------------------------------------------------------------------

    def _on_success(self, response: SipResponse, now: float) -> None:
        if self._auth is not None:
            self._auth.succeeded()
        if self.state == "unregistering":
            self._unregistered()
            return
        granted = self._granted_expiry(response)
        if granted <= 0:
            # A 200 that grants nothing (Expires: 0, or our Contact with expires=0): not registered.
            self.problem = "the registrar answered 200 OK but granted an expiry of 0: not registered"
            self.log.warning("%s", self.problem)
            self._back_off(now, None, "no-grant")
            return
        if granted > self.expires:
            # RFC 3261 10.3 lets a registrar shorten the interval, not lengthen it; refreshing sooner than it
            # asks costs a REGISTER, refreshing after years of silence costs the binding.
            granted = self.expires
        # The floor between REGISTERs keeps a registrar granting seconds from being flooded, but it must not
        # put the refresh after the binding's end: below twice the floor, refresh at half the grant (>= 1 s).
        floor = min(self.config.min_refresh, max(granted * 0.5, 1.0))
        if floor < self.config.min_refresh:
            self.log.warning("the registrar granted only %d s: refreshing every %.1f s", granted, floor)
        self.granted = granted
        self.failures = 0
        self._refusals = 0
        self.problem = None
        self.registered_until = now + granted
        self.next_deadline = now + refresh_delay(granted, floor)
        self._set_state("registered")
        self._pending = None
        self.log.info("registered for %d s", granted)

    def _on_challenge(self, response: SipResponse, now: float) -> SipRequest | None:
        header = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
        challenges = response.headers.get_all(header)
        if self._auth is None or not self._auth.handle_challenge(response.status, challenges):
            refusal = self._auth.refusal if self._auth is not None else "no credentials configured"
            if self.state == "unregistering":
                self.log.warning("unregistration not authenticated: %s", refusal)
                self._unregistered()
                return None
            self._fail(now, f"authentication failed ({response.status}): {refusal}", str(response.status))
            return None
        return self._build(0 if self.state == "unregistering" else self.expires, self.state)

    def _on_too_brief(self, response: SipResponse, now: float) -> SipRequest | None:
        text = (response.headers.get("Min-Expires") or "").strip()
        minimum = int(text) if _DIGITS.fullmatch(text) else 0
        if minimum <= self.expires:
            self.problem = f"the registrar answered 423 without a usable Min-Expires ({text[:20]!r})"
            self.log.error("%s", self.problem)
            self._back_off(now, None, "423")
            return None
        if minimum > self.config.max_expires:
            self._fail(now, f"the registrar wants registrations of at least {minimum} s, more than the "
                            f"{self.config.max_expires} s we hold one for", "423")
            return None
        self.log.info("registrar wants expires >= %d", minimum)
        self.expires = minimum
        return self._build(self.expires, self.state)

    def _granted_expiry(self, response: SipResponse) -> int:
        """Our binding's expiry: its Contact's expires parameter, else the Expires header, else what we asked.
        Other bindings of the AoR (a desk phone on the same extension) are listed too: ours is found by URI."""
        ours = NameAddr.parse(self.config.contact).uri
        contacts = response.headers.get_all("Contact")
        found = False
        for value in contacts:
            try:
                contact = NameAddr.parse(value)
            except SipParseError:
                continue
            if _same_binding(contact.uri, ours):
                found = True
                expires = unquote(contact.params.get("expires") or "")
                if _DIGITS.fullmatch(expires):
                    return int(expires)
        if not found:
            # The registrar rewrote our Contact (NAT: Asterisk's rewrite_contact) or lists only other bindings;
            # it accepted the REGISTER, so the Expires header, else what we asked, is the best we know.
            self.log.info("our Contact is not among the %d in the registrar's 200 OK", len(contacts))
        header = (response.headers.get("Expires") or "").strip()
        if _DIGITS.fullmatch(header):
            return int(header)
        return self.expires

    def _back_off(self, now: float, retry_after: float | None, reason: str) -> None:
        self.failures += 1
        self.failed[reason] += 1
        cfg = self.config
        delay = min(cfg.backoff_initial * 2 ** (min(self.failures, 64) - 1), cfg.backoff_max)
        delay *= 1.0 - min(max(cfg.backoff_jitter, 0.0), 1.0) * self._rand()
        if retry_after is not None:  # never sooner than the registrar asks, never later than a bound
            delay = max(delay, min(retry_after, cfg.backoff_max * 10))
        self.next_deadline = now + delay
        self._pending = None
        self._set_state("backing-off")
        self.log.info("registration retry in %.1f s (failure %d)", delay, self.failures)

    def _fail(self, now: float, problem: str, reason: str, retry_after: float | None = None) -> None:
        """A refusal that retrying soon cannot change: say so, then try again only rarely, and more rarely
        each time (a wrong password every two minutes for hours is what gets an address banned by fail2ban)."""
        self.failures += 1
        self.failed[reason] += 1
        self._refusals += 1
        self.problem = problem
        cfg = self.config
        delay = cfg.backoff_max * 2 ** min(self._refusals - 1, 3)  # 2, 4, 8, then every 16 min by default
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.backoff_max * 10))
        self.log.error("registration failed: %s; next attempt in %.0f s", problem, delay)
        self.next_deadline = now + delay
        self._pending = None
        self._set_state("failed")

    def _unregistered(self) -> None:
        self.registered_until = None
        self.next_deadline = None
        self._pending = None
        self._set_state("unregistered")

    def _register(self, now: float, state: str) -> SipRequest:
        del now  # time is not part of the request; kept for symmetry with the other verbs
        return self._build(self.expires, state)

    def _build(self, expires: int, state: str) -> SipRequest:
        self._set_state(state)
        self._seq += 1
        cfg = self.config
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{cfg.transport.upper()} {cfg.via_sent_by};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{cfg.aor}>;tag={self.from_tag}")
        headers.add("To", f"<{cfg.aor}>")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", str(CSeq(self._seq, "REGISTER")))
        headers.add("Contact", cfg.contact)
        headers.add("Expires", str(expires))
        headers.add("Allow", cfg.allow)
        headers.add("User-Agent", cfg.user_agent)
        if self._auth is not None:
            for name, value in self._auth.headers_for("REGISTER", cfg.registrar_uri):
                headers.add(name, value)
        request = SipRequest("REGISTER", cfg.registrar_uri, headers)
        self._pending = request
        return request

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.log.info("registration %s -> %s", self.state, state)
            self.state = state


def _same_binding(a: SipUri, b: SipUri) -> bool:
    return (a.user, a.host.lower(), a.port or 5060) == (b.user, b.host.lower(), b.port or 5060)


def _retry_after(response: SipResponse) -> float | None:
    text = (response.headers.get("Retry-After") or "").split(";")[0].split("(")[0].strip()
    return float(text) if _DIGITS.fullmatch(text) else None
