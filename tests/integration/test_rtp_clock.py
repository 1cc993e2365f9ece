"""The shared media clock on a real event loop: cadence, skip-don't-burst, a failing stream."""

from __future__ import annotations

import asyncio
import itertools
import time

from sipagent.media.clock import MediaClock


class Counter:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.at: list[float] = []

    def on_tick(self, elapsed: int) -> None:
        self.calls.append(elapsed)
        self.at.append(asyncio.get_running_loop().time())


class Broken:
    def on_tick(self, elapsed: int) -> None:
        raise RuntimeError("boom")


def assert_paced(at: list[float], elapsed: list[int], min_span: float) -> None:
    """A stream's ticks (their times ``at``, the periods ``elapsed`` each stood for) came one per period, with
    no burst of catch-up ticks. Each tick runs less than a period after its own deadline (or the missed
    deadlines are skipped), and a stream's deadlines are a period apart, so any three of its ticks span more
    than a period (``min_span`` leaves room for measuring), however late the loop ran. A tick late by most of
    a period may still land just before the next one: two close ticks alone are not a burst. And the periods
    the ticks stood for add up to the time they covered (to within the lateness): none lost or doubled."""
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert all(g1 + g2 > min_span for g1, g2 in itertools.pairwise(gaps)), gaps
    assert abs(sum(elapsed[1:]) - (at[-1] - at[0]) / 0.020) < 1.5, (elapsed, gaps)


def test_every_stream_ticks_and_a_stall_is_skipped_not_burst() -> None:
    async def body() -> None:
        clock = MediaClock(phases=4)
        streams = [Counter() for _ in range(6)]
        for s in streams:
            clock.register(s)
        broken = Broken()
        clock.register(broken)
        clock.start()
        await asyncio.sleep(0.3)
        async with asyncio.timeout(5):  # five ticks each: 0.1 s, unless the process was descheduled meanwhile
            while min(len(s.calls) for s in streams) < 5:
                await asyncio.sleep(0.02)
        assert clock.streams == 6  # the failing stream was dropped, the others go on
        before = [len(s.calls) for s in streams]
        time.sleep(0.2)  # the loop stalls for ~10 periods
        await asyncio.sleep(0.1)
        clock.stop()
        assert clock.skipped_ticks > 0
        for s, n in zip(streams, before, strict=True):
            assert n >= 5
            # After the stall, one call covers the missed periods (elapsed > 1) instead of a burst of calls.
            assert max(s.calls) > 1
            assert_paced(s.at, s.calls, 0.010)
        # Streams are spread over phases; unregister is immediate.
        clock.unregister(streams[0])
        assert clock.streams == 5

    asyncio.run(body())
