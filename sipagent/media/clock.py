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

A stream may move between phases (``send_now``, ``rejoin_home``) so that the first frame of a talkspurt
does not wait for the stream's next tick: ``send_now`` runs the stream's next tick at once (or, within
``min_spacing`` of its previous tick, at the first slot after that: ``first_frame_at`` decides) and moves
the stream to the phase slot nearest one period later, so its second frame follows 20 ms (± half a slot)
after the first; ``rejoin_home`` takes it back to the phase ``register`` gave it (its home, which keeps the
load spread) once it is idle again, with one interval of up to two periods. Each tick still stands for one
period of the home grid: a frame sent early is the stream's next tick, run less than a period early, so the
RTP timestamp (one frame per tick) never runs a whole period ahead of real time, and is back on it at home.
A moved stream waits in its new phase's ``_joining`` list with the first tick it belongs to, so a move
never costs a burst; a phase tick stays O(its streams), plus the streams joining it.
While a phase tick runs, ``batch`` is open: a stream may stage its G.722 frame there rather than code it,
and the batch codes the staged frames of several calls in one kernel call (eight side by side) and sends
each, as soon as eight wait and at the end of the tick. A packet leaves at most seven other calls' ticks
later than it would have; ``send_now`` runs outside a phase tick, so a talkspurt's first frame is coded at once.
The calls' received frames have their own batch, ``received``: a G.722 frame that arrives is decoded with
the others that arrived in the same pass of the event loop, at the end of that pass (``call_soon``), as soon
as eight wait, or at the end of the next phase tick, whichever comes first: a saturated loop's pass can
last a whole period, and a caller frame (barge-in) should not wait that long.
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

from sipagent.media.kernel import DecoderBatch, EncoderBatch

log = logging.getLogger(__name__)

INTERVAL = 0.020


class ClockStream(Protocol):
    def on_tick(self, elapsed: int) -> None:
        """Send this period's frame; ``elapsed`` is the number of periods since the last call (normally 1)."""


def first_frame_at(
    now: float, last_tick: float, next_tick: float, ahead: float, interval: float, min_lead: float, min_spacing: float
) -> float | None:
    """When a stream's next tick (due at ``next_tick``) should run, now that the first frame of a talkspurt is
    ready at ``now``: ``now`` itself, a later time still well before ``next_tick``, or None (keep
    ``next_tick``: it is at most ``min_lead`` away anyway).

    Never within ``min_spacing`` of the stream's previous tick (``last_tick``): no two packets a moment
    apart. And each tick stands for one period of its home grid (which its ticks run ``ahead`` of): the
    tick due at ``next_tick`` stands for the home deadline ``next_tick + ahead``, and runs at most
    ``interval - min_spacing`` before it, so the stream is never a whole period ahead of real time."""
    earliest = max(now, last_tick + min_spacing, next_tick + ahead - interval + min_spacing)
    if next_tick - earliest <= min_lead:
        return None
    return earliest


def nearest_slot(t: float, start: float, interval: float, phases: int) -> tuple[int, int]:
    """The (phase, k) whose deadline ``start + phase * interval / phases + k * interval`` is nearest ``t``."""
    step = interval / phases
    n = round((t - start) / step)
    return n % phases, n // phases


def first_slot_after(t: float, start: float, interval: float, phases: int) -> tuple[int, int]:
    """The (phase, k) of the first deadline at or after ``t``."""
    step = interval / phases
    n = max(0, math.ceil((t - start) / step - 1e-9))
    return n % phases, n // phases


