"""The RTP endpoint against plain UDP sockets and against another endpoint, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest

from sipagent.errors import RtpError
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import CODEC_SILENCE, Decoder24k, Encoder24k
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.rtp.dtmf import TelephoneEvent
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import RtpPacket
from sipagent.rtp.ports import PortAllocator
from sipagent.rtp.rtcp import ReceiverReport, ReportBlock, build_rr
from sipagent.rtp.seq import seq_diff, ts_diff

HOST = "127.0.0.1"
SIL = b"\xff" * 160


def allocator(size: int = 200) -> PortAllocator:
    lo = random.randrange(20000, 30000, 2)
    return PortAllocator(lo, lo + size - 1)


class Peer:
    """A far-end phone reduced to a UDP socket that sends RTP packets and collects what comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.ssrc = random.getrandbits(32)
        self.seq = 100
        self.ts = 1000

    def send(
        self, port: int, payload: bytes, pt: int = 0, ts: int | None = None, marker: bool = False
    ) -> None:
        packet = RtpPacket(payload_type=pt, sequence=self.seq & 0xFFFF, ssrc=self.ssrc, payload=payload,
                           timestamp=self.ts if ts is None else ts, marker=marker)
        self.sock.sendto(packet.serialize(), (HOST, port))
        self.seq += 1
        if ts is None:
            self.ts += 160

    def received(self) -> list[RtpPacket]:
        out: list[RtpPacket] = []
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return out
            out.append(RtpPacket.parse(data))

    def close(self) -> None:
        self.sock.close()


def run(test: Callable[[MediaClock], Awaitable[None]]) -> None:
    async def main() -> None:
        clock = MediaClock()
        clock.start()
        try:
            await test(clock)
        finally:
            clock.stop()

    asyncio.run(main())


def collapse_repeats(frames: list[int]) -> list[int]:
    """``frames`` with each run of equal frames reduced to one: the receiver's concealment of a hole in the
    sender's timestamps (left by ticks the clock skipped) repeats the frame before it."""
    return [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]]


