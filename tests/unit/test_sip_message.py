"""SIP message parsing/serialization: byte fixtures (RFC 4475-style torture set) and fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipagent.errors import SipParseError
from sipagent.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    StreamFramer,
    bad_request_for,
    build_response,
    is_keepalive,
    parse_message,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sip"
VALID = sorted((FIXTURES / "valid").glob("*.sip"))
INVALID = sorted((FIXTURES / "invalid").glob("*.sip"))


def load(kind: str, name: str) -> bytes:
    return (FIXTURES / kind / f"{name}.sip").read_bytes()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_fixture_parses_and_round_trips(path: Path) -> None:
    msg = parse_message(path.read_bytes())
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    assert list(again.headers) == list(msg.headers)
    assert again.body == msg.body


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_fixture_is_rejected(path: Path) -> None:
    with pytest.raises(SipParseError) as err:
        parse_message(path.read_bytes())
    assert err.value.reason


def test_whitespace_and_folding() -> None:
    msg = parse_message(load("valid", "whitespace_folding"))
    assert isinstance(msg, SipRequest)
    assert msg.to_addr.tag == "1918181833n"
    assert msg.from_addr.display == 'Caller "Quoted" One'
    assert msg.from_addr.tag == "98asjd8"
    assert msg.cseq.seq == 9 and msg.cseq.method == "INVITE"
    assert [v.host for v in msg.vias] == ["192.0.2.2", "host1.example.com"]
    assert msg.vias[1].transport == "TCP"
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("Max-Forwards") == "0068"


def test_compact_forms_lists_and_empty_headers() -> None:
    msg = parse_message(load("valid", "compact_forms"))
    h = msg.headers
    assert h.get("call-id") == h.get("i") == "compact@192.0.2.10"
    assert h.get_all("Contact") == ['<sip:a@192.0.2.10>', '"B, c" <sip:b@192.0.2.11>;expires=30']
    assert h.get_all("Allow") == ["INVITE", "ACK", "BYE", "CANCEL"]
    assert h.get("Supported") == "" and h.get_all("Supported") == []
    assert msg.from_addr.display == "Smith, John"
    assert msg.to_addr.uri.user == "1001" and msg.to_addr.tag is None
    assert msg.vias[0].params["rport"] is None and "rport" in msg.vias[0].params
    names = [n for n, _ in h]
    assert names[:5] == ["Via", "From", "To", "Call-ID", "CSeq"]


def test_unusual_method_and_escaped_uri() -> None:
    msg = parse_message(load("valid", "unusual_method"))
    assert isinstance(msg, SipRequest)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    msg = parse_message(load("valid", "escaped_uri"))
    assert isinstance(msg, SipRequest)
    assert msg.uri == "sip:sips%3Auser%40example.com@example.net;lr;maddr=192.0.2.3"


def test_ipv6_references() -> None:
    msg = parse_message(load("valid", "ipv6"))
    via = msg.vias[0]
    assert via.host == "[2001:db8::9]" and via.port == 5061 and via.rport == 5061
    assert via.received == "[2001:db8::9]"
    assert msg.from_addr.uri.host == "[2001:db8::9]"


def test_content_length_trims_extra_bytes_and_truncation_is_an_error() -> None:
    msg = parse_message(load("valid", "body_extra_bytes"))
    assert msg.body == b"hello"
    with pytest.raises(SipParseError, match="shorter than Content-Length"):
        parse_message(load("invalid", "truncated_body"))


def test_missing_content_length_takes_rest_of_datagram() -> None:
    msg = parse_message(load("valid", "tel_uri_no_content_length"))
    assert isinstance(msg, SipRequest) and msg.uri == "tel:+15551234567"
    assert msg.body == b"v=0\r\n"


def test_responses() -> None:
    msg = parse_message(load("valid", "response_no_reason"))
    assert isinstance(msg, SipResponse) and msg.status == 100 and msg.reason == ""
    msg = parse_message(load("valid", "response_utf8_reason"))
    assert isinstance(msg, SipResponse) and msg.reason == "Très bien — 好"


def test_keepalives() -> None:
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(load("valid", "ipv6"))
    with pytest.raises(SipParseError):
        parse_message(b"\r\n\r\n")


def test_headers_multimap() -> None:
    h = Headers([("v", "a"), ("X-Thing", "1"), ("VIA", "b, c")])
    assert [n for n, _ in h] == ["Via", "X-Thing", "Via"]
    assert h.get_all("via") == ["a", "b", "c"]
    assert h.get("x-thing") == "1" and "X-THING" in h
    h.set("Via", "z")
    assert list(h) == [("Via", "z"), ("X-Thing", "1")]
    h.insert_first("Via", "top")
    h.add("x-thing", "2")
    assert h.get("Via") == "top" and h.get_all("X-Thing") == ["1", "2"]
    h.remove("x-thing")
    assert "X-Thing" not in h and len(h) == 2
    # Authorization-type values contain commas but are not lists.
    h.add("WWW-Authenticate", 'Digest realm="a", nonce="b"')
    assert h.get_all("www-authenticate") == ['Digest realm="a", nonce="b"']


def test_to_bytes_sets_content_length() -> None:
    req = SipRequest("MESSAGE", "sip:a@b", Headers([("Content-Length", "99")]), b"abc")
    assert req.to_bytes() == b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc"


def test_build_response_copies_headers_and_adds_tag() -> None:
    req = parse_message(load("valid", "unknown_transport_many_vias"))
    assert isinstance(req, SipRequest)
    resp = build_response(req, 200, to_tag="abc")
    assert resp.reason == "OK"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.to_addr.tag == "abc"
    assert resp.headers.get("Record-Route") == req.headers.get("Record-Route")
    assert resp.call_id == "many" and resp.cseq == req.cseq
    assert build_response(req, 486).headers.get("Record-Route") is None
    again = parse_message(resp.to_bytes())
    assert isinstance(again, SipResponse) and again.status == 200
    # An existing To tag is kept.
    tagged = build_response(parse_message_req("response_no_reason_as_req"), 200, to_tag="new")
    assert tagged.to_addr.tag == "t"


def parse_message_req(_: str) -> SipRequest:
    raw = load("valid", "response_no_reason").replace(b"SIP/2.0 100 ", b"BYE sip:x@y SIP/2.0")
    req = parse_message(raw.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))
    assert isinstance(req, SipRequest)
    return req


def test_bad_request_for_builds_400_with_reason() -> None:
    raw = load("invalid", "truncated_body")
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    out = bad_request_for(raw, err.value.reason)
    assert out is not None
    resp = parse_message(out)
    assert isinstance(resp, SipResponse)
    assert resp.status == 400 and resp.reason == "body shorter than Content-Length"
    assert resp.call_id == "torture-cl@192.0.2.10" and resp.to_addr.tag
    assert resp.vias[0].branch == "z9hG4bKtort1"


def test_bad_request_for_version_is_505_and_unroutable_is_dropped() -> None:
    raw = load("invalid", "bad_version")
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    out = bad_request_for(raw, err.value.reason)
    assert out is not None and out.startswith(b"SIP/2.0 505 ")
    assert bad_request_for(load("invalid", "missing_call_id"), "missing Call-ID header") is None
    assert bad_request_for(load("invalid", "status_out_of_range"), "bad status code") is None
    ack = load("invalid", "truncated_body").replace(b"INVITE", b"ACK")
    assert bad_request_for(ack, "whatever") is None
    # Reason phrases never carry CR/LF into the response.
    out = bad_request_for(load("invalid", "truncated_body"), "evil\r\nX-Injected: 1")
    assert out is not None and b"\r\nX-Injected" not in out


LATIN1_OPTIONS = (b"OPTIONS sip:2002@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKl1\r\n"
                  b"From: \"M\xfcller\" <sip:1000@192.0.2.10>;tag=f1\r\nTo: <sip:2002@192.0.2.1>\r\n"
                  b"Call-ID: latin1@192.0.2.10\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_a_latin1_display_name_is_read_as_latin1_and_answered() -> None:
    """Older PBXs write a caller's name in ISO-8859-1: the request is what they meant, not garbage to drop."""
    request = parse_message(LATIN1_OPTIONS)
    assert isinstance(request, SipRequest) and request.from_addr.display == "Müller"
    answer = build_response(request, 200).to_bytes()
    assert b"Call-ID: latin1@192.0.2.10" in answer and b";tag=f1" in answer


