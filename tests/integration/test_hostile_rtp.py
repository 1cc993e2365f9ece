"""A third party sprays well-formed RTP and RTCP at a call's port, on 127.0.0.1: it is never heard (its audio,
its DTMF) and never hears us (our audio, our RTCP), while the real caller is heard and hears the agent.
And a caller behind a NAT, whose packets come from another address than its SDP says, still gets through."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sipagent.media.clock import MediaClock
from sipagent.rtp.dtmf import TelephoneEvent
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import RtpPacket, is_rtcp
from sipagent.rtp.ports import PortAllocator
from sipagent.rtp.rtcp import ReceiverReport, build_rr

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
SILENCE = b"\xff" * 160
CALLER_AUDIO = b"\x11" * 160
SPRAY_AUDIO = b"\xa7" * 160
AGENT_AUDIO = b"\x33" * 160
DTMF_PT = 101


def bind_pair() -> tuple[socket.socket, socket.socket]:
    """An even port and the one above it, as a phone binds its RTP and RTCP."""
    for _ in range(100):
        port = random.randrange(40000, 60000, 2)
        rtp, rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtp.bind((HOST, port))
            rtcp.bind((HOST, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        rtp.setblocking(False)
        rtcp.setblocking(False)
        return rtp, rtcp
    raise AssertionError("no free port pair")


class Phone:
    """A far end reduced to its two sockets: sends one RTP stream (one SSRC, consecutive sequence numbers,
    one payload), RTCP receiver reports, and keeps whatever comes back."""

    def __init__(self, payload: bytes) -> None:
        self.rtp, self.rtcp = bind_pair()
        self.port: int = self.rtp.getsockname()[1]
        self.payload = payload
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.media: list[RtpPacket] = []  # RTP that reached us
        self.reports: list[bytes] = []  # RTCP that reached us, on either socket

    def send(self, port: int, pt: int = 0, payload: bytes | None = None) -> None:
        packet = RtpPacket(payload_type=pt, sequence=self.seq, timestamp=self.ts, ssrc=self.ssrc,
                           payload=self.payload if payload is None else payload)
        self.rtp.sendto(packet.serialize(), (HOST, port))
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFFFFFF

    def send_report(self, port: int) -> None:
        self.rtcp.sendto(build_rr(ReceiverReport(self.ssrc, []), "phone"), (HOST, port))

    def collect(self) -> None:
        for sock in (self.rtp, self.rtcp):
            for _ in range(10_000):
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                if is_rtcp(data):
                    self.reports.append(data)
                else:
                    self.media.append(RtpPacket.parse(data))

    def heard(self, payload: bytes) -> int:
        self.collect()
        return sum(p.payload == payload for p in self.media)

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


async def spray(attacker: Phone, port: int, stop: asyncio.Event) -> int:
    """A valid run at 200 packets a second (every tenth a DTMF digit 9), with RTCP to both our ports (apart
    and multiplexed) every 100 ms; until ``stop`` or 12 s. Returns the count of RTP packets sent."""
    digit = TelephoneEvent(9, True, 10, 800).serialize()
    for i in range(2400):
        if stop.is_set():
            return i
        if i % 10 == 9:
            attacker.send(port, DTMF_PT, digit)
        else:
            attacker.send(port)
        if i % 20 == 0:
            attacker.rtcp.sendto(build_rr(ReceiverReport(attacker.ssrc, []), "x"), (HOST, port + 1))
            attacker.rtp.sendto(build_rr(ReceiverReport(attacker.ssrc, []), "x"), (HOST, port))
        await asyncio.sleep(0.005)
    return 2400


class Call:
    """The agent's side: an eager endpoint (frames go to the model on arrival) on a running clock."""

    def __init__(self, clock: MediaClock, *, symmetric: bool | None) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.digits: list[str] = []
        lo = random.randrange(20000, 30000, 2)
        # None: the constructor's default, so that the spray and NAT tests also run against an endpoint
        # without the flag (they fail there on what they check, not on a TypeError).
        extra: dict[str, Any] = {} if symmetric is None else {"symmetric": symmetric}
        self.ep = RtpEndpoint(clock, PortAllocator(lo, lo + 99), bind_host=HOST, silence=SILENCE, eager=True,
                              rtcp_interval=0.2, on_frame=lambda f: self.frames.append((time.monotonic(), f)),
                              on_dtmf=lambda d, ms: self.digits.append(d), **extra)
        self.port = self.ep.local_port

    def heard(self, payload: bytes) -> list[float]:
        return [t for t, f in self.frames if f == payload]


@asynccontextmanager
async def call_on_clock(*, symmetric: bool | None = None) -> AsyncIterator[Call]:
    clock = MediaClock()
    clock.start()
    call = Call(clock, symmetric=symmetric)
    try:
        yield call
    finally:
        call.ep.close()
        clock.stop()


