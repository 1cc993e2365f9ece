"""Who is calling, what they dialed and who sent them, read from an INVITE.

The caller is the first of P-Asserted-Identity (RFC 3325), Remote-Party-ID (the draft Asterisk and
FreeSWITCH still send) and From that names one; the dialed number is the Request-URI's user part, else the
To's; the redirecting number comes from Diversion (RFC 5806), else History-Info (RFC 7044). Every value comes
from the wire and goes on into prompts, webhooks, transcripts and logs, so each is cut to printable text of
bounded length here, once; a header that does not parse is passed over, never an error.
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sipagent.errors import SipParseError
from sipagent.sip._text import split_list
from sipagent.sip.message import SipRequest
from sipagent.sip.uri import NameAddr, SipUri

MAX_VALUE_CHARS = 128  # longer values are cut: no real number, name or customer id needs more
MAX_HEADERS = 16  # configured headers kept per call


@dataclass(frozen=True)
class CallIdentity:
    """What an INVITE says about a call's parties; every field is cleaned text, "" when absent."""

    caller_number: str = ""
    caller_name: str = ""
    dialed: str = ""
    redirected_from: str = ""
    # The configured headers present in the INVITE: the configured spelling of the name → its first value.
    headers: Mapping[str, str] = field(default_factory=dict)


def identify(invite: SipRequest, header_names: Sequence[str] = ()) -> CallIdentity:
    """The identity of the call ``invite`` starts; ``header_names`` are the extra headers to keep."""
    callers = [*_addresses(invite.headers.get_all("P-Asserted-Identity")),
               *(addr for addr in _addresses(_values(invite, "Remote-Party-ID"))
                 if addr.params.get("party", "calling") == "calling"),
               *_addresses([invite.headers.get("From") or ""])]
    number = next((n for n in map(_number, (a.uri for a in callers)) if n), "")
    name = next((clean(a.display) for a in callers if a.display and clean(a.display)), "")
    dialed = _uri_number(invite.uri) or next((_number(a.uri) for a in _addresses([invite.headers.get("To") or ""])), "")
    headers = {}
    for wanted in header_names[:MAX_HEADERS]:
        value = invite.headers.get(wanted)
        if value is not None:
            headers[wanted] = clean(value)
    return CallIdentity(number, name, dialed, _redirected_from(invite), headers)


def clean(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` without control or format characters (line ends, NUL, bidi overrides), trimmed to ``limit``."""
    kept = "".join(ch for ch in text[: limit * 4] if not unicodedata.category(ch).startswith("C"))
    return kept.strip()[:limit]


def _redirected_from(invite: SipRequest) -> str:
    # Diversion lists the most recent redirection first; History-Info lists the targets in order, the last
    # being us, so the one before it is who sent the call on.
    for diverted in _addresses(_values(invite, "Diversion")):
        number = _number(diverted.uri)
        if number:
            return number
    history = list(_addresses(_values(invite, "History-Info")))
    return _number(history[-2].uri) if len(history) >= 2 else ""


def _values(invite: SipRequest, name: str) -> list[str]:
    return [item for value in invite.headers.get_all(name) for item in split_list(value)]


def _addresses(values: Iterable[str]) -> Iterable[NameAddr]:
    for value in values:
        try:
            yield NameAddr.parse(value)
        except SipParseError:
            continue


def _uri_number(text: str) -> str:
    try:
        return _number(SipUri.parse(text))
    except SipParseError:
        return ""


def _number(uri: SipUri) -> str:
    """The user part of a sip:/sips:/tel: URI: percent-decoded, without user parameters."""
    user = (uri.user or "").partition(";")[0]
    return clean(urllib.parse.unquote(user))
