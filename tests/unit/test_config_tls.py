"""sip.tls in the configuration: defaults, files loaded at load time, mistakes named with their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipagent.agent import ua_settings
from sipagent.config import load_config_text
from sipagent.errors import ConfigError

trustme = pytest.importorskip("trustme")

BASE = "realtime: {provider: local}\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", {})
    return str(info.value)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    leaf, other = ca.issue_cert("agent.test"), ca.issue_cert("other.test")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "other_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    return paths


def test_defaults_verify_and_tls_port() -> None:
    config = load_config_text(BASE + "sip: {transport: tls, registrar: pbx.example.com, username: '1001'}\n",
                              "agent.yaml", {})
    tls = config.sip.tls
    assert tls.verify and not tls.ca_file and not tls.sips and not tls.settings.serves
    assert str(config.sip.registrar_address) == "pbx.example.com:5061"
    assert config.sip.listen_address.port == 5060  # sip.listen's own default names a port
    assert config.sip.keepalive_s == 90 and config.sip.keepalive_timeout_s == 10
    settings = ua_settings(config)
    assert settings.tls.verify and settings.keepalive_s == 90


def test_full_section(pem: dict[str, Path]) -> None:
    text = BASE + (
        "sip:\n  transport: tls\n  registrar: pbx.example.com\n  username: '1001'\n  listen: 0.0.0.0\n"
        f"  tls:\n    ca_file: {pem['ca']}\n    server_name: pbx.internal\n    cert_file: {pem['cert']}\n"
        f"    key_file: {pem['key']}\n    sips: true\n")
    config = load_config_text(text, "agent.yaml", {})
    assert config.sip.tls.settings.serves and config.sip.tls.server_name == "pbx.internal"
    assert config.sip.listen_address.port == 5061
    assert ua_settings(config).tls.sips
    assert f"tls:       verifying pbx.internal against {pem['ca']}; listening with {pem['cert']}, sips: URIs" \
        in config.summary()
    lax = load_config_text(BASE + "sip: {transport: tls, tls: {verify: false}}\n", "agent.yaml", {})
    assert "NOT verifying the PBX's certificate" in lax.summary()


def test_file_problems_name_the_key_and_line(pem: dict[str, Path]) -> None:
    head = BASE + "sip:\n  transport: tls\n  tls:\n"
    message = error_of(head + "    ca_file: /nonexistent/ca.pem\n")
    assert message == 'agent.yaml:5: sip.tls.ca_file: file "/nonexistent/ca.pem" does not exist'
    message = error_of(head + f"    cert_file: {pem['cert']}\n    key_file: {pem['other_key']}\n")
    assert message.startswith("agent.yaml:6: sip.tls.key_file:") and "is not the key of the certificate" in message
    assert "key_file: set sip.tls.cert_file too" in error_of(head + f"    key_file: {pem['key']}\n")


def test_tls_keys_need_the_tls_transport(pem: dict[str, Path]) -> None:
    message = error_of(BASE + f"sip:\n  transport: tcp\n  tls: {{ca_file: {pem['ca']}}}\n")
    assert "sip.tls.ca_file: only used with sip.transport: tls" in message
    assert "sip.tls.verify: only used with" in error_of(BASE + "sip: {tls: {verify: false}}\n")


def test_keepalive_bounds() -> None:
    assert "sip.keepalive_s: expected 0 (off) or 5 to 3600" in error_of(BASE + "sip: {keepalive_s: 1}\n")
    assert "sip.keepalive_timeout_s: expected 1 to 60" in error_of(BASE + "sip: {keepalive_timeout_s: 0}\n")
    load_config_text(BASE + "sip: {keepalive_s: 0}\n", "agent.yaml", {})
