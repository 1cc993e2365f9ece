"""RFC 3261 section 17 transactions as pure state machines; timers are deadlines on a caller's clock.

Each transaction is driven with ``receive(msg, now)``, ``respond(resp, now)`` (server side) and
``timeout(now)`` whenever ``now >= next_deadline``; every call returns a list of actions for the shell:
``Send`` (bytes for the transport), ``ResponseEvent`` (client side: hand the response to the TU),
``TimeoutEvent`` (timer B/F/H fired, or the transport failed) and ``Terminated`` (forget the transaction).
Retransmissions happen only over unreliable transports (``reliable=False``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sipagent.sip.headers import CSeq, Via
from sipagent.sip.message import Headers, SipRequest, SipResponse, build_response

logger = logging.getLogger(__name__)

T1 = 0.5  # RTT estimate
T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # maximum duration a message stays in the network
TRYING_DELAY = 0.2  # a server INVITE transaction sends 100 Trying if the TU has not answered by then
# A server transaction whose TU never sends a final response still ends (so a request the TU dropped can
# never pin memory): a non-INVITE after 64*T1, as its client gives up then; an INVITE after a long ring.
NON_INVITE_GUARD = 64 * T1
INVITE_GUARD = 300.0


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class ResponseEvent:
    response: SipResponse


@dataclass(frozen=True)
class TimeoutEvent:
    timer: str  # "B", "F", "H", "2xx", "guard" (no final response from the TU) or "transport"


@dataclass(frozen=True)
class Terminated:
    pass


Action = Send | ResponseEvent | TimeoutEvent | Terminated


@dataclass
class _Timers:
    deadlines: dict[str, float] = field(default_factory=dict)

    def set(self, name: str, at: float) -> None:
        self.deadlines[name] = at

    def cancel(self, *names: str) -> None:
        for name in names:
            self.deadlines.pop(name, None)

    def clear(self) -> None:
        self.deadlines.clear()

    def pop_due(self, now: float) -> str | None:
        due = [(at, name) for name, at in self.deadlines.items() if at <= now]
        if not due:
            return None
        _, name = min(due)
        del self.deadlines[name]
        return name

    @property
    def next(self) -> float | None:
        return min(self.deadlines.values(), default=None)


class _Transaction:
    state: str

    def __init__(self, reliable: bool) -> None:
        self.reliable = reliable
        self._timers = _Timers()

    @property
    def next_deadline(self) -> float | None:
        return self._timers.next

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"

    def timeout(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while (name := self._timers.pop_due(now)) is not None:
            actions += self._fire(name, now)
        return actions

    def transport_error(self) -> list[Action]:
        """The transport could not send (RFC 3261 17.1.4 / 17.2.4): report a timeout and stop."""
        if self.terminated:
            return []
        return [TimeoutEvent("transport"), *self._terminate()]

    def _terminate(self) -> list[Action]:
        self.state = "terminated"
        self._timers.clear()
        return [Terminated()]

    def _fire(self, name: str, now: float) -> list[Action]:
        raise NotImplementedError


def _linger(reliable: bool, duration: float) -> float:
    return 0.0 if reliable else duration


class ClientTransaction(_Transaction):
    """INVITE (17.1.1) or non-INVITE (17.1.2) client transaction for ``request``.

    States: INVITE calling → proceeding → completed → terminated; non-INVITE trying → proceeding →
    completed → terminated. A 2xx to INVITE terminates at once: ACK and 2xx retransmissions are the TU's.
    """

    def __init__(self, request: SipRequest, reliable: bool) -> None:
        super().__init__(reliable)
        self.request = request
        self.is_invite = request.method == "INVITE"
        self.state = "calling" if self.is_invite else "trying"
        self._data = request.to_bytes()
        self._interval = T1
        self._ack: bytes | None = None

    @property
    def key(self) -> tuple[str, str]:
        return client_key_for_request(self.request)

    def start(self, now: float) -> list[Action]:
        if not self.reliable:
            self._timers.set("A" if self.is_invite else "E", now + T1)
        self._timers.set("B" if self.is_invite else "F", now + 64 * T1)
        return [Send(self._data)]

    def receive(self, response: SipResponse, now: float) -> list[Action]:
        if self.state == "terminated":
            return []
        status = response.status
        if self.state == "completed":
            # A retransmitted final response: INVITE re-sends its ACK, non-INVITE absorbs it.
            return [Send(self._ack)] if self._ack is not None and status >= 300 else []
        if status < 200:
            self.state = "proceeding"
            if self.is_invite:
                self._timers.cancel("A", "B")  # RFC 3261 17.1.1.2: the TU now waits for the final
            elif not self.reliable:
                self._timers.set("E", now + T2)
                self._interval = T2
            return [ResponseEvent(response)]
        if self.is_invite and status < 300:
            return [ResponseEvent(response), *self._terminate()]
        self.state = "completed"
        self._timers.clear()
        actions: list[Action] = []
        if self.is_invite:
            self._ack = build_non2xx_ack(self.request, response).to_bytes()
            actions.append(Send(self._ack))
        actions.append(ResponseEvent(response))
        timer = "D" if self.is_invite else "K"
        self._timers.set(timer, now + _linger(self.reliable, 32.0 if self.is_invite else T4))
        return actions

    def _fire(self, name: str, now: float) -> list[Action]:
        if name in ("A", "E"):
            if name == "A":
                self._interval *= 2
            else:
                self._interval = T2 if self.state == "proceeding" else min(self._interval * 2, T2)
            self._timers.set(name, now + self._interval)
            return [Send(self._data)]
        if name in ("B", "F"):
            logger.info("%s transaction timed out (timer %s)", self.request.method, name)
            return [TimeoutEvent(name), *self._terminate()]
        return self._terminate()  # D or K


class ServerTransaction(_Transaction):
    """INVITE (17.2.1) or non-INVITE (17.2.2) server transaction for a received ``request``.

    The TU calls ``respond``; retransmitted requests go to ``receive`` and are absorbed (the last
    response is re-sent). ACK for a non-2xx final response also goes to ``receive``.
    """

    def __init__(self, request: SipRequest, reliable: bool, now: float) -> None:
        super().__init__(reliable)
        self.request = request
        self.is_invite = request.method == "INVITE"
        self.state = "proceeding" if self.is_invite else "trying"
        self._last: bytes | None = None
        self._interval = T1
        if self.is_invite:
            self._timers.set("trying", now + TRYING_DELAY)
        self._timers.set("guard", now + (INVITE_GUARD if self.is_invite else NON_INVITE_GUARD))

    @property
    def key(self) -> tuple[str, str, str]:
        return server_key(self.request)

    def respond(self, response: SipResponse, now: float) -> list[Action]:
        if self.state in ("completed", "confirmed", "terminated"):
            logger.debug("late response %d ignored in state %s", response.status, self.state)
            return []
        self._timers.cancel("trying")
        self._last = response.to_bytes()
        if response.status >= 200:
            self._timers.cancel("guard")
        actions: list[Action] = [Send(self._last)]
        if response.status < 200:
            self.state = "proceeding"
            return actions
        if self.is_invite and response.status < 300:
            return actions + self._terminate()  # 2xx retransmission is the TU's job (Uas2xxRetransmitter)
        self.state = "completed"
        if self.is_invite:
            if not self.reliable:
                self._timers.set("G", now + T1)
            self._timers.set("H", now + 64 * T1)
        else:
            self._timers.set("J", now + _linger(self.reliable, 64 * T1))
        return actions

    def receive(self, request: SipRequest, now: float) -> list[Action]:
        if request.method == "ACK":
            if self.state == "completed" and self.is_invite:
                self.state = "confirmed"
                self._timers.cancel("G", "H")
                self._timers.set("I", now + _linger(self.reliable, T4))
            return []
        if self.state in ("proceeding", "completed") and self._last is not None:
            return [Send(self._last)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "trying":
            self._last = build_response(self.request, 100).to_bytes()
            return [Send(self._last)]
        if name == "G":
            self._interval = min(self._interval * 2, T2)
            self._timers.set("G", now + self._interval)
            return [Send(self._last)] if self._last is not None else []
        if name == "H":
            logger.info("no ACK for final response to INVITE (timer H)")
            return [TimeoutEvent("H"), *self._terminate()]
        if name == "guard":
            logger.info("%s got no final response from us in time: transaction dropped", self.request.method)
            return [TimeoutEvent("guard"), *self._terminate()]
        return self._terminate()  # I or J


class Uas2xxRetransmitter:
    """Re-sends our 2xx to an INVITE until the ACK arrives (RFC 3261 13.3.1.4).

    Intervals start at T1 and double up to T2 (unreliable transports only); after 64*T1 without ACK
    it reports ``TimeoutEvent("2xx")``: the TU should then end the dialog with BYE.
    """

    def __init__(self, data: bytes, reliable: bool, now: float) -> None:
        self.data = data
        self.reliable = reliable
        self._interval = T1
        self._resend_at: float | None = None if reliable else now + T1
        self._give_up_at: float | None = now + 64 * T1
        self.done = False

    @property
    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return min(t for t in (self._resend_at, self._give_up_at) if t is not None)

    def ack_received(self) -> None:
        self.done = True

    def timeout(self, now: float) -> list[Action]:
        if self.done:
            return []
        if self._give_up_at is not None and now >= self._give_up_at:
            self.done = True
            return [TimeoutEvent("2xx"), Terminated()]
        actions: list[Action] = []
        if self._resend_at is not None and now >= self._resend_at:
            self._interval = min(self._interval * 2, T2)
            self._resend_at = now + self._interval
            actions.append(Send(self.data))
        return actions


def server_key(request: SipRequest) -> tuple[str, str, str]:
    """Matches retransmissions, ACK (to a non-2xx) and CANCEL's target (RFC 3261 17.2.3).

    ACK maps onto the INVITE's key; CANCEL keeps its own (use ``cancel_target_key`` for the INVITE).
    """
    via = Via.parse(request.headers.get_all("Via")[0])
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = f"{via.host.lower()}:{via.port or ''}"
    return (via.branch or "", sent_by, method)


def cancel_target_key(cancel: SipRequest) -> tuple[str, str, str]:
    branch, sent_by, _ = server_key(cancel)
    return (branch, sent_by, "INVITE")


def client_key(response: SipResponse) -> tuple[str, str]:
    """Matches a response to our client transaction (RFC 3261 17.1.3): top Via branch + CSeq method."""
    via = Via.parse(response.headers.get_all("Via")[0])
    return (via.branch or "", response.cseq.method)


def client_key_for_request(request: SipRequest) -> tuple[str, str]:
    return (request.branch or "", request.method)


def build_non2xx_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a 3xx-6xx response, sent by the INVITE client transaction (RFC 3261 17.1.1.3)."""
    headers = Headers()
    headers.add("Via", request.headers.get_all("Via")[0])
    for name in ("Route",):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    headers.add("Max-Forwards", "70")
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", str(CSeq(request.cseq.seq, "ACK")))
    return SipRequest("ACK", request.uri, headers)
