"""SRTP keyed by SDES, end to end: against a real phone (baresip), re-keying by re-INVITE, our own offer.

baresip with its srtp module (``mediaenc=srtp-mand``) calls the
agent through Kamailio, and the two talk, hold, resume and hang up over SRTP.

The agent's RTP sockets are tapped (every datagram it sends and receives, as it is on the wire): the media
must be SRTP both ways (no payload on the wire equals the G.711 it carries, and every packet authenticates
under the keys the SDP negotiated), and forged, replayed and plain packets sent to the agent mid-call are
dropped and counted, never played, without disturbing the call.

The signalling is UDP here, so the agent is told it may take SDES keys over it
(``media.srtp_over_insecure_signalling``); a test below checks that without that it refuses. The same call
over TLS, with the agent in its safe default, is in test_tls_srtp.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import bridge_config, call_rig, loud_times, tts
from peers import Baresip, Kamailio, require, wait_until
from srtp_helpers import check_wire, negotiated, read_pcm24k, tap
from test_hold_and_codec_change import AGENT_LINES, ANSWER, GREETING, QUESTION, recognised, write_wav

from sipagent.agent import Agent
from sipagent.observability.logs import Redactor
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import is_rtcp
from sipagent.rtp.ports import PortAllocator
from sipagent.rtp.srtp import SrtpContext
from sipagent.sdp import (
    CryptoAttribute,
    NegotiatedMedia,
    SessionDescription,
    SrtpParams,
    SrtpPolicy,
    accept_answer,
    make_offer,
    offer_crypto,
)
from sipagent.sdp.crypto import parse_crypto
from sipagent.testing.caller import DTMF_PT, SipCaller

pytestmark = [pytest.mark.timeout(180), pytest.mark.peers]


def agent_config(tmp_path: Path, kamailio: Kamailio, user: str, **media: Any) -> Any:
    return bridge_config(tmp_path, sip={"registrar": kamailio.address, "username": user, "password": f"secret{user}",
                                        "domain": "127.0.0.1", "expires": 60},
                         agent={"greeting": GREETING, "barge_in": {"protect_greeting_ms": 0}},
                         realtime={"local": {"vad": {"prefix_ms": 600}}}, media=media)


def test_baresip_srtp_call_both_ways_hold_resume_bye(kamailio: Kamailio, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    require("baresip")
    if not Path("/usr/lib/baresip/modules/srtp.so").exists():
        pytest.skip("baresip's srtp module is not installed")
    keys = negotiated(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="sipagent")
    caplog.set_level(logging.INFO, logger="sipagent.realtime")  # every audio event: too slow to keep pace
    asyncio.run(_srtp_call(kamailio, tmp_path, keys))
    # Neither key, in any spelling, in a log line of the call or in what it wrote (transcript, events).
    secrets = {form for k in keys if k is not None for key in (k.local_key, k.remote_key)
               for form in (base64.b64encode(key).decode(), key.hex(), repr(key))}
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SRTP AES_CM_128_HMAC_SHA1_80" in logged  # the suite is said, at info
    written = "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.json*"))
    assert written, "no transcript was written"
    # The SIP wire trace (sipagent.sip.wire, off until SIGUSR1) holds the SDP as it was sent; the agent's log
    # formatter redacts every line it writes, traces included. Every other record has no key to redact.
    redactor = Redactor()
    leaks = [r.name for r in caplog.records if any(s in redactor.redact(r.getMessage()) for s in secrets)]
    raw = [r.name for r in caplog.records
           if r.name != "sipagent.sip.wire" and any(s in r.getMessage() for s in secrets)]
    assert not leaks and not raw and not [s for s in secrets if s in written], (leaks, raw)


async def _srtp_call(kamailio: Kamailio, tmp_path: Path, keys: list[SrtpParams | None]) -> None:
    user = "2461"
    config = agent_config(tmp_path, kamailio, user, srtp="required", srtp_over_insecure_signalling=True,
                          codecs=["PCMU"])
    said: list[tuple[str, str]] = []
    agent = Agent(config, on_transcript=lambda _id, role, text: said.append((role, text)))
    wire = tap(agent)
    await agent.start()
    phone = Baresip(tmp_path / "phone", "1461", kamailio.address, codecs=["PCMU"], record=True, mediaenc="srtp-mand")
    question = tmp_path / "question.wav"
    write_wav(question, await asyncio.to_thread(tts().synthesize, QUESTION), phone.source_rate)
    forged = 0
    try:
        assert agent.ua is not None and await agent.ua.wait_registered(20)
        await phone.start(timeout=30)
        await phone.dial(f"sip:{user}@{kamailio.address}")
        assert await phone.wait_event("CALL_ESTABLISHED", 20), (phone.event_types(), phone.log_tail())
        assert await wait_until(lambda: bool(agent.bridges), 10)
        bridge = next(iter(agent.bridges.values()))
        endpoint = bridge.media.endpoint  # type: ignore[attr-defined]  # the agent's _MediaLeg
        assert keys and keys[0] is not None, keys
        assert await wait_until(lambda: bridge.media.played_ms >= 1000, 15), "the greeting did not start"
        # Hostile packets at the agent's RTP port, mid-greeting: a tampered copy of the phone's last packet,
        # the same packet replayed, loud plain RTP, and junk. All dropped, counted, and the call goes on.
        received = [data for direction, data in wire if direction == "<" and not is_rtcp(data)]
        genuine = received[-1]
        tampered = genuine[:20] + bytes([genuine[20] ^ 0x55]) + genuine[21:]
        plain = struct.pack("!BBHII", 0x80, 0, 1, 160, 0xABCDEF) + b"\x00" * 160
        dropped_before = endpoint.srtp_dropped
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for packet in (tampered, genuine, plain, b"\x80\x00junk", *[tampered] * 20):
                attacker.sendto(packet, ("127.0.0.1", endpoint.local_port))
                forged += 1
        assert await wait_until(lambda: endpoint.srtp_dropped - dropped_before >= forged, 5), \
            (endpoint.srtp_dropped, dropped_before, forged)
        # A spoken turn each way: the greeting played out, the caller's question, the agent's answer.
        assert await wait_until(lambda: said[:1] == [("agent", GREETING)], 30), said
        assert await wait_until(lambda: bridge.media.buffered_ms == 0, 30)
        await phone.set_source(question)
        assert await wait_until(lambda: any(role == "caller" for role, _ in said), 30), said
        assert await wait_until(lambda: sum(role == "agent" for role, _ in said) >= 2, 30), said
        await asyncio.sleep(0.5)
        assert await wait_until(lambda: bridge.media.buffered_ms == 0, 30)
        await asyncio.sleep(0.5)
        # Back to a minute of silence: baresip hangs up when its source file ends.
        await phone.set_source(phone.workdir / "send.wav")
        # Hold and resume from the phone: re-INVITEs over SRTP (baresip keeps its key, so we keep ours).
        assert (await phone.command("hold"))["ok"]
        assert await wait_until(lambda: bridge.on_hold, 5), "the agent never learned of the hold"
        await asyncio.sleep(0.3)
        sent = endpoint.packets_sent
        await asyncio.sleep(1.5)
        assert endpoint.packets_sent == sent, "RTP into the held call"
        assert (await phone.command("resume"))["ok"]
        assert await wait_until(lambda: not bridge.on_hold and endpoint.packets_sent > sent + 50, 5)
        heard_from = endpoint.stats().packets_received
        assert await wait_until(lambda: endpoint.stats().packets_received > heard_from + 50, 5), \
            ("no media after resume", endpoint.stats(), endpoint.remote_address, heard_from, phone.log_tail(8))
        await phone.hangup()
        assert await wait_until(lambda: not agent.bridges, 10), "the agent did not end the call on BYE"
        srtp_dropped = endpoint.srtp_dropped
        heard_path = max(phone.recordings("dec"), key=lambda p: p.stat().st_size)
    finally:
        await phone.close()
        await agent.stop()
    # Both directions recognised: the caller's question by the agent, the agent's answer by the phone.
    assert next(text for role, text in said if role == "caller") == QUESTION, said
    assert [text for role, text in said if role == "agent"][:2] == [GREETING, ANSWER], said
    heard = read_pcm24k(heard_path)
    readings = recognised(heard, AGENT_LINES)
    assert any("thirty days" in text for text in readings), readings
    assert srtp_dropped >= forged
    check_wire(wire, keys)


def test_sdes_over_udp_is_refused_unless_allowed(kamailio: Kamailio, tmp_path: Path) -> None:
    """The same phone and signalling, without media.srtp_over_insecure_signalling: the agent refuses the
    RTP/SAVP offer (488): the keys came in the clear."""
    require("baresip")
    if not Path("/usr/lib/baresip/modules/srtp.so").exists():
        pytest.skip("baresip's srtp module is not installed")
    asyncio.run(_refused(kamailio, tmp_path))


async def _refused(kamailio: Kamailio, tmp_path: Path) -> None:
    user = "2462"
    config = agent_config(tmp_path, kamailio, user, srtp="optional", codecs=["PCMU"])
    agent = Agent(config)
    await agent.start()
    phone = Baresip(tmp_path / "phone", "1462", kamailio.address, codecs=["PCMU"], mediaenc="srtp-mand")
    try:
        assert agent.ua is not None and await agent.ua.wait_registered(20)
        await phone.start(timeout=30)
        await phone.dial(f"sip:{user}@{kamailio.address}")
        assert await phone.wait_event("CALL_CLOSED", 20), phone.event_types()
        assert not phone.count_events("CALL_ESTABLISHED")
        assert await wait_until(lambda: agent.stats.outcomes.get("rejected-srtp", 0) == 1, 5), agent.stats
    finally:
        await phone.close()
        await agent.stop()


# ----------------------------------------------------------- in process: re-keying by re-INVITE


class SrtpCaller(SipCaller):
    """Our SIP caller speaking SRTP, plus re-INVITEs that keep its key (a hold) or bring a new one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, srtp=("AES_CM_128_HMAC_SHA1_80",))
        self.crypto: list[CryptoAttribute] = []
        self.answers: list[str] = []

    async def dial(self, timeout: float = 10.0) -> None:
        await super().dial(timeout)
        assert self.local_sdp is not None  # our offer: its keys are the ones a re-INVITE may keep
        self.crypto = [parse_crypto(value or "") for name, value in self.local_sdp.media[0].attributes
                       if name == "crypto"]

    async def reinvite(self, *, new_key: bool, direction: str = "sendrecv") -> NegotiatedMedia:
        assert self._endpoint is not None and self.media is not None
        if new_key:
            self.crypto = offer_crypto(SrtpPolicy(mode="required", suites=self.srtp))
        offer = make_offer([self.codec], self.host, self._endpoint.local_port, self.sdp_session, direction=direction,
                           dtmf_payload_type=DTMF_PT, crypto=self.crypto)
        status, answer = await self.reoffer(offer)
        assert status == 200, status
        self.answers.append(answer.decode())
        media = accept_answer(SessionDescription.parse(answer), offer)
        assert media.srtp is not None
        if media.srtp != self.media.srtp:
            self._endpoint.set_crypto(SrtpContext(media.srtp.suite, media.srtp.local_key, media.srtp.remote_key))
        self.media = media
        self._endpoint.set_remote(media.remote_host, media.remote_port, media.payload_type, media.dtmf_payload_type,
                                  send=direction in ("sendrecv", "sendonly"))
        return media


