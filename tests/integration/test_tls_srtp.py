"""SIP over TLS and SRTP together, the set-up issue 18 is for: baresip with its srtp module, registered and
calling over TLS through Kamailio (its TLS module, a throwaway CA made at test time), onto the agent
registered over TLS, with the agent in its safe default: SDES keys are taken because the INVITE came over
TLS (``media.srtp_over_insecure_signalling`` stays false).

- A call both ways: registration, a spoken turn each way (recognised), hold and resume (re-INVITEs over TLS
  repeating the phone's key, so the agent keeps its own key and SRTP context), BYE; every RTP packet on the
  wire both ways is SRTP under the negotiated keys, and none carries its G.711 in the clear.
- ``media.srtp: required`` refuses a plain offer that came over TLS (488, outcome ``rejected-srtp``).
- ``media.srtp: optional``: the same RTP/SAVP offer from the same phone is answered with SRTP over TLS and
  refused over UDP (488, outcome ``rejected-srtp``): over UDP the keys travelled in the clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import bridge_config, tts
from peers import Baresip, Kamailio, KamailioTls, free_port, require, wait_until
from srtp_helpers import check_wire, negotiated, read_pcm24k, tap
from test_hold_and_codec_change import AGENT_LINES, ANSWER, GREETING, QUESTION, recognised, write_wav
from tls_helpers import Pki, require_kamailio_tls

from sipagent.agent import Agent
from sipagent.config import Config
from sipagent.sdp import CryptoAttribute, NegotiatedMedia, SessionDescription, SrtpParams
from sipagent.sdp.crypto import parse_crypto
from sipagent.sip.message import SipMessage, SipResponse, StreamFramer, parse_message
from sipagent.sip.tls import TlsSettings
from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

SRTP_MODULE = Path("/usr/lib/baresip/modules/srtp.so")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def kamailio_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """Kamailio on UDP, TCP and TLS; it reaches TLS contacts over the connection their REGISTER came on."""
    require_kamailio_tls()
    require("baresip")
    if not SRTP_MODULE.exists():
        pytest.skip("baresip's srtp module is not installed")
    server = Kamailio(tmp_path_factory.mktemp("kamailio-tls"), tls=KamailioTls(pki.server_cert, pki.server_key))
    server.start()
    yield server
    server.stop()


def agent_config(tmp_path: Path, kamailio: Kamailio, pki: Pki, user: str, transport: str, **media: Any) -> Config:
    """The demo agent registered as ``user`` over ``transport`` ("tls" or "udp"), PCMU only."""
    sip: dict[str, Any] = {"username": user, "password": f"secret{user}", "domain": "127.0.0.1", "expires": 60}
    if transport == "tls":
        sip |= {"registrar": kamailio.tls_address, "transport": "tls", "tls": {"ca_file": str(pki.ca_file)}}
    else:
        sip |= {"registrar": kamailio.address}
    return bridge_config(tmp_path, sip=sip, agent={"greeting": GREETING, "barge_in": {"protect_greeting_ms": 0}},
                         realtime={"local": {"vad": {"prefix_ms": 600}}}, media={"codecs": ["PCMU"], **media})


def phone(tmp_path: Path, kamailio: Kamailio, pki: Pki, user: str, transport: str, **options: Any) -> Baresip:
    registrar = kamailio.tls_address if transport == "tls" else kamailio.address
    return Baresip(tmp_path / "phone", user, registrar, codecs=["PCMU"], transport=transport,
                   ca_file=pki.ca_file if transport == "tls" else None, **options)


def dial_uri(kamailio: Kamailio, user: str, transport: str) -> str:
    return (f"sip:{user}@{kamailio.tls_address};transport=tls" if transport == "tls"
            else f"sip:{user}@{kamailio.address}")


# -------------------------------------------------- the headline: baresip over TLS with SRTP, both ways


def test_baresip_over_tls_with_srtp_talks_holds_resumes_and_hangs_up(
        kamailio_tls: Kamailio, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    keys = negotiated(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="sipagent.sip.wire")
    asyncio.run(asyncio.wait_for(_tls_srtp_call(kamailio_tls, pki, tmp_path, keys), 100))
    # Every SIP message the agent sent or received went over TLS: the INVITE with its RTP/SAVP offer, the
    # phone's re-INVITEs (hold, resume) and its BYE among them.
    trace = [record.getMessage() for record in caplog.records if record.name == "sipagent.sip.wire"]
    received_invites = [m for m in trace if m.startswith("< ") and "\nINVITE sip:" in m]
    assert len(received_invites) >= 3, [m[:80] for m in trace]
    assert all(m.startswith("< TLS ") and "m=audio" in m and "RTP/SAVP" in m for m in received_invites)
    assert any(m.startswith("< TLS ") and "\nBYE sip:" in m for m in trace)
    assert trace and all(m[:6] in ("> TLS ", "< TLS ") for m in trace), {m[:6] for m in trace}


async def _tls_srtp_call(kamailio: Kamailio, pki: Pki, tmp_path: Path, keys: list[SrtpParams | None]) -> None:
    user = "4201"
    config = agent_config(tmp_path, kamailio, pki, user, "tls", srtp="required")
    assert config.media.srtp_over_insecure_signalling is False  # the safe default, unchanged
    said: list[tuple[str, str]] = []
    agent = Agent(config, on_transcript=lambda _id, role, text: said.append((role, text)))
    wire = tap(agent)
    await agent.start()
    caller = phone(tmp_path, kamailio, pki, "4202", "tls", record=True, mediaenc="srtp-mand")
    question = tmp_path / "question.wav"
    write_wav(question, await asyncio.to_thread(tts().synthesize, QUESTION), caller.source_rate)
    try:
        assert agent.ua is not None
        assert await agent.ua.wait_registered(20), agent.ua.registration_problem
        assert agent.ua.transport_name == "TLS"
        await caller.start(timeout=30)  # registered over TLS (reginfo OK)
        await caller.dial(dial_uri(kamailio, user, "tls"))
        assert await caller.wait_event("CALL_ESTABLISHED", 20), (caller.event_types(), caller.log_tail())
        assert await wait_until(lambda: bool(agent.bridges), 10)
        bridge = next(iter(agent.bridges.values()))
        assert getattr(bridge.call, "transport", None) == "TLS"
        endpoint = bridge.media.endpoint  # type: ignore[attr-defined]  # the agent's _MediaLeg
        assert keys and keys[0] is not None and keys[0].suite == "AES_CM_128_HMAC_SHA1_80", keys
        ssrc = endpoint.ssrc
        # A spoken turn each way: the greeting played out, the caller's question, the agent's answer.
        assert await wait_until(lambda: said[:1] == [("agent", GREETING)], 30), said
        assert await wait_until(lambda: bridge.media.buffered_ms == 0, 30)
        await caller.set_source(question)
        assert await wait_until(lambda: any(role == "caller" for role, _ in said), 30), said
        assert await wait_until(lambda: sum(role == "agent" for role, _ in said) >= 2, 30), said
        await asyncio.sleep(0.5)
        assert await wait_until(lambda: bridge.media.buffered_ms == 0, 30)
        await asyncio.sleep(0.5)
        await caller.set_source(caller.workdir / "send.wav")  # silence: baresip hangs up when its file ends
        # Hold and resume from the phone: re-INVITEs over TLS repeating its key, so the agent keeps its own
        # key and its running SRTP context (same SSRC); media stops during the hold and comes back after.
        applied = len(keys)
        assert (await caller.command("hold"))["ok"]
        assert await wait_until(lambda: bridge.on_hold, 5), "the agent never learned of the hold"
        await asyncio.sleep(0.3)
        sent = endpoint.packets_sent
        await asyncio.sleep(1.5)
        assert endpoint.packets_sent == sent, "RTP into the held call"
        assert (await caller.command("resume"))["ok"]
        assert await wait_until(lambda: not bridge.on_hold and endpoint.packets_sent > sent + 50, 5)
        heard_from = endpoint.stats().packets_received
        assert await wait_until(lambda: endpoint.stats().packets_received > heard_from + 50, 5), \
            ("no media after resume", endpoint.stats(), caller.log_tail(8))
        assert len(keys) >= applied + 2, keys  # the hold and the resume were both applied
        assert set(keys) == {keys[0]} and endpoint.ssrc == ssrc
        await caller.hangup()
        assert await wait_until(lambda: not agent.bridges, 10), "the agent did not end the call on BYE"
        heard_path = max(caller.recordings("dec"), key=lambda p: p.stat().st_size)
        outcomes = dict(agent.stats.outcomes)
    finally:
        await caller.close()
        await agent.stop()
    assert not [reason for reason in outcomes if reason.startswith("rejected")], outcomes
    # Both directions recognised: the caller's question by the agent, the agent's answer by the phone.
    assert next(text for role, text in said if role == "caller") == QUESTION, said
    assert [text for role, text in said if role == "agent"][:2] == [GREETING, ANSWER], said
    readings = recognised(read_pcm24k(heard_path), AGENT_LINES)
    assert any("thirty days" in text for text in readings), readings
    check_wire(wire, keys)  # SRTP both ways, from the answer to the BYE


# ------------------------------------------------------------------- what is refused, and where


def test_srtp_required_refuses_a_plain_offer_over_tls(kamailio_tls: Kamailio, pki: Pki, tmp_path: Path) -> None:
    """TLS protects the signalling, not the media: a plain RTP/AVP offer over TLS still gets 488 when
    media.srtp is required."""
    asyncio.run(asyncio.wait_for(_refused(kamailio_tls, pki, tmp_path, "4211", "tls", "required", None), 60))


@pytest.mark.parametrize("transport", ["tls", "udp"])
def test_an_savp_offer_is_taken_over_tls_and_refused_over_udp(kamailio_tls: Kamailio, pki: Pki, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              transport: str) -> None:
    """The same phone (srtp-mand: an RTP/SAVP offer with its key) and the same agent (media.srtp optional,
    srtp_over_insecure_signalling false); only the transport of the signalling differs."""
    if transport == "udp":
        asyncio.run(asyncio.wait_for(_refused(kamailio_tls, pki, tmp_path, "4221", "udp", "optional",
                                              "srtp-mand"), 60))
        return
    keys = negotiated(monkeypatch)
    asyncio.run(asyncio.wait_for(_taken(kamailio_tls, pki, tmp_path, keys), 60))


async def _taken(kamailio: Kamailio, pki: Pki, tmp_path: Path, keys: list[SrtpParams | None]) -> None:
    user = "4231"
    agent = Agent(agent_config(tmp_path, kamailio, pki, user, "tls", srtp="optional"))
    await agent.start()
    caller = phone(tmp_path, kamailio, pki, "4232", "tls", mediaenc="srtp-mand")
    try:
        assert agent.ua is not None
        assert await agent.ua.wait_registered(20), agent.ua.registration_problem
        await caller.start(timeout=30)
        await caller.dial(dial_uri(kamailio, user, "tls"))
        assert await caller.wait_event("CALL_ESTABLISHED", 20), (caller.event_types(), caller.log_tail())
        assert await wait_until(lambda: bool(agent.bridges), 10)
        bridge = next(iter(agent.bridges.values()))
        endpoint = bridge.media.endpoint  # type: ignore[attr-defined]
        assert keys and keys[0] is not None, keys
        assert await wait_until(lambda: endpoint.stats().packets_received > 50 and endpoint.packets_sent > 50, 10)
        assert endpoint.srtp_dropped == 0
        await caller.hangup()
        assert await wait_until(lambda: not agent.bridges, 10)
    finally:
        await caller.close()
        await agent.stop()
    assert "rejected-srtp" not in agent.stats.outcomes, agent.stats.outcomes


async def _refused(kamailio: Kamailio, pki: Pki, tmp_path: Path, user: str, transport: str, srtp: str,
                   mediaenc: str | None) -> None:
    """The phone's call is refused with 488 before it is answered, counted as outcome rejected-srtp."""
    agent = Agent(agent_config(tmp_path, kamailio, pki, user, transport, srtp=srtp))
    await agent.start()
    caller = phone(tmp_path, kamailio, pki, str(int(user) + 1), transport, mediaenc=mediaenc)
    try:
        assert agent.ua is not None
        assert await agent.ua.wait_registered(20), agent.ua.registration_problem
        assert agent.ua.transport_name == transport.upper()
        await caller.start(timeout=30)
        await caller.dial(dial_uri(kamailio, user, transport))
        closed = await caller.wait_event("CALL_CLOSED", 20)
        assert closed is not None, caller.event_types()
        assert "488" in str(closed.data), closed.data
        assert not caller.count_events("CALL_ESTABLISHED")
        assert await wait_until(lambda: agent.stats.outcomes.get("rejected-srtp", 0) == 1, 5), agent.stats
        assert not agent.bridges
    finally:
        await caller.close()
        await agent.stop()


