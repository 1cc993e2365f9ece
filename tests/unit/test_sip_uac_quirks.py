"""What a real PBX answers to an INVITE the agent sends, fed to the sans-I/O call core as bytes.

Each test places a call (``CallCore.outgoing`` + ``dial``), then feeds the responses Asterisk, FreeSWITCH, a
forking proxy or a hostile peer would send, parsed from text, with a fake clock; it checks what the core sends
(ACK, BYE, CANCEL, a retried INVITE) and how the call ends for the layer above.
"""

from __future__ import annotations

import dataclasses

import pytest

from sipagent.sip.auth import DigestCredentials
from sipagent.sip.call import (
    MAX_PRACKS,
    MAX_ROUTES,
    MAX_TAG_LENGTH,
    UAC_SUPPORTED,
    CallAction,
    CallConfig,
    CallCore,
    Ended,
    EndFork,
    Established,
    Progress,
    SendAck,
    SendRequest,
    outcome_of,
)
from sipagent.sip.message import SipRequest, SipResponse, parse_message
from sipagent.sip.transaction import T1

CONFIG = CallConfig(codecs=("PCMU", "PCMA"), local_contact="<sip:1001@192.0.2.1:5060>",
                    via_sent_by="192.0.2.1:5060", random=lambda: 0.5)


def place(codecs: tuple[str, ...] = ("PCMU", "PCMA"), credentials: DigestCredentials | None = None,
          ring_timeout: float | None = None) -> tuple[CallCore, SipRequest]:
    core = CallCore.outgoing("sip:2002@pbx.example.com", "sip:1001@pbx.example.com",
                             dataclasses.replace(CONFIG, codecs=codecs), credentials=credentials)
    [send] = core.dial("192.0.2.1", 40000, 0.0, ring_timeout=ring_timeout)
    assert isinstance(send, SendRequest)
    return core, send.request


def sdp(port: int = 50000, formats: str = "0", host: str = "192.0.2.2", owner: str = "pbx") -> str:
    return (f"v=0\r\no={owner} 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {formats}\r\na=sendrecv\r\n")


def response(invite: SipRequest, status: int, reason: str = "OK", *, tag: str | None = "as1", body: str = "",
             contact: str | None = "<sip:2002@192.0.2.2:5060>", extra: tuple[str, ...] = (),
             cseq: str | None = None) -> SipResponse:
    """A response to ``invite`` as a PBX writes it (its Via, From, To with ``tag``, Call-ID, CSeq)."""
    lines = [f"SIP/2.0 {status} {reason}", f"Via: {invite.headers.get_all('Via')[0]}",
             f"From: {invite.headers.get('From')}",
             f"To: {invite.headers.get('To')}" + (f";tag={tag}" if tag else ""),
             f"Call-ID: {invite.call_id}", f"CSeq: {cseq or f'{invite.cseq.seq} INVITE'}"]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += extra
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n" + body).encode())
    assert isinstance(message, SipResponse)
    return message


def sent(actions: list[CallAction]) -> list[str]:
    return [a.request.method for a in actions if isinstance(a, (SendRequest, SendAck))]


def only(actions: list[CallAction], kind: type) -> list[CallAction]:
    return [a for a in actions if isinstance(a, kind)]


def the_end(actions: list[CallAction]) -> Ended:
    [end] = only(actions, Ended)
    assert isinstance(end, Ended)
    return end


# -- provisional responses and early media -----------------------------------------------------------


def test_100_180_183_with_sdp_then_a_200_with_another_answer_the_200_wins() -> None:
    """Asterisk's progress: 100, 180, 183 with early media (an announcement), then the callee's 200 with
    another SDP. Early media is reported (``Progress``), never played by us; the call's media is the 2xx's
    answer (RFC 3261 13.2.1: without 100rel, the answer is the 2xx's)."""
    core, invite = place()
    assert core.receive_response(response(invite, 100, "Trying", tag=None, contact=None), 0.1) == []
    assert core.state == "calling"
    assert core.receive_response(response(invite, 180, "Ringing"), 0.2) == [Progress(180, None)]
    [early] = core.receive_response(response(invite, 183, "Session Progress", body=sdp(6000)), 0.3)
    assert isinstance(early, Progress) and early.media is not None and early.media.remote_port == 6000
    assert core.state == "ringing" and core.media is None  # early media takes nothing
    actions = core.receive_response(response(invite, 200, body=sdp(7000, "8", host="192.0.2.7")), 1.0)
    assert sent(actions) == ["ACK"]
    [up] = only(actions, Established)
    assert isinstance(up, Established)
    assert (up.media.codec, up.media.remote_host, up.media.remote_port) == ("PCMA", "192.0.2.7", 7000)
    assert core.media == up.media and core.state == "confirmed"