def extra_ticks(steps: list[int]) -> int:
    """``steps`` of a stream's timestamps or of a DTMF event's duration, each a whole number of ticks (160):
    exactly one, or more after ticks the clock skipped (``MediaClock.skipped_ticks``). Checks that, and
    returns the ticks beyond one per step."""
    assert all(dt >= 160 and dt % 160 == 0 for dt in steps), steps
    return sum(dt // 160 - 1 for dt in steps)


def ticks_skipped_in(packets: list[RtpPacket]) -> int:
    """The ticks by which a stream's timestamps jumped beyond one per packet (see ``extra_ticks``)."""
    return extra_ticks([ts_diff(b.timestamp, a.timestamp) for a, b in itertools.pairwise(packets)])


def duration_steps_skipped(durations: list[int], ticks: int) -> int:
    """For one DTMF event's packets (``durations``, in timestamp units) lasting ``ticks`` ticks: check that the
    duration starts at one tick, grows by one tick per packet (more after ticks the clock skipped: it keeps pace
    with the timestamp) up to ``ticks``, and the end packet goes three times with it; return the ticks skipped."""
    assert durations[0] == 160 and durations[-3:] == [160 * ticks] * 3, durations
    return extra_ticks([b - a for a, b in itertools.pairwise(durations[:-2])])


async def until(cond: Callable[[], bool], limit: float = 3.0) -> None:
    for _ in range(int(limit / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@asynccontextmanager
async def eager_endpoint(jitter_ms: int) -> AsyncIterator[tuple[MediaClock, Peer, RtpEndpoint, list[bytes]]]:
    """An eager endpoint (the agent's: frames go on as they arrive) on a clock not yet started, a peer
    latched as its remote, and the list of frames it handed on."""
    clock, peer = MediaClock(), Peer()
    got: list[bytes] = []
    ep = RtpEndpoint(clock, allocator(), bind_host=HOST, jitter_ms=jitter_ms, silence=SIL, eager=True,
                     on_frame=got.append)
    ep.set_remote(HOST, peer.port, 0)
    try:
        yield clock, peer, ep, got
    finally:
        clock.stop()
        ep.close()
        peer.close()


def test_port_allocator_never_leaks() -> None:
    async def body(clock: MediaClock) -> None:
        ports = allocator(10)  # 5 even/odd pairs
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind((HOST, ports.lo + 3))  # another process holds the RTCP port of the second pair
        try:
            eps = [RtpEndpoint(clock, ports, bind_host=HOST) for _ in range(4)]
            assert ports.lo + 2 not in {e.local_port for e in eps}
            assert all(e.local_port % 2 == 0 and ports.lo <= e.local_port < ports.hi for e in eps)
            with pytest.raises(RtpError):
                RtpEndpoint(clock, ports, bind_host=HOST)
            assert ports.in_use == 4 and clock.streams == 4
            for e in eps:
                e.close()
                e.close()  # idempotent
            assert ports.in_use == 0 and clock.streams == 0
            for _ in range(60):  # churn: every port comes back
                ep = RtpEndpoint(clock, ports, bind_host=HOST)
                ep.close()
            assert ports.in_use == 0 and clock.streams == 0
        finally:
            blocker.close()
        # The sockets are really closed: every pair binds again.
        for port in range(ports.lo, ports.hi, 2):
            for p in (port, port + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((HOST, p))
                s.close()

    run(body)


def test_allocator_parse_and_errors() -> None:
    ports = PortAllocator.parse("40001-40010")
    assert (ports.lo, ports.capacity) == (40002, 4)
    with pytest.raises(RtpError):
        PortAllocator.parse("nonsense")
    with pytest.raises(RtpError):
        PortAllocator(5000, 5000)


def test_a_pair_bound_before_the_answer_drops_what_came_before_the_endpoint_took_it() -> None:
    """A call binds its port for the SDP answer and builds the endpoint once the codec is settled: packets
    that reached the port in between (a phone's early RTCP, media under keys not set yet) are dropped, as
    an endpoint with no remote yet ignores them; what comes after is taken."""

    async def body(clock: MediaClock) -> None:
        ports = allocator()
        pair = ports.bind_pair(HOST)
        a = Peer()
        for i in range(3):
            a.send(pair[0], bytes([i]) * 160)
        a.sock.sendto(b"\x81\xc9\x00\x01" + bytes(4), (HOST, pair[0] + 1))  # an early receiver report
        await asyncio.sleep(0.05)
        frames: list[bytes] = []
        ep = RtpEndpoint(clock, ports, bind_host=HOST, silence=SIL, on_frame=frames.append, eager=True,
                         sockets=pair)
        try:
            assert ep.local_port == pair[0]
            ep.set_remote(HOST, a.port, 0)
            await asyncio.sleep(0.05)
            assert frames == [] and ep.stats().packets_received == 0 and ep.malformed == 0
            a.send(ep.local_port, b"\x07" * 160)
            await until(lambda: frames == [b"\x07" * 160])
        finally:
            ep.close()
            a.close()
        assert ports.in_use == 0

    run(body)


def test_latching_rejects_foreign_source_and_relatches_on_reinvite() -> None:
    async def body(clock: MediaClock) -> None:
        ports = allocator()
        frames: list[bytes] = []
        ep = RtpEndpoint(clock, ports, bind_host=HOST, jitter_ms=20, on_frame=frames.append)
        a, b, c = Peer(), Peer(), Peer()
        try:
            ep.set_remote(HOST, a.port, 0, 101)
            for i in range(5):
                a.send(ep.local_port, bytes([i]) * 160)
                b.send(ep.local_port, b"\x99" * 160)  # a foreign source, same payload type
                await asyncio.sleep(0.02)
            await until(lambda: len(frames) >= 5)
            # a's frames in order. A stalled sender can miss the one-frame jitter buffer: the frame before is
            # played once more (concealed) and the late one dropped, never played out of order.
            from_a = [x for x in collapse_repeats([f[0] for f in frames]) if x < 5]
            st = ep.stats()
            assert from_a == [0, 1, 2, 3, 4] or (from_a == sorted(set(from_a)) and st.concealed + st.late > 0), \
                (from_a, st)
            assert all(f[0] != 0x99 for f in frames)
            assert ep.stats().foreign_packets == 5
            await until(lambda: len(a.received()) > 0)
            assert b.received() == [] and ep.remote_address == (HOST, a.port)
            # Re-INVITE: the PBX moves media to c. Stragglers from a are then foreign.
            ep.set_remote(HOST, c.port, 0, 101)
            a.received()
            c.send(ep.local_port, b"\x07" * 160)
            await asyncio.sleep(0.05)
            a.send(ep.local_port, b"\x98" * 160)
            await until(lambda: len(c.received()) >= 2)
            await until(lambda: ep.stats().foreign_packets == 6)
            assert ep.remote_address == (HOST, c.port)
        finally:
            ep.close()
            for p in (a, b, c):
                p.close()

    run(body)


def test_nat_latch_is_provisional_until_signalled_address_speaks() -> None:
    async def body(clock: MediaClock) -> None:
        ports = allocator()
        ep = RtpEndpoint(clock, ports, bind_host=HOST)
        signalled, natted = Peer(), Peer()
        try:
            ep.set_remote(HOST, signalled.port, 8)
            # The signalled address stays silent: after a second, a steady run from elsewhere takes the stream
            # and media follows the packets, not the SDP.
            for _ in range(150):
                natted.send(ep.local_port, b"\xd5" * 160, pt=8)
                await asyncio.sleep(0.02)
                if natted.received():
                    break
            assert ep.remote_address == (HOST, natted.port)
            assert signalled.received()  # until then our audio went where the SDP said
            natted.send(ep.local_port, b"\xd5" * 160, pt=0)  # wrong payload type: no latch effect
            signalled.send(ep.local_port, b"\xd5" * 160, pt=8)
            await until(lambda: len(signalled.received()) > 0)
            assert ep.remote_address == (HOST, signalled.port)
        finally:
            ep.close()
            signalled.close()
            natted.close()

    run(body)


def test_dtmf_receive_dedup_and_send() -> None:
    async def body(clock: MediaClock) -> None:
        ports = allocator()
        digits: list[tuple[str, int]] = []
        ep = RtpEndpoint(clock, ports, bind_host=HOST, on_dtmf=lambda d, ms: digits.append((d, ms)))
        peer = Peer()
        try:
            ep.set_remote(HOST, peer.port, 0, 101)
            peer.send(ep.local_port, SIL)
            start = peer.ts
            for n in range(1, 5):
                peer.send(ep.local_port, TelephoneEvent(4, False, 10, 160 * n).serialize(), pt=101, ts=start,
                          marker=n == 1)
            for _ in range(3):
                peer.send(ep.local_port, TelephoneEvent(4, True, 10, 960).serialize(), pt=101, ts=start)
            await until(lambda: len(digits) >= 1)
            await asyncio.sleep(0.05)
            assert digits == [("4", 120)]

            with RtpEndpoint(clock, ports, bind_host=HOST) as plain, pytest.raises(RtpError):
                plain.send_dtmf("1")  # no telephone-event negotiated
            skipped = clock.skipped_ticks
            ep.send_dtmf("#", 60)
            got: list[RtpPacket] = []

            def audio_after_event() -> bool:  # the event is over: audio goes on after it
                got.extend(peer.received())
                return any(p.payload_type == 101 for p in got) and got[-1].payload_type == 0

            await until(audio_after_event)
            skipped = clock.skipped_ticks - skipped
            events = [p for p in got if p.payload_type == 101]
            parsed = [TelephoneEvent.parse(p.payload) for p in events]
            # [160, 320, 480, 480, 480], the last three with the end bit; a tick the clock skipped takes one
            # packet's place (the duration jumps with the timestamp), so one fewer packet per skipped tick.
            assert duration_steps_skipped([e.duration for e in parsed], 3) <= skipped
            assert len(events) == 5 or (skipped and len(events) >= 4)
            assert [e.end for e in parsed] == [False] * (len(events) - 3) + [True] * 3
            assert [p.marker for p in events] == [True] + [False] * (len(events) - 1)
            assert len({p.timestamp for p in events}) == 1 and events[0].ssrc == ep.ssrc
            seqs = [p.sequence for p in got]
            assert all(seq_diff(b, a) == 1 for a, b in itertools.pairwise(seqs))
        finally:
            ep.close()
            peer.close()
        assert ports.in_use == 0

    run(body)


def test_dtmf_events_take_the_place_of_audio_in_its_timeline() -> None:
    """RFC 4733 §2.5.1: the events ride the audio stream (same SSRC, consecutive sequence numbers); all of an
    event's packets carry the timestamp of the tick it began on, the one after the last audio packet; the
    audio after it resumes at the timestamp the clock has reached, and no audio queued meanwhile is lost."""

    async def body(clock: MediaClock) -> None:
        ports = allocator()
        ep = RtpEndpoint(clock, ports, bind_host=HOST)
        peer = Peer()
        try:
            ep.set_remote(HOST, peer.port, 0, 101)
            peer.send(ep.local_port, SIL)  # latch
            frames = [bytes([0x10 + i]) * 160 for i in range(20)]
            for frame in frames:
                ep.playout.push(frame)
            await asyncio.sleep(0.1)
            skipped = clock.skipped_ticks  # the ticks from the last audio packet before the event on come after
            ep.send_dtmf("7", 80)  # 4 ticks, then 2 more end packets
            got: list[RtpPacket] = []

            def audio_after_event() -> bool:
                got.extend(peer.received())
                return any(p.payload_type == 101 for p in got) and got[-1].payload_type == 0 and \
                    sum(p.payload_type == 0 and p.payload in frames for p in got) == len(frames)

            await until(audio_after_event)
            assert not ep.dtmf_sending
            skipped = clock.skipped_ticks - skipped
        finally:
            ep.close()
            peer.close()
        events = [i for i, p in enumerate(got) if p.payload_type == 101]
        first, last = events[0], events[-1]
        assert events == list(range(first, last + 1))
        before, after = got[first - 1], got[last + 1]
        assert before.payload_type == 0 and after.payload_type == 0
        assert len({got[i].timestamp for i in events}) == 1
        # With no tick skipped: the event starts one tick after the last audio packet, six ticks of events
        # (durations 160, 320, 480, then 640 three times with the end bit), and the audio goes on 7 ticks after
        # it. A tick the clock skipped moves the timestamp one tick further (the start, or the audio after),
        # or takes the place of one event packet (its duration jumps with the timestamp).
        start = ts_diff(got[first].timestamp, before.timestamp)
        span = ts_diff(after.timestamp, before.timestamp)
        assert start % 160 == 0 and span % 160 == 0
        assert 160 <= start <= 160 * (1 + skipped)
        assert 160 * (len(events) + 1) <= span <= 160 * (len(events) + 1 + skipped)
        parsed = [TelephoneEvent.parse(got[i].payload) for i in events]
        assert duration_steps_skipped([e.duration for e in parsed], 4) <= skipped
        assert len(events) == 6 or (skipped and len(events) >= 4)
        assert [(e.event, e.end) for e in parsed] == [(7, False)] * (len(events) - 3) + [(7, True)] * 3
        assert [got[i].marker for i in events] == [True] + [False] * (len(events) - 1)
        assert all(p.ssrc == ep.ssrc for p in got)
        assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in itertools.pairwise(got))
        assert [p.payload for p in got if p.payload in frames] == frames  # the audio waited, none lost

    run(body)


def test_keys_go_out_as_tones_where_no_telephone_event_was_negotiated() -> None:
    """A peer that negotiated no telephone-event (a PBX line in in-band DTMF mode) gets each key as its two
    tones, in the audio stream's payload type, coded by the call's own encoder, then a pause; the agent's
    audio queued meanwhile waits and none of it is lost. A queue of ready payloads cannot make tones."""

    async def body(clock: MediaClock) -> None:
        ports = allocator()
        playout = PcmPlayout("PCMU")
        ep = RtpEndpoint(clock, ports, bind_host=HOST, playout=playout)
        peer = Peer()
        try:
            ep.set_remote(HOST, peer.port, 0, None)
            assert ep.dtmf_method == "inband"
            peer.send(ep.local_port, SIL)  # latch
            speech = (np.sin(np.arange(480 * 10) * 2 * np.pi * 300 / 24000) * 3000).astype("<i2").tobytes()
            playout.push(speech)
            await asyncio.sleep(0.06)
            ep.send_dtmf("5", 60)
            assert ep.dtmf_sending
            got: list[RtpPacket] = []

            def all_audio_sent() -> bool:
                got.extend(peer.received())
                return not ep.dtmf_sending and playout.buffered_ms == 0 and len(got) > 16

            await until(all_audio_sent)
            with RtpEndpoint(clock, ports, bind_host=HOST) as plain:
                plain.set_remote(HOST, peer.port, 0, None)
                assert plain.dtmf_method is None
                with pytest.raises(RtpError, match="cannot send tones"):
                    plain.send_dtmf("1")
        finally:
            ep.close()
            peer.close()
        assert all(p.payload_type == 0 and p.ssrc == ep.ssrc for p in got)
        assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in itertools.pairwise(got))
        decoder = Decoder24k("PCMU")
        heard = [np.frombuffer(decoder.decode(p.payload), "<i2").astype(np.float64) for p in got]
        keypad = (697, 770, 852, 941, 1209, 1336, 1477, 1633)

        def strongest(frame: np.ndarray) -> list[int]:
            n = np.arange(len(frame))
            power = [abs(np.sum(frame * np.exp(-2j * np.pi * f * n / 24000))) for f in keypad]
            return sorted(keypad[i] for i in np.argsort(power)[-2:])

        rms = [float(np.sqrt(np.mean(f ** 2))) for f in heard]
        key = [strongest(f) == [770, 1336] for f in heard]
        keyed = [i for i in range(len(heard)) if key[i] and rms[i] > 8000]  # both tones: ≈ 11 600 (speech 2100)
        # Three frames of the key together, then the pause: the frame after it holds only the coders' delay of
        # the key's end, the next two nothing; the speech before and after it.
        assert len(keyed) == 3 and keyed == list(range(keyed[0], keyed[0] + 3)), (keyed, rms)
        after = keyed[-1] + 1
        assert rms[after] < 6000 and max(rms[after + 1:after + 3]) < 50 and rms[after + 3] > 1000, rms
        assert rms[keyed[0] - 1] > 1000 and not key[keyed[0] - 1]
        assert got[keyed[0]].marker is False  # the key follows the speech in one talkspurt
        speech_frames = sum(1 for i in range(len(heard)) if rms[i] > 1000 and not key[i])
        assert speech_frames == 10  # the speech waited for the key and all of it was sent

    run(body)


def test_playout_continuity_between_endpoints() -> None:
    """Two pairs of endpoints talk over loopback for ~2.5 s on the real clock; check every frame."""

    async def body(clock: MediaClock) -> None:
        ports = allocator()
        pairs = []
        received: dict[int, list[bytes]] = {}
        eps: list[RtpEndpoint] = []
        try:
            for _ in range(2):
                tx = RtpEndpoint(clock, ports, bind_host=HOST, rtcp_interval=0.2)
                rx_frames: list[bytes] = []
                rx = RtpEndpoint(clock, ports, bind_host=HOST, on_frame=rx_frames.append, rtcp_interval=0.2)
                eps += [tx, rx]
                tx.set_remote(HOST, rx.local_port, 9)
                rx.set_remote(HOST, tx.local_port, 9)
                received[tx.local_port] = rx_frames
                pairs.append((tx, rx))
            n_frames = 100
            skipped = clock.skipped_ticks
            for tx, _ in pairs:
                for i in range(n_frames):  # 2 s of numbered audio, pushed in odd-sized chunks
                    tx.playout.push(bytes([i % 250 + 1]) * 160)
            await until(lambda: all(not tx.playout.is_playing for tx, _ in pairs), limit=6.0)
            await asyncio.sleep(0.3)
            skipped = clock.skipped_ticks - skipped
            for tx, rx in pairs:
                frames = received[tx.local_port]
                audio = [f[0] for f in frames if f != SIL]
                # All, once, in order. A tick the clock skipped leaves a hole in tx's timestamps, which rx
                # conceals (the frame before once more, then silence): no more concealed than ticks skipped
                # (each phase with streams counts its own), each repeat one of them, none when none were.
                played = collapse_repeats(audio)
                assert played == [i % 250 + 1 for i in range(n_frames)]
                assert tx.playout.played_ms == n_frames * 20
                st = rx.stats()
                assert len(audio) - len(played) <= st.concealed <= skipped
                assert st.packets_received >= n_frames
                assert st.lost == 0 and st.late == 0 and st.duplicates == 0
                # RTCP went both ways: each side learnt what the other received.
                assert tx.remote_report is not None and tx.remote_report.ssrc == tx.ssrc
        finally:
            for e in eps:
                e.close()
        assert ports.in_use == 0

    run(body)


def test_wire_sequence_timestamp_and_marker() -> None:
    """Several streams for ~2 s: each packet one tick on in sequence and timestamp; marker per talkspurt."""

    async def body(clock: MediaClock) -> None:
        ports = allocator()
        peers = [Peer() for _ in range(3)]
        eps = [RtpEndpoint(clock, ports, bind_host=HOST) for _ in peers]
        got: dict[int, list[RtpPacket]] = {p.port: [] for p in peers}
        try:
            for ep, peer in zip(eps, peers, strict=True):
                ep.set_remote(HOST, peer.port, 0)
                ep.playout.push(b"\x01" * 160 * 20)  # a talkspurt of 20 frames
            for tick in range(100):
                if tick == 50:
                    for ep in eps:
                        ep.playout.push(b"\x02" * 160 * 10)  # a second talkspurt after silence
                await asyncio.sleep(0.02)
                for peer in peers:
                    got[peer.port].extend(peer.received())
            skipped = clock.skipped_ticks
            for ep, peer in zip(eps, peers, strict=True):
                pkts = got[peer.port]
                assert len(pkts) >= 60 and {p.ssrc for p in pkts} == {ep.ssrc}
                steps = [(seq_diff(b.sequence, a.sequence), ts_diff(b.timestamp, a.timestamp))
                         for a, b in itertools.pairwise(pkts)]
                assert all(ds == 1 and dt % 160 == 0 and dt >= 160 for ds, dt in steps)
                assert sum(dt // 160 - 1 for _, dt in steps) <= skipped  # gaps only where the clock skipped
                assert [p.payload[0] for p in pkts if p.payload[0] != 0xFF] == [1] * 20 + [2] * 10
                markers = [p.payload[0] for p in pkts if p.marker]
                assert markers in ([1, 2], [0xFF, 1, 2])  # the very first packet may be silence
        finally:
            for ep in eps:
                ep.close()
            for peer in peers:
                peer.close()

    run(body)


def test_eager_endpoint_delivers_on_arrival_and_conceals_only_overdue_frames() -> None:
    async def main() -> None:
        # The clock is not started yet: whatever reaches on_frame now came on arrival, not on a tick.
        async with eager_endpoint(jitter_ms=60) as (clock, peer, ep, got):
            peer.send(ep.local_port, b"\x01" * 160)
            await until(lambda: len(got) == 1)  # no pre-buffer, no tick needed
            # A reordered pair: the later frame waits for the earlier one, then both go at once.
            first_ts = peer.ts
            peer.send(ep.local_port, b"\x03" * 160, ts=first_ts + 160)
            await until(lambda: ep.jitter.buffered == 1)
            assert len(got) == 1
            peer.send(ep.local_port, b"\x02" * 160, ts=first_ts)
            await until(lambda: len(got) == 3)
            assert [f[:1] for f in got] == [b"\x01", b"\x02", b"\x03"]
            # The sender goes quiet. Ticks now pass: after the jitter depth (3 ticks) the clock fills time
            # with one concealment frame per tick (the last frame once, then silence).
            clock.start()
            await until(lambda: clock.ticks >= 3 + 5)
            concealed = got[3:]
            assert concealed[0] == b"\x03" * 160
            assert concealed[1:] and all(f == SIL for f in concealed[1:])
            assert len(concealed) <= clock.ticks + clock.skipped_ticks - 3  # a skipped tick's period is one too
            # Media resumes a little ahead of where concealment has got to: it is played when its time comes.
            peer.send(ep.local_port, b"\x04" * 160, ts=first_ts + 160 * (2 + len(concealed) + 20))
            await until(lambda: got[-1] == b"\x04" * 160)

    asyncio.run(main())


def test_eager_endpoint_in_order_reordered_duplicate_wrapped_and_new_source_frames() -> None:
    # The eager receive path plays a packet due next at once and sends everything else through the jitter
    # buffer: the order, the duplicates and the statistics must not depend on which way a packet went.
    async def main() -> None:
        # The clock is not started: every frame here comes on arrival.
        async with eager_endpoint(jitter_ms=60) as (_, peer, ep, got):
            peer.seq, first = 65533, 2**32 - 2 * 160  # both the sequence number and the timestamp wrap
            for i in range(4):
                peer.send(ep.local_port, bytes([i]) * 160, ts=(first + 160 * i) & 0xFFFFFFFF)
            await until(lambda: len(got) == 4)
            peer.send(ep.local_port, b"\x03" * 160, ts=(first + 3 * 160) & 0xFFFFFFFF)  # a duplicate
            peer.send(ep.local_port, b"\x05" * 160, ts=first + 5 * 160 - 2**32)  # overtakes 4
            peer.send(ep.local_port, b"\x04" * 160, ts=first + 4 * 160 - 2**32)
            peer.send(ep.local_port, b"\x06" * 160, ts=first + 6 * 160 - 2**32)
            await until(lambda: len(got) == 7)
            peer.ssrc ^= 0xFFFF  # a new source (a PBX re-bridging media) restarts the buffer
            peer.send(ep.local_port, b"\x10" * 160, ts=777_000)
            peer.send(ep.local_port, b"\x11" * 160, ts=777_160)
            await until(lambda: len(got) == 9)
            assert [f[0] for f in got] == [0, 1, 2, 3, 4, 5, 6, 0x10, 0x11]
            stats = ep.stats()
            assert (stats.duplicates, stats.late, stats.concealed) == (1, 0, 0)
            assert ep.rx_stats.packets == 2 and ep.rx_stats.lost == 0  # RTCP's counts start afresh for the new source
            assert stats.packets_received == 8 + 2 and stats.lost == 0  # the call's: both sources, the duplicate too
            assert ep.jitter.stats.played == 9 and ep.jitter.stats.resyncs == 1

    asyncio.run(main())


def test_on_sent_hears_every_frame_that_goes_on_the_wire() -> None:
    async def body(clock: MediaClock) -> None:
        peer = Peer()
        sent: list[tuple[bytes, bool]] = []
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, silence=SIL,
                         on_sent=lambda frame, is_audio: sent.append((frame, is_audio)))
        try:
            ep.set_remote(HOST, peer.port, 0)
            ep.playout.push(b"\x01" * 160 * 3)
            packets: list[RtpPacket] = []

            def collect() -> bool:
                packets.extend(peer.received())
                return len(packets) >= 6

            await until(collect)
            assert [(p.payload, p.payload != SIL) for p in packets] == sent[:len(packets)]
            assert [p.payload[0] for p in packets[:3]] == [1, 1, 1]
        finally:
            ep.close()
            peer.close()

    run(body)


def test_eager_endpoint_conceals_nothing_while_frames_keep_arriving_in_order() -> None:
    async def main() -> None:
        # The clock is not started: ticks are driven by hand, one per packet as a steady sender makes them.
        async with eager_endpoint(jitter_ms=40) as (_, peer, ep, got):
            for i in range(12):
                peer.send(ep.local_port, bytes([i + 1]) * 160)
                await until(lambda: len(got) == i + 1)  # noqa: B023 (awaited in this iteration)
                ep.on_tick(1)
                ep.on_tick(1)  # a packet late by one tick is still within the 2-tick depth
            assert [f[0] for f in got] == list(range(1, 13)) and ep.stats().concealed == 0
            ep.on_tick(1)  # now the next frame is 3 ticks overdue: concealed (the last frame once more)
            assert got[-1] == bytes([12]) * 160 and ep.stats().concealed == 1

    asyncio.run(main())


def test_a_late_tick_takes_the_frames_waiting_on_the_socket_before_concealing() -> None:
    """After a stall of the agent's loop the clock's tick can run before the socket's read (uvloop runs
    timers first): the frames that came in time are waiting there, and must be played, not concealed and
    then dropped as late."""

    async def main() -> None:
        async with eager_endpoint(jitter_ms=60) as (_, peer, ep, got):
            peer.send(ep.local_port, b"\x01" * 160)
            await until(lambda: len(got) == 1)
            for i in range(2, 6):  # 80 ms of a stall: four frames queue up in the socket, unread
                peer.send(ep.local_port, bytes([i]) * 160)
            ep.on_tick(4)  # the late tick, before the loop gets to the socket (no await since the sends)
            assert [f[0] for f in got] == [1, 2, 3, 4, 5]
            assert ep.stats().concealed == 0 and ep.stats().late == 0
            for _ in range(2):  # taken as if they came just before the late tick: that tick counts as one
                ep.on_tick(1)
            assert len(got) == 5
            ep.on_tick(1)
            assert got[-1] == b"\x05" * 160 and ep.stats().concealed == 1

    asyncio.run(main())


def test_a_late_tick_of_a_listener_plays_the_frames_waiting_on_the_socket() -> None:
    """The same for an endpoint that plays to a listener (one frame per tick after its pre-buffer)."""

    async def main() -> None:
        clock, peer = MediaClock(), Peer()
        got: list[bytes] = []
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, jitter_ms=40, silence=SIL, on_frame=got.append)
        ep.set_remote(HOST, peer.port, 0)
        try:
            for i in range(1, 3):
                peer.send(ep.local_port, bytes([i]) * 160)
            await until(lambda: ep.jitter.buffered == 2)
            ep.on_tick(1)
            ep.on_tick(1)  # the pre-buffer: playout starts
            assert [f[0] for f in got] == [1]
            for i in range(3, 7):
                peer.send(ep.local_port, bytes([i]) * 160)
            ep.on_tick(4)
            assert [f[0] for f in got] == [1, 2, 3, 4, 5] and ep.stats().concealed == 0
        finally:
            ep.close()
            peer.close()

    asyncio.run(main())


def test_concealment_goes_to_on_gap_when_it_is_set() -> None:
    """A consumer with a stateful decoder (the bridge's uplink, for G.722) takes the jitter buffer's stand-ins
    apart from the far end's frames."""

    async def main() -> None:
        async with eager_endpoint(jitter_ms=40) as (_, peer, ep, got):
            gaps: list[bytes] = []
            ep.on_gap = gaps.append
            peer.send(ep.local_port, b"\x01" * 160)
            await until(lambda: len(got) == 1)
            for _ in range(4):
                ep.on_tick(1)  # two within the depth, then two concealed
            assert got == [b"\x01" * 160] and gaps == [b"\x01" * 160, SIL]
            peer.send(ep.local_port, b"\x04" * 160, ts=peer.ts + 2 * 160)
            await until(lambda: len(got) == 2)
            assert got[-1] == b"\x04" * 160

    asyncio.run(main())


def test_hold_with_an_unspecified_address_sends_nothing_and_takes_nothing() -> None:
    # c=0.0.0.0 (RFC 2543 hold): sending there would reach whatever listens on that port of this host.
    async def body(clock: MediaClock) -> None:
        local, natted = Peer(), Peer()
        frames: list[bytes] = []
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, silence=SIL, on_frame=frames.append, eager=True)
        try:
            ep.set_remote("0.0.0.0", local.port, 0)
            ep.playout.push(b"\x01" * 160 * 50)
            for _ in range(75):  # 1.5 s: past the window and the probation
                natted.send(ep.local_port, b"\x02" * 160)
                await asyncio.sleep(0.02)
            assert local.received() == [] and natted.received() == [] and frames == []
            assert ep.remote_address is None and ep.stats().foreign_packets == 75
        finally:
            ep.close()
            local.close()
            natted.close()

    run(body)


