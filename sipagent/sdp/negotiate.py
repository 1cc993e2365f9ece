"""SDP offer/answer (RFC 3264) for one audio stream: G.711 µ/A-law, G.722 and RFC 4733 DTMF."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from sipagent.errors import SdpError
from sipagent.sdp.model import MediaDescription, RtpMap, SessionDescription

# name -> (static payload type, RTP clock rate as written in SDP). G.722 says 8000 (RFC 3551 4.5.2).
CODECS: dict[str, tuple[int, int]] = {"PCMU": (0, 8000), "PCMA": (8, 8000), "G722": (9, 8000)}
DTMF_EVENTS = "telephone-event"
ANSWER_DIRECTION = {
    "sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive",
}
SUPPORTED_PROTOS = ("RTP/AVP", "RTP/AVPF")
DEFAULT_PTIME = 20


@dataclass(frozen=True)
class NegotiatedMedia:
    """The outcome of one offer/answer. ``direction`` is ours, as written in the answer
    (``recvonly`` or ``inactive`` means the far end put us on hold: do not send audio)."""

    codec: str
    payload_type: int
    clock_rate: int
    dtmf_payload_type: int | None
    remote_host: str
    remote_port: int
    ptime: int
    direction: str

    @property
    def on_hold(self) -> bool:
        """The far end takes no audio from us: recvonly or inactive, or nowhere to send it (c=0.0.0.0,
        RFC 2543 hold, whatever direction came with it)."""
        return not self.may_send

    @property
    def may_send(self) -> bool:
        return self.direction in ("sendrecv", "sendonly") and not is_unspecified(self.remote_host)


class LocalSession:
    """Our o= line across one call: a fixed session id, a version bumped for each new SDP we send."""

    def __init__(self, username: str = "sipagent", session_id: int | None = None) -> None:
        self.username = username
        self.session_id = session_id if session_id is not None else secrets.randbelow(2**62) + 1
        self.version = self.session_id
        self._sent = False

    def next_version(self) -> int:
        """Version for the next SDP we send: unchanged for the first, +1 for each later one."""
        if self._sent:
            self.version += 1
        self._sent = True
        return self.version

    def origin_line(self, host: str) -> str:
        return f"{self.username} {self.session_id} {self.next_version()} IN {_addrtype(host)} {host}"


def _ip_address(host: str | None, what: str) -> str:
    """The peer's media address, which must be an IP literal: a name would have to be resolved on the
    media path, and one chosen by the caller would make us query the caller's DNS."""
    if not host:
        raise SdpError(f"{what} has no connection address")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SdpError(f"{what}'s connection address {host[:60]!r} is not an IP address") from None
    return host


