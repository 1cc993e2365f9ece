"""The media clock's phases with a fake time and a fake loop: a talkspurt's first frame at once
(``send_now``), its second one period later, no burst, and back to the home phase (``rejoin_home``)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import sipagent.media.clock as clock_mod
from sipagent.media.clock import MediaClock, first_frame_at, first_slot_after, nearest_slot
from sipagent.media.kernel import Encoder24k, FrameDecoder

MS = 0.001


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_later on the fake time; ``run_until`` fires due timers at their exact deadlines."""

    def __init__(self, t: FakeTime) -> None:
        self.t = t
        self._timers: list[tuple[float, int, Handle, Callable[..., None], tuple[Any, ...]]] = []
        self._n = itertools.count()

    def call_later(self, delay: float, cb: Callable[..., None], *args: Any) -> Handle:
        handle = Handle()
        # MediaClock asks wake_early before the deadline; fire exactly on it.
        heapq.heappush(self._timers, (self.t.now + delay + 0.0005, next(self._n), handle, cb, args))
        return handle

    def run_until(self, end: float) -> None:
        while self._timers and self._timers[0][0] <= end + 1e-9:
            due, _, handle, cb, args = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.t.now = max(self.t.now, due)
            cb(*args)
        self.t.now = max(self.t.now, end)


class Stream:
    def __init__(self, t: FakeTime) -> None:
        self.t = t
        self.ticks: list[tuple[float, int]] = []
        self.on_tick_hook: Callable[[], None] | None = None

    def on_tick(self, elapsed: int) -> None:
        self.ticks.append((self.t.now, elapsed))
        if self.on_tick_hook is not None:
            self.on_tick_hook()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> tuple[MediaClock, FakeTime, FakeLoop]:
    t = FakeTime()
    monkeypatch.setattr(clock_mod, "time", t)
    clock = MediaClock()
    loop = FakeLoop(t)
    clock._loop = loop  # type: ignore[assignment]  # start() without a running loop
    clock._start = t.now + clock.interval
    return clock, t, loop


def gaps(stream: Stream) -> list[float]:
    times = [at for at, _ in stream.ticks]
    return [round((b - a) / MS, 3) for a, b in itertools.pairwise(times)]


def test_pure_decision_and_slots() -> None:
    i, lead, spacing = 0.02, 0.002, 0.002
    assert first_frame_at(10.0, 9.995, 10.015, 0.0, i, lead, spacing) == 10.0  # mid-period: now
    assert first_frame_at(10.0, 9.981, 10.001, 0.0, i, lead, spacing) is None  # own tick 1 ms away
    # 1 ms after its previous tick: 1 ms later, not at once (no burst) nor 19 ms later.
    assert first_frame_at(10.0, 9.999, 10.019, 0.0, i, lead, spacing) == pytest.approx(10.001)
    # On the way home (the next tick 35 ms after the last, 15 ms ahead before it): never a period ahead.
    assert first_frame_at(10.0, 9.996, 10.031, 0.0, i, lead, spacing) == pytest.approx(10.013)
    assert nearest_slot(10.0 + 0.0209, 10.0, 0.02, 10) == (0, 1)
    assert nearest_slot(10.0 + 0.0231, 10.0, 0.02, 10) == (2, 1)
    assert nearest_slot(10.0 + 0.0389, 10.0, 0.02, 10) == (9, 1)
    assert first_slot_after(10.0 + 0.025, 10.0, 0.02, 10) == (3, 1)  # 10.026
    assert first_slot_after(10.0 + 0.026, 10.0, 0.02, 10) == (3, 1)  # exactly on it


