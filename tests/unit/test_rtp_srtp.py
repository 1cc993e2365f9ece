"""The SRTP crypto context: libsrtp through pylibsrtp, a known vector, round trips, and hostile packets."""

from __future__ import annotations

import struct

import pytest

from sipagent.rtp.rtcp import ReceiverReport, build_rr
from sipagent.rtp.srtp import PROFILES, SrtpContext

# libsrtp's own AES_CM_128_HMAC_SHA1_80 test vector (test/srtp_driver.c: srtp_validate): master key ||
# salt, the plaintext packet and the SRTP packet it must become.
VECTOR_KEY = bytes.fromhex("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6")
VECTOR_PLAIN = bytes.fromhex("800f1234decafbadcafebabe") + b"\xab" * 16
VECTOR_SRTP = bytes.fromhex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb")
KEYS = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30, "AEAD_AES_128_GCM": 28}
TAG = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4, "AEAD_AES_128_GCM": 16}


def rtp(seq: int, payload: bytes = b"\xd5" * 160, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    a, b = bytes([1]) * KEYS[suite], bytes([2]) * KEYS[suite]
    return SrtpContext(suite, a, b), SrtpContext(suite, b, a)


def test_known_vector() -> None:
    sender = SrtpContext("AES_CM_128_HMAC_SHA1_80", VECTOR_KEY, VECTOR_KEY)
    assert sender.protect(VECTOR_PLAIN) == VECTOR_SRTP
    receiver = SrtpContext("AES_CM_128_HMAC_SHA1_80", VECTOR_KEY, VECTOR_KEY)
    assert receiver.unprotect(VECTOR_SRTP) == VECTOR_PLAIN


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_round_trip_both_ways_and_srtcp(suite: str) -> None:
    ours, theirs = pair(suite)
    for seq in range(5):
        packet = rtp(seq)
        wire = ours.protect(packet)
        assert len(wire) == len(packet) + TAG[suite] and wire[12:172] != packet[12:]
        assert theirs.unprotect(wire) == packet
        back = theirs.protect(rtp(seq, b"\x11" * 160, ssrc=0x9999))
        assert ours.unprotect(back) == rtp(seq, b"\x11" * 160, ssrc=0x9999)
    report = build_rr(ReceiverReport(0x1234, []), "sipagent")
    wire = ours.protect_rtcp(report)
    assert wire[:8] == report[:8] and theirs.unprotect_rtcp(wire) == report
    assert ours.dropped == theirs.dropped == 0


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_hostile_packets_are_dropped_and_counted(suite: str) -> None:
    ours, theirs = pair(suite)
    wire = ours.protect(rtp(1))
    tampered = wire[:20] + bytes([wire[20] ^ 1]) + wire[21:]
    assert theirs.unprotect(tampered) is None and theirs.auth_failures == 1
    assert theirs.unprotect(rtp(2)) is None  # plain RTP where SRTP is due
    assert theirs.unprotect(wire) is not None
    assert theirs.unprotect(wire) is None and theirs.replayed == 1  # the same packet again
    for junk in (b"", b"\x80", b"\x80\x00\x00\x01", rtp(3)[:12], b"\x80" * 1600):
        assert theirs.unprotect(junk) is None and theirs.unprotect_rtcp(junk) is None
    wrong_key = SrtpContext(suite, bytes([7]) * KEYS[suite], bytes([7]) * KEYS[suite])
    assert theirs.unprotect(wrong_key.protect(rtp(9))) is None
    assert theirs.unprotect_rtcp(wrong_key.protect_rtcp(build_rr(ReceiverReport(1, []), "x"))) is None
    assert theirs.dropped >= 12 and "\\x01" not in repr(theirs)


def test_an_unknown_suite_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        SrtpContext("AES_256_CM_HMAC_SHA1_80", bytes(46), bytes(46))


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_a_new_key_of_ours_keeps_the_receive_session_of_the_peers_unchanged_one(suite: str) -> None:
    # The peer's sequence number wraps (its rollover counter becomes 1), then a re-INVITE changes only our
    # key: what we receive must still authenticate, replays of before the change stay refused.
    ours, theirs = pair(suite)
    wires = [theirs.protect(rtp(seq & 0xFFFF)) for seq in range(65533, 65539)]
    for wire in wires[:4]:
        assert ours.unprotect(wire) is not None
    renewed = ours.with_send_key(bytes([3]) * KEYS[suite])
    assert renewed.unprotect(wires[4]) == rtp(65537 & 0xFFFF)
    assert renewed.unprotect(wires[1]) is None and renewed.replayed == 1
    fresh = SrtpContext(suite, bytes([3]) * KEYS[suite], bytes([2]) * KEYS[suite])
    assert fresh.unprotect(wires[5]) is None  # what a context built anew did: rollover 0, refused
    # And what we send now is under our new key.
    peer_renewed = SrtpContext(suite, bytes([2]) * KEYS[suite], bytes([3]) * KEYS[suite])
    assert peer_renewed.unprotect(renewed.protect(rtp(7, ssrc=0x77))) == rtp(7, ssrc=0x77)
    assert theirs.unprotect(renewed.protect(rtp(8, ssrc=0x77))) is None