def test_reinvites_keep_or_renew_the_keys_and_media_flows_on(tmp_path: Path) -> None:
    asyncio.run(_rekey(tmp_path))


async def _rekey(tmp_path: Path) -> None:
    config = bridge_config(tmp_path, media={"srtp": "required", "srtp_over_insecure_signalling": True},
                           agent={"greeting": GREETING, "barge_in": {"protect_greeting_ms": 0}})
    async with call_rig(config, codec="PCMU", dial=False) as rig:
        _, high = config.media.rtp_port_range
        caller = SrtpCaller(rig.clock, PortAllocator(high + 1, high + 20),
                            f"sip:agent@127.0.0.1:{rig.agent.sip_address[1]}", codec="PCMU", host="127.0.0.1")
        rig.caller = caller
        await caller.dial()
        assert caller.media is not None and caller.media.srtp is not None
        first = caller.media.srtp
        await rig.wait_for(lambda: caller.call_id in rig.agent.bridges, 5, "the call's bridge")
        bridge = rig.bridge
        endpoint: RtpEndpoint = bridge.media.endpoint  # type: ignore[attr-defined]
        await rig.wait_for(lambda: len(loud_times(caller)) >= 25, 15, "the greeting, decrypted by the caller")
        ssrc = endpoint.ssrc
        # A hold and a resume with the same key: the agent keeps its key and its SRTP context (and SSRC).
        held = await caller.reinvite(new_key=False, direction="sendonly")
        resumed = await caller.reinvite(new_key=False)
        assert held.srtp == resumed.srtp == first and endpoint.ssrc == ssrc
        heard = len(loud_times(caller))
        await rig.wait_for(lambda: len(loud_times(caller)) >= heard + 25, 15, "audio after the resume")
        # A new key from the caller (local, from its side): the agent answers with a new key of its own
        # (remote, from the caller's side) and sends under a new SSRC.
        renewed = await caller.reinvite(new_key=True)
        assert renewed.srtp is not None and renewed.srtp.local_key != first.local_key
        assert renewed.srtp.remote_key != first.remote_key and endpoint.ssrc != ssrc
        heard = len(loud_times(caller))
        await rig.wait_for(lambda: len(loud_times(caller)) >= heard + 25, 15, "audio after the re-key")
        received = endpoint.stats().packets_received
        await rig.wait_for(lambda: endpoint.stats().packets_received >= received + 50, 5, "the caller's packets")
        # The agent's answers never echo the caller's keys.
        caller_keys = [base64.b64encode(key).decode() for key in (first.local_key, renewed.srtp.local_key)]
        assert not [key for key in caller_keys for answer in caller.answers if key in answer]
        # Only packets in flight across the re-key (its exchange lasts a few packets' time, longer on a stalled
        # machine: at most half a second's here); a key applied wrongly would drop every packet after it.
        assert endpoint.srtp_dropped <= 25, endpoint.srtp_dropped


