"""SDP model and offer/answer for one audio stream (pure: bytes in, bytes out)."""

from sipagent.sdp.model import MediaDescription, Origin, RtpMap, SessionDescription
from sipagent.sdp.negotiate import (
    CODECS,
    LocalSession,
    NegotiatedMedia,
    accept_answer,
    is_hold,
    make_offer,
    negotiate,
)

__all__ = [
    "CODECS",
    "LocalSession",
    "MediaDescription",
    "NegotiatedMedia",
    "Origin",
    "RtpMap",
    "SessionDescription",
    "accept_answer",
    "is_hold",
    "make_offer",
    "negotiate",
]
