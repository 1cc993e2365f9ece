from __future__ import annotations

import pytest

from sipagent.errors import RtpError
from sipagent.rtp.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    build_rr,
    build_sr,
    ntp_from_unix,
    ntp_middle,
    parse_compound,
)
from sipagent.rtp.stats import ReceiveStats


def test_no_jitter_when_arrivals_match_timestamps() -> None:
    st = ReceiveStats()
    for i in range(50):
        st.update((65530 + i) & 0xFFFF, (2**32 - 800 + 160 * i) & 0xFFFFFFFF, 10.0 + 0.02 * i)
    assert st.jitter == pytest.approx(0.0, abs=1e-6)
    assert st.packets == 50 and st.lost == 0 and st.expected == 50


def test_jitter_converges_to_constant_deviation() -> None:
    # Arrivals alternate 0 and +5 ms off schedule: |D| = 40 timestamp units each time, so J -> 40.
    st = ReceiveStats()
    for i in range(400):
        st.update(i, 160 * i, 0.02 * i + (0.005 if i % 2 else 0.0))
    assert st.jitter == pytest.approx(40.0, rel=1e-3)
    assert st.jitter_ms == pytest.approx(5.0, rel=1e-3)


def test_loss_and_fraction() -> None:
    st = ReceiveStats()
    for i in range(100):
        if i % 4 != 3:
            st.update(i, 160 * i, 0.02 * i)
    assert st.expected == 100 - 1 and st.lost == 24  # highest received is 98
    assert st.interval_fraction_lost() == (24 << 8) // 99
    for i in range(100, 110):
        st.update(i, 160 * i, 0.02 * i)
    assert st.interval_fraction_lost() == (1 << 8) // 11  # only seq 99 missing in this interval


def test_the_call_totals_span_every_source() -> None:
    # RTCP reports per source: a new SSRC (reset) or a sequence jump starts the counts over; the call's
    # totals keep what each run received and lost.
    st = ReceiveStats()
    for i in range(50):
        if i not in (10, 11):
            st.update(i, 160 * i, 0.02 * i)
    st.reset()  # a new SSRC, e.g. after a re-INVITE to another media server
    for i in range(30):
        if i != 5:
            st.update(9000 + i, 160 * i, 2.0 + 0.02 * i)
    assert (st.packets, st.lost) == (29, 1)
    for i in range(20):  # the same source jumps far ahead (a PBX restarting its sequence)
        if i != 3:
            st.update(40000 + i, 4800 + 160 * i, 3.0 + 0.02 * i)
    assert (st.packets, st.lost) == (19, 1)
    assert st.total_packets == 48 + 29 + 19 and st.total_lost == 2 + 1 + 1


def test_sr_rr_roundtrip() -> None:
    ntp = ntp_from_unix(1_700_000_000.25)
    assert ntp >> 32 == 1_700_000_000 + 2_208_988_800 and (ntp & 0xFFFFFFFF) == 1 << 30
    block = ReportBlock(0xCAFE, 64, -3, 70000, 123, ntp_middle(ntp), 65536)
    sr = SenderReport(0x1111, ntp, 4242, 10, 1600, [block])
    rr = ReceiverReport(0x2222, [block, ReportBlock(1, 0, 5, 2, 3)])
    parsed = parse_compound(build_sr(sr, "agent@host") + build_rr(rr, "x"))
    assert parsed == [sr, rr]


def test_sdes_and_bye_are_skipped_and_garbage_rejected() -> None:
    data = build_rr(ReceiverReport(7), "cname")
    bye = bytes([0x81, 203, 0, 1]) + (7).to_bytes(4, "big")
    assert parse_compound(data + bye) == [ReceiverReport(7)]
    with pytest.raises(RtpError):
        parse_compound(data[:-2])
    with pytest.raises(RtpError):
        parse_compound(bytes([0x80, 200, 0, 1, 0, 0, 0, 1]))  # an SR too short for its sender info


def test_jitter_is_the_same_across_a_timestamp_wrap() -> None:
    # Arrivals 0 / +3 ms off schedule, once far from the wrap and once straddling it: the wrap's 2**32
    # jump in transit time must be folded away, leaving the same J.
    def jitter_from(first_ts: int) -> float:
        st = ReceiveStats()
        for i in range(300):
            st.update(i, (first_ts + 160 * i) & 0xFFFFFFFF, 50.0 + 0.02 * i + (0.003 if i % 3 == 0 else 0.0))
        return st.jitter

    assert jitter_from(2**32 - 150 * 160) == pytest.approx(jitter_from(1000), abs=1e-6)
    assert jitter_from(1000) == pytest.approx(16.0, rel=0.05)