class MediaClock:
    def __init__(
        self,
        interval: float = INTERVAL,
        phases: int = 10,
        late_threshold: float = 0.002,
        probe: Callable[[float], None] | None = None,
        min_lead: float = 0.002,
        min_spacing: float = 0.002,
    ) -> None:
        self.interval = interval
        self.phases = max(1, phases)
        self.late_threshold = late_threshold
        # The stdlib selector's timeout is rounded up to whole milliseconds, so a wake-up lands 0-1 ms after
        # the time asked for. Asking half a millisecond early centres that error on the deadline (±0.5 ms)
        # instead of making every packet up to 1 ms late. (uvloop: see _delay.)
        self.wake_early = min(0.0005, interval / 10)
        self._whole_ms = False  # timers due on whole milliseconds (uvloop/libuv)
        self.probe = probe  # if set, called with (send time - deadline) after each packet sent on a tick (benchmarks)
        self.min_lead = min_lead  # send_now: a tick at most this far off is not run early
        self.min_spacing = min_spacing  # send_now: nor one this soon after the stream's previous tick
        self.early_ticks = 0  # ticks run early by send_now
        self.ticks = 0
        self.late_ticks = 0
        self.skipped_ticks = 0
        self._slots: list[list[ClockStream]] = [[] for _ in range(self.phases)]
        self._slot_of: dict[int, int] = {}  # stream -> the phase it is in (or joining)
        self._home: dict[int, int] = {}  # stream -> the phase register() gave it
        self._load = [0] * self.phases  # streams at home in each phase
        # Streams moved to a phase: (the first k they belong to, stream); their previous tick's time.
        self._joining: list[list[tuple[int, ClockStream]]] = [[] for _ in range(self.phases)]
        self._last_of: dict[int, float] = {}
        self._ahead: dict[int, float] = {}  # stream -> how far its ticks run ahead of its home grid (if moved)
        self._tick_deadline = 0.0  # the deadline of the tick running now
        self._handles: list[asyncio.TimerHandle | None] = [None] * self.phases
        self._due: list[tuple[float, int] | None] = [None] * self.phases  # armed (deadline, k) per phase
        self.next_due = math.inf  # the earliest armed deadline (time.monotonic()), for run_due()
        self._ticking = False
        # Open while a phase tick runs: its streams' G.722 frames are coded together, eight at a time and
        # the rest at its end.
        self.batch: EncoderBatch | None = None
        self._batch = EncoderBatch()
        self.received = DecoderBatch()  # schedules its runs on the loop while the clock runs
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
        self.received.schedule = self._loop.call_soon
        self._whole_ms = type(self._loop).__module__.startswith("uvloop")
        now = time.monotonic()
        if self._whole_ms:
            # Deadlines half-way between two milliseconds: a timer due on the millisecond before one fires
            # within ±0.5 ms of it (_delay), the stdlib loop's precision with its early wake-up.
            now = (math.floor(now * 1000) + 0.5) / 1000
        self._start = now + self.interval
        for phase in range(self.phases):
            if self._slots[phase] or self._joining[phase]:
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
        self.received.schedule = None
        self.received.run()

    def register(self, stream: ClockStream) -> None:
        """Add a stream to the least loaded phase (its home); it gets its first tick within one period."""
        if id(stream) in self._slot_of:
            return
        phase = min(range(self.phases), key=lambda p: self._load[p])
        self._slots[phase].append(stream)
        self._slot_of[id(stream)] = phase
        self._home[id(stream)] = phase
        self._load[phase] += 1
        self._schedule(phase)

    def unregister(self, stream: ClockStream) -> None:
        phase = self._slot_of.pop(id(stream), None)
        if phase is not None:
            self._detach(stream, phase)
            self._ahead.pop(id(stream), None)
            self._load[self._home.pop(id(stream))] -= 1

    def _detach(self, stream: ClockStream, phase: int) -> None:
        # Replace the lists rather than mutate them: a tick may be iterating over the old one.
        if self._last_of.pop(id(stream), None) is not None:
            self._joining[phase] = [j for j in self._joining[phase] if j[1] is not stream]
        else:
            self._slots[phase] = [s for s in self._slots[phase] if s is not stream]

    def _join(self, stream: ClockStream, phase: int, k: int, last: float, ahead: float) -> None:
        """``stream`` ticks in ``phase`` from its ``k``-th deadline on; its previous tick was at ``last``, and
        its ticks there run ``ahead`` of its home grid."""
        self._joining[phase].append((k, stream))
        self._slot_of[id(stream)] = phase
        self._last_of[id(stream)] = last
        if ahead > 1e-9:
            self._ahead[id(stream)] = ahead
        else:
            self._ahead.pop(id(stream), None)
        self._schedule(phase)

    def _deadline(self, phase: int, k: int) -> float:
        return self._start + phase * (self.interval / self.phases) + k * self.interval

    @property
    def batched_frames(self) -> int:
        """Frames staged by streams during phase ticks and coded together (``batch``)."""
        return self._batch.frames

    def send_now(self, stream: ClockStream) -> bool:
        """The first frame of a talkspurt is ready: run ``stream``'s next tick now, or at the first phase slot
        at the time ``first_frame_at`` allows, rather than at its phase's next deadline; the stream then
        stays on the phase it ran on (its second frame one period after the first). Returns whether the
        stream moved (its tick ran now, or will run sooner). Not from inside a tick."""
        loop = self._loop
        sid = id(stream)
        phase = self._slot_of.get(sid)
        if loop is None or phase is None or self._ticking:
            return False
        now = time.monotonic()
        last = self._last_of.get(sid)
        if last is not None:  # joining ``phase``: its first tick there is its next
            k = next(k for k, s in self._joining[phase] if s is stream)
            next_tick = self._deadline(phase, k)
        else:
            due = self._due[phase]
            if due is None:
                return False
            next_tick = due[0]
            last = next_tick - self.interval
        ahead = self._ahead.get(sid, 0.0)
        home_tick = next_tick + ahead  # the home deadline the next tick stands for
        at = first_frame_at(now, last, next_tick, ahead, self.interval, self.min_lead, self.min_spacing)
        if at is None:
            return False
        if at > now:
            # Too soon after its previous tick: at the first slot from then on, standing for the same period.
            to_phase, k = first_slot_after(at, self._start, self.interval, self.phases)
            if self._deadline(to_phase, k) >= next_tick - self.min_lead:
                return False
            self._detach(stream, phase)
            self._join(stream, to_phase, k, last, home_tick - self._deadline(to_phase, k))
            return True
        self._detach(stream, phase)
        to_phase, k = nearest_slot(now + self.interval, self._start, self.interval, self.phases)
        ahead = home_tick + self.interval - self._deadline(to_phase, k)
        self._join(stream, to_phase, k, now, ahead)
        self.early_ticks += 1
        self._tick_deadline = home_tick - ahead  # so that rejoin_home from this tick finds home_tick
        self._ticking = True
        try:
            stream.on_tick(1)
        except Exception:
            log.exception("media stream %r failed on tick; unregistering it", stream)
            self.unregister(stream)
        finally:
            self._ticking = False
        return True

    def rejoin_home(self, stream: ClockStream) -> None:
        """From inside ``stream``'s tick: move it back to its home phase (it is idle again after ``send_now``
        moved it), at the home deadline after the one this tick stood for: one interval of a period plus
        how far ahead it ran, never a burst, and as many ticks as home periods."""
        sid = id(stream)
        phase = self._slot_of.get(sid)
        if phase is None or not self._ticking:
            return
        home = self._home[sid]
        ahead = self._ahead.get(sid, 0.0)
        if phase == home and sid not in self._last_of and not ahead:
            return
        t = self._tick_deadline
        self._detach(stream, phase)
        home_next = t + ahead + self.interval
        k = round((home_next - self._deadline(home, 0)) / self.interval)
        self._join(stream, home, k, t, 0.0)

    def phase_of(self, stream: ClockStream) -> tuple[int, int] | None:
        """(current phase, home phase) of a registered stream, else None."""
        phase = self._slot_of.get(id(stream))
        return None if phase is None else (phase, self._home[id(stream)])

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
        joining = self._joining[phase]
        if joining:
            # Streams moved here whose first tick this is.
            arrived = [s for first, s in joining if first <= k]
            if arrived:
                self._joining[phase] = [j for j in joining if j[0] > k]
                self._slots[phase] = self._slots[phase] + arrived
                for s in arrived:
                    del self._last_of[id(s)]
        streams = self._slots[phase]
        if not streams:
            if self._joining[phase]:
                self._arm(loop, phase, k + 1, deadline + self.interval)
            return  # idle until a stream registers (or moves) here again
        self.ticks += 1
        self.skipped_ticks += elapsed - 1
        if now - deadline > self.late_threshold:
            self.late_ticks += 1
        probe = self.probe
        self._tick_deadline = deadline
        self._ticking = True
        batch = self.batch = self._batch
        batch.after_each = None if probe is None else lambda: probe(time.monotonic() - deadline)
        try:
            for stream in streams:
                staged = batch.staged
                try:
                    stream.on_tick(elapsed)
                except Exception:
                    log.exception("media stream %r failed on tick; unregistering it", stream)
                    self.unregister(stream)
                if probe is not None and batch.staged == staged:  # a staged frame is probed as it is sent
                    probe(time.monotonic() - deadline)
        finally:
            self.batch = None
            self._ticking = False
            try:
                batch.run()
            except Exception:
                log.exception("coding this tick's frames failed")
        self._arm(loop, phase, k + 1, deadline + self.interval)
        self.received.run()  # caller frames waiting for the end of a long pass: after this tick's packets
