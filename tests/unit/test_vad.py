"""The echo-aware VAD's onset (``loud_ms``): what the barge-in pause acts on, tens of ms into speech."""

from __future__ import annotations

import numpy as np

from sipagent.media.kernel import mean_square
from sipagent.media.vad import SILENCE_DB, EchoAwareVad, VadSettings

FRAME = 480


def tone(db: float, phase: int = 0) -> bytes:
    t = (np.arange(FRAME) + phase) / 24000
    return (32768 * 10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def onsets(vad: EchoAwareVad, frames: list[tuple[float, float]]) -> list[int]:
    """frames: (agent level, caller level); returns loud_ms after each caller frame."""
    out = []
    for i, (agent, caller) in enumerate(frames):
        vad.agent_frame(agent)
        vad.caller_frame(tone(caller, i * FRAME) if caller > -90 else bytes(FRAME * 2))
        out.append(vad.loud_ms)
    return out


def test_loud_ms_is_the_current_run_of_loud_frames() -> None:
    vad = EchoAwareVad(VadSettings(threshold_db=-35, min_speech_ms=200))
    quiet, loud = (SILENCE_DB, -60.0), (SILENCE_DB, -20.0)
    assert onsets(vad, [quiet, loud, loud, quiet, loud]) == [0, 20, 40, 0, 20]


def test_onset_is_echo_aware() -> None:
    vad = EchoAwareVad(VadSettings(threshold_db=-45, min_speech_ms=200))
    # The agent at -12 dBFS comes back 20 dB down: never an onset, however long it lasts.
    assert set(onsets(vad, [(-12.0, -32.0)] * 50)) == {0}
    # A caller talking over it at -18 dBFS is an onset on its first frame.
    assert onsets(vad, [(-12.0, -18.0)] * 2) == [20, 40]
    # The agent's echo is remembered for echo_window_ms after it stops (the line delay): no onset on the
    # echo of its last words once it went quiet, but the floor comes back after the window.
    vad = EchoAwareVad(VadSettings(threshold_db=-45, min_speech_ms=200, echo_window_ms=300))
    onsets(vad, [(-12.0, -96.0)] * 20)
    assert onsets(vad, [(SILENCE_DB, -32.0)] * 14) == [0] * 14
    assert onsets(vad, [(SILENCE_DB, -32.0)] * 2) == [20, 40]


def test_threshold_and_agent_activity_follow_the_loudest_level_of_the_window() -> None:
    """They are kept up to date per agent frame (not recomputed per caller frame): check them against
    their definition over the last echo_window_ms of agent levels, through rises, plateaus and the
    loudest frame leaving the window."""
    settings = VadSettings(threshold_db=-40, echo_margin_db=15, echo_window_ms=300)
    vad = EchoAwareVad(settings)
    rng = np.random.default_rng(2)
    levels = [SILENCE_DB] * 15
    script = [*rng.choice([SILENCE_DB, -60.0, -30.0, -12.0, -12.0, -5.0], 400), *[-20.0] * 20, *[SILENCE_DB] * 20]
    for level in script:
        vad.agent_frame(float(level))
        levels = [*levels[1:], float(level)]
        loudest = max(levels)
        assert vad.threshold_db() == max(-40.0, loudest - 15.0)
        assert vad.agent_active == (loudest > -40.0)
    assert vad.threshold_db() == -40.0 and not vad.agent_active


def test_caller_mean_square_decides_as_caller_frame() -> None:
    by_pcm, by_level = EchoAwareVad(), EchoAwareVad()
    for i, (agent, caller) in enumerate([(-12.0, -32.0)] * 5 + [(-12.0, -18.0)] * 15 + [(SILENCE_DB, -50.0)] * 20):
        pcm = tone(caller, i * FRAME)
        for vad in (by_pcm, by_level):
            vad.agent_frame(agent)
        assert by_pcm.caller_frame(pcm) == by_level.caller_mean_square(mean_square(pcm))
        assert (by_pcm.loud_ms, by_pcm.echo_only, by_pcm.last_level_db, by_pcm.speaking) == (
            by_level.loud_ms, by_level.echo_only, by_level.last_level_db, by_level.speaking)


def test_a_gap_in_the_stream_teaches_nothing_of_the_echo() -> None:
    """The agent at -12 dBFS comes back 20 dB down; then 20 frames of the caller's stream are missing (lost,
    or a stall). Concealed as silence, they taught the detector that the echo had gone (a decibel a frame),
    and the echo's return was an onset: barge-in ducked the agent on its own voice. As a gap they teach
    nothing, and the echo is echo again."""
    settings = VadSettings(threshold_db=-45, min_speech_ms=200)
    as_silence, as_gap = EchoAwareVad(settings), EchoAwareVad(settings)
    for vad in (as_silence, as_gap):
        assert set(onsets(vad, [(-12.0, -32.0)] * 50)) == {0}
    learned = as_gap.erl_db
    for _ in range(20):
        for vad in (as_silence, as_gap):
            vad.agent_frame(-12.0)
        as_silence.caller_mean_square(0.0)
        as_gap.caller_gap()
    assert as_gap.erl_db == learned and as_gap.last_level_db == SILENCE_DB and as_gap.loud_ms == 0
    assert as_silence.erl_db > learned + 15
    assert as_gap.onset_ms == 0 and set(onsets(as_gap, [(-12.0, -32.0)] * 10)) == {0}
    as_silence.caller_mean_square(mean_square(tone(-32.0)))
    assert as_silence.onset_ms == 20  # what the gap taken as silence did


def test_a_gap_ends_an_onset_run_and_a_speech_window_as_silence_does() -> None:
    settings = VadSettings(threshold_db=-45, min_speech_ms=200)
    vad = EchoAwareVad(settings)
    assert onsets(vad, [(SILENCE_DB, -20.0)] * 12)[-1] == 240 and vad.speaking
    vad.caller_gap()
    assert (vad.onset_ms, vad.loud_ms, vad.recent_speech_ms) == (0, 0, 180)  # one frame of ten is quiet
    for _ in range(10):
        vad.caller_gap()
    assert vad.recent_speech_ms == 0 and not vad.speaking