def test_a_2xx_without_sdp_takes_the_early_answer_of_its_own_branch_only() -> None:
    """A gateway that sent its answer in an unreliable 183 and leaves it out of the 200: that answer (of the
    same To tag) is taken. A 200 from another branch without SDP has no answer at all."""
    core, invite = place()
    core.receive_response(response(invite, 183, "Session Progress", body=sdp(6000)), 0.1)
    actions = core.receive_response(response(invite, 200), 1.0)
    assert sent(actions) == ["ACK"]
    [up] = only(actions, Established)
    assert isinstance(up, Established) and up.media.remote_port == 6000

    core, invite = place()
    core.receive_response(response(invite, 183, "Session Progress", tag="branch-a", body=sdp(6000)), 0.1)
    actions = core.receive_response(response(invite, 200, tag="branch-b"), 1.0)
    assert sent(actions) == ["ACK", "BYE"] and not only(actions, Established)
    assert the_end(actions) == Ended("failed", 200, "200 without an SDP answer to our offer")


def test_a_200_without_sdp_to_our_offer_is_acked_byed_and_said_plainly() -> None:
    core, invite = place()
    core.receive_response(response(invite, 180, "Ringing"), 0.1)
    actions = core.receive_response(response(invite, 200), 1.0)
    assert sent(actions) == ["ACK", "BYE"]
    assert the_end(actions) == Ended("failed", 200, "200 without an SDP answer to our offer")
    bye = next(a.request for a in actions if isinstance(a, SendRequest))
    assert bye.to_addr.tag == "as1" and bye.uri == "sip:2002@192.0.2.2:5060"


def test_an_answer_picking_a_codec_we_did_not_offer_is_acked_and_byed() -> None:
    """The line offers G.711 only; a PBX answering G.722 would get audio we must not send (RFC 3264 6.1)."""
    core, invite = place(codecs=("PCMU", "PCMA"))
    [early] = core.receive_response(response(invite, 183, "Session Progress", body=sdp(6000, "9")), 0.1)
    assert early == Progress(183, None)  # early media in a codec we did not offer: not taken either
    actions = core.receive_response(response(invite, 200, body=sdp(formats="9")), 1.0)
    assert sent(actions) == ["ACK", "BYE"] and core.media is None
    end = the_end(actions)
    assert (end.reason, end.status) == ("failed", 200) and "did not offer (G722)" in end.detail
    # One codec we offered among others we did not: ours is taken.
    core, invite = place(codecs=("PCMU",))
    [up] = only(core.receive_response(response(invite, 200, body=sdp(formats="9 8 0")), 1.0), Established)
    assert isinstance(up, Established) and up.media.codec == "PCMU"


def test_an_answer_refusing_our_audio_stream_with_port_0_is_acked_and_byed() -> None:
    core, invite = place()
    actions = core.receive_response(response(invite, 200, body=sdp(port=0)), 1.0)
    assert sent(actions) == ["ACK", "BYE"]
    end = the_end(actions)
    assert (end.reason, end.status) == ("failed", 200) and "port 0" in end.detail


def test_a_reliable_18x_when_we_did_not_offer_100rel_cancels_the_call() -> None:
    """RFC 3262 3: a UAS must not send a reliable 18x to an INVITE without 100rel in Supported. One that does
    waits for a PRACK we never send (with its SDP, its 2xx may not come before it): the call is cancelled at
    once, and ends "failed" saying why, not taken as early media."""
    assert "100rel" not in UAC_SUPPORTED
    core, invite = place()
    assert "100rel" not in (invite.headers.get("Supported") or "") and not invite.headers.get("Require")
    actions = core.receive_response(response(invite, 183, "Session Progress", body=sdp(6000),
                                              extra=("Require: 100rel", "RSeq: 1")), 0.1)
    assert sent(actions) == ["CANCEL"] and not only(actions, Progress)
    cancel = next(a.request for a in actions if isinstance(a, SendRequest))
    assert cancel.branch == invite.branch and cancel.cseq.seq == invite.cseq.seq
    assert core.state == "cancelling"
    # Its retransmission changes nothing; the 487 ends the call with the reason.
    assert core.receive_response(response(invite, 183, "Session Progress", body=sdp(6000),
                                          extra=("Require: 100rel", "RSeq: 1")), 0.6) == []
    end = the_end(core.receive_response(response(invite, 487, "Request Terminated"), 0.7))
    assert (end.reason, end.status) == ("failed", 0) and "requires 100rel" in end.detail
    # A 2xx crossing the CANCEL is ACKed and BYEd, with the same words.
    core, invite = place()
    core.receive_response(response(invite, 180, "Ringing", extra=("Require: 100rel", "RSeq: 7")), 0.1)
    actions = core.receive_response(response(invite, 200, body=sdp()), 0.2)
    assert sent(actions) == ["ACK", "BYE"] and "requires 100rel" in the_end(actions).detail


