"""RTCP sender and receiver reports (RFC 3550 §6.4) with an SDES CNAME, built and parsed.

A pure core: the NTP wall-clock time and the RTP timestamp are passed in. Only SR, RR and SDES are
understood; other RTCP packets in a compound packet (BYE, APP, feedback) are skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sipagent.errors import RtpError

SR, RR, SDES, BYE = 200, 201, 202, 203
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01

_HDR = struct.Struct("!BBH")
_BLOCK = struct.Struct("!IB3sIIII")
_SENDER_INFO = struct.Struct("!IIIII")


def ntp_from_unix(unix_time: float) -> int:
    """64-bit NTP timestamp of a Unix time."""
    return int((unix_time + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of a report block."""
    return (ntp >> 16) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int  # 8-bit fixed point
    cumulative_lost: int  # signed 24-bit
    highest_seq: int  # extended
    jitter: int  # timestamp units
    lsr: int = 0
    dlsr: int = 0  # 1/65536 s

    def serialize(self) -> bytes:
        lost = max(-(1 << 23), min((1 << 23) - 1, self.cumulative_lost)) & 0xFFFFFF
        return _BLOCK.pack(self.ssrc, self.fraction_lost & 0xFF, lost.to_bytes(3, "big"),
                           self.highest_seq & 0xFFFFFFFF, self.jitter & 0xFFFFFFFF, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, frac, lost3, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, frac, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    blocks: list[ReportBlock] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    blocks: list[ReportBlock] = field(default_factory=list)


def _header(count: int, packet_type: int, body_len: int) -> bytes:
    if body_len % 4:
        raise RtpError("RTCP body must be a multiple of 4 bytes")
    return _HDR.pack(0x80 | count, packet_type, body_len // 4)


def build_sdes(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"  # CNAME item, then the end item
    chunk += bytes(-len(chunk) % 4)
    return _header(1, SDES, len(chunk)) + chunk


def build_sr(report: SenderReport, cname: str) -> bytes:
    """A compound packet: SR (with up to 31 report blocks) followed by SDES CNAME."""
    blocks = b"".join(b.serialize() for b in report.blocks[:31])
    body = struct.pack("!I", report.ssrc) + _SENDER_INFO.pack(
        report.ntp >> 32, report.ntp & 0xFFFFFFFF, report.rtp_timestamp & 0xFFFFFFFF,
        report.packet_count & 0xFFFFFFFF, report.octet_count & 0xFFFFFFFF) + blocks
    return _header(len(report.blocks[:31]), SR, len(body)) + body + build_sdes(report.ssrc, cname)


def build_rr(report: ReceiverReport, cname: str) -> bytes:
    """A compound packet: RR followed by SDES CNAME."""
    blocks = b"".join(b.serialize() for b in report.blocks[:31])
    body = struct.pack("!I", report.ssrc) + blocks
    return _header(len(report.blocks[:31]), RR, len(body)) + body + build_sdes(report.ssrc, cname)


def parse_compound(data: bytes) -> list[SenderReport | ReceiverReport]:
    """The SR and RR packets of a compound RTCP packet; raises RtpError when it is malformed."""
    out: list[SenderReport | ReceiverReport] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise RtpError("RTCP packet truncated")
        b0, ptype, words = _HDR.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtpError(f"unsupported RTCP version {b0 >> 6}")
        end = pos + 4 + 4 * words
        if end > len(data):
            raise RtpError("RTCP packet length exceeds the datagram")
        count = b0 & 0x1F
        if ptype == SR:
            if end - pos < 28 + 24 * count:
                raise RtpError("RTCP SR truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos + 4)
            ntp_hi, ntp_lo, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, pos + 8)
            blocks = [ReportBlock.parse(data, pos + 28 + 24 * i) for i in range(count)]
            out.append(SenderReport(ssrc, (ntp_hi << 32) | ntp_lo, rtp_ts, packets, octets, blocks))
        elif ptype == RR:
            if end - pos < 8 + 24 * count:
                raise RtpError("RTCP RR truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos + 4)
            blocks = [ReportBlock.parse(data, pos + 8 + 24 * i) for i in range(count)]
            out.append(ReceiverReport(ssrc, blocks))
        pos = end
    return out