def test_a_spray_before_and_during_the_call_is_never_heard_and_never_hears_us(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sipagent.rtp.endpoint")

    async def main() -> None:
        caller, attacker = Phone(CALLER_AUDIO), Phone(SPRAY_AUDIO)
        stop = asyncio.Event()
        try:
            async with call_on_clock() as call:
                sprayer = asyncio.create_task(spray(attacker, call.port, stop))
                await asyncio.sleep(0.2)  # the spray is already running when the call is answered
                call.ep.set_remote(HOST, caller.port, 0, DTMF_PT)
                seq_at_answer = attacker.seq  # one sequence number per RTP packet (audio or DTMF) sent
                call.ep.playout.push(AGENT_AUDIO * 150)
                await asyncio.sleep(0.04)  # the caller's phone starts two ticks after the answer
                for i in range(125):
                    if not 50 <= i < 75:  # and pauses for half a second in the middle of the call
                        caller.send(call.port)
                    if i % 25 == 0:
                        caller.send_report(call.port + 1)
                    await asyncio.sleep(0.02)
                stop.set()
                await sprayer
                sprayed = (attacker.seq - seq_at_answer) & 0xFFFF  # RTP sent once the call had a remote
                await asyncio.sleep(0.1)

                assert call.heard(SPRAY_AUDIO) == [] and call.digits == []
                assert len(call.heard(CALLER_AUDIO)) >= 90
                attacker.collect()
                assert attacker.media == [] and attacker.reports == []
                assert caller.heard(AGENT_AUDIO) >= 50
                assert caller.reports  # our RTCP, on the caller's RTCP port
                assert call.ep.remote_address == (HOST, caller.port)
                stats = call.ep.stats()
                # The spray ran through the call (about 440 RTP at full speed; fewer when this loop is slow),
                # and what it sent once the call had a remote was dropped as foreign (its RTCP is counted too).
                assert sprayed > 100 and stats.foreign_packets >= 0.6 * sprayed, (sprayed, stats.foreign_packets)
                assert stats.packets_received >= 100 and stats.lost <= 25 + 5  # the caller's, and its pause
        finally:
            caller.close()
            attacker.close()

    asyncio.run(main())
    ignoring = [r for r in caplog.records if "ignoring packets" in r.getMessage()]
    assert len(ignoring) == 1  # a flood of foreign packets is one line in the log, not one per packet


def test_a_caller_behind_a_nat_latches_after_a_second_and_then_holds_against_a_spray() -> None:
    async def main() -> None:
        signalled, caller, attacker = Phone(b""), Phone(CALLER_AUDIO), Phone(SPRAY_AUDIO)
        stop = asyncio.Event()
        try:
            async with call_on_clock() as call:
                # The SDP names `signalled`, which never sends; the caller's packets come from another port.
                call.ep.set_remote(HOST, signalled.port, 0, DTMF_PT)
                answered = time.monotonic()
                call.ep.playout.push(AGENT_AUDIO * 250)
                for _ in range(150):  # at most 3 s
                    caller.send(call.port)
                    await asyncio.sleep(0.02)
                    if call.heard(CALLER_AUDIO):
                        break
                first = call.heard(CALLER_AUDIO)
                assert first, "the caller behind the NAT never latched"
                # Not before a second of silence from the SDP's address, then five packets in a row.
                assert first[0] - answered >= 0.95
                assert call.ep.remote_address == (HOST, caller.port)
                # Now a spray starts while the caller goes on talking: the NAT latch holds.
                sprayer = asyncio.create_task(spray(attacker, call.port, stop))
                for _ in range(75):
                    caller.send(call.port)
                    await asyncio.sleep(0.02)
                stop.set()
                await sprayer
                await asyncio.sleep(0.1)
                assert len(call.heard(CALLER_AUDIO)) >= 60 and call.heard(SPRAY_AUDIO) == []
                assert caller.heard(AGENT_AUDIO) >= 50
                attacker.collect()
                assert attacker.media == [] and attacker.reports == []
                assert call.ep.remote_address == (HOST, caller.port)
        finally:
            for phone in (signalled, caller, attacker):
                phone.close()

    asyncio.run(main())


def test_without_symmetric_rtp_a_caller_at_another_address_is_never_taken() -> None:
    async def main() -> None:
        signalled, caller = Phone(b""), Phone(CALLER_AUDIO)
        try:
            async with call_on_clock(symmetric=False) as call:
                call.ep.set_remote(HOST, signalled.port, 0)
                call.ep.playout.push(AGENT_AUDIO * 100)
                for _ in range(90):  # 1.8 s: well past the window and the probation
                    caller.send(call.port)
                    await asyncio.sleep(0.02)
                assert call.heard(CALLER_AUDIO) == [] and call.ep.stats().packets_received == 0
                assert caller.heard(AGENT_AUDIO) == 0
                assert signalled.heard(AGENT_AUDIO) >= 40  # media went where the SDP said, and only there
                assert call.ep.remote_address == (HOST, signalled.port)
        finally:
            signalled.close()
            caller.close()

    asyncio.run(main())
