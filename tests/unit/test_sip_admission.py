"""Who may send the UA requests, which user parts are ours, and the server transaction budget."""

from __future__ import annotations

import ipaddress

import pytest

from sipagent.sip.admission import (
    LOOPBACK,
    BudgetLimits,
    LogThrottle,
    SourcePolicy,
    TransactionBudget,
    normalise_ip,
    parse_network,
)


def test_policy_trusts_listed_addresses_and_networks_only() -> None:
    policy = SourcePolicy([ipaddress.ip_network("10.0.0.5"), ipaddress.ip_network("192.168.7.0/24")])
    assert policy.trusts("10.0.0.5") and policy.trusts("192.168.7.200")
    assert not policy.trusts("10.0.0.6") and not policy.trusts("127.0.0.1")
    assert policy.trusts("::ffff:10.0.0.5")  # a dual-stack socket's view of an IPv4 peer
    assert not policy.trusts("pbx.example.com")  # a source is an address, never a name to resolve


def test_an_empty_policy_trusts_nobody_and_any_source_everyone() -> None:
    assert not SourcePolicy([]).trusts("127.0.0.1")
    assert SourcePolicy([], any_source=True).trusts("203.0.113.9")
    loopback = SourcePolicy(LOOPBACK)
    assert loopback.trusts("127.0.0.2") and loopback.trusts("::1") and not loopback.trusts("192.0.2.1")


def test_user_parts() -> None:
    ours = SourcePolicy([], users=["2001", "+15551230000"])
    assert ours.is_ours("2001") and ours.is_ours("+15551230000")
    assert not ours.is_ours("9999-premium") and not ours.is_ours(None) and not ours.is_ours("")
    assert SourcePolicy([]).is_ours("anything") and SourcePolicy([]).is_ours(None)


def test_addresses_and_networks_parse() -> None:
    assert normalise_ip("[2001:db8::1]") == "2001:db8::1"
    assert normalise_ip("::ffff:192.0.2.1") == "192.0.2.1"
    with pytest.raises(ValueError):
        normalise_ip("pbx.example.com")
    assert parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("[2001:db8::1]") == ipaddress.ip_network("2001:db8::1/128")
    assert parse_network(" [2001:db8::]/32 ") == ipaddress.ip_network("2001:db8::/32")  # as in a URL
    assert parse_network("[::1]/128") == ipaddress.ip_network("::1/128")
    assert parse_network("[::1]x") is None and parse_network("[::1]/129") is None
    assert parse_network("pbx.example.com") is None


def test_budget_bounds_total_per_source_and_bytes() -> None:
    budget = TransactionBudget(BudgetLimits(transactions=4, transactions_per_source=2, transaction_bytes=1000))
    assert budget.admit("a", "10.0.0.1", 100) is None
    assert budget.admit("b", "10.0.0.1", 100) is None
    assert budget.admit("c", "10.0.0.1", 100) == "transactions-per-source"
    assert budget.admit("c", "10.0.0.2", 900) == "transaction-bytes"
    assert budget.admit("c", "10.0.0.2", 100) is None
    assert budget.admit("d", "10.0.0.3", 100) is None
    assert budget.admit("e", "10.0.0.4", 100) == "transactions"
    budget.release("a")
    budget.release("a")  # twice is harmless
    assert budget.admit("e", "10.0.0.1", 100) is None
    for key in "bcde":
        budget.release(key)
    assert len(budget) == 0 and budget.bytes == 0 and budget.held_by("10.0.0.1") == 0


def test_a_reused_key_replaces_its_share() -> None:
    budget = TransactionBudget(BudgetLimits(transactions=2, transactions_per_source=2, transaction_bytes=1000))
    assert budget.admit("a", "10.0.0.1", 300) is None
    assert budget.admit("a", "10.0.0.1", 400) is None
    assert len(budget) == 1 and budget.bytes == 400 and budget.held_by("10.0.0.1") == 1


def test_log_throttle_lets_one_line_a_minute_per_source() -> None:
    throttle = LogThrottle(interval=60.0, max_keys=3)
    assert throttle.allow("untrusted", "10.0.0.1", 0.0)
    assert not throttle.allow("untrusted", "10.0.0.1", 59.0)
    assert throttle.allow("untrusted", "10.0.0.2", 59.0)
    assert throttle.allow("untrusted", "10.0.0.1", 60.0)
    assert throttle.allow("transactions", "10.0.0.3", 61.0)
    assert not throttle.allow("untrusted", "10.0.0.4", 61.0)  # memo full of recent keys: stays bounded
    assert throttle.allow("untrusted", "10.0.0.4", 200.0)  # old keys expire
    assert throttle.suppressed == 2
