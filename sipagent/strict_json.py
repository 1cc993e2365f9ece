"""JSON from a peer, read strictly: an object names each key once, and every number is a finite one.

Python's ``json`` keeps the last of two equal keys (another reader of the same text may keep the first: what
one side checked is then not what the other acts on) and accepts ``NaN``, ``Infinity`` and ``1e400`` (which
it would write back as ``NaN``: not JSON). Used for what a client or the model sends: the control API's
requests and tool arguments.
"""

from __future__ import annotations

import json
import math
from typing import Any


class DuplicateKey(ValueError):
    """An object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key[:40]!r} is given twice")
        self.key = key


def loads(text: str | bytes) -> Any:
    """The value of ``text``; DuplicateKey, or ValueError for anything else that is not strict JSON (and
    RecursionError for nesting deeper than the interpreter's stack, as ``json.loads``)."""
    return json.loads(text, object_pairs_hook=_unique, parse_constant=_constant, parse_float=_finite)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise DuplicateKey(key)
        value[key] = item
    return value


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is too large for a number")
    return number


__all__ = ["DuplicateKey", "loads"]
