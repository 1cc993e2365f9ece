"""Hold, resume, codec changes and address changes by re-INVITE, on real calls.

In process: the agent (direct mode, offline backend) and our SIP caller, taught the re-INVITEs a phone or a
PBX sends mid-call; what the model receives, what the caller hears and what the agent records are checked,
with the offline recogniser for what was said. Then the same re-INVITEs as Asterisk and FreeSWITCH write
them, played by SIPp against `sipagent run` in its own process, with the agent's RTP watched on sockets the
SDP points at; and baresip holding and resuming from the phone, through Kamailio.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socket
import struct
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import RunningAgent, running_agent
from bridge_helpers import Rig, bridge_config, call_rig, loud_times, tts
from demo_config import demo_data, spoken_order_lookup
from peers import Baresip, Kamailio, require, wait_until
from sipp import sipp_scenario

from sipagent.agent import Agent
from sipagent.bridge.call import CallBridge
from sipagent.media.kernel import CODEC_SILENCE, Decoder24k, Encoder24k, Resampler, transcode
from sipagent.media.vad import level_db
from sipagent.realtime.local.asr import GrammarRecognizer
from sipagent.rtp.ports import PortAllocator
from sipagent.sdp import NegotiatedMedia, SessionDescription, accept_answer, make_offer
from sipagent.testing.caller import DTMF_PT, SipCaller, _ObservedPlayout

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]

GREETING = ("Hello and thank you for calling the outdoor store. You can ask me about an order, a return, or a "
            "colleague. How can I help you today?")
QUESTION = "i would like a refund"  # of the demo's phrases, the one its recogniser gets in narrowband too
ANSWER = "You can return any item within thirty days. I will email you a prepaid return label."
# What a caller may hear: recognising the answer among these shows it was intelligible.
AGENT_LINES = [GREETING, ANSWER, "Let me check that order for you.",
               "Sorry, I can help with orders, returns, or put you through to a colleague."]
CALLER_LINES = ["where is my order seven seven two one", "how do i return an item", QUESTION, "can i speak to a human",
                "that is all thank you"]
# The PBX's music on hold, as many play it: an announcement, here one the model would answer if it heard it.
ON_HOLD = "where is my order seven seven two one"
LOUD_DB = -45.0


class ReinvitingCaller(SipCaller):
    """Our SIP caller, plus what a phone or a PBX sends mid-call: a re-INVITE that holds (sendonly, inactive,
    or c=0.0.0.0 as older phones do), resumes, or moves the call to another codec."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[str] = []  # the agent's SDP answers, as text

    async def reinvite(self, *, codec: str | None = None, direction: str = "sendrecv",
                       unspecified: bool = False) -> NegotiatedMedia:
        assert self._endpoint is not None
        codec = codec or self.codec
        host = "0.0.0.0" if unspecified else self.host
        offer = make_offer([codec], host, self._endpoint.local_port, self.sdp_session, direction=direction,
                           dtmf_payload_type=DTMF_PT)
        status, answer = await self.reoffer(offer)
        assert status == 200, status
        self.answers.append(answer.decode())
        media = accept_answer(SessionDescription.parse(answer))
        if media.codec != self.codec:
            self._switch_codec(media.codec)
        self._endpoint.set_remote(media.remote_host, media.remote_port, media.payload_type,
                                  media.dtmf_payload_type, send=direction in ("sendrecv", "sendonly"))
        return media

    def _switch_codec(self, codec: str) -> None:
        assert self._endpoint is not None
        previous, self.codec = self.codec, codec
        self._decoder, self._encoder, self._echo_encoder = Decoder24k(codec), Encoder24k(codec), Encoder24k(codec)
        self._endpoint.set_codec(CODEC_SILENCE[codec], lambda data: transcode(data, previous, codec))
        if isinstance(self._endpoint.playout, _ObservedPlayout):
            self._endpoint.playout._decoder = Decoder24k(codec)

    @property
    def packets_received(self) -> int:
        assert self._endpoint is not None
        return self._endpoint.stats().packets_received


