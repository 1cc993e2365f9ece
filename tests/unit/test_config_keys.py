"""docs/configuration.md key by key: a wrong value is refused with file:line: key: what was expected (never
accepted to fail later at the PBX, the API or a terminal), and `sipagent check` says what it cannot know."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from sipagent.cli import main
from sipagent.config import Config, load_config_text, rtp_port_shortage
from sipagent.errors import ConfigError

LOCAL = "realtime: {provider: local}\n"
ENV = {"EMPTY": "", "SECRET": "0123456789abcdef0123"}


def error_of(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", ENV if env is None else env)
    return info.value


def message_of(text: str, env: dict[str, str] | None = None) -> str:
    return str(error_of(text, env))


REGISTERING = "sip: {registrar: pbx.example.com, username: '2001', password: '${EMPTY}'}\n"


@pytest.mark.parametrize("text, expected", [
    # A port alone, or a dotted number that is no IPv4 address, is no host (it bound to 0.0.35.140).
    (LOCAL + "metrics: {listen: 9100}\n",
     'agent.yaml:2: metrics.listen: expected host[:port], got "9100" (9100 is a port, not a host: write '
     "host:port, e.g. 0.0.0.0:9100)"),
    (LOCAL + "sip: {listen: '5060'}\n",
     'agent.yaml:2: sip.listen: expected host[:port], got "5060" (5060 is a port, not a host: write host:port, '
     "e.g. 0.0.0.0:5060)"),
    (LOCAL + "sip: {registrar: 999.1.1.1, username: '2001'}\n",
     'agent.yaml:2: sip.registrar: expected host[:port], got "999.1.1.1" (999.1.1.1 is not an IPv4 address '
     "(four numbers from 0 to 255))"),
    (LOCAL + "sip: {public_address: 10.0.0}\n",
     "agent.yaml:2: sip.public_address: expected the address to advertise, a host name or an IP address without "
     'a port, got "10.0.0" (10.0.0 is not an IPv4 address (four numbers from 0 to 255))'),
    (LOCAL + "sip: {trusted_hosts: [10.0.0.5, 300.1.1.1]}\n",
     "agent.yaml:2: sip.trusted_hosts[1]: expected an address, a network (10.0.0.0/24) or a host name, got "
     '"300.1.1.1" (300.1.1.1 is not an IPv4 address (four numbers from 0 to 255))'),
    (LOCAL + "sip: {outbound_proxy: " + "a" * 64 + ".example.com}\n",
     f'agent.yaml:2: sip.outbound_proxy: expected host[:port], got "{"a" * 64}.example.com" (not a host name: at '
     "most 63 characters between dots and 253 in all)"),
    # sip.domain goes into From, To and every transfer target's URI.
    (LOCAL + "sip: {domain: 'pbx example.com'}\n",
     'agent.yaml:2: sip.domain: expected the SIP domain, a host name or an IP address, got "pbx example.com" '
     "(not a host name or address: 'pbx example.com')"),
    (LOCAL + "sip: {domain: 'sip:pbx.example.com'}\n",
     'agent.yaml:2: sip.domain: expected the SIP domain, a host name or an IP address, got "sip:pbx.example.com" '
     "(bad port 'pbx.example.com')"),
    # Transfer targets: null was the extension "None", an unknown mode was taken for blind.
    (LOCAL + "agent:\n  transfer_targets: {sales: null}\n",
     'agent.yaml:3: agent.transfer_targets.sales: expected an extension ("600") or a sip: URI '
     '("sip:600@pbx.example.com"), got null'),
    (LOCAL + "agent:\n  transfer_targets: {sales: true}\n",
     'agent.yaml:3: agent.transfer_targets.sales: expected an extension ("600") or a sip: URI '
     '("sip:600@pbx.example.com"), got true'),
    (LOCAL + "agent:\n  transfer_target: '600'\n  transfer: {modes: {default: cold}}\n",
     'agent.yaml:4: agent.transfer.modes.default: expected one of blind, warm, got "cold"'),
    (LOCAL + "agent:\n  transfer_target: '600'\n  transfer: {modes: {default: [warm]}}\n",
     "agent.yaml:4: agent.transfer.modes.default: expected one of blind, warm, got a list"),
    (LOCAL + "agent:\n  transfer_target: sips:600@pbx.example.com\n  transfer: {mode: warm}\n",
     "agent.yaml:3: agent.transfer_target: a warm transfer target is dialled by the agent, and a sips: URI needs "
     "sip.transport: tls (it is udp); write sip: instead, or make it blind"),
    (LOCAL + "agent:\n  transfer_targets: {sales: 'sip:601:hunter2@pbx.example.com'}\n",
     "agent.yaml:3: agent.transfer_targets.sales: a password in the URI is not allowed (it would be sent in the "
     "Refer-To, logged and printed by sipagent check)"),
    # Keys without a range in the loader.
    (LOCAL + "agent:\n  barge_in: {threshold_db: 40}\n",
     "agent.yaml:3: agent.barge_in.threshold_db: expected a level in dBFS from -120 to 0, got 40"),
    (LOCAL + "agents:\n  sales: {barge_in: {threshold_db: -400}}\n",
     "agent.yaml:3: agents.sales.barge_in.threshold_db: expected a level in dBFS from -120 to 0, got -400"),
    (LOCAL + "agent: {shutdown_grace_s: -5}\n",
     "agent.yaml:2: agent.shutdown_grace_s: expected 0 to 3600 seconds, got -5"),
    (LOCAL + "agent: {shutdown_grace_s: 1e300}\n",
     "agent.yaml:2: agent.shutdown_grace_s: expected 0 to 3600 seconds, got 1e+300"),
    (LOCAL + "media: {codecs: [G722, PCMU, G.722]}\n",
     'agent.yaml:2: media.codecs: "G.722" is listed twice'),
    # 0 is the loader's "unset" (4 calls): written, it must not allow calls to someone who meant none.
    (LOCAL + "outbound: {max_calls: 0}\n",
     "agent.yaml:2: outbound.max_calls: expected 1 to sip.max_calls (20), got 0 (to place no calls, leave "
     "control.listen unset and do not run sipagent call)"),
    # realtime: what goes into the URL, the session and `sipagent check`'s summary.
    ("realtime: {provider: openai, api_key: k, model: ''}\n",
     'agent.yaml:1: realtime.model: expected the model name, such as "gpt-realtime", got ""'),
    ('realtime: {provider: local, voice: "alloy\\r\\nX: 1"}\n',
     "agent.yaml:1: realtime.voice: expected text without line breaks or other control characters"),
    ("realtime: {provider: local, url: 'wss://me:hunter2@rt.example.com/v1'}\n",
     "agent.yaml:1: realtime.url: credentials in the URL are not supported (put the key in realtime.api_key)"),
])
def test_wrong_values_are_named(text: str, expected: str) -> None:
    assert message_of(text) == expected


@pytest.mark.parametrize("text, expected", [
    # A secret from a variable that is set but empty is named by its variable: the file is right.
    ("realtime: {provider: openai, api_key: '${EMPTY}'}\n",
     "agent.yaml:1: realtime.api_key: required, and environment variable EMPTY is set but empty"),
    (LOCAL + "control: {listen: '9101', token: '${EMPTY}'}\n",
     "agent.yaml:2: control.token: required, and environment variable EMPTY is set but empty"),
    (LOCAL + "events:\n  webhook: {url: 'https://crm.example.com/', secret: '${EMPTY}'}\n",
     "agent.yaml:3: events.webhook.secret: required, and environment variable EMPTY is set but empty"),
    (LOCAL + REGISTERING,
     "agent.yaml:2: sip.password: environment variable EMPTY is set but empty (to register without a password, "
     "remove the key)"),
    (LOCAL + "sip:\n  registrar: pbx.example.com\n  accounts:\n    - {username: '2002', password: '${EMPTY}'}\n",
     "agent.yaml:5: sip.accounts[0].password: environment variable EMPTY is set but empty (to register without a "
     "password, remove the key)"),
])
def test_empty_secret_variables_are_named(text: str, expected: str) -> None:
    assert message_of(text) == expected


def test_an_empty_password_written_as_such_still_registers_without_one() -> None:
    config = load_config_text(LOCAL + "sip: {registrar: pbx.example.com, username: '2001', password: ''}\n",
                              "agent.yaml", ENV)
    assert config.sip.password == ""
    direct = load_config_text(LOCAL + "sip: {password: '${EMPTY}'}\n", "agent.yaml", ENV)  # nothing registers
    assert direct.sip.password == ""


@pytest.mark.parametrize("text, expected", [
    # Control characters are written as escapes (an escape sequence would act on the terminal) ...
    (LOCAL + 'logging: {level: "\\e[2Jdebug"}\n',
     'agent.yaml:2: logging.level: expected one of debug, info, warning, error, got "\\x1b[2Jdebug"'),
    (LOCAL + '"sip\\a": {}\n',
     "agent.yaml:2: sip\\x07: unknown key (expected one of: agent, agents, context, control, events, logging, "
     "media, metrics, outbound, realtime, recording, routes, sip)"),
    # ... and a huge value is not repeated whole.
    (LOCAL + "sip: {expires: " + "9x" * 5000 + "}\n",
     'agent.yaml:2: sip.expires: expected an integer, got "' + "9x" * 40 + '..."'),
    (LOCAL + "sip: {username: " + "u_" * 5000 + "}\n",
     'agent.yaml:2: sip.username: expected a SIP user part such as "2001", got "' + "u_" * 40 + '..."'),
])
def test_messages_are_printable_and_short(text: str, expected: str) -> None:
    assert message_of(text) == expected


@pytest.mark.parametrize("text", [
    LOCAL + "sip: {domain: pbx.example.com}\n",
    LOCAL + "sip: {domain: 'pbx.example.com:5070'}\n",
    LOCAL + "sip: {domain: '10.0.0.5', listen: '0.0.0.0:5060', public_address: 203.0.113.10}\n",
    LOCAL + "sip: {domain: '2001:db8::1', trusted_hosts: ['[2001:db8::5]', 'fd00::/8', pbx2.example.com.]}\n",
    LOCAL + "metrics: {listen: '127.0.0.1'}\ncontrol: {listen: '9101', token: '${SECRET}'}\n",
    LOCAL + "agent:\n  transfer_target: sips:600@pbx.example.com\n  transfer_targets: {sales: 601}\n",
    LOCAL + "agent: {shutdown_grace_s: 0, barge_in: {threshold_db: -25}}\noutbound: {max_calls: 1}\n",
    "realtime: {provider: local, url: 'ws://127.0.0.1:8765', api_key: '${EMPTY}'}\n",
])
def test_valid_values_still_load(text: str) -> None:
    load_config_text(text, "agent.yaml", ENV)


def test_check_does_not_print_a_realtime_url_query() -> None:
    config = load_config_text("realtime: {provider: azure, api_key: k, model: d, "
                              "url: 'https://res.openai.azure.com/x?api-key=hunter2'}\n", "agent.yaml", ENV)
    assert "hunter2" not in config.summary()
    assert "via https://res.openai.azure.com/x?..." in config.summary()


def _pem_files(tmp_path: Path) -> dict[str, Path]:
    trustme = pytest.importorskip("trustme")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = trustme.CA()
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "leaf", "self_signed")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    ca.issue_cert("pbx.example.com").cert_chain_pems[0].write_to_path(str(paths["leaf"]))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbx.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    paths["self_signed"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _tls(ca_file: Path, verify: str = "true") -> str:
    return (LOCAL + "sip:\n  transport: tls\n  registrar: pbx.example.com\n  username: '2001'\n"
            f"  tls: {{ca_file: '{ca_file}', verify: {verify}}}\n")


def test_a_ca_file_that_holds_no_ca_is_refused(tmp_path: Path) -> None:
    pem = _pem_files(tmp_path)
    assert message_of(_tls(pem["leaf"])) == (
        f'agent.yaml:6: sip.tls.ca_file: "{pem["leaf"]}" holds no CA certificate (nor a self-signed one): it looks '
        "like a server's certificate; put the CA that signed the PBX's certificate here")
    load_config_text(_tls(pem["ca"]), "agent.yaml", ENV)  # a CA
    load_config_text(_tls(pem["self_signed"]), "agent.yaml", ENV)  # the PBX's self-signed certificate


def test_check_says_a_registrar_that_does_not_resolve_cannot_be_registered_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(LOCAL + "sip: {registrar: pbx.invalid, username: '2001', outbound_proxy: proxy.invalid}\n"
                    f"recording: {{dir: '{tmp_path}'}}\n")
    assert main(["check", "-c", str(path)]) == 0  # a warning: DNS may be down at boot
    out, err = capsys.readouterr()
    assert f'sipagent: warning: {path}:2: sip.registrar: "pbx.invalid" does not resolve' in err
    assert "the agent cannot register there (it keeps trying), and calls from it will be refused" in err
    assert f'sipagent: warning: {path}:2: sip.outbound_proxy: "proxy.invalid" does not resolve' in err
    assert "the calls the agent places cannot be sent there" in err
    assert out.rstrip().endswith("configuration OK, with 2 warnings (above)")


TOOL = LOCAL + "agent:\n  tools:\n    - {name: lookup, url: 'http://127.0.0.1:9/x', parameters: %s}\n"


@pytest.mark.parametrize(("parameters", "got"), [
    ("{type: string}", "type: 'string'"),
    ("{properties: {order: {type: string}}}", "type: null"),
    ("{type: object, properties: [order]}", "properties that are no mapping"),
])
def test_a_tool_whose_parameters_are_no_object_schema_is_refused(parameters: str, got: str) -> None:
    """The Realtime API refuses the whole session for it: every call would have failed at its start."""
    assert message_of(TOOL % parameters) == (
        "agent.yaml:4: agent.tools[0].parameters: expected a JSON Schema of an object ({type: object, "
        f"properties: {{...}}}}), got {got}")
    assert load_config_text(TOOL % "{type: object, properties: {order: {type: string}}}", "agent.yaml", ENV)



@pytest.mark.parametrize(("ports", "pairs"), [("40000-40009", 5), ("40001-40010", 4), ("40000-40010", 5)])
def test_check_warns_when_the_rtp_range_holds_fewer_calls_than_max_calls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ports: str, pairs: int) -> None:
    """Calls past the range's pairs are refused with 503 while max_calls says there is room."""
    path = tmp_path / "agent.yaml"

    def check(max_calls: int) -> tuple[str, str]:
        path.write_text(LOCAL + f"sip: {{max_calls: {max_calls}}}\nmedia: {{rtp_ports: '{ports}'}}\n"
                        f"recording: {{dir: '{tmp_path}'}}\n")
        assert main(["check", "-c", str(path)]) == 0
        out, err = capsys.readouterr()
        return out, err

    out, err = check(8)
    assert (f"sipagent: warning: {path}:3: media.rtp_ports: {ports} holds {pairs} calls at once (2 ports each), "
            f"fewer than sip.max_calls (8): calls past {pairs} will be refused with 503; widen it to at least 16 "
            "ports") in err
    assert out.rstrip().endswith("configuration OK, with 1 warning (above)")
    assert "media.rtp_ports" not in check(pairs)[1]


def test_warnings_name_the_line_as_errors_do() -> None:
    """The start-up log's warning (sipagent run) is the one check prints: file:line: key:, the line found as
    the loader finds an error's (the key's own, else the nearest written ancestor's)."""
    config = load_config_text(LOCAL + "sip:\n  max_calls: 8\nmedia:\n  codecs: [PCMU]\n  rtp_ports: '40000-40009'\n",
                              "agent.yaml", ENV)
    assert str(rtp_port_shortage(config)).startswith("agent.yaml:6: media.rtp_ports: 40000-40009 holds 5 calls")
    config = load_config_text(LOCAL + "sip:\n  max_calls: 600\n", "agent.yaml", ENV)  # the default range
    assert str(rtp_port_shortage(config)).startswith("agent.yaml:1: media.rtp_ports: 40000-40999 holds 500 calls")
    assert str(config.key_problem("sip.max_calls", "too many")) == "agent.yaml:3: sip.max_calls: too many"
    # A configuration built in code has no file, hence no line.
    assert str(Config(source="x.yaml").key_problem("sip.registrar", "gone")) == "x.yaml: sip.registrar: gone"
