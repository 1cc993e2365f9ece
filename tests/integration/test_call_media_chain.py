"""Each call's media chain is built once, for the codec its answer settled (sipagent.call_media).

A real G.722 call (our SIP caller, the agent in direct mode, the offline backend): the agent's endpoint is
made with G.722's frame and silence and never re-framed afterwards (it used to be made for PCMU, a
placeholder, and re-framed after the answer: set_codec), and every RTP packet it sends, the first one
included, is G.722. A call that is never answered gives its port back.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import bridge_config, call_rig
from peers import free_port
from srtp_helpers import tap

from sipagent.call_media import CallMedia, MediaSettings
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import CODEC_SILENCE
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import RtpPacket, is_rtcp, parse_media
from sipagent.rtp.ports import PortAllocator
from sipagent.rtp.srtp import SrtpContext
from sipagent.sdp import NegotiatedMedia, SrtpParams

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]


def test_a_g722_call_is_framed_for_g722_from_its_first_packet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_g722_call(tmp_path, monkeypatch))


async def _g722_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = bridge_config(tmp_path, agent={"greeting": "Hello and thank you for calling the outdoor store."})
    low, high = config.media.rtp_port_range
    built: list[tuple[RtpEndpoint, bytes]] = []  # the agent's endpoints, with the silence each was made with
    reframed: list[bytes] = []  # set_codec on one of them: the silence it was moved to
    init, set_codec = RtpEndpoint.__init__, RtpEndpoint.set_codec

    def spy_init(self: RtpEndpoint, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if low <= self.local_port <= high:
            built.append((self, kwargs["silence"]))

    def spy_set_codec(self: RtpEndpoint, silence: bytes, convert: Any = None) -> None:
        if low <= self.local_port <= high:
            reframed.append(silence)
        set_codec(self, silence, convert)

    monkeypatch.setattr(RtpEndpoint, "__init__", spy_init)
    monkeypatch.setattr(RtpEndpoint, "set_codec", spy_set_codec)
    async with call_rig(config, codec="G722", dial=False) as rig:
        wire = tap(rig.agent)
        await rig.caller.dial()
        await rig.wait_for(lambda: rig.caller.call_id in rig.agent.bridges, 5, "the bridge")
        await rig.wait_for(lambda: rig.bridge.media.played_ms >= 500, 15, "the greeting to play")
        endpoint = rig.bridge.media.endpoint  # type: ignore[attr-defined]  # call_media.EndpointLeg
        assert rig.bridge.codec == "G722"
    assert [silence for _, silence in built] == [CODEC_SILENCE["G722"]], "made for another codec first"
    assert built[0][0] is endpoint and endpoint.playout.wire_silence == CODEC_SILENCE["G722"]
    assert reframed == [], "the endpoint was re-framed after it was made"
    sent = [parse_media(data) for direction, data in wire if direction == ">" and not is_rtcp(data)]
    assert len(sent) >= 25, len(sent)
    assert {(pt, len(payload)) for pt, _, _, _, payload in sent} == {(9, 160)}


def test_a_call_never_answered_gives_its_port_back() -> None:
    async def body() -> None:
        clock = MediaClock()
        low = free_port(span=12)
        ports = PortAllocator(low, low + 10)
        chain = CallMedia(clock, ports, MediaSettings("127.0.0.1", 60, True), cname="sipagent-test")
        assert ports.in_use == 1 and low <= chain.local_port < low + 10 and chain.endpoint is None
        chain.close()
        chain.close()
        assert ports.in_use == 0
        again = CallMedia(clock, ports, MediaSettings("127.0.0.1", 60, True), cname="sipagent-test")
        assert again.local_port != chain.local_port  # rotation: a released port is not handed out at once
        again.close()

    asyncio.run(body())


def test_a_new_key_of_ours_keeps_hearing_the_peer_after_its_sequence_wrapped() -> None:
    """A re-INVITE that renews only our SRTP key (another tag, a renewed offer): the peer's stream goes on
    under its key, its rollover counter already 1, and every packet of it must still be heard."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    ours, theirs, renewed = bytes([1]) * 30, bytes([2]) * 30, bytes([3]) * 30

    async def body() -> None:
        clock = MediaClock()
        clock.start()
        low = free_port(span=12)
        chain = CallMedia(clock, PortAllocator(low, low + 10), MediaSettings("127.0.0.1", 60, True),
                          cname="sipagent-test")
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        phone = SrtpContext(suite, theirs, ours)

        def media(local_key: bytes, tag: int) -> NegotiatedMedia:
            return NegotiatedMedia("PCMU", 0, 8000, None, "127.0.0.1", peer.getsockname()[1], 20, "sendrecv",
                                   SrtpParams(suite, tag, local_key, theirs))

        async def send(sequences: range) -> None:
            for seq in sequences:
                packet = RtpPacket(payload_type=0, sequence=seq & 0xFFFF, ssrc=0xABCD, timestamp=seq * 160,
                                   payload=b"\xd5" * 160)
                peer.sendto(phone.protect(packet.serialize()), ("127.0.0.1", chain.local_port))
                await asyncio.sleep(0.005)

        try:
            chain.build(media(ours, 1))
            endpoint = chain.endpoint
            assert endpoint is not None
            await send(range(65530, 65540))  # through the wrap: the peer's rollover counter is 1
            chain.apply(media(renewed, 2))
            await send(range(65540, 65550))
            await asyncio.sleep(0.1)
            assert endpoint.srtp_dropped == 0 and endpoint.stats().packets_received == 20
        finally:
            peer.close()
            chain.close()
            clock.stop()

    asyncio.run(body())
