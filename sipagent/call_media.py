"""One call's media chain: its RTP port, then the endpoint, playout queue and bridge codecs for its codec.

The answer's SDP needs the port before the codec is settled, so the port pair is bound first
(``CallMedia(...)``); once the offer/answer has picked the codec, ``build`` makes the endpoint for it, its
frame, silence, jitter buffer and playout queue, so the first packet either way is in the negotiated
codec. ``apply`` follows every later negotiation (a re-INVITE: hold and resume, another address, SRTP
keys, another codec, for which the endpoint and the bridge are re-configured in place).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sipagent.bridge.call import CallBridge
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import CODEC_SILENCE
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.ports import BoundPair, PortAllocator
from sipagent.rtp.srtp import SrtpContext
from sipagent.sdp import NegotiatedMedia, SrtpParams

log = logging.getLogger(__name__)


class EndpointLeg:
    """Adapts an RtpEndpoint to what the bridge needs (sipagent.bridge.legs.MediaLeg)."""

    def __init__(self, endpoint: RtpEndpoint, playout: PcmPlayout, codec: str) -> None:
        self.endpoint = endpoint
        self.playout = playout  # the endpoint's, which encodes each frame as it leaves
        self.codec = codec

    def push_audio(self, pcm24k: bytes) -> None:
        self.playout.push(pcm24k)
        self.endpoint.start_talkspurt()  # the first frame of a reply goes out now, not at the next tick

    def flush_audio(self) -> int:
        return self.playout.flush()

    def pause_audio(self) -> None:
        self.playout.pause()

    def resume_audio(self) -> None:
        self.playout.resume()

    def duck_audio(self, gain: float) -> None:
        self.playout.duck(gain)

    def unduck_audio(self) -> None:
        self.playout.unduck()

    @property
    def played_ms(self) -> int:
        return self.playout.played_ms

    @property
    def buffered_ms(self) -> int:
        return self.playout.buffered_ms

    @property
    def sent_audio(self) -> tuple[bytes, float]:
        return self.playout.sent_pcm, self.playout.sent_mean_square

    @property
    def packets_received(self) -> int:
        return self.endpoint.rx_stats.packets

    @property
    def dtmf_method(self) -> str | None:
        return self.endpoint.dtmf_method

    def media_report(self) -> dict[str, int | float | None]:
        return self.endpoint.stats().summary()

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.endpoint.send_dtmf(digit, duration_ms)

    @property
    def dtmf_sending(self) -> bool:
        return self.endpoint.dtmf_sending


@dataclass(frozen=True)
class MediaSettings:
    """How every call's endpoint is made (the ``media`` section, and where SIP listens)."""

    bind_host: str
    jitter_ms: int
    symmetric: bool
    playout_class: type[PcmPlayout] = PcmPlayout  # the benchmarks put an observing subclass here


