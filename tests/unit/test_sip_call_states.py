"""Call states a real Asterisk or FreeSWITCH drives, on the sans-I/O call core with a fake clock.

Each test feeds the core what those PBXs write (raw request text, or the other side of a ``Link``) and checks
the answer against RFC 3261 (14.1 glare, 14.2 a second INVITE, 15.1.2 BYE in an early dialog), RFC 3264
(m-lines rejected or removed, payload types), RFC 3311 (UPDATE during an INVITE), RFC 3515 (the NOTIFYs of our
REFER) and RFC 6086 (INFO bodies).
"""

from __future__ import annotations

import pytest
from test_sip_call_core import (
    RAW_SDP,
    UAC_CONFIG,
    UAS_CONFIG,
    in_dialog,
    raw_invite,
    responses,
    wire,
)

from sipagent.errors import SipParseError
from sipagent.sdp import SessionDescription, make_offer
from sipagent.sip.call import (
    CallAction,
    CallConfig,
    CallCore,
    Ended,
    Established,
    Held,
    MediaChanged,
    Respond,
    SendRequest,
    TransferProgress,
)
from sipagent.sip.message import SipRequest, SipResponse, bad_request_for, build_response, parse_message

PBX_SDP = ("v=0\r\no=- 1733300000 {version} IN IP4 192.0.2.50\r\ns=Asterisk\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n"
           "{media}")
