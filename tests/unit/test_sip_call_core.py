"""The sans-I/O call core in both roles, with a fake clock and no sockets.

Most tests join a placing core (UAC) and an answering core (UAS) by a lossless wire that serialises every
message to bytes and parses it again, then walk the basic flows of RFC 3665 (successful call, busy, no answer
and CANCEL, 487, BYE from either side, digest retry) and the mid-call flows (re-INVITE and UPDATE hold and
resume, session refresh, REFER in both directions, glare). A few feed the UAS raw INVITE text.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import pytest

from sipagent.errors import SdpError
from sipagent.sdp import SessionDescription, make_offer
from sipagent.sdp.negotiate import LocalSession
from sipagent.sip.auth import DigestCredentials
from sipagent.sip.bodies import parse_dtmf_relay, replaces_header, sipfrag_status
from sipagent.sip.call import (
    MAX_FORKS,
    CallAction,
    CallConfig,
    CallCore,
    Dtmf,
    Ended,
    EndFork,
    Established,
    Held,
    MediaChanged,
    Progress,
    ProvisionalAcked,
    Referred,
    ReofferAnswered,
    Respond,
    Retransmit,
    SendAck,
    SendRequest,
    SipTimeout,
    TransferProgress,
)
from sipagent.sip.front import CallFront
from sipagent.sip.message import SipRequest, SipResponse, build_response, parse_message
from sipagent.sip.outgoing import OutgoingCall
from sipagent.sip.session_timer import TimerPolicy
from sipagent.sip.transport import Peer

UAC_CONFIG = CallConfig(codecs=("PCMU", "PCMA"), local_contact="<sip:1001@192.0.2.1:5060>",
                        via_sent_by="192.0.2.1:5060", random=lambda: 0.5)
UAS_CONFIG = CallConfig(codecs=("PCMA", "PCMU"), local_contact="<sip:2002@192.0.2.2:5060>",
                        via_sent_by="192.0.2.2:5060", random=lambda: 0.5)


def wire(message: SipRequest | SipResponse) -> SipRequest | SipResponse:
    """What the far end reads: the message serialised and parsed again."""
    return parse_message(message.to_bytes())


@dataclass
class Link:
    """A UAC core and the UAS core its INVITE creates, joined by a lossless wire. ``hold`` keeps the
    responses a side sends (for races); ``sent`` records every request per side."""

    uac: CallCore
    uas_config: CallConfig = UAS_CONFIG
    now: float = 0.0
    uas: CallCore | None = None
    events: dict[str, list[CallAction]] = field(default_factory=lambda: {"uac": [], "uas": []})
    sent: dict[str, list[SipRequest]] = field(default_factory=lambda: {"uac": [], "uas": []})
    responses: dict[str, list[SipResponse]] = field(default_factory=lambda: {"uac": [], "uas": []})
    held: list[tuple[str, SipResponse]] = field(default_factory=list)
    hold: set[str] = field(default_factory=set)  # the sides whose responses are kept back
    on_invite: str = "ring"  # what the UAS does with a new INVITE: "ring" or "nothing"
    refer_answer: int = 202  # how a side that takes REFERs answers them
    transfer_result: int = 0  # the sipfrag status it reports at once after that (0: none)
    fronts: dict[str, CallFront] = field(default_factory=dict)  # the awaitable fronts over a side's core

    def core(self, side: str) -> CallCore:
        core = self.uac if side == "uac" else self.uas
        assert core is not None
        return core

    def run(self, side: str, actions: list[CallAction]) -> None:
        other = "uas" if side == "uac" else "uac"
        for action in actions:
            if isinstance(action, Respond):
                response = wire(action.response)
                assert isinstance(response, SipResponse)
                self.responses[side].append(response)
                if side in self.hold:
                    self.held.append((other, response))
                    continue
                self.run(other, self.core(other).receive_response(response, self.now))
            elif isinstance(action, (SendRequest, SendAck)):
                request = wire(action.request)
                assert isinstance(request, SipRequest)
                self.sent[side].append(request)
                self.deliver(other, request)
            elif not isinstance(action, Retransmit):
                self.events[side].append(action)
                front = self.fronts.get(side)
                if front is not None:
                    front.handle(action)
                if isinstance(action, Referred):
                    self.run(side, self.core(side).answer_refer(self.refer_answer, self.now))
                    if self.transfer_result:
                        self.run(side, self.core(side).notify_transfer(self.transfer_result, self.now))

    def deliver(self, side: str, request: SipRequest) -> None:
        if side == "uas" and request.method == "INVITE" and not request.to_addr.tag:
            if self.uas is None or self.uas.invite.cseq.seq != request.cseq.seq:
                self.uas = CallCore.incoming(request, self.uas_config, SessionDescription.parse(request.body))
                if self.on_invite == "ring":
                    self.run("uas", self.uas.ring(self.now))
            return
        if side == "uas" and request.method == "CANCEL":
            ok = build_response(request, 200)
            self.run("uac", self.uac.receive_response(ok, self.now))
            self.run("uas", self.core("uas").cancelled(self.now))
            return
        self.run(side, self.core(side).receive_request(request, self.now))

    def release(self) -> None:
        responses, self.held = self.held, []
        self.hold.clear()
        for side, response in responses:
            self.run(side, self.core(side).receive_response(response, self.now))

    def tick(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, firing each side's deadlines as they fall due."""
        end = self.now + seconds
        while True:
            due = [(d, side) for side, core in (("uac", self.uac), ("uas", self.uas))
                   if core is not None and (d := core.next_deadline) is not None and d <= end]
            if not due:
                break
            deadline, side = min(due)
            self.now = max(self.now, deadline)
            self.run(side, self.core(side).timeout(self.now))
        self.now = end

    def of(self, side: str, kind: type) -> list[CallAction]:
        return [event for event in self.events[side] if isinstance(event, kind)]

    def methods(self, side: str) -> list[str]:
        return [request.method for request in self.sent[side]]

    def statuses(self, side: str) -> list[int]:
        return [response.status for response in self.responses[side]]


