"""Small bodies and URI parameters a call carries besides SDP: DTMF by SIP INFO (application/dtmf-relay),
transfer progress (message/sipfrag in NOTIFY, RFC 3515) and the Replaces of a Refer-To (RFC 3891).

Every input here comes from the network: parsers return None for what they cannot read, never raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

DTMF_SIGNALS = {"10": "*", "11": "#"}
DTMF_DIGITS = frozenset("0123456789*#ABCD")
DEFAULT_DTMF_MS = 100


@dataclass(frozen=True)
class DtmfRelay:
    digit: str
    duration: int  # milliseconds


def parse_dtmf_relay(body: bytes) -> DtmfRelay | None:
    """``Signal=5\\r\\nDuration=160``: the digit and its duration (100 ms when absent); None when the signal
    is not one key."""
    fields: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition("=")
        fields[name.strip().lower()] = value.strip()
    signal = fields.get("signal", "")
    digit = DTMF_SIGNALS.get(signal, signal.upper())
    if len(digit) != 1 or digit not in DTMF_DIGITS:
        return None
    text = fields.get("duration", "")
    duration = int(text) if text.isdigit() and len(text) <= 6 else DEFAULT_DTMF_MS
    return DtmfRelay(digit, duration)


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a message/sipfrag's status line (``SIP/2.0 200 OK``); None when there is none."""
    lines = body.decode("utf-8", "replace").strip().splitlines()
    parts = lines[0].split(" ") if lines else []
    if len(parts) >= 2 and parts[0].upper().startswith("SIP/") and parts[1].isdigit() and len(parts[1]) == 3:
        return int(parts[1])
    return None


def sipfrag(status: int, reason: str) -> bytes:
    return f"SIP/2.0 {status} {reason}\r\n".encode()


def replaces_header(call_id: str, to_tag: str, from_tag: str) -> str:
    """The ``Replaces`` URI header of a Refer-To (RFC 3891 3), escaped so it can sit in the URI: ``to-tag`` is
    the tag of the UA that receives the INVITE with Replaces (the far end of the dialog to replace),
    ``from-tag`` the other one."""
    value = f"{call_id};to-tag={to_tag};from-tag={from_tag}"
    return "Replaces=" + quote(value, safe="")


__all__ = ["DtmfRelay", "parse_dtmf_relay", "replaces_header", "sipfrag", "sipfrag_status"]
