"""IPv6 addresses where the agent reads and writes them: IPv6 references in SIP URIs and Via, c= lines in SDP, the
address family a dual-stack socket reports and sends to, and which media addresses an RTP bind can reach.

Names introduced by the fixes are imported inside the tests, so that this module still loads on older code and
each test fails there on its own.
"""

from __future__ import annotations

import socket

import pytest

from sipagent.errors import SdpError, SipParseError
from sipagent.sdp.model import SessionDescription
from sipagent.sip.headers import Via
from sipagent.sip.transport import Peer
from sipagent.sip.uri import NameAddr, SipUri

GOOD_REFERENCES = ["[::1]", "[2001:DB8::1]", "[::ffff:192.0.2.1]", "[fe80::1]", "[1:2:3:4:5:6:7:8]",
                   "[0000:0000:0000:0000:0000:ffff:192.168.100.228]"]  # 45 characters inside: the longest form
BAD_REFERENCES = ["[::1", "[1::2::3]", "[...]", "[:::]", "[1.2.3.4]", "[fe80::1%eth0]", "[fe80::1%25eth0]",
                  "[12345::1]", "[1:2:3:4:5:6:7:8:9]", "[" + "1:" * 300 + "1]", "[]"]


@pytest.mark.parametrize("host", GOOD_REFERENCES)
def test_ipv6_references_parse_in_uris_and_via(host: str) -> None:
    uri = SipUri.parse(f"sip:agent@{host}:5062;transport=tcp")
    assert (uri.host, uri.port) == (host, 5062)
    assert uri.host_port == (host.strip("[]"), 5062)
    assert str(uri) == f"sip:agent@{host}:5062;transport=tcp"
    via = Via.parse(f"SIP/2.0/UDP {host}:5060;branch=z9hG4bKx;rport")
    assert (via.host, via.port) == (host, 5060)
    assert NameAddr.parse(f'"PBX" <sip:pbx@{host}>;tag=1').uri.host == host


@pytest.mark.parametrize("host", BAD_REFERENCES)
def test_malformed_ipv6_references_are_refused_where_they_are_parsed(host: str) -> None:
    # Before: the character class alone let "[1::2::3]", "[...]" or 600 characters through, which failed only
    # when we came to send to them (the agent's BYE to such a Contact or Record-Route never left).
    with pytest.raises(SipParseError):
        SipUri.parse(f"sip:pbx@{host}:5060")
    with pytest.raises(SipParseError):
        Via.parse(f"SIP/2.0/UDP {host}:5060;branch=z9hG4bKx")
    with pytest.raises(SipParseError):
        NameAddr.parse(f"<sip:{host};lr>")


def _sdp(connection: str) -> bytes:
    return (f"v=0\r\no=pbx 1 1 IN IP6 ::1\r\ns=-\r\nc={connection}\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


@pytest.mark.parametrize("connection, address", [
    ("IN IP6 ::1", "::1"), ("IN IP6 2001:db8::5", "2001:db8::5"), ("IN IP6 ::ffff:192.0.2.1", "::ffff:192.0.2.1"),
    ("IN IP4 192.0.2.1", "192.0.2.1"), ("IN IP6 FF15::101/3", "FF15::101"),
])
def test_sdp_connection_addresses_of_both_families(connection: str, address: str) -> None:
    assert SessionDescription.parse(_sdp(connection)).connection_address == address


@pytest.mark.parametrize("zone", ["fe80::1%eth0", "fe80::1%2", "fe80::1%" + "a" * 300])
def test_sdp_connection_address_with_a_zone_id_is_refused(zone: str) -> None:
    # Before: accepted, and ipaddress takes "fe80::1%eth0" as an address: RTP would go out of the interface
    # the caller named (or fail every packet), after a 200 OK.
    sdp = SessionDescription.parse(_sdp(f"IN IP6 {zone}"))
    with pytest.raises(SdpError, match="zone id"):
        _ = sdp.connection_address


@pytest.mark.parametrize("bind_host, address, reachable", [
    ("::", "::1", True), ("::", "127.0.0.1", True), ("::", "::ffff:127.0.0.1", True),
    ("::1", "::1", True), ("::1", "2001:db8::5", True), ("::1", "127.0.0.1", False),
    ("::1", "::ffff:127.0.0.1", False), ("2001:db8::2", "192.0.2.1", False),
    ("0.0.0.0", "127.0.0.1", True), ("0.0.0.0", "::1", False), ("127.0.0.1", "::ffff:127.0.0.1", True),
    ("127.0.0.1", "2001:db8::5", False), ("0.0.0.0", "0.0.0.0", True), ("::1", "0.0.0.0", True),
    ("0.0.0.0", "::", True), ("agent.example.com", "::1", True), ("::1", "pbx.example.com", True),
])
def test_which_media_addresses_an_rtp_bind_reaches(bind_host: str, address: str, reachable: bool) -> None:
    from sipagent.sip.ua import media_reachable

    assert media_reachable(bind_host, address) is reachable


def test_ipv4_peers_of_a_dual_stack_socket_are_plain_ipv4() -> None:
    # Before: "::ffff:127.0.0.1" went into Via received, so an IPv4 phone was told it sits behind an IPv6 NAT.
    from sipagent.sip.transport import unmapped

    assert unmapped("::ffff:127.0.0.1") == "127.0.0.1"
    assert unmapped("::ffff:10.1.2.3") == "10.1.2.3"
    assert unmapped("::1") == "::1"
    assert unmapped("::ffff:a01:203") == "::ffff:a01:203"  # not the kernel's spelling of a mapped address
    assert unmapped("2001:db8::ffff:1") == "2001:db8::ffff:1"
    assert unmapped("192.0.2.1") == "192.0.2.1"


@pytest.mark.parametrize("host, family, sent_to", [
    ("127.0.0.1", socket.AF_INET6, "::ffff:127.0.0.1"),  # uvloop refuses plain IPv4 on an IPv6 socket
    ("::1", socket.AF_INET6, "::1"),
    ("127.0.0.1", socket.AF_INET, "127.0.0.1"),
    ("::ffff:127.0.0.1", socket.AF_INET, "127.0.0.1"),
    ("::1", None, "::1"),
])
def test_udp_destination_in_the_family_of_the_socket(host: str, family: int | None, sent_to: str) -> None:
    from sipagent.sip.transport import _destination

    assert _destination(Peer("UDP", host, 5060), family) == (sent_to, 5060)


def test_ipv6_destination_on_an_ipv4_socket_says_why() -> None:
    from sipagent.sip.transport import _destination

    with pytest.raises(ValueError, match=r"IPv6 address and sip\.listen an IPv4 one"):
        _destination(Peer("UDP", "2001:db8::5", 5060), socket.AF_INET)
