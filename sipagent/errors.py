"""One hierarchy of typed errors; each carries what a user needs to act on it.

This module sits below every layer: anything in the package may import it.
"""

from __future__ import annotations


class SipagentError(Exception):
    """Base class of every error sipagent raises on purpose."""


class ConfigError(SipagentError):
    """A configuration file is unreadable or does not validate.

    ``str(err)`` is the whole message a person needs: ``file:line: key.path: what was expected``.
    """

    def __init__(self, message: str, *, path: str = "", line: int | None = None, key: str = "") -> None:
        self.path = path
        self.line = line
        self.key = key
        self.detail = message
        where = path
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = ": ".join(p for p in (where, key) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class SipParseError(SipagentError):
    """A SIP message could not be parsed. ``reason`` is safe to put in a 400 reason phrase."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SipBuildError(SipagentError):
    """A SIP message or SDP body was not built because a value in it would change its framing: CR, LF or
    NUL in a header value, a start line or an SDP line (header injection). Nothing is sent."""


class SdpError(SipagentError):
    """An SDP body could not be parsed or negotiated."""


class SrtpRefused(SdpError):
    """An offer was refused for its media security alone (a codec would have matched): SRTP off or
    required (``media.srtp``), SDES keys over signalling that does not protect them, or no usable crypto
    attribute. Counted apart from codec mismatches, since the fix is in another setting."""


class CallAbandoned(SipagentError):
    """The far end ended a call before it was set up: a CANCEL while it rang, a BYE before its ACK. Ordinary
    caller behaviour, not a fault; ``str(err)`` says which."""


class RtpError(SipagentError):
    """An RTP/RTCP packet is malformed, or the media engine cannot do what was asked."""


class KernelError(SipagentError):
    """The native audio kernel refused its input (bad rate, bad length)."""


class RealtimeError(SipagentError):
    """The Realtime API (or the local backend) failed or sent something we cannot use."""