@contextlib.asynccontextmanager
async def phone_rig(tmp_path: Path, codec: str = "G722", **sections: dict[str, Any]) -> AsyncIterator[Rig]:
    """``call_rig`` with a caller that sends re-INVITEs. The backend's turns start 0.6 s before the speech:
    its recogniser misses words in narrowband (G.711) audio with less lead-in."""
    config = bridge_config(tmp_path, realtime={"local": {"vad": {"prefix_ms": 600}}}, **sections)
    async with call_rig(config, codec=codec, dial=False) as rig:
        _, high = config.media.rtp_port_range
        rig.caller = ReinvitingCaller(rig.clock, PortAllocator(high + 1, high + 20),
                                      f"sip:agent@127.0.0.1:{rig.agent.sip_address[1]}", codec=codec, host="127.0.0.1")
        await rig.caller.dial()
        yield rig


def caller_of(rig: Rig) -> ReinvitingCaller:
    assert isinstance(rig.caller, ReinvitingCaller)
    return rig.caller


class AppendSpy:
    """When the bridge sent the model caller audio (each input_audio_buffer.append, however it went)."""

    def __init__(self, bridge: CallBridge) -> None:
        link: Any = bridge.realtime.link
        assert link is not None
        self.times: list[float] = []
        send_now, send = link.send_now, link.send

        def spy_now(text: bytes) -> bool:
            self.times.append(time.monotonic())
            return bool(send_now(text))

        async def spy_send(event: dict[str, Any] | str) -> None:
            if isinstance(event, str):
                self.times.append(time.monotonic())
            await send(event)

        link.send_now, link.send = spy_now, spy_send

    def between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.times)


def loud_frames(pcm24k: bytes) -> int:
    return sum(level_db(pcm24k[i:i + 960]) >= LOUD_DB for i in range(0, len(pcm24k) - 959, 960))


def heard_since(caller: SipCaller, since: float) -> bytes:
    """What the caller heard from ``since`` on, 24 kHz PCM16."""
    first = next((i for i, at in enumerate(caller.heard.frame_times) if at >= since), len(caller.heard.frame_times))
    return bytes(caller.heard.pcm[first * 960:])


def recognised(pcm24k: bytes, lines: list[str]) -> list[str]:
    """The recogniser's readings of each stretch of speech in ``pcm24k`` (split at 0.5 s pauses), cut with
    0.4, 0.6 and 0.8 s of lead-in: on narrowband audio the grammar recogniser is that sensitive to where
    an utterance starts, and garbled audio reads as the right phrase with none of them."""
    levels = [level_db(pcm24k[i:i + 960]) >= LOUD_DB for i in range(0, len(pcm24k) - 959, 960)]
    recognizer = GrammarRecognizer(lines)
    out: list[str] = []
    start: int | None = None
    quiet = 0
    for index, loud in enumerate([*levels, *[False] * 25]):
        if loud:
            start, quiet = (index if start is None else start), 0
        elif start is not None:
            quiet += 1
            if quiet == 25:
                out += [recognizer.recognize(pcm24k[max(0, start - lead) * 960:index * 960]) for lead in (20, 30, 40)]
                start = None
    return out


# ------------------------------------------------------------------------------------ in process


def test_hold_pauses_everything_and_resume_loses_nothing(tmp_path: Path) -> None:
    asyncio.run(_hold_and_resume(tmp_path))


