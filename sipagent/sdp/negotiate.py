"""SDP offer/answer (RFC 3264) for one audio stream: G.711 µ/A-law, G.722 and RFC 4733 DTMF, in the clear
(RTP/AVP) or with SRTP keyed by SDES (RTP/SAVP with RFC 4568 ``a=crypto``, under an ``SrtpPolicy``)."""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field

from sipagent.errors import SdpError, SrtpRefused
from sipagent.sdp.crypto import (
    DEFAULT_SUITES,
    SECURE_PROTOS,
    CryptoAttribute,
    KeySource,
    SrtpParams,
    choose,
    crypto_lines,
    new_key,
)
from sipagent.sdp.model import MediaDescription, RtpMap, SessionDescription

# name -> (static payload type, RTP clock rate as written in SDP). G.722 says 8000 (RFC 3551 4.5.2).
CODECS: dict[str, tuple[int, int]] = {"PCMU": (0, 8000), "PCMA": (8, 8000), "G722": (9, 8000)}
DTMF_EVENTS = "telephone-event"
ANSWER_DIRECTION = {
    "sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive",
}
SUPPORTED_PROTOS = ("RTP/AVP", "RTP/AVPF")
DEFAULT_PTIME = 20
_PORT = re.compile(r"[0-9]{1,5}")


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
    srtp: SrtpParams | None = None  # None: plain RTP
    remote_rtcp: tuple[str, int] | None = None  # RFC 3605 a=rtcp; None: RTP's address, port + 1

    @property
    def on_hold(self) -> bool:
        """The far end takes no audio from us: recvonly or inactive, or nowhere to send it (c=0.0.0.0,
        RFC 2543 hold, whatever direction came with it)."""
        return not self.may_send

    @property
    def may_send(self) -> bool:
        return self.direction in ("sendrecv", "sendonly") and not is_unspecified(self.remote_host)


SRTP_MODES = ("off", "optional", "required")