@pytest.mark.parametrize("where", [b"Call-ID: latin1", b"tag=f1", b"branch=z9hG4bKl1"])
def test_what_a_peer_matches_by_must_be_ascii(where: bytes) -> None:
    """A head read as ISO-8859-1 is written back as UTF-8: an id or tag with such a byte would not come back as
    it went, so the peer could not match our answer. Refused (a 400 where the rest can be read)."""
    raw = LATIN1_OPTIONS.replace(where, where + b"\xe9")
    with pytest.raises(SipParseError, match="not ASCII"):
        parse_message(raw)


def test_a_cseq_past_2_31_gets_its_400() -> None:
    """RFC 3261 8.1.1.5: below 2**31. The 400 copies the number as it came, so its sender can match it."""
    raw = LATIN1_OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 2147483648 OPTIONS")
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    out = bad_request_for(raw, err.value.reason)
    assert out is not None and out.startswith(b"SIP/2.0 400 ") and b"CSeq: 2147483648 OPTIONS" in out


def test_stream_framer_splits_and_reassembles() -> None:
    a = load("valid", "body_extra_bytes").replace(b"TRAILING-GARBAGE", b"")
    b = load("valid", "ipv6")
    stream = b"\r\n\r\n" + a + b"\r\n" + b
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out += framer.feed(stream[i : i + 7])
    assert out == [a, b]
    assert framer.buffered == 0
    assert parse_message(out[0]).body == b"hello"