async def _hold_and_resume(tmp_path: Path) -> None:
    greeting_pcm = await asyncio.to_thread(tts().synthesize, GREETING)
    music = await asyncio.to_thread(tts().synthesize, ON_HOLD)
    question = await asyncio.to_thread(tts().synthesize, QUESTION)
    idle_s, rtp_timeout_s = 3, 5
    async with phone_rig(tmp_path, agent={"greeting": GREETING, "idle_timeout_s": idle_s,
                                          "barge_in": {"protect_greeting_ms": 0}},
                         media={"rtp_timeout_s": rtp_timeout_s}) as rig:
        caller = caller_of(rig)
        await rig.wait_for(lambda: len(loud_times(caller)) >= 50, 15, "1 s of the greeting")
        spy = AppendSpy(rig.bridge)
        # 1. The phone holds the agent in mid-greeting (a=sendonly) and plays its music on hold.
        await caller.reinvite(direction="sendonly")
        held_at = time.monotonic()
        assert "\r\na=recvonly\r\n" in caller.answers[-1], caller.answers[-1]
        await asyncio.sleep(0.1)  # packets sent before the hold took effect may still arrive
        received, queued = caller.packets_received, rig.bridge.media.buffered_ms
        assert rig.bridge.state == "held" and rig.bridge.on_hold and queued > 0, (rig.bridge.state, queued)
        caller.play(music)
        await asyncio.sleep(3.0)
        assert caller.packets_received == received, "the agent sent RTP into the held call"
        # The model streams the rest of its greeting meanwhile (a little ahead of real time): it all waits.
        assert rig.bridge.media.buffered_ms >= queued + 1000, (queued, rig.bridge.media.buffered_ms)
        assert spy.between(held_at + 0.05, time.monotonic()) == 0, "the music reached the model"
        resumed_at = time.monotonic()  # before the resume: the hold lasted at least from its 200 to here
        await caller.reinvite(direction="sendrecv")
        assert "\r\na=sendrecv\r\n" in caller.answers[-1]
        await rig.agent_turn(quiet_s=0.6)  # the rest of the greeting
        assert rig.bridge.state == "live"
        # Every millisecond queued for the greeting was played, once: nothing dropped, nothing replayed.
        assert rig.bridge.media.played_ms == rig.bridge.conversation.queued_ms
        heard = loud_frames(bytes(caller.heard.pcm))
        assert abs(heard - loud_frames(greeting_pcm)) <= 0.1 * loud_frames(greeting_pcm), heard
        # 2. Now the agent is quiet; the phone holds (a=inactive: no media either way) for longer than the
        # idle timeout and the media timeout: a held caller is neither silent nor gone.
        await caller.reinvite(direction="inactive")
        assert "\r\na=inactive\r\n" in caller.answers[-1]
        await asyncio.sleep(max(idle_s, rtp_timeout_s) + 1.5)
        assert not [e for e in rig.entries("event") if e["event"].startswith("idle")], rig.summary()
        assert not caller.ended.is_set() and not rig.outcomes, rig.summary()
        await caller.reinvite(direction="sendrecv")
        # 3. After the hold both ways work: the caller is understood and hears the answer.
        asked = time.monotonic()
        caller.play(question)
        await rig.wait_entry("agent", 25, lambda e: "thirty days" in e["text"])
        await rig.agent_turn(quiet_s=0.6, new=False)
    said = [e["text"] for e in rig.entries("caller")]
    assert said and QUESTION in said[0], rig.summary()  # the announcement on hold was never a caller turn
    assert ON_HOLD not in " ".join(said)
    assert any("thirty days" in text for text in recognised(heard_since(caller, asked), AGENT_LINES))
    events = [(e["event"], e.get("direction")) for e in rig.entries("event")]
    assert events == [("hold", "recvonly"), ("resume", None), ("hold", "inactive"), ("resume", None)], events
    first_resume = rig.entries("event")[1]
    assert first_resume["held_ms"] >= (resumed_at - held_at) * 1000 - 200 and first_resume["queued_ms"] > 0


@pytest.mark.parametrize(("first", "second"), [("PCMU", "PCMA"), ("PCMU", "G722"), ("G722", "PCMU")])
def test_codec_change_mid_call_rebuilds_the_whole_chain(tmp_path: Path, first: str, second: str) -> None:
    asyncio.run(_codec_change(tmp_path, first, second))


