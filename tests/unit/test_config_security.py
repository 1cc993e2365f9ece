"""The configuration keys of the security model: who may call, transfer targets, and the limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipagent.bridge.settings import ToolConfig
from sipagent.bridge.tools import tool_definitions
from sipagent.cli import main
from sipagent.config import load_config_text
from sipagent.errors import ConfigError

BASE = "realtime: {provider: local}\nsip: {registrar: 'pbx.example.com', username: '2001', password: x}\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", {})
    return str(info.value)


def test_transfer_targets_become_sip_uris_and_the_model_sees_only_their_names() -> None:
    config = load_config_text(BASE + "agent:\n  transfer_target: 600\n  transfer_targets:\n"
                              "    sales: 601\n    billing: 'sip:602@billing.example.com;transport=tcp'\n",
                              "agent.yaml", {})
    agent = config.agent
    assert agent.transfer_target == "sip:600@pbx.example.com"
    assert agent.transfer_targets == {"sales": "sip:601@pbx.example.com",
                                      "billing": "sip:602@billing.example.com;transport=tcp"}
    assert agent.transfer_uri(None) == agent.transfer_uri("") == "sip:600@pbx.example.com"
    assert agent.transfer_uri("billing") == "sip:602@billing.example.com;transport=tcp"
    assert agent.transfer_uri("sip:9999@premium.example.com") is None
    (tool,) = tool_definitions(_transfer_tool(), list(agent.transfer_targets), bool(agent.transfer_target))
    target = tool["parameters"]["properties"]["target"]
    assert target["enum"] == ["sales", "billing"] and "required" not in tool["parameters"]
    (strict,) = tool_definitions(_transfer_tool(), ["sales"], False)
    assert strict["parameters"]["required"] == ["target"]
    (none,) = tool_definitions(_transfer_tool(), [], True)
    assert "target" not in none["parameters"]["properties"]  # only the default desk: nothing to choose


def _transfer_tool() -> list[ToolConfig]:
    # A config that gives its own free-form parameters does not get them: the schema is ours.
    return [ToolConfig(name="transfer_call", parameters={"type": "object", "properties": {"target": {}}})]


@pytest.mark.parametrize(("yaml", "message"), [
    ("agent:\n  transfer_targets: {sales: 'sip:601@pbx>\\r\\nX: 1'}\n", "agent.transfer_targets.sales: expected"),
    ("agent:\n  transfer_targets: {'bad name': 601}\n", "agent.transfer_targets.bad name: expected a name"),
    ("agent:\n  transfer_target: 'tel:+15551230000'\n", "agent.transfer_target: expected"),
    ("agent:\n  on_failure: {action: transfer, target: 'sip:a b@pbx'}\n", "agent.on_failure.target: expected"),
    ("sip:\n  trusted_hosts: ['10.0.0.0/33']\n", "sip.trusted_hosts[0]: expected an address"),
    ("sip:\n  trusted_hosts: ['pbx example']\n", "sip.trusted_hosts[0]: expected an address"),
    ("sip:\n  aliases: ['2001@pbx']\n", "sip.aliases[0]: expected a SIP user part"),
    ("sip:\n  limits: {transactions: 0}\n", "sip.limits.transactions: expected 16 to 100000, got 0"),
    ("sip:\n  limits: {max_message_bytes: 100000}\n",
     "sip.limits.max_message_bytes: expected 1500 to 65535, got 100000"),
    ("sip:\n  limits: {tcp_idle_s: 0}\n", "sip.limits.tcp_idle_s: expected a number of seconds above 0"),
    ("sip:\n  allow_any_caller: maybe\n", "sip.allow_any_caller: expected true or false"),
])
def test_bad_security_keys_are_named(yaml: str, message: str) -> None:
    assert message in error_of("realtime: {provider: local}\n" + yaml)


def test_defaults_are_safe() -> None:
    config = load_config_text("realtime: {provider: local}\n", "agent.yaml", {})
    assert not config.sip.allow_any_caller and config.media.symmetric_rtp
    limits = config.sip.limits
    assert limits.max_message_bytes == 32768 and limits.transactions_per_source <= limits.transactions


def test_check_names_a_trusted_host_that_does_not_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("realtime: {provider: local}\nsip:\n  trusted_hosts: [127.0.0.1, 10.1.0.0/16, pbx.invalid]\n")
    assert main(["check", "-c", str(path)]) == 0  # a warning: DNS may be down at boot, the agent fails closed
    out, err = capsys.readouterr()
    assert "trust:     calls from 127.0.0.1, 10.1.0.0/16, pbx.invalid (does not resolve)" in out
    # Named at its line, as a load error would be.
    assert f'sipagent: warning: {path}:3: sip.trusted_hosts[2]: "pbx.invalid" does not resolve' in err
    path.write_text("realtime: {provider: local}\nsip: {username: agent}\n")
    assert main(["check", "-c", str(path)]) == 0
    assert "calls from loopback only (direct mode without sip.trusted_hosts), for agent" in capsys.readouterr().out


@pytest.mark.parametrize(("tool", "message"), [
    ("{name: t, url: 'ftp://orders.example.com/x'}", "agent.tools[0].url: the URL is not an http:// or https://"),
    ("{name: t, url: 'https://user:pw@orders.example.com/x'}", "agent.tools[0].url: credentials in the URL"),
    ("{name: t, url: 'https://orders.example.com/x', headers: {X-Token: \"a\\r\\nHost: evil\"}}",
     "agent.tools[0].headers: header X-Token contains CR, LF, NUL"),
    ("{name: t, url: 'https://orders.example.com/x', headers: {Host: evil}}",
     "agent.tools[0].headers: header Host is set by sipagent"),
])
def test_a_webhook_that_could_not_be_sent_fails_at_load(tool: str, message: str) -> None:
    assert message in error_of(f"realtime: {{provider: local}}\nagent:\n  tools: [{tool}]\n")


# ------------------------------------------------------------------------------------------- SRTP


def test_srtp_defaults_off_and_keys_are_read() -> None:
    config = load_config_text(BASE, "agent.yaml", {})
    assert config.media.srtp == "off" and not config.media.srtp_over_insecure_signalling
    assert config.media.srtp_suites == ["AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
    config = load_config_text(BASE + "media:\n  srtp: optional\n  srtp_suites: [aes_cm_128_hmac_sha1_80]\n",
                              "agent.yaml", {})
    assert config.media.srtp == "optional" and config.media.srtp_suites == ["AES_CM_128_HMAC_SHA1_80"]
    assert "SRTP optional (AES_CM_128_HMAC_SHA1_80; keys over TLS only)" in config.summary()
    tls = "sip: {registrar: 'pbx.example.com', username: '2001', password: x, transport: tls}\n"
    config = load_config_text("realtime: {provider: local}\n" + tls + "media: {srtp: required}\n", "agent.yaml", {})
    assert config.media.srtp == "required"


@pytest.mark.parametrize(("yaml", "message"), [
    ("media:\n  srtp: on\n", 'agent.yaml:4: media.srtp: expected one of off, optional, required, got "on"'),
    ("media:\n  srtp_suites: [AES_256_CM_HMAC_SHA1_80]\n", "agent.yaml:4: media.srtp_suites[0]: expected a suite"),
    ("media:\n  srtp_suites: [AEAD_AES_128_GCM, aead_aes_128_gcm]\n", "media.srtp_suites[1]: \"aead_aes_128_gcm\" is "
                                                                      "listed twice"),
    ("media:\n  srtp_suites: []\n", "media.srtp_suites: expected a list of suites"),
    ("media:\n  srtp: required\n", "agent.yaml:4: media.srtp: required, but SDES keys are taken only over TLS"),
    ("media:\n  srtp_over_insecure_signalling: maybe\n", "media.srtp_over_insecure_signalling: expected true or "
                                                         "false"),
])
def test_srtp_keys_are_checked(yaml: str, message: str) -> None:
    assert message in error_of(BASE + yaml)


def test_required_srtp_over_udp_needs_the_explicit_allowance() -> None:
    config = load_config_text(BASE + "media:\n  srtp: required\n  srtp_over_insecure_signalling: true\n",
                              "agent.yaml", {})
    assert "keys over any signalling" in config.summary()