# ------------------------------------------------------- the UA: our own SRTP offer (late offer)


def test_a_late_offer_with_srtp_required_offers_savp_and_reads_the_key_from_the_ack() -> None:
    """An INVITE without SDP and media.srtp required: our 200 OK offers RTP/SAVP with one fresh key per
    suite; the caller's answer in the ACK picks one line by its tag, and the call's SRTP pairs our key of that
    line with the caller's."""
    from test_sip_direct import OFFER, ScriptedPeer, run, to_tag

    from sipagent.sip.ua import IncomingCall, UserAgent

    answered: list[NegotiatedMedia] = []

    async def on_call(call: IncomingCall) -> None:
        answered.append(await call.answer("127.0.0.1", 41004))
        await call.ended.wait()

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1)
        ok = await peer.status(200, "INVITE")
        offer = SessionDescription.parse(ok.split(b"\r\n\r\n", 1)[1])
        (audio,) = offer.media
        assert audio.proto == "RTP/SAVP" and audio.port == 41004
        ours = {crypto.tag: crypto for crypto in (parse_crypto(v or "") for n, v in audio.attributes if n == "crypto")}
        assert [c.suite for c in ours.values()] == ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
        assert len({c.key for c in ours.values()}) == 2  # a key per line
        theirs = CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_32", bytes(range(30)))
        answer = (OFFER.format(direction="sendrecv").replace("RTP/AVP", "RTP/SAVP")
                  + f"a=crypto:{theirs.to_value()}\r\n")
        peer.ack(1, to_tag(ok), body=answer)
        for _ in range(50):
            if answered:
                break
            await asyncio.sleep(0.05)
        assert answered and answered[0].srtp == SrtpParams("AES_CM_128_HMAC_SHA1_32", 2, ours[2].key, theirs.key)
        peer.request("BYE", 2, to_tag=to_tag(ok))
        await peer.status(200, "BYE")

    run(scenario, on_call, srtp="required", srtp_over_insecure_signalling=True,
        srtp_suites=["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
