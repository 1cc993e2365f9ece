"""SDP parsing and offer/answer negotiation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.errors import SdpError
from sipagent.sdp import (
    LocalSession,
    NegotiatedMedia,
    SessionDescription,
    accept_answer,
    is_hold,
    make_offer,
    negotiate,
)


def sdp(*lines: str) -> SessionDescription:
    return SessionDescription.parse(("\r\n".join(lines) + "\r\n").encode())


BARESIP_OFFER = (
    "v=0", "o=- 1234 5678 IN IP4 192.0.2.20", "s=-", "c=IN IP4 192.0.2.20", "t=0 0",
    "m=audio 30000 RTP/AVP 9 0 8 101",
    "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=ptime:30", "a=sendrecv",
)


def test_parse_round_trip_keeps_unknown_lines() -> None:
    offer = sdp(*BARESIP_OFFER[:5], "b=AS:64", "a=tool:x", *BARESIP_OFFER[5:], "a=x-unknown:1 2 3")
    assert offer.origin.version == 5678 and offer.origin.address == "192.0.2.20"
    assert offer.connection_address == "192.0.2.20"
    media = offer.media[0]
    assert media.formats == ["9", "0", "8", "101"] and media.port == 30000
    assert media.rtpmaps()[101].encoding == "telephone-event"
    assert media.fmtps() == {101: "0-15"}
    assert media.attribute("x-unknown") == "1 2 3" and media.attribute("sendrecv") == ""
    assert SessionDescription.parse(offer.to_bytes()) == offer


@pytest.mark.parametrize(("prefs", "codec", "pt"), [
    (["PCMU", "PCMA", "G722"], "PCMU", 0),
    (["G722", "PCMU"], "G722", 9),
    (["PCMA"], "PCMA", 8),
    (["OPUS", "pcma"], "PCMA", 8),
])
def test_our_preference_order_wins(prefs: list[str], codec: str, pt: int) -> None:
    answer, media = negotiate(sdp(*BARESIP_OFFER), prefs, "192.0.2.1", 40000)
    assert (media.codec, media.payload_type, media.clock_rate) == (codec, pt, 8000)
    assert media.dtmf_payload_type == 101 and media.ptime == 30 and media.direction == "sendrecv"
    assert (media.remote_host, media.remote_port) == ("192.0.2.20", 30000)
    m = answer.media[0]
    assert m.port == 40000 and m.formats == [str(pt), "101"]
    assert m.rtpmaps()[pt].encoding == codec and m.rtpmaps()[pt].clock_rate == 8000
    assert m.fmtps()[101] == "0-15" and m.direction == "sendrecv"
    assert answer.connection_address == "192.0.2.1"
    reparsed = SessionDescription.parse(answer.to_bytes())
    assert reparsed.media[0].formats == m.formats


def test_static_payload_types_without_rtpmap_and_dynamic_dtmf_pt() -> None:
    offer = sdp("v=0", "o=x 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 5004 RTP/AVP 8 0 96",
                "c=IN IP4 198.51.100.1", "a=rtpmap:96 telephone-event/8000")
    _, media = negotiate(offer, ["PCMU", "PCMA"], "192.0.2.1", 40000)
    assert media.codec == "PCMU" and media.payload_type == 0
    assert media.dtmf_payload_type == 96 and media.remote_host == "198.51.100.1"
    assert media.ptime == 20


def test_multiple_m_lines_rejects_others_with_port_zero() -> None:
    offer = sdp("v=0", "o=x 1 1 IN IP4 h", "s=-", "c=IN IP4 198.51.100.1", "t=0 0",
                "m=video 6000 RTP/AVP 96", "a=rtpmap:96 H264/90000",
                "m=audio 6002 RTP/SAVP 0", "m=audio 6004 RTP/AVP 18 8", "a=rtpmap:18 G729/8000",
                "m=audio 6006 RTP/AVP 0")
    answer, media = negotiate(offer, ["PCMU", "PCMA"], "192.0.2.1", 40000)
    # The first acceptable stream is the third one (SRTP is not supported), with PCMA.
    assert (media.codec, media.remote_port) == ("PCMA", 6004)
    assert [m.port for m in answer.media] == [0, 0, 40000, 0]
    assert [m.media for m in answer.media] == ["video", "audio", "audio", "audio"]
    assert media.dtmf_payload_type is None and answer.media[2].formats == ["8"]


def test_no_common_codec_is_sdp_error() -> None:
    offer = sdp("v=0", "o=x 1 1 IN IP4 h", "s=-", "c=IN IP4 h", "t=0 0",
                "m=audio 6000 RTP/AVP 18 96", "a=rtpmap:96 opus/48000/2")
    with pytest.raises(SdpError):
        negotiate(offer, ["PCMU", "PCMA", "G722"], "192.0.2.1", 40000)
    with pytest.raises(SdpError):
        negotiate(sdp("v=0", "o=x 1 1 IN IP4 h", "s=-", "t=0 0"), ["PCMU"], "h", 1)


@pytest.mark.parametrize(("offer_lines", "answer_dir", "hold"), [
    (("a=sendonly",), "recvonly", True),
    (("a=inactive",), "inactive", True),
    (("a=recvonly",), "sendonly", False),
    ((), "sendrecv", False),
])
def test_hold_directions_mirror(offer_lines: tuple[str, ...], answer_dir: str, hold: bool) -> None:
    offer = sdp("v=0", "o=x 1 2 IN IP4 h", "s=-", "c=IN IP4 198.51.100.1", "t=0 0",
                "m=audio 6000 RTP/AVP 0", *offer_lines)
    answer, media = negotiate(offer, ["PCMU"], "192.0.2.1", 40000)
    assert media.direction == answer_dir and answer.media[0].direction == answer_dir
    assert is_hold(offer) is hold and media.on_hold is (answer_dir in ("recvonly", "inactive"))


def test_session_level_direction_and_old_style_hold() -> None:
    offer = sdp("v=0", "o=x 1 2 IN IP4 h", "s=-", "c=IN IP4 198.51.100.1", "t=0 0", "a=sendonly",
                "m=audio 6000 RTP/AVP 0")
    assert negotiate(offer, ["PCMU"], "h", 1)[1].direction == "recvonly"
    old = sdp("v=0", "o=x 1 2 IN IP4 h", "s=-", "c=IN IP4 0.0.0.0", "t=0 0", "m=audio 6000 RTP/AVP 0")
    assert is_hold(old)
    assert negotiate(old, ["PCMU"], "h", 1)[1].direction == "recvonly"


# What Asterisk, FreeSWITCH and older phones put in a hold re-INVITE, and the answer each must get: the
# direction mirrored, and our own address in c= (never 0.0.0.0, which the PBX would read as our hold).
HOLD_OFFERS = {
    "asterisk-sendonly": (("c=IN IP4 198.51.100.1",), ("a=sendonly",), "recvonly"),
    "inactive": (("c=IN IP4 198.51.100.1",), ("a=inactive",), "inactive"),
    "rfc2543-c0": (("c=IN IP4 0.0.0.0",), ("a=sendrecv",), "recvonly"),
    "rfc2543-c0-no-direction": (("c=IN IP4 0.0.0.0",), (), "recvonly"),
    "rfc2543-c0-recvonly": (("c=IN IP4 0.0.0.0",), ("a=recvonly",), "inactive"),
    "media-level-c0": (("c=IN IP4 198.51.100.1",), ("c=IN IP4 0.0.0.0", "a=sendrecv"), "recvonly"),
    "ipv6-unspecified": (("c=IN IP6 ::",), (), "recvonly"),
    "ipv6-unspecified-long": (("c=IN IP6 0:0:0:0:0:0:0:0",), ("a=sendrecv",), "recvonly"),
    "resume": (("c=IN IP4 198.51.100.1",), ("a=sendrecv",), "sendrecv"),
}


@pytest.mark.parametrize("kind", HOLD_OFFERS)
def test_hold_offers_and_the_answer_text(kind: str) -> None:
    session_c, media_lines, ours = HOLD_OFFERS[kind]
    offer = sdp("v=0", "o=pbx 1 2 IN IP4 198.51.100.1", "s=-", *session_c, "t=0 0",
                "m=audio 6000 RTP/AVP 0 8 101", "a=rtpmap:101 telephone-event/8000", *media_lines)
    answer, media = negotiate(offer, ["PCMU"], "192.0.2.1", 40000)
    text = answer.to_bytes().decode()
    assert f"\r\na={ours}\r\n" in text and "c=IN IP4 192.0.2.1\r\n" in text and "0.0.0.0" not in text, text
    assert sum(f"a={d}" in text for d in ("sendrecv", "sendonly", "recvonly", "inactive")) == 1, text
    held = ours != "sendrecv"
    assert media.on_hold is held and media.may_send is not held and is_hold(offer) is held


def test_an_unspecified_remote_address_never_sends_whatever_the_direction() -> None:
    media = NegotiatedMedia("PCMU", 0, 8000, None, "0.0.0.0", 6000, 20, "sendrecv")
    assert media.on_hold and not media.may_send
    assert NegotiatedMedia("PCMU", 0, 8000, None, "::", 6000, 20, "sendonly").on_hold
    assert NegotiatedMedia("PCMU", 0, 8000, None, "198.51.100.1", 6000, 20, "sendonly").may_send


def test_an_answer_with_c_0_0_0_0_is_a_hold_too() -> None:
    offer = make_offer(["PCMU"], "192.0.2.1", 40000, LocalSession())
    assert offer.media[0].direction == "sendrecv"
    answer = sdp("v=0", "o=y 1 1 IN IP4 h", "s=-", "c=IN IP4 0.0.0.0", "t=0 0", "m=audio 7000 RTP/AVP 0")
    media = accept_answer(answer)
    assert media.direction == "recvonly" and media.on_hold and not media.may_send


def test_a_codec_change_in_a_reoffer_is_negotiated_with_our_preference() -> None:
    session = LocalSession()
    first = sdp("v=0", "o=pbx 1 1 IN IP4 h", "s=-", "c=IN IP4 198.51.100.1", "t=0 0", "m=audio 6000 RTP/AVP 0")
    moved = sdp("v=0", "o=pbx 1 2 IN IP4 h", "s=-", "c=IN IP4 198.51.100.7", "t=0 0",
                "m=audio 7000 RTP/AVP 9 8 0", "a=rtpmap:9 G722/8000")
    _, before = negotiate(first, ["G722", "PCMA", "PCMU"], "192.0.2.1", 40000, session)
    answer, after = negotiate(moved, ["G722", "PCMA", "PCMU"], "192.0.2.1", 40000, session)
    assert (before.codec, before.remote_host, before.remote_port) == ("PCMU", "198.51.100.1", 6000)
    assert (after.codec, after.payload_type, after.remote_host, after.remote_port) == ("G722", 9, "198.51.100.7", 7000)
    assert after != before and answer.media[0].formats == ["9"] and answer.origin.version == session.version


def test_session_version_increments_on_reoffer() -> None:
    session = LocalSession(session_id=42)
    first, _ = negotiate(sdp(*BARESIP_OFFER), ["PCMU"], "192.0.2.1", 40000, session)
    second, _ = negotiate(sdp(*BARESIP_OFFER), ["PCMU"], "192.0.2.1", 40000, session)
    assert first.origin.session_id == second.origin.session_id == "42"
    assert second.origin.version == first.origin.version + 1


def test_ipv6_answer() -> None:
    offer = sdp("v=0", "o=x 1 2 IN IP6 ::1", "s=-", "c=IN IP6 2001:db8::20", "t=0 0",
                "m=audio 6000 RTP/AVP 0")
    answer, media = negotiate(offer, ["PCMU"], "2001:db8::1", 40000)
    assert media.remote_host == "2001:db8::20"
    assert answer.value("c") == "IN IP6 2001:db8::1" and answer.origin.addrtype == "IP6"


@pytest.mark.parametrize(("attribute", "expected"), [
    (None, None),  # absent: RTP's port + 1, as ever
    ("a=rtcp:30001", ("192.0.2.20", 30001)),  # port only: on RTP's address
    ("a=rtcp:40001 IN IP4 192.0.2.21", ("192.0.2.21", 40001)),  # FreeSWITCH's form
    ("a=rtcp:0", None), ("a=rtcp:65536", None), ("a=rtcp:abc", None), ("a=rtcp:", None),
    ("a=rtcp:\uff11\uff12", None),  # digits, but not ASCII ones
    ("a=rtcp:30001 IN IP4", None), ("a=rtcp:30001 IN IP4 pbx.example.com", None),
    ("a=rtcp:30001 IN IP6 2001:db8::1", None),  # another family than RTP's
    ("a=rtcp:30001 IN IP4 0.0.0.0", None), ("a=rtcp:30001 XX IP4 192.0.2.21", None),
])
def test_the_rtcp_address_a_peer_signals(attribute: str | None, expected: tuple[str, int] | None) -> None:
    """RFC 3605: where the peer takes RTCP. One we cannot read counts as absent, never refuses the call."""
    lines = BARESIP_OFFER + ((attribute,) if attribute else ())
    _, media = negotiate(sdp(*lines), ["PCMU"], "192.0.2.1", 40000)
    assert media.remote_rtcp == expected
    answer = sdp("v=0", "o=y 1 1 IN IP4 h", "s=-", "c=IN IP4 192.0.2.20", "t=0 0",
                 "m=audio 30000 RTP/AVP 0", *((attribute,) if attribute else ()))
    assert accept_answer(answer).remote_rtcp == expected


def test_make_offer_and_accept_answer() -> None:
    session = LocalSession(session_id=7)
    offer = make_offer(["G722", "PCMU"], "192.0.2.1", 40000, session)
    assert offer.media[0].formats == ["9", "0", "101"]
    their_answer = sdp("v=0", "o=y 1 1 IN IP4 h", "s=-", "c=IN IP4 198.51.100.9", "t=0 0",
                       "m=audio 7000 RTP/AVP 0 101", "a=rtpmap:101 telephone-event/8000", "a=sendonly")
    media = accept_answer(their_answer)
    assert (media.codec, media.remote_port, media.dtmf_payload_type) == ("PCMU", 7000, 101)
    assert media.direction == "recvonly"


@pytest.mark.parametrize("bad", [
    b"", b"x", b"v=0\r\nm=audio\r\n", b"o=x 1 1 IN IP4 h\r\n", b"v=0\r\no=bad\r\n",
    b"v=0\r\no=x 1 1 IN IP4 h\r\nm=audio 99999 RTP/AVP 0\r\n", b"v=0\r\no=x 1 1 IN IP4 h\r\nZ=1\r\n",
    b"\xff\xfe",
])
def test_bad_sdp(bad: bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    "v=0", "o=x 1 1 IN IP4 h", "c=IN IP4 1.2.3.4", "c=IN", "c=IN IP4", "m=audio 1 RTP/AVP 0 8 9 101",
    "m=audio x RTP/AVP", "m=video 0 RTP/AVP 96", "a=rtpmap:101 telephone-event/8000", "a=rtpmap:9 G722/8000",
    "a=rtpmap:x", "a=fmtp:101", "a=ptime:abc", "a=ptime:1e9", "a=ptime:inf",
    "a=ptime:nan", "a=sendonly", "a=inactive", "t=0 0", "b=AS:x",
    "m=audio 5 RTP/AVP ²", "a=rtpmap:0 PCMU/²",
]), max_size=12))
def test_fuzz_parse_and_negotiate_raise_only_sdp_error(lines: list[str]) -> None:
    try:
        offer = SessionDescription.parse(("\r\n".join(lines)).encode())
        negotiate(offer, ["PCMU", "G722"], "192.0.2.1", 40000)
    except SdpError:
        pass


def test_a_connection_address_that_is_a_name_is_refused() -> None:
    """A name in c= would be resolved on the media path, in the caller's own DNS: the offer is refused."""
    offer = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 media.attacker.example\r\n"
                                     b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
    with pytest.raises(SdpError, match="not an IP address"):
        negotiate(offer, ["PCMU"], "192.0.2.1", 40000)


@pytest.mark.parametrize("line", ["a=fmtp:101 0-16\x00", "a=fmtp:101 0-16\rx", "s=a\x00b"])
def test_a_nul_or_a_lone_cr_inside_a_line_is_refused(line: str) -> None:
    text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n"
    with pytest.raises(SdpError, match="control character"):
        SessionDescription.parse((text + line + "\r\n").encode())


@pytest.mark.parametrize("attribute", ["a=crypto", "A=CRYPTO"])
def test_a_refused_crypto_line_is_not_quoted(attribute: str) -> None:
    """The error can reach the call's end detail, its events and the model: never the key in it."""
    text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n"
    with pytest.raises(SdpError, match="control character") as refused:
        line = f"{attribute}:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\x00"
        SessionDescription.parse((text + line + "\r\n").encode())
    assert "PS1uQ" not in str(refused.value) and "a=crypto line" in str(refused.value)
