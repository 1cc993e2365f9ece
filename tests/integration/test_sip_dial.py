"""Placing calls: the user agent, registered on Kamailio, dials a baresip phone registered there too.

Kamailio challenges our INVITE (407) and routes it by the phone's registration; the phone answers (RTP
flows both ways), refuses (486: busy) or just rings (our CANCEL after the ring timeout: no answer).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import wave
from pathlib import Path
from typing import cast

import pytest
from peers import Baresip, Kamailio, free_port, wait_until
from sipp import sipp_scenario

from sipagent.sdp import NegotiatedMedia
from sipagent.sip.ua import DialError, IncomingCall, OutgoingCall, UaSettings, UserAgent

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

LOUD_PCMU = bytes([0x00, 0x80] * 80)  # 20 ms of a full-scale square wave in G.711 μ-law


def ua_settings(kamailio: Kamailio, user: str) -> UaSettings:
    return UaSettings(
        registrar=kamailio.address, transport="udp", username=user, password=f"secret{user}",
        domain="127.0.0.1", listen_host="127.0.0.1", listen_port=0, public_host=None, expires=60,
        max_calls=4, trusted_hosts=[], codecs=["PCMU", "PCMA"],
    )


def direct_settings(**extra: object) -> UaSettings:
    """No registrar: the user agent dials targets (or its outbound proxy) directly."""
    return UaSettings(
        registrar=None, transport="udp", username="agent", password="", domain="127.0.0.1",
        listen_host="127.0.0.1", listen_port=0, public_host=None, expires=60, max_calls=4, trusted_hosts=[],
        codecs=["PCMU"], **extra,  # type: ignore[arg-type]
    )


async def _ignore(call: IncomingCall) -> None:
    return None


class RtpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(data)


def loudest(path: Path) -> int:
    with wave.open(str(path)) as wav:
        frames = wav.readframes(wav.getnframes())
    samples = struct.unpack(f"<{len(frames) // 2}h", frames[: len(frames) // 2 * 2])
    return max((abs(s) for s in samples), default=0)


async def _registered(kamailio: Kamailio, user: str) -> UserAgent:
    ua = UserAgent(ua_settings(kamailio, user), _ignore)
    await ua.start()
    assert await ua.wait_registered(10), ua.registration_state
    return ua


def test_dial_answered_with_rtp_both_ways(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    async def scenario() -> None:
        ua = await _registered(kamailio, "5101")
        # The phone answers only once its ringing has reached us: Kamailio's two UDP workers may relay a
        # 180 and a 200 sent back to back in either order, and a 1xx after the 200 is rightly ignored.
        phone = Baresip(tmp_path / "phone", "5102", kamailio.address, codecs=["PCMU"], record=True)
        await phone.start()
        rtp_port = free_port()
        loop = asyncio.get_running_loop()
        transport, sink = await loop.create_datagram_endpoint(RtpSink, local_addr=("127.0.0.1", rtp_port))
        progress: list[int] = []
        try:
            dialing = asyncio.ensure_future(ua.dial("5102", rtp_port=rtp_port, ring_timeout=15,
                                                    on_progress=lambda status, media: progress.append(status)))
            assert await wait_until(lambda: any(100 < status < 200 for status in progress), 10), progress
            await phone.accept()
            call = await dialing
            assert isinstance(call, OutgoingCall) and call.state == "confirmed"
            assert call.media is not None and call.media.codec == "PCMU"
            assert "5101" in call.from_uri and "5102" in call.to_uri and call.account == "5101"
            assert progress and all(100 < status < 200 for status in progress)
            assert await phone.wait_event("CALL_ESTABLISHED", 10), phone.event_types()
            media: NegotiatedMedia = call.media
            for seq in range(100):  # two seconds of a loud tone to the phone
                header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5101)
                transport.sendto(header + LOUD_PCMU, (media.remote_host, media.remote_port))
                await asyncio.sleep(0.02)
            assert await wait_until(lambda: len(sink.packets) >= 20, 5), "no RTP from the phone"
            await call.hangup()
            assert call.end_reason == "local-bye" and call.ended.is_set()
            assert await phone.wait_event("CALL_CLOSED", 10), phone.event_types()
        finally:
            dialing.cancel()
            transport.close()
            await phone.close()
            await ua.stop()
        heard = max(phone.recordings("dec"), key=lambda p: p.stat().st_size)
        assert loudest(heard) > 20000, "the phone did not hear our RTP"

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_dial_busy(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    async def scenario() -> None:
        ua = await _registered(kamailio, "5111")
        phone = Baresip(tmp_path / "phone", "5112", kamailio.address)
        await phone.start()
        try:
            dialing = asyncio.create_task(ua.dial("sip:5112@127.0.0.1", rtp_port=free_port(), ring_timeout=15))
            assert await phone.wait_event("CALL_INCOMING", 10), phone.event_types()
            await phone.hangup()  # refusing a ringing call: 486
            with pytest.raises(DialError) as refused:
                await dialing
            assert (refused.value.outcome, refused.value.status) == ("busy", 486), refused.value
            assert ua.active_calls == 0
        finally:
            await phone.close()
            await ua.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_dial_no_answer_cancels(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    async def scenario() -> None:
        ua = await _registered(kamailio, "5121")
        phone = Baresip(tmp_path / "phone", "5122", kamailio.address)
        await phone.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DialError) as unanswered:
                await ua.dial("5122", rtp_port=free_port(), ring_timeout=3)
            assert unanswered.value.outcome == "no-answer" and unanswered.value.status == 0, unanswered.value
            assert 2.5 < loop.time() - started < 10
            assert await phone.wait_event("CALL_INCOMING", 1), phone.event_types()
            assert await phone.wait_event("CALL_CLOSED", 5), phone.event_types()  # our CANCEL reached it
        finally:
            await phone.close()
            await ua.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_dial_cancelled_by_the_caller(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    async def scenario() -> None:
        ua = await _registered(kamailio, "5131")
        phone = Baresip(tmp_path / "phone", "5132", kamailio.address)
        await phone.start()
        try:
            dialing = asyncio.create_task(ua.dial("5132", rtp_port=free_port(), ring_timeout=30))
            assert await phone.wait_event("CALL_INCOMING", 10), phone.event_types()
            dialing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dialing
            assert await phone.wait_event("CALL_CLOSED", 5), phone.event_types()
            assert ua.active_calls == 0
        finally:
            await phone.close()
            await ua.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_dial_unknown_extension_is_rejected(kamailio: Kamailio) -> None:
    async def scenario() -> None:
        ua = await _registered(kamailio, "5141")
        try:
            with pytest.raises(DialError) as refused:
                await ua.dial("5999", rtp_port=free_port())
            assert (refused.value.outcome, refused.value.status) == ("rejected", 404)
            with pytest.raises(DialError, match="bad target"):
                await ua.dial("sip:bad target", rtp_port=free_port())
            with pytest.raises(ValueError, match="no SIP account"):
                await ua.dial("5102", rtp_port=free_port(), account="nobody")
        finally:
            await ua.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


class ProxySocket(asyncio.DatagramProtocol):
    """An outbound proxy that answers every INVITE 486 (and takes the ACK): what reached it is kept."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests.append(data)
        if not data.startswith(b"INVITE "):
            return
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        copied = [line for line in head.split("\r\n")[1:]
                  if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        response = "\r\n".join(["SIP/2.0 486 Busy Here", *copied, "Content-Length: 0", "", ""])
        assert self.transport is not None
        self.transport.sendto(response.replace("To: <sip:2002@pbx.invalid>", "To: <sip:2002@pbx.invalid>;tag=p1")
                              .encode(), addr)


def test_dial_goes_through_the_outbound_proxy() -> None:
    """With ``outbound_proxy`` set, the INVITE goes to the proxy (whatever the target's host) with the proxy
    pre-loaded as a loose Route, and the proxy's final answer is the call's outcome."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        proxy_port = free_port()
        transport, proxy = await loop.create_datagram_endpoint(ProxySocket, local_addr=("127.0.0.1", proxy_port))
        ua = UserAgent(direct_settings(outbound_proxy=f"127.0.0.1:{proxy_port}"), _ignore)
        await ua.start()
        try:
            with pytest.raises(DialError) as failure:
                await ua.dial("sip:2002@pbx.invalid", rtp_port=free_port(), ring_timeout=5)
            assert (failure.value.outcome, failure.value.status) == ("busy", 486)
            invite = proxy.requests[0].decode()
            assert invite.startswith("INVITE sip:2002@pbx.invalid SIP/2.0\r\n"), invite
            assert f"\r\nRoute: <sip:127.0.0.1:{proxy_port};lr>\r\n" in invite, invite
            assert await wait_until(lambda: any(r.startswith(b"ACK ") for r in proxy.requests), 5)
        finally:
            await ua.stop()
            transport.close()

    asyncio.run(scenario())


def test_a_dial_finding_its_first_hop_counts_as_a_call() -> None:
    """``active_calls`` (what sip.max_calls is checked against, both ways) counts a dial from the moment it
    is made: while its target's host resolves, a second dial or an INVITE checked against the limit sees it.
    Before, two dials checked at once both passed, and both became calls."""
    async def scenario() -> None:
        ua = UserAgent(direct_settings(), _ignore)
        await ua.start()
        resolved = asyncio.Event()
        first_hop = ua._first_hop

        async def slow_first_hop(uri: object) -> object:
            await resolved.wait()  # a DNS lookup under way
            return await first_hop(uri)  # type: ignore[arg-type]

        ua._first_hop = slow_first_hop  # type: ignore[assignment,method-assign]
        try:
            assert ua.active_calls == 0
            dialing = asyncio.create_task(ua.dial("sip:2002@127.0.0.1:9", rtp_port=free_port(), ring_timeout=1))
            await asyncio.sleep(0)
            assert ua.active_calls == 1
            dialing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dialing
            assert ua.active_calls == 0  # a dial given up while resolving leaves nothing counted
        finally:
            await ua.stop()

    asyncio.run(scenario())


def test_a_second_phone_answering_the_same_invite_is_acked_and_hung_up(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A ring group behind a forking proxy (SIPp plays both phones): two 2xx with different To tags. The
    call takes the first; the second gets its ACK and a BYE at once, instead of resending its 2xx for
    32 s to a caller who never answers it; then our hang-up goes to the first."""
    caplog.set_level(logging.INFO, logger="sipagent.sip.ua")

    async def scenario(target: str) -> None:
        ua = UserAgent(direct_settings(), _ignore)
        await ua.start()
        try:
            await asyncio.sleep(0.5)  # SIPp listening
            call = await ua.dial(target, rtp_port=free_port(), ring_timeout=10)
            assert call.state == "confirmed" and call.core.dialog is not None
            assert call.core.dialog.remote_tag == "first1"  # the first phone's (SIPp's tag for call 1)
            # The second branch's ACK and BYE, and its 200, before our hang-up of the first (SIPp wants them in
            # that order): waited for, not slept on.
            assert await wait_until(lambda: "the other branch's BYE answered 200" in caplog.text, 10), caplog.text
            assert call.state == "confirmed"
            await call.hangup()
            assert call.end_reason == "local-bye"
        finally:
            await ua.stop()

    with sipp_scenario("uas_two_branches.xml", ("127.0.0.1", 9), tmp_path / "phones", timeout_s=30) as phones:
        asyncio.run(asyncio.wait_for(scenario(f"sip:group@127.0.0.1:{phones.port}"), 30))
        result = phones.wait(15)
    assert result.returncode == 0, result.failed()