def test_first_frame_at_once_second_one_period_later(env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    clock, t, loop = env
    s = Stream(t)
    clock.register(s)
    loop.run_until(t.now + 0.1)
    before = len(s.ticks)
    last = s.ticks[-1][0]
    loop.run_until(last + 7.3 * MS)  # audio decoded 7.3 ms after the stream's last tick
    assert clock.send_now(s)
    assert s.ticks[-1] == (last + 7.3 * MS, 1)  # at once, one period's worth
    loop.run_until(t.now + 0.2)
    g = gaps(s)[before - 1 :]
    assert g[0] == pytest.approx(7.3, abs=1e-3)
    assert g[1] == pytest.approx(20.0, abs=1.0)  # the second frame a period (±half a slot) later
    assert all(x == pytest.approx(20.0, abs=1e-6) for x in g[2:])  # steady on its new phase
    assert clock.early_ticks == 1


def test_no_early_tick_near_either_tick(env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    clock, t, loop = env
    s = Stream(t)
    clock.register(s)
    loop.run_until(t.now + 0.1)
    last = s.ticks[-1][0]
    loop.run_until(last + 19 * MS)
    assert not clock.send_now(s)  # its own tick is 1 ms away: it sends then
    n = len(s.ticks)
    loop.run_until(last + 0.1)
    assert all(x == pytest.approx(20.0, abs=1e-6) for x in gaps(s)[n - 2 :])
    assert clock.early_ticks == 0
    last = s.ticks[-1][0]
    loop.run_until(last + 0.5 * MS)
    n = len(s.ticks)
    assert clock.send_now(s)  # just after its tick: moved to the first slot 2 ms on, no packet yet
    assert len(s.ticks) == n
    loop.run_until(last + 0.1)
    g = gaps(s)[n - 1 :]
    assert 2.0 <= g[0] <= 4.0 + 1e-6
    assert all(x == pytest.approx(20.0, abs=1e-6) for x in g[1:])


def test_back_home_when_idle_and_no_burst_anywhere(env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    clock, t, loop = env
    streams = [Stream(t) for _ in range(25)]
    for s in streams:
        clock.register(s)
    s = streams[7]
    loop.run_until(t.now + 0.1)
    home_before = clock.phase_of(s)
    assert home_before is not None and home_before[0] == home_before[1]
    last = s.ticks[-1][0]
    loop.run_until(last + 12.5 * MS)
    assert clock.send_now(s)
    loop.run_until(t.now + 0.1)
    moved = clock.phase_of(s)
    assert moved is not None and moved[0] != moved[1]
    # Idle again: the stream asks to go home from inside its own tick (as the endpoint does).
    s.on_tick_hook = lambda: clock.rejoin_home(s)
    loop.run_until(t.now + 0.021)
    s.on_tick_hook = None
    loop.run_until(t.now + 0.2)
    assert clock.phase_of(s) == (home_before[1], home_before[1])
    g = gaps(s)
    assert min(g) >= 12.5 - 1e-6  # the early tick is the only short interval
    assert max(g) <= 40.0  # the way home: one interval under two periods
    # Ticks stand for periods: as many ticks as the home grid had deadlines, so timestamps do not drift.
    first, end = s.ticks[0][0], s.ticks[-1][0]
    assert len(s.ticks) - 1 == round((end - first) / clock.interval)
    for other in streams:  # the others never noticed
        if other is not s:
            assert all(x == pytest.approx(20.0, abs=1e-6) for x in gaps(other))


def test_a_second_talkspurt_while_on_the_way_home(env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    clock, t, loop = env
    s = Stream(t)
    clock.register(s)
    loop.run_until(t.now + 0.1)
    loop.run_until(s.ticks[-1][0] + 5 * MS)
    assert clock.send_now(s)
    loop.run_until(t.now + 0.045)
    s.on_tick_hook = lambda: clock.rejoin_home(s)
    loop.run_until(t.now + 0.02)
    s.on_tick_hook = None
    loop.run_until(s.ticks[-1][0] + 4 * MS)  # new audio before the home tick comes
    assert clock.send_now(s)
    loop.run_until(t.now + 0.1)
    g = gaps(s)
    assert min(g) >= 4.0 - 1e-6 and max(g) <= 40.0
    # Ahead of its home grid now, but never by a whole period: one tick per home period.
    ahead = clock._ahead.get(id(s), 0.0)
    assert 0 < ahead < clock.interval
    assert len(s.ticks) - 1 == round((s.ticks[-1][0] + ahead - s.ticks[0][0]) / clock.interval)


def test_unregister_while_moved(env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    clock, t, loop = env
    a, b = Stream(t), Stream(t)
    clock.register(a)
    clock.register(b)
    loop.run_until(t.now + 0.05)
    loop.run_until(a.ticks[-1][0] + 9 * MS)
    assert clock.send_now(a)
    clock.unregister(a)
    n = len(a.ticks)
    loop.run_until(t.now + 0.1)
    assert len(a.ticks) == n and clock.streams == 1
    assert not clock.send_now(a)
    clock.register(a)  # registers again at the least loaded home
    loop.run_until(t.now + 0.05)
    assert len(a.ticks) > n


class StagingStream(Stream):
    """A G.722 call's tick reduced to what the clock sees: its frame staged in the open batch, or coded at
    once when no batch is open (send_now); ``fail`` raises after staging, as a broken stream would."""

    def __init__(self, t: FakeTime, clock: MediaClock, audio: list[bytes]) -> None:
        super().__init__(t)
        self.clock, self.audio = clock, audio
        self.encoder = Encoder24k("G722")
        self.sent: list[tuple[float, bytes, bool]] = []  # (time, payload, batched)
        self.fail = False

    def on_tick(self, elapsed: int) -> None:
        super().on_tick(elapsed)
        frame = self.audio[len(self.ticks) - 1]
        batch = self.clock.batch
        if batch is None:
            self.sent.append((self.t.now, self.encoder.encode(frame), False))
            return
        batch.stage(self.encoder, frame)
        if self.fail:
            raise RuntimeError("stream broken between stage and send")
        batch.send(lambda header, payload: self.sent.append((self.t.now, payload, True)), b"")


def test_a_phase_ticks_g722_frames_are_coded_together_and_sent_within_the_tick(
        env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    clock, t, loop = env
    probed: list[float] = []
    clock.probe = probed.append
    rng = np.random.default_rng(3)
    audio = [[np.asarray(rng.normal(0, 3000, 480), dtype="<i2").tobytes() for _ in range(30)] for _ in range(11)]
    streams = [StagingStream(t, clock, a) for a in audio]
    for s in streams:
        clock.register(s)
    plain = Stream(t)  # stages nothing: probed after its own tick
    clock.register(plain)
    assert clock.batch is None
    loop.run_until(t.now + 0.1)
    assert clock.batch is None  # open only while a phase tick runs
    broken = streams[4]
    broken.fail = True  # unregistered by the clock; its staged frame is coded, never sent
    loop.run_until(t.now + 0.02)
    late = streams[7]
    loop.run_until(late.ticks[-1][0] + 7.3 * MS)
    assert clock.send_now(late)  # outside a phase tick: coded and sent at once
    loop.run_until(t.now + 0.1)

    for s, a in zip(streams, audio, strict=True):
        reference = Encoder24k("G722")
        want = [reference.encode(frame) for frame in a[: len(s.ticks)]]
        got = [payload for _, payload, _ in s.sent]
        if s is broken:
            assert got == want[:-1]  # the frame of the tick that raised went nowhere
        else:
            assert got == want
            # Sent within the tick that staged it (the fake time stands still during a tick).
            assert [at for at, _, _ in s.sent] == [at for at, _ in s.ticks]
    assert [batched for _, _, batched in late.sent].count(False) == 1
    assert clock.batched_frames >= 11 * 9
    batched_sends = sum(batched for s in streams for _, _, batched in s.sent)
    assert len(probed) == batched_sends + len(plain.ticks)  # once per packet, as it is sent


def test_received_g722_frames_of_one_loop_pass_are_decoded_together_at_its_end() -> None:
    """The clock's ``received`` batch runs on the real event loop: the frames staged by the callbacks of one
    pass are handled after them, with the outputs each decoder alone gives; ``stop`` runs what still waits."""
    encoder = Encoder24k("G722")
    payload = encoder.encode((np.sin(np.arange(480) / 5) * 12000).astype("<i2").tobytes())
    handled: list[tuple[str, float, bytes]] = []
    ref = FrameDecoder("G722", "pcm")
    expected = ref.push(payload), ref.text

    async def scenario() -> None:
        clock = MediaClock()
        clock.start()
        decoders = [FrameDecoder("G722", "pcm") for _ in range(5)]

        def arrived(name: str, d: FrameDecoder) -> None:  # one packet's I/O callback
            clock.received.stage(d, payload, lambda ms: handled.append((name, ms, d.text)))

        loop = asyncio.get_running_loop()
        for i, d in enumerate(decoders):
            loop.call_soon(arrived, f"call {i}", d)
        await asyncio.sleep(0)  # the pass of the five callbacks
        assert handled == [] and len(clock.received) == 5
        await asyncio.sleep(0)  # the next pass starts with the batch's run
        assert handled == [(f"call {i}", *expected) for i in range(5)]
        assert (clock.received.frames, clock.received.runs) == (5, 1)
        arrived("late", FrameDecoder("G722", "pcm"))
        clock.stop()
        assert handled[-1] == ("late", *expected) and clock.received.schedule is None

    asyncio.run(scenario())


def test_a_received_frame_waits_at_most_until_the_end_of_the_next_phase_tick(
        env: tuple[MediaClock, FakeTime, FakeLoop]) -> None:
    """In a saturated loop a pass can last a whole period: the ``received`` batch also runs at the end of
    each phase tick, after that tick's packets, so a caller frame never waits for the pass to end."""
    clock, t, loop = env
    passes: list[Callable[[], None]] = []
    clock.received.schedule = passes.append  # the end of the pass never comes in this test
    stream = Stream(t)
    handled: list[tuple[int, float]] = []
    stream.on_tick_hook = lambda: handled.append((-1, t.now))  # the tick's own work comes first
    clock.register(stream)
    decoder = FrameDecoder("G722", "pcm")
    clock.received.stage(decoder, Encoder24k("G722").encode(bytes(960)), lambda ms: handled.append((1, t.now)))
    assert handled == [] and len(passes) == 1
    loop.run_until(t.now + 0.021)
    assert [kind for kind, _ in handled[:2]] == [-1, 1] and handled[0][1] == handled[1][1]
    assert len(clock.received) == 0 and (clock.received.frames, clock.received.runs) == (1, 1)
