"""SIP URIs, name-addr, Via, CSeq and the identifier generators."""

from __future__ import annotations

import pytest

from sipagent.errors import SipParseError
from sipagent.sip.headers import CSeq, Via, new_branch, new_call_id, new_tag
from sipagent.sip.uri import NameAddr, SipUri, parse_name_addr_list


def test_sip_uri_full() -> None:
    uri = SipUri.parse("sips:alice:secret@Example.COM:5061;transport=tcp;lr?subject=hi&priority=urgent")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips", "alice", "secret", "Example.COM", 5061)
    assert uri.params == {"transport": "tcp", "lr": None}
    assert uri.headers == {"subject": "hi", "priority": "urgent"}
    assert str(uri) == "sips:alice:secret@Example.COM:5061;transport=tcp;lr?subject=hi&priority=urgent"


def test_sip_uri_ipv6_and_host_only() -> None:
    uri = SipUri.parse("sip:[2001:db8::1]:5070;maddr=x")
    assert uri.host == "[2001:db8::1]" and uri.port == 5070 and uri.user is None
    assert uri.host_port == ("2001:db8::1", 5070)
    assert str(SipUri.parse("sip:[::1]")) == "sip:[::1]"
    assert SipUri.parse("SIP:pbx.example.com").scheme == "sip"


def test_other_schemes_are_opaque() -> None:
    uri = SipUri.parse("tel:+1-555-0100;phone-context=example.com")
    assert uri.scheme == "tel" and uri.host == ""
    assert str(uri) == "tel:+1-555-0100;phone-context=example.com"


@pytest.mark.parametrize("bad", [
    "nocolon", "sip:", "sip:a@", "sip:a@b:port", "sip:a@b:70000", "sip:a@[::1", "sip:a b@c", "1sip:x",
    "sip:a@b;=x", "sip:a@[zz::1]",
])
def test_bad_uris(bad: str) -> None:
    with pytest.raises(SipParseError):
        SipUri.parse(bad)


def test_name_addr_forms() -> None:
    a = NameAddr.parse('"Bob \\"B\\" Smith" <sip:bob@example.com;transport=udp>;tag=abc;expires=60')
    assert a.display == 'Bob "B" Smith' and a.tag == "abc" and a.params["expires"] == "60"
    assert a.uri.params == {"transport": "udp"}
    assert NameAddr.parse(str(a)) == a
    b = NameAddr.parse("sip:carol@example.com;tag=xyz")  # addr-spec: params belong to the header
    assert b.uri.params == {} and b.tag == "xyz"
    c = NameAddr.parse("Carol Jones <sip:carol@example.com>")
    assert c.display == "Carol Jones"
    assert str(NameAddr.parse("<sip:x@y>")) == "<sip:x@y>"


@pytest.mark.parametrize("bad", ['"open <sip:a@b>', "<sip:a@b", "<sip:a@b> junk", "Caller, X <sip:a@b>"])
def test_bad_name_addrs(bad: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(bad)


def test_name_addr_list() -> None:
    route = parse_name_addr_list('<sip:p1.example.com;lr>, "x,y" <sip:p2.example.com;lr>')
    assert [r.uri.host for r in route] == ["p1.example.com", "p2.example.com"]


def test_via() -> None:
    via = Via.parse("SIP/2.0/udp 192.0.2.1:5062;branch=z9hG4bKabc;rport=40000;received=198.51.100.7")
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "192.0.2.1", 5062, "z9hG4bKabc")
    assert via.rport == 40000 and via.received == "198.51.100.7"
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKabc;rport=40000;received=198.51.100.7"
    spaced = Via.parse("SIP / 2.0 / TCP [::1] ; branch=z9hG4bKx ; rport")
    assert spaced.host == "[::1]" and spaced.port is None and spaced.rport is None
    assert "rport" in spaced.params


def test_via_response_address() -> None:
    asked = Via.parse("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport")
    assert asked.response_address("203.0.113.9", 31000) == ("203.0.113.9", 31000)
    plain = Via.parse("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;received=203.0.113.9")
    assert plain.response_address("203.0.113.9", 31000) == ("203.0.113.9", 5060)
    tls = Via.parse("SIP/2.0/TLS [2001:db8::5];branch=z9hG4bK1")
    assert tls.response_address("x", 1) == ("2001:db8::5", 5061)


@pytest.mark.parametrize(
    "bad", ["SIP/2.0/UDP", "HTTP/1.1/UDP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h;rport=x"]
)
def test_bad_via(bad: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(bad)


def test_cseq() -> None:
    assert CSeq.parse(" 0042   REGISTER ") == CSeq(42, "REGISTER")
    assert str(CSeq(7, "BYE")) == "7 BYE"
    for bad in ("1", "x INVITE", "2147483648 INVITE", "1 INV ITE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


def test_generators_are_unique_and_well_formed() -> None:
    branches = {new_branch() for _ in range(50)}
    assert len(branches) == 50 and all(b.startswith("z9hG4bK") for b in branches)
    assert new_tag() != new_tag()
    assert new_call_id("192.0.2.1").endswith("@192.0.2.1")
