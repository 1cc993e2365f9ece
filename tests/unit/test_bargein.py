"""Two-stage barge-in: the policy alone, then policy + echo-aware VAD + playout queue on a fake 20 ms clock.

The first stage is a pause (the queue held, silent) or a duck (the queue plays on, turned down)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest

from sipagent.bridge.bargein import BargeIn, BargeInPolicy, Decision, Duck, Pause, Resume, Trigger, Unduck
from sipagent.bridge.conversation import Conversation
from sipagent.media.playout import PlayoutQueue
from sipagent.media.vad import SILENCE_DB, EchoAwareVad, VadSettings

FRAME = 480  # 20 ms at 24 kHz


def tone(db: float, phase: int = 0) -> bytes:
    t = (np.arange(FRAME) + phase) / 24000
    return (32768 * 10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


# ------------------------------------------------------------------ the policy alone


def test_onset_pauses_then_confirmed_speech_barges_in() -> None:
    policy = BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300)
    assert policy.caller_frame(1.00, loud_ms=20, speech=False, agent_playing=True) == Pause(1.00)
    assert policy.paused
    assert policy.caller_frame(1.02, loud_ms=40, speech=False, agent_playing=True) is None
    decision = policy.caller_frame(1.10, loud_ms=20, speech=True, agent_playing=True)
    assert decision == BargeIn(Trigger.LOCAL_VAD, 1.10, paused_at=1.00)
    assert not policy.paused and (policy.pauses, policy.resumes) == (1, 0)


def test_unconfirmed_pause_resumes_after_the_caller_is_quiet() -> None:
    policy = BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300)
    assert isinstance(policy.caller_frame(2.00, 20, False, True), Pause)
    assert policy.caller_frame(2.04, 60, False, True) is None  # the cough goes on: still paused
    assert policy.caller_frame(2.06, 0, False, True) is None
    assert policy.caller_frame(2.34, 0, False, True) is None  # quiet for 280 ms
    assert policy.caller_frame(2.36, 0, False, True) == Resume(2.36, pytest.approx(0.36))
    assert not policy.paused and (policy.pauses, policy.resumes) == (1, 1)


def test_no_pause_while_silent_protected_off_or_disabled() -> None:
    policy = BargeInPolicy("local", protect_greeting_ms=1000, pause_after_ms=20)
    assert policy.caller_frame(0.5, 200, False, agent_playing=False) is None  # nothing to pause
    policy.greeting_started(1.0)
    assert policy.caller_frame(1.5, 200, True, agent_playing=True) is None  # the greeting is protected
    assert isinstance(policy.caller_frame(2.1, 40, False, agent_playing=True), Pause)
    assert BargeInPolicy("off", 0, pause_after_ms=20).caller_frame(1.0, 200, True, True) is None
    # pause_after_ms 0: no first stage, confirmed speech cuts the agent off directly (the old behaviour).
    plain = BargeInPolicy("local", 0, pause_after_ms=0)
    assert plain.caller_frame(1.0, 180, False, True) is None
    assert plain.caller_frame(1.02, 200, True, True) == BargeIn(Trigger.LOCAL_VAD, 1.02)
    with pytest.raises(ValueError):
        BargeInPolicy("local", 0, pause_after_ms=-20)


def test_server_mode_pauses_locally_and_the_server_confirms() -> None:
    policy = BargeInPolicy("server", 0, pause_after_ms=20, resume_after_ms=300)
    assert isinstance(policy.caller_frame(3.0, 20, False, True), Pause)
    # Our VAD confirming speech is not enough in server mode, but the caller is still loud: stay paused.
    assert policy.caller_frame(3.2, 100, True, True) is None and policy.paused
    decision = policy.server_speech_started(3.4, agent_playing=True, caller_speaking=True)
    assert decision == BargeIn(Trigger.SERVER_VAD, 3.4, paused_at=3.0)
    # The server's echo protection is unchanged: speech_started with only echo heard locally is ignored.
    assert policy.server_speech_started(9.0, agent_playing=True, caller_speaking=False) is None
    assert policy.ignored_as_echo == 1


def test_flush_elsewhere_ends_the_pause_without_counting_it() -> None:
    policy = BargeInPolicy("local", 0, pause_after_ms=20)
    assert isinstance(policy.caller_frame(1.0, 20, False, True), Pause)
    policy.flushed()  # e.g. a reconnect dropped the queue; new audio must not stay paused
    assert not policy.paused
    assert isinstance(policy.caller_frame(2.0, 20, False, True), Pause)
    assert policy.caller_frame(2.02, 0, False, agent_playing=False) is None and not policy.paused
    assert policy.resumes == 0


def test_duck_ends_soon_after_a_burst_and_later_after_a_longer_run() -> None:
    policy = BargeInPolicy("local", 0, pause_after_ms=20, stage1="duck", unduck_after_ms=40, resume_after_ms=300)
    assert policy.caller_frame(1.00, 20, False, True) == Duck(1.00)
    assert policy.caller_frame(1.04, 60, False, True) is None  # a 60 ms burst
    assert policy.caller_frame(1.06, 0, False, True) is None  # quiet for 20 ms
    assert policy.caller_frame(1.08, 0, False, True) == Unduck(1.08, pytest.approx(0.08))
    assert (policy.ducks, policy.unducks, policy.pauses, policy.false_alarms) == (1, 1, 0, 1)
    # A burst followed by soft sound (the gap between two syllables) is not over yet.
    assert policy.caller_frame(1.50, 20, False, True) == Duck(1.50)
    assert policy.caller_frame(1.52, 0, False, True, faint=True) is None
    assert policy.caller_frame(1.54, 0, False, True, faint=True) is None
    assert policy.caller_frame(1.56, 0, False, True) is None
    assert isinstance(policy.caller_frame(1.58, 0, False, True), Unduck)
    # Longer than a burst (120 ms of loud audio): a gap between words does not bring the agent back.
    assert policy.caller_frame(2.00, 20, False, True) == Duck(2.00)
    for i in range(1, 6):
        assert policy.caller_frame(2.00 + i * 0.02, 20 * (i + 1), False, True) is None
    assert policy.caller_frame(2.20, 0, False, True) is None  # 100 ms of quiet
    assert policy.caller_frame(2.38, 0, False, True) is None
    assert isinstance(policy.caller_frame(2.40, 0, False, True), Unduck)  # 300 ms of quiet
    # Confirmed while ducked: the barge-in says since when the agent was turned down.
    assert policy.caller_frame(3.00, 20, False, True) == Duck(3.00)
    assert policy.caller_frame(3.08, 100, True, True) == BargeIn(Trigger.LOCAL_VAD, 3.08, paused_at=3.00)
    assert not policy.paused
    # The queue ran dry while ducked (the model's audio comes in real time): the duck goes on while the caller
    # talks, so the next audio comes turned down, and ends as usual once the caller is quiet.
    assert policy.caller_frame(4.00, 20, False, True) == Duck(4.00)
    assert policy.caller_frame(4.02, 40, False, agent_playing=False) is None and policy.paused
    assert policy.caller_frame(4.04, 60, False, agent_playing=True) is None and policy.paused
    assert policy.caller_frame(4.06, 0, False, agent_playing=False) is None
    assert policy.caller_frame(4.08, 0, False, agent_playing=False) == Unduck(4.08, pytest.approx(0.08))
    with pytest.raises(ValueError):
        BargeInPolicy("local", 0, stage1="mute")


def test_barge_in_policy_modes() -> None:
    policy = BargeInPolicy("local", protect_greeting_ms=1000)
    policy.greeting_started(10.0)
    assert policy.caller_frame(10.5, 200, True, agent_playing=True) is None  # the greeting's first second
    decision = policy.caller_frame(11.2, 200, True, agent_playing=True)
    assert decision is not None and isinstance(decision, BargeIn) and decision.trigger is Trigger.LOCAL_VAD
    assert policy.caller_frame(12.0, 200, True, agent_playing=False) is None  # nothing to interrupt

    server = BargeInPolicy("server", protect_greeting_ms=0)
    # The server heard something, but our VAD heard only echo: the agent goes on.
    assert server.server_speech_started(5.0, agent_playing=True, caller_speaking=False) is None
    assert server.ignored_as_echo == 1
    decision = server.server_speech_started(6.0, agent_playing=True, caller_speaking=True)
    assert decision is not None and decision.trigger is Trigger.SERVER_VAD and decision.paused_at is None
    # Local speech just before the server's event also confirms it.
    assert server.caller_frame(7.0, 200, True, agent_playing=True) is None  # server mode: local alone does not cut
    assert server.server_speech_started(7.2, agent_playing=True, caller_speaking=False) is not None

    off = BargeInPolicy("off", protect_greeting_ms=0)
    assert off.server_speech_started(1.0, True, True) is None
    with pytest.raises(ValueError):
        BargeInPolicy("sometimes", 0)


# ------------------------------------------------------------------ the three together, on a fake clock


@dataclass
class Line:
    """One call's barge-in loop, ticked by hand: the agent's playout queue, the line (echo), our VAD."""

    policy: BargeInPolicy
    echo_db: float | None = None  # the line returns the agent this far down (None: no echo)
    duck_gain: float = 10 ** (-30 / 20)
    echo_ms: int = 0
    agent_db: float = -12.0
    vad: EchoAwareVad = field(default_factory=lambda: EchoAwareVad(VadSettings(threshold_db=-35, min_speech_ms=200)))
    queue: PlayoutQueue = field(default_factory=PlayoutQueue)
    now: float = 0.0
    sent: list[int] = field(default_factory=list)  # index of each agent audio frame put on the wire, -1 = silence
    ducked: list[bool] = field(default_factory=list)  # per frame sent: it went out turned down
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._echo: deque[float] = deque([SILENCE_DB] * (self.echo_ms // 20))
        self.queue.push(b"".join(bytes([i % 250]) * 160 for i in range(200)))  # 4 s of agent speech
        self.queue.shaper = lambda frame, start, end: frame  # keeps the frame's index; the gain is read below

    def tick(self, caller_db: float | None = None) -> None:
        frame, audio = self.queue.pop_frame()
        self.sent.append(frame[0] if audio else -1)
        self.ducked.append(audio and self.queue.gain < 1.0)
        level = self.agent_db if audio else SILENCE_DB
        if self.ducked[-1]:
            level += 20 * np.log10(self.duck_gain)  # the echo reference is what went out
        self.vad.agent_frame(level)
        self._echo.append(level)
        returned = self._echo.popleft() + self.echo_db if self.echo_db is not None else SILENCE_DB
        db = caller_db if caller_db is not None else returned
        speech = self.vad.caller_frame(tone(db, len(self.sent) * FRAME) if db > -90 else bytes(FRAME * 2))
        decision = self.policy.caller_frame(self.now, self.vad.onset_ms, speech, self.queue.is_playing,
                                            self.vad.faint)
        if isinstance(decision, Pause):
            self.queue.pause()
        elif isinstance(decision, Resume):
            self.queue.resume()
        elif isinstance(decision, Duck):
            self.queue.duck(self.duck_gain)
        elif isinstance(decision, Unduck):
            self.queue.unduck()
        elif isinstance(decision, BargeIn):
            self.queue.flush()
        if decision is not None:
            self.decisions.append(decision)
        self.now += 0.02


def test_cough_pauses_the_agent_and_resumes_where_it_stopped() -> None:
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300))
    for _ in range(25):
        line.tick()
    for _ in range(3):  # a 60 ms cough at the agent's level
        line.tick(caller_db=-14)
    for _ in range(30):
        line.tick()
    kinds = [type(d) for d in line.decisions]
    assert kinds == [Pause, Resume], line.decisions
    # The pause took effect on the very next frame: one frame of the cough overlapped agent audio.
    first_silent = line.sent.index(-1)
    assert first_silent == 26
    gap = line.sent[first_silent:].index(line.sent[first_silent - 1] + 1)
    assert 16 <= gap <= 18  # the cough (40 ms more) and 300 ms of quiet, in frames
    # Nothing was lost: the agent's frames went out in order, none skipped, none repeated.
    audio = [i for i in line.sent if i >= 0]
    assert audio == list(range(len(audio)))
    assert line.queue.played_ms == len(audio) * 20


def test_real_speech_pauses_at_once_and_is_confirmed() -> None:
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300))
    for _ in range(25):
        line.tick()
    for _ in range(12):
        line.tick(caller_db=-16)
    pause, barge = line.decisions
    assert isinstance(pause, Pause) and isinstance(barge, BargeIn)
    assert barge.paused_at == pause.at and barge.at - pause.at == pytest.approx(0.08)  # 5th loud frame
    assert line.sent[26:] == [-1] * 11  # no agent audio after the frame that overlapped the onset
    assert line.queue.played_ms == 26 * 20 and not line.queue.is_playing


@pytest.mark.parametrize("stage1", ["pause", "duck"])
@pytest.mark.parametrize("delay_ms", [40, 120, 200])
def test_echo_at_minus_20_db_never_pauses(delay_ms: int, stage1: str) -> None:
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300, stage1=stage1), echo_db=-20,
                echo_ms=delay_ms)
    for i in range(190):
        line.agent_db = -12.0 if (i // 7) % 3 else -30.0  # syllables and soft sounds
        if i in range(60, 80):
            line.agent_db = SILENCE_DB  # a pause between sentences: the onset learns nothing meanwhile
        line.tick()
    assert line.decisions == [] and line.policy.pauses == 0 and line.policy.ducks == 0
    assert [i for i in line.sent if i >= 0] == list(range(190)) and not any(line.ducked)
    assert line.vad.erl_db < 26  # what the onset learned: about the echo's 20 dB, not more


def test_cough_ducks_the_agent_for_at_most_120_ms_and_nothing_is_lost() -> None:
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300, stage1="duck",
                              unduck_after_ms=40))
    for _ in range(60):
        line.tick()
    for _ in range(3):  # a 60 ms cough at the agent's level
        line.tick(caller_db=-14)
    for _ in range(30):
        line.tick()
    assert [type(d) for d in line.decisions] == [Duck, Unduck], line.decisions
    # The audible cost: frames that went out turned down (none went out silent).
    ducked_ms = sum(line.ducked) * 20
    assert 0 < ducked_ms <= 120, ducked_ms
    assert line.ducked.index(True) == 61  # from the frame after the cough's first
    # Nothing lost: every frame of the agent went out once, in order, and played_ms counts them all.
    assert line.sent == list(range(len(line.sent)))
    assert line.queue.played_ms == len(line.sent) * 20 and line.queue.gain == 1.0


def test_speech_is_turned_down_within_50_ms_of_its_onset_and_confirmed() -> None:
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300, stage1="duck"))
    for _ in range(60):  # the agent talks over a quiet line: the onset learns there is no echo
        line.tick()
    # Speech starts softly, below the fixed echo margin (the agent's -12 dBFS - 15 dB = -27), then gets loud.
    for db in (-32, -30, -20, -16, -16, -16, -16, -16, -16, -16):
        line.tick(caller_db=db)
    duck, barge = line.decisions
    assert isinstance(duck, Duck) and isinstance(barge, BargeIn) and barge.paused_at == duck.at
    onset = 60
    stop = next(i for i, (idx, ducked) in enumerate(zip(line.sent, line.ducked, strict=True)) if ducked or idx < 0)
    assert (stop - onset) * 20 <= 50  # the next frame: the duck took effect on the frame after the onset
    assert (stop - onset) * 20 == 20
    assert all(d or idx < 0 for idx, d in zip(line.sent[stop:], line.ducked[stop:], strict=True))  # never loud again
    assert line.queue.played_ms == len([i for i in line.sent if i >= 0]) * 20 and not line.queue.is_playing


def test_soft_onset_waits_for_the_echo_margin_on_a_line_with_echo() -> None:
    # The same soft start on a line returning the agent 20 dB down: -32 and -30 dBFS could be echo (the
    # agent at -12, its echo at -32): the onset waits for the caller to pass the fixed margin (-27).
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300, stage1="duck"), echo_db=-20,
                echo_ms=120)
    for _ in range(60):
        line.tick()
    for db in (-32, -30, -20, -16, -16, -16, -16, -16, -16, -16):
        line.tick(caller_db=db)
    duck = line.decisions[0]
    assert isinstance(duck, Duck) and duck.at == pytest.approx(62 * 0.02)


def test_echo_that_appears_mid_call_ducks_at_most_once() -> None:
    # A clean line (the onset learns it may go down to the floor), then a speakerphone returns the agent
    # 18 dB down: the first echo run may duck, then the onset has learned the new echo.
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300, stage1="duck"))
    line.queue.push(b"".join(bytes([i]) * 160 for i in range(200, 250)))  # 5 s in all
    for _ in range(100):
        line.tick()
    assert line.vad.erl_db == 60.0  # learned: no echo at all
    line.echo_db, line._echo = -18.0, deque([SILENCE_DB] * 3)
    for i in range(150):
        line.agent_db = -12.0 if (i // 7) % 3 else -30.0
        line.tick()
    assert line.policy.ducks <= 1 and not any(isinstance(d, BargeIn) for d in line.decisions)
    assert [type(d) for d in line.decisions] in ([], [Duck, Unduck])
    assert line.sent == list(range(250))  # nothing lost


def test_deltas_of_an_interrupted_item_are_not_played_again() -> None:
    conversation = Conversation()
    conversation.agent_audio("item-1", 1000)  # 1 s queued
    assert conversation.interrupted(played_ms=400) == ("item-1", 400)
    # The backend's deltas already in flight when the cancel left: the bridge drops them, so a second
    # interruption cannot truncate item-1 again at a position the caller never heard.
    assert conversation.cut_item == "item-1"
    conversation.agent_audio("item-2", 200)
    assert conversation.interrupted(played_ms=500) == ("item-2", 100)
