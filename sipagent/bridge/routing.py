"""Which agent profile answers a call: an ordered list of routes, the first that matches wins.

A plain object with no I/O: a call's identity (what its INVITE said, see sipagent.sip.identity) and the
account it came in on go in, a profile name comes out. Each route names the profile and one or more
conditions, all of which must hold:

- ``dialed``: the number or extension the caller dialed;
- ``caller``: the caller's number;
- ``header`` + ``value``: a SIP header the PBX set (``X-Queue: sales``);
- ``account``: the ``sip.accounts`` entry the call was addressed to.

A pattern is matched exactly, or as a prefix when it ends in ``*`` (``"+4930*"``, ``"800*"``); a lone
``*`` matches any value (a header route: any call that carries the header). Nothing else is special: no
regular expressions (a route is read by people who run a PBX, and a pattern of theirs must not be able to
hang the process). When no route matches, the profile of the call's account answers, else the default one
(the config makes a last route without conditions that default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sipagent.bridge.settings import DEFAULT_PROFILE
from sipagent.sip.identity import CallIdentity

WILDCARD = "*"


@dataclass
class Route:
    """One entry of ``routes:`` (the config's schema): conditions, all of which must hold, and the profile."""

    agent: str = ""
    dialed: str = ""
    caller: str = ""
    header: str = ""
    value: str = ""
    account: str = ""

    @property
    def conditions(self) -> dict[str, str]:
        """The conditions this route sets, by key (an empty mapping: it matches every call)."""
        keys = {"dialed": self.dialed, "caller": self.caller, "account": self.account}
        if self.header:
            keys["header"] = f"{self.header}: {self.value}"
        return {key: text for key, text in keys.items() if text}

    def describe(self) -> str:
        conditions = " and ".join(f"{key} {text}" for key, text in self.conditions.items())
        return f"{conditions or 'any call'} -> {self.agent}"


def pattern_matches(pattern: str, value: str) -> bool:
    """``pattern`` is ``value`` exactly, or ends in ``*`` and ``value`` starts with what comes before it."""
    if pattern.endswith(WILDCARD):
        return value.startswith(pattern[:-1])
    return value == pattern


@dataclass(frozen=True)
class Decision:
    """The router's answer: the profile, and why (``route 2``, ``account support`` or ``default``)."""

    profile: str
    reason: str = "default"


class Router:
    """The routes in order, the profile of each account, and the profile for calls nothing else chose.

    Routes are tried first, in order; a call no route matches goes to the profile of the account it came
    in on (``sip.accounts[].agent``), else to the default.
    """

    def __init__(self, routes: Sequence[Route], default: str = DEFAULT_PROFILE,
                 accounts: Mapping[str, str] | None = None) -> None:
        self.routes = tuple(routes)
        self.default = default
        self.accounts = dict(accounts or {})

    def choose(self, identity: CallIdentity, account: str = "") -> Decision:
        for index, route in enumerate(self.routes):
            if _matches(route, identity, account):
                return Decision(route.agent, f"route {index + 1}")
        if account in self.accounts:
            return Decision(self.accounts[account], f"account {account}")
        return Decision(self.default)

    def header_names(self) -> list[str]:
        """The SIP headers the routes read: the UA must keep them in each call's identity."""
        names: dict[str, str] = {}
        for route in self.routes:
            if route.header:
                names.setdefault(route.header.lower(), route.header)
        return list(names.values())

    def describe(self) -> list[str]:
        """The table, one line per step, in the order they are tried."""
        lines = [f"{index + 1}. {route.describe()}" for index, route in enumerate(self.routes)]
        lines += [f"then: account {account} -> {profile}" for account, profile in self.accounts.items()]
        lines.append(f"then: otherwise -> {self.default}")
        return lines


def _matches(route: Route, identity: CallIdentity, account: str) -> bool:
    if route.dialed and not pattern_matches(route.dialed, identity.dialed):
        return False
    if route.caller and not pattern_matches(route.caller, identity.caller_number):
        return False
    if route.account and route.account != account:
        return False
    if route.header:
        value = _header(identity.headers, route.header)
        if value is None or not pattern_matches(route.value, value):
            return False  # a header route never matches a call without the header, not even value "*"
    return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A kept header's value by name, in any spelling (SIP header names are case-insensitive)."""
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)
