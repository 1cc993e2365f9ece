"""The echo-aware VAD's onset (``loud_ms``): what the barge-in pause acts on, tens of ms into speech."""

from __future__ import annotations

import numpy as np

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
