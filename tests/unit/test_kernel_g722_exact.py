"""G.722 outputs stay bit-identical to the kernel before its G.722 rework (issue 19, round 6).

The digests below were taken from the build at commit 2da102d (scalar G.722 with a binary-search
quantiser) on inputs that reach every path: full-scale noise and square waves (saturation, the
largest scale factors), silence (the smallest), a sweep of levels, speech-like audio, random
codes for the decoder (every code in every state), and the fused 24 kHz paths frame by frame and in
odd chunks, at every SIMD level. Any change of a single output byte changes a digest.

The G.722 coder itself is bit-exact at every level. Since round 10 the 16 <-> 24 kHz resampler has FMA
kernels at the AVX2 levels, as the G.711 pairs have had since the first release (one rounding per
multiply-add: at most 1 LSB from the baseline on a few samples), so the fused 24 kHz paths have a second
set of digests there, and a test that they are exactly the coder composed with that level's resampler.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sipagent.media import kernel

GOLDEN = {
    "encode16k": "f029818780c31313ea7dd1b4238fed6c",
    "decode16k": "a2e02a5b0fdc746ffec499c0293a3ed9",
    "dec24k": "66cd9916829664ef9a09696465da553e",
    "enc24k": "0745a6203d4de55839496d62fcddd2df",
    "dec24k_chunks": "66cd9916829664ef9a09696465da553e",
    "enc24k_chunks": "0745a6203d4de55839496d62fcddd2df",
}
# Levels 1 and 2 (AVX2 + FMA, with 16 or 32 registers: the same outputs), taken at round 10's build.
GOLDEN_FMA = {
    **GOLDEN,
    "dec24k": "36a81e4d14ea82a7ea927236e65338c8",
    "enc24k": "d040e38df854c2a923783a03f1951145",
    "dec24k_chunks": "36a81e4d14ea82a7ea927236e65338c8",
    "enc24k_chunks": "d040e38df854c2a923783a03f1951145",
}


def source_16k() -> bytes:
    """~23 s at 16 kHz: every level from silence to clipping, noise, squares, tones and chirps."""
    rng = np.random.default_rng(19)
    parts = [np.zeros(4000)]
    parts.append(rng.integers(-32768, 32768, 48000).astype(float))  # full-scale white noise
    t = np.arange(32000) / 16000
    parts.append(32767 * np.sign(np.sin(2 * np.pi * 440 * t)))  # full-scale square: saturates the QMF
    parts.append(32767 * np.sign(np.sin(2 * np.pi * 7100 * t)))  # high-band square
    levels = np.repeat(2.0 ** np.arange(0, 15.01, 0.5), 2000)[: 64000]
    parts.append(levels * np.sin(2 * np.pi * 1000 * np.arange(len(levels)) / 16000))
    chirp = np.sin(2 * np.pi * np.cumsum(np.linspace(50, 7950, 64000)) / 16000)
    parts.append(30000 * chirp)
    parts.append(20000 * np.sin(2 * np.pi * 150 * t) * (rng.random(32000) < 0.5))  # bursts
    parts.append(rng.normal(0, 3000, 64000).cumsum() % 65536 - 32768)  # wandering large steps
    parts.append(np.zeros(8000))
    parts.append(rng.normal(0, 40, 16000))  # low-level noise: smallest scale factors
    x = np.concatenate(parts)
    return np.asarray(np.clip(np.round(x), -32768, 32767), dtype="<i2").tobytes()


def codes() -> bytes:
    rng = np.random.default_rng(23)
    random = rng.integers(0, 256, 60000, dtype=np.uint8).tobytes()
    runs = bytes([0xFF] * 3000 + [0x00] * 3000 + [0x3F, 0xC0] * 2000 + [0x80, 0x7F] * 2000)
    return random + runs + kernel.G722Encoder().encode(source_16k())


def source_24k() -> bytes:
    x16 = np.frombuffer(source_16k(), dtype="<i2").astype(float)
    t = np.arange(len(x16) * 3 // 2)
    x = np.interp(t * 2 / 3, np.arange(len(x16)), x16)
    return np.asarray(np.clip(np.round(x), -32768, 32767), dtype="<i2").tobytes()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def outputs() -> dict[str, str]:
    pcm16, pay, pcm24 = source_16k(), codes(), source_24k()
    dec, enc = kernel.Decoder24k("G722"), kernel.Encoder24k("G722")
    dec_frames = b"".join(dec.decode(pay[i : i + 160]) for i in range(0, len(pay), 160))
    enc_frames = b"".join(enc.encode(pcm24[i : i + 960]) for i in range(0, len(pcm24), 960))
    rng = np.random.default_rng(29)
    cuts_pay = np.cumsum(rng.integers(0, 700, len(pay) // 300 + 10))
    cuts_pcm = np.cumsum(rng.integers(0, 4000, len(pcm24) // 1800 + 10))
    dec, enc = kernel.Decoder24k("G722"), kernel.Encoder24k("G722")
    dec_chunks = b"".join(dec.decode(pay[a:b]) for a, b in zip([0, *cuts_pay], [*cuts_pay, len(pay)], strict=True))
    enc_chunks = b"".join(enc.encode(pcm24[a:b]) for a, b in zip([0, *cuts_pcm], [*cuts_pcm, len(pcm24)], strict=True))
    return {
        "encode16k": digest(kernel.G722Encoder().encode(pcm16)),
        "decode16k": digest(kernel.G722Decoder().decode(pay)),
        "dec24k": digest(dec_frames),
        "enc24k": digest(enc_frames),
        "dec24k_chunks": digest(dec_chunks),
        "enc24k_chunks": digest(enc_chunks),
    }


def test_g722_outputs_are_bit_identical_to_before(level: int) -> None:
    """At each level of the shared ``level`` fixture (baseline, AVX2, the best: AVX2 with AVX-512VL here)."""
    assert outputs() == (GOLDEN if kernel.simd_level(level) == 0 else GOLDEN_FMA)


def test_fused_24k_paths_are_the_coder_and_the_levels_resampler_composed(level: int) -> None:
    """At every level the fused paths give what the 16 kHz coder and that level's resampler give one after
    the other, and the resampler stays within 1 LSB of the baseline's on these inputs."""
    pay, pcm24 = codes(), source_24k()
    dec, enc = kernel.Decoder24k("G722"), kernel.Encoder24k("G722")
    dec_frames = b"".join(dec.decode(pay[i : i + 160]) for i in range(0, len(pay), 160))
    enc_frames = b"".join(enc.encode(pcm24[i : i + 960]) for i in range(0, len(pcm24), 960))
    up = kernel.Resampler(16000, 24000).process(kernel.G722Decoder().decode(pay))
    down = kernel.Resampler(24000, 16000).process(pcm24)
    assert dec_frames == up
    assert enc_frames == kernel.G722Encoder().encode(down)
    kernel.simd_level(0)
    base_up = kernel.Resampler(16000, 24000).process(kernel.G722Decoder().decode(pay))
    base_down = kernel.Resampler(24000, 16000).process(pcm24)
    for got, base in ((up, base_up), (down, base_down)):
        diff = np.abs(np.frombuffer(got, "<i2").astype(int) - np.frombuffer(base, "<i2").astype(int))
        assert diff.max() <= 1
        assert np.count_nonzero(diff) <= len(diff) // 200  # 0.1-0.2 % seen


def test_g722_agrees_with_the_g722_package_on_harsh_inputs() -> None:
    g722_mod = pytest.importorskip("G722")
    pcm, pay = source_16k(), codes()
    assert kernel.G722Encoder().encode(pcm) == g722_mod.G722(16000, 64000).encode(np.frombuffer(pcm, dtype="<i2"))
    theirs = np.array(g722_mod.G722(16000, 64000).decode(pay), dtype="<i2").tobytes()
    assert kernel.G722Decoder().decode(pay) == theirs
