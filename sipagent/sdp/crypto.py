"""SDES: the RFC 4568 ``a=crypto`` attribute that carries SRTP master keys in SDP (RTP/SAVP).

Pure: text in, typed values out, with the randomness for our keys passed in by the caller. Offers are
hostile input, so the parser is strict and bounded: a line longer than ``MAX_LINE`` is refused unread, the
key must be canonical base64 of exactly the suite's master key plus master salt, and anything we could not
honour (several keys, an MKI, a lifetime shorter than any call, session parameters that weaken or change
the transform) makes that one line unusable, never the process unhappy. What is refused is said in the
``SdpError``'s message; no message ever contains key material.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sipagent.errors import SdpError

# name -> (master key bytes, master salt bytes) as RFC 4568 6.2 and RFC 7714 12 define them.
SUITES: dict[str, tuple[int, int]] = {
    "AEAD_AES_128_GCM": (16, 12),
    "AES_CM_128_HMAC_SHA1_80": (16, 14),
    "AES_CM_128_HMAC_SHA1_32": (16, 14),
}
# Our order when the peer offers several (``media.srtp_suites`` may narrow or reorder it): GCM first (an
# AEAD, authenticated with a 128-bit tag in one pass), then the 80-bit HMAC tag, then the 32-bit one, which
# RFC 3711 allows for voice but which is the weakest authentication of the three.
DEFAULT_SUITES: tuple[str, ...] = ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
SECURE_PROTOS = ("RTP/SAVP", "RTP/SAVPF")
MAX_LINE = 512  # one inline key with lifetime and MKI is < 120 characters; more is not a crypto line we use
MAX_CRYPTO_LINES = 16  # per m= line: more are not looked at
# A key with a lifetime (in packets) below this would have to be renewed mid-call, which SDES can only do by
# re-INVITE; 2^31 packets is 497 days of 20 ms frames, so a lifetime this long is never reached.
MIN_LIFETIME = 2**31
# Session parameters (RFC 4568 6.3) that change nothing we must honour: a window size hint (we keep
# libsrtp's replay window, larger than any hint here is useful for) and KDR=0 (no re-derivation, the default).
_HARMLESS_PARAMS = re.compile(r"WSH=[0-9]{1,9}|KDR=0")

_CRYPTO_RE = re.compile(r"([0-9]{1,9})[ \t]+([A-Za-z0-9_]{1,64})[ \t]+(\S{1,400})((?:[ \t]+\S{1,64}){0,8})[ \t]*")
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_LIFETIME_RE = re.compile(r"(?:2\^([0-9]{1,2})|([0-9]{1,15}))")
_MKI_RE = re.compile(r"([0-9]{1,10}):([0-9]{1,3})")
# What an error message may repeat of a refused suite or session parameter: the form of a registered name,
# shorter than any base64 key, so that key text out of place (a second "inline:" after a blank) never shows.
_SUITE_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
_PARAM_NAME_RE = re.compile(r"-?[A-Z][A-Z0-9_]{0,23}")


@dataclass(frozen=True)
class CryptoAttribute:
    """One ``a=crypto`` line: its tag, suite and master key || master salt (never shown by repr)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)

    def to_value(self) -> str:
        """The attribute's value (after ``a=crypto:``): RFC 4568's inline key, without lifetime or MKI."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode('ascii')}"


@dataclass(frozen=True)
class SrtpParams:
    """The SRTP of one negotiated stream: the suite, our key (for what we send) and the peer's (for what
    we receive), and the tag that names them in the SDP. Keys are never in repr, so never in a log line."""

    suite: str
    tag: int
    local_key: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)


KeySource = Callable[[int], bytes]  # n -> n random bytes (secrets.token_bytes; fixed bytes in tests)


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse the value of an ``a=crypto`` attribute; SdpError (naming what is wrong, never the key) when it
    is malformed or asks for something we do not do."""
    if len(value) > MAX_LINE:
        raise SdpError(f"crypto attribute longer than {MAX_LINE} characters")
    m = _CRYPTO_RE.fullmatch(value)
    if m is None:
        raise SdpError("malformed crypto attribute")
    tag, suite, key_params, session_params = int(m.group(1)), m.group(2), m.group(3), m.group(4).split()
    if suite not in SUITES:
        shown = suite if _SUITE_NAME_RE.fullmatch(suite) else "(not a suite name)"  # nor key text out of place
        raise SdpError(f"unsupported crypto suite {shown}")
    if ";" in key_params:
        raise SdpError("several master keys in one crypto attribute are not supported")
    method, colon, info = key_params.partition(":")
    if method != "inline" or not colon:
        raise SdpError("crypto key method is not inline")
    key_b64, *extras = info.split("|")
    if len(extras) > 2:
        raise SdpError("malformed crypto key parameters")
    key = _decode_key(key_b64, suite)
    for extra in extras:
        if _MKI_RE.fullmatch(extra):
            # pylibsrtp sets up one key per stream without an MKI, and the MKI would then be missing from
            # every packet we send: refused rather than half-supported.
            raise SdpError("crypto attribute with an MKI is not supported")
        lifetime = _LIFETIME_RE.fullmatch(extra)
        if lifetime is None:
            raise SdpError("malformed crypto key lifetime or MKI")
        packets = 2 ** int(lifetime.group(1)) if lifetime.group(1) else int(lifetime.group(2))
        if packets < MIN_LIFETIME:
            raise SdpError(f"crypto key lifetime below 2^31 packets ({packets}) is not supported")
    for param in session_params:
        if not _HARMLESS_PARAMS.fullmatch(param):
            # UNENCRYPTED_SRTP and the like weaken the stream; FEC and other KDRs change the transform.
            raise SdpError(f"crypto session parameter {_param_name(param)} is not supported")
    return CryptoAttribute(tag, suite, key)


