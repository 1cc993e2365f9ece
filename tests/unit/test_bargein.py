"""Two-stage barge-in: the policy alone, then policy + echo-aware VAD + playout queue on a fake 20 ms clock."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest

from sipagent.bridge.bargein import BargeIn, BargeInPolicy, Decision, Pause, Resume, Trigger
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
    echo_ms: int = 0
    agent_db: float = -12.0
    vad: EchoAwareVad = field(default_factory=lambda: EchoAwareVad(VadSettings(threshold_db=-35, min_speech_ms=200)))
    queue: PlayoutQueue = field(default_factory=PlayoutQueue)
    now: float = 0.0
    sent: list[int] = field(default_factory=list)  # index of each agent audio frame put on the wire, -1 = silence
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._echo: deque[float] = deque([SILENCE_DB] * (self.echo_ms // 20))
        self.queue.push(b"".join(bytes([i % 250]) * 160 for i in range(200)))  # 4 s of agent speech

    def tick(self, caller_db: float | None = None) -> None:
        frame, audio = self.queue.pop_frame()
        self.sent.append(frame[0] if audio else -1)
        level = self.agent_db if audio else SILENCE_DB
        self.vad.agent_frame(level)
        self._echo.append(level)
        returned = self._echo.popleft() + self.echo_db if self.echo_db is not None else SILENCE_DB
        db = caller_db if caller_db is not None else returned
        speech = self.vad.caller_frame(tone(db, len(self.sent) * FRAME) if db > -90 else bytes(FRAME * 2))
        decision = self.policy.caller_frame(self.now, self.vad.loud_ms, speech, self.queue.is_playing)
        if isinstance(decision, Pause):
            self.queue.pause()
        elif isinstance(decision, Resume):
            self.queue.resume()
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


@pytest.mark.parametrize("delay_ms", [40, 120, 200])
def test_echo_at_minus_20_db_never_pauses(delay_ms: int) -> None:
    line = Line(BargeInPolicy("local", 0, pause_after_ms=20, resume_after_ms=300), echo_db=-20, echo_ms=delay_ms)
    for i in range(190):
        line.agent_db = -12.0 if (i // 7) % 3 else -30.0  # syllables and soft sounds
        line.tick()
    assert line.decisions == [] and line.policy.pauses == 0
    assert [i for i in line.sent if i >= 0] == list(range(190))


def test_deltas_of_an_interrupted_item_are_not_played_again() -> None:
    conversation = Conversation()
    conversation.agent_audio("item-1", 160 * 50)  # 1 s queued
    assert conversation.interrupted(played_ms=400) == ("item-1", 400)
    # The backend's deltas already in flight when the cancel left: the bridge drops them, so a second
    # interruption cannot truncate item-1 again at a position the caller never heard.
    assert conversation.cut_item == "item-1"
    conversation.agent_audio("item-2", 160 * 10)
    assert conversation.interrupted(played_ms=500) == ("item-2", 100)