def dial(config: CallConfig = UAC_CONFIG, credentials: DigestCredentials | None = None,
         ring_timeout: float | None = None, **link: object) -> Link:
    uac = CallCore.outgoing("sip:2002@pbx.example.com", "sip:1001@pbx.example.com", config, credentials=credentials)
    result = Link(uac, **link)  # type: ignore[arg-type]
    result.run("uac", uac.dial("192.0.2.1", 40000, result.now, ring_timeout=ring_timeout))
    return result


def answered() -> Link:
    link = dial()
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    return link


def ended(link: Link, side: str) -> Ended:
    events = link.of(side, Ended)
    assert len(events) == 1, events
    event = events[0]
    assert isinstance(event, Ended)
    return event


# -- RFC 3665 basic flows ---------------------------------------------------------------------------


def test_successful_call_both_roles() -> None:
    link = dial()
    assert link.uas is not None and link.uac.state == "ringing" and link.uas.state == "ringing"
    progress = link.of("uac", Progress)
    assert progress == [Progress(180, None)]
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    # The UAS prefers PCMA and the UAC offered it: both sides settle on it, each sending to the other.
    [up] = link.of("uac", Established)
    [down] = link.of("uas", Established)
    assert isinstance(up, Established) and isinstance(down, Established)
    assert up.media.codec == down.media.codec == "PCMA"
    assert (up.media.remote_host, up.media.remote_port) == ("192.0.2.2", 50000)
    assert (down.media.remote_host, down.media.remote_port) == ("192.0.2.1", 40000)
    assert link.uac.state == link.uas.state == "confirmed"
    assert link.methods("uac") == ["INVITE", "ACK"]
    assert link.statuses("uas") == [180, 200]
    invite = link.sent["uac"][0]
    assert invite.headers.get("From", ) and invite.from_addr.tag and not invite.to_addr.tag
    assert invite.headers.get("Content-Type") == "application/sdp"
    # Our 2xx is no longer re-sent once ACKed, and the dialogs mirror each other.
    assert link.uac.dialog is not None and link.uas.dialog is not None
    assert link.uac.dialog.local_tag == link.uas.dialog.remote_tag
    assert link.uac.dialog.remote_tag == link.uas.dialog.local_tag


@pytest.mark.parametrize("hanging_up", ["uac", "uas"])
def test_bye_from_either_side(hanging_up: str) -> None:
    link = answered()
    link.run(hanging_up, link.core(hanging_up).hangup(link.now))
    other = "uas" if hanging_up == "uac" else "uac"
    assert ended(link, hanging_up).reason == "local-bye"
    assert ended(link, other).reason == "remote-bye"
    assert link.methods(hanging_up)[-1] == "BYE" and link.statuses(other)[-1] == 200


@pytest.mark.parametrize(("status", "outcome"), [
    (486, "busy"), (600, "busy"), (480, "no-answer"), (408, "no-answer"), (404, "rejected"), (603, "rejected"),
])
def test_refused_call_outcomes(status: int, outcome: str) -> None:
    link = dial()
    assert link.uas is not None
    link.run("uas", link.uas.reject(status, link.now))
    assert ended(link, "uac") == Ended(outcome, status, ended(link, "uac").detail)
    assert ended(link, "uas").reason == "rejected"


def test_no_answer_cancels_after_the_ring_timeout_and_ends_on_487() -> None:
    link = dial(ring_timeout=30.0)
    link.tick(29.0)
    assert link.uac.state == "ringing" and "CANCEL" not in link.methods("uac")
    link.tick(2.0)
    assert link.methods("uac")[-1] == "CANCEL"
    cancel, invite = link.sent["uac"][-1], link.sent["uac"][0]
    assert cancel.branch == invite.branch and cancel.cseq.seq == invite.cseq.seq and cancel.uri == invite.uri
    assert link.statuses("uas")[-1] == 487
    assert ended(link, "uac") == Ended("no-answer", 0)
    assert ended(link, "uas").reason == "cancelled"


def test_cancel_waits_for_a_provisional_response() -> None:
    link = dial(on_invite="nothing")
    link.run("uac", link.uac.cancel(link.now))
    assert link.methods("uac") == ["INVITE"] and link.uac.state == "cancelling"
    assert link.uas is not None
    link.run("uas", link.uas.ring(link.now))  # the 180 shows the INVITE arrived: CANCEL goes now
    assert link.methods("uac") == ["INVITE", "CANCEL"]
    assert ended(link, "uac").reason == "cancelled"


def test_cancel_without_any_final_response_ends_after_64_t1() -> None:
    link = dial(on_invite="nothing")
    assert link.uas is not None
    link.run("uas", link.uas.ring(link.now))
    link.hold.add("uas")  # the 487 never reaches us
    link.run("uac", link.uac.cancel(link.now))
    assert not link.of("uac", Ended)
    link.tick(33.0)
    assert ended(link, "uac").reason == "cancelled"


def test_200_crossing_cancel_is_acked_and_byed() -> None:
    link = dial()
    assert link.uas is not None
    link.hold.add("uas")
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))  # the 200 is on its way...
    link.run("uac", link.uac.cancel(link.now))  # ...as our CANCEL leaves: too late for a 487
    link.release()
    assert link.methods("uac")[-3:] == ["CANCEL", "ACK", "BYE"]
    assert ended(link, "uac").reason == "cancelled"
    assert ended(link, "uas").reason == "remote-bye"
    assert not link.of("uac", Established)


@pytest.mark.parametrize("status", [401, 407])
def test_digest_retry_on_invite(status: int) -> None:
    credentials = DigestCredentials("1001", "secret")
    link = dial(credentials=credentials, on_invite="nothing")
    first = link.sent["uac"][0]
    header = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    challenge = build_response(first, status, to_tag="proxy")
    challenge.headers.add(header, 'Digest realm="pbx", nonce="n1", qop="auth"')
    link.uas = None
    link.on_invite = "ring"
    link.run("uac", link.uac.receive_response(challenge, link.now))
    second = link.sent["uac"][1]
    assert second.method == "INVITE" and second.cseq.seq == first.cseq.seq + 1
    assert second.branch != first.branch and second.call_id == first.call_id
    assert second.from_addr.tag == first.from_addr.tag
    name = "Proxy-Authorization" if status == 407 else "Authorization"
    authorization = second.headers.get(name)
    assert authorization is not None and 'username="1001"' in authorization and "secret" not in authorization
    assert link.uas is not None and link.uac.state == "ringing"
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    assert link.uac.state == "confirmed"
    ack = link.sent["uac"][-1]  # the ACK carries the INVITE's credentials (RFC 3261 13.2.2.4)
    assert ack.method == "ACK" and ack.headers.get_all(name) == second.headers.get_all(name)