def test_asterisk_requiring_100rel_gets_the_invite_again_with_it_and_our_prack_for_each_reliable_18x() -> None:
    """Asterisk with 100rel=required refuses an INVITE without 100rel: 421 with Require: 100rel. The INVITE goes
    again (next CSeq, new branch) offering it; each reliable 18x gets one PRACK in its branch's early dialog
    (RAck: RSeq, the INVITE's CSeq), its copies none; the 2xx's dialog numbers its requests after the PRACKs."""
    core, invite = place()
    actions = core.receive_response(response(invite, 421, "Extension Required", tag="as0",
                                             extra=("Require: 100rel",)), 0.1)
    assert sent(actions) == ["INVITE"] and not only(actions, Ended)
    again = next(a.request for a in actions if isinstance(a, SendRequest))
    assert again.cseq.seq == invite.cseq.seq + 1 and again.branch != invite.branch
    assert again.call_id == invite.call_id and again.from_addr.tag == invite.from_addr.tag
    assert "100rel" in (again.headers.get("Supported") or "")
    ringing = response(again, 180, "Ringing", extra=("Require: 100rel", "RSeq: 4711"))
    actions = core.receive_response(ringing, 0.2)
    assert sent(actions) == ["PRACK"] and only(actions, Progress) and core.state == "ringing"
    prack = next(a.request for a in actions if isinstance(a, SendRequest))
    assert prack.headers.get("RAck") == f"4711 {again.cseq.seq} INVITE"
    assert prack.to_addr.tag == "as1" and prack.uri == "sip:2002@192.0.2.2:5060"
    assert prack.cseq.seq == again.cseq.seq + 1
    assert core.receive_response(ringing, 0.7) == []  # its copy: our PRACK's transaction resends that
    progress = core.receive_response(response(again, 183, "Session Progress", body=sdp(6000),
                                              extra=("Require: 100rel", "RSeq: 4712")), 0.8)
    [second] = [a.request for a in progress if isinstance(a, SendRequest)]
    assert second.headers.get("RAck") == f"4712 {again.cseq.seq} INVITE" and second.cseq.seq == prack.cseq.seq + 1
    assert core.receive_response(response(prack, 200, cseq=f"{prack.cseq.seq} PRACK"), 0.9) == []
    assert only(core.receive_response(response(again, 200, body=sdp()), 1.0), Established)
    assert core.dialog is not None and core.dialog.local_seq == second.cseq.seq
    [bye] = [a.request for a in core.hangup(2.0) if isinstance(a, SendRequest)]
    assert bye.method == "BYE" and bye.cseq.seq == second.cseq.seq + 1


def test_a_421_is_final_once_we_offer_100rel_and_for_any_other_extension() -> None:
    core, invite = place()
    actions = core.receive_response(response(invite, 421, "Extension Required", extra=("Require: foo",)), 0.1)
    assert sent(actions) == [] and the_end(actions).status == 421
    core, invite = place()
    [retry] = [a.request for a in core.receive_response(
        response(invite, 421, "Extension Required", extra=("Require: 100rel",)), 0.1) if isinstance(a, SendRequest)]
    actions = core.receive_response(response(retry, 421, "Extension Required", extra=("Require: 100rel",)), 0.2)
    assert sent(actions) == [] and the_end(actions).status == 421


@pytest.mark.parametrize("rseq", ["", "0", "x", "99999999999"])
def test_a_reliable_18x_without_a_usable_rseq_gets_no_prack_but_is_progress(rseq: str) -> None:
    core, invite = place()
    [retry] = [a.request for a in core.receive_response(
        response(invite, 421, "Extension Required", extra=("Require: 100rel",)), 0.1) if isinstance(a, SendRequest)]
    extra = ("Require: 100rel", f"RSeq: {rseq}") if rseq else ("Require: 100rel",)
    actions = core.receive_response(response(retry, 180, "Ringing", extra=extra), 0.2)
    assert sent(actions) == [] and only(actions, Progress) and core.state == "ringing"