def test_dual_stack_socket_takes_an_ipv4_peer_at_its_signalled_address_at_once() -> None:
    # Bound to "::", the socket sees an IPv4 peer as ::ffff:a.b.c.d: the SDP's a.b.c.d must match it.
    async def body(clock: MediaClock) -> None:
        try:
            ep = RtpEndpoint(clock, allocator(), bind_host="::", silence=SIL, eager=True, symmetric=False)
        except (OSError, RtpError):
            pytest.skip("no IPv6 on this host")
        peer = Peer()
        frames: list[bytes] = []
        ep.on_frame = frames.append
        try:
            ep.set_remote(HOST, peer.port, 0)
            ep.playout.push(b"\x01" * 160 * 5)
            peer.send(ep.local_port, b"\x02" * 160)
            await until(lambda: frames == [b"\x02" * 160])
            await until(lambda: any(p.payload == b"\x01" * 160 for p in peer.received()))
        finally:
            ep.close()
            peer.close()

    run(body)


def _rtcp_socket(peer: Peer) -> socket.socket | None:
    """A socket on the peer's RTP port + 1, where the endpoint sends its RTCP (None when that port is taken)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((HOST, peer.port + 1))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


async def _packets(peer: Peer, count: int) -> list[RtpPacket]:
    """The next ``count`` or more packets the peer receives."""
    got: list[RtpPacket] = []
    await until(lambda: bool(got.extend(peer.received())) or len(got) >= count)
    return got


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def test_hold_sends_no_rtp_keeps_the_queue_and_resume_plays_on_from_there() -> None:
    """a=sendonly from the PBX: not one packet leaves while held (its music must not meet our audio), the
    queued speech waits, the music still comes in, RTCP goes on; sendrecv resumes exactly where it stopped."""

    async def body(clock: MediaClock) -> None:
        peer = Peer()
        rtcp = _rtcp_socket(peer)
        heard: list[bytes] = []
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, silence=SIL, eager=True, on_frame=heard.append,
                         rtcp_interval=0.1)
        packets: list[RtpPacket] = []
        try:
            ep.set_remote(HOST, peer.port, 0)
            ep.playout.push(b"".join(bytes([i]) * 160 for i in range(1, 101)))  # 2 s of numbered frames
            await until(lambda: bool(packets.extend(peer.received())) or len(packets) >= 10)
            ep.set_remote(HOST, peer.port, 0, send=False)  # the re-INVITE's answer is recvonly
            await asyncio.sleep(0.05)
            packets.extend(peer.received())  # what left before the hold took effect
            queued, sent = ep.playout.buffered_ms, ep.packets_sent
            if rtcp is not None:
                _drain(rtcp)
            for _ in range(25):  # 0.5 s on hold, the PBX playing its music to us
                peer.send(ep.local_port, b"\x7e" * 160)
                await asyncio.sleep(0.02)
            assert peer.received() == [] and ep.packets_sent == sent, "RTP left during hold"
            assert ep.playout.buffered_ms == queued and queued > 0
            assert heard.count(b"\x7e" * 160) >= 20 and ep.stats().foreign_packets == 0
            if rtcp is not None:
                assert _drain(rtcp) >= 2, "no RTCP during hold"
            ep.set_remote(HOST, peer.port, 0)  # sendrecv again
            await until(lambda: bool(packets.extend(peer.received())) or packets[-1].payload[0] == 100, 4)
        finally:
            ep.close()
            peer.close()
            if rtcp is not None:
                rtcp.close()
        audio = [p for p in packets if p.payload != SIL]
        assert [p.payload[0] for p in audio] == list(range(1, 101)), "speech lost or replayed across the hold"
        assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in itertools.pairwise(packets))
        resumed = next(i for i, (a, b) in enumerate(itertools.pairwise(packets))
                       if ts_diff(b.timestamp, a.timestamp) >= 25 * 160)
        assert packets[resumed + 1].marker, "the first packet after the hold starts a talkspurt"

    run(body)


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def test_rtcp_goes_where_the_sdp_says_and_is_taken_from_there() -> None:
    """``a=rtcp:PORT`` (RFC 3605; FreeSWITCH sends it): our RTCP goes to that port, not to RTP's port + 1, a
    re-offer moving it is followed, and the peer's reports from there are taken as its own."""

    async def body(clock: MediaClock) -> None:
        peer, first, second = Peer(), _udp_socket(), _udp_socket()
        plus_one = _rtcp_socket(peer)
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, silence=SIL, eager=True, rtcp_interval=0.05)
        try:
            ep.set_remote(HOST, peer.port, 0, rtcp=(HOST, first.getsockname()[1]))
            peer.send(ep.local_port, b"\x01" * 160)  # the stream the peer's reports are about
            await until(lambda: _drain(first) > 0)
            ep.set_remote(HOST, peer.port, 0, rtcp=(HOST, second.getsockname()[1]))  # a re-INVITE moves it
            await asyncio.sleep(0.05)
            _drain(first)
            await until(lambda: _drain(second) > 0)
            await asyncio.sleep(0.2)
            assert _drain(first) == 0 and _drain(second) >= 2
            assert plus_one is None or _drain(plus_one) == 0, "RTCP went to RTP's port + 1"
            block = ReportBlock(ep.ssrc, 0, 0, 5, 0)
            second.sendto(build_rr(ReceiverReport(peer.ssrc, [block]), "peer"), (HOST, ep.local_port + 1))
            await until(lambda: ep.remote_report is not None)
            assert ep.stats().foreign_packets == 0
        finally:
            ep.close()
            for sock in (peer, first, second, plus_one):
                if sock is not None:
                    sock.close()

    run(body)


