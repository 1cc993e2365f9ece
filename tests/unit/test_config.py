"""The YAML loader: good files, every kind of bad file, environment interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipagent.cli import main
from sipagent.config import Config, load_config, load_config_text, parse_host_port
from sipagent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", env or {})
    return str(info.value)


def test_shipped_configs_validate() -> None:
    demo = load_config(ROOT / "config" / "demo.yaml", env={})
    assert demo.sip.direct_mode
    assert demo.realtime.provider == "local"
    assert demo.sip.listen_address.host == "127.0.0.1"
    assert demo.realtime.local["intents"][0]["name"] == "order_status"
    example = load_config(ROOT / "config" / "agent.example.yaml", env={"SIP_PASSWORD": "pw", "OPENAI_API_KEY": "k"})
    assert example.sip.registrar_address is not None
    assert example.sip.registrar_address.port == 5060
    assert example.sip.effective_domain == "pbx.example.com"
    assert [t.name for t in example.agent.tools] == ["lookup_order", "transfer_call", "end_call"]
    assert example.agent.tools[0].parameters["required"] == ["order_id"]
    assert example.context.headers == ["X-Customer-Id"] and "{header.X-Customer-Id}" in example.realtime.instructions


def test_empty_file_gives_defaults_that_need_a_key() -> None:
    # The default provider is OpenAI, which needs a key: an empty file is not a working config.
    assert "realtime.api_key: required for provider openai" in error_of("")
    config = load_config_text("realtime: {provider: local}\n", "x.yaml", {})
    assert config == Config(realtime=config.realtime, source="x.yaml")
    assert config.media.codecs == ["G722", "PCMU", "PCMA"]
    assert config.sip.expires == 300


def test_wrong_type_names_file_line_and_key() -> None:
    text = "realtime:\n  provider: local\nsip:\n  registrar: pbx\n  username: '1'\n\n  expires: soon\n"
    assert error_of(text) == 'agent.yaml:7: sip.expires: expected an integer, got "soon"'


def test_unknown_key_is_an_error_with_the_choices() -> None:
    message = error_of("realtime: {provider: local}\nsip:\n  registar: pbx\n")
    assert message.startswith("agent.yaml:3: sip.registar: unknown key (expected one of:")
    assert "registrar" in message
    assert error_of("realtime: {provider: local}\nsipp: {}\n").startswith("agent.yaml:2: sipp: unknown key")


def test_choices_lists_and_mappings_are_checked() -> None:
    base = "realtime: {provider: local}\n"
    assert error_of(base + "sip: {transport: sctp}\n") == (
        'agent.yaml:2: sip.transport: expected one of udp, tcp, tls, got "sctp"'
    )
    assert error_of(base + "media: {codecs: PCMU}\n") == 'agent.yaml:2: media.codecs: expected a list, got "PCMU"'
    assert "media.codecs: expected codecs from PCMU, PCMA, G722, got \"opus\"" in error_of(
        base + "media:\n  codecs: [PCMU, opus]\n"
    )
    assert error_of(base + "sip: [1, 2]\n") == "agent.yaml:2: sip: expected a mapping, got a list"
    assert error_of(base + "recording: {audio: maybe}\n") == (
        'agent.yaml:2: recording.audio: expected true or false, got "maybe"'
    )
    assert error_of(base + "agent:\n  tools:\n    - {description: no name}\n") == (
        "agent.yaml:4: agent.tools[0].name: required key is missing"
    )


def test_semantic_checks_point_at_the_key() -> None:
    base = "realtime: {provider: local}\n"
    assert error_of(base + "media:\n  rtp_ports: 5000\n") == (
        'agent.yaml:3: media.rtp_ports: expected a range like "40000-40999", got "5000"'
    )
    assert "sip.listen: expected host[:port]" in error_of(base + "sip: {listen: 'host:99999'}\n")
    assert error_of(base + "sip: {registrar: pbx}\n") == (
        "agent.yaml:2: sip.username: required when sip.registrar is set (or list the extensions in sip.accounts)"
    )
    message = error_of(base + "agent:\n  tools:\n    - {name: a}\n    - {name: b}\n")
    assert message.startswith('agent.yaml:4: agent.tools[0]: tool "a" needs a url')
    for name in ("look up", "order.status", "x" * 65, "'\u00e9tat'", "''"):  # the API would refuse the session
        message = error_of(base + f"agent:\n  tools:\n    - {{name: {name}, url: 'http://127.0.0.1:9/'}}\n")
        assert message.startswith("agent.yaml:4: agent.tools[0].name: expected 1 to 64 letters"), message
    assert error_of("realtime: {provider: azure, api_key: k}\n") == (
        "agent.yaml:1: realtime.url: required for provider azure (https://RESOURCE.openai.azure.com)"
    )


def test_yaml_syntax_error_has_a_line() -> None:
    assert error_of("sip:\n  listen: [unclosed\n").startswith("agent.yaml:")
    assert "invalid YAML" in error_of("sip:\n  listen: [unclosed\n")


def test_environment_interpolation() -> None:
    text = (
        "realtime:\n  provider: openai\n  api_key: ${KEY}\n"
        "sip:\n  listen: '${HOST:-127.0.0.1}:${PORT:-5070}'\n  max_calls: ${CALLS:-3}\n"
        "  trusted_hosts: ['${PBX}']\n"
    )
    config = load_config_text(text, "a.yaml", {"KEY": "sk-123", "PORT": "5099", "PBX": "10.0.0.1"})
    assert config.realtime.api_key == "sk-123"
    assert config.sip.listen == "127.0.0.1:5099"
    assert config.sip.max_calls == 3
    assert config.sip.trusted_hosts == ["10.0.0.1"]
    # An empty variable falls back to the default; a missing one with no default is an error.
    config = load_config_text(text, "a.yaml", {"KEY": "k", "HOST": "", "PBX": "p"})
    assert config.sip.listen == "127.0.0.1:5070"
    assert error_of(text, {"PBX": "p"}) == (  # a secret: never suggest writing it into the file as a default
        "agent.yaml:3: realtime.api_key: environment variable KEY is not set (set it where the agent runs, e.g. "
        "in the service's EnvironmentFile: docs/deploy.md)"
    )
    assert error_of(text, {"KEY": "k"}) == (
        "agent.yaml:7: sip.trusted_hosts[0]: environment variable PBX is not set (use ${PBX:-default})"
    )


def test_free_form_mappings_keep_their_types_after_interpolation() -> None:
    text = (
        "realtime:\n  provider: local\n  turn_detection:\n"
        "    type: server_vad\n    silence_duration_ms: ${MS:-400}\n"
    )
    config = load_config_text(text, "a.yaml", {})
    assert config.realtime.turn_detection == {"type": "server_vad", "silence_duration_ms": 400}


def test_secrets_never_appear_in_errors() -> None:
    message = error_of("realtime: {provider: local}\nsip:\n  password: [hunter2]\n")
    assert "hunter2" not in message
    assert message == "agent.yaml:3: sip.password: expected a single value, got a list"
    config = load_config_text(
        "realtime: {provider: openai, api_key: sk-secret}\nsip: {password: hunter2}\n", "a.yaml", {}
    )
    assert "sk-secret" not in config.summary()
    assert "hunter2" not in config.summary()


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("pbx", "pbx", 5060), ("pbx:5070", "pbx", 5070), ("[::1]:5080", "::1", 5080), ("[fe80::1]", "fe80::1", 5060)],
)
def test_host_port(text: str, host: str, port: int) -> None:
    parsed = parse_host_port(text, 5060)
    assert (parsed.host, parsed.port) == (host, port)


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(ROOT / "config" / "demo.yaml")]) == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "agent.yaml"
    bad.write_text("realtime: {provider: local}\nsip:\n  expire: 300\n")
    assert main(["check", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3: sip.expire: unknown key" in err


def test_outbound_proxy_reaches_the_user_agent_and_is_checked() -> None:
    from sipagent.agent import ua_settings

    config = load_config_text("realtime: {provider: local}\nsip: {outbound_proxy: 'proxy.example.com:5070'}\n",
                              "x.yaml", {})
    assert ua_settings(config).outbound_proxy == "proxy.example.com:5070"
    assert ua_settings(load_config_text("realtime: {provider: local}\n", "x.yaml", {})).outbound_proxy is None
    message = error_of("realtime: {provider: local}\nsip: {outbound_proxy: 'proxy:notaport'}\n")
    assert "sip.outbound_proxy" in message and "host[:port]" in message
