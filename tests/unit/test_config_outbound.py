"""``outbound:``, ``control:`` and the profiles' ``answering_machine:``: defaults, inheritance, errors with
file:line:key, and the control token kept out of errors, summaries and reprs."""

from __future__ import annotations

import pytest

from sipagent.config import Config, load_config_text
from sipagent.errors import ConfigError

BASE = """\
realtime: {provider: local}
sip:
  registrar: pbx.example.com
  username: "2001"
  password: pw
  accounts:
    - {username: "2002", password: pw2, name: sales-line}
"""
TOKEN = "0123456789abcdef0123"


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(text, "agent.yaml", env or {})


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


def test_defaults_keep_the_api_off_and_a_small_campaign() -> None:
    config = load(BASE)
    assert config.control.listen_address is None
    assert config.outbound_max_calls == 4
    assert config.outbound.calls_per_second == 1.0 and config.outbound.ring_timeout_s == 30.0
    outbound_account = config.outbound_account()
    assert outbound_account is not None and outbound_account.name == "2001"  # the first account
    amd = config.default_profile().answering_machine
    assert amd.detect and amd.on_machine == "hang_up" and amd.greeting_max_s == 3.5 and amd.beep
    assert "control API off" in config.summary()


def test_default_max_calls_stays_within_sip_max_calls() -> None:
    config = load(BASE.replace("  username:", "  max_calls: 2\n  username:"))
    assert config.outbound_max_calls == 2


def test_outbound_settings_and_their_errors() -> None:
    config = load(BASE + "outbound: {max_calls: 3, calls_per_second: 0.5, ring_timeout_s: 20, account: sales-line}\n")
    outbound_account = config.outbound_account()
    assert outbound_account is not None and outbound_account.username == "2002"
    assert config.outbound_max_calls == 3
    assert error_of(BASE + "outbound:\n  max_calls: 50\n") == \
        "agent.yaml:9: outbound.max_calls: expected 1 to sip.max_calls (20), got 50"
    assert error_of(BASE + "outbound:\n  calls_per_second: 0\n") == \
        "agent.yaml:9: outbound.calls_per_second: expected 0.01 to 100, got 0"
    assert "outbound.ring_timeout_s: expected 5 to 300 seconds, got 1" in \
        error_of(BASE + "outbound: {ring_timeout_s: 1}\n")
    assert 'outbound.account: unknown account "nope" (accounts: 2001, sales-line)' in \
        error_of(BASE + "outbound: {account: nope}\n")
    assert 'outbound.profile: unknown profile "sales"' in error_of(BASE + "outbound: {profile: sales}\n")
    assert load(BASE + "agents: {sales: {}}\noutbound: {profile: sales}\n").outbound.profile == "sales"


def test_control_listen_defaults_to_loopback_and_needs_a_token() -> None:
    config = load(BASE + f"control: {{listen: '9200', token: {TOKEN}}}\n")
    address = config.control.listen_address
    assert address is not None and (address.host, address.port) == ("127.0.0.1", 9200)
    config = load(BASE + f"control: {{listen: ':9200', token: {TOKEN}}}\n")
    assert str(config.control.listen_address) == "127.0.0.1:9200"
    config = load(BASE + f"control: {{listen: '0.0.0.0:9300', token: {TOKEN}}}\n")  # written out: allowed
    assert str(config.control.listen_address) == "0.0.0.0:9300"
    assert "http://0.0.0.0:9300/v1/calls (NOT loopback" in config.summary()
    assert "control.token: required when control.listen is set" in error_of(BASE + "control: {listen: '9200'}\n")
    assert "control.listen: expected a port" in error_of(BASE + f"control: {{listen: 'pbx:99999', token: {TOKEN}}}\n")


def test_control_token_from_the_environment_never_shown() -> None:
    config = load(BASE + "control: {listen: '9200'}\n", {"SIPAGENT_CONTROL_TOKEN": TOKEN})
    assert config.control.token == TOKEN
    for text in (repr(config.control), repr(config), config.summary()):
        assert TOKEN not in text
    assert "http://127.0.0.1:9200/v1/calls" in config.summary()
    short = error_of(BASE + "control: {listen: '9200', token: hunter2}\n")
    assert "control.token: expected at least 16" in short and "hunter2" not in short
    # a value of the wrong type is not echoed either
    assert "hunter2" not in error_of(BASE + "control: {listen: '9200', token: [hunter2]}\n")


def test_answering_machine_is_inherited_key_by_key() -> None:
    text = BASE + """\
agent:
  answering_machine: {on_machine: leave_message, message: "Hi {var.name}, please call us back.", greeting_max_s: 4}
agents:
  sales:
    answering_machine: {beep: false}
  quiet:
    answering_machine: {detect: false}
"""
    config = load(text)
    sales = config.agents["sales"].answering_machine
    assert (sales.on_machine, sales.greeting_max_s, sales.beep) == ("leave_message", 4.0, False)
    assert sales.message == "Hi {var.name}, please call us back."
    assert not config.agents["quiet"].answering_machine.detect
    assert config.agents["quiet"].answering_machine.on_machine == "leave_message"


def test_answering_machine_errors_name_file_line_and_key() -> None:
    assert error_of(BASE + "agent:\n  answering_machine: {on_machine: leave_message}\n") == \
        ("agent.yaml:9: agent.answering_machine.message: required when on_machine is leave_message: the text "
         "left after the beep")
    assert "agent.answering_machine.on_machine: expected one of hang_up, leave_message, got \"voicemail\"" in \
        error_of(BASE + "agent:\n  answering_machine: {on_machine: voicemail}\n")
    assert "agents.s.answering_machine.greeting_max_s: expected 1 to 10 seconds, got 0.2" in \
        error_of(BASE + "agents:\n  s:\n    answering_machine: {greeting_max_s: 0.2}\n")
    assert "agent.answering_machine.timeout_s: expected more than greeting_max_s (3.5)" in \
        error_of(BASE + "agent:\n  answering_machine: {timeout_s: 3}\n")
    # the message is a template, checked at load like the greeting, at its line
    bad = BASE + "agent:\n  answering_machine:\n    on_machine: leave_message\n    message: 'Hi {caller_nmae}'\n"
    assert error_of(bad).startswith("agent.yaml:11: agent.answering_machine.message: unknown template variable")


def test_call_variables_are_template_variables() -> None:
    config = load(BASE + "agent:\n  greeting: 'Hello {var.first_name}, about order {var.order}.'\n")
    assert config.agent.greeting.startswith("Hello {var.first_name}")
    assert "call variable's name" in error_of(BASE + "agent:\n  greeting: 'Hello {var.9x}'\n")