async def _codec_change(tmp_path: Path, first: str, second: str) -> None:
    greeting_pcm = await asyncio.to_thread(tts().synthesize, GREETING)
    async with phone_rig(tmp_path, codec=first, recording={"audio": True},
                         agent={"greeting": GREETING, "barge_in": {"protect_greeting_ms": 0}}) as rig:
        caller = caller_of(rig)
        await rig.wait_for(lambda: len(loud_times(caller)) >= 50, 15, "1 s of the greeting")
        # In mid-greeting: what is still queued for the caller must move to the new codec, not be lost.
        media = await caller.reinvite(codec=second)
        switched_at = time.monotonic()
        assert media.codec == second and rig.bridge.codec == rig.bridge.media.codec == second
        pt = {"PCMU": 0, "PCMA": 8, "G722": 9}[second]
        assert f"RTP/AVP {pt} " in caller.answers[-1] and f"a=rtpmap:{pt} {second}/8000" in caller.answers[-1]
        await rig.agent_turn(quiet_s=0.6, new=False)
        assert rig.bridge.media.played_ms == rig.bridge.conversation.queued_ms
        heard = loud_frames(bytes(caller.heard.pcm))
        assert abs(heard - loud_frames(greeting_pcm)) <= 0.1 * loud_frames(greeting_pcm), heard
        _, asked = await rig.say(QUESTION)
        await rig.wait_entry("agent", 25, lambda e: "thirty days" in e["text"])
        await rig.agent_turn(quiet_s=0.6, new=False)
    # The model's input after the switch: the backend recognised the question.
    said = [e["text"] for e in rig.entries("caller")]
    assert said and QUESTION in said[0], rig.summary()
    # What the caller heard after the switch: the answer, recognised.
    assert any("thirty days" in text for text in recognised(heard_since(caller, asked), AGENT_LINES)), \
        recognised(heard_since(caller, asked), AGENT_LINES)
    # The agent's recording: the caller's side after the switch holds the question, recognisable.
    outcome = rig.outcomes[0]
    assert outcome.recording_path is not None
    with wave.open(str(outcome.recording_path), "rb") as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    start = int((switched_at - caller.answered_at) * 24000)
    caller_side = frames[start:, 0].astype("<i2").tobytes()
    assert any(QUESTION in text for text in recognised(caller_side, CALLER_LINES)), \
        recognised(caller_side, CALLER_LINES)
    assert [(e["event"], e.get("codec"), e.get("previous")) for e in rig.entries("event")] == [
        ("codec-change", second, first)]
    assert rig.entries("call")[0]["codec"] == first


# ------------------------------------------------------------- SIPp against `sipagent run`


@dataclass(frozen=True)
class Packet:
    at: float
    sock: int  # which of the PBX's media sockets it reached
    pt: int
    seq: int
    ts: int
    marker: bool
    payload: bytes


class PbxMedia:
    """The PBX's end of the media, for SIPp scenarios: sockets the SDP points the agent at. Every packet the
    agent sends is kept with its arrival time; a sender plays on from one socket at 20 ms a packet, as a
    PBX does: silence, or what ``play`` queued (music on hold, a caller's words)."""

    def __init__(self, hosts: tuple[str, ...] = ("127.0.0.1",), codec: str = "PCMU") -> None:
        self.socks: list[socket.socket] = []
        for host in hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.settimeout(0.05)
            self.socks.append(sock)
        self.packets: list[Packet] = []
        self.agent: tuple[str, int] | None = None  # the agent's RTP address, from its first packet
        self.active = 0  # the socket that sends
        self.codec = codec
        self._queue = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._receive, args=(i,), daemon=True)
                         for i in range(len(self.socks))] + [threading.Thread(target=self._send, daemon=True)]

    def port(self, index: int = 0) -> int:
        return int(self.socks[index].getsockname()[1])

    def __enter__(self) -> PbxMedia:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        for sock in self.socks:
            sock.close()

    def _receive(self, index: int) -> None:
        sock = self.socks[index]
        while not self._stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) < 12 or data[0] >> 6 != 2 or 72 <= data[1] & 0x7F <= 76:
                continue  # RTCP (on the RTP port only with rtcp-mux) is not media
            _, b1, seq, ts, _ = struct.unpack("!BBHII", data[:12])
            self.agent = self.agent or addr
            self.packets.append(Packet(time.monotonic(), index, b1 & 0x7F, seq, ts, bool(b1 & 0x80), data[12:]))

    def _send(self) -> None:
        seq, ts, ssrc = 1000, 50_000, 0x5EED
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += 0.02
            time.sleep(max(0.0, next_at - time.monotonic()))
            if self.agent is None:
                continue
            codec = self.codec
            with self._lock:
                payload, self._queue[:160] = bytes(self._queue[:160]), b""
            payload += CODEC_SILENCE[codec][len(payload):]
            header = struct.pack("!BBHII", 0x80, {"PCMU": 0, "PCMA": 8, "G722": 9}[codec], seq & 0xFFFF, ts, ssrc)
            with contextlib.suppress(OSError):
                self.socks[self.active].sendto(header + payload, self.agent)
            seq, ts = seq + 1, (ts + 160) & 0xFFFFFFFF

    def play(self, pcm24k: bytes) -> float:
        """Queue speech or music (24 kHz PCM16) in the current codec; returns its length in seconds."""
        with self._lock:
            self._queue += Encoder24k(self.codec).encode(pcm24k)
        return len(pcm24k) / 48000

    def gaps(self, longer_than: float) -> list[tuple[float, float]]:
        """Stretches with no packet from the agent, longer than ``longer_than`` seconds, as (start, end)."""
        times = [p.at for p in self.packets]
        return [(a, b) for a, b in itertools.pairwise(times) if b - a > longer_than]

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def heard(self, since: float, codec: str) -> bytes:
        """What the PBX received from ``since`` on, decoded (24 kHz PCM16), in sequence order."""
        packets = sorted((p for p in self.packets if p.at >= since and p.pt == {"PCMU": 0, "PCMA": 8}[codec]),
                         key=lambda p: p.seq)
        decoder = Decoder24k(codec)
        return b"".join(decoder.decode(p.payload) for p in packets)


