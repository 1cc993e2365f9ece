"""Keypad entry for the ``collect_digits`` tool: a digit collector (pure) and the tools' argument checks.

A plain object, no I/O: the bridge feeds it the caller's digits (RFC 4733 or SIP INFO, already
de-duplicated) and the current time, tells it when the agent's prompt stopped playing, and asks it when it
next needs waking up. It answers with a :class:`Collected` once the entry is over:

    collecting --terminator key-------------------> done (ended_by "terminator", the key not included)
    collecting --max_digits keys------------------> done ("count")
    collecting --no key for a timeout------------->  done ("timeout", with the digits so far)

Timeouts, and why they start where they do:

- ``first_digit_timeout_s`` counts from the end of the agent's prompt, not from the tool call: the model
  calls the tool while it is still asking ("please key in your order number…"), and nobody can be expected
  to type before they have heard what to type. A key pressed during the prompt counts (and barges in).
- ``inter_digit_timeout_s`` counts from the last key, prompt or not.
- ``max_wait_s`` bounds the whole entry from the tool call, so a prompt that never ends (a model that
  keeps talking) cannot hold the tool open forever.

Keys typed before the tool was called are the bridge's business (``typed_ahead``): see CallBridge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

DTMF_KEYS = "0123456789*#ABCD"
MAX_DIGITS = 64  # the most one entry may ask for: an account number, never a free-text channel
MAX_SEND_DIGITS = 32  # the longest string send_dtmf sends in one call (an IVR path plus a PIN)
TERMINATORS = ("#", "*", "")  # "" = no terminator: the entry ends by count or timeout

EndedBy = Literal["terminator", "count", "timeout"]


class ToolArgumentError(ValueError):
    """A tool argument the model sent is unusable; the message goes back to the model as the tool's error."""


@dataclass(frozen=True)
class CollectSpec:
    """One entry's rules: the configured defaults (``agent.dtmf``), narrowed by the model's arguments."""

    max_digits: int = 16
    terminator: str = "#"
    first_digit_timeout_s: float = 10.0
    inter_digit_timeout_s: float = 5.0
    max_wait_s: float = 60.0


@dataclass(frozen=True)
class Collected:
    digits: str
    ended_by: EndedBy

    def output(self) -> dict[str, Any]:
        """The tool result the model reads."""
        return {"digits": self.digits, "ended_by": self.ended_by, "count": len(self.digits)}


class DigitCollector:
    """Gathers one keypad entry; ``result`` is None while it goes on."""

    def __init__(self, spec: CollectSpec, now: float) -> None:
        self.spec = spec
        self.started = now
        self.digits = ""
        self.result: Collected | None = None
        self._prompt_over_at: float | None = None
        self._last_key_at: float | None = None

    def prompt_finished(self, now: float) -> None:
        """The agent stopped talking (its prompt played out, or a key cut it): the first-digit timer starts.
        Only the first call counts."""
        if self._prompt_over_at is None:
            self._prompt_over_at = now

    @property
    def prompt_over(self) -> bool:
        return self._prompt_over_at is not None

    def key(self, key: str, now: float) -> Collected | None:
        """One key pressed; the result if it ended the entry. Keys after the end are not taken (None)."""
        if self.result is not None:
            return None
        key = key.upper()
        if len(key) != 1 or key not in DTMF_KEYS:
            return None
        timed_out = self.poll(now)  # a key that comes after a deadline does not revive the entry
        if timed_out is not None:
            return timed_out
        self._last_key_at = now
        if self.spec.terminator and key == self.spec.terminator:
            return self._end("terminator")
        self.digits += key
        if len(self.digits) >= self.spec.max_digits:
            return self._end("count")
        return None

    def keys(self, keys: Iterable[tuple[str, float]]) -> Collected | None:
        for key, at in keys:
            done = self.key(key, at)
            if done is not None:
                return done
        return None

    @property
    def deadline(self) -> float:
        """When the entry times out unless a key comes first (``inf`` when only a key or the prompt's end can
        start a timer, which never happens since ``max_wait_s`` always applies)."""
        spec = self.spec
        due = self.started + spec.max_wait_s
        if self._last_key_at is not None:
            due = min(due, self._last_key_at + spec.inter_digit_timeout_s)
        elif self._prompt_over_at is not None:
            due = min(due, self._prompt_over_at + spec.first_digit_timeout_s)
        return due

    def poll(self, now: float) -> Collected | None:
        """The result if the entry timed out by ``now``."""
        if self.result is None and now >= self.deadline:
            return self._end("timeout")
        return self.result

    def _end(self, why: EndedBy) -> Collected:
        self.result = Collected(self.digits, why)
        return self.result