def test_hold_by_an_unspecified_address_keeps_taking_media_from_the_source() -> None:
    """c=0.0.0.0 in a re-INVITE: nothing goes anywhere (RTP or RTCP), the PBX's music from the address it
    always used is still taken (not foreign), and the real address again resumes."""

    async def body(clock: MediaClock) -> None:
        peer = Peer()
        rtcp = _rtcp_socket(peer)
        heard: list[bytes] = []
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, silence=SIL, eager=True, on_frame=heard.append,
                         rtcp_interval=0.05)
        try:
            ep.set_remote(HOST, peer.port, 0)
            await _packets(peer, 3)
            ep.set_remote("0.0.0.0", peer.port, 0)
            await asyncio.sleep(0.05)
            peer.received()
            if rtcp is not None:
                _drain(rtcp)
            ep.playout.push(b"\x01" * 160 * 10)
            for _ in range(20):
                peer.send(ep.local_port, b"\x7e" * 160)
                await asyncio.sleep(0.02)
            assert peer.received() == [] and ep.remote_address == (HOST, peer.port)
            assert rtcp is None or _drain(rtcp) == 0
            assert heard.count(b"\x7e" * 160) >= 15 and ep.stats().foreign_packets == 0
            ep.set_remote(HOST, peer.port, 0)
            await until(lambda: any(p.payload == b"\x01" * 160 for p in peer.received()))
        finally:
            ep.close()
            peer.close()
            if rtcp is not None:
                rtcp.close()

    run(body)


