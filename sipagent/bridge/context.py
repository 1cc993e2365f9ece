"""Per-call context: who called, what they dialed, what the PBX said, and the templates that use it.

A template is text with variables in braces: ``Caller {caller_number}, customer {header.X-Customer-Id}``;
``{{`` and ``}}`` are literal braces. :func:`check_template` validates one text against the configured
headers (the configuration loader calls it for every templated key, so a typo fails at load time, with
the line); :func:`render` substitutes a call's values into it. Pure: no I/O, the moment of the call is an
argument.

Values from the wire are untrusted. ``sipagent.sip.identity`` has already cut them to one line of bounded,
printable text; here they are substituted once, as plain text, and never parsed again (a caller name
``{now}`` stays ``{now}``), with double quotes turned into single ones so that a value cannot close a quoted
passage of the prompt (the bridge wraps spoken texts in quotes). In HTTP headers they are percent-encoded.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

# Variables every call has, in the order the docs list them; header.<Name> comes on top of these.
WIRE_VARIABLES = ("caller_number", "caller_name", "dialed", "redirected_from")  # may be absent: defaults apply
CALL_VARIABLES = ("call_id", "now", "date", "time", "weekday")
VARIABLES = WIRE_VARIABLES + CALL_VARIABLES
HEADER_PREFIX = "header."
# Variables given to an outbound call by whoever placed it (control API, ``sipagent call --var``):
# ``{var.NAME}``. Any such name is valid in a template (a call without it renders ''), and their number and
# sizes are bounded, since they come from a client.
VAR_PREFIX = "var."
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_CALL_VARIABLES = 32
MAX_CALL_VARIABLE_VALUE = 256  # characters; a value is one line of printable text
# A header name usable in SIP (RFC 3261 token) and in HTTP (RFC 9110 token) alike.
HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]{1,64}")

# The X-Sipagent-* headers of a webhook request, after the X-Sipagent-Call-Id the webhook client writes.
HTTP_HEADERS = {"caller_number": "X-Sipagent-Caller", "caller_name": "X-Sipagent-Caller-Name",
                "dialed": "X-Sipagent-Dialed", "redirected_from": "X-Sipagent-Redirected-From"}
HTTP_HEADER_PREFIX = "X-Sipagent-Header-"  # + the configured SIP header's name
_HTTP_SAFE = "+*#"  # besides letters, digits and -._~: phone numbers and extensions stay readable

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_QUOTES = str.maketrans({'"': "'", "\u201c": "'", "\u201d": "'", "\u201e": "'", "\u00ab": "'", "\u00bb": "'"})


class TemplateError(ValueError):
    """A template that does not parse or names an unknown variable.

    ``reason`` says what is wrong, ``line`` is the 1-based line of the text where it is (for a block of
    instructions, the config loader adds it to the line the block starts on).
    """

    def __init__(self, reason: str, text: str = "", offset: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset
        self.line = text.count("\n", 0, offset) + 1


@dataclass(frozen=True)
class Variable:
    name: str  # as written, e.g. "caller_number" or "header.X-Customer-Id"
    offset: int  # of its "{" in the text

    @property
    def key(self) -> str:
        """The name :meth:`CallContext.variables` files its value under (header names are case-blind)."""
        return variable_key(self.name)


def variable_key(name: str) -> str:
    return HEADER_PREFIX + name[len(HEADER_PREFIX):].lower() if name.startswith(HEADER_PREFIX) else name


def parse(text: str) -> list[str | Variable]:
    """The template as literal text and variables, in order; raises :class:`TemplateError` on a lone or
    unclosed brace. Checks the syntax only: what a name means is :func:`check_template`'s business."""
    parts: list[str | Variable] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            inner = text[i + 1 : end] if end >= 0 else ""
            if end < 0 or "{" in inner or "\n" in inner:
                raise TemplateError("unclosed { (write {{ for a literal brace)", text, i)
            if not inner.strip():
                raise TemplateError("empty {} (write {{}} for literal braces)", text, i)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Variable(inner, i))
            i = end + 1
        elif ch == "}":
            if not text.startswith("}}", i):
                raise TemplateError("a lone } (write }} for a literal brace)", text, i)
            literal.append("}")
            i += 2
        else:
            nxt = min((p for p in (text.find("{", i), text.find("}", i)) if p >= 0), default=n)
            literal.append(text[i:nxt])
            i = nxt
    if literal:
        parts.append("".join(literal))
    return parts


def check_template(text: str, headers: Collection[str] = ()) -> None:
    """Raises :class:`TemplateError` unless ``text`` parses and names only known variables, its header
    variables only ``headers`` (the configured ``context.headers``; case does not matter)."""
    for part in parse(text):
        if isinstance(part, Variable):
            problem = variable_problem(part.name, headers)
            if problem:
                raise TemplateError(problem, text, part.offset)


