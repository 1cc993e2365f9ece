"""One call's side of the SDP offer/answer model (RFC 3264), whichever side made the call.

It keeps what we last sent (our offer or our answer: a refresh re-INVITE offers it again, unchanged), the
address our media is received on, and the media negotiated so far. Pure: SDP in, SDP and media out;
SdpError when an offer or an answer cannot be taken.
"""

from __future__ import annotations

from dataclasses import replace

from sipagent.errors import SdpError
from sipagent.sdp import (
    LocalSession,
    NegotiatedMedia,
    SessionDescription,
    SrtpParams,
    SrtpPolicy,
    accept_answer,
    make_offer,
    negotiate,
    offer_crypto,
)
from sipagent.sdp.negotiate import decline_all, removes_every_stream


def media_key(media: NegotiatedMedia) -> tuple[str, int, str, int, str, SrtpParams | None]:
    """What makes two negotiations the same media for the layer above (ptime and DTMF follow the codec;
    a new SRTP key is new media: the receive side must re-key)."""
    return (media.codec, media.payload_type, media.remote_host, media.remote_port, media.direction, media.srtp)


class OfferAnswer:
    """``codecs`` in our order of preference; ``srtp`` what this call may negotiate for SRTP."""

    def __init__(self, codecs: tuple[str, ...], srtp: SrtpPolicy) -> None:
        self.codecs = list(codecs)
        self.srtp = srtp
        self.session = LocalSession()  # one o= line per call; its version rises with each new SDP we send
        self.local: SessionDescription | None = None  # what we last sent: our offer or our answer
        self.rtp: tuple[str, int] | None = None  # where our media is received
        self.media: NegotiatedMedia | None = None

    def offer(self, rtp_host: str, rtp_port: int) -> SessionDescription:
        """Our own offer (a call we place, or our 2xx to an INVITE without SDP): every codec we carry."""
        self.rtp = (rtp_host, rtp_port)
        crypto = offer_crypto(self.srtp) if self.srtp.offers_srtp else None
        self.local = make_offer(self.codecs, rtp_host, rtp_port, self.session, crypto=crypto)
        return self.local

    def answer(self, offer: SessionDescription, rtp_host: str | None = None,
               rtp_port: int | None = None) -> SessionDescription:
        """Our answer to ``offer`` (the INVITE's, with where our media goes; or a re-INVITE's or UPDATE's, on the
        address we already have). Sets ``media``; SdpError when no stream can be accepted."""
        if rtp_host is not None and rtp_port is not None:
            rtp = (rtp_host, rtp_port)
        elif self.rtp is not None:
            rtp = self.rtp
        else:
            raise SdpError("no media address of ours to answer from yet")
        if self.media is not None and removes_every_stream(offer):
            # Mid-call, the far end removed the audio (RFC 3264 8.2): answered with port 0, and the call stays
            # up without media (inactive: we send nothing) until a later offer brings a stream back.
            self.rtp, self.local = rtp, decline_all(offer, rtp[0], self.session)
            self.media = replace(self.media, direction="inactive")
            return self.local
        current = self.media.srtp if self.media is not None else None
        answer, media = negotiate(offer, self.codecs, *rtp, session=self.session, srtp=self.srtp, current=current)
        self.rtp, self.local, self.media = rtp, answer, media
        return answer

    def take_answer(self, body: bytes) -> NegotiatedMedia:
        """The far end's answer to what we last sent (our offer); sets ``media``. SdpError when unusable."""
        self.media = self.read_answer(body)
        return self.media

    def read_answer(self, body: bytes) -> NegotiatedMedia:
        """The media an answer to our offer would give, without taking it (early media, a mid-call answer
        that may change nothing)."""
        return accept_answer(SessionDescription.parse(body), self.local)


__all__ = ["OfferAnswer", "media_key"]
