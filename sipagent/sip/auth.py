"""HTTP Digest authentication for SIP (RFC 3261 22, RFC 2617, RFC 7616, RFC 8760).

Pure: the caller supplies nc and cnonce (``new_cnonce`` makes one), so test vectors are exact.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass, field

from sipagent.errors import SipParseError
from sipagent.sip._text import is_token, quote, split_list, unquote

logger = logging.getLogger(__name__)

_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
# Real nonces, realms and opaques are tens of characters (Asterisk's about 60, FreeSWITCH's a UUID). A longer
# one is from something hostile: every request of ours would echo it, so the challenge is not answered.
MAX_FIELD = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsupportedChallenge(SipParseError):
    """A challenge uses a scheme, algorithm or qop we cannot answer."""


def _supported(algorithm: str) -> bool:
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        return False
    try:
        hashlib.new(_HASHES[base])
    except ValueError:  # sha512_256 depends on the OpenSSL build
        return False
    return True


@dataclass
class DigestChallenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: list[str] = field(default_factory=list)
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    scheme: str = "Digest"

    @classmethod
    def parse(cls, header_value: str) -> DigestChallenge:
        scheme, _, rest = header_value.strip().partition(" ")
        if scheme.lower() != "digest":
            raise UnsupportedChallenge(f"unsupported auth scheme {scheme[:20]!r}")
        fields: dict[str, str] = {}
        for item in split_list(rest):
            name, eq, value = item.partition("=")
            name = name.strip().lower()
            if not eq or not is_token(name):
                raise SipParseError("bad digest challenge parameter")
            value = unquote(value)
            # What we echo into Authorization must be printable and short: a quoted-pair can carry a CR/LF
            # that would otherwise only be refused when our request is serialized.
            if len(value) > MAX_FIELD or _CONTROL.search(value):
                raise UnsupportedChallenge(f"digest challenge parameter {name[:20]!r} too long or not printable")
            fields[name] = value
        if "nonce" not in fields or "realm" not in fields:
            raise SipParseError("digest challenge without realm or nonce")
        qop = [q.strip().lower() for q in fields.get("qop", "").split(",") if q.strip()]
        return cls(
            realm=fields["realm"],
            nonce=fields["nonce"],
            algorithm=fields.get("algorithm", "MD5"),
            qop=qop,
            opaque=fields.get("opaque"),
            stale=fields.get("stale", "").lower() == "true",
            domain=fields.get("domain"),
        )

    @property
    def supported(self) -> bool:
        return _supported(self.algorithm) and (not self.qop or "auth" in self.qop)


@dataclass
class DigestCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never let the password reach a log line
        return f"DigestCredentials(username={self.username!r}, password=***)"


def new_cnonce() -> str:
    return secrets.token_hex(8)


def _h(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm.upper().removesuffix("-SESS")], text.encode("utf-8")).hexdigest()


def digest_response(
    challenge: DigestChallenge, method: str, uri: str, credentials: DigestCredentials, nc: int, cnonce: str
) -> str:
    """The ``response=`` value (RFC 7616 3.4.1; RFC 2069 form when the challenge has no qop)."""
    alg = challenge.algorithm
    if not _supported(alg):
        raise UnsupportedChallenge(f"unsupported digest algorithm {alg[:20]!r}")
    ha1 = _h(alg, f"{credentials.username}:{challenge.realm}:{credentials.password}")
    if alg.upper().endswith("-SESS"):
        ha1 = _h(alg, f"{ha1}:{challenge.nonce}:{cnonce}")
    ha2 = _h(alg, f"{method}:{uri}")
    if not challenge.qop:
        return _h(alg, f"{ha1}:{challenge.nonce}:{ha2}")
    if "auth" not in challenge.qop:
        raise UnsupportedChallenge("digest challenge offers no qop=auth")
    return _h(alg, f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:auth:{ha2}")


def authorization_header(
    challenge: DigestChallenge, method: str, uri: str, credentials: DigestCredentials, nc: int, cnonce: str
) -> str:
    """Value for Authorization (after 401) or Proxy-Authorization (after 407)."""
    response = digest_response(challenge, method, uri, credentials, nc, cnonce)
    parts = [
        f"username={quote(credentials.username)}",
        f"realm={quote(challenge.realm)}",
        f"nonce={quote(challenge.nonce)}",
        f"uri={quote(uri)}",
        f"response={quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.qop:
        parts += [f"cnonce={quote(cnonce)}", "qop=auth", f"nc={nc:08x}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def choose_challenge(values: list[str]) -> DigestChallenge | None:
    """The first challenge we can answer among several (RFC 8760: servers list preferred first)."""
    for value in values:
        try:
            challenge = DigestChallenge.parse(value)
        except SipParseError:
            continue
        if challenge.supported:
            return challenge
    return None


class DigestAuthenticator:
    """Answers 401/407 challenges for one request stream (a registration, a dialog's requests).

    Credentials computed on a challenge just received are final: challenged again without ``stale=true``, the
    password (or the auth user) is wrong, and sending the same secret again would only feed the PBX's
    fail2ban (RFC 3261 22.1). Asterisk answers a wrong password with a 401 carrying a new nonce, so a new
    nonce alone does not earn a retry. Credentials reused from an earlier challenge (a refresh with nc > 1)
    earn one retry with the new nonce: the registrar may have forgotten the old one (expired, restarted)
    without saying stale. ``stale=true`` earns a retry (RFC 7616 3.3), but a run of challenges without a
    success is a loop and ends after ``MAX_CHALLENGES``. ``refusal`` says in plain words why the last
    challenge was not answered.
    """

    MAX_CHALLENGES = 2

    def __init__(self, credentials: DigestCredentials) -> None:
        self.credentials = credentials
        # Per slot, keyed by "is proxy": the challenge we answer, its nonce count, whether it came since our
        # last request (answering it is "fresh"), and whether the last request carried fresh credentials.
        self._challenge: dict[bool, DigestChallenge] = {}
        self._nc: dict[bool, int] = {}
        self._fresh: dict[bool, bool] = {}
        self._sent_fresh: dict[bool, bool] = {}
        self._consecutive = 0
        self.refusal = ""

    def succeeded(self) -> None:
        """A request went through: the next challenge starts a new count."""
        self._consecutive = 0
        self._sent_fresh.clear()

    def handle_challenge(self, status: int, header_values: list[str]) -> bool:
        """Record the challenge of a 401/407; False when retrying would be pointless (``refusal`` says why)."""
        proxy = status == 407
        challenge = choose_challenge(header_values)
        if challenge is None:
            self.refusal = f"no usable digest challenge in the {status} (scheme, algorithm or qop not supported)"
            logger.warning("%s", self.refusal)
            return False
        self._consecutive += 1
        current = self._challenge.get(proxy)
        same_nonce = current is not None and current.nonce == challenge.nonce
        rejected = not challenge.stale and (
            self._sent_fresh.get(proxy, False) or (same_nonce and self._nc.get(proxy, 0) > 0))
        if rejected:
            self.refusal = (f"credentials of {self.credentials.username!r} rejected for realm "
                            f"{challenge.realm[:64]!r} (wrong password or auth user?)")
        elif self._consecutive > self.MAX_CHALLENGES:
            self.refusal = f"challenged {self._consecutive} times in a row without a success (a challenge loop)"
        else:
            if not same_nonce:
                self._nc[proxy] = 0
            self._challenge[proxy] = challenge
            self._fresh[proxy] = True
            return True
        logger.warning("%s", self.refusal)
        return False

    def headers_for(self, method: str, uri: str, cnonce: str | None = None) -> list[tuple[str, str]]:
        """Authorization/Proxy-Authorization headers for the next request (empty before any challenge)."""
        out: list[tuple[str, str]] = []
        for proxy, challenge in self._challenge.items():
            nc = self._nc.get(proxy, 0) + 1
            self._nc[proxy] = nc
            self._sent_fresh[proxy] = self._fresh.pop(proxy, False)
            name = "Proxy-Authorization" if proxy else "Authorization"
            value = authorization_header(
                challenge, method, uri, self.credentials, nc, cnonce or new_cnonce()
            )
            out.append((name, value))
        return out

    def reset(self) -> None:
        """Forget challenges (after the registrar restarted, say); credentials are kept."""
        self._challenge.clear()
        self._nc.clear()
        self._fresh.clear()
        self._sent_fresh.clear()
        self._consecutive = 0
