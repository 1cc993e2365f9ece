"""agent.dtmf and the DTMF built-in tools: enabled like end_call (no url), located errors for bad values."""

from __future__ import annotations

import pytest

from sipagent.config import load_config_text
from sipagent.errors import ConfigError

BASE = "realtime: {provider: local}\nagent:\n"


def error_of(body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE + body, "agent.yaml", {})
    return str(info.value)


def test_dtmf_tools_are_built_in_and_have_defaults() -> None:
    config = load_config_text(BASE + "  tools:\n    - {name: collect_digits}\n    - name: send_dtmf\n"
                              '  dtmf: {terminator: "*", max_digits: 8, tone_ms: 120}\n', "agent.yaml", {})
    assert [tool.name for tool in config.agent.tools] == ["collect_digits", "send_dtmf"]
    dtmf = config.agent.dtmf
    assert (dtmf.terminator, dtmf.max_digits, dtmf.tone_ms) == ("*", 8, 120)
    assert (dtmf.first_digit_timeout_s, dtmf.inter_digit_timeout_s, dtmf.max_wait_s) == (10.0, 5.0, 60.0)
    assert load_config_text(BASE + "  dtmf: {terminator: ''}\n", "a.yaml", {}).agent.dtmf.terminator == ""
    assert dtmf.send_keys == "0123456789*#ABCD"  # every key, unless the profile narrows them
    narrowed = load_config_text(BASE + '  dtmf: {send_keys: "9876543210a"}\n', "a.yaml", {}).agent.dtmf
    assert narrowed.send_keys == "0123456789A"


def test_bad_values_name_line_and_key() -> None:
    assert error_of('  dtmf:\n    terminator: "1"\n') == (
        'agent.yaml:4: agent.dtmf.terminator: expected "#", "*" or "" (none), got "1"')
    assert error_of("  dtmf:\n    max_digits: 65\n") == "agent.yaml:4: agent.dtmf.max_digits: expected 1 to 64, got 65"
    assert error_of("  dtmf:\n    first_digit_timeout_s: 0\n") == (
        "agent.yaml:4: agent.dtmf.first_digit_timeout_s: expected 1 to 60 seconds, got 0")
    assert error_of("  dtmf:\n    inter_digit_timeout_s: 100\n").startswith(
        "agent.yaml:4: agent.dtmf.inter_digit_timeout_s: expected 1 to 30 seconds")
    assert error_of("  dtmf:\n    max_wait_s: 3600\n").startswith("agent.yaml:4: agent.dtmf.max_wait_s:")
    assert error_of("  dtmf:\n    tone_ms: 20\n") == "agent.yaml:4: agent.dtmf.tone_ms: expected 40 to 1000 ms, got 20"
    assert "collect_digits" in error_of("  tools:\n    - {name: lookup}\n")  # the built-ins are listed
    assert error_of('  dtmf:\n    send_keys: "12x"\n') == (
        "agent.yaml:4: agent.dtmf.send_keys: expected some of the keys \"0123456789*#ABCD\", got '12x'")
    assert error_of('  dtmf:\n    send_keys: ""\n').startswith("agent.yaml:4: agent.dtmf.send_keys: expected some")