# -- final refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "outcome"), [
    (486, "busy"), (600, "busy"), (480, "no-answer"), (408, "no-answer"), (404, "rejected"), (403, "rejected"),
    (603, "rejected"), (302, "rejected"), (488, "failed"), (606, "failed"), (500, "failed"), (503, "failed"),
])
def test_final_refusals_map_to_outcomes_and_nothing_is_retried(status: int, outcome: str) -> None:
    """docs/outbound.md: busy, no-answer, rejected (the callee or the PBX declined), failed (a 5xx, our offer
    refused). No INVITE goes again, whatever Retry-After says: the dialer decides."""
    assert outcome_of(status) == outcome
    core, invite = place()
    core.receive_response(response(invite, 180, "Ringing"), 0.1)
    actions = core.receive_response(response(invite, status, "Refused", extra=("Retry-After: 30",)), 0.2)
    assert sent(actions) == [] and the_end(actions).reason == outcome and the_end(actions).status == status
    assert "Retry-After 30 s" in the_end(actions).detail
    assert core.next_deadline is None  # nothing left to fire: no retry, no CANCEL
    assert core.receive_response(response(invite, status, "Refused"), 0.3) == []  # its retransmission


def test_a_redirect_is_not_followed_and_its_contact_is_in_the_detail() -> None:
    """A 302 to another number or host (call forwarding at the PBX) is not followed: an INVITE we would send
    wherever a response points is a toll-fraud path. The outcome says where it pointed."""
    core, invite = place()
    actions = core.receive_response(response(invite, 302, "Moved Temporarily",
                                              contact="<sip:+4930123456@gw.elsewhere.example>;q=0.5"), 0.1)
    assert sent(actions) == []
    end = the_end(actions)
    assert (end.reason, end.status) == ("rejected", 302)
    assert "redirected to <sip:+4930123456@gw.elsewhere.example>" in end.detail and "not followed" in end.detail
    # A Contact with text no log line should carry: bounded and printable.
    core, invite = place()
    text = core.receive_response(response(invite, 301, "Moved", contact="<sip:" + "9" * 500 + "@x>"), 0.1)
    assert len(the_end(text).detail) <= 160


# -- digest -------------------------------------------------------------------------------------------------


def challenge(invite: SipRequest, status: int = 407, nonce: str = "n1") -> SipResponse:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    return response(invite, status, "Proxy Authentication Required", tag="auth", contact=None,
                    extra=(f'{name}: Digest realm="pbx", nonce="{nonce}", qop="auth", algorithm=MD5',))


def test_a_second_407_for_the_same_nonce_stops_and_a_new_nonce_each_time_is_bounded() -> None:
    """401/407 retry: the next CSeq, the same Call-ID and From tag, a new branch. Challenged again for the
    nonce we answered, the credentials are wrong: no third INVITE. A PBX that hands out a new nonce on each
    challenge gets at most a few INVITEs, not a storm."""
    core, first = place(credentials=DigestCredentials("1001", "secret"))
    [retry] = core.receive_response(challenge(first), 0.1)
    assert isinstance(retry, SendRequest)
    second = retry.request
    assert (second.cseq.seq, second.call_id, second.from_addr.tag) == (2, first.call_id, first.from_addr.tag)
    assert second.branch != first.branch and second.headers.get("Proxy-Authorization")
    end = the_end(core.receive_response(challenge(second), 0.2))
    assert (end.reason, end.status) == ("rejected", 407)

    core, invite = place(credentials=DigestCredentials("1001", "secret"))
    invites = 1
    for n in range(10):
        actions = core.receive_response(challenge(invite, nonce=f"fresh{n}"), 0.1 * n)
        if core.ended:
            break
        [again] = actions
        assert isinstance(again, SendRequest)
        invite, invites = again.request, invites + 1
    assert core.ended and invites <= 3 and core.end_status == 407


def test_a_challenge_without_credentials_ends_the_call_rejected() -> None:
    core, invite = place()
    actions = core.receive_response(challenge(invite, 401), 0.1)
    assert sent(actions) == [] and (the_end(actions).reason, the_end(actions).status) == ("rejected", 401)


# -- forks --------------------------------------------------------------------------------------------------


