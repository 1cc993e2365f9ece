"""SRTP and SRTCP (RFC 3711, RFC 7714) for one call's stream, through libsrtp (the ``pylibsrtp`` binding).

The endpoint's "crypto context": it protects every packet we send and unprotects every packet we receive,
one libsrtp call each, and knows nothing of how the keys were agreed (SDES in SDP, say). No cipher code of
our own: libsrtp is the implementation every open-source SRTP stack here relies on.

Two libsrtp sessions, not one: a session holds a single wildcard-SSRC template, and we need one for what
we send (any outbound SSRC, our key) and one for what we receive (any inbound SSRC, the peer's key, with
libsrtp's replay protection). A packet that fails authentication or replays is dropped and counted, never
passed on; a context is built for one pair of keys and replaced, never re-keyed, when either changes.
"""

from __future__ import annotations

import pylibsrtp

# SRTP crypto suite name -> libsrtp profile. The names are RFC 4568's (and RFC 7714's for GCM).
PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
_REPLAY = ("replay check failed (bad index)", "replay check failed (index too old)")


class SrtpContext:
    """Protect and unprotect the RTP and RTCP of one stream with ``suite``: ``local_key`` (master key ||
    salt) for what we send, ``remote_key`` for what we receive. ``unprotect*`` returns None for a packet
    to drop, counted in ``auth_failures`` (forged, corrupted, or under another key), ``replayed`` (seen
    before, or too old for the replay window) or ``malformed`` (too short or too long for libsrtp)."""

    __slots__ = ("_rx", "_tx", "auth_failures", "malformed", "replayed", "suite")

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes) -> None:
        profile = PROFILES.get(suite)
        if profile is None:
            raise ValueError(f"unsupported SRTP suite {suite}")
        self.suite = suite
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(key=local_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
        self.auth_failures = 0
        self.replayed = 0
        self.malformed = 0

    def __repr__(self) -> str:  # never the keys
        return f"<SrtpContext {self.suite} dropped auth={self.auth_failures} replay={self.replayed}>"

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error as exc:
            self._count(exc)
        except ValueError:  # longer than libsrtp's buffer
            self.malformed += 1
        return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            self._count(exc)
        except ValueError:
            self.malformed += 1
        return None

    def _count(self, exc: pylibsrtp.Error) -> None:
        if str(exc) in _REPLAY:
            self.replayed += 1
        elif str(exc) == "authentication failure":
            self.auth_failures += 1
        else:  # a header libsrtp cannot read ("error parsing data", a truncated packet...)
            self.malformed += 1

    @property
    def dropped(self) -> int:
        return self.auth_failures + self.replayed + self.malformed