def test_a_codec_change_restarts_the_jitter_buffer_and_moves_the_queue_to_the_new_codec() -> None:
    """PCMU → PCMA by re-INVITE: the new payload type both ways, the old one's stragglers dropped, nothing of
    the old codec concealed through the new decoder, the queued audio converted and played on."""
    pcma_silence = b"\xd5" * 160

    async def main() -> None:
        async with eager_endpoint(jitter_ms=40) as (_, peer, ep, got):
            peer.send(ep.local_port, b"\x01" * 160)
            await until(lambda: len(got) == 1)
            ep.playout.push(b"\x11" * 160 * 2)
            ep.on_tick(1)  # one PCMU frame of the queue goes out
            stats_before = ep.stats()
            ep.set_codec(pcma_silence, lambda data: bytes(b ^ 0x55 for b in data))
            ep.set_remote(HOST, peer.port, 8)
            peer.send(ep.local_port, b"\x02" * 160)  # PCMU still in flight: dropped
            peer.send(ep.local_port, b"\x03" * 160, pt=8)
            await until(lambda: len(got) == 2)
            for _ in range(4):  # the sender pauses: concealment repeats the PCMA frame, then PCMA silence
                ep.on_tick(1)
            assert got[1] == b"\x03" * 160 and got[2:] == [b"\x03" * 160, pcma_silence]
            assert ep.stats().packets_received == stats_before.packets_received + 1
            sent = peer.received()
        assert [(p.payload_type, p.payload[0]) for p in sent] == [(0, 0x11), (8, 0x11 ^ 0x55)] + [(8, 0xD5)] * 3
        assert ep.playout.played_ms == 40

    asyncio.run(main())