@dataclass(frozen=True)
class SrtpPolicy:
    """What we accept and offer for SRTP (``media.srtp``, ``media.srtp_suites``), for one offer.

    ``mode``: "off" answers only plain RTP (an RTP/SAVP offer is refused, 488), "optional" answers an
    RTP/SAVP offer with SRTP and a plain one plain, "required" refuses plain offers. ``keys_allowed``: the
    signalling this offer came over protects the keys in it (TLS), or the operator allowed SDES over
    signalling that does not (``media.srtp_over_insecure_signalling``); without it no SDES offer is taken,
    whatever the mode. ``random_bytes`` makes our keys (``secrets.token_bytes``; fixed bytes in tests)."""

    mode: str = "off"
    suites: tuple[str, ...] = DEFAULT_SUITES
    keys_allowed: bool = False
    random_bytes: KeySource = field(default=secrets.token_bytes, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in SRTP_MODES:
            raise ValueError(f"SRTP mode {self.mode!r} is not one of {', '.join(SRTP_MODES)}")

    @property
    def offers_srtp(self) -> bool:
        """Our own offers are RTP/SAVP: SRTP is required and the keys may travel."""
        return self.mode == "required" and self.keys_allowed


PLAIN = SrtpPolicy()


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


def _rtcp_address(media: MediaDescription, rtp_host: str) -> tuple[str, int] | None:
    """Where the peer takes RTCP when it says so (RFC 3605 ``a=rtcp:port [IN IP4|IP6 address]``, FreeSWITCH
    always does). An attribute we cannot read, or whose address is of another family than RTP's, counts as
    absent: a wrong RTCP address costs the call's reports, refusing the offer would cost the call."""
    value = media.attribute("rtcp")
    if value is None:
        return None
    parts = value.split()
    if len(parts) not in (1, 4) or not _PORT.fullmatch(parts[0]) or not 0 < int(parts[0]) < 65536:
        return None
    if len(parts) == 1:
        return rtp_host, int(parts[0])
    nettype, addrtype, host = parts[1:]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if nettype != "IN" or addrtype != _addrtype(rtp_host) or address.is_unspecified:
        return None
    if address.version != ipaddress.ip_address(rtp_host).version:
        return None
    return str(address), int(parts[0])


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
    srtp: SrtpPolicy = PLAIN,
    current: SrtpParams | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer``: the first audio stream with a codec from ``preferences`` (our order wins) that
    ``srtp`` allows: plain RTP/AVP, or RTP/SAVP with a crypto attribute we take.

    ``current`` is the SRTP in use on the call (a re-INVITE): when the offer repeats the peer's crypto
    attribute unchanged (tag, suite and key), our answer repeats our key, and the session goes on with the
    same keys and state (RFC 4568 7.1.4 allows either; keeping it disturbs nothing). Any change of the
    peer's key or suite, or SRTP that was not in use, gets a fresh key of ours, so a new key never meets an
    old one. Every other m= line is rejected with port 0 (RFC 3264 6). Raises SdpError (→ 488) when no
    stream can be accepted, with every reason in its message (never a key): SrtpRefused when a stream had a
    codec we take and was refused for its security alone.
    """
    session = session or LocalSession()
    chosen: tuple[MediaDescription, str, int, int | None, CryptoAttribute | None] | None = None
    reasons: list[str] = []
    srtp_only = False  # some stream had a codec we take, and was refused for its security alone
    for media in offer.media:
        proto = media.proto.upper()
        if media.media != "audio" or media.port == 0 or proto not in SUPPORTED_PROTOS + SECURE_PROTOS:
            continue
        crypto: CryptoAttribute | None = None
        table = _codec_table(media)
        found = _match(table, preferences)
        if found is None:
            reasons.append("no common audio codec in offer")
            continue
        srtp_only = True
        if proto in SECURE_PROTOS:
            if srtp.mode == "off":
                reasons.append(f"{media.proto} offered and media.srtp is off")
                continue
            if not srtp.keys_allowed:
                reasons.append(f"{media.proto} with SDES keys over signalling that does not protect them "
                               "(media.srtp_over_insecure_signalling)")
                continue
            try:
                crypto = choose(crypto_lines(media.attributes), srtp.suites)
            except SdpError as exc:
                reasons.append(str(exc))
                continue
        elif srtp.mode == "required":
            reasons.append(f"plain {media.proto} offered and media.srtp is required")
            continue
        chosen = (media, found[0], found[1], _dtmf(table), crypto)
        break
    if chosen is None:
        message = "; ".join(dict.fromkeys(reasons)) or "no common audio codec in offer"
        raise SrtpRefused(message) if srtp_only else SdpError(message)
    media, codec, pt, dtmf_pt, crypto = chosen
    remote_host = _ip_address(media.connection_address or offer.connection_address, "offer")
    direction = ANSWER_DIRECTION[_offer_direction(offer, media)]
    params: SrtpParams | None = None
    if crypto is not None:
        same = (current is not None and current.suite == crypto.suite and current.tag == crypto.tag
                and current.remote_key == crypto.key)
        local_key = current.local_key if same and current is not None else new_key(crypto.suite, srtp.random_bytes)
        params = SrtpParams(crypto.suite, crypto.tag, local_key, crypto.key)

    answer = _session_lines(local_host, session)
    for m in offer.media:
        if m is media:
            answer.media.append(_answer_media(codec, pt, dtmf_pt, media, local_port, direction, params))
        else:
            answer.media.append(_rejected(m))
    negotiated = NegotiatedMedia(
        codec=codec,
        payload_type=pt,
        clock_rate=CODECS[codec][1],
        dtmf_payload_type=dtmf_pt,
        remote_host=remote_host,
        remote_port=media.port,
        ptime=_ptime(offer, media),
        direction=direction,
        srtp=params,
        remote_rtcp=_rtcp_address(media, remote_host),
    )
    return answer, negotiated


def removes_every_stream(offer: SessionDescription) -> bool:
    """A re-offer whose m-lines all have port 0: the far end removed the call's streams (RFC 3264 8.2)."""
    return bool(offer.media) and all(m.port == 0 for m in offer.media)


def decline_all(offer: SessionDescription, local_host: str, session: LocalSession) -> SessionDescription:
    """The answer to ``removes_every_stream``: each m-line again with port 0, in the offer's order (RFC 3264
    8.2 requires it; a 488 would leave the far end's session and ours disagreeing)."""
    answer = _session_lines(local_host, session)
    answer.media = [_rejected(m) for m in offer.media]
    return answer


def _session_lines(local_host: str, session: LocalSession) -> SessionDescription:
    return SessionDescription(lines=[
        ("v", "0"),
        ("o", session.origin_line(local_host)),
        ("s", "sipagent"),
        ("c", f"IN {_addrtype(local_host)} {local_host}"),
        ("t", "0 0"),
    ])


def _rejected(offered: MediaDescription) -> MediaDescription:
    """An offered m-line refused or removed (RFC 3264 6): port 0, the offer's proto and one of its formats."""
    return MediaDescription(offered.media, 0, offered.proto, offered.formats[:1] or ["0"])


def _answer_media(
    codec: str, pt: int, dtmf_pt: int | None, offered: MediaDescription, port: int, direction: str,
    srtp: SrtpParams | None = None,
) -> MediaDescription:
    formats = [str(pt)]
    lines = [("a", f"rtpmap:{pt} {codec}/{CODECS[codec][1]}")]
    if dtmf_pt is not None:
        formats.append(str(dtmf_pt))
        lines.append(("a", f"rtpmap:{dtmf_pt} {DTMF_EVENTS}/8000"))
        lines.append(("a", f"fmtp:{dtmf_pt} {offered.fmtps().get(dtmf_pt) or '0-16'}"))
    lines.append(("a", f"ptime:{DEFAULT_PTIME}"))
    lines.append(("a", direction))
    if srtp is not None:
        lines.append(("a", "crypto:" + CryptoAttribute(srtp.tag, srtp.suite, srtp.local_key).to_value()))
    return MediaDescription("audio", port, offered.proto, formats, lines)


def offer_crypto(srtp: SrtpPolicy) -> list[CryptoAttribute]:
    """Our crypto attributes for an offer of our own: one per suite, in our order, each with its own key."""
    return [CryptoAttribute(tag, suite, new_key(suite, srtp.random_bytes))
            for tag, suite in enumerate(srtp.suites, start=1)]


def make_offer(
    preferences: list[str], local_host: str, local_port: int, session: LocalSession,
    direction: str = "sendrecv", dtmf_payload_type: int | None = 101, crypto: list[CryptoAttribute] | None = None,
) -> SessionDescription:
    """Our own offer (a re-INVITE without SDP asks for one): every preferred codec plus DTMF (none with
    ``dtmf_payload_type`` None, as a line in in-band DTMF mode offers); RTP/SAVP with ``crypto`` (from
    ``offer_crypto``) when given."""
    names = [p.upper() for p in preferences if p.upper() in CODECS]
    formats = [str(CODECS[n][0]) for n in names]
    lines = [("a", f"rtpmap:{CODECS[n][0]} {n}/{CODECS[n][1]}") for n in names]
    if dtmf_payload_type is not None:
        formats.append(str(dtmf_payload_type))
        lines += [("a", f"rtpmap:{dtmf_payload_type} {DTMF_EVENTS}/8000"), ("a", f"fmtp:{dtmf_payload_type} 0-16")]
    lines += [("a", f"ptime:{DEFAULT_PTIME}"), ("a", direction)]
    lines += [("a", "crypto:" + c.to_value()) for c in crypto or []]
    return SessionDescription(
        lines=[
            ("v", "0"),
            ("o", session.origin_line(local_host)),
            ("s", "sipagent"),
            ("c", f"IN {_addrtype(local_host)} {local_host}"),
            ("t", "0 0"),
        ],
        media=[MediaDescription("audio", local_port, "RTP/SAVP" if crypto else "RTP/AVP", formats, lines)],
    )


def accept_answer(answer: SessionDescription, offer: SessionDescription | None = None) -> NegotiatedMedia:
    """Read the far end's answer to our ``offer`` (``make_offer``, or our last SDP sent again as an offer):
    the first codec it kept is the one we send. When we offered crypto attributes, the answer must take one
    of them (same tag and suite) with its own key, or SdpError."""
    ours = _offered_crypto(offer)
    offered = _offered_codecs(offer)
    rejected = False
    for media in answer.media:
        if media.media != "audio":
            continue
        if media.port == 0:
            rejected = True
            continue
        table = _codec_table(media)
        order = [table[int(f)].encoding.upper() for f in media.formats if _is_pt(f) and int(f) in table]
        if offered is not None:
            # RFC 3264 6.1: an answer may only keep formats of the offer. One we did not offer (G.722 when the
            # line offers G.711 only) is a codec the call's configuration left out: we must not send it.
            foreign = [name for name in order if name in CODECS and name not in offered]
            order = [name for name in order if name in offered]
            if not order and foreign:
                raise SdpError(f"answer picks a codec we did not offer ({foreign[0]})")
        found = _match(table, order)
        if found is None:
            break
        host = _ip_address(media.connection_address or answer.connection_address, "answer")
        their = _offer_direction(answer, media)
        return NegotiatedMedia(
            codec=found[0], payload_type=found[1], clock_rate=CODECS[found[0]][1],
            dtmf_payload_type=_dtmf(table), remote_host=host, remote_port=media.port,
            ptime=_ptime(answer, media), direction=ANSWER_DIRECTION[their], srtp=_answered_crypto(media, ours),
            remote_rtcp=_rtcp_address(media, host),
        )
    if rejected:
        raise SdpError("answer refuses our audio stream (port 0)")
    raise SdpError("answer accepts no audio codec we offered")


def _offered_codecs(offer: SessionDescription | None) -> frozenset[str] | None:
    """The codecs (by name) of our offer's audio stream; None when the offer is not known."""
    if offer is None:
        return None
    for media in offer.media:
        if media.media == "audio" and media.port != 0:
            return frozenset(rtpmap.encoding.upper() for rtpmap in _codec_table(media).values())
    return None


def _offered_crypto(offer: SessionDescription | None) -> dict[int, CryptoAttribute]:
    if offer is None:
        return {}
    for media in offer.media:
        if media.media == "audio" and media.port != 0:
            if media.proto.upper() not in SECURE_PROTOS:
                return {}
            return {c.tag: c for c in crypto_lines(media.attributes) if isinstance(c, CryptoAttribute)}
    return {}


def _answered_crypto(media: MediaDescription, ours: dict[int, CryptoAttribute]) -> SrtpParams | None:
    secure = media.proto.upper() in SECURE_PROTOS
    if not ours:
        if secure:
            raise SdpError(f"answer is {media.proto} to a plain offer")
        return None
    if not secure:
        raise SdpError(f"answer is {media.proto} to an offer of SRTP")
    answered = [c for c in crypto_lines(media.attributes) if isinstance(c, CryptoAttribute)]
    for crypto in answered:
        mine = ours.get(crypto.tag)
        if mine is not None and mine.suite == crypto.suite:
            return SrtpParams(crypto.suite, crypto.tag, mine.key, crypto.key)
    raise SdpError("answer takes none of the crypto attributes we offered")
