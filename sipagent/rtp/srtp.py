"""SRTP and SRTCP (RFC 3711, RFC 7714) for one call's stream, through libsrtp (the ``pylibsrtp`` binding).

The endpoint's "crypto context": it protects every packet we send and unprotects every packet we receive,
one libsrtp call each, and knows nothing of how the keys were agreed (SDES in SDP, say). No cipher code of
our own: libsrtp is the implementation every open-source SRTP stack here relies on.

Two libsrtp sessions, not one: a session holds a single wildcard-SSRC template, and we need one for what
we send (any outbound SSRC, our key) and one for what we receive (any inbound SSRC, the peer's key, with
libsrtp's replay protection). A packet that fails authentication or replays is dropped and counted, never
passed on; a context is built for one pair of keys and replaced, never re-keyed, when either changes.

libsrtp keeps one stream (replay window, rollover counter) per inbound SSRC that ever authenticated, in a
list it searches on every packet: a peer holding the key could send each packet under a new SSRC and make
every later packet of every SSRC cost more, for good. We keep the ``MAX_INBOUND_STREAMS`` most recently heard
and remove the others from libsrtp.
"""

from __future__ import annotations

import contextlib

import pylibsrtp

# SRTP crypto suite name -> libsrtp profile. The names are RFC 4568's (and RFC 7714's for GCM).
PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
_REPLAY = ("replay check failed (bad index)", "replay check failed (index too old)")
# A call's peer changes SSRC on a transfer or a re-bridge, and its RTCP may come from one more: a handful per
# call. A stream removed here starts afresh (replay window, rollover counter) if its SSRC comes back.
MAX_INBOUND_STREAMS = 16


def _session(key: bytes, ssrc_type: int, profile: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile))


class SrtpContext:
    """Protect and unprotect the RTP and RTCP of one stream with ``suite``: ``local_key`` (master key ||
    salt) for what we send, ``remote_key`` for what we receive. ``unprotect*`` returns None for a packet
    to drop, counted in ``auth_failures`` (forged, corrupted, or under another key), ``replayed`` (seen
    before, or too old for the replay window) or ``malformed`` (too short or too long for libsrtp)."""

    __slots__ = ("_last_ssrc", "_rx", "_rx_ssrcs", "_tx", "auth_failures", "malformed", "replayed", "suite")

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes) -> None:
        profile = PROFILES.get(suite)
        if profile is None:
            raise ValueError(f"unsupported SRTP suite {suite}")
        self.suite = suite
        self._tx = _session(local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, profile)
        self._rx = _session(remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND, profile)
        self._reset()

    def with_send_key(self, local_key: bytes) -> SrtpContext:
        """A context for a renegotiation that changed only our key: a new session for what we send, and this
        one's receive session, whose rollover counters and replay window go on, as the peer's stream does
        under its unchanged key (a fresh one would expect rollover 0 and refuse every packet after the
        peer's sequence number had wrapped). The counts start at 0, as a new context's do."""
        context = SrtpContext.__new__(SrtpContext)
        context.suite = self.suite
        context._tx = _session(local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, PROFILES[self.suite])
        context._rx = self._rx
        context._reset()
        context._rx_ssrcs, context._last_ssrc = self._rx_ssrcs, self._last_ssrc
        return context

    def _reset(self) -> None:
        self.auth_failures = 0
        self.replayed = 0
        self.malformed = 0
        self._rx_ssrcs: dict[bytes, None] = {}  # inbound SSRCs with a libsrtp stream, least recently heard first
        self._last_ssrc = b""

    def __repr__(self) -> str:  # never the keys
        return f"<SrtpContext {self.suite} dropped auth={self.auth_failures} replay={self.replayed}>"

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        try:
            plain = self._rx.unprotect(packet)
        except pylibsrtp.Error as exc:
            self._count(exc)
        except ValueError:  # longer than libsrtp's buffer
            self.malformed += 1
        else:
            if plain[8:12] != self._last_ssrc:  # nearly every packet: the SSRC of the one before
                self._heard(plain[8:12])
            return plain
        return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            plain = self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            self._count(exc)
        except ValueError:
            self.malformed += 1
        else:
            if plain[4:8] != self._last_ssrc:  # the sender's SSRC: libsrtp's stream for SRTCP too
                self._heard(plain[4:8])
            return plain
        return None

    @property
    def inbound_streams(self) -> int:
        """Inbound SSRCs libsrtp keeps a stream for (at most ``MAX_INBOUND_STREAMS``)."""
        return len(self._rx_ssrcs)

    def _heard(self, ssrc: bytes) -> None:
        """``ssrc`` authenticated a packet (libsrtp made its stream if it was new): it becomes the most
        recently heard, and the least recently heard goes when there are too many."""
        self._last_ssrc = ssrc
        streams = self._rx_ssrcs
        streams.pop(ssrc, None)
        streams[ssrc] = None
        if len(streams) > MAX_INBOUND_STREAMS:
            oldest = next(iter(streams))
            del streams[oldest]
            with contextlib.suppress(pylibsrtp.Error):  # never made: nothing to remove
                self._rx.remove_stream(int.from_bytes(oldest, "big"))

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
