"""Call limits in the configuration: defaults, floors, and no combination that leaves a dead call up."""

from __future__ import annotations

import pytest

from sipagent.config import load_config_text
from sipagent.errors import ConfigError

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
    assert "agent.max_call_s: expected 0 (no limit) or at least 10 seconds" in error_of(
        BASE + "agent: {max_call_s: 5}\n")
    assert "media.rtp_timeout_s: expected 0 (off) or at least 5 seconds" in error_of(
        BASE + "media: {rtp_timeout_s: 2}\n")


def test_no_configuration_leaves_a_dead_call_up_forever() -> None:
    # Each one alone ends a call whose far end vanished without a BYE.
    for limits in ("media: {rtp_timeout_s: 30}\nagent: {max_call_s: 0, idle_timeout_s: 0}\n",
                   "media: {rtp_timeout_s: 0}\nagent: {max_call_s: 600, idle_timeout_s: 0}\n",
                   "media: {rtp_timeout_s: 0}\nagent: {max_call_s: 0, idle_timeout_s: 20}\n"):
        load_config_text(BASE + limits, "agent.yaml", {})
    message = error_of(BASE + "media: {rtp_timeout_s: 0}\nagent: {max_call_s: 0, idle_timeout_s: 0}\n")
    assert message.startswith("agent.yaml:2: media.rtp_timeout_s: 0 (off) with agent.max_call_s: 0"), message
