"""The second call of a warm transfer: the agent dials the human, with its own RTP media chain.

``dial_human`` places the call (UserAgent.dial) on a fresh CallMedia and returns a ``HumanCallLeg`` the
bridge's warm transfer (sipagent.bridge.warm) speaks the briefing into. Nothing is left behind on any path:
a call not answered, a dial cancelled, or ``close`` free the port pair and the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sipagent.bridge.warm import HumanUnavailable
from sipagent.call_media import CallMedia, EndpointLeg, MediaSettings
from sipagent.media.clock import MediaClock
from sipagent.rtp.ports import PortAllocator
from sipagent.sip.outgoing import DialError, OutgoingCall
from sipagent.sip.ua import UserAgent

log = logging.getLogger(__name__)


class HumanCallLeg:
    """The human's answered call (sipagent.bridge.warm.HumanLeg): audio in, hang-up and cleanup."""

    def __init__(self, call: OutgoingCall, chain: CallMedia, leg: EndpointLeg,
                 release: Callable[[CallMedia], None] = CallMedia.close) -> None:
        self.call = call
        self.chain = chain
        self.leg = leg
        self._release = release
        self._sent = asyncio.Event()  # set as each frame leaves (wakes wait_playout)
        assert chain.endpoint is not None
        chain.endpoint.on_sent = self._frame_sent
        self._closed = False

    def _frame_sent(self, payload: bytes | None, is_audio: bool) -> None:
        self._sent.set()

    def play_pcm24(self, pcm24k: bytes) -> None:
        if not self._closed:
            self.leg.push_audio(pcm24k)

    async def wait_playout(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.leg.buffered_ms > 0 and not self.call.ended.is_set() and not self._closed:
                    self._sent.clear()
                    ended = asyncio.ensure_future(self.call.ended.wait())
                    sent = asyncio.ensure_future(self._sent.wait())
                    try:
                        await asyncio.wait({ended, sent}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        ended.cancel()
                        sent.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.call.ended.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.call.hangup(), 10.0)
        finally:
            self._release(self.chain)


async def dial_human(ua: UserAgent, clock: MediaClock, ports: PortAllocator, settings: MediaSettings, uri: str,
                     ring_timeout: float, account: str = "", track: Callable[[CallMedia], None] | None = None,
                     release: Callable[[CallMedia], None] = CallMedia.close) -> HumanCallLeg:
    """Call ``uri`` for a warm transfer from ``account``, the line the caller's call is on ("": the first);
    the answered leg, or HumanUnavailable with why not. ``track`` is given the media chain once its endpoint
    is up, and ``release`` closes it on every path (the agent's books of its endpoints: metrics)."""
    chain = CallMedia(clock, ports, settings, cname="sipagent-warm")
    try:
        call = await ua.dial(uri, rtp_port=chain.local_port, ring_timeout=ring_timeout, account=account or None)
    except DialError as exc:
        release(chain)
        raise HumanUnavailable(exc.outcome, exc.reason) from None
    except BaseException:  # cancelled (the caller hung up while it rang): ua.dial has CANCELled it
        release(chain)
        raise
    try:
        assert call.media is not None
        leg = chain.build(call.media)
        if track is not None:
            track(chain)
        call.on_media_change = chain.apply
        log.info("warm transfer: %s answered (%s) with %s", uri, call.call_id, leg.codec)
        return HumanCallLeg(call, chain, leg, release)
    except BaseException:
        with contextlib.suppress(Exception):
            await call.hangup()
        release(chain)
        raise


__all__ = ["HumanCallLeg", "dial_human"]