def test_two_ringing_branches_the_one_answering_wins_and_the_other_2xx_is_acked_and_byed() -> None:
    """A ring group: two 180s with different To tags, early media from the first, the second answers: the
    call has the second's dialog and answer; the first answering too is ACKed and BYEd, once."""
    core, invite = place()
    core.receive_response(response(invite, 180, "Ringing", tag="phone-a", contact="<sip:a@192.0.2.10>"), 0.1)
    core.receive_response(response(invite, 180, "Ringing", tag="phone-b", contact="<sip:b@192.0.2.11>"), 0.1)
    core.receive_response(response(invite, 183, "Session Progress", tag="phone-a", contact="<sip:a@192.0.2.10>",
                                   body=sdp(6000, host="192.0.2.10")), 0.2)
    actions = core.receive_response(response(invite, 200, tag="phone-b", contact="<sip:b@192.0.2.11>",
                                              body=sdp(7000, host="192.0.2.11")), 1.0)
    assert sent(actions) == ["ACK"]
    assert core.dialog is not None and core.dialog.remote_tag == "phone-b"
    assert core.media is not None and (core.media.remote_host, core.media.remote_port) == ("192.0.2.11", 7000)
    late = core.receive_response(response(invite, 200, tag="phone-a", contact="<sip:a@192.0.2.10>",
                                           body=sdp(6000, host="192.0.2.10")), 1.1)
    [fork] = late
    assert isinstance(fork, EndFork) and fork.bye is not None and str(fork.dialog.remote_target) == "sip:a@192.0.2.10"
    again = core.receive_response(response(invite, 200, tag="phone-a", contact="<sip:a@192.0.2.10>",
                                           body=sdp(6000, host="192.0.2.10")), 1.2)
    assert again == [EndFork(fork.dialog, fork.ack, None)]
    assert core.state == "confirmed" and core.media.remote_port == 7000


# -- provisional responses that never end -----------------------------------------------------------------


def test_ringing_forever_cancels_at_the_ring_timeout_and_gives_up_64_t1_later() -> None:
    core, invite = place(ring_timeout=30.0)
    core.receive_response(response(invite, 180, "Ringing"), 0.1)
    for minute in range(1, 3):  # a callee re-sending its 180 does not stretch the ring timeout
        core.receive_response(response(invite, 180, "Ringing"), 10.0 * minute)
    assert core.next_deadline == 30.0
    actions = core.timeout(30.0)
    assert sent(actions) == ["CANCEL"] and core.state == "cancelling"
    assert core.next_deadline == 30.0 + 64 * T1
    assert core.timeout(30.0 + 64 * T1 - 0.1) == []
    assert the_end(core.timeout(30.0 + 64 * T1)) == Ended("no-answer", 0, "no final response after CANCEL")
    # A 200 after that: ACK and BYE, the outcome stays.
    late = core.receive_response(response(invite, 200, body=sdp()), 70.0)
    assert sent(late) == ["ACK", "BYE"] and not only(late, Ended) and core.end_reason == "no-answer"


# -- hostile answers ----------------------------------------------------------------------------------------


def test_a_2xx_with_a_huge_to_tag_or_route_set_makes_no_dialog() -> None:
    """Every request of a dialog repeats its To tag and its routes: a 10 KB tag or hundreds of Record-Route
    entries would go out in each ACK, BYE and re-INVITE. Such a 2xx is refused (no ACK: it makes no dialog)."""
    core, invite = place()
    actions = core.receive_response(response(invite, 200, tag="x" * 10_000, body=sdp()), 1.0)
    assert sent(actions) == [] and core.dialog is None
    end = the_end(actions)
    assert (end.reason, end.status) == ("failed", 200) and "10000 characters" in end.detail
    routes = tuple(f"Record-Route: <sip:10.0.{i // 250}.{i % 250};lr>" for i in range(500))
    core, invite = place()
    end = the_end(core.receive_response(response(invite, 200, body=sdp(), extra=routes), 1.0))
    assert (end.reason, "500 Record-Route" in end.detail) == ("failed", True)
    # What real proxies write passes: a 40-character tag and MAX_ROUTES routes, reversed into the route set.
    core, invite = place()
    routes = tuple(f"Record-Route: <sip:10.0.0.{i};lr>" for i in range(1, MAX_ROUTES + 1))
    actions = core.receive_response(response(invite, 200, tag="t" * MAX_TAG_LENGTH, body=sdp(), extra=routes), 1.0)
    [ack] = [a.request for a in actions if isinstance(a, SendAck)]
    assert ack.headers.get_all("Route")[0] == f"<sip:10.0.0.{MAX_ROUTES};lr>" and core.state == "confirmed"