def variable_problem(name: str, headers: Collection[str]) -> str:
    """Why ``name`` is not a variable a template may use ('' when it is), ``headers`` being those listed."""
    if name.startswith(HEADER_PREFIX):
        header = name[len(HEADER_PREFIX):].lower()
        if any(header == listed.lower() for listed in headers):
            return ""
        listed = ", ".join(headers) or "none"
        return (f"{{{name}}} names a header that context.headers does not list (listed: {listed}); only "
                "listed headers are read from the INVITE")
    if name in VARIABLES:
        return ""
    if name.startswith(VAR_PREFIX):
        if VAR_NAME.fullmatch(name[len(VAR_PREFIX):]):
            return ""
        return (f"{{{name}}}: a call variable's name is letters, digits and _ (not starting with a digit, at "
                "most 64)")
    known = [*VARIABLES, HEADER_PREFIX + "NAME", VAR_PREFIX + "NAME"]
    close = difflib.get_close_matches(name, VARIABLES, n=1)
    hint = f"did you mean {{{close[0]}}}? " if close else ""
    return f"unknown template variable {{{name}}} ({hint}known: {', '.join(known)}; {{{{ for a literal brace)"


def check_call_variables(variables: object) -> dict[str, str]:
    """The variables a client gave an outbound call, as ``{name: value}`` checked for use in prompts: a flat
    mapping of at most MAX_CALL_VARIABLES names (VAR_NAME) to strings of at most MAX_CALL_VARIABLE_VALUE
    printable characters on one line. Raises ValueError saying what is wrong (safe to show the client)."""
    if not isinstance(variables, Mapping):
        raise ValueError("variables: expected an object of names to strings")
    if len(variables) > MAX_CALL_VARIABLES:
        raise ValueError(f"variables: expected at most {MAX_CALL_VARIABLES}, got {len(variables)}")
    out: dict[str, str] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not VAR_NAME.fullmatch(name):
            raise ValueError("variables: a name is letters, digits and _, not starting with a digit, at most 64")
        if not isinstance(value, str):
            raise ValueError(f"variables.{name}: expected a string")
        if len(value) > MAX_CALL_VARIABLE_VALUE:
            raise ValueError(f"variables.{name}: expected at most {MAX_CALL_VARIABLE_VALUE} characters")
        if not value.isprintable():
            raise ValueError(f"variables.{name}: expected one line of printable text")
        out[name] = value
    return out


def render(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with each variable replaced by its value in ``variables`` ('' when it has none), once: a
    value is never parsed as a template. Raises :class:`TemplateError` when the text does not parse."""
    out = []
    for part in parse(text):
        out.append(part if isinstance(part, str) else prompt_value(variables.get(part.key, "")))
    return "".join(out)


def prompt_value(value: str) -> str:
    """A value as it may stand in a prompt: one line (identify() removed line ends already), no double
    quote that could end a passage the operator quoted."""
    return " ".join(value.translate(_QUOTES).split())


@dataclass(frozen=True)
class CallContext:
    """One call's context. Wire fields are cleaned text, '' when absent; ``headers`` maps the configured
    spelling of each header present in the INVITE to its value; ``started`` is aware, in the configured
    zone."""

    call_id: str
    started: datetime
    caller_number: str = ""
    caller_name: str = ""
    dialed: str = ""
    redirected_from: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    # An outbound call's variables (check_call_variables), as {var.NAME} sees them; empty for inbound calls.
    call_variables: Mapping[str, str] = field(default_factory=dict)

    def variables(self, defaults: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every template variable's value, keyed as :attr:`Variable.key`; an absent wire value takes its
        default from ``defaults`` (keyed the same way), if any."""
        at = self.started
        offset = at.utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds()) // 60
        zone = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        weekday = _WEEKDAYS[at.weekday()]  # not %A: that follows the process's locale
        values = {
            "call_id": self.call_id,
            "caller_number": self.caller_number, "caller_name": self.caller_name, "dialed": self.dialed,
            "redirected_from": self.redirected_from,
            "now": f"{weekday} {at:%Y-%m-%d %H:%M} {zone}", "date": f"{at:%Y-%m-%d}", "time": f"{at:%H:%M}",
            "weekday": weekday,
        }
        for name, value in self.headers.items():
            values[variable_key(HEADER_PREFIX + name)] = value
        for name, value in self.call_variables.items():
            values[VAR_PREFIX + name] = value
        for key, value in (defaults or {}).items():
            if not values.get(key):
                values[key] = value
        return values

    def to_json(self) -> dict[str, Any]:
        """The context as webhooks and the transcript get it: the values as they came (no defaults)."""
        values: dict[str, Any] = {
            "call_id": self.call_id, "caller_number": self.caller_number, "caller_name": self.caller_name,
            "dialed": self.dialed, "redirected_from": self.redirected_from, "headers": dict(self.headers),
            "started_at": self.started.isoformat(timespec="seconds")}
        if self.call_variables:
            values["variables"] = dict(self.call_variables)
        return values

    def http_headers(self) -> dict[str, str]:
        """X-Sipagent-* headers for a webhook request: only the values present, each percent-encoded UTF-8
        (letters, digits, ``-._~+*#`` as they are), so that any value is a valid, unambiguous header value."""
        return dict(self._http_items())

    def _http_items(self) -> Iterator[tuple[str, str]]:
        for name, header in HTTP_HEADERS.items():
            value = getattr(self, name)
            if value:
                yield header, http_value(value)
        for name, value in self.headers.items():
            if value:
                yield HTTP_HEADER_PREFIX + name, http_value(value)


def http_value(value: str) -> str:
    return quote(value, safe=_HTTP_SAFE)

