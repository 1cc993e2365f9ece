"""Keys as tones in the audio (sipagent.media.dtmf_tones): each key's two frequencies at their levels, whole
20 ms frames, a pause after each key, through every codec the call may use."""

from __future__ import annotations

import numpy as np
import pytest

from sipagent.errors import RtpError
from sipagent.media.dtmf_tones import FREQUENCIES, PAUSE_TICKS, ToneSender, tone
from sipagent.media.kernel import Decoder24k, Encoder24k

RATE = 24_000
ZERO_DBM0_RMS = 32767 * 10 ** (-3.14 / 20) / np.sqrt(2)  # a sine at 0 dBm0 in G.711, as 16-bit PCM


def spectrum(pcm: bytes, rate: int = RATE) -> tuple[np.ndarray, np.ndarray]:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    window = np.hanning(len(x))
    magnitude = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()  # a sine's amplitude at its bin
    return np.fft.rfftfreq(len(x), 1 / rate), magnitude


def peaks(pcm: bytes, rate: int = RATE) -> list[tuple[float, float]]:
    """The two strongest spectral peaks: (frequency, amplitude), lowest frequency first."""
    freqs, magnitude = spectrum(pcm, rate)
    local = (magnitude[1:-1] > magnitude[:-2]) & (magnitude[1:-1] >= magnitude[2:])
    idx = np.nonzero(local)[0] + 1
    top = sorted(idx[np.argsort(magnitude[idx])[-2:]])
    return [(float(freqs[i]), float(magnitude[i])) for i in top]


def amplitude_at(pcm: bytes, frequency: float, rate: int = RATE) -> float:
    """A sine's amplitude at exactly ``frequency`` (one windowed DFT bin there: no scalloping loss)."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    window = np.hanning(len(x))
    basis = np.exp(-2j * np.pi * frequency * np.arange(len(x)) / rate)
    return float(np.abs(np.sum(x * window * basis)) * 2 / window.sum())


def dbm0(amplitude: float) -> float:
    return float(20 * np.log10(amplitude / np.sqrt(2) / ZERO_DBM0_RMS))


@pytest.mark.parametrize("digit", list(FREQUENCIES))
def test_each_key_is_its_row_and_column_at_their_levels(digit: str) -> None:
    pcm = tone(digit, 200)
    assert len(pcm) == 200 * RATE // 1000 * 2
    (low, low_amp), (high, _) = peaks(pcm)
    row, column = FREQUENCIES[digit]
    assert abs(low - row) <= 6 and abs(high - column) <= 6  # the FFT's bins are 5 Hz apart
    assert -7.2 < dbm0(amplitude_at(pcm, row)) < -6.8 and -5.2 < dbm0(amplitude_at(pcm, column)) < -4.8
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    assert np.abs(x).max() < 32767  # both at their peak together: no clipping
    # Everything else is far below the tones (the ramps keep the edges from splattering).
    freqs, magnitude = spectrum(pcm)
    elsewhere = (np.abs(freqs - row) > 40) & (np.abs(freqs - column) > 40)
    assert magnitude[elsewhere].max() < low_amp / 100


def test_keys_come_out_a_frame_a_tick_with_a_pause_after_each() -> None:
    sender = ToneSender()
    assert not sender.busy and sender.next_frame() is None
    sender.queue("1", 50)  # rounded up to three whole frames
    sender.queue("1", 40)
    frames: list[bytes] = []
    while (frame := sender.next_frame()) is not None:
        frames.append(frame)
    assert not sender.busy
    assert all(len(f) == 960 for f in frames)
    loud = [bool(np.frombuffer(f, "<i2").any()) for f in frames]
    # Two presses of one key, heard as two: each followed by 60 ms of silence.
    assert loud == [True] * 3 + [False] * PAUSE_TICKS + [True] * 2 + [False] * PAUSE_TICKS
    assert b"".join(frames[:3]) == tone("1", 60)


def test_ticks_the_clock_skipped_are_skipped_in_the_key() -> None:
    sender = ToneSender()
    sender.queue("9", 100)
    first = sender.next_frame()
    third = sender.next_frame(elapsed=2)  # one tick lost: the key still ends on time
    whole = tone("9", 100)
    assert first == whole[:960] and third == whole[1920:2880]
    rest = []
    while (frame := sender.next_frame()) is not None:
        rest.append(frame)
    assert len(rest) == 2 + PAUSE_TICKS


def test_a_bad_key_or_length_is_refused() -> None:
    sender = ToneSender()
    for digit in ("x", "12", ""):
        with pytest.raises(RtpError, match="not a DTMF digit"):
            sender.queue(digit)
    for ms in (20, 6000):
        with pytest.raises(RtpError, match="lasts 40 to 5000 ms"):
            sender.queue("5", ms)
    assert not sender.busy


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_the_tones_survive_the_call_codec(codec: str) -> None:
    """Encoded as the endpoint does (the call's own encoder, 20 ms at a time) and decoded at the far end."""
    encoder, decoder = Encoder24k(codec), Decoder24k(codec)
    pcm = tone("#", 200)
    heard = b"".join(decoder.decode(encoder.encode(pcm[i:i + 960])) for i in range(0, len(pcm), 960))
    steady = heard[960 * 2:]  # past the codec's delay
    (low, _), (high, _) = peaks(steady)
    assert abs(low - 941) <= 8 and abs(high - 1477) <= 8
    assert -8 < dbm0(amplitude_at(steady, 941)) < -6 and -6 < dbm0(amplitude_at(steady, 1477)) < -4
