"""SDP model and offer/answer for one audio stream (pure: bytes in, bytes out)."""

from sipagent.sdp.crypto import CryptoAttribute, SrtpParams
from sipagent.sdp.model import MediaDescription, Origin, RtpMap, SessionDescription
from sipagent.sdp.negotiate import (
    CODECS,
    LocalSession,
    NegotiatedMedia,
    SrtpPolicy,
    accept_answer,
    is_hold,
    make_offer,
    negotiate,
    offer_crypto,
)

__all__ = [
    "CODECS",
    "CryptoAttribute",
    "LocalSession",
    "MediaDescription",
    "NegotiatedMedia",
    "Origin",
    "RtpMap",
    "SessionDescription",
    "SrtpParams",
    "SrtpPolicy",
    "accept_answer",
    "is_hold",
    "make_offer",
    "negotiate",
    "offer_crypto",
]
