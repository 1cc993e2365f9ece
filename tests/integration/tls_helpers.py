"""TLS for the integration tests: a throwaway CA and certificates made at test time (trustme), and the skip
for a Kamailio without its TLS module. Shared by test_sip_over_tls.py and test_tls_srtp.py."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from peers import kamailio_tls_module, missing_binaries

trustme = pytest.importorskip("trustme")

NAMES = ("127.0.0.1", "pbx.test")  # what the registrar's certificate is issued for


class Pki:
    """A throwaway CA, the registrar's certificate (for NAMES) and the agent's own, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert, self.server_key = self.issue("server", *NAMES)
        self.agent_cert, self.agent_key = self.issue("agent", "127.0.0.1", "agent.test")
        other = trustme.CA()  # a CA nobody here trusts
        self.other_ca_file = directory / "other-ca.pem"
        other.cert_pem.write_to_path(str(self.other_ca_file))

    def issue(self, name: str, *identities: str, **validity: datetime.datetime) -> tuple[Path, Path]:
        leaf = self.ca.issue_cert(*identities, **validity)
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        with cert.open("wb") as out:
            for blob in leaf.cert_chain_pems:
                out.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


def require_kamailio_tls() -> None:
    """Skip the test unless Kamailio and its TLS module are installed."""
    if missing_binaries("kamailio"):
        pytest.skip("needs kamailio (install with scripts/setup --test)")
    if kamailio_tls_module() is None:
        pytest.skip("needs Kamailio's TLS module (Debian kamailio-tls-modules; scripts/setup --test)")