AUDIO = ("m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def sdp(media: str, version: int = 1) -> str:
    return PBX_SDP.format(version=version, media=media)


def up(offer: str = RAW_SDP, config: CallConfig = UAS_CONFIG) -> CallCore:
    """A call we answered, confirmed by its ACK (the PBX's INVITE has CSeq 7)."""
    call = CallCore.incoming(raw_invite(body=offer, require_100rel=False), config,
                             SessionDescription.parse(offer.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    [established] = call.receive_request(in_dialog(call, "ACK", 7), 0.1)
    assert isinstance(established, Established)
    return call


def respond(actions: list[CallAction], status: int) -> SipResponse:
    found = [a.response for a in actions if isinstance(a, Respond) and a.response.status == status]
    assert len(found) == 1, [a for a in actions if isinstance(a, Respond)]
    return found[0]


def sent(actions: list[CallAction], method: str) -> SipRequest:
    [request] = [a.request for a in actions if isinstance(a, SendRequest) and a.request.method == method]
    return request


def answer_of(request: SipRequest, status: int, body: str = "") -> SipResponse:
    """The PBX's final response to a request of ours."""
    response = build_response(request, status, to_tag="a1" if not request.to_addr.tag else None)
    response.headers.add("Contact", "<sip:1001@192.0.2.50>")
    if body:
        response.headers.add("Content-Type", "application/sdp")
        response.body = body.encode()
    parsed = wire(response)
    assert isinstance(parsed, SipResponse)
    return parsed


# -- RFC 3261 14.1 / 14.2: re-INVITEs that cross ------------------------------------------------------


def test_a_reinvite_before_the_first_invite_is_answered_gets_500_with_retry_after() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    actions = call.receive_request(in_dialog(call, "INVITE", 8, body=RAW_SDP), 0.5)
    pending = respond(actions, 500)
    assert 0 <= int(pending.headers.get("Retry-After") or "x") <= 10
    assert call.state == "ringing" and not [a for a in actions if isinstance(a, Ended)]


def test_a_second_reinvite_before_the_ack_of_our_2xx_gets_500_with_retry_after() -> None:
    call = up()
    first = call.receive_request(in_dialog(call, "INVITE", 8, body=sdp(AUDIO, 2)), 1.0)
    assert responses(first)[0] == 200
    # Its ACK is late (UDP reordering): the second re-INVITE finds the first INVITE transaction unfinished.
    second = call.receive_request(in_dialog(call, "INVITE", 9, body=sdp(AUDIO.replace("sendrecv", "sendonly"), 3)), 1.1)
    assert 0 <= int(respond(second, 500).headers.get("Retry-After") or "x") <= 10
    call.receive_request(in_dialog(call, "ACK", 8), 1.2)
    third = call.receive_request(in_dialog(call, "INVITE", 10, body=sdp(AUDIO.replace("sendrecv", "sendonly"), 3)),
                                 1.3)
    assert responses(third)[0] == 200 and Held(True) in third


def test_a_reinvite_while_our_offer_in_a_2xx_awaits_its_ack_still_gets_491() -> None:
    """A re-INVITE without SDP: our 2xx carries an offer, its ACK the answer; an offer crossing it is glare."""
    call = up()
    assert responses(call.receive_request(in_dialog(call, "INVITE", 8), 1.0)) == [200]
    assert responses(call.receive_request(in_dialog(call, "INVITE", 9, body=sdp(AUDIO, 2)), 1.1)) == [491]


def glare() -> tuple[CallCore, SipRequest, float]:
    """A PBX without timers and without UPDATE: we refresh by re-INVITE at half the interval, and the PBX's hold
    re-INVITE crosses ours: it gets 491."""
    call = up()
    due = call.timer.next_deadline
    assert due is not None and due == 0.0 + call.timer.interval / 2
    ours = sent(call.timeout(due), "INVITE")
    assert ours.body  # our SDP again
    hold = in_dialog(call, "INVITE", 8, body=sdp(AUDIO.replace("sendrecv", "sendonly"), 2))
    assert responses(call.receive_request(hold, due + 0.01)) == [491]
    return call, ours, due


def test_glare_our_refresh_is_retried_within_2_s_when_the_pbx_owns_the_call_id() -> None:
    call, ours, at = glare()  # random() is 0.5
    assert call.receive_response(answer_of(ours, 491), at + 0.05) == []
    assert call.next_deadline == at + 0.05 + 1.0  # RFC 3261 14.1: 0-2 s for the side that did not make the Call-ID
    retry = sent(call.timeout(at + 1.05), "INVITE")
    assert retry.cseq.seq == ours.cseq.seq + 1


def test_glare_our_refresh_is_retried_after_2_1_to_4_s_when_we_own_the_call_id() -> None:
    call = CallCore.outgoing("sip:2002@pbx", "sip:1001@pbx", UAC_CONFIG)
    invite = sent(call.dial("192.0.2.1", 40000, 0.0), "INVITE")
    # The PBX's 200 names no Session-Expires and no UPDATE in Allow: we keep our own timer, by re-INVITE.
    assert isinstance(call.receive_response(answer_of(invite, 200, body=sdp(AUDIO)), 0.0)[-1], Established)
    due = call.next_deadline
    assert due is not None and due == UAC_CONFIG.timer_policy.session_expires / 2
    ours = sent(call.timeout(due), "INVITE")
    assert call.receive_response(answer_of(ours, 491), due + 0.05) == []
    # We placed the call: its Call-ID is ours, so we wait 2.1-4 s (random() 0.5: 3.05 s) while the PBX waits
    # 0-2 s, and its re-INVITE goes first.
    retry_at = call.next_deadline
    assert retry_at is not None and abs(retry_at - (due + 0.05 + 3.05)) < 1e-9
    assert sent(call.timeout(retry_at), "INVITE").cseq.seq == ours.cseq.seq + 1


def test_update_with_an_offer_during_our_reinvite_gets_491_and_one_without_gets_200() -> None:
    call = up()
    hold = make_offer(["PCMA"], "192.0.2.2", 50000, call.sdp.session, direction="sendonly")
    reinvite = sent(call.reoffer(hold, 1.0), "INVITE")
    assert responses(call.receive_request(in_dialog(call, "UPDATE", 8, body=sdp(AUDIO, 2)), 1.1)) == [491]
    assert responses(call.receive_request(in_dialog(call, "UPDATE", 9), 1.2)) == [200]  # a connected-line UPDATE
    assert reinvite.cseq.method == "INVITE" and call.state == "confirmed"


# -- RFC 3261 15.1.2: a BYE in the early dialog -------------------------------------------------------------


def test_a_bye_in_the_early_dialog_ends_the_unanswered_invite_with_487() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    actions = call.receive_request(in_dialog(call, "BYE", 8), 1.0)
    assert responses(actions) == [200, 487]
    [bye_ok, refused] = [a for a in actions if isinstance(a, Respond)]
    assert bye_ok.request.method == "BYE" and refused.request is call.invite
    assert call.end_reason == "remote-bye"


# -- in-dialog requests: CSeq, OPTIONS, INFO, ACK ----------------------------------------------------------


def test_bye_and_reinvite_with_an_old_cseq_get_500_and_the_call_goes_on() -> None:
    call = up()
    assert responses(call.receive_request(in_dialog(call, "OPTIONS", 20), 1.0)) == [200]
    assert responses(call.receive_request(in_dialog(call, "BYE", 19), 1.1)) == [500]
    assert responses(call.receive_request(in_dialog(call, "INVITE", 20, body=sdp(AUDIO, 2)), 1.2)) == [500]
    assert call.state == "confirmed"
    assert responses(call.receive_request(in_dialog(call, "BYE", 21), 1.3)) == [200] and call.ended


def test_options_in_the_dialog_as_freeswitch_pings_is_answered_with_our_capabilities() -> None:
    call = up()
    ok = respond(call.receive_request(in_dialog(call, "OPTIONS", 8), 1.0), 200)
    assert "INVITE" in (ok.headers.get("Allow") or "") and "application/sdp" in (ok.headers.get("Accept") or "")
    assert ok.to_addr.tag == call.dialog.local_tag  # type: ignore[union-attr]
    assert call.state == "confirmed"


def test_info_with_a_body_we_do_not_read_gets_415_and_an_empty_info_200() -> None:
    call = up()
    fast_update = ('<?xml version="1.0"?><media_control><vc_primitive><to_encoder><picture_fast_update/>'
                   "</to_encoder></vc_primitive></media_control>")
    unknown = in_dialog(call, "INFO", 8, body=fast_update, extra="Content-Type: application/media_control+xml\r\n")
    refused = respond(call.receive_request(unknown, 1.0), 415)
    assert "application/dtmf-relay" in (refused.headers.get("Accept") or "")
    assert responses(call.receive_request(in_dialog(call, "INFO", 9), 1.1)) == [200]  # a keep-alive INFO
    assert call.state == "confirmed"


def test_an_info_of_a_package_we_never_announced_gets_469() -> None:
    call = up()
    package = in_dialog(call, "INFO", 8, body="<x/>",
                        extra="Info-Package: foo\r\nContent-Type: application/foo+xml\r\n")
    assert responses(call.receive_request(package, 1.0)) == [469]


def test_an_ack_whose_cseq_names_another_method_is_dropped_unanswered() -> None:
    """RFC 3261 8.1.1.5: the CSeq method is the request's. Such an "ACK" is unparsable, and an ACK is never
    answered (no 400): our 2xx goes on until a real ACK comes."""
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    text = in_dialog(call, "ACK", 7).to_bytes().replace(b"CSeq: 7 ACK", b"CSeq: 7 INVITE")
    with pytest.raises(SipParseError):
        parse_message(text)
    assert bad_request_for(text, "CSeq method does not match request method") is None
    assert call.state == "answering"


def test_an_ack_with_another_cseq_number_does_not_stop_our_2xx() -> None:
    call = CallCore.incoming(raw_invite(require_100rel=False), UAS_CONFIG, SessionDescription.parse(RAW_SDP.encode()))
    call.ring(0.0)
    call.answer("192.0.2.2", 50000, 0.0)
    assert call.receive_request(in_dialog(call, "ACK", 8), 0.1) == []
    assert call.state == "answering" and call.next_deadline is not None


# -- RFC 3515: our REFER and its NOTIFYs -------------------------------------------------------------------


def notify(call: CallCore, seq: int, frag: str, state: str) -> list[CallAction]:
    return call.receive_request(in_dialog(call, "NOTIFY", seq, body=frag + "\r\n" if frag else "", extra=(
        f"Event: refer\r\nSubscription-State: {state}\r\n" + ("Content-Type: message/sipfrag\r\n" if frag else ""))),
        2.0)


def test_a_refer_accepted_then_reported_180_503_and_terminated_keeps_the_call() -> None:
    call = up()
    refer = sent(call.transfer("<sip:3003@pbx>", 1.0), "REFER")
    assert call.receive_response(answer_of(refer, 202), 1.1) == [TransferProgress("refer", 202)]
    ringing = notify(call, 8, "SIP/2.0 180 Ringing", "active;expires=60")
    assert responses(ringing) == [200] and TransferProgress("notify", 180) in ringing
    failed = notify(call, 9, "SIP/2.0 503 Service Unavailable", "active;expires=60")
    assert responses(failed) == [200] and TransferProgress("notify", 503) in failed
    # The subscription ends in a NOTIFY of its own (Asterisk's way): still ours to acknowledge, and no second
    # outcome for the layer above.
    over = notify(call, 10, "SIP/2.0 503 Service Unavailable", "terminated;reason=noresource")
    assert responses(over) == [200] and not [a for a in over if isinstance(a, (TransferProgress, Ended))]
    assert call.state == "confirmed"
    assert responses(notify(call, 11, "SIP/2.0 200 OK", "terminated")) == [481]  # no subscription any more
    assert call.state == "confirmed"


def test_a_subscription_terminated_without_a_final_status_is_a_failed_transfer() -> None:
    call = up()
    refer = sent(call.transfer("<sip:3003@pbx>", 1.0), "REFER")
    call.receive_response(answer_of(refer, 202), 1.1)
    assert TransferProgress("notify", 100) in notify(call, 8, "SIP/2.0 100 Trying", "active")
    over = notify(call, 9, "", "terminated;reason=timeout")
    assert responses(over) == [200] and TransferProgress("notify", 500) in over and call.state == "confirmed"


def test_a_refer_refused_403_or_405_is_reported_and_the_call_goes_on() -> None:
    for status in (403, 405):
        call = up()
        refer = sent(call.transfer("<sip:3003@pbx>", 1.0), "REFER")
        assert call.receive_response(answer_of(refer, status), 1.1) == [TransferProgress("refer", status)]
        assert call.state == "confirmed"
        assert responses(notify(call, 8, "SIP/2.0 200 OK", "terminated")) == [481]
        assert call.state == "confirmed"


# -- RFC 3264: what the offers of a re-INVITE may hold ------------------------------------------------------


def test_a_reinvite_removing_the_audio_stream_is_answered_with_port_0_and_holds_the_call() -> None:
    call = up()
    removed = call.receive_request(in_dialog(call, "INVITE", 8, body=sdp("m=audio 0 RTP/AVP 0\r\n", 2)), 1.0)
    ok = respond(removed, 200)
    answer = SessionDescription.parse(ok.body)
    assert [(m.media, m.port) for m in answer.media] == [("audio", 0)]
    assert Held(True) in removed and call.media is not None and not call.media.may_send
    call.receive_request(in_dialog(call, "ACK", 8), 1.1)
    back = call.receive_request(in_dialog(call, "INVITE", 9, body=sdp(AUDIO, 3)), 2.0)
    ok = respond(back, 200)
    assert SessionDescription.parse(ok.body).media[0].port == 50000 and Held(False) in back


def test_a_t38_reinvite_is_refused_488_and_the_audio_goes_on() -> None:
    call = up()
    before = call.media
    fax = sdp("m=audio 0 RTP/AVP 0\r\nm=image 4002 udptl t38\r\na=T38FaxVersion:0\r\n", 2)
    assert responses(call.receive_request(in_dialog(call, "INVITE", 8, body=fax), 1.0)) == [488]
    assert call.media == before and call.state == "confirmed"


def test_audio_and_video_offered_keeps_the_m_line_order_and_rejects_video() -> None:
    offer = sdp("m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n" + AUDIO
                + "m=video 4004 RTP/AVPF 97\r\na=rtpmap:97 VP8/90000\r\n")
    call = up(offer)
    assert call.sdp.local is not None
    assert [(m.media, m.port) for m in call.sdp.local.media] == [("video", 0), ("audio", 50000), ("video", 0)]


def test_profiles_we_do_not_take_are_refused_with_488() -> None:
    for proto in ("RTP/SAVP", "UDP/TLS/RTP/SAVPF", "RTP/SAVPF"):
        offer = sdp(AUDIO.replace("RTP/AVP", proto))
        call = CallCore.incoming(raw_invite(body=offer, require_100rel=False), UAS_CONFIG,
                                 SessionDescription.parse(offer.encode()))
        call.ring(0.0)
        actions = call.answer("192.0.2.2", 50000, 0.0)
        assert responses(actions) == [488] and call.end_reason == "rejected-sdp", proto


def test_rtp_avpf_is_answered_in_its_own_profile() -> None:
    call = up(sdp(AUDIO.replace("RTP/AVP", "RTP/AVPF") + "a=rtcp-fb:* nack\r\n"))
    assert call.sdp.local is not None and call.sdp.local.media[0].proto == "RTP/AVPF"


def test_ptime_30_maxptime_40_rtcp_mux_and_an_rtcp_port_are_taken() -> None:
    offer = sdp(AUDIO.replace("a=ptime:20\r\n", "a=ptime:30\r\na=maxptime:40\r\na=rtcp-mux\r\na=rtcp:4010\r\n"))
    call = up(offer)
    assert call.media is not None and call.media.ptime == 30 and call.media.remote_port == 4000
    assert call.sdp.local is not None
    text = call.sdp.local.to_bytes().decode()
    # We packetize 20 ms (within their maxptime) and do not multiplex RTCP: our answer says neither more.
    assert "a=ptime:20" in text and "rtcp-mux" not in text


def test_telephone_event_16000_with_g722() -> None:
    wideband = CallConfig(codecs=("G722", "PCMU"), local_contact="<sip:2002@192.0.2.2:5060>",
                          via_sent_by="192.0.2.2:5060", random=lambda: 0.5)
    both = sdp("m=audio 4000 RTP/AVP 9 0 101 102\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
               "a=rtpmap:102 telephone-event/16000\r\na=fmtp:102 0-16\r\n")
    call = up(both, wideband)
    assert call.media is not None and call.media.codec == "G722" and call.media.dtmf_payload_type == 101
    # Only the 16 kHz one: G.722's RTP clock is 8000 (RFC 3551), so its events would be misread; not taken.
    only = sdp("m=audio 4000 RTP/AVP 9 102\r\na=rtpmap:9 G722/8000\r\na=rtpmap:102 telephone-event/16000\r\n")
    call = up(only, wideband)
    assert call.media is not None and call.media.codec == "G722" and call.media.dtmf_payload_type is None
    assert call.sdp.local is not None and "telephone-event" not in call.sdp.local.to_bytes().decode()


def test_a_dynamic_payload_type_reused_for_another_codec_in_a_reinvite_is_followed() -> None:
    call = up(sdp(AUDIO))
    assert call.media is not None and call.media.dtmf_payload_type == 101
    moved = sdp("m=audio 4000 RTP/AVP 101 96\r\na=rtpmap:101 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n", 2)
    actions = call.receive_request(in_dialog(call, "INVITE", 8, body=moved), 1.0)
    ok = respond(actions, 200)
    [changed] = [a for a in actions if isinstance(a, MediaChanged)]
    assert (changed.media.codec, changed.media.payload_type, changed.media.dtmf_payload_type) == ("PCMA", 101, 96)
    assert b"a=rtpmap:101 PCMA/8000" in ok.body and b"a=rtpmap:96 telephone-event/8000" in ok.body


def test_two_audio_m_lines_take_the_first_and_reject_the_second() -> None:
    call = up(sdp(AUDIO + AUDIO.replace("4000", "4002")))
    assert call.sdp.local is not None and [m.port for m in call.sdp.local.media] == [50000, 0]
    assert call.media is not None and call.media.remote_port == 4000

