"""Answering-machine detection with synthesized audio: a voice is a drifting harmonic series with noise,
shaped into syllables; a beep is one steady sine; a line is quiet noise."""

from __future__ import annotations

import numpy as np
import pytest

from sipagent.media.amd import AmdEvent, AmdSettings, AnsweringMachineDetector

FRAME_S = 0.02


def voice(seconds: float, rate: int, seed: int = 1, f0: float = 130.0) -> np.ndarray:
    """Speech-like: a glottal pitch that wanders (harmonics up to 3.4 kHz, falling off), breath noise, and
    4 syllables a second, so the level rises and falls like words do but never drops to silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 1.3 * t) + 0.05 * np.sin(2 * np.pi * 5.1 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = sum(np.sin(k * phase) / k ** 0.7 for k in range(1, 26) if k * f0 < 3400)
    wave = wave + 0.4 * rng.standard_normal(t.size)
    syllables = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * 2.0 * t + rng.uniform(0, np.pi)))
    out: np.ndarray = wave * syllables
    return out / np.abs(out).max() * 8000


def tone(seconds: float, hz: float, rate: int, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    out: np.ndarray = amplitude * np.sin(2 * np.pi * hz * t)
    return out


def quiet(seconds: float, rate: int, seed: int = 2) -> np.ndarray:
    """Line noise at about -60 dBFS: not silence, and not voice."""
    out: np.ndarray = 30.0 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    return out


def run(audio: np.ndarray, rate: int = 8000, settings: AmdSettings | None = None) -> tuple[
        list[AmdEvent], AnsweringMachineDetector]:
    detector = AnsweringMachineDetector(settings, rate)
    pcm = np.clip(audio, -32768, 32767).astype("<i2").tobytes()
    step = int(rate * FRAME_S) * 2
    events: list[AmdEvent] = []
    for i in range(0, len(pcm) - step + 1, step):
        events += detector.feed(pcm[i : i + step], (i // step + 1) * FRAME_S)
    return events, detector


def kinds(events: list[AmdEvent]) -> list[str]:
    return [event.kind for event in events]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_short_hello_then_silence_is_a_person(rate: int) -> None:
    events, detector = run(np.concatenate([quiet(0.5, rate), voice(0.7, rate), quiet(3.0, rate)]), rate)
    assert kinds(events) == ["human"]
    assert 0.5 + 0.7 + 0.8 - 0.05 <= events[0].at <= 0.5 + 0.7 + 0.8 + 0.1
    assert detector.done and detector.beep_at is None


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_long_greeting_with_short_pauses_is_a_machine(rate: int) -> None:
    # "Hi, you've reached Ada Lovelace. [0.3 s] I can't take your call right now. [0.3 s] Please leave…"
    parts = []
    for i in range(4):
        parts += [voice(1.2, rate, seed=i), quiet(0.3, rate, seed=10 + i)]
    events, detector = run(np.concatenate([quiet(0.3, rate), *parts, quiet(3.0, rate)]), rate)
    assert kinds(events)[0] == "machine"
    assert 0.3 + 3.5 <= events[0].at <= 0.3 + 3.5 + 0.1
    assert "greeting longer than 3.5 s" in events[0].reason
    # no beep: the message goes once the greeting has ended and 1.5 s of silence followed it
    assert kinds(events) == ["machine", "message"]
    assert events[1].at == pytest.approx(0.3 + 4 * 1.5 - 0.3 + 1.5, abs=0.05)
    assert detector.done


@pytest.mark.parametrize("hz", [440.0, 1000.0, 1400.0, 1950.0])
def test_a_beep_after_a_greeting_marks_a_machine_and_when_to_speak(hz: float) -> None:
    audio = np.concatenate([voice(2.5, 8000), quiet(0.5, 8000), tone(0.4, hz, 8000), quiet(2.0, 8000)])
    events, detector = run(audio)
    assert kinds(events) == ["machine", "beep", "message"]
    assert events[0].reason == "beep"
    assert events[1].at == pytest.approx(3.0, abs=0.03)  # the beep started at 3.0 s
    assert events[2].at == pytest.approx(3.4, abs=0.03)  # and ended at 3.4 s: speak now
    assert detector.beep_at == events[1].at and detector.message_at == events[2].at
    assert f"{hz:.0f} Hz" in events[1].reason or abs(float(events[1].reason.split()[0]) - hz) <= 25


def test_a_beep_after_a_long_greeting_still_sets_the_message_moment() -> None:
    audio = np.concatenate([voice(4.5, 8000), quiet(0.6, 8000), tone(0.5, 1000.0, 8000), quiet(1.0, 8000)])
    events, _ = run(audio)
    assert kinds(events) == ["machine", "beep", "message"]
    assert events[2].at == pytest.approx(5.6, abs=0.03)


def test_a_tone_shorter_than_the_minimum_is_no_beep() -> None:
    audio = np.concatenate([quiet(0.3, 8000), tone(0.1, 1000.0, 8000), quiet(7.0, 8000)])
    events, _ = run(audio)
    assert kinds(events) == ["unknown"]  # a click of tone, then silence: nothing to decide on


def test_a_steady_vowel_is_not_a_beep() -> None:
    # "Hellooooo?" held at one pitch: harmonic and steady, but its energy is spread over the partials.
    rate = 8000
    t = np.arange(int(0.9 * rate)) / rate
    vowel = sum(np.sin(2 * np.pi * k * 180.0 * t) * (0.9 ** k) for k in range(1, 15)) * 4000
    events, _ = run(np.concatenate([vowel, quiet(2.0, rate)]), rate)
    assert kinds(events) == ["human"]


def test_beep_detection_can_be_turned_off() -> None:
    audio = np.concatenate([voice(2.5, 8000), quiet(0.5, 8000), tone(0.4, 1000.0, 8000), quiet(4.0, 8000)])
    events, _ = run(audio, settings=AmdSettings(beep=False))
    assert "beep" not in kinds(events) and kinds(events)[0] in ("human", "unknown")


def test_silence_until_the_deadline_is_unknown() -> None:
    events, detector = run(quiet(7.0, 8000), settings=AmdSettings(timeout_s=5.0))
    assert kinds(events) == ["unknown"] and events[0].at == pytest.approx(5.0, abs=0.021)
    assert detector.done
    assert detector.feed(b"\x00\x10" * 160, 7.1) == []  # done: nothing more


def test_greeting_max_is_the_operators() -> None:
    audio = np.concatenate([voice(2.5, 8000), quiet(3.0, 8000)])
    assert kinds(run(audio, settings=AmdSettings(greeting_max_s=2.0))[0])[0] == "machine"
    assert kinds(run(audio, settings=AmdSettings(greeting_max_s=3.0))[0]) == ["human"]


def test_a_rate_other_than_8_or_16_khz_is_refused() -> None:
    with pytest.raises(ValueError):
        AnsweringMachineDetector(sample_rate=24000)
