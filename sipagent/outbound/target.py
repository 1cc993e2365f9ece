"""Where an outbound call may go, as a client (control API, ``sipagent call``) writes it: checked once here.

A target is an extension or number (``2002``, ``+4930123``), dialed at the configured domain, or a ``sip:``
URI (``sips:`` only when the agent speaks SIP over TLS: a ``sips:`` request must be TLS on every hop, and
ours would not be). Anything that could change the INVITE beyond its Request-URI and To header is refused:
control characters, spaces, quotes, angle brackets (they end a header or its ``<...>``), URI headers
(``?Subject=...`` would put headers of the client's choosing into the request), a password (it would stand
in the To header and the logs), and the URI parameters that steer routing instead of naming a callee
(``maddr`` sends the request to a host of the client's choosing past the proxy's routing; ``method`` has no
place in a Request-URI; ``lr`` and ``ttl`` are for proxies).
"""

from __future__ import annotations

from sipagent.config import transfer_uri
from sipagent.errors import SipParseError
from sipagent.sip.uri import SipUri

MAX_TARGET_CHARS = 256
ROUTING_PARAMS = frozenset({"maddr", "method", "lr", "ttl"})


class TargetError(ValueError):
    """The target is refused; ``str()`` says why, and is safe to send back to the client."""


def dial_uri(target: object, domain: str, *, tls: bool = False) -> str:
    """The URI ``target`` stands for, normalised (``2002`` -> ``sip:2002@domain``); raises TargetError.
    ``tls``: the agent's SIP transport is TLS (only then is a ``sips:`` target possible)."""
    if not isinstance(target, str) or not target.strip():
        raise TargetError('to: expected an extension ("2002") or a sip: URI ("sip:2002@pbx.example.com")')
    if len(target) > MAX_TARGET_CHARS:
        raise TargetError(f"to: expected at most {MAX_TARGET_CHARS} characters")
    if not target.isprintable() or not target.isascii():
        raise TargetError("to: expected printable ASCII without line breaks")
    if "?" in target:
        raise TargetError("to: URI headers (?name=value) are not allowed")
    try:
        text = transfer_uri(target, domain)
        uri = SipUri.parse(text)
    except (ValueError, SipParseError) as exc:
        raise TargetError(f"to: {exc}") from None
    if uri.scheme == "sips" and not tls:
        raise TargetError("to: a sips: URI needs sip.transport tls (write sip: instead)")
    if uri.password is not None:
        raise TargetError("to: a password in the URI is not allowed")
    if any("%" in name for name in uri.params):
        # ";%6Daddr=" is ";maddr=" to a parser that unescapes parameter names (RFC 3261 allows escapes there):
        # no parameter a callee needs is written so.
        raise TargetError("to: a URI parameter name may not be %-escaped")
    steering = sorted(ROUTING_PARAMS & set(uri.params))
    if steering:
        raise TargetError(f"to: the URI parameter {steering[0]} is not allowed")
    return text
