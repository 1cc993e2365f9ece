"""Answering-machine detection on real synthesized speech (espeak-ng), sent through G.711 as a phone line
would: a person's "Hello?" and a voicemail greeting with its beep."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sipagent.media.amd import AmdEvent, AnsweringMachineDetector
from sipagent.media.kernel import ulaw_decode, ulaw_encode

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox")
RATE = 8000


def speech(text: str, tmp: Path) -> bytes:
    """``text`` spoken by espeak-ng, as 8 kHz PCM16 after a μ-law round trip."""
    wav, raw = tmp / "speech.wav", tmp / "speech.raw"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=30)
    subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed", "-t", "raw", str(raw)],
                   check=True, timeout=30)
    pcm = raw.read_bytes()
    return ulaw_decode(ulaw_encode(pcm[: len(pcm) // 320 * 320]))


def silence(seconds: float) -> bytes:
    return ulaw_decode(b"\xff" * int(seconds * RATE))


def beep(seconds: float, hz: float = 1000.0) -> bytes:
    pcm = (8000 * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype("<i2").tobytes()
    return ulaw_decode(ulaw_encode(pcm))


def detect(pcm: bytes) -> list[AmdEvent]:
    detector = AnsweringMachineDetector(sample_rate=RATE)
    events: list[AmdEvent] = []
    for i in range(0, len(pcm) - 319, 320):
        events += detector.feed(pcm[i : i + 320], (i // 320 + 1) * 0.02)
    return events


@pytest.mark.parametrize("greeting", ["Hello?", "Hello, Ada speaking."])
def test_a_person_answering(greeting: str, tmp_path: Path) -> None:
    said = speech(greeting, tmp_path)
    events = detect(silence(0.4) + said + silence(3.0))
    assert [event.kind for event in events] == ["human"]
    assert events[0].at < 0.4 + len(said) / 2 / RATE + 1.0


def test_a_voicemail_greeting_and_its_beep(tmp_path: Path) -> None:
    greeting = speech("Hi, you have reached Ada Lovelace. I can't take your call right now. "
                      "Please leave a message after the tone.", tmp_path)
    spoken_s = len(greeting) / 2 / RATE
    events = detect(silence(0.3) + greeting + silence(0.5) + beep(0.5) + silence(2.0))
    assert [event.kind for event in events] == ["machine", "beep", "message"]
    assert events[0].at == pytest.approx(0.3 + 3.5, abs=0.3)  # decided while the greeting goes on
    assert events[1].at == pytest.approx(0.3 + spoken_s + 0.5, abs=0.05)
    assert events[2].at == pytest.approx(0.3 + spoken_s + 1.0, abs=0.05)  # the message starts as the beep ends
