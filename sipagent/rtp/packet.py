"""RTP packets (RFC 3550 §5.1): parse and serialize, with padding, CSRC lists and header extensions.

A pure core: bytes in, dataclass out, and back. RTCP is told apart from RTP by ``is_rtcp`` (RFC 5761 §4),
so one socket can carry both when the peer multiplexes them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sipagent.errors import RtpError

HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size  # 12


def is_rtcp(data: bytes) -> bool:
    """True when a datagram is RTCP: version 2 and packet type 192..223 (RFC 5761 §4)."""
    return len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


@dataclass(slots=True)
class RtpPacket:
    payload_type: int = 0
    sequence: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    version: int = 2
    padding: int = 0  # number of padding bytes (0 = no padding; the P bit is derived from it)
    extension: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int = 0
    extension_data: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {len(data)} bytes")
        b0, b1, sequence, timestamp, ssrc = HEADER.unpack_from(data)
        version = b0 >> 6
        if version != 2:
            raise RtpError(f"unsupported RTP version {version}")
        cc = b0 & 0x0F
        pos = HEADER_SIZE + 4 * cc
        if len(data) < pos:
            raise RtpError("RTP CSRC list truncated")
        csrc = list(struct.unpack_from(f"!{cc}I", data, HEADER_SIZE)) if cc else []
        extension = bool(b0 & 0x10)
        profile, ext_data = 0, b""
        if extension:
            if len(data) < pos + 4:
                raise RtpError("RTP header extension truncated")
            profile, words = struct.unpack_from("!HH", data, pos)
            end = pos + 4 + 4 * words
            if len(data) < end:
                raise RtpError("RTP header extension truncated")
            ext_data = bytes(data[pos + 4 : end])
            pos = end
        end = len(data)
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or pos + padding > end:
                raise RtpError(f"bad RTP padding length {padding}")
            end -= padding
        return cls(
            payload_type=b1 & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(b1 & 0x80),
            version=version,
            padding=padding,
            extension=extension,
            csrc=csrc,
            extension_profile=profile,
            extension_data=ext_data,
        )

    def serialize(self) -> bytes:
        if len(self.csrc) > 15:
            raise RtpError("at most 15 CSRC identifiers fit in an RTP header")
        if not 0 <= self.padding <= 255:
            raise RtpError(f"bad RTP padding length {self.padding}")
        b0 = (self.version << 6) | len(self.csrc)
        b0 |= (0x20 if self.padding else 0) | (0x10 if self.extension else 0)
        b1 = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [HEADER.pack(b0, b1,
                             self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension:
            if len(self.extension_data) % 4:
                raise RtpError("RTP header extension data must be a multiple of 4 bytes")
            parts.append(struct.pack("!HH", self.extension_profile, len(self.extension_data) // 4))
            parts.append(self.extension_data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def build_header(marker: bool, payload_type: int, sequence: int, timestamp: int, ssrc: int) -> bytes:
    """The fixed 12-byte header alone: the per-tick send path prepends it to a payload without a dataclass."""
    return HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc)


def parse_media(data: bytes) -> tuple[int, int, int, int, bytes]:
    """``(payload_type, sequence, timestamp, ssrc, payload)``: what the receive path needs of a packet.
    The common header (version 2; no CSRC, extension or padding) is read with one unpack and no
    RtpPacket, since every call receives 50 packets a second; anything else goes through RtpPacket.parse
    and raises RtpError as it does."""
    if len(data) > HEADER_SIZE and data[0] == 0x80:
        _, b1, sequence, timestamp, ssrc = HEADER.unpack_from(data)
        return b1 & 0x7F, sequence, timestamp, ssrc, data[HEADER_SIZE:]
    packet = RtpPacket.parse(data)
    return packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc, packet.payload
