"""Which requests the user agent takes on: trusted sources, our own user parts, and a bounded budget of
server transactions (a sans-I/O core: addresses, sizes and keys in, decisions out).

An exposed SIP port receives scanners, toll-fraud bots and floods. The UA asks three questions before it
spends memory on a request: may this address send us requests at all (``SourcePolicy``), is the
Request-URI one of our user parts (``SourcePolicy.is_ours``), and is there room for one more server
transaction from this source (``TransactionBudget``). Anything refused costs no state.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_BRACKETED = re.compile(r"\[([^\]]*)\](/[0-9]{1,3})?")  # [2001:db8::1] or [2001:db8::]/32


def normalise_ip(host: str) -> str:
    """The address as the policy compares it: IPv6 brackets dropped, IPv4-mapped IPv6 as plain IPv4 (a
    dual-stack socket reports IPv4 peers as ``::ffff:a.b.c.d``). Raises ValueError for a non-address."""
    ip = ipaddress.ip_address(host.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_network(text: str) -> IpNetwork | None:
    """An address or CIDR network (``10.0.0.5``, ``10.0.0.0/24``, ``[2001:db8::1]``, ``[2001:db8::]/32``);
    None for a name."""
    text = text.strip()
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed is not None:
        text = bracketed[1] + (bracketed[2] or "")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


class SourcePolicy:
    """Who may send us requests outside a dialog, and which user parts are ours.

    ``networks`` are the resolved registrar addresses and ``sip.trusted_hosts``; ``any_source`` is
    ``sip.allow_any_caller``. An empty policy trusts nobody: a trusted host that did not resolve adds
    nothing, so it fails closed. ``users`` are our user part and aliases; empty means any user part (direct
    mode without a username).
    """

    def __init__(self, networks: Iterable[IpNetwork], *, any_source: bool = False,
                 users: Iterable[str] = ()) -> None:
        self.networks = tuple(dict.fromkeys(networks))
        self.any_source = any_source
        self.users = frozenset(users)
        self._cache: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        """Whether requests from the source address ``host`` may start calls or be answered."""
        if self.any_source:
            return True
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(normalise_ip(host))
        except ValueError:
            return False
        allowed = any(ip in network for network in self.networks)
        if len(self._cache) >= 4096:  # sources are attacker-chosen: keep the memo bounded
            self._cache.clear()
        self._cache[host] = allowed
        return allowed

    def is_ours(self, user: str | None) -> bool:
        """Whether a Request-URI user part addresses us (an INVITE to another number is not ours)."""
        return not self.users or (user or "") in self.users

    def describe(self) -> str:
        if self.any_source:
            return "any source (sip.allow_any_caller)"
        return ", ".join(str(n) for n in self.networks) or "nobody"


@dataclass(frozen=True)
class BudgetLimits:
    transactions: int = 2048
    transactions_per_source: int = 512
    transaction_bytes: int = 32 * 1024 * 1024


class TransactionBudget:
    """Bounds the server transactions the UA holds, in total, per source address and in bytes.

    ``admit`` before creating a transaction returns None or the reason to shed the request; ``release``
    gives the room back when the transaction ends. Keys are whatever identifies the transaction.
    """

    def __init__(self, limits: BudgetLimits) -> None:
        self.limits = limits
        self._held: dict[object, tuple[str, int]] = {}
        self._per_source: dict[str, int] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def admit(self, key: object, source: str, size: int) -> str | None:
        limits = self.limits
        if len(self._held) >= limits.transactions:
            return "transactions"
        if self._per_source.get(source, 0) >= limits.transactions_per_source:
            return "transactions-per-source"
        if self.bytes + size > limits.transaction_bytes:
            return "transaction-bytes"
        self.release(key)  # a key reused by a new transaction replaces the old one's share
        self._held[key] = (source, size)
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self.bytes += size
        return None

    def release(self, key: object) -> None:
        held = self._held.pop(key, None)
        if held is None:
            return
        source, size = held
        count = self._per_source[source] - 1
        if count:
            self._per_source[source] = count
        else:
            del self._per_source[source]
        self.bytes -= size

    def held_by(self, source: str) -> int:
        return self._per_source.get(source, 0)


class LogThrottle:
    """Lets one log line through per (event, source) and ``interval`` seconds, so that a flood of hostile
    requests costs a few lines of log, not one per datagram. The memo is bounded like the sources are not."""

    def __init__(self, interval: float = 60.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], float] = {}
        self.suppressed = 0

    def allow(self, event: str, source: str, now: float) -> bool:
        key = (event, source)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._last) >= self.max_keys:
                self.suppressed += 1
                return False
        self._last[key] = now
        return True
