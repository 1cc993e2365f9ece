"""Keys heard in the caller's audio (sipagent.media.dtmf_detect): every key, through every codec, at any phase
within the frames, down to −30 dBm0 and 40 ms; two presses of one key are two; speech, chords and noise are
never a key (talk-off)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sipagent.media.dtmf_detect import ToneDetector
from sipagent.media.dtmf_tones import FREQUENCIES, tone
from sipagent.media.kernel import Decoder24k, Encoder24k, mean_square

FRAME = 960  # bytes: 20 ms of 24 kHz PCM16


def silence(ms: int) -> bytes:
    return bytes(ms * 48)


def keys_in(pcm: bytes) -> list[tuple[str, int]]:
    detector = ToneDetector()
    found = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        frame = pcm[i:i + FRAME]
        key = detector.push(frame, mean_square(frame))
        if key:
            found.append(key)
    if (key := detector.push(bytes(FRAME), 0.0)) is not None:  # a key still on at the end ends with a quiet frame
        found.append(key)
    return found


def scaled(pcm: bytes, db: float) -> bytes:
    x = np.frombuffer(pcm, "<i2").astype(np.float64) * 10 ** (db / 20)
    return np.round(x).astype("<i2").tobytes()


def through(codec: str, pcm: bytes) -> bytes:
    encoder, decoder = Encoder24k(codec), Decoder24k(codec)
    return b"".join(decoder.decode(encoder.encode(pcm[i:i + FRAME])) for i in range(0, len(pcm), FRAME))


@pytest.mark.parametrize("digit", list(FREQUENCIES))
def test_every_key_is_heard_once_with_its_length(digit: str) -> None:
    assert keys_in(silence(40) + tone(digit, 100) + silence(60)) == [(digit, 100)]


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
@pytest.mark.parametrize("offset_ms", [0, 7, 13])
def test_keys_through_a_codec_at_any_phase(codec: str, offset_ms: int) -> None:
    """A phone's key starts anywhere in our frames: the frames it half fills are not counted, the rest are."""
    pcm = silence(20 + offset_ms) + tone("5", 120) + silence(60) + tone("#", 120) + silence(100)
    heard = keys_in(through(codec, pcm))
    assert [key for key, _ in heard] == ["5", "#"], heard
    assert all(100 <= ms <= 120 for _, ms in heard), heard


def test_the_quietest_and_shortest_keys() -> None:
    assert keys_in(silence(20) + scaled(tone("7", 100), -22) + silence(60)) == [("7", 100)]  # ≈ −29 / −27 dBm0
    assert keys_in(silence(20) + scaled(tone("7", 100), -26) + silence(60)) == []  # ≈ −33 dBm0: line noise
    assert keys_in(silence(20) + tone("7", 40) + silence(60)) == [("7", 40)]  # Q.24's shortest, frame-aligned
    assert keys_in(silence(20) + tone("7", 20) + silence(60)) == []  # a click, not a key


def test_two_presses_of_one_key_are_two() -> None:
    assert keys_in(tone("1", 60) + silence(40) + tone("1", 60) + silence(40)) == [("1", 60), ("1", 60)]


def test_a_key_over_the_agent_speaking_at_a_lower_level_is_heard() -> None:
    """The caller presses a key while the agent's echo comes back ≈ 20 dB down: the key still stands out."""
    rng = np.random.default_rng(7)
    n = 24000 * 300 // 1000
    t = np.arange(n) / 24000
    voice = sum(np.sin(2 * np.pi * 140 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12)) * 900
    key = np.frombuffer(silence(40) + tone("9", 200) + silence(60), "<i2").astype(np.float64)
    mixed = np.round(key + voice[:len(key)]).astype("<i2").tobytes()
    assert keys_in(mixed) == [("9", 200)]


def test_chords_and_noise_are_no_key() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(24000 * 4) / 24000
    # Two sines at keypad frequencies each, but a third tone with them (a chord, a ring-back with harmonics).
    chord = 8000 * (np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1209 * t) + np.sin(2 * np.pi * 440 * t))
    noise = rng.normal(0, 6000, len(t))
    for signal in (chord, noise, chord / 3 + noise):
        pcm = np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()
        assert keys_in(pcm) == []


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")
@pytest.mark.parametrize("voice", ["en-us", "en-gb+f3", "de"])
def test_speech_is_no_key(voice: str) -> None:
    from sipagent.realtime.local.tts import Synthesizer

    speech = Synthesizer(voice, 170).synthesize(
        "Hello, thank you for calling. Please tell me your order number, or press one for sales, two for "
        "support, and nine to hear these options again. Seven seven two one. Is there anything else?")
    assert len(speech) > 24000 * 2 * 5
    for pcm in (speech, through("PCMU", speech), scaled(speech, 10)):
        assert keys_in(pcm) == []