def test_stream_framer_rejects_bad_length_and_oversize() -> None:
    for framer, data in [
        (StreamFramer(), b"OPTIONS sip:a SIP/2.0\r\nl: x\r\n\r\n"),
        (StreamFramer(max_message=100), b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 500\r\n\r\n"),
        (StreamFramer(max_message=100), b"X" * 200),
    ]:
        assert framer.feed(data) == [] and framer.error is not None
        assert framer.feed(b"OPTIONS sip:a SIP/2.0\r\n\r\n") == []  # nothing is framed after an error


def _expect_message_or_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as err:
        assert isinstance(err.reason, str) and err.reason
        reply = bad_request_for(data, err.reason)
        if reply is not None:
            assert isinstance(parse_message(reply), SipResponse)
        return
    assert isinstance(msg, SipRequest | SipResponse)
    # Whatever parsed must serialize and parse back to the same fields.
    again = parse_message(msg.to_bytes())
    assert list(again.headers) == list(msg.headers)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    _expect_message_or_parse_error(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID + INVALID),
    st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=4), st.integers(0, 3)), max_size=6),
)
def test_fuzz_mutated_fixtures(path: Path, edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(path.read_bytes())
    for pos, insert, delete in edits:
        pos %= len(data) + 1
        data[pos : pos + delete] = insert
    _expect_message_or_parse_error(bytes(data))


_LINE_PIECES = st.sampled_from([
    "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "v:SIP/2.0/TCP [::1]:5;rport", "From: <sip:a@b>;tag=1", "f: x",
    "To: sip:c@d", "t:\"q,\" <sip:e@f>", "Call-ID: x", "i:", "CSeq: 1 INVITE", "CSeq: 2 OPTIONS",
    "Content-Length: 3", "l: 0", "l: 99999999999", " folded", "\t", "Supported:", ":", "X: \"unterminated",
    "Contact: <sip:[::1", "Max-Forwards: 70", "Expires: x",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        ["INVITE sip:a@b SIP/2.0", "OPTIONS sip:[::1]:5060 SIP/2.0", "SIP/2.0 200 OK", "SIP/2.0 99 X"]
    ),
    st.lists(_LINE_PIECES, max_size=12),
    st.binary(max_size=8),
    st.sampled_from(["\r\n", "\n"]),
)
def test_fuzz_structured(start: str, lines: list[str], body: bytes, eol: str) -> None:
    data = eol.join([start, *lines]).encode() + (eol * 2).encode() + body
    _expect_message_or_parse_error(data)
    for chunk in StreamFramer().feed(data):
        _expect_message_or_parse_error(chunk)


def test_a_garbled_expires_fails_a_request_not_a_response() -> None:
    head = "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>{to}\r\nCall-ID: e\r\n"
    request = ("REGISTER sip:b SIP/2.0\r\n" + head.format(to="") + "CSeq: 1 REGISTER\r\nExpires: -5\r\n"
               "Content-Length: 0\r\n\r\n")
    with pytest.raises(SipParseError, match="bad Expires"):
        parse_message(request.encode())
    response = ("SIP/2.0 200 OK\r\n" + head.format(to=";tag=2") + "CSeq: 1 REGISTER\r\nExpires: -5\r\n"
                "Content-Length: 0\r\n\r\n")
    parsed = parse_message(response.encode())
    assert isinstance(parsed, SipResponse) and parsed.headers.get("Expires") == "-5"
