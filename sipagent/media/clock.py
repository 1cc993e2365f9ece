"""The one shared 20 ms media clock of the process.

Every registered stream gets ``on_tick(elapsed)`` once per 20 ms, on absolute deadlines of
``time.monotonic()`` (``deadline = start + k * interval``), never by chaining relative sleeps, so the cadence
does not drift whatever each tick costs. The clock keeps its own time base rather than ``loop.time()``
because uvloop's is in whole milliseconds (see ``_delay``).

Streams are spread over ``phases`` evenly spaced sub-slots of the period (each stream keeps its own
exact 20 ms cadence, but calls are not all due at the same instant): with hundreds of calls, sending
every packet at one instant would delay the last packet of the tick by the cost of all the others.

``ticks``, ``late_ticks`` and ``skipped_ticks`` count phase ticks that had streams to serve.
A tick that runs late is still one tick (``late_ticks`` counts those later than ``late_threshold``).
A tick so late that one or more whole periods passed is not replayed as a burst of packets: the missed
deadlines are skipped and counted (``skipped_ticks``), and streams get ``elapsed > 1`` so their RTP
timestamps keep pace with real time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

INTERVAL = 0.020


class ClockStream(Protocol):
    def on_tick(self, elapsed: int) -> None:
        """Send this period's frame; ``elapsed`` is the number of periods since the last call (normally 1)."""