def test_ring_timeout_survives_the_digest_retry() -> None:
    link = dial(credentials=DigestCredentials("1001", "secret"), ring_timeout=10.0, on_invite="nothing")
    challenge = build_response(link.sent["uac"][0], 407, to_tag="proxy")
    challenge.headers.add("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1"')
    link.uas, link.on_invite = None, "ring"
    link.run("uac", link.uac.receive_response(challenge, link.now))
    link.tick(11.0)
    assert link.methods("uac")[-1] == "CANCEL" and ended(link, "uac") == Ended("no-answer", 0)


def test_cancel_during_the_digest_retry_cancels_the_retried_invite() -> None:
    link = dial(credentials=DigestCredentials("1001", "secret"), on_invite="nothing")
    challenge = build_response(link.sent["uac"][0], 407, to_tag="proxy")
    challenge.headers.add("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1"')
    link.uas = None
    link.run("uac", link.uac.receive_response(challenge, link.now))
    retried = link.sent["uac"][-1]
    assert retried.method == "INVITE" and link.uas is not None
    link.run("uac", link.uac.hangup(link.now))  # no provisional to the retried INVITE yet: the CANCEL waits
    assert link.methods("uac")[-1] == "INVITE" and link.uac.cancel_deferred
    link.run("uas", link.uas.ring(link.now))
    cancel = link.sent["uac"][-1]
    assert cancel.method == "CANCEL" and cancel.branch == retried.branch and cancel.cseq.seq == retried.cseq.seq
    assert ended(link, "uac").reason == "cancelled" and ended(link, "uas").reason == "cancelled"


def test_rejected_credentials_end_the_call() -> None:
    link = dial(credentials=DigestCredentials("1001", "wrong"), on_invite="nothing")
    for _ in range(3):
        invite = link.sent["uac"][-1]
        challenge = build_response(invite, 401, to_tag="registrar")
        challenge.headers.add("WWW-Authenticate", 'Digest realm="pbx", nonce="same"')
        link.run("uac", link.uac.receive_response(challenge, link.now))
        if link.uac.ended:
            break
    assert ended(link, "uac") == Ended("rejected", 401, "Unauthorized")


def test_invite_timeout_fails_the_call() -> None:
    link = dial(on_invite="nothing")
    link.run("uac", link.uac.request_failed(link.sent["uac"][0], link.now))
    assert ended(link, "uac") == Ended("failed", 0, "no answer to our INVITE")


def test_early_media_from_183_with_sdp() -> None:
    link = dial(on_invite="nothing")
    assert link.uas is not None
    invite = link.uas.invite
    offer = SessionDescription.parse(invite.body)
    answer = make_offer(["PCMU"], "192.0.2.9", 60000, LocalSession())
    assert offer.media
    progress = link.uas.dialog.response(invite, 183, body=answer.to_bytes(),  # type: ignore[union-attr]
                                        content_type="application/sdp")
    link.run("uac", link.uac.receive_response(progress, link.now))
    [event] = link.of("uac", Progress)
    assert isinstance(event, Progress) and event.status == 183
    assert event.media is not None and event.media.remote_port == 60000


def test_a_second_provisional_response_keeps_the_call_ringing() -> None:
    link = dial()  # the UAS sent 180
    assert link.uas is not None and link.uas.dialog is not None
    again = link.uas.dialog.response(link.uas.invite, 183)
    link.run("uac", link.uac.receive_response(wire(again), link.now))  # type: ignore[arg-type]
    assert [event.status for event in link.of("uac", Progress)] == [180, 183]  # type: ignore[attr-defined]
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    assert link.uac.state == "confirmed" and link.of("uac", Established)


def test_a_2xx_after_the_invite_was_given_up_is_acked_and_byed() -> None:
    link = dial(on_invite="nothing")
    assert link.uas is not None
    link.run("uac", link.uac.request_failed(link.uac.invite, link.now))  # no final response in time
    assert ended(link, "uac").reason == "failed"
    link.run("uas", link.uas.ring(link.now))
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))  # the callee answers, too late
    assert link.methods("uac")[-2:] == ["ACK", "BYE"]
    assert ended(link, "uas").reason == "remote-bye" and len(link.of("uac", Ended)) == 1
    assert not link.of("uac", Established)


def test_a_2xx_with_an_unusable_sdp_answer_is_acked_byed_and_failed() -> None:
    link = dial()
    assert link.uas is not None and link.uas.dialog is not None
    ok = link.uas.dialog.response(link.uas.invite, 200, body=b"v=0\r\nc=IN IP4 evil\r\n",
                                  content_type="application/sdp")
    actions = link.uac.receive_response(wire(ok), link.now)  # type: ignore[arg-type]
    sent = [a.request.method for a in actions if isinstance(a, (SendAck, SendRequest))]
    assert sent == ["ACK", "BYE"]
    [end] = [a for a in actions if isinstance(a, Ended)]
    assert isinstance(end, Ended) and (end.reason, end.status) == ("failed", 200) and "SDP" in end.detail
    assert not [a for a in actions if isinstance(a, Established)] and link.uac.media is None


def test_a_flood_of_18x_with_bad_sdp_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    link = dial(on_invite="nothing")
    assert link.uas is not None and link.uas.dialog is not None
    bad = link.uas.dialog.response(link.uas.invite, 183, body=b"v=0\r\nnot sdp\r\n", content_type="application/sdp")
    with caplog.at_level("INFO", logger="sipagent.sip.call"):
        for _ in range(50):
            link.run("uac", link.uac.receive_response(wire(bad), link.now))  # type: ignore[arg-type]
    assert len(link.of("uac", Progress)) == 50 and link.uac.state == "ringing"
    assert sum("early media refused" in record.getMessage() for record in caplog.records) == 1