def test_a_fork_with_a_huge_to_tag_gets_no_ack_or_bye() -> None:
    core, invite = place()
    core.receive_response(response(invite, 200, body=sdp()), 1.0)
    assert core.receive_response(response(invite, 200, tag="y" * 10_000, body=sdp()), 1.1) == []
    assert core.state == "confirmed"


def test_a_tel_contact_is_reachable_only_through_a_route() -> None:
    """A 2xx whose Contact is a tel: URI: with no Record-Route there is nowhere to send the ACK and BYE (the
    call would be up with no way to end it); behind a record-routing proxy, the proxy takes them."""
    core, invite = place()
    end = the_end(core.receive_response(response(invite, 200, body=sdp(), contact="<tel:+15551234>"), 1.0))
    assert (end.reason, end.status) == ("failed", 200) and "tel:+15551234" in end.detail
    core, invite = place()
    actions = core.receive_response(response(invite, 200, body=sdp(), contact="<tel:+15551234>",
                                              extra=("Record-Route: <sip:192.0.2.5;lr>",)), 1.0)
    [ack] = [a.request for a in actions if isinstance(a, SendAck)]
    assert ack.uri == "tel:+15551234" and ack.headers.get_all("Route") == ["<sip:192.0.2.5;lr>"]
    assert core.state == "confirmed"


def test_a_2xx_contact_on_another_host_gets_the_ack_and_bye_once() -> None:
    """The Contact of a 2xx is where the dialog's requests go (RFC 3261 12.1.2), another host included: a
    callee reached directly. Only an answer carrying our INVITE's branch makes it, and each copy gets one
    ACK, never a BYE more: no amplification beyond the one dialog."""
    core, invite = place()
    ok = response(invite, 200, body=sdp(), contact="<sip:2002@198.51.100.7:5080>")
    [ack, _] = core.receive_response(ok, 1.0)
    assert isinstance(ack, SendAck) and ack.request.uri == "sip:2002@198.51.100.7:5080"
    for n in range(10):
        assert core.receive_response(ok, 1.5 + n) == [SendAck(ack.request)]
    bye = core.hangup(20.0)
    assert sent(bye) == ["BYE"] and [a.request.uri for a in bye if isinstance(a, SendRequest)] == [ack.request.uri]


def test_a_2xx_naming_another_method_in_its_cseq_is_ignored() -> None:
    core, invite = place()
    core.receive_response(response(invite, 180, "Ringing"), 0.1)
    assert core.receive_response(response(invite, 200, body=sdp(), cseq=f"{invite.cseq.seq} BYE"), 0.2) == []
    assert core.receive_response(response(invite, 200, body=sdp(), cseq=f"{invite.cseq.seq + 5} INVITE"), 0.3) == []
    assert core.state == "ringing" and core.dialog is None


def test_our_in_dialog_requests_do_not_offer_100rel_either() -> None:
    """Our re-INVITE (hold, refresh) listing 100rel in Supported would let the PBX answer it with a reliable
    18x that we never PRACK: the PBX would then fail the re-INVITE after 64*T1. Only what we do is listed."""
    core, invite = place()
    core.receive_response(response(invite, 200, body=sdp()), 1.0)
    assert core.sdp.local is not None
    [reoffer] = core.reoffer(core.sdp.local, 2.0)
    [bye] = core.hangup(3.0)[:1]
    for action in (reoffer, bye):
        assert isinstance(action, SendRequest)
        supported = [o.strip() for o in (action.request.headers.get("Supported") or "").split(",")]
        assert "timer" in supported and "100rel" not in supported, action.request.method


def test_a_far_end_flooding_reliable_18x_gets_at_most_max_pracks() -> None:
    core, invite = place()
    [retry] = [a.request for a in core.receive_response(
        response(invite, 421, "Extension Required", extra=("Require: 100rel",)), 0.1) if isinstance(a, SendRequest)]
    pracks = [sent(core.receive_response(response(retry, 183, "Session Progress",
                                                  extra=("Require: 100rel", f"RSeq: {rseq}")), 0.2))
              for rseq in range(1, 3 * MAX_PRACKS)]
    assert sum(len(methods) for methods in pracks) == MAX_PRACKS and core.state == "ringing"
