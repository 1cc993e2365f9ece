"""The SRTP context against hostile packets: nothing a packet holds raises, and nothing a packet without the
key does (forged, tampered, replayed, truncated, oversized) changes what later good packets decrypt to,
across sequence jumps and the rollover of the sequence number; libsrtp's per-SSRC state stays bounded."""

from __future__ import annotations

import struct

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.rtp.rtcp import ReceiverReport, SenderReport, build_rr, build_sr
from sipagent.rtp.srtp import MAX_INBOUND_STREAMS, PROFILES, SrtpContext

KEYS = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30, "AEAD_AES_128_GCM": 28}
SUITES = sorted(PROFILES)
SSRC = 0x5EED5EED


def rtp(seq: int, ssrc: int = SSRC, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes([seq & 0xFF]) * 160
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + body


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    """(sender, receiver) for one direction: the receiver unprotects what the sender protects."""
    ours, theirs = bytes([3]) * KEYS[suite], bytes([4]) * KEYS[suite]
    return SrtpContext(suite, ours, theirs), SrtpContext(suite, theirs, ours)


def flip(packet: bytes, position: int, bit: int) -> bytes:
    i = position % len(packet)
    return packet[:i] + bytes([packet[i] ^ (1 << bit)]) + packet[i + 1:]


# What an attacker without the key may do between two good packets, on packets it has seen or may see.
ATTACK = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(0, 7)),  # any bit: header, payload or tag
    st.tuples(st.just("replay"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("truncate"), st.integers(0, 400), st.integers(0, 40)),
    st.tuples(st.just("junk"), st.integers(0, 0xFFFF), st.integers(0, 200)),  # a header of ours, garbage after
)


@settings(max_examples=60, deadline=None)
@given(suite=st.sampled_from(SUITES), start=st.sampled_from([0, 1000, 65400, 65535]),
       steps=st.lists(st.integers(1, 40), min_size=20, max_size=120),
       attacks=st.lists(st.tuples(st.integers(0, 119), ATTACK), max_size=60))
def test_no_forged_packet_disturbs_the_good_ones(suite: str, start: int, steps: list[int],
                                                   attacks: list[tuple[int, tuple[str, int, int]]]) -> None:
    """Good packets go forward by up to 40 (loss), across the rollover from 65535 to 0 when ``start`` is near
    it; before any of them, attacks on any packet of the stream, past or future. Every good packet decrypts
    to what was sent, every attack is dropped and counted, and nothing is raised."""
    sender, receiver = pair(suite)
    seqs, seq = [], start
    for step in steps:
        seqs.append(seq)
        seq += step
    plain = [rtp(s) for s in seqs]
    wire = [sender.protect(p) for p in plain]
    before: dict[int, list[tuple[str, int, int]]] = {}
    for at, attack in attacks:
        before.setdefault(at, []).append(attack)
    for i, packet in enumerate(wire):
        for kind, which, extra in before.get(i, []):
            if kind == "flip":
                forged = flip(wire[which % len(wire)], which // len(wire) * 7 + which, extra)
            elif kind == "replay":
                if i == 0:
                    continue
                forged = wire[which % i]  # one already delivered
            elif kind == "truncate":
                target = wire[which % len(wire)]
                forged = target[:max(0, len(target) - 1 - extra)]
            else:
                forged = struct.pack("!BBHII", 0x80, 0, which, 0, SSRC) + bytes(range(extra % 256)) * 1
            dropped = receiver.dropped
            assert receiver.unprotect(forged) is None
            assert receiver.dropped == dropped + 1
        assert receiver.unprotect(packet) == plain[i], f"good packet {i} (seq {seqs[i] & 0xFFFF}) lost"
    assert receiver.unprotect(wire[-1]) is None and receiver.replayed >= 1


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2100), suite=st.sampled_from(SUITES))
def test_any_bytes_are_dropped_and_counted_never_raised(data: bytes, suite: str) -> None:
    sender, receiver = pair(suite)
    good = sender.protect(rtp(7))
    assert receiver.unprotect(data) is None and receiver.unprotect_rtcp(data) is None
    assert receiver.dropped == 2
    assert receiver.unprotect(good) == rtp(7)


@settings(max_examples=200, deadline=None)
@given(suite=st.sampled_from(SUITES), b0=st.integers(0, 255), b1=st.integers(0, 255),
       tail=st.binary(max_size=64))
def test_headers_that_lie_are_dropped(suite: str, b0: int, b1: int, tail: bytes) -> None:
    """CSRC counts and extension lengths beyond the packet, padding bits, RTCP-looking types, any version."""
    _, receiver = pair(suite)
    header = struct.pack("!BBHII", b0, b1, 1, 0, SSRC)
    for packet in (header + tail, header + b"\xbe\xde\xff\xff" + tail, header[:8] + tail):
        assert receiver.unprotect(packet) is None
        assert receiver.unprotect_rtcp(packet) is None


