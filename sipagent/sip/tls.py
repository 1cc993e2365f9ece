"""SIP over TLS: the contexts for both ends of a connection, and certificate problems in plain words.

No I/O happens here beyond reading the configured PEM files into an ``ssl.SSLContext``: the transport
(transport.py) opens and accepts the connections. Both the loader (``sipagent check``) and the agent build
their contexts with :func:`client_context` / :func:`server_context`, so a file that is missing, unreadable,
not PEM, or a key that does not belong to its certificate is named once, at load, with the key to fix.

:func:`describe_verify_failure` turns OpenSSL's verification codes into what an operator can act on
("expired", "issued for another name", "signed by a CA we do not trust"); key material never enters a
message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from sipagent.errors import SipagentError
from sipagent.sip.uri import uri_host

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) that an operator meets in practice.
_EXPIRED = 10
_NOT_YET_VALID = 9
_UNKNOWN_ISSUER = {2, 20, 21}  # issuer not found locally / cannot verify the first certificate
_SELF_SIGNED = {18, 19}  # the leaf itself, or a root in the chain we do not trust
_NAME_MISMATCH = {62, 64}  # hostname mismatch, IP address mismatch
_REVOKED = 23


class TlsSetupError(SipagentError):
    """A TLS file cannot be used. ``key`` is the setting at fault (``ca_file``, ``cert_file``, ``key_file``),
    ``detail`` what is wrong; ``str()`` names both, for a file that went bad between check and start."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"sip.tls.{key}: {message}")


class TlsHandshakeError(SipagentError):
    """A TLS connection failed before any SIP was exchanged; ``str()`` names the problem in plain words."""


@dataclass(frozen=True)
class TlsSettings:
    """The ``sip.tls`` section: what we trust, what we present, and what we expect the registrar to be."""

    ca_file: str = ""  # PEM bundle of CAs we trust; "" = the system's store
    verify: bool = True  # verify the server's certificate and name (off only for a lab)
    server_name: str = ""  # name expected in the registrar's certificate (and sent as SNI); "" = its host
    cert_file: str = ""  # our certificate chain (PEM): the server side, and a client certificate when asked
    key_file: str = ""  # its private key (PEM); "" = inside cert_file
    sips: bool = False  # advertise sips: URIs (Contact, Request-URI, AoR) instead of sip:...;transport=tls

    @property
    def serves(self) -> bool:
        """Whether we listen for connections the PBX opens to our Contact (a certificate is configured)."""
        return bool(self.cert_file)


def _readable(key: str, path: str) -> None:
    file = Path(path)
    if not file.exists():
        raise TlsSetupError(key, f'file "{path}" does not exist')
    if not file.is_file():
        raise TlsSetupError(key, f'"{path}" is not a file')
    try:
        with file.open("rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as exc:
        raise TlsSetupError(key, f'cannot read "{path}": {exc.strerror}') from None
    if b"-----BEGIN " not in head:
        raise TlsSetupError(key, f'"{path}" is not a PEM file (no "-----BEGIN" line)')


def _load_chain(context: ssl.SSLContext, settings: TlsSettings) -> None:
    """Our certificate and key into ``context``; TlsSetupError naming which file is wrong (never its text)."""
    _readable("cert_file", settings.cert_file)
    if settings.key_file:
        _readable("key_file", settings.key_file)
    elif b"PRIVATE KEY-----" not in Path(settings.cert_file).read_bytes():
        raise TlsSetupError("key_file", f'required: "{settings.cert_file}" holds no private key')
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file or None, password=_no_password)
    except ssl.SSLError as exc:
        reason = (exc.reason or "").upper()
        if "KEY_VALUES_MISMATCH" in reason or "X509_CHECK_PRIVATE_KEY" in reason:
            raise TlsSetupError("key_file", f'"{settings.key_file or settings.cert_file}" is not the key of the '
                                            f'certificate in "{settings.cert_file}"') from None
        if "PEM" in reason or "NO_START_LINE" in reason or "CA_MD_TOO_WEAK" in reason or "EE_KEY_TOO_SMALL" in reason:
            raise TlsSetupError("cert_file", f'"{settings.cert_file}": {_plain(exc)}') from None
        raise TlsSetupError("key_file", f'cannot use the certificate and key: {_plain(exc)}') from None
    except _PasswordNeeded:
        raise TlsSetupError("key_file", f'"{settings.key_file or settings.cert_file}" is encrypted with a '
                                        "passphrase; store the key unencrypted (readable by sipagent only)") from None