class CallMedia:
    def __init__(self, clock: MediaClock, ports: PortAllocator, settings: MediaSettings, cname: str) -> None:
        """Binds the call's RTP port pair: the port the answer offers (``local_port``)."""
        self.clock = clock
        self.ports = ports
        self.settings = settings
        self.cname = cname
        self._sockets: BoundPair | None = ports.bind_pair(settings.bind_host)
        self.local_port = self._sockets[0]
        self.endpoint: RtpEndpoint | None = None  # none until ``build``
        self.leg: EndpointLeg | None = None
        self.bridge: CallBridge | None = None  # none until ``attach``
        self.codec = ""
        self.remote: tuple[str, int] | None = None
        self.srtp: SrtpParams | None = None

    def build(self, media: NegotiatedMedia) -> EndpointLeg:
        """The endpoint and playout queue for the answered call's codec, on the port bound for it, set up
        for ``media`` (keys, where to send, hold); the bridge's leg on it."""
        assert self.endpoint is None and self._sockets is not None, "one chain, built once"
        silence = CODEC_SILENCE[media.codec]
        sockets, self._sockets = self._sockets, None
        settings = self.settings
        playout = settings.playout_class(media.codec)
        self.endpoint = RtpEndpoint(self.clock, self.ports, bind_host=settings.bind_host,
                                    jitter_ms=settings.jitter_ms, silence=silence, cname=self.cname,
                                    eager=True,  # the model is not an ear: no playout delay on the way up
                                    symmetric=settings.symmetric,
                                    playout=playout, sockets=sockets)
        self.codec = media.codec
        self.leg = EndpointLeg(self.endpoint, playout, media.codec)
        self.apply(media)
        return self.leg

    def apply(self, media: NegotiatedMedia) -> None:
        """A negotiation (the answer's, then each re-INVITE's): the endpoint's keys, codec and remote, and
        the bridge's codecs and hold state, all from the one ``NegotiatedMedia``."""
        endpoint, bridge = self.endpoint, self.bridge
        assert endpoint is not None, "apply() after build()"
        if media.srtp != self.srtp:
            # First, so that not one packet goes out under the old keys (or in the clear) to the new media.
            # An unchanged negotiation (a hold, a refresh) keeps the context: its rollover counters and
            # replay window go on.
            endpoint.set_crypto(self._context(media.srtp, self.srtp, endpoint.crypto))
            self.srtp = media.srtp
            log.info("media: %s", f"SRTP {media.srtp.suite}" if media.srtp else "plain RTP")
        if media.codec != self.codec:
            self.codec = media.codec
            # Audio still queued for the caller is PCM: it goes on, encoded in the new codec as it leaves.
            assert self.leg is not None
            self.leg.playout.use_codec(media.codec)
            endpoint.set_codec(CODEC_SILENCE[media.codec])
            if bridge is not None:
                bridge.change_codec(media.codec)
        remote = (media.remote_host, media.remote_port)
        if media.may_send:  # a hold's address (0.0.0.0, or the same one) is not a move
            if self.remote is not None and remote != self.remote:
                log.info("media moves from %s:%s to %s:%s", *self.remote, *remote)
            self.remote = remote
        endpoint.set_remote(media.remote_host, media.remote_port, media.payload_type, media.dtmf_payload_type,
                            send=media.may_send, rtcp=media.remote_rtcp)
        if bridge is not None:
            bridge.set_hold(media.on_hold, media.direction)
            bridge.listen_for_keys(media.dtmf_payload_type is None)

    @staticmethod
    def _context(new: SrtpParams | None, old: SrtpParams | None, current: SrtpContext | None) -> SrtpContext | None:
        """The SRTP context for ``new`` keys. When the peer kept its key (only our key, or the tag, changed)
        its stream goes on, and so does our receive session."""
        if new is None:
            return None
        if current is not None and old is not None and (old.suite, old.remote_key) == (new.suite, new.remote_key):
            return current.with_send_key(new.local_key)
        return SrtpContext(new.suite, new.local_key, new.remote_key)

    def attach(self, bridge: CallBridge, media: NegotiatedMedia) -> None:
        """The bridge for the answered call, built on ``leg`` for ``media``'s codec: from now on the endpoint's
        per-frame callbacks go straight to it, and it learns of a hold."""
        endpoint = self.endpoint
        assert endpoint is not None
        self.bridge = bridge
        # The parts themselves, not CallBridge's methods that forward to them: one call less per frame each
        # way (the bridge keeps one uplink and one downlink for the call; a codec change re-configures them).
        endpoint.on_frame = bridge.uplink.caller_frame
        endpoint.on_gap = bridge.uplink.caller_gap
        endpoint.on_sent = bridge.downlink.frame_sent
        endpoint.on_dtmf = bridge.on_dtmf
        bridge.set_hold(media.on_hold, media.direction)
        bridge.listen_for_keys(media.dtmf_payload_type is None)

    def close(self) -> None:
        """The endpoint closed, or the port bound for a call never answered given back (idempotent)."""
        if self.endpoint is not None:
            self.endpoint.close()
        elif self._sockets is not None:
            sockets, self._sockets = self._sockets, None
            self.ports.close_pair(sockets)


__all__ = ["CallMedia", "EndpointLeg", "MediaSettings"]
