"""G.722 (64 kbit/s) interoperability with two independent implementations.

References: the `g722` PyPI package (module G722, a C implementation) and Debian ffmpeg's `g722` codec.
Our encoder's codes decoded by them and their codes decoded by ours must reproduce a speech-like signal;
in practice all three agree bit for bit, which is asserted, and the codec SNR is measured and printed.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from sipagent.media import kernel

RATE = 16000
# SNR_NOTE: waveform SNR of 64 kbit/s G.722 on this signal is ~18.6 dB in all directions (the three
# implementations agree bit for bit, so this is the codec itself): the higher band gets only 2 bits per
# sample, which caps SNR during the fricatives. 15 dB leaves margin while still catching a broken band.
CODEC_DELAY = 22  # samples at 16 kHz: the two 24-tap QMFs (23) minus the pairing offset


def speech_like(seconds: float = 2.0, seed: int = 7) -> np.ndarray:
    """Voiced syllables (glottal pulses through three formant resonators, varying pitch) and fricatives."""
    from scipy import signal

    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(f0 / RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    voiced = pulses.copy()
    for freq, bw in ((700, 130), (1220, 70), (2600, 160)):
        r = np.exp(-np.pi * bw / RATE)
        voiced = signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / RATE), r * r], voiced)
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.6
    b, a = signal.butter(4, [3000, 6500], btype="band", fs=RATE)
    fricative = signal.lfilter(b, a, rng.standard_normal(n)) * (np.sin(2 * np.pi * 2.5 * t + 2.0) > 0.85)
    x = voiced / np.abs(voiced).max() * syllables + 0.15 * fricative
    return np.asarray(np.round(x / np.abs(x).max() * 16000), dtype="<i2")


def snr_db(ref: np.ndarray, out: np.ndarray, delay: int) -> float:
    r = ref[: len(ref) - delay].astype(float)
    y = out[delay : delay + len(r)].astype(float)
    return float(10 * np.log10(np.sum(r * r) / np.sum((r - y) ** 2)))


@pytest.fixture(scope="module")
def pcm() -> bytes:
    return speech_like().tobytes()


def pcm_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def test_encoder_and_decoder_match_g722_package(pcm: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    g722_mod = pytest.importorskip("G722")
    ours = kernel.G722Encoder().encode(pcm)
    theirs = g722_mod.G722(RATE, 64000).encode(pcm_array(pcm))
    assert len(ours) == len(pcm) // 4
    assert ours == theirs
    our_pcm = pcm_array(kernel.G722Decoder().decode(theirs))
    their_pcm = np.array(g722_mod.G722(RATE, 64000).decode(ours), dtype=np.int16)
    assert np.array_equal(our_pcm, their_pcm)
    a = snr_db(pcm_array(pcm), their_pcm, CODEC_DELAY)  # ours -> G722 package
    b = snr_db(pcm_array(pcm), our_pcm, CODEC_DELAY)  # G722 package -> ours
    with capsys.disabled():
        print(f"\nG.722 vs PyPI g722: bit-exact both ways; SNR ours->theirs {a:.1f} dB,"
              f" theirs->ours {b:.1f} dB")
    assert a > 15 and b > 15  # see SNR_NOTE


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_interoperates_with_ffmpeg(pcm: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    def ffmpeg(args: list[str], data: bytes) -> bytes:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", *args]
        return subprocess.run(cmd, input=data, capture_output=True, check=True, timeout=30).stdout

    raw = ["-f", "s16le", "-ar", str(RATE), "-ac", "1"]
    their_codes = ffmpeg([*raw, "-i", "-", "-c:a", "g722", "-f", "g722", "-"], pcm)
    our_codes = kernel.G722Encoder().encode(pcm)
    assert our_codes == their_codes
    their_pcm = pcm_array(ffmpeg(["-f", "g722", "-i", "-", *raw, "-"], our_codes))
    our_pcm = pcm_array(kernel.G722Decoder().decode(their_codes))
    assert np.array_equal(our_pcm, their_pcm)
    snr = snr_db(pcm_array(pcm), their_pcm, CODEC_DELAY)
    with capsys.disabled():
        print(f"\nG.722 vs ffmpeg: bit-exact both ways; SNR {snr:.1f} dB")
    assert snr > 15


def test_codec_delay_is_where_the_snr_peaks(pcm: bytes) -> None:
    out = pcm_array(kernel.G722Decoder().decode(kernel.G722Encoder().encode(pcm)))
    best = max(range(40), key=lambda d: snr_db(pcm_array(pcm), out, d))
    assert best == CODEC_DELAY


def test_streaming_encode_any_split_equals_whole(pcm: bytes) -> None:
    whole = kernel.G722Encoder().encode(pcm)
    enc = kernel.G722Encoder()
    rng = np.random.default_rng(3)
    parts, pos = [], 0
    while pos < len(pcm):
        step = int(rng.integers(0, 700))  # odd byte counts and odd sample counts included
        parts.append(enc.encode(pcm[pos : pos + step]))
        pos += step
    assert b"".join(parts) == whole
    dec = kernel.G722Decoder()
    pieces = b"".join(dec.decode(whole[i : i + 37]) for i in range(0, len(whole), 37))
    assert pieces == kernel.G722Decoder().decode(whole)


def test_silence_payload_decodes_to_near_zero() -> None:
    dec = kernel.G722Decoder()
    dec.decode(kernel.G722Encoder().encode(speech_like(0.5).tobytes()))  # leave the decoder excited
    tail = pcm_array(b"".join(dec.decode(kernel.CODEC_SILENCE["G722"]) for _ in range(10))[-640:])
    # The decoder's pole predictor settles into a tiny limit cycle (tens of LSB, below -54 dBFS).
    assert np.abs(tail.astype(int)).max() <= 64
    assert all(len(v) == 160 for v in kernel.CODEC_SILENCE.values())
