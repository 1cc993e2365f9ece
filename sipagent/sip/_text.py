"""Lexical helpers shared by the SIP parsers: tokens, quoted strings, lists and parameters."""

from __future__ import annotations

import re

from sipagent.errors import SipParseError

# RFC 3261 token characters (section 25.1).
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def split_list(value: str, sep: str = ",") -> list[str]:
    """Split ``value`` on ``sep`` outside quoted strings and ``<...>``; strip and drop empty items."""
    items: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1  # the escaped character cannot end the quote
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            items.append(value[start:i])
            start = i + 1
        i += 1
    if in_quote:
        raise SipParseError("unterminated quoted string")
    items.append(value[start:])
    return [item.strip() for item in items if item.strip()]


def unquote(value: str) -> str:
    """Remove surrounding double quotes and backslash escapes; plain values are returned stripped."""
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, *, what: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` header parameters (leading ``;`` optional); names are lower-cased.

    Quoted values keep their quotes so that serialization is faithful; use ``unquote`` to read them.
    """
    params: dict[str, str | None] = {}
    for item in split_list(text, ";"):
        name, eq, val = item.partition("=")
        name = name.strip()
        if not is_token(name):
            raise SipParseError(f"bad {what} parameter")
        params[name.lower()] = val.strip() if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