# -- the UAS from raw text ---------------------------------------------------------------------------

RAW_INVITE = (
    "INVITE sip:2002@192.0.2.2 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKraw1\r\n"
    "From: \"Alice\" <sip:1001@pbx>;tag=a1\r\nTo: <sip:2002@pbx>\r\nCall-ID: raw@pbx\r\nCSeq: 7 INVITE\r\n"
    "Contact: <sip:1001@192.0.2.50>\r\nSupported: 100rel\r\nRequire: 100rel\r\n"
    "Content-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n{body}"
)
RAW_SDP = "v=0\r\no=a 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def raw_invite(body: str = RAW_SDP, require_100rel: bool = True) -> SipRequest:
    text = RAW_INVITE.format(length=len(body), body=body)
    if not require_100rel:
        text = text.replace("Require: 100rel\r\n", "")
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    return message


def in_dialog(call: CallCore, method: str, seq: int, body: str = "", extra: str = "") -> SipRequest:
    assert call.dialog is not None
    ctype = "Content-Type: application/sdp\r\n" if body and "Content-Type" not in extra else ""
    text = (f"{method} sip:2002@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bK{method}{seq}\r\n"
            f"From: \"Alice\" <sip:1001@pbx>;tag=a1\r\nTo: <sip:2002@pbx>;tag={call.dialog.local_tag}\r\n"
            f"Call-ID: raw@pbx\r\nCSeq: {seq} {method}\r\nContact: <sip:1001@192.0.2.50>\r\n{extra}{ctype}"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    return message


def responses(actions: list[CallAction]) -> list[int]:
    return [a.response.status for a in actions if isinstance(a, Respond)]


def test_reliable_180_waits_for_prack_and_is_resent_until_then() -> None:
    call = CallCore.incoming(raw_invite(), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    [ring] = call.ring(0.0)
    assert isinstance(ring, Respond) and ring.response.headers.get("RSeq") and call.awaiting_prack
    with pytest.raises(RuntimeError, match="PRACK"):
        call.answer("192.0.2.2", 50000, 0.0)
    assert any(isinstance(a, Retransmit) for a in call.timeout(0.5))
    rseq = ring.response.headers.get("RSeq")
    wrong = call.receive_request(in_dialog(call, "PRACK", 8, extra="RAck: 999 7 INVITE\r\n"), 0.6)
    assert responses(wrong) == [481]
    actions = call.receive_request(in_dialog(call, "PRACK", 9, extra=f"RAck: {rseq} 7 INVITE\r\n"), 0.7)
    assert responses(actions) == [200] and ProvisionalAcked() in actions and not call.awaiting_prack


def test_no_prack_refuses_the_call_with_500() -> None:
    call = CallCore.incoming(raw_invite(), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    actions: list[CallAction] = []
    now = 0.0
    while not call.ended and now < 60:
        now = call.next_deadline or 60
        actions += call.timeout(now)
    assert responses(actions)[-1] == 500 and Ended("no-prack") in actions


def test_no_common_codec_answers_488() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), CallConfig(
        codecs=("G722",), local_contact="<sip:2002@192.0.2.2>", via_sent_by="192.0.2.2:5060"),
        SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    actions = call.answer("192.0.2.2", 50000, 0.0)
    assert responses(actions) == [488] and Ended("rejected-sdp", 0, actions[-1].detail) in actions  # type: ignore[union-attr]
    assert isinstance(call.answer_error, SdpError)


def test_an_offer_with_a_nul_or_a_lone_cr_in_a_line_gets_488_not_silence() -> None:
    """The answer copies the telephone-event fmtp; a NUL in it could never be sent, so the request got no final
    response at all. Such an offer is refused like any other unusable one, and the call goes on."""
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    call.receive_request(in_dialog(call, "ACK", 7), 0.1)
    for n, bad in enumerate(("a=fmtp:101 0-16\x00", "a=fmtp:101 0-16\rx")):
        offer = RAW_SDP + "a=rtpmap:101 telephone-event/8000\r\n" + bad + "\r\n"
        assert responses(call.receive_request(in_dialog(call, "INVITE", 8 + 2 * n, body=offer), 1.0)) == [488]
        assert responses(call.receive_request(in_dialog(call, "UPDATE", 9 + 2 * n, body=offer), 1.0)) == [488]
    assert not call.ended


def test_no_ack_ends_the_call_with_bye() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    actions: list[CallAction] = []
    now = 0.0
    while not call.ended and now < 60:
        now = call.next_deadline or 60
        actions += call.timeout(now)
    assert sum(isinstance(a, Retransmit) for a in actions) >= 5
    assert [a.request.method for a in actions if isinstance(a, SendRequest)] == ["BYE"]
    assert isinstance(call.answer_error, SipTimeout) and call.end_reason == "local-bye"


def test_late_offer_answered_in_the_ack() -> None:
    call = CallCore.incoming(raw_invite(body="", require_100rel=False), UAS_CONFIG, None)
    call.ring(0.0)
    [ok] = call.answer("192.0.2.2", 50000, 0.0)
    assert isinstance(ok, Respond) and b"m=audio 50000" in ok.response.body
    answer = RAW_SDP.replace("RTP/AVP 0", "RTP/AVP 8")
    ack = in_dialog(call, "ACK", 7, body=answer)
    [established] = call.receive_request(ack, 0.1)
    assert isinstance(established, Established) and established.media.codec == "PCMA"


def test_info_dtmf_and_unknown_methods() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    call.receive_request(in_dialog(call, "ACK", 7), 0.1)
    info = in_dialog(call, "INFO", 8, body="Signal=11\r\nDuration=160\r\n",
                     extra="Content-Type: application/dtmf-relay\r\n")
    assert call.receive_request(info, 0.2)[1:] == [Dtmf("#", 160)]
    bad = in_dialog(call, "INFO", 9, body="Signal=x\r\n", extra="Content-Type: application/dtmf-relay\r\n")
    assert responses(call.receive_request(bad, 0.3)) == [400]
    assert responses(call.receive_request(in_dialog(call, "MESSAGE", 10), 0.3)) == [405]
    assert responses(call.receive_request(in_dialog(call, "FOO", 11), 0.3)) == [501]
    assert responses(call.receive_request(in_dialog(call, "OPTIONS", 11), 0.3)) == [500]  # old CSeq
    assert responses(call.receive_request(in_dialog(call, "REFER", 12, extra="Refer-To: <sip:x@y>\r\n"), 0.3)) == [405]


# -- mid-call: hold, resume, refresh, transfer -------------------------------------------------------


def reinvite(link: Link, side: str, direction: str, method: str = "INVITE") -> list[CallAction]:
    """The far end of ``side`` re-offers its media with ``direction``: built from the other core's dialog."""
    other = "uas" if side == "uac" else "uac"
    sender = link.core(other)
    assert sender.dialog is not None
    offer = make_offer(["PCMA", "PCMU"], "192.0.2.77", 41000, LocalSession(), direction=direction)
    request = sender.dialog.create_request(method, "192.0.2.77:5060", body=offer.to_bytes(),
                                           content_type="application/sdp")
    actions = link.core(side).receive_request(wire(request), link.now)  # type: ignore[arg-type]
    link.run(side, [a for a in actions if not isinstance(a, Respond)])
    link.events[side] += []
    return actions


@pytest.mark.parametrize("side", ["uac", "uas"])
@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_hold_and_resume(side: str, method: str) -> None:
    link = answered()
    actions = reinvite(link, side, "sendonly", method)
    [ok] = [a for a in actions if isinstance(a, Respond)]
    assert ok.response.status == 200 and b"a=recvonly" in ok.response.body
    changes = [a for a in actions if isinstance(a, (MediaChanged, Held))]
    assert isinstance(changes[0], MediaChanged) and changes[0].media.on_hold and changes[1] == Held(True)
    assert changes[0].media.remote_host == "192.0.2.77"
    if method == "INVITE":  # the ACK ends the offer/answer; then a resume is taken
        sender = link.core("uas" if side == "uac" else "uac")
        assert sender.dialog is not None
        ack = sender.dialog.create_ack(SipRequest("INVITE", "", ok.response.headers), "192.0.2.77:5060")
        link.core(side).receive_request(wire(ack), link.now)  # type: ignore[arg-type]
    resumed = reinvite(link, side, "sendrecv", method)
    assert Held(False) in resumed and link.core(side).media is not None and not link.core(side).media.on_hold  # type: ignore[union-attr]


def test_glare_reinvite_while_ours_is_pending_gets_491() -> None:
    link = answered()
    uas = link.core("uas")
    uas.timer.peer_allows_update = False  # the UAS refreshes by re-INVITE, an offer of its own
    link.hold.add("uac")  # and the answer to it is still on its way
    link.tick(UAS_CONFIG.timer_policy.session_expires / 2 + 1)
    assert link.methods("uas")[-1] == "INVITE"
    actions = reinvite(link, "uas", "sendonly")
    assert responses(actions) == [491] and uas.state == "confirmed"
    link.release()
    assert uas.state == "confirmed" and link.methods("uas")[-1] == "ACK"


def with_timer(interval: int) -> Link:
    policy = TimerPolicy(session_expires=interval, min_se=90)
    uas_config = CallConfig(codecs=("PCMU",), local_contact="<sip:2002@192.0.2.2>", via_sent_by="192.0.2.2:5060",
                            timer_policy=policy)
    link = dial(uas_config=uas_config)
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    return link


def test_session_refresh_by_the_refresher_keeps_the_call() -> None:
    link = with_timer(120)
    ok = link.responses["uas"][-1]
    # The UAC asked for no particular interval: the answering side refreshes, by UPDATE as the UAC allows it.
    assert ok.headers.get("Session-Expires") == "120;refresher=uas"
    link.tick(600.0)
    refreshes = [r for r in link.sent["uas"] if r.method == "UPDATE"]
    assert len(refreshes) >= 9 and all(r.headers.get("Session-Expires") for r in refreshes)
    assert link.uac.state == link.core("uas").state == "confirmed"


def test_session_expires_when_the_refresher_goes_quiet() -> None:
    link = with_timer(120)
    link.core("uas").timer.stop()  # the refresher forgets the call
    link.tick(120.0)
    assert link.uac.end_reason == "session-expired" and link.methods("uac")[-1] == "BYE"
    assert link.core("uas").end_reason == "remote-bye"


def test_refresh_without_answer_ends_the_call() -> None:
    link = with_timer(120)
    link.hold.add("uac")
    link.tick(61.0)
    [refresh] = [r for r in link.sent["uas"] if r.method == "UPDATE"]
    link.run("uas", link.core("uas").request_failed(refresh, link.now))
    assert link.core("uas").end_reason == "refresh-failed" and link.methods("uas")[-1] == "BYE"


def test_transfer_out_succeeds_on_notify_2xx() -> None:
    link = answered()
    link.uas_config = UAS_CONFIG
    link.run("uac", link.uac.transfer("<sip:3003@pbx>", link.now, referred_by="<sip:1001@pbx>"))
    refer = link.sent["uac"][-1]
    assert refer.method == "REFER" and refer.headers.get("Refer-To") == "<sip:3003@pbx>"
    # The UAS (not configured to accept REFER) refuses: 405.
    assert TransferProgress("refer", 405) in link.events["uac"]
    assert link.uac.state == "confirmed"


def test_transfer_in_and_out() -> None:
    accepting = CallConfig(codecs=("PCMU",), local_contact="<sip:2002@192.0.2.2>", via_sent_by="192.0.2.2:5060",
                           accept_refer=True)
    link = dial(uas_config=accepting)
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    link.run("uac", link.uac.transfer("<sip:3003@pbx>", link.now))
    [referred] = link.of("uas", Referred)
    assert isinstance(referred, Referred) and referred.refer_to == "<sip:3003@pbx>"
    assert link.statuses("uas")[-1] == 202
    assert link.events["uac"][-2:] == [TransferProgress("refer", 202), TransferProgress("notify", 100)]
    link.run("uas", link.uas.notify_transfer(200, link.now))
    notify = link.sent["uas"][-1]
    assert notify.method == "NOTIFY" and sipfrag_status(notify.body) == 200
    assert (notify.headers.get("Subscription-State") or "").startswith("terminated")
    assert TransferProgress("notify", 200) in link.events["uac"]
    assert link.uac.end_reason == "transferred" and link.uas.end_reason == "remote-bye"


def test_refused_refer() -> None:
    accepting = CallConfig(codecs=("PCMU",), local_contact="<sip:2002@192.0.2.2>", via_sent_by="192.0.2.2:5060",
                           accept_refer=True)
    link = dial(uas_config=accepting, refer_answer=603)
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    link.run("uac", link.uac.transfer("<sip:3003@pbx>", link.now))
    assert link.events["uac"][-1] == TransferProgress("refer", 603) and link.methods("uas") == []


def test_failed_transfer_keeps_the_call() -> None:
    accepting = CallConfig(codecs=("PCMU",), local_contact="<sip:2002@192.0.2.2>", via_sent_by="192.0.2.2:5060",
                           accept_refer=True)
    link = dial(uas_config=accepting)
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    link.run("uac", link.uac.transfer("<sip:3003@pbx>", link.now))
    link.run("uas", link.uas.notify_transfer(486, link.now))
    assert TransferProgress("notify", 486) in link.events["uac"] and link.uac.state == "confirmed"


def test_retransmitted_2xx_gets_the_ack_again() -> None:
    link = answered()
    ok = link.responses["uas"][-1]
    before = len(link.sent["uac"])
    link.run("uac", link.uac.receive_response(ok, link.now))
    assert link.methods("uac")[before:] == ["ACK"]


def another_branch(link: Link, host: str = "192.0.2.3") -> tuple[CallCore, SipResponse]:
    """A second phone of a ring group: a UAS core for the same INVITE, answering with its own To tag."""
    invite = link.sent["uac"][0]
    config = dataclasses.replace(UAS_CONFIG, local_contact=f"<sip:2002@{host}:5060>")
    branch = CallCore.incoming(invite, config, SessionDescription.parse(invite.body))
    for action in (*branch.ring(link.now), *branch.answer("192.0.2.3", 52000, link.now)):
        if isinstance(action, Respond) and action.response.status == 200:
            ok = wire(action.response)
            assert isinstance(ok, SipResponse)
            return branch, ok
    raise AssertionError("the branch did not answer")


def test_another_branch_answering_too_gets_ack_and_bye_and_the_call_goes_on() -> None:
    """RFC 3261 13.2.2.4: a 2xx from a second fork (another phone of a ring group) is ACKed and its dialog
    ended with a BYE, sent to that branch; our call keeps the first branch; a copy of that 2xx is ACKed
    again (no second BYE); more branches than MAX_FORKS are left to their own timers."""
    link = answered()
    branch, ok = another_branch(link)
    assert link.uac.dialog is not None and ok.to_addr.tag != link.uac.dialog.remote_tag
    actions = link.uac.receive_response(ok, link.now)
    (fork,) = actions
    assert isinstance(fork, EndFork) and fork.bye is not None
    assert fork.dialog.remote_tag == ok.to_addr.tag and str(fork.dialog.remote_target) == "sip:2002@192.0.2.3:5060"
    for request in (fork.ack, fork.bye):
        assert request.to_addr.tag == ok.to_addr.tag and request.call_id == link.uac.call_id
        replies = branch.receive_request(wire(request), link.now)  # type: ignore[arg-type]
    assert [r.response.status for r in replies if isinstance(r, Respond)] == [200]
    assert branch.state == "ended" and branch.end_reason == "remote-bye"
    assert link.uac.state == "confirmed" and not link.of("uac", Ended)
    again = link.uac.receive_response(ok, link.now)
    assert again == [EndFork(fork.dialog, fork.ack, None)]
    flood = [another_branch(link)[1] for _ in range(MAX_FORKS + 3)]
    ended_forks = [a for ok_n in flood for a in link.uac.receive_response(ok_n, link.now) if isinstance(a, EndFork)]
    assert len(ended_forks) == MAX_FORKS - 1  # the first branch above took one place
    assert link.uac.state == "confirmed"


def test_another_branchs_challenged_bye_is_sent_again_with_credentials() -> None:
    """A ring group behind a PBX that authenticates BYE: the extra branch's BYE answered 407 goes again with
    credentials and the branch's next CSeq, once; a call without credentials leaves it (its own timers)."""
    link = answered_with_credentials()
    branch, ok = another_branch(link)
    [fork] = link.uac.receive_response(ok, link.now)
    assert isinstance(fork, EndFork) and fork.bye is not None
    retry = link.uac.fork_bye_challenged(fork, challenge(fork.bye, 407))
    assert retry is not None and retry.method == "BYE" and retry.cseq.seq == fork.bye.cseq.seq + 1
    assert retry.to_addr.tag == ok.to_addr.tag and retry.uri == fork.bye.uri
    assert 'username="1001"' in (retry.headers.get("Proxy-Authorization") or "")
    replies = branch.receive_request(wire(retry), link.now)  # type: ignore[arg-type]
    assert [r.response.status for r in replies if isinstance(r, Respond)] == [200] and branch.state == "ended"
    assert link.uac.fork_bye_challenged(fork, challenge(retry, 407)) is None  # the same nonce: refused
    assert link.uac.fork_bye_challenged(fork, build_response(fork.bye, 200)) is None
    plain = answered()
    _, ok = another_branch(plain)
    [fork] = plain.uac.receive_response(ok, plain.now)
    assert isinstance(fork, EndFork) and fork.bye is not None
    assert plain.uac.fork_bye_challenged(fork, challenge(fork.bye, 407)) is None


def test_outgoing_refuses_headers_it_writes() -> None:
    with pytest.raises(ValueError, match="Via"):
        CallCore.outgoing("sip:2@h", "sip:1@h", UAC_CONFIG, headers=[("Via", "x")])
    core = CallCore.outgoing("sip:2@h", "sip:1@h", UAC_CONFIG, headers=[("X-Campaign", "c1")])
    [send] = core.dial("192.0.2.1", 40000, 0.0)
    assert isinstance(send, SendRequest) and send.request.headers.get("X-Campaign") == "c1"


def test_bodies() -> None:
    assert parse_dtmf_relay(b"Signal=5\r\nDuration=250\r\n") is not None
    assert parse_dtmf_relay(b"Signal=55\r\n") is None
    assert sipfrag_status(b"SIP/2.0 180 Ringing\r\n") == 180 and sipfrag_status(b"garbage") is None
    assert replaces_header("a@b", "t1", "f1") == "Replaces=a%40b%3Bto-tag%3Dt1%3Bfrom-tag%3Df1"


# -- the fronts over the core: warm transfer ---------------------------------------------------------


class WireDriver:
    """Carries out a front's actions over the Link its core is on (no sockets, no tasks)."""

    def __init__(self) -> None:
        self.links: dict[int, tuple[Link, str]] = {}

    def now(self) -> float:
        return 0.0

    def drive(self, call: CallFront, actions: list[CallAction]) -> list[asyncio.Task[None]]:
        link, side = self.links[id(call.core)]
        link.run(side, actions)
        return []


def test_transfer_replacing_refers_the_peer_to_the_other_dialog_with_replaces() -> None:
    async def scenario() -> None:
        driver = WireDriver()
        accepting = CallConfig(codecs=("PCMU",), local_contact="<sip:caller@192.0.2.2>",
                               via_sent_by="192.0.2.2:5060", accept_refer=True)
        caller = dial(uas_config=accepting, transfer_result=200)  # our call with the original caller (UAC here)
        human = dial()  # our call with the human we briefed
        for link in (caller, human):
            assert link.uas is not None
            link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
        fronts = []
        for link in (caller, human):
            front = OutgoingCall(driver, link.uac, Peer("UDP", "192.0.2.2", 5060), "192.0.2.1")
            driver.links[id(link.uac)] = (link, "uac")
            link.fronts["uac"] = front
            fronts.append(front)
        with pytest.raises(RuntimeError):
            await fronts[0].transfer_replacing(OutgoingCall(driver, CallCore.outgoing(
                "sip:x@y", "sip:a@b", UAC_CONFIG), Peer("UDP", "192.0.2.2", 5060), "192.0.2.1"))
        assert await fronts[0].transfer_replacing(fronts[1], timeout=1)
        [referred] = caller.of("uas", Referred)
        dialog = human.uac.dialog
        assert isinstance(referred, Referred) and dialog is not None
        assert referred.refer_to == (f"<{dialog.remote_target}?Replaces={dialog.call_id.replace('@', '%40')}"
                                     f"%3Bto-tag%3D{dialog.remote_tag}%3Bfrom-tag%3D{dialog.local_tag}>")
        assert fronts[0].end_reason == "transferred" and fronts[0].ended.is_set()
        assert human.uac.state == "confirmed"  # the replaced dialog is the target's to end

    asyncio.run(scenario())


def test_transfer_replacing_reports_a_refused_refer() -> None:
    async def scenario() -> None:
        driver = WireDriver()
        caller, human = dial(), dial()  # the caller's side refuses REFER (405)
        for link in (caller, human):
            assert link.uas is not None
            link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
        fronts = []
        for link in (caller, human):
            front = OutgoingCall(driver, link.uac, Peer("UDP", "192.0.2.2", 5060), "192.0.2.1")
            driver.links[id(link.uac)] = (link, "uac")
            link.fronts["uac"] = front
            fronts.append(front)
        assert not await fronts[0].transfer_replacing(fronts[1], timeout=1)
        assert fronts[0].state == "confirmed"

    asyncio.run(scenario())


def test_our_reoffer_holds_and_a_refused_one_changes_nothing() -> None:
    link = answered()
    before = link.uac.sdp.local
    hold = make_offer(["PCMA"], "192.0.2.1", 40000, link.uac.sdp.session, direction="sendonly")
    link.run("uac", link.uac.reoffer(hold, link.now))
    [result] = link.of("uac", ReofferAnswered)
    assert isinstance(result, ReofferAnswered) and result.status == 200 and b"a=recvonly" in result.answer
    assert link.methods("uac")[-2:] == ["INVITE", "ACK"] and link.uac.sdp.local is hold
    uas_media = link.core("uas").media
    assert uas_media is not None and uas_media.on_hold  # the far end stops sending to us
    with pytest.raises(RuntimeError, match="state"):
        CallCore.outgoing("sip:2@h", "sip:1@h", UAC_CONFIG).reoffer(hold, 0.0)
    unusable = make_offer(["G722"], "192.0.2.1", 40000, link.uac.sdp.session)
    link.run("uac", link.uac.reoffer(unusable, link.now))
    assert link.of("uac", ReofferAnswered)[-1] == ReofferAnswered(488, b"")
    assert link.uac.sdp.local is hold and before is not hold


# -- a PBX that authenticates in-dialog requests -------------------------------------------------------


def answered_with_credentials() -> Link:
    link = dial(credentials=DigestCredentials("1001", "secret"))
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    return link


def challenge(request: SipRequest, status: int, nonce: str = "n1") -> SipResponse:
    response = build_response(request, status)
    header = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    response.headers.add(header, f'Digest realm="pbx", nonce="{nonce}", qop="auth"')
    return response


def only_request(actions: list[CallAction]) -> SipRequest:
    [action] = actions
    assert isinstance(action, SendRequest)
    return action.request


@pytest.mark.parametrize("status", [401, 407])
def test_a_challenged_refer_of_a_call_we_placed_is_sent_again_with_credentials(status: int) -> None:
    link = answered_with_credentials()
    refer = only_request(link.uac.transfer("<sip:3003@pbx>", link.now, referred_by="<sip:1001@pbx>"))
    retry = only_request(link.uac.receive_response(challenge(refer, status), link.now))
    assert retry.method == "REFER" and retry.cseq.seq == refer.cseq.seq + 1 and retry.branch != refer.branch
    assert retry.headers.get("Refer-To") == "<sip:3003@pbx>"
    assert retry.headers.get("Referred-By") == "<sip:1001@pbx>"
    authorization = retry.headers.get("Proxy-Authorization" if status == 407 else "Authorization")
    assert authorization is not None and 'username="1001"' in authorization and "secret" not in authorization
    assert not link.of("uac", TransferProgress)  # the challenge is not the REFER's outcome
    link.run("uac", [SendRequest(retry)])  # the far end takes the retried REFER: 405 from this UAS
    assert link.of("uac", TransferProgress) == [TransferProgress("refer", 405)]


def test_a_challenged_reinvite_keeps_its_offer_and_a_refused_retry_fails_it() -> None:
    link = answered_with_credentials()
    hold = make_offer(["PCMA"], "192.0.2.1", 40000, link.uac.sdp.session, direction="sendonly")
    reinvite = only_request(link.uac.reoffer(hold, link.now))
    retry = only_request(link.uac.receive_response(challenge(reinvite, 401), link.now))
    assert retry.method == "INVITE" and retry.cseq.seq == reinvite.cseq.seq + 1
    assert retry.body == reinvite.body and retry.headers.get("Content-Type") == "application/sdp"
    assert retry.headers.get("Authorization") is not None
    # The same challenge again: our credentials were refused, so the re-INVITE fails and the session stays.
    assert link.uac.receive_response(challenge(retry, 401), link.now) == [ReofferAnswered(401, b"")]
    assert link.uac.state == "confirmed" and link.uac.sdp.local is not hold


def test_a_pbx_challenging_every_request_with_a_new_nonce_is_answered_each_time() -> None:
    """FreeSWITCH with auth-all-packets: the INVITE, then each of the call's requests, challenged with a fresh
    nonce. Each one that went through resets the count, so the third challenge is not taken for a loop."""
    credentials = DigestCredentials("1001", "secret")
    link = dial(credentials=credentials, on_invite="nothing")
    link.uas, link.on_invite = None, "ring"
    link.run("uac", link.uac.receive_response(challenge(link.sent["uac"][0], 407, "n1"), link.now))
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    assert link.uac.state == "confirmed"
    refer = only_request(link.uac.transfer("<sip:3003@pbx>", link.now))
    retry = only_request(link.uac.receive_response(challenge(refer, 407, "n2"), link.now))
    link.run("uac", [SendRequest(retry)])  # answered (405 from this UAS): not a challenge
    [bye] = [action.request for action in link.uac.hangup(link.now) if isinstance(action, SendRequest)]
    again = only_request(link.uac.receive_response(challenge(bye, 407, "n3"), link.now))
    assert again.method == "BYE" and again.headers.get("Proxy-Authorization") is not None


def test_a_call_we_answered_never_answers_a_challenge() -> None:
    link = answered_with_credentials()
    uas = link.core("uas")
    refer = only_request(uas.transfer("<sip:3003@pbx>", link.now))
    assert uas.receive_response(challenge(refer, 407), link.now) == [TransferProgress("refer", 407)]


# -- hostile answers to a call we place ----------------------------------------------------------------


def foreign(response: SipResponse, status: int) -> SipResponse:
    """``response`` as a third party would forge it: our Call-ID and CSeq, but not our INVITE's Via branch."""
    text = response.to_bytes().decode()
    branch = response.headers.get_all("Via")[0].split("branch=")[1].split(";")[0]
    text = text.replace(branch, "z9hG4bKforged", 1)
    _status_line, rest = text.split("\r\n", 1)
    forged = parse_message(f"SIP/2.0 {status} Forged\r\n{rest}".encode())
    assert isinstance(forged, SipResponse)
    return forged


@pytest.mark.parametrize("status", [486, 200])
def test_a_response_without_our_branch_neither_ends_nor_answers_the_call(status: int) -> None:
    link = dial()
    ringing = link.responses["uas"][-1]
    assert ringing.status == 180
    assert link.uac.receive_response(foreign(ringing, status), link.now) == []
    assert link.uac.state == "ringing" and link.uac.dialog is None


def test_peer_supports_of_a_placed_call_comes_from_its_2xx() -> None:
    link = answered()
    front = OutgoingCall(WireDriver(), link.uac, Peer("UDP", "192.0.2.2", 5060), "192.0.2.1")
    ok = link.responses["uas"][-1]
    assert ok.status == 200
    advertised = {option.lower() for option in ok.headers.get_all("Supported")}
    assert advertised, "the answering core advertises its options"
    assert all(front.peer_supports(option) for option in advertised)
    assert not front.peer_supports("no-such-option")


def test_a_refer_to_a_call_we_placed_is_declined_unless_someone_takes_it() -> None:
    # The agent places calls with accept_refer (a test caller takes transfers), but its own OutgoingCall has
    # no on_refer: a callee's REFER must never make the agent dial anywhere.
    accepting = CallConfig(codecs=("PCMU",), local_contact="<sip:1001@192.0.2.1:5060>", via_sent_by="192.0.2.1:5060",
                           accept_refer=True)
    link = dial(config=accepting)
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    link.fronts["uac"] = OutgoingCall(UacDriver(link), link.uac, Peer("UDP", "192.0.2.2", 5060), "192.0.2.1")
    sent_before = len(link.sent["uac"])
    link.run("uas", link.uas.transfer("<sip:900@evil.example>", link.now))
    assert link.events["uas"][-1] == TransferProgress("refer", 603)
    assert link.sent["uac"][sent_before:] == [] and link.uac.state == "confirmed"


class UacDriver:
    """A driver that carries the front's actions over the link's UAC side."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def now(self) -> float:
        return self.link.now

    def drive(self, call: CallFront, actions: list[CallAction]) -> list[asyncio.Task[None]]:
        self.link.run("uac", actions)
        return []


def test_a_notify_without_a_refer_of_ours_is_refused_and_does_not_end_the_call() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    call.receive_request(in_dialog(call, "ACK", 7), 0.1)
    notify = in_dialog(call, "NOTIFY", 8, body="SIP/2.0 200 OK\r\n", extra=(
        "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\nContent-Type: message/sipfrag\r\n"))
    actions = call.receive_request(notify, 0.2)
    assert responses(actions) == [481]
    assert not [a for a in actions if isinstance(a, (TransferProgress, Ended, SendRequest))]
    assert call.state == "confirmed"
