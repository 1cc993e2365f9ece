from __future__ import annotations

import pytest

from sipagent.errors import RtpError
from sipagent.rtp.packet import RtpPacket, build_header, is_rtcp

# V=2, PT=0, seq=0x1234, ts=0x00000a0b, ssrc=0xdeadbeef, payload 4 bytes.
PLAIN = bytes.fromhex("80001234 00000a0b deadbeef 01020304".replace(" ", ""))
# V=2 P=1 X=1 CC=2, M=1 PT=8; 2 CSRCs; extension profile 0xbede with one word; payload "ab"; 3 bytes padding.
FULL = bytes.fromhex(
    "b288ffff fffffffe 00000001"  # header
    "00000011 00000022"  # CSRC list
    "bede0001 10ff0000"  # extension: profile, length 1 word, data
    "6162"  # payload
    "000003".replace(" ", "")
)


def test_parse_plain() -> None:
    p = RtpPacket.parse(PLAIN)
    assert (p.version, p.padding, p.extension, p.marker) == (2, 0, False, False)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc) == (0, 0x1234, 0x0A0B, 0xDEADBEEF)
    assert p.csrc == [] and p.payload == b"\x01\x02\x03\x04"
    assert p.serialize() == PLAIN


def test_parse_padding_extension_csrc() -> None:
    p = RtpPacket.parse(FULL)
    assert p.marker and p.payload_type == 8
    assert p.sequence == 0xFFFF and p.timestamp == 0xFFFFFFFE and p.ssrc == 1
    assert p.csrc == [0x11, 0x22]
    assert p.extension and p.extension_profile == 0xBEDE and p.extension_data == bytes.fromhex("10ff0000")
    assert p.padding == 3 and p.payload == b"ab"
    assert p.serialize() == FULL


def test_build_header_matches_dataclass() -> None:
    hdr = build_header(True, 9, 65535, 2**32 - 1, 42)
    packet = RtpPacket(payload_type=9, sequence=65535, timestamp=2**32 - 1, ssrc=42, marker=True)
    assert hdr == packet.serialize()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        PLAIN[:11],
        b"\x40" + PLAIN[1:],  # version 1
        b"\x82" + PLAIN[1:12] + b"\x00\x00\x00\x01",  # CC=2 with only one CSRC present
        bytes([0x90]) + PLAIN[1:12] + b"\xbe\xde\x00\x05",  # extension longer than the packet
        bytes([0xA0]) + PLAIN[1:12] + b"\x01\x00",  # padding byte 0
        bytes([0xA0]) + PLAIN[1:12] + b"\x01\x09",  # padding longer than the payload
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(RtpError):
        RtpPacket.parse(data)


def test_is_rtcp() -> None:
    assert is_rtcp(bytes([0x80, 200, 0, 6]))  # SR
    assert is_rtcp(bytes([0x81, 201, 0, 7]))  # RR
    assert not is_rtcp(PLAIN)
    assert not is_rtcp(bytes([0x80, 0x80 | 8]))  # PCMA with the marker bit
    assert not is_rtcp(b"\x80")


def test_roundtrip_variety() -> None:
    for padding in (0, 1, 4):
        for csrc in ([], [1, 2, 3]):
            for ext in (b"", b"\x00\x01\x02\x03" * 2):
                p = RtpPacket(payload_type=101, sequence=7, timestamp=8, ssrc=9, payload=b"xyz", marker=True,
                              padding=padding, csrc=list(csrc), extension=bool(ext),
                              extension_profile=0x1000 if ext else 0, extension_data=ext)
                assert RtpPacket.parse(p.serialize()) == p