@pytest.mark.parametrize("suite", SUITES)
def test_sequence_jumps_and_the_rollover_are_followed(suite: str) -> None:
    """RFC 3711 3.3.1: the index is estimated from the highest seen, forward jumps below 2^15 and the wrap
    from 65535 to 0 keep the rollover counter right, and a late packet inside the window still decrypts."""
    sender, receiver = pair(suite)
    seqs = [65530, 65531, 65533, 65535, 0, 2, 1000, 31000, 31001, 63000, 65535, 0, 1]
    wire = [sender.protect(rtp(s)) for s in seqs]
    late = wire.pop(2)  # 65533 arrives after the wrap
    expected = [rtp(s) for i, s in enumerate(seqs) if i != 2]
    assert [receiver.unprotect(w) for w in wire[:5]] == expected[:5]
    assert receiver.unprotect(late) == rtp(65533)
    assert [receiver.unprotect(w) for w in wire[5:]] == expected[5:]
    assert receiver.dropped == 0


@pytest.mark.parametrize("suite", SUITES)
def test_srtcp_forged_replayed_or_under_the_old_key_is_dropped(suite: str) -> None:
    sender, receiver = pair(suite)
    reports = [build_sr(SenderReport(SSRC, n << 32, n * 160, n, n * 160), "peer") for n in range(1, 5)]
    wire = [sender.protect_rtcp(r) for r in reports]
    assert receiver.unprotect_rtcp(wire[0]) == reports[0]
    # E flag and index: a forged trailer claiming a far index, then each trailer bit flipped.
    trailer = len(wire[1]) - {"AES_CM_128_HMAC_SHA1_80": 14, "AES_CM_128_HMAC_SHA1_32": 8,
                              "AEAD_AES_128_GCM": 4}[suite]
    far = wire[1][:trailer] + b"\xff\xff\xff\xff" + wire[1][trailer + 4:]
    assert receiver.unprotect_rtcp(far) is None
    for bit in range(8):
        assert receiver.unprotect_rtcp(flip(wire[1], trailer, bit)) is None
    assert receiver.unprotect_rtcp(wire[1]) == reports[1]
    assert receiver.unprotect_rtcp(wire[0]) is None and receiver.replayed == 1
    # A re-key replaces the context: what was protected under the old key no longer passes.
    rekeyed = SrtpContext(suite, bytes([5]) * KEYS[suite], bytes([6]) * KEYS[suite])
    assert rekeyed.unprotect_rtcp(wire[2]) is None and rekeyed.unprotect(sender.protect(rtp(9))) is None
    assert rekeyed.auth_failures == 2
    assert receiver.unprotect_rtcp(wire[3]) == reports[3]


def libsrtp_streams(context: SrtpContext, ssrcs: list[int]) -> int:
    """How many of ``ssrcs`` libsrtp holds a receiving stream for (removing each one found)."""
    held = 0
    for ssrc in ssrcs:
        try:
            context._rx.remove_stream(ssrc)
        except pylibsrtp.Error:
            continue
        held += 1
    return held


@pytest.mark.parametrize("suite", SUITES)
def test_a_peer_cycling_through_ssrcs_keeps_a_bounded_number_of_streams(suite: str) -> None:
    """A key holder sending each packet under a new SSRC made libsrtp keep a stream for each, searched on
    every packet: memory and per-packet CPU grew for the rest of the call. Only the most recently heard
    streams are kept, and the stream in use keeps its replay window through the churn."""
    sender, receiver = pair(suite)
    main = [sender.protect(rtp(s)) for s in range(400)]
    spray = list(range(0x1000, 0x1000 + 300))
    for n, ssrc in enumerate(spray):
        assert receiver.unprotect(main[n]) == rtp(n)
        assert receiver.unprotect(sender.protect(rtp(1, ssrc=ssrc))) is not None
        rtcp = sender.protect_rtcp(build_rr(ReceiverReport(ssrc + 0x100000, []), "x"))
        assert receiver.unprotect_rtcp(rtcp) is not None
    assert receiver.unprotect(main[250]) is None and receiver.replayed == 1  # still the same stream
    assert receiver.unprotect(main[300]) == rtp(300)
    everyone = [SSRC, *spray, *(s + 0x100000 for s in spray)]
    assert libsrtp_streams(receiver, everyone) <= MAX_INBOUND_STREAMS
    assert receiver.inbound_streams <= MAX_INBOUND_STREAMS


def test_a_forged_packet_under_a_new_ssrc_makes_no_stream() -> None:
    sender, receiver = pair("AES_CM_128_HMAC_SHA1_80")
    for ssrc in range(50):
        assert receiver.unprotect(rtp(1, ssrc=ssrc) + bytes(10)) is None
    assert receiver.inbound_streams == 0 and libsrtp_streams(receiver, list(range(50))) == 0
    assert receiver.unprotect(sender.protect(rtp(1))) == rtp(1) and receiver.inbound_streams == 1


def test_no_key_in_repr_or_counters() -> None:
    key = bytes(range(30))
    context = SrtpContext("AES_CM_128_HMAC_SHA1_80", key, key)
    context.unprotect(b"\x80" * 40)
    text = repr(context) + str(vars(context) if hasattr(context, "__dict__") else "")
    assert key.hex() not in text and repr(key) not in text and "\\x01\\x02" not in text