def test_an_address_change_moves_media_at_once() -> None:
    """A re-INVITE to another address and port (the PBX moves the media, a transfer): our RTP goes there from
    the next tick, its packets are taken at once, the old address gets nothing more."""

    async def body(clock: MediaClock) -> None:
        old, new = Peer(), Peer()
        heard: list[bytes] = []
        ep = RtpEndpoint(clock, allocator(), bind_host=HOST, silence=SIL, eager=True, on_frame=heard.append,
                         symmetric=False)
        try:
            ep.set_remote(HOST, old.port, 0)
            old.send(ep.local_port, b"\x01" * 160)
            await _packets(old, 3)
            assert heard == [b"\x01" * 160]
            ep.set_remote(HOST, new.port, 0)
            await asyncio.sleep(0.03)
            old.received()
            new.send(ep.local_port, b"\x02" * 160)
            old.send(ep.local_port, b"\x09" * 160)
            await _packets(new, 5)
            await until(lambda: b"\x02" * 160 in heard)
            assert old.received() == [] and b"\x09" * 160 not in heard
            assert ep.remote_address == (HOST, new.port) and ep.stats().foreign_packets == 1
        finally:
            ep.close()
            old.close()
            new.close()

    run(body)


def test_srtp_between_endpoints_rekey_and_hostile_packets() -> None:
    """Two endpoints talk SRTP and SRTCP; a re-key gives a new context and a new SSRC; plain, forged and
    replayed packets never reach on_frame, DTMF or the statistics, and are counted."""
    from sipagent.rtp.srtp import SrtpContext

    suite = "AES_CM_128_HMAC_SHA1_80"
    key_a, key_b, key_c = bytes([1]) * 30, bytes([2]) * 30, bytes([3]) * 30

    async def body(clock: MediaClock) -> None:
        ports = allocator()
        frames: list[bytes] = []
        a = RtpEndpoint(clock, ports, bind_host=HOST, rtcp_interval=0.2)
        b = RtpEndpoint(clock, ports, bind_host=HOST, on_frame=frames.append, rtcp_interval=0.2, eager=True)
        attacker = Peer()
        try:
            a.set_crypto(SrtpContext(suite, key_a, key_b))
            b.set_crypto(SrtpContext(suite, key_b, key_a))
            a.set_remote(HOST, b.local_port, 0)
            b.set_remote(HOST, a.local_port, 0)
            skipped = clock.skipped_ticks
            for i in range(30):
                a.playout.push(bytes([i + 1]) * 160)
            await until(lambda: not a.playout.is_playing, limit=3.0)
            await asyncio.sleep(0.3)
            # All, once, in order; b (eager) repeats a frame only to conceal a hole a skipped tick left.
            heard = [f[0] for f in frames if f != SIL]
            assert collapse_repeats(heard) == list(range(1, 31))
            assert len(heard) - 30 <= clock.skipped_ticks - skipped
            assert b.stats().packets_received >= 30 and b.srtp_dropped == 0
            assert a.remote_report is not None  # SRTCP went both ways and was read
            # Hostile: plain RTP with loud audio, from elsewhere and (as the latch would take) in sequence.
            for _ in range(20):
                attacker.send(b.local_port, b"\x00" * 160)
            await asyncio.sleep(0.2)
            assert b.srtp_dropped == 20
            assert all(f != b"\x00" * 160 for f in frames) and b.foreign_packets == 0  # dropped before the latch
            # Re-key (a new key from the peer: both sides renew): new contexts, and a new SSRC for what a sends.
            ssrc = a.ssrc
            a.set_crypto(SrtpContext(suite, key_c, key_b))
            b.set_crypto(SrtpContext(suite, key_b, key_c))
            assert a.ssrc != ssrc
            count, skipped = len(frames), clock.skipped_ticks
            for i in range(10):
                a.playout.push(bytes([100 + i]) * 160)
            await until(lambda: not a.playout.is_playing, limit=3.0)
            await asyncio.sleep(0.3)
            heard = [f[0] for f in frames[count:] if f != SIL]
            assert collapse_repeats(heard) == list(range(100, 110))
            assert len(heard) - 10 <= clock.skipped_ticks - skipped
            assert b.stats().srtp_dropped == b.srtp_dropped >= 20
        finally:
            attacker.close()
            a.close()
            b.close()

    run(body)