def _param_name(param: str) -> str:
    """What an error may say of a refused session parameter: its name, when it has the form of one."""
    name = param.split("=", 1)[0]
    return name if _PARAM_NAME_RE.fullmatch(name) else "(not a parameter name)"


def _decode_key(text: str, suite: str) -> bytes:
    key_len, salt_len = SUITES[suite]
    if not _B64_RE.fullmatch(text) or len(text) % 4:
        raise SdpError("crypto key is not base64")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SdpError("crypto key is not base64") from None
    if len(key) != key_len + salt_len:
        raise SdpError(f"crypto key of {len(key)} bytes for {suite}, which takes {key_len + salt_len}")
    if base64.b64encode(key).decode("ascii") != text:
        raise SdpError("crypto key is not canonical base64")  # stray bits in the padding: not what was meant
    return key


def crypto_lines(attributes: list[tuple[str, str | None]]) -> list[CryptoAttribute | SdpError]:
    """The first ``MAX_CRYPTO_LINES`` crypto attributes of a media description, each parsed or the error
    that made it unusable (the caller says why none was taken when none was)."""
    out: list[CryptoAttribute | SdpError] = []
    for name, value in attributes:
        if name != "crypto":
            continue
        if len(out) == MAX_CRYPTO_LINES:
            break
        try:
            out.append(parse_crypto(value or ""))
        except SdpError as exc:
            out.append(exc)
    return out


def choose(offered: list[CryptoAttribute | SdpError], suites: tuple[str, ...] | list[str]) -> CryptoAttribute:
    """The offered attribute to answer: the first in our suite order (the offer's own order among lines of
    one suite). SdpError, naming the reasons, when none is usable."""
    usable = [c for c in offered if isinstance(c, CryptoAttribute)]
    for suite in suites:
        for crypto in usable:
            if crypto.suite == suite:
                return crypto
    if not offered:
        raise SdpError("secure media offered without a crypto attribute")
    reasons = sorted({str(c) for c in offered if isinstance(c, SdpError)}
                     | {f"suite {c.suite} not in media.srtp_suites" for c in usable})
    raise SdpError("no usable crypto attribute: " + "; ".join(reasons))


def new_key(suite: str, random_bytes: KeySource) -> bytes:
    """A fresh master key || master salt for ``suite``."""
    key_len, salt_len = SUITES[suite]
    key = random_bytes(key_len + salt_len)
    if len(key) != key_len + salt_len:
        raise SdpError("key source returned the wrong number of bytes")
    return key