class MediaClock:
    def __init__(
        self,
        interval: float = INTERVAL,
        phases: int = 10,
        late_threshold: float = 0.002,
        probe: Callable[[float], None] | None = None,
    ) -> None:
        self.interval = interval
        self.phases = max(1, phases)
        self.late_threshold = late_threshold
        # The stdlib selector's timeout is rounded up to whole milliseconds, so a wake-up lands 0-1 ms after
        # the time asked for. Asking half a millisecond early centres that error on the deadline (±0.5 ms)
        # instead of making every packet up to 1 ms late. (uvloop: see _delay.)
        self.wake_early = min(0.0005, interval / 10)
        self._whole_ms = False  # timers due on whole milliseconds (uvloop/libuv)
        self.probe = probe  # if set, called with (send time - deadline) after each stream's tick (benchmarks)
        self.ticks = 0
        self.late_ticks = 0
        self.skipped_ticks = 0
        self._slots: list[list[ClockStream]] = [[] for _ in range(self.phases)]
        self._slot_of: dict[int, int] = {}
        self._handles: list[asyncio.TimerHandle | None] = [None] * self.phases
        self._due: list[tuple[float, int] | None] = [None] * self.phases  # armed (deadline, k) per phase
        self.next_due = math.inf  # the earliest armed deadline (time.monotonic()), for run_due()
        self._ticking = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start = 0.0

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def streams(self) -> int:
        return len(self._slot_of)

    def start(self) -> None:
        """Start ticking on the running event loop (idempotent)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._whole_ms = type(self._loop).__module__.startswith("uvloop")
        now = time.monotonic()
        if self._whole_ms:
            # Deadlines half-way between two milliseconds: a timer due on the millisecond before one fires
            # within ±0.5 ms of it (_delay), the stdlib loop's precision with its early wake-up.
            now = (math.floor(now * 1000) + 0.5) / 1000
        self._start = now + self.interval
        for phase in range(self.phases):
            if self._slots[phase]:
                self._schedule(phase)

    def _schedule(self, phase: int) -> None:
        """Arm an idle phase at its next deadline on the absolute grid (idle phases cost no wakeups)."""
        loop = self._loop
        if loop is None or self._handles[phase] is not None:
            return
        offset = self._start + phase * (self.interval / self.phases)
        k = max(0, math.ceil((time.monotonic() - offset) / self.interval))
        self._arm(loop, phase, k, offset + k * self.interval)

    def _arm(self, loop: asyncio.AbstractEventLoop, phase: int, k: int, deadline: float) -> None:
        self._handles[phase] = loop.call_later(self._delay(deadline), self._tick, phase, k)
        self._due[phase] = (deadline, k)
        self.next_due = min(self.next_due, deadline)

    def _disarm(self, phase: int) -> None:
        self._handles[phase] = None
        self._due[phase] = None
        self.next_due = min((due[0] for due in self._due if due is not None), default=math.inf)

    def run_due(self) -> None:
        """Run now every tick whose deadline has passed and whose timer has not fired yet.

        For the hot I/O callbacks (each received RTP packet): an event-loop iteration runs all the I/O
        callbacks that are ready before it looks at its timers, so with hundreds of calls a burst of
        packets and model events would hold a tick back by the whole batch, several milliseconds. Checked
        from inside the batch, a tick waits for one callback at most. Costs one clock read when nothing
        is due."""
        if self._ticking or time.monotonic() < self.next_due:
            return
        now = time.monotonic()
        for phase, due in enumerate(self._due):
            if due is not None and due[0] <= now:
                handle = self._handles[phase]
                if handle is not None:
                    handle.cancel()
                self._disarm(phase)
                self._tick(phase, due[1])

    def _delay(self, deadline: float) -> float:
        """The timer delay that wakes us closest to ``deadline`` (a ``time.monotonic()`` instant). The
        stdlib loop wakes 0-1 ms after the time asked for: ask ``wake_early``. libuv keeps its time in whole
        milliseconds (CLOCK_MONOTONIC, truncated) and fires a timer at the first wake-up at or after its due
        millisecond, 0-1 ms past it: a whole-millisecond delay makes the due millisecond the one before the
        deadline, which start() put half-way between two."""
        now = time.monotonic()
        if self._whole_ms:
            return (math.floor(deadline * 1000) - math.floor(now * 1000)) / 1000
        return deadline - self.wake_early - now

    def stop(self) -> None:
        for handle in self._handles:
            if handle is not None:
                handle.cancel()
        self._handles = [None] * self.phases
        self._due = [None] * self.phases
        self.next_due = math.inf
        self._loop = None

    def register(self, stream: ClockStream) -> None:
        """Add a stream to the least loaded phase; it gets its first tick within one period."""
        if id(stream) in self._slot_of:
            return
        phase = min(range(self.phases), key=lambda p: len(self._slots[p]))
        self._slots[phase].append(stream)
        self._slot_of[id(stream)] = phase
        self._schedule(phase)

    def unregister(self, stream: ClockStream) -> None:
        phase = self._slot_of.pop(id(stream), None)
        if phase is not None:
            # Replace the list rather than mutate it: a tick may be iterating over the old one.
            self._slots[phase] = [s for s in self._slots[phase] if s is not stream]

    def _tick(self, phase: int, k: int) -> None:
        loop = self._loop
        if loop is None:
            return
        offset = self._start + phase * (self.interval / self.phases)
        deadline = offset + k * self.interval
        now = time.monotonic()
        elapsed = 1
        if now - deadline >= self.interval:
            # Whole periods missed: jump to the latest deadline that has passed instead of bursting.
            missed = int((now - deadline) / self.interval)
            k += missed
            deadline += missed * self.interval
            elapsed += missed
        self._disarm(phase)
        streams = self._slots[phase]
        if not streams:
            return  # idle until a stream registers here again
        self.ticks += 1
        self.skipped_ticks += elapsed - 1
        if now - deadline > self.late_threshold:
            self.late_ticks += 1
        probe = self.probe
        self._ticking = True
        try:
            for stream in streams:
                try:
                    stream.on_tick(elapsed)
                except Exception:
                    log.exception("media stream %r failed on tick; unregistering it", stream)
                    self.unregister(stream)
                if probe is not None:
                    probe(time.monotonic() - deadline)
        finally:
            self._ticking = False
        self._arm(loop, phase, k + 1, deadline + self.interval)