def _addrtype(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def is_hold(offer: SessionDescription) -> bool:
    """The offer puts the call on hold: sendonly/inactive (at media or session level) or c=0.0.0.0."""
    audio = [m for m in offer.media if m.media == "audio" and m.port != 0]
    if not audio:
        return False
    return _offer_direction(offer, audio[0]) in ("sendonly", "inactive")


def is_unspecified(host: str) -> bool:
    """0.0.0.0 or :: in any spelling: RFC 2543's way of saying "send me nothing" (older phones' hold)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _offer_direction(sdp: SessionDescription, media: MediaDescription) -> str:
    """The direction the far end wrote (offer or answer), with c=0.0.0.0 read as its not receiving."""
    direction = media.direction or sdp.direction or "sendrecv"
    host = media.connection_address or sdp.connection_address
    if host and is_unspecified(host) and direction in ("sendrecv", "recvonly"):
        # RFC 2543-style hold: the far end does not want to receive anything.
        direction = "sendonly" if direction == "sendrecv" else "inactive"
    return direction


def _is_pt(fmt: str) -> bool:
    return fmt.isascii() and fmt.isdigit() and int(fmt) <= 127


def _codec_table(media: MediaDescription) -> dict[int, RtpMap]:
    """Payload types of an m= line with their encodings, static ones filled in when rtpmap is absent."""
    maps = media.rtpmaps()
    table: dict[int, RtpMap] = {}
    for fmt in media.formats:
        if not _is_pt(fmt):
            continue
        pt = int(fmt)
        if pt in maps:
            table[pt] = maps[pt]
        else:
            for name, (static_pt, rate) in CODECS.items():
                if static_pt == pt:
                    table[pt] = RtpMap(name, rate)
    return table


def _match(table: dict[int, RtpMap], preferences: list[str]) -> tuple[str, int] | None:
    for wanted in preferences:
        wanted = wanted.upper()
        if wanted not in CODECS:
            continue
        for pt, rtpmap in table.items():
            # Some phones write G722/16000; the codec is the same.
            if rtpmap.encoding.upper() == wanted and rtpmap.channels == 1:
                return wanted, pt
    return None


def _dtmf(table: dict[int, RtpMap]) -> int | None:
    for pt, rtpmap in table.items():
        if rtpmap.encoding.lower() == DTMF_EVENTS and rtpmap.clock_rate == 8000:
            return pt
    return None


def _ptime(offer: SessionDescription, media: MediaDescription) -> int:
    text = media.attribute("ptime") or offer.attribute("ptime") or ""
    try:
        value = round(float(text))
    except (ValueError, OverflowError):  # "abc", "nan", "inf"
        return DEFAULT_PTIME
    return value if 10 <= value <= 200 else DEFAULT_PTIME


def negotiate(
    offer: SessionDescription,
    preferences: list[str],
    local_host: str,
    local_port: int,
    session: LocalSession | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer``: the first audio stream with a codec from ``preferences`` (our order wins).

    Every other m= line is rejected with port 0 (RFC 3264 6). Raises SdpError (→ 488) when no
    stream can be accepted.
    """
    session = session or LocalSession()
    chosen: tuple[MediaDescription, str, int, int | None] | None = None
    for media in offer.media:
        if media.media != "audio" or media.port == 0 or media.proto.upper() not in SUPPORTED_PROTOS:
            continue
        table = _codec_table(media)
        found = _match(table, preferences)
        if found is not None:
            chosen = (media, found[0], found[1], _dtmf(table))
            break
    if chosen is None:
        raise SdpError("no common audio codec in offer")
    media, codec, pt, dtmf_pt = chosen
    remote_host = _ip_address(media.connection_address or offer.connection_address, "offer")
    direction = ANSWER_DIRECTION[_offer_direction(offer, media)]

    answer = SessionDescription(lines=[
        ("v", "0"),
        ("o", session.origin_line(local_host)),
        ("s", "sipagent"),
        ("c", f"IN {_addrtype(local_host)} {local_host}"),
        ("t", "0 0"),
    ])
    for m in offer.media:
        if m is media:
            answer.media.append(_answer_media(codec, pt, dtmf_pt, media, local_port, direction))
        else:
            answer.media.append(MediaDescription(m.media, 0, m.proto, m.formats[:1] or ["0"]))
    negotiated = NegotiatedMedia(
        codec=codec,
        payload_type=pt,
        clock_rate=CODECS[codec][1],
        dtmf_payload_type=dtmf_pt,
        remote_host=remote_host,
        remote_port=media.port,
        ptime=_ptime(offer, media),
        direction=direction,
    )
    return answer, negotiated


def _answer_media(
    codec: str, pt: int, dtmf_pt: int | None, offered: MediaDescription, port: int, direction: str
) -> MediaDescription:
    formats = [str(pt)]
    lines = [("a", f"rtpmap:{pt} {codec}/{CODECS[codec][1]}")]
    if dtmf_pt is not None:
        formats.append(str(dtmf_pt))
        lines.append(("a", f"rtpmap:{dtmf_pt} {DTMF_EVENTS}/8000"))
        lines.append(("a", f"fmtp:{dtmf_pt} {offered.fmtps().get(dtmf_pt) or '0-16'}"))
    lines.append(("a", f"ptime:{DEFAULT_PTIME}"))
    lines.append(("a", direction))
    return MediaDescription("audio", port, offered.proto, formats, lines)


def make_offer(
    preferences: list[str], local_host: str, local_port: int, session: LocalSession,
    direction: str = "sendrecv", dtmf_payload_type: int = 101,
) -> SessionDescription:
    """Our own offer (a re-INVITE without SDP asks for one): every preferred codec plus DTMF."""
    names = [p.upper() for p in preferences if p.upper() in CODECS]
    formats = [str(CODECS[n][0]) for n in names] + [str(dtmf_payload_type)]
    lines = [("a", f"rtpmap:{CODECS[n][0]} {n}/{CODECS[n][1]}") for n in names]
    lines += [
        ("a", f"rtpmap:{dtmf_payload_type} {DTMF_EVENTS}/8000"),
        ("a", f"fmtp:{dtmf_payload_type} 0-16"),
        ("a", f"ptime:{DEFAULT_PTIME}"),
        ("a", direction),
    ]
    return SessionDescription(
        lines=[
            ("v", "0"),
            ("o", session.origin_line(local_host)),
            ("s", "sipagent"),
            ("c", f"IN {_addrtype(local_host)} {local_host}"),
            ("t", "0 0"),
        ],
        media=[MediaDescription("audio", local_port, "RTP/AVP", formats, lines)],
    )


def accept_answer(answer: SessionDescription) -> NegotiatedMedia:
    """Read the far end's answer to ``make_offer``: the first codec it kept is the one we send."""
    for media in answer.media:
        if media.media != "audio" or media.port == 0:
            continue
        table = _codec_table(media)
        order = [table[int(f)].encoding.upper() for f in media.formats if _is_pt(f) and int(f) in table]
        found = _match(table, order)
        if found is None:
            break
        host = _ip_address(media.connection_address or answer.connection_address, "answer")
        their = _offer_direction(answer, media)
        return NegotiatedMedia(
            codec=found[0], payload_type=found[1], clock_rate=CODECS[found[0]][1],
            dtmf_payload_type=_dtmf(table), remote_host=host, remote_port=media.port,
            ptime=_ptime(answer, media), direction=ANSWER_DIRECTION[their],
        )
    raise SdpError("answer accepts no audio codec we offered")
