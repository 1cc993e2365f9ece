"""Session timers (RFC 4028) with a fake clock: negotiation, who refreshes, when, and when to give up."""

from __future__ import annotations

import pytest

from sipagent.errors import SipParseError
from sipagent.sip.message import Headers
from sipagent.sip.session_timer import (
    Accepted,
    Expire,
    IntervalTooSmall,
    Refresh,
    SessionExpires,
    SessionTimer,
    TimerPolicy,
    negotiate,
)

POLICY = TimerPolicy(session_expires=1800, min_se=90)
ASTERISK = {"Supported": "100rel, timer, replaces, norefersub", "Session-Expires": "1800", "Min-SE": "90",
            "Allow": "OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK, REFER"}
PLAIN = {"Allow": "INVITE, ACK, BYE, CANCEL, OPTIONS"}  # an RFC 3261 UA that knows nothing of timers


def headers(fields: dict[str, str] | None = None, **more: str) -> Headers:
    out = Headers()
    for name, value in {**(fields or {}), **{k.replace("_", "-"): v for k, v in more.items()}}.items():
        out.add(name, value)
    return out


# -- negotiation (RFC 4028 9) ---------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "interval", "refresher", "require"), [
    # The UAC supports timers and leaves the refresher open: the PBX refreshes.
    ({"Supported": "timer", "Session-Expires": "1800"}, 1800, "peer", True),
    ({"Supported": "timer", "Session-Expires": "600;refresher=uac"}, 600, "peer", True),
    ({"Supported": "timer", "Session-Expires": "600;refresher=uas"}, 600, "us", True),
    ({"Require": "timer", "Session-Expires": "90"}, 90, "peer", True),
    # Longer than we agree to: shortened to sip.session_expires, but never below the request's Min-SE.
    ({"Supported": "timer", "Session-Expires": "7200"}, 1800, "peer", True),
    ({"Supported": "timer", "Session-Expires": "7200", "Min-SE": "3600"}, 3600, "peer", True),
    # Timer support but no interval asked for: we run ours and refresh it ourselves.
    ({"Supported": "timer"}, 1800, "us", True),
    ({"Supported": "timer", "Min-SE": "2000"}, 2000, "us", True),
    # No timer support: a proxy's interval or none at all; we refresh, and Require nothing.
    ({"Session-Expires": "600"}, 600, "us", False),
    ({"Session-Expires": "600;refresher=uac"}, 600, "us", False),
    ({}, 1800, "us", False),
    # Too small from a UAC that knows nothing of timers: raised to our minimum instead of failing the call.
    ({"Session-Expires": "60"}, 90, "us", False),
])
def test_negotiation_table(fields: dict[str, str], interval: int, refresher: str, require: bool) -> None:
    assert negotiate(headers(fields), POLICY) == Accepted(interval, refresher, require)  # type: ignore[arg-type]


def test_below_our_minimum_is_422_with_our_min_se() -> None:
    with pytest.raises(IntervalTooSmall) as caught:
        negotiate(headers(Supported="timer", Session_Expires="90"), TimerPolicy(1800, 600))
    assert caught.value.min_se == 600
    with pytest.raises(IntervalTooSmall) as caught:
        negotiate(headers(Supported="timer", Session_Expires="60", Min_SE="60"), POLICY)
    assert caught.value.min_se == 90
    # The retry with the Min-SE we named is accepted.
    assert negotiate(headers(Supported="timer", Session_Expires="600", Min_SE="600"), TimerPolicy(1800, 600)) \
        == Accepted(600, "peer", True)


@pytest.mark.parametrize("fields", [
    {"Session-Expires": "soon"}, {"Session-Expires": "-5"}, {"Session-Expires": "90;refresher=me"},
    {"Session-Expires": "12345678901"}, {"Min-SE": "x"},
])
def test_unreadable_values_are_parse_errors(fields: dict[str, str]) -> None:
    with pytest.raises(SipParseError):
        negotiate(headers(fields), POLICY)


def test_session_expires_parsing_and_compact_form() -> None:
    assert SessionExpires.parse(" 1800 ; Refresher=UAS ") == SessionExpires(1800, "uas")
    assert SessionExpires.parse("90") == SessionExpires(90, None)
    assert negotiate(headers({"k": "timer", "x": "300"}), POLICY) == Accepted(300, "peer", True)


