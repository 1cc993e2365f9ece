"""Call limits in the configuration: defaults, floors, and no combination that leaves a dead call up."""

from __future__ import annotations

import pytest

from sipagent.config import MAX_EXPIRES, load_config_text
from sipagent.errors import ConfigError
from sipagent.sip.registration import RegistrationConfig

BASE = "realtime: {provider: local}\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", {})
    return str(info.value)


def test_limits_default_to_an_hour_and_thirty_seconds_of_silence() -> None:
    config = load_config_text(BASE, "agent.yaml", {})
    assert config.agent.max_call_s == 3600 and config.media.rtp_timeout_s == 30
    assert "time limit" in config.agent.max_call_message


def test_limit_floors() -> None:
    assert "agent.max_call_s: expected 0 (no limit) or 10 to 86400 seconds, got 5" in error_of(
        BASE + "agent: {max_call_s: 5}\n")
    assert "media.rtp_timeout_s: expected 0 (off) or 5 to 86400 seconds, got 2" in error_of(
        BASE + "media: {rtp_timeout_s: 2}\n")


def test_no_configuration_leaves_a_dead_call_up_forever() -> None:
    # Each one alone ends a call whose far end vanished without a BYE.
    for limits in ("media: {rtp_timeout_s: 30}\nagent: {max_call_s: 0, idle_timeout_s: 0}\n",
                   "media: {rtp_timeout_s: 0}\nagent: {max_call_s: 600, idle_timeout_s: 0}\n",
                   "media: {rtp_timeout_s: 0}\nagent: {max_call_s: 0, idle_timeout_s: 20}\n"):
        load_config_text(BASE + limits, "agent.yaml", {})
    message = error_of(BASE + "media: {rtp_timeout_s: 0}\nagent: {max_call_s: 0, idle_timeout_s: 0}\n")
    assert message.startswith("agent.yaml:2: media.rtp_timeout_s: 0 (off) with agent.max_call_s: 0"), message


ACCOUNT = "sip:\n  registrar: pbx.example.com\n  accounts:\n    - {username: '2001', expires: %s}\n"


@pytest.mark.parametrize(("text", "expected", "at_ceiling"), [
    # REGISTER expiry: registrars grant far less than RFC 3261's 2**32-1; the registration core holds a day.
    (BASE + "sip: {expires: 36000000}\n",
     "agent.yaml:2: sip.expires: expected 60 to 86400 seconds (a day), got 36000000",
     BASE + "sip: {expires: 86400}\n"),
    (BASE + ACCOUNT % 86401,
     "agent.yaml:5: sip.accounts[0].expires: expected 0 (sip.expires) or 60 to 86400 seconds (a day), got 86401",
     BASE + ACCOUNT % 86400),
    # Session timers: RFC 4028 suggests 1800 s.
    (BASE + "sip: {session_expires: 86401}\n",
     "agent.yaml:2: sip.session_expires: expected sip.min_se (90) to 86400 seconds, got 86401",
     BASE + "sip: {session_expires: 86400}\n"),
    (BASE + "sip: {min_se: 100000, session_expires: 100000}\n",
     "agent.yaml:2: sip.min_se: expected 90 (RFC 4028) to 86400 seconds, got 100000",
     BASE + "sip: {min_se: 86400, session_expires: 86400}\n"),
    # One process is one core, about 300 calls.
    (BASE + "sip: {max_calls: 1000000}\n",
     "agent.yaml:2: sip.max_calls: expected 1 to 2000 (one process holds about 300 calls per core: run more "
     "processes for more), got 1000000",
     BASE + "sip: {max_calls: 2000}\n"),
    (BASE + "sip:\n  limits: {transactions: 100001}\n",
     "agent.yaml:3: sip.limits.transactions: expected 16 to 100000, got 100001",
     BASE + "sip:\n  limits: {transactions: 100000}\n"),
    (BASE + "sip:\n  limits: {transactions_per_source: 100001}\n",
     "agent.yaml:3: sip.limits.transactions_per_source: expected 4 to 100000, got 100001",
     BASE + "sip:\n  limits: {transactions_per_source: 100000}\n"),
    (BASE + "sip:\n  limits: {tcp_connections: 10001}\n",
     "agent.yaml:3: sip.limits.tcp_connections: expected 1 to 10000, got 10001",
     BASE + "sip:\n  limits: {tcp_connections: 10000}\n"),
    (BASE + "sip:\n  limits: {tcp_connections_per_source: 10001}\n",
     "agent.yaml:3: sip.limits.tcp_connections_per_source: expected 1 to 10000, got 10001",
     BASE + "sip:\n  limits: {tcp_connections_per_source: 10000}\n"),
    (BASE + "sip:\n  limits: {tcp_idle_s: 36000000}\n",
     "agent.yaml:3: sip.limits.tcp_idle_s: expected a number of seconds above 0 and at most 86400, got 36000000",
     BASE + "sip:\n  limits: {tcp_idle_s: 86400}\n"),
    (BASE + "sip:\n  limits: {tcp_message_s: 61}\n",
     "agent.yaml:3: sip.limits.tcp_message_s: expected a number of seconds above 0 and at most 60, got 61",
     BASE + "sip:\n  limits: {tcp_message_s: 60}\n"),
    (BASE + "media: {rtp_timeout_s: 86400.5}\n",
     "agent.yaml:2: media.rtp_timeout_s: expected 0 (off) or 5 to 86400 seconds, got 86400.5",
     BASE + "media: {rtp_timeout_s: 86400}\n"),
    ("realtime: {provider: local, max_session_s: 330000}\n",
     "agent.yaml:1: realtime.max_session_s: expected 1 to 86400 seconds, got 330000",
     "realtime: {provider: local, max_session_s: 86400}\n"),
    (BASE + "agent: {max_call_s: 360000}\n",
     "agent.yaml:2: agent.max_call_s: expected 0 (no limit) or 10 to 86400 seconds, got 360000",
     BASE + "agent: {max_call_s: 86400}\n"),
    (BASE + "agents:\n  sales: {max_call_s: 1e9}\n",
     "agent.yaml:3: agents.sales.max_call_s: expected 0 (no limit) or 10 to 86400 seconds, got 1000000000",
     BASE + "agents:\n  sales: {max_call_s: 86400}\n"),
    (BASE + "agent: {idle_timeout_s: 200000}\n",
     "agent.yaml:2: agent.idle_timeout_s: expected 0 (never prompt) or 1 to 86400 seconds, got 200000",
     BASE + "agent: {idle_timeout_s: 86400}\n"),
    (BASE + "agent:\n  barge_in: {protect_greeting_ms: 10000000}\n",
     "agent.yaml:3: agent.barge_in.protect_greeting_ms: expected 0 to 60000 ms, got 10000000",
     BASE + "agent:\n  barge_in: {protect_greeting_ms: 60000}\n"),
])
def test_ceilings_refuse_a_typo_and_take_the_ceiling(text: str, expected: str, at_ceiling: str) -> None:
    """A value no deployment needs (a typo, an extra zero or three) is refused with its line, not taken."""
    assert error_of(text) == expected
    load_config_text(at_ceiling, "agent.yaml", {})


def test_the_expires_ceiling_is_what_the_registration_core_holds() -> None:
    assert RegistrationConfig.max_expires == MAX_EXPIRES