# --------------------------- in process: re-INVITEs over TLS keep or renew the keys (docs/security.md)


class TlsScriptedPeer:
    """A caller over TLS writing its requests by hand (the agent listens for TLS with its certificate)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]) -> None:
        self.reader, self.writer, self.target = reader, writer, target
        self.port = writer.get_extra_info("sockname")[1]
        self.framer = StreamFramer()
        self.call_id = uuid.uuid4().hex
        self.inbox: list[SipMessage] = []

    @classmethod
    async def connect(cls, target: tuple[str, int], ca_file: Path) -> TlsScriptedPeer:
        context = ssl.create_default_context(cafile=str(ca_file))
        reader, writer = await asyncio.open_connection(*target, ssl=context, server_hostname="127.0.0.1")
        return cls(reader, writer, target)

    def request(self, method: str, cseq: int, *, to_tag: str = "", body: str = "") -> None:
        to = "<sip:agent@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        self.writer.write((
            f"{method} sip:agent@{self.target[0]}:{self.target[1]};transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            f"From: <sip:caller@127.0.0.1>;tag=tlspeer\r\nTo: {to}\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:{self.port};transport=tls>\r\n"
            f"Max-Forwards: 70\r\n{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"
        ).encode())

    async def final(self, method: str, timeout: float = 5.0) -> SipResponse:
        """The next final response to ``method``."""
        async def read() -> SipResponse:
            while True:
                for message in self.inbox:
                    if (isinstance(message, SipResponse) and message.status >= 200
                            and (message.headers.get("CSeq") or "").endswith(f" {method}")):
                        self.inbox.remove(message)
                        return message
                data = await self.reader.read(65536)
                assert data, "the agent closed the connection"
                self.inbox.extend(parse_message(raw) for raw in self.framer.feed(data))

        return await asyncio.wait_for(read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def savp_offer(version: int, key: CryptoAttribute, direction: str = "sendrecv") -> str:
    return ("v=0\r\n"
            f"o=caller 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-16\r\na=crypto:{key.to_value()}\r\na={direction}\r\n")


def answer_crypto(response: SipResponse) -> CryptoAttribute:
    assert response.status == 200, response.status
    (audio,) = SessionDescription.parse(response.body).media
    assert audio.proto == "RTP/SAVP", audio.proto
    (value,) = [v for name, v in audio.attributes if name == "crypto"]
    return parse_crypto(value or "")


def test_reinvites_over_tls_keep_or_renew_the_keys(pki: Pki) -> None:
    """Over TLS, with media.srtp required and srtp_over_insecure_signalling false: a re-INVITE repeating the
    caller's crypto line (hold, resume) gets our same key back and leaves the call's SRTP as it was; one with
    a new caller key gets a fresh key of ours, and the call's SRTP pairs the two new keys. No answer ever
    echoes a caller's key."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    first, second = (CryptoAttribute(1, suite, secrets.token_bytes(30)) for _ in range(2))

    async def scenario() -> None:
        calls: list[IncomingCall] = []
        media_changes: list[NegotiatedMedia] = []

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            call.on_media_change = media_changes.append
            await call.answer("127.0.0.1", free_port())
            await call.ended.wait()

        tls = TlsSettings(ca_file=str(pki.ca_file), cert_file=str(pki.agent_cert), key_file=str(pki.agent_key))
        settings = UaSettings(registrar=None, transport="tls", username="agent", password="", domain="127.0.0.1",
                              listen_host="127.0.0.1", listen_port=0, public_host=None, expires=60, max_calls=2,
                              trusted_hosts=[], codecs=["PCMU"], tls=tls, srtp="required")
        assert settings.srtp_over_insecure_signalling is False
        ua = UserAgent(settings, on_call)
        await ua.start()
        peer = await TlsScriptedPeer.connect(ua.local_address, pki.ca_file)
        try:
            peer.request("INVITE", 1, body=savp_offer(1, first))
            ok = await peer.final("INVITE")
            ours = answer_crypto(ok)
            tag = ok.to_addr.params["tag"] or ""
            peer.request("ACK", 1, to_tag=tag)
            assert await wait_until(lambda: bool(calls) and calls[0].state == "confirmed", 5), calls
            call = calls[0]
            assert call.transport == "TLS"
            assert call.media is not None and call.media.srtp is not None
            started = call.media.srtp
            assert (started.suite, started.local_key, started.remote_key) == (suite, ours.key, first.key)
            # Hold and resume, the caller's key repeated: our key repeated, the call's SRTP unchanged.
            for cseq, direction in ((2, "sendonly"), (3, "sendrecv")):
                peer.request("INVITE", cseq, to_tag=tag, body=savp_offer(cseq, first, direction))
                assert answer_crypto(await peer.final("INVITE")).key == ours.key
                peer.request("ACK", cseq, to_tag=tag)
                ours_now = {"sendonly": "recvonly", "sendrecv": "sendrecv"}[direction]
                assert await wait_until(lambda d=ours_now: call.media is not None  # type: ignore[misc]
                                        and call.media.direction == d, 5), call.media
                assert call.media.srtp == started
            # A new key from the caller: a fresh key of ours, and the call's SRTP pairs the new keys.
            peer.request("INVITE", 4, to_tag=tag, body=savp_offer(4, second))
            renewed = answer_crypto(await peer.final("INVITE"))
            peer.request("ACK", 4, to_tag=tag)
            assert renewed.key not in (ours.key, first.key, second.key)
            assert await wait_until(lambda: call.media is not None and call.media.srtp != started, 5)
            assert call.media.srtp is not None
            assert (call.media.srtp.local_key, call.media.srtp.remote_key) == (renewed.key, second.key)
            assert [m.srtp for m in media_changes][-1] == call.media.srtp
            peer.request("BYE", 5, to_tag=tag)
            assert (await peer.final("BYE")).status == 200
            assert await wait_until(call.ended.is_set, 5)
        finally:
            await peer.close()
            await ua.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))
