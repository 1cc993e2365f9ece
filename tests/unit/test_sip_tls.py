"""TLS set-up problems and certificate failures, named in words an operator can act on."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from sipagent.sip.tls import (
    TlsSettings,
    TlsSetupError,
    client_context,
    describe_handshake_error,
    describe_verify_failure,
    server_context,
)

trustme = pytest.importorskip("trustme")


@pytest.mark.parametrize(("code", "words"), [
    (10, "has expired"),
    (9, "not valid yet"),
    (62, "wrong name: hostname mismatch"),
    (64, "wrong name"),
    (18, "self-signed"),
    (19, "unknown CA"),
    (20, "unknown CA"),
    (2, "unknown CA"),
    (23, "revoked"),
    (999, "some new failure"),
])
def test_verify_codes_in_plain_words(code: int, words: str) -> None:
    text = describe_verify_failure(code, "some new failure", "pbx.example.com")
    assert words in text and "pbx.example.com" in text


def test_name_and_ca_failures_point_at_the_setting() -> None:
    assert "sip.tls.server_name" in describe_verify_failure(62, "", "pbx")
    assert "sip.tls.ca_file" in describe_verify_failure(20, "", "pbx")


def test_handshake_errors_other_than_verification() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = 10
    verify.verify_message = "certificate has expired"
    assert "has expired" in describe_handshake_error(verify, "pbx")
    assert "refused the connection" in describe_handshake_error(ConnectionRefusedError(), "pbx")
    assert "within the time allowed" in describe_handshake_error(TimeoutError(), "pbx")
    plain = ssl.SSLError(1, "wrong version")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert "does not speak TLS" in describe_handshake_error(plain, "pbx")


@pytest.mark.parametrize(("name", "address", "peer"), [
    ("::1", "[::1]:5061", "[::1]:5061"),  # an address: said once, in brackets (never "::1:5061")
    ("192.0.2.7", "192.0.2.7:5061", "192.0.2.7:5061"),
    ("pbx.example.com", "[2001:db8::7]:5061", "pbx.example.com ([2001:db8::7]:5061)"),
])
def test_the_peer_is_named_by_what_was_checked_and_where(name: str, address: str, peer: str) -> None:
    assert describe_handshake_error(ConnectionRefusedError(), name, address).startswith(f"{peer} refused")
    expired = describe_verify_failure(10, "", name, address)
    assert expired == f"the certificate of {peer} has expired (renew it on the server)"
    mismatch = describe_verify_failure(62, "", name, address)
    assert mismatch.startswith(f'the certificate of {address} was not issued for "{name}"'), mismatch


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("agent.test")
    other = ca.issue_cert("other.test")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "other_key", "both", "junk")}
    ca.cert_pem.write_to_path(paths["ca"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    other.private_key_pem.write_to_path(paths["other_key"])
    leaf.private_key_and_cert_chain_pem.write_to_path(paths["both"])
    Path(paths["junk"]).write_text("not a certificate\n")
    return paths


def test_good_files_load(files: dict[str, str]) -> None:
    context = client_context(TlsSettings(ca_file=files["ca"]))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    server_context(TlsSettings(cert_file=files["cert"], key_file=files["key"]))
    server_context(TlsSettings(cert_file=files["both"]))  # the key inside the certificate's file
    lax = client_context(TlsSettings(verify=False))
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname


@pytest.mark.parametrize(("settings", "key", "words"), [
    ({"ca_file": "missing"}, "ca_file", "does not exist"),
    ({"ca_file": "junk"}, "ca_file", "is not a PEM file"),
    ({"ca_file": "key"}, "ca_file", "holds no usable CA certificate"),
    ({"cert_file": "cert", "key_file": "other_key"}, "key_file", "is not the key of the certificate"),
    ({"cert_file": "cert"}, "key_file", "holds no private key"),
    ({"cert_file": "junk", "key_file": "key"}, "cert_file", "is not a PEM file"),
    ({"cert_file": "cert", "key_file": "missing"}, "key_file", "does not exist"),
])
def test_bad_files_are_named(files: dict[str, str], tmp_path: Path, settings: dict[str, str], key: str,
                             words: str) -> None:
    paths = {name: files.get(value, str(tmp_path / "nowhere.pem")) for name, value in settings.items()}
    tls = TlsSettings(**paths)
    with pytest.raises(TlsSetupError) as info:
        server_context(tls) if tls.cert_file else client_context(tls)
    assert info.value.key == key and words in info.value.detail
    assert str(info.value).startswith(f"sip.tls.{key}: ")  # at start, without the loader's file and line
    assert "PRIVATE KEY" not in str(info.value)  # a file's contents never go into a message
