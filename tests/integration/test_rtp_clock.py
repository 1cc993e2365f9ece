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
            assert sum(s.calls) >= len(s.calls)
            gaps = [b - a for a, b in itertools.pairwise(s.at)]
            assert sum(g < 0.005 for g in gaps) <= 1  # no back-to-back burst of catch-up ticks
        # Streams are spread over phases; unregister is immediate.
        clock.unregister(streams[0])
        assert clock.streams == 5

    asyncio.run(body())
