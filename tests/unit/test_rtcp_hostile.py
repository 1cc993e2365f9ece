"""RTCP compound packets built to hurt the parser: lengths that lie either way, zero-length packets, counts
beyond the report blocks present, every packet type, any bytes. Only RtpError is raised, what is parsed is
what the bytes say, and a datagram's worth of packets costs little."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.errors import RtpError
from sipagent.rtp.rtcp import (
    BYE,
    RR,
    SDES,
    SR,
    ReceiverReport,
    ReportBlock,
    SenderReport,
    build_rr,
    build_sr,
    parse_compound,
)

BLOCK = 24


def packet(ptype: int, count: int, body: bytes, words: int | None = None, version: int = 2) -> bytes:
    """One RTCP packet; ``words`` is the length field (the true one unless given)."""
    length = (len(body) + 3) // 4 if words is None else words
    return struct.pack("!BBH", (version << 6) | (count & 0x1F), ptype, length) + body


def rr_body(count: int, ssrc: int = 7) -> bytes:
    return struct.pack("!I", ssrc) + b"".join(
        ReportBlock(0x100 + i, i, -i, i, i).serialize() for i in range(count))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        parse_compound(data)
    except RtpError:
        pass


PTYPES = st.sampled_from([SR, RR, SDES, BYE, 204, 205, 206, 207, 0, 72, 255])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(PTYPES, st.integers(0, 31), st.binary(max_size=120), st.integers(-3, 3),
                          st.sampled_from([2, 2, 2, 0, 1, 3])), max_size=8))
def test_compounds_with_lying_lengths_and_counts(parts: list[tuple[int, int, bytes, int, int]]) -> None:
    """Each packet's length field off by up to three words either way, any count, any version. What parses
    holds exactly ``count`` blocks per report, all of them inside the datagram."""
    data = b""
    for ptype, count, body, lie, version in parts:
        body = body + bytes(-len(body) % 4)
        data += packet(ptype, count, body, max(0, len(body) // 4 + lie), version)
    try:
        reports = parse_compound(data)
    except RtpError:
        return
    assert all(data[i] >> 6 == 2 for i in _offsets(data))
    declared = [data[i + 0] & 0x1F for i in _offsets(data) if data[i + 1] in (SR, RR)]
    assert [len(r.blocks) for r in reports] == declared
    for report in reports:
        assert 0 <= report.ssrc < 2**32
        for block in report.blocks:
            assert -(2**23) <= block.cumulative_lost < 2**23 and 0 <= block.fraction_lost < 256


def _offsets(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    return out


@pytest.mark.parametrize(("data", "reason"), [
    (packet(RR, 1, rr_body(0)), "RR truncated"),  # a block counted, none present
    (packet(RR, 31, rr_body(30)), "RR truncated"),
    (packet(RR, 2, rr_body(2), words=1 + BLOCK // 4), "RR truncated"),  # the length cuts the second block
    (packet(SR, 0, bytes(20)), "SR truncated"),  # sender info short by 4
    (packet(SR, 1, bytes(24 + 20)), "SR truncated"),
    (packet(SR, 0, bytes(0), words=0), "SR truncated"),
    (packet(RR, 0, b"", words=0), "RR truncated"),
    (packet(RR, 0, rr_body(0), words=200), "exceeds the datagram"),
    (packet(BYE, 1, b"", words=1), "exceeds the datagram"),
    (packet(RR, 0, rr_body(0)) + b"\x80\xc9", "truncated"),  # a trailing half header
    (packet(RR, 0, rr_body(0), version=1), "version 1"),
    (packet(RR, 0, rr_body(0)) + packet(SDES, 0, b"", version=3), "version 3"),
])
def test_malformed_compounds_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        parse_compound(data)


def test_zero_length_and_unknown_packets_are_skipped_in_bounded_time() -> None:
    # 512 empty BYE/SDES/APP/feedback headers fill a 2048-byte datagram: each costs one step.
    filler = b"".join(packet(t, 31, b"", words=0) for t in (BYE, SDES, 204, 206) * 128)
    data = packet(RR, 1, rr_body(1)) + filler + packet(RR, 0, rr_body(0, ssrc=9))
    started = time.perf_counter()
    for _ in range(100):
        reports = parse_compound(data)
    assert time.perf_counter() - started < 1.0
    assert [r.ssrc for r in reports] == [7, 9] and len(reports[0].blocks) == 1


def test_a_longer_length_than_needed_keeps_only_the_counted_blocks() -> None:
    # Profile-specific extensions after the blocks (RFC 3550 6.4.1): read past, not as blocks.
    data = packet(RR, 1, rr_body(1) + bytes(48)) + packet(SR, 0, bytes(24) + bytes(8))
    reports = parse_compound(data)
    assert isinstance(reports[0], ReceiverReport) and len(reports[0].blocks) == 1
    assert isinstance(reports[1], SenderReport) and reports[1].blocks == []


@settings(max_examples=200, deadline=None)
@given(ssrc=st.integers(0, 2**32 - 1), blocks=st.lists(st.tuples(
    st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(-(2**30), 2**30), st.integers(0, 2**40),
    st.integers(0, 2**40), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=40),
    cname=st.text(max_size=300))
def test_what_we_build_from_any_values_parses_back(ssrc: int, blocks: list[tuple[int, ...]], cname: str) -> None:
    report_blocks = [ReportBlock(*b) for b in blocks]
    for built in (build_rr(ReceiverReport(ssrc, report_blocks), cname),
                  build_sr(SenderReport(ssrc, 2**64 - 1, 2**33, 2**33, 2**33, report_blocks), cname)):
        (report,) = parse_compound(built)
        assert report.ssrc == ssrc and len(report.blocks) == min(31, len(blocks))
        for sent, got in zip(report_blocks, report.blocks, strict=False):
            assert got.cumulative_lost == max(-(2**23), min(2**23 - 1, sent.cumulative_lost))
            assert got.highest_seq == sent.highest_seq & 0xFFFFFFFF
