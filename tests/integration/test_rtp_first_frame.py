"""The first frame of a talkspurt goes out as soon as it is queued, on 127.0.0.1 with the real clock: marker
bit, the next sequence number and timestamp, the second frame a period later, then back home when idle."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time

from test_rtp_endpoint import ticks_skipped_in

from sipagent.media.clock import MediaClock
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import RtpPacket
from sipagent.rtp.ports import PortAllocator

HOST = "127.0.0.1"


class Sink:
    """A far end that notes every packet with its arrival time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.got: list[tuple[float, RtpPacket]] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        try:
            data = self.sock.recv(2048)
        except BlockingIOError:
            return
        self.got.append((time.monotonic(), RtpPacket.parse(data)))

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def _until(cond: object, limit: float = 3.0) -> None:
    end = time.monotonic() + limit
    while not cond() and time.monotonic() < end:  # type: ignore[operator]
        await asyncio.sleep(0.005)


def test_first_frame_at_once_then_paced_then_home() -> None:
    async def main() -> None:
        clock = MediaClock()
        clock.start()
        lo = random.randrange(20000, 30000, 2)
        sink = Sink()
        sends: list[tuple[float, bytes | None]] = []  # (when, frame) of each frame put on the wire, in order
        ep = RtpEndpoint(clock, PortAllocator(lo, lo + 99), bind_host=HOST,
                         on_sent=lambda frame, _: sends.append((time.monotonic(), frame)))
        # After an early first frame the stream's next tick is due at the phase slot nearest one period later
        # (within half a slot), and the clock runs no tick before its deadline less ``wake_early``: the second
        # frame leaves at least this long after the first was queued, however loaded the machine (a stall
        # only delays it). Its home phase's next tick, which it left, was at most 15 ms away.
        min_second = clock.interval - clock.interval / clock.phases / 2 - clock.wake_early - 0.0001
        try:
            ep.set_remote(HOST, sink.port, 0)
            await _until(lambda: len(sink.got) >= 5)
            home = clock.phase_of(ep)
            assert home is not None and home[0] == home[1]
            sent = 0
            for _ in range(40):  # usually done in about 5; tries a loaded machine spoils do not count
                # Queue the reply 5-12 ms after a tick (the clock's next one is 8-15 ms away). On a loaded
                # machine the sleep can overshoot until the next tick is due anyway: the clock then rightly
                # keeps it (no early send), and that attempt proves nothing about the early path.
                n = len(sink.got)
                await _until(lambda n=n: len(sink.got) > n)
                await asyncio.sleep(random.uniform(0.005, 0.012))
                frames = [bytes([i + 1]) * 160 for i in range(4)]
                # Packets are counted as they leave, and the sink gets them all in order: sink.got[before] is
                # the first packet sent from here on, whether or not the sink has read the one before yet.
                before, logged = ep.packets_sent, len(sends)
                early_ticks, skipped, late = clock.early_ticks, clock.skipped_ticks, clock.late_ticks
                queued = time.monotonic()
                ep.playout.push(b"".join(frames))
                early = ep.start_talkspurt()
                # At once: the clock ran the stream's tick inside the call, so the frame had left before it
                # returned (no await in between), not on a tick. Otherwise nothing left in the call: the tick
                # was near anyway, or (queued within min_spacing of the last one) moved a little earlier.
                at_once = clock.early_ticks - early_ticks
                assert at_once in (0, 1) and (early or not at_once)
                assert ep.packets_sent == before + at_once and len(sends) == logged + at_once
                assert not ep.start_talkspurt()  # once only, whether the clock took it or not
                await _until(lambda before=before: len(sink.got) >= before + 10)
                skipped = clock.skipped_ticks - skipped
                rx = [p for _, p in sink.got[before - 1 : before + 10]]
                prev, first, second = rx[0], rx[1], rx[2]
                assert first.payload == frames[0] and first.marker
                assert (first.sequence - prev.sequence) & 0xFFFF == 1
                assert second.payload == frames[1] and not second.marker
                assert [p.payload for p in rx[1:5]] == frames
                assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in itertools.pairwise(rx))
                # One tick (160) per packet, the early one too (it is the stream's next tick, run early): more
                # only by ticks the clock skipped, which also keeps the second frame from coming late.
                assert ticks_skipped_in(rx) <= skipped
                if at_once:
                    sent += 1
                    assert ticks_skipped_in(rx[:2]) == 0
                    assert [frame for _, frame in sends[logged : logged + 2]] == frames[:2]
                    # Paced: the second frame a period after the first, not back to back nor on the home tick.
                    assert sends[logged + 1][0] - queued >= min_second
                    if clock.late_ticks == late and not skipped:  # no tick ran late: nor a gap after the first
                        assert sends[logged + 1][0] - sends[logged][0] <= clock.interval * 1.5
                if early:
                    await _until(lambda: clock.phase_of(ep) == home, 0.5)
                    assert clock.phase_of(ep) == home  # idle again: back on its home phase
                if sent == 5:
                    break
            assert sent >= 3, f"the clock sent early only {sent} times in 40 tries"
            assert clock.early_ticks == sent
            # The queue running dry for a frame in the middle of a reply is an underrun, not a pause: the
            # rest waits for the tick (the slack it gives), with no marker jump in the timing.
            ep.playout.push(b"\x01" * 320)
            n = ep.packets_sent
            await _until(lambda: ep.packets_sent >= n + 3)
            ep.playout.push(b"\x02" * 160)
            assert not ep.start_talkspurt()
            assert clock.early_ticks == sent
            # Nothing early while the queue is paused or the call is held.
            ep.playout.push(b"\x01" * 320)
            ep.playout.pause()
            ep.playout.flush()
            ep.set_remote(HOST, sink.port, 0, send=False)
            ep.playout.push(b"\x01" * 320)
            assert not ep.start_talkspurt()
        finally:
            ep.close()
            sink.close()
            clock.stop()

    asyncio.run(main())


def test_paused_queue_does_not_start_a_talkspurt() -> None:
    async def main() -> None:
        clock = MediaClock()
        clock.start()
        lo = random.randrange(20000, 30000, 2)
        sink = Sink()
        ep = RtpEndpoint(clock, PortAllocator(lo, lo + 99), bind_host=HOST)
        try:
            ep.set_remote(HOST, sink.port, 0)
            await _until(lambda: len(sink.got) >= 2)
            ep.playout.pause()
            ep.playout.push(b"\x01" * 320)
            assert not ep.start_talkspurt()
            assert clock.early_ticks == 0
        finally:
            ep.close()
            sink.close()
            clock.stop()

    asyncio.run(main())
