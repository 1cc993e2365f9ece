"""SDP (RFC 4566/8866) as ordered lines, with typed accessors for what offer/answer needs.

Lines are kept verbatim and in order so that anything we do not understand survives a round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sipagent.errors import SdpError, SipBuildError

_LINE_RE = re.compile(r"([a-z])=(.*)")
_RTPMAP_RE = re.compile(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?\s*")
_NUM = re.compile(r"[0-9]{1,20}")
_UNSAFE = re.compile(r"[\r\n\x00]")  # would split or end an SDP line: never written
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def _attributes(lines: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for kind, value in lines:
        if kind == "a":
            name, colon, val = value.partition(":")
            out.append((name.strip(), val.strip() if colon else None))
    return out


def _connection_address(lines: list[tuple[str, str]]) -> str | None:
    for kind, value in lines:
        if kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN":
                raise SdpError(f"bad c= line: {value[:60]!r}")
            if "%" in parts[2]:
                # A zone id (fe80::1%eth0) names an interface of the sender's host: no SDP address holds one
                # (RFC 8866 IP6-address), and Python's ipaddress would take it and send out of *our* interface.
                raise SdpError(f"zone id in c= line: {value[:60]!r}")
            return parts[2].split("/")[0]  # drop multicast TTL/count suffixes
    return None


@dataclass(frozen=True)
class RtpMap:
    encoding: str
    clock_rate: int
    channels: int = 1


@dataclass(frozen=True)
class Origin:
    username: str
    session_id: str
    version: int
    address: str
    addrtype: str = "IP4"

    def __str__(self) -> str:
        return f"{self.username} {self.session_id} {self.version} IN {self.addrtype} {self.address}"


class _Lines:
    """What a session and a media description both answer from their own lines (RFC 4566 lets a, c and
    the direction attributes stand at either level)."""

    lines: list[tuple[str, str]]

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        return _attributes(self.lines)

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name:value``; "" for a flag attribute; None when absent."""
        for n, v in self.attributes:
            if n == name:
                return "" if v is None else v
        return None

    @property
    def connection_address(self) -> str | None:
        return _connection_address(self.lines)

    @property
    def direction(self) -> str | None:
        found = [n for n, _ in self.attributes if n in DIRECTIONS]
        return found[-1] if found else None


@dataclass
class MediaDescription(_Lines):
    media: str
    port: int
    proto: str
    formats: list[str]
    lines: list[tuple[str, str]] = field(default_factory=list)
    port_count: int | None = None

    def rtpmaps(self) -> dict[int, RtpMap]:
        out: dict[int, RtpMap] = {}
        for name, value in self.attributes:
            if name == "rtpmap" and value:
                m = _RTPMAP_RE.fullmatch(value)
                if m:
                    out[int(m.group(1))] = RtpMap(m.group(2), int(m.group(3)), int(m.group(4) or 1))
        return out

    def fmtps(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for name, value in self.attributes:
            if name == "fmtp" and value:
                pt, _, params = value.partition(" ")
                if _NUM.fullmatch(pt):
                    out[int(pt)] = params.strip()
        return out

    def m_line(self) -> str:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        return " ".join([self.media, port, self.proto, *self.formats])


@dataclass
class SessionDescription(_Lines):
    lines: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> SessionDescription:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("SDP is not valid UTF-8") from None
        sdp = cls()
        current: MediaDescription | None = None
        for raw in re.split(r"\r?\n", text):
            line = raw.strip()
            if not line:
                continue
            if _UNSAFE.search(line) is not None:
                # A lone CR or a NUL (RFC 4566 text never holds one): refused here, as an answer that echoed the
                # line could never be sent, and the offer would be left unanswered.
                raise SdpError(f"control character in SDP line: {_shown(line)}")
            m = _LINE_RE.fullmatch(line)
            if not m:
                raise SdpError(f"bad SDP line: {_shown(line)}")
            kind, value = m.group(1), m.group(2).strip()
            if kind == "m":
                current = _parse_m_line(value)
                sdp.media.append(current)
            elif current is not None:
                current.lines.append((kind, value))
            else:
                sdp.lines.append((kind, value))
        if not sdp.lines or sdp.lines[0] != ("v", "0"):
            raise SdpError("SDP does not start with v=0")
        sdp.origin  # noqa: B018 - validates the o= line early
        return sdp

    def to_bytes(self) -> bytes:
        out = [f"{k}={v}" for k, v in self.lines]
        for media in self.media:
            out.append("m=" + media.m_line())
            out.extend(f"{k}={v}" for k, v in media.lines)
        if _UNSAFE.search("".join(out)) is not None:
            raise SipBuildError("refusing to send an SDP body with CR, LF or NUL inside a line")
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def value(self, kind: str) -> str | None:
        for k, v in self.lines:
            if k == kind:
                return v
        return None

    @property
    def origin(self) -> Origin:
        value = self.value("o")
        parts = value.split() if value else []
        if len(parts) != 6 or not _NUM.fullmatch(parts[2]):
            raise SdpError("missing or bad o= line")
        return Origin(parts[0], parts[1], int(parts[2]), parts[5], parts[4])


def _shown(line: str) -> str:
    """A refused line as an error may quote it: the start of it, but never an SDES key (the error can reach a
    call's end detail, its events and the model)."""
    if line[:8].lower() == "a=crypto":
        return "an a=crypto line (not shown: it holds a key)"
    return repr(line[:60])


def _parse_m_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad m= line: {value[:60]!r}")
    port_text, _, count = parts[1].partition("/")
    if not _NUM.fullmatch(port_text) or int(port_text) > 65535 or (count and not _NUM.fullmatch(count)):
        raise SdpError(f"bad port in m= line: {value[:60]!r}")
    return MediaDescription(
        parts[0], int(port_text), parts[2], parts[3:], port_count=int(count) if count else None
    )