def test_2xx_headers_name_the_refresher_from_the_answering_side() -> None:
    assert Accepted(1800, "peer", True).headers() == [("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    assert Accepted(90, "us", True).headers() == [("Session-Expires", "90;refresher=uas"), ("Require", "timer")]
    assert Accepted(1800, "us", False).headers() == [("Session-Expires", "1800;refresher=uas")]


# -- the peer refreshes ------------------------------------------------------------------------------

def started(fields: dict[str, str], now: float = 0.0, policy: TimerPolicy = POLICY,
            random: float = 0.5) -> SessionTimer:
    timer = SessionTimer(policy, random=lambda: random)
    timer.start(timer.negotiate(headers(fields)), now)
    return timer


@pytest.mark.parametrize(("interval", "ends"), [(90, 60.0), (300, 268.0), (1800, 1768.0)])
def test_without_a_refresh_the_session_ends_min_32_or_a_third_before_expiry(interval: int, ends: float) -> None:
    timer = started({"Supported": "timer", "Session-Expires": str(interval)}, now=10.0)
    assert timer.refresher == "peer" and timer.next_deadline == 10.0 + ends
    assert timer.timeout(10.0 + ends - 0.01) == []
    assert timer.timeout(10.0 + ends) == [Expire("session-expired")]
    assert timer.state == "expired" and timer.next_deadline is None and timer.timeout(5000.0) == []


def test_each_refresh_restarts_the_interval_and_renegotiates_it() -> None:
    timer = started({"Supported": "timer", "Session-Expires": "90"})
    assert timer.timeout(45.0) == []  # the peer's job: nothing to send
    timer.start(timer.negotiate(headers(Supported="timer", Session_Expires="120")), 50.0)
    assert timer.interval == 120 and timer.next_deadline == 50.0 + 120 - 32
    assert timer.timeout(60.0) == []  # the old expiry has passed harmlessly
    # A refresh can hand the job to us.
    timer.start(timer.negotiate(headers(Supported="timer", Session_Expires="100;refresher=uas")), 100.0)
    assert timer.refresher == "us" and timer.next_deadline == 150.0


def test_stop_clears_every_deadline() -> None:
    timer = started({"Supported": "timer", "Session-Expires": "90"})
    timer.stop()
    assert timer.next_deadline is None and timer.timeout(1000.0) == []


# -- we refresh ------------------------------------------------------------------------------------

def test_we_refresh_at_half_the_interval_by_update_when_the_peer_allows_it() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"}, now=5.0)
    assert timer.next_deadline == 50.0
    assert timer.timeout(49.9) == []
    assert timer.timeout(50.0) == [Refresh("UPDATE")]
    assert timer.state == "refreshing" and timer.timeout(51.0) == []  # never two at once
    assert timer.refresh_headers() == [("Session-Expires", "90;refresher=uac"), ("Min-SE", "90")]
    assert timer.next_deadline == 5.0 + 60  # only the end is due while the refresh is out
    assert timer.on_response(200, headers(Session_Expires="90;refresher=uac", Require="timer"), 50.2) == []
    assert timer.state == "running" and timer.next_deadline == 50.2 + 45


def test_without_update_in_allow_we_refresh_by_reinvite_and_keep_refreshing_a_timerless_peer() -> None:
    timer = started(PLAIN, now=0.0, policy=TimerPolicy(90, 90))
    assert timer.interval == 90 and timer.refresher == "us"
    assert timer.timeout(45.0) == [Refresh("INVITE")]
    # Its 2xx says nothing of timers, as a UA without them would: our keep-alive goes on.
    assert timer.on_response(200, headers(PLAIN), 45.1) == []
    assert timer.state == "running" and timer.next_deadline == 45.1 + 45


def test_a_2xx_without_session_expires_from_a_timer_aware_peer_turns_the_timer_off() -> None:
    timer = started({"Supported": "timer", "Session-Expires": "90;refresher=uas"})
    timer.timeout(45.0)
    timer.on_response(200, headers(Supported="timer"), 45.1)
    assert timer.state == "off" and timer.next_deadline is None


def test_the_2xx_to_our_refresh_can_make_the_peer_the_refresher() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    timer.timeout(45.0)
    timer.on_response(200, headers(Session_Expires="120;refresher=uas", Require="timer"), 46.0)
    assert timer.refresher == "peer" and timer.interval == 120 and timer.next_deadline == 46.0 + 88


def test_422_is_retried_with_the_min_se_it_names_a_bounded_number_of_times() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    assert timer.timeout(45.0) == [Refresh("UPDATE")]
    assert timer.on_response(422, headers(Min_SE="300"), 45.1) == [Refresh("UPDATE")]
    assert timer.refresh_headers() == [("Session-Expires", "300;refresher=uac"), ("Min-SE", "300")]
    assert timer.interval == 90 and timer.next_deadline == 60.0  # asked for, not in force: the end stays
    assert timer.on_response(422, headers(Min_SE="600"), 45.2) == [Refresh("UPDATE")]
    assert timer.on_response(422, headers(Min_SE="900"), 45.3) == []  # three sent: wait, retry later
    assert timer.state == "running" and timer.next_deadline == pytest.approx(54.3)
    assert timer.timeout(54.3) == [Refresh("UPDATE")]
    assert timer.on_response(200, headers(Session_Expires="600;refresher=uac"), 54.4) == []
    assert timer.interval == 600 and timer.next_deadline == pytest.approx(354.4)
    # A 422 whose Min-SE does not raise the interval is not retried at once either.
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    timer.timeout(45.0)
    assert timer.on_response(422, headers(Min_SE="90"), 45.1) == []


def test_491_is_retried_after_the_random_delay_of_rfc_3261_14_1() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"}, random=0.25)
    timer.timeout(45.0)
    assert timer.on_response(491, headers(), 45.0) == []
    assert timer.next_deadline == 45.5  # 0.25 of the 0-2 s a UA that does not own the Call-ID waits
    assert timer.timeout(45.5) == [Refresh("UPDATE")]
    assert timer.on_response(200, headers(Session_Expires="90;refresher=uac"), 45.6) == []


def test_405_to_update_falls_back_to_reinvite() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    timer.timeout(45.0)
    assert timer.on_response(405, headers(Allow="INVITE, ACK, BYE"), 45.1) == [Refresh("INVITE")]
    assert timer.method == "INVITE"


@pytest.mark.parametrize("status", [408, 481, 0])
def test_408_481_or_no_answer_ends_the_call(status: int) -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    timer.timeout(45.0)
    assert timer.on_response(status, None if status == 0 else headers(), 50.0) == [Expire("refresh-failed")]
    assert timer.next_deadline is None


def test_other_failures_are_retried_until_the_session_ends() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    assert timer.timeout(45.0) == [Refresh("UPDATE")]
    assert timer.on_response(500, headers(), 45.1) == []
    assert timer.next_deadline == pytest.approx(54.1)  # a tenth of the interval later
    assert timer.timeout(54.1) == [Refresh("UPDATE")]
    assert timer.on_response(503, headers(), 54.2) == []
    assert timer.timeout(60.0) == [Expire("session-expired")]


def test_a_late_answer_after_the_peer_refreshed_changes_nothing_but_a_2xx_still_counts() -> None:
    timer = started({**ASTERISK, "Session-Expires": "90;refresher=uas"})
    timer.timeout(45.0)
    timer.start(timer.negotiate(headers(ASTERISK, Session_Expires="90;refresher=uas")), 46.0)  # their re-INVITE
    assert timer.on_response(481, headers(), 47.0) == [] and timer.state == "running"
    assert timer.on_response(200, headers(Session_Expires="90;refresher=uac"), 48.0) == []
    assert timer.next_deadline == 48.0 + 45


def test_what_the_peer_tells_us_is_learned_from_every_message() -> None:
    timer = SessionTimer(POLICY)
    timer.learn(headers(PLAIN))
    assert not timer.peer_supports_timer and timer.method == "INVITE"
    timer.learn(headers(Allow="INVITE, UPDATE", Supported="timer", Min_SE="120"))
    assert timer.peer_supports_timer and timer.method == "UPDATE" and timer.min_se == 120
    timer.learn(headers(Min_SE="garbage"))  # a bad value in a message we answer elsewhere: ignored here
    assert timer.min_se == 120