def test_g722_calls_on_one_clock_phase_are_coded_together_with_their_own_codes() -> None:
    # Nine G.722 calls due at the same instant: their frames are coded side by side at the end of each
    # phase tick (EncoderBatch), and each call's packets still carry exactly its own encoder's codes, in
    # order, one per 20 ms, whether a frame went out on a tick or first, at once (start_talkspurt): each
    # timestamp one tick (160) on, more only by the ticks the clock skipped (one phase: counted once).
    rng = np.random.default_rng(5)
    audio = [np.asarray(rng.normal(0, 2000 * (c + 1), 480 * 25), dtype="<i2").tobytes() for c in range(9)]

    async def main() -> None:
        clock = MediaClock(phases=1)
        clock.start()
        peers = [Peer() for _ in audio]
        eps = [RtpEndpoint(clock, allocator(), bind_host=HOST, silence=CODEC_SILENCE["G722"],
                           playout=PcmPlayout("G722")) for _ in audio]
        skipped = clock.skipped_ticks
        try:
            for ep, peer, pcm in zip(eps, peers, audio, strict=True):
                ep.set_remote(HOST, peer.port, 9)
                ep.playout.push(pcm)
                ep.start_talkspurt()
            got: list[list[RtpPacket]] = [[] for _ in audio]

            def all_sent() -> bool:
                for packets, peer in zip(got, peers, strict=True):
                    packets.extend(peer.received())
                return all(sum(p.payload != CODEC_SILENCE["G722"] for p in packets) >= 25 for packets in got)

            await until(all_sent)
            skipped = clock.skipped_ticks - skipped
            assert clock.batched_frames >= 9 * 20  # most frames were coded together
            for packets, pcm in zip(got, audio, strict=True):
                encoder = Encoder24k("G722")
                want = [encoder.encode(pcm[i : i + 960]) for i in range(0, len(pcm), 960)]
                sent = [p.payload for p in packets if p.payload != CODEC_SILENCE["G722"]]
                assert sent[:25] == want
                assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in itertools.pairwise(packets))
                assert ticks_skipped_in(packets) <= skipped
        finally:
            for ep in eps:
                ep.close()
            for peer in peers:
                peer.close()
            clock.stop()

    asyncio.run(main())


@pytest.mark.parametrize("ms", [10, 30])
def test_packets_of_10_or_30_ms_are_heard_as_whole_20_ms_frames(ms: int) -> None:
    """Asterisk sends what `allow=ulaw:30` says whatever ptime we answer with; a few phones send 10 ms. Each
    byte is its own timestamp unit here, so every frame handed on must be the stream's bytes in their place,
    with no resync, no concealment and nothing lost."""

    async def main() -> None:
        async with eager_endpoint(jitter_ms=60) as (clock, peer, ep, got):
            size, first = ms * 8, 5000
            clock.start()
            for i in range(60 * 20 // ms):  # 1.2 s of audio, sent in real time
                ts = first + i * size
                peer.send(ep.local_port, bytes((ts + k) % 251 for k in range(size)), ts=ts)
                await asyncio.sleep(ms / 1000)
            await until(lambda: len(got) >= 59, limit=3.0)
            frames = [f for f in got if f != SIL]
            assert frames[:59] == [bytes((first + j * 160 + k) % 251 for k in range(160)) for j in range(59)]
            assert ep.jitter.stats.resyncs == 0 and ep.stats().concealed <= 1 and ep.stats().lost == 0

    asyncio.run(main())