@contextlib.contextmanager
def agent_process(tmp_path: Path) -> Iterator[RunningAgent]:
    """`sipagent run` on the demo configuration, its backend's turns starting 0.6 s before the speech (as in
    ``phone_rig``: the recogniser needs that lead-in on G.711)."""
    demo = spoken_order_lookup(demo_data())
    local = demo["realtime"]["local"]
    local["vad"]["prefix_ms"] = 600
    with running_agent(tmp_path, sections={"realtime": {"local": local}}) as agent:
        yield agent


def invite_answers(log: str) -> list[str]:
    """The agent's 200 OKs to INVITEs in SIPp's message log, each once (a retransmission is the same)."""
    received = [chunk.split(":\n\n", 1)[1] for chunk in log.split("\n-----") if "message received" in chunk]
    return list(dict.fromkeys(m for m in received if m.startswith("SIP/2.0 200") and "\nCSeq: " in m
                              and m.split("\nCSeq: ")[1].split("\n")[0].endswith(" INVITE")))


def transcript_entries(agent_dir: Path) -> list[dict[str, Any]]:
    (path,) = sorted((agent_dir / "rec").glob("*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line]


HOLD_SCENARIOS = {
    # scenario: the directions of the agent's answers, in order
    "reinvite_hold_asterisk.xml": ["sendrecv", "recvonly", "sendrecv"],
    "reinvite_hold_freeswitch.xml": ["sendrecv", "recvonly", "sendrecv", "inactive", "sendrecv"],
    "reinvite_hold_c0.xml": ["sendrecv", "recvonly", "sendrecv"],
}


@pytest.mark.parametrize("scenario", HOLD_SCENARIOS)
def test_sipp_hold_and_resume(tmp_path: Path, scenario: str) -> None:
    """The PBX holds the agent (and plays an announcement on hold the model would answer): not one RTP
    packet leaves the agent while held, the model hears nothing of it, and the agent plays on after."""
    require("sipp")
    music = tts().synthesize(ON_HOLD)
    holds = HOLD_SCENARIOS[scenario].count("recvonly") + HOLD_SCENARIOS[scenario].count("inactive")
    with agent_process(tmp_path) as agent, PbxMedia() as media, \
            sipp_scenario(scenario, agent.target, tmp_path / "sipp", timeout_s=60,
                          keys={"user": "agent", "rtp_port": str(media.port()),
                                "rtcp_port": str(media.port() + 1)}) as run:
        media.wait(lambda: media.agent is not None, 15, "the agent's first RTP packet")
        for _ in range(holds):
            # The hold shows on the wire as the agent falling silent: then the PBX plays its music.
            # (0.6 s: a hold lasts about 4 s, a stalled test process can leave 0.3 s between packets)
            media.wait(lambda: time.monotonic() - media.packets[-1].at > 0.6, 20, "the agent to stop sending")
            media.play(music)
            count = len(media.packets)
            media.wait(lambda: len(media.packets) > count, 20, "the agent to send again")  # noqa: B023
        result = run.wait(60)
        assert result.returncode == 0, result.failed()
        # The bridge counts the call once it has wound down, a moment after the BYE was answered.
        agent.wait_metric('sipagent_calls_total{outcome="remote-hangup"}', lambda v: v == 1, 10)
    answers = invite_answers(result.messages)
    directions = [next(d for d in ("sendrecv", "recvonly", "sendonly", "inactive") if f"\na={d}\n" in answer)
                  for answer in answers]
    assert directions == HOLD_SCENARIOS[scenario], directions
    assert "c=IN IP4 0.0.0.0" not in "".join(answers) and "c=IN IP4 127.0.0.1" in answers[0]
    gaps = media.gaps(1.0)
    assert len(gaps) == holds and all(3.5 <= end - start <= 6.5 for start, end in gaps), gaps
    after = [next(p for p in media.packets if p.at >= end) for _, end in gaps]
    assert all(p.marker for p in after), "the first packet after a hold starts a talkspurt (marker bit)"
    entries = transcript_entries(tmp_path)
    events = [e["event"] for e in entries if e["type"] == "event"]
    assert events == ["hold", "resume"] * holds, entries
    assert not [e for e in entries if e["type"] == "caller"], "the announcement on hold reached the model"
    assert [e["type"] for e in entries if e["type"] == "agent"] == ["agent"], "the agent answered the music"


def test_sipp_codec_change_pcmu_to_pcma(tmp_path: Path) -> None:
    """Asterisk moves the call from PCMU to PCMA: the agent's packets change payload type at once, and the
    caller's question in A-law is understood and answered, intelligibly, in A-law."""
    require("sipp")
    question = tts().synthesize(QUESTION)
    with agent_process(tmp_path) as agent, PbxMedia() as media, \
            sipp_scenario("reinvite_codec_pcma.xml", agent.target, tmp_path / "sipp", timeout_s=60,
                          keys={"user": "agent", "rtp_port": str(media.port())}) as run:
        media.wait(lambda: media.agent is not None, 15, "the agent's first RTP packet")
        media.wait(lambda: media.packets[-1].pt == 8, 20, "the agent's first PCMA packet")
        switched = next(p for p in media.packets if p.pt == 8).at
        media.codec = "PCMA"
        time.sleep(0.5)
        asked = time.monotonic()
        media.play(question)
        result = run.wait(60)
    assert result.returncode == 0, result.failed()
    pts = [p.pt for p in media.packets]
    assert set(pts) == {0, 8} and pts.index(8) > 0 and all(pt == 8 for pt in pts[pts.index(8):])
    assert switched < asked
    entries = transcript_entries(tmp_path)
    said = [e["text"] for e in entries if e["type"] == "caller"]
    assert said and QUESTION in said[0], entries
    assert [(e["codec"], e["previous"]) for e in entries if e["type"] == "event"] == [("PCMA", "PCMU")], entries
    readings = recognised(media.heard(asked, "PCMA"), [ANSWER, *AGENT_LINES[2:]])
    assert any("thirty days" in text for text in readings), readings


def test_sipp_media_moves_to_another_address(tmp_path: Path) -> None:
    """FreeSWITCH moves the media to another address and port: the agent's RTP goes there from the re-INVITE
    on (none to the old one), and a question from there is answered there."""
    require("sipp")
    question = tts().synthesize(QUESTION)
    with agent_process(tmp_path) as agent, PbxMedia(("127.0.0.1", "127.0.0.2")) as media, \
            sipp_scenario("reinvite_address.xml", agent.target, tmp_path / "sipp", timeout_s=60,
                          keys={"user": "agent", "rtp_port": str(media.port(0)), "rtcp_port": str(media.port(0) + 1),
                                "rtp_host2": "127.0.0.2", "rtp_port2": str(media.port(1)),
                                "rtcp_port2": str(media.port(1) + 1)}) as run:
        media.wait(lambda: media.agent is not None, 15, "the agent's first RTP packet")
        media.wait(lambda: media.packets[-1].sock == 1, 20, "the agent's RTP at the new address")
        moved = next(p for p in media.packets if p.sock == 1).at
        media.active = 1
        time.sleep(0.5)
        asked = time.monotonic()
        media.play(question)
        result = run.wait(60)
    assert result.returncode == 0, result.failed()
    old = [p for p in media.packets if p.sock == 0]
    new = [p for p in media.packets if p.sock == 1]
    assert old and new and old[-1].at <= moved and len(new) > 400
    assert all(b.seq == (a.seq + 1) & 0xFFFF for a, b in zip(old + new, (old + new)[1:], strict=False))
    entries = transcript_entries(tmp_path)
    said = [e["text"] for e in entries if e["type"] == "caller"]
    assert said and QUESTION in said[0], entries
    readings = recognised(media.heard(asked, "PCMU"), [ANSWER, *AGENT_LINES[2:]])
    assert any("thirty days" in text for text in readings), readings


# --------------------------------------------------------------------- baresip, through Kamailio


def test_baresip_holds_and_resumes_from_the_phone(kamailio: Kamailio, tmp_path: Path) -> None:
    """A real phone's hold button (baresip /hold, /resume) through a real proxy: the agent stops sending while
    held, plays on after, and hears the caller again."""
    require("baresip")
    asyncio.run(_baresip_hold(kamailio, tmp_path))


async def _baresip_hold(kamailio: Kamailio, tmp_path: Path) -> None:
    user = "2451"
    config = bridge_config(tmp_path, sip={"registrar": kamailio.address, "username": user,
                                          "password": f"secret{user}", "domain": "127.0.0.1", "expires": 60},
                           agent={"greeting": GREETING, "barge_in": {"protect_greeting_ms": 0}},
                           realtime={"local": {"vad": {"prefix_ms": 600}}})
    said: list[tuple[str, str]] = []
    agent = Agent(config, on_transcript=lambda _id, role, text: said.append((role, text)))
    await agent.start()
    phone = Baresip(tmp_path / "phone", "1451", kamailio.address, codecs=["PCMU"])
    question = tmp_path / "question.wav"
    write_wav(question, await asyncio.to_thread(tts().synthesize, QUESTION), phone.source_rate)
    try:
        assert agent.ua is not None and await agent.ua.wait_registered(20)
        await phone.start(timeout=30)
        await phone.dial(f"sip:{user}@{kamailio.address}")
        assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
        assert await wait_until(lambda: bool(agent.bridges), 10)
        bridge = next(iter(agent.bridges.values()))
        endpoint = bridge.media.endpoint  # type: ignore[attr-defined]  # the agent's _MediaLeg
        assert await wait_until(lambda: bridge.media.played_ms >= 1000, 15), "the greeting did not start"
        assert (await phone.command("hold"))["ok"]
        assert await wait_until(lambda: bridge.on_hold, 5), "the agent never learned of the hold"
        await asyncio.sleep(0.1)
        sent, played = endpoint.packets_sent, bridge.media.played_ms
        await asyncio.sleep(2.0)
        assert endpoint.packets_sent == sent and bridge.media.played_ms == played, "RTP into the held call"
        assert bridge.state == "held"
        assert (await phone.command("resume"))["ok"]
        assert await wait_until(lambda: not bridge.on_hold and endpoint.packets_sent > sent, 5)
        assert await wait_until(lambda: said[:1] == [("agent", GREETING)], 30), said
        assert await wait_until(lambda: bridge.media.buffered_ms == 0, 30)
        await phone.set_source(question)
        assert await wait_until(lambda: any(role == "caller" for role, _ in said), 30), said
        events = [e for e in bridge.transcript.entries if e["type"] == "event"] if bridge.transcript else []
    finally:
        await phone.close()
        await agent.stop()
    assert [e["event"] for e in events] == ["hold", "resume"], events
    assert events[0]["direction"] == "recvonly" and events[1]["held_ms"] >= 2000
    assert next(text for role, text in said if role == "caller") == QUESTION, said


def write_wav(path: Path, pcm24k: bytes, rate: int) -> None:
    """24 kHz speech into a WAV at ``rate`` for baresip's aufile source, with a silent lead and tail."""
    pcm = Resampler(24000, rate).process(pcm24k)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(rate) + pcm + bytes(rate * 20))
