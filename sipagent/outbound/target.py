"""Where an outbound call may go, as a client (control API, ``sipagent call``) writes it: checked once here.

A target is an extension or number (``2002``, ``+4930123``), dialed at the configured domain, or a
``sip:``/``sips:`` URI. Anything that could change the INVITE beyond its Request-URI and To header is
refused: control characters, spaces, quotes, angle brackets (they end a header or its ``<...>``) and URI
headers (``?Subject=...`` would put headers of the client's choosing into the request).
"""

from __future__ import annotations

from sipagent.config import transfer_uri

MAX_TARGET_CHARS = 256


class TargetError(ValueError):
    """The target is refused; ``str()`` says why, and is safe to send back to the client."""


def dial_uri(target: object, domain: str) -> str:
    """The URI ``target`` stands for, normalised (``2002`` -> ``sip:2002@domain``); raises TargetError."""
    if not isinstance(target, str) or not target.strip():
        raise TargetError('to: expected an extension ("2002") or a sip: URI ("sip:2002@pbx.example.com")')
    if len(target) > MAX_TARGET_CHARS:
        raise TargetError(f"to: expected at most {MAX_TARGET_CHARS} characters")
    if not target.isprintable() or not target.isascii():
        raise TargetError("to: expected printable ASCII without line breaks")
    if "?" in target:
        raise TargetError("to: URI headers (?name=value) are not allowed")
    try:
        return transfer_uri(target, domain)
    except ValueError as exc:
        raise TargetError(f"to: {exc}") from None