# ---------------------------------------------------------------- the model's arguments (hostile)

# Bounds on what the model may ask for: it is steered by the caller's words, so a caller could talk it
# into asking for a 10-hour wait or a 10 000-digit string.
FIRST_DIGIT_TIMEOUT_S = (1.0, 60.0)
INTER_DIGIT_TIMEOUT_S = (1.0, 30.0)


def collect_spec(arguments: Mapping[str, Any], defaults: CollectSpec) -> CollectSpec:
    """``collect_digits``'s arguments checked and merged over the configured defaults; raises
    ToolArgumentError with a message the model can act on."""
    _no_unknown(arguments, {"max_digits", "terminator", "timeout_s", "inter_digit_timeout_s"})
    max_digits = defaults.max_digits
    if arguments.get("max_digits") is not None:
        max_digits = _integer(arguments["max_digits"], "max_digits", 1, MAX_DIGITS)
    terminator = defaults.terminator
    if arguments.get("terminator") is not None:
        value = arguments["terminator"]
        if not isinstance(value, str) or value not in TERMINATORS:
            raise ToolArgumentError('terminator must be "#", "*" or "" (none)')
        terminator = value
    first = defaults.first_digit_timeout_s
    if arguments.get("timeout_s") is not None:
        first = _number(arguments["timeout_s"], "timeout_s", *FIRST_DIGIT_TIMEOUT_S)
    inter = defaults.inter_digit_timeout_s
    if arguments.get("inter_digit_timeout_s") is not None:
        inter = _number(arguments["inter_digit_timeout_s"], "inter_digit_timeout_s", *INTER_DIGIT_TIMEOUT_S)
    return CollectSpec(max_digits, terminator, first, inter, defaults.max_wait_s)


def send_digits(arguments: Mapping[str, Any], allowed: str = DTMF_KEYS) -> str:
    """``send_dtmf``'s ``digits``, checked: 1 to MAX_SEND_DIGITS keys of 0-9 * # A-D (upper-cased), all of them
    in ``allowed`` (the profile's ``dtmf.send_keys``)."""
    _no_unknown(arguments, {"digits"})
    digits = arguments.get("digits")
    if isinstance(digits, int | float) and not isinstance(digits, bool):
        # Not taken as a number: its leading zeros (and any * or #) would be gone before we saw it.
        raise ToolArgumentError('digits must be a string such as "0044" (a number loses its leading zeros)')
    if not isinstance(digits, str) or not digits:
        raise ToolArgumentError('digits is required: a string of keys such as "1" or "4711#"')
    if len(digits) > MAX_SEND_DIGITS:
        raise ToolArgumentError(f"digits must be at most {MAX_SEND_DIGITS} keys")
    bad = sorted({c for c in digits.upper() if c not in DTMF_KEYS})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ToolArgumentError(f"digits may only contain 0-9, *, # and A-D; not {shown}")
    refused = sorted({c for c in digits.upper() if c not in allowed})
    if refused:
        # The operator's choice (e.g. no * or #: no feature code of the PBX's): the model learns what it may send.
        raise ToolArgumentError(f"this line may only send the keys {' '.join(allowed)}; not "
                                f"{', '.join(repr(c) for c in refused[:5])}")
    return digits.upper()


def _no_unknown(arguments: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(str(key)[:40] for key in arguments if key not in known)
    if unknown:
        raise ToolArgumentError(f"unknown arguments {unknown[:5]}; expected {sorted(known)}")


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ToolArgumentError(f"{name} must be a whole number from {low} to {high}")
    if not low <= value <= high:
        raise ToolArgumentError(f"{name} must be from {low} to {high}, not {value}")
    return value


def _number(value: object, name: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ToolArgumentError(f"{name} must be a number of seconds from {low:g} to {high:g}")
    if not low <= value <= high:
        raise ToolArgumentError(f"{name} must be from {low:g} to {high:g} seconds, not {value:g}")
    return float(value)