class _PasswordNeeded(Exception):
    pass


def _no_password() -> str:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal, which a service never has.
    raise _PasswordNeeded


def _plain(exc: ssl.SSLError) -> str:
    return (exc.reason or str(exc)).replace("_", " ").lower()


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for connections we open (to the registrar, the outbound proxy, a dialog's next hop).

    Verification is on unless ``verify`` is false: the CA bundle is ``ca_file`` or the system's. Our
    certificate goes along when one is configured (a PBX may ask for it). TLS 1.2 at least.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca_file:
        _readable("ca_file", settings.ca_file)
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except ssl.SSLError as exc:
            raise TlsSetupError("ca_file", f'"{settings.ca_file}" holds no usable CA certificate ({_plain(exc)})') \
                from None
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        _load_chain(context, settings)
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for connections the PBX opens to us: our certificate and key; client certificates are
    not asked for (who may send what is decided per message, by source address, as on UDP and TCP)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A TLS 1.2 client may ask for a new handshake as often as it likes, each one a signature of ours for a
    # few bytes of its own; OpenSSL 3 refuses that by default, the 1.1.1 a Python may be built with does not.
    context.options |= ssl.OP_NO_RENEGOTIATION
    _load_chain(context, settings)
    return context


def describe_verify_failure(code: int, message: str, server_name: str, address: str = "") -> str:
    """An OpenSSL verification failure (``SSLCertVerificationError.verify_code``/``verify_message``) in words
    an operator can act on, naming the setting to look at. ``server_name`` is what the certificate was checked
    against; ``address``, where we connected (``[2001:db8::1]:5061``), when known."""
    if code in _NAME_MISMATCH:
        where = f" of {address}" if address else ""
        return (f'the certificate{where} was not issued for "{server_name}" (wrong name: hostname mismatch); set '
                "sip.tls.server_name to a name the certificate carries, or fix the certificate")
    server_name = _peer(server_name, address)
    if code == _EXPIRED:
        return f"the certificate of {server_name} has expired (renew it on the server)"
    if code == _NOT_YET_VALID:
        return f"the certificate of {server_name} is not valid yet (check the clocks of both hosts)"
    if code in _SELF_SIGNED:
        return (f"the certificate of {server_name} is self-signed or signed by a CA we do not trust (unknown CA); "
                "put that CA in sip.tls.ca_file")
    if code in _UNKNOWN_ISSUER:
        return (f"the certificate of {server_name} is signed by a CA we do not trust (unknown CA); put that CA "
                "in sip.tls.ca_file")
    if code == _REVOKED:
        return f"the certificate of {server_name} has been revoked"
    return f"the certificate of {server_name} was refused: {message or 'verification failed'}"


def _peer(server_name: str, address: str) -> str:
    """The peer in a message: its address, and the name checked when that is not the address's host."""
    if not address or address == server_name:
        return server_name
    if address.startswith(f"{uri_host(server_name)}:"):
        return address
    return f"{server_name} ({address})"


def describe_handshake_error(exc: BaseException, server_name: str, address: str = "") -> str:
    """Any exception from opening a TLS connection to ``address`` (checked against ``server_name``), in plain
    words (certificate problems named)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return describe_verify_failure(int(exc.verify_code or 0), str(exc.verify_message or ""), server_name,
                                       address)
    server_name = _peer(server_name, address)
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason or "PACKET_LENGTH" in reason:
            return f"{server_name} does not speak TLS on that port (is it the plain SIP port?)"
        if "ALERT" in reason:
            return f"{server_name} refused the TLS handshake ({_plain(exc)}; does it want a client certificate?)"
        return f"TLS handshake with {server_name} failed: {_plain(exc)}"
    if isinstance(exc, TimeoutError):
        return f"no TLS connection to {server_name} within the time allowed"
    if isinstance(exc, ConnectionRefusedError):
        return f"{server_name} refused the connection (nothing listens on that port)"
    return f"cannot connect to {server_name}: {exc}"
