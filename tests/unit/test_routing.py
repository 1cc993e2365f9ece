"""The router: a call's identity and account in, a profile name out; first match wins."""

from __future__ import annotations

from sipagent.bridge.routing import Decision, Route, Router, pattern_matches
from sipagent.sip.identity import CallIdentity


def call(dialed: str = "", caller: str = "", **headers: str) -> CallIdentity:
    return CallIdentity(caller_number=caller, dialed=dialed,
                        headers={name.replace("_", "-"): value for name, value in headers.items()})


def test_patterns_are_exact_or_a_prefix_ending_in_a_star() -> None:
    assert pattern_matches("2001", "2001")
    assert not pattern_matches("2001", "20011")
    assert not pattern_matches("2001", "200")
    assert pattern_matches("+4930*", "+49301234")
    assert pattern_matches("+4930*", "+4930")
    assert not pattern_matches("+4930*", "+4940123")
    assert pattern_matches("*", "")
    assert pattern_matches("*", "anything")
    # Characters that mean something to a regular expression mean nothing here.
    assert not pattern_matches("2.01", "2001")
    assert pattern_matches("*97", "*97")


def test_first_matching_route_wins_and_the_default_takes_the_rest() -> None:
    router = Router([Route(agent="sales", dialed="2001"), Route(agent="vip", caller="+4930*"),
                     Route(agent="other", dialed="2001")], default="front")
    assert router.choose(call(dialed="2001", caller="+4930555")) == Decision("sales", "route 1")
    assert router.choose(call(dialed="2002", caller="+4930555")) == Decision("vip", "route 2")
    assert router.choose(call(dialed="2002", caller="+4940555")) == Decision("front", "default")
    assert router.choose(call()) == Decision("front", "default")


def test_header_routes_match_the_value_in_any_spelling_of_the_name() -> None:
    router = Router([Route(agent="sales", header="X-Queue", value="sales"),
                     Route(agent="tagged", header="X-Customer-Id", value="*")])
    assert router.choose(call(X_Queue="sales")).profile == "sales"
    assert router.choose(call(**{"x-queue": "sales"})).profile == "sales"
    assert router.choose(call(X_Queue="Sales")).profile == "default"  # values are compared exactly
    assert router.choose(call(X_Queue="support")).profile == "default"
    assert router.choose(call(X_Customer_Id="")).profile == "tagged"  # present, even empty
    assert router.choose(call()).profile == "default"
    assert router.header_names() == ["X-Queue", "X-Customer-Id"]


def test_all_conditions_of_a_route_must_hold() -> None:
    router = Router([Route(agent="berlin-sales", dialed="2001", caller="+4930*")])
    assert router.choose(call(dialed="2001", caller="+4930123")).profile == "berlin-sales"
    assert router.choose(call(dialed="2001", caller="+4940123")).profile == "default"
    assert router.choose(call(dialed="2002", caller="+4930123")).profile == "default"


def test_accounts_route_by_a_route_or_by_their_own_profile() -> None:
    router = Router([Route(agent="night", account="support", caller="+1*")], default="front",
                    accounts={"sales": "sales", "support": "support"})
    assert router.choose(call(), account="sales") == Decision("sales", "account sales")
    assert router.choose(call(caller="+1555"), account="support") == Decision("night", "route 1")
    assert router.choose(call(caller="+4930"), account="support") == Decision("support", "account support")
    assert router.choose(call(caller="+1555"), account="other") == Decision("front", "default")
    assert router.choose(call(caller="+1555")) == Decision("front", "default")


def test_the_table_lists_routes_in_order_then_accounts_then_the_default() -> None:
    router = Router([Route(agent="sales", dialed="2001"), Route(agent="support", header="X-Queue", value="2nd*")],
                    default="front", accounts={"7001": "sales"})
    assert router.describe() == ["1. dialed 2001 -> sales", "2. header X-Queue: 2nd* -> support",
                                 "then: account 7001 -> sales", "then: otherwise -> front"]
