"""Header injection: no value from outside (tool arguments, URIs, the peer's own headers, SDP) can add a
line to what we send; and responses record where a request really came from."""

from __future__ import annotations

import pytest

from sipagent.errors import SipBuildError, SipParseError
from sipagent.sdp import SessionDescription
from sipagent.sip.message import SipRequest, bad_request_for, build_response, parse_message, stamp_source
from sipagent.sip.uri import parse_target_uri

INVITE = (
    "INVITE sip:2001@192.0.2.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {via};branch=z9hG4bKinj1{rport}\r\n"
    "Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKinner\r\n"
    "From: <sip:caller@192.0.2.9>;tag=f1\r\nTo: <sip:2001@192.0.2.1>\r\n"
    "Call-ID: inj@192.0.2.9\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def invite(via: str = "192.0.2.9:5060", rport: str = ";rport") -> SipRequest:
    message = parse_message(INVITE.format(via=via, rport=rport).encode())
    assert isinstance(message, SipRequest)
    return message


@pytest.mark.parametrize("value", ["<sip:600@pbx>\r\nX-Injected: 1", "<sip:600@pbx>\nX: 1", "a\rb", "a\x00b"])
def test_a_header_value_with_cr_lf_or_nul_is_never_serialised(value: str) -> None:
    request = invite()
    request.headers.add("Refer-To", value)
    with pytest.raises(SipBuildError, match="Refer-To"):
        request.to_bytes()


def test_a_request_uri_with_crlf_is_never_serialised() -> None:
    request = invite()
    request.uri = "sip:600@pbx SIP/2.0\r\nX-Injected: 1\r\nBYE sip:x"
    with pytest.raises(SipBuildError):
        request.to_bytes()


def test_an_sdp_line_with_crlf_is_never_serialised() -> None:
    sdp = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
                                   b"m=audio 4000 RTP/AVP 0\r\n")
    sdp.lines.append(("s", "x\r\na=sendonly"))
    with pytest.raises(SipBuildError):
        sdp.to_bytes()


@pytest.mark.parametrize("header", ["From: <sip:a@b>;tag=x\rInjected: 1", "From: <sip:a@b>;tag=\x00x"])
def test_a_received_header_with_a_bare_cr_or_nul_is_refused_and_not_echoed(header: str) -> None:
    raw = INVITE.format(via="192.0.2.9:5060", rport="").replace("From: <sip:caller@192.0.2.9>;tag=f1", header)
    with pytest.raises(SipParseError):
        parse_message(raw.encode())
    assert bad_request_for(raw.encode(), "bad") is None  # not even a 400 that would copy it back


@pytest.mark.parametrize("text", [
    "sip:600@pbx.example.com>\r\nX: 1", "sip:600@pbx.example.com X", "sip:600@pbx<sip:evil>", 'sip:"600"@pbx',
    "tel:+15551230000", "600",
])
def test_transfer_uris_must_be_plain_sip_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_target_uri(text)


def test_transfer_uri_accepted() -> None:
    assert str(parse_target_uri("sips:600@pbx.example.com:5061;transport=tls")) == (
        "sips:600@pbx.example.com:5061;transport=tls")


def test_responses_record_the_real_source_in_the_top_via() -> None:
    forged = invite("victim.example.com:5099")
    stamp_source(forged, "198.51.100.7", 40000)
    response = parse_message(build_response(forged, 100).to_bytes())
    top, inner = response.vias
    assert top.host == "victim.example.com" and top.received == "198.51.100.7" and top.rport == 40000
    assert inner.host == "192.0.2.77" and inner.received is None  # only the top Via is ours to stamp
    honest = invite(rport="")
    stamp_source(honest, "192.0.2.9", 5060)
    (top, _) = honest.vias
    assert top.received is None and "rport" not in top.params
