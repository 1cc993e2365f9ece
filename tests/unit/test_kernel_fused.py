"""Fused payload <-> 24 kHz paths equal the composed primitives; fuzzing of every entry point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.errors import KernelError
from sipagent.media import kernel

DECODERS = {"PCMU": (kernel.ulaw_decode, 8000), "PCMA": (kernel.alaw_decode, 8000)}
ENCODERS = {"PCMU": (kernel.ulaw_encode, 8000), "PCMA": (kernel.alaw_encode, 8000)}


def speechish(n: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 24000
    x = 9000 * np.sin(2 * np.pi * 310 * t) * np.sin(2 * np.pi * 3 * t) + 1500 * rng.standard_normal(n)
    return np.asarray(np.clip(np.round(x), -32768, 32767), dtype="<i2").tobytes()


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_decoder24k_equals_decode_then_resample(codec: str) -> None:
    payload = np.random.default_rng(5).integers(0, 256, 160 * 25, dtype=np.uint8).tobytes()
    dec = kernel.Decoder24k(codec)
    frames = [dec.decode(payload[i : i + 160]) for i in range(0, len(payload), 160)]
    assert all(len(f) == 960 for f in frames)  # 20 ms in, 20 ms (480 samples) out, every frame
    if codec == "G722":
        linear, rate = kernel.G722Decoder().decode(payload), 16000
    else:
        fn, rate = DECODERS[codec]
        linear = fn(payload)
    assert b"".join(frames) == kernel.Resampler(rate, 24000).process(linear)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_encoder24k_equals_resample_then_encode(codec: str) -> None:
    pcm = speechish(24000)
    rng = np.random.default_rng(9)
    enc = kernel.Encoder24k(codec)
    out, pos = [], 0
    while pos < len(pcm):  # Realtime deltas: arbitrary lengths, odd byte counts included
        step = int(rng.integers(0, 3001))
        out.append(enc.encode(pcm[pos : pos + step]))
        pos += step
    if codec == "G722":
        ref = kernel.G722Encoder().encode(kernel.Resampler(24000, 16000).process(pcm))
    else:
        fn, rate = ENCODERS[codec]
        ref = fn(kernel.Resampler(24000, rate).process(pcm))
    assert b"".join(out) == ref
    assert len(ref) == 8000


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encoder24k_codes_every_level_and_clipping(codec: str) -> None:
    """The fused encoder writes G.711 codes straight from the filter's vector lanes: every segment and
    step, and outputs that saturate int16 (a clipped 200 Hz tone overshoots), must match the reference."""
    t = np.arange(3 * 24000) / 24000
    x = np.geomspace(0.5, 60000, len(t)) * np.sin(2 * np.pi * 200 * t)
    pcm = np.asarray(np.clip(np.round(x), -32768, 32767), dtype="<i2").tobytes()
    enc = kernel.Encoder24k(codec)
    fused = b"".join(enc.encode(pcm[i : i + 960]) for i in range(0, len(pcm), 960))
    linear = kernel.Resampler(24000, 8000).process(pcm)
    fn, _ = ENCODERS[codec]
    assert fused == fn(linear)
    samples = np.frombuffer(linear, dtype="<i2")
    assert samples.max() == 32767 and samples.min() == -32768
    assert len(set(fused)) >= 250  # every code but a few near zero that no sample rounds to


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_whole_frames_give_whole_payloads(codec: str) -> None:
    enc = kernel.Encoder24k(codec)
    assert [len(enc.encode(bytes(960))) for _ in range(5)] == [160] * 5


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_round_trip_keeps_a_tone(codec: str) -> None:
    t = np.arange(24000) / 24000
    pcm = np.round(12000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    back = np.frombuffer(kernel.Decoder24k(codec).decode(kernel.Encoder24k(codec).encode(pcm)), "<i2")
    y = back[2400:].astype(float)
    assert 0.9 < np.sqrt(np.mean(y**2)) / (12000 / np.sqrt(2)) < 1.1


def test_unknown_codec() -> None:
    with pytest.raises(KernelError):
        kernel.Decoder24k("OPUS")
    with pytest.raises(KernelError):
        kernel.Encoder24k("G729")
    assert kernel.Decoder24k("pcmu").codec == "PCMU"


def test_empty_inputs() -> None:
    assert kernel.Decoder24k("G722").decode(b"") == b""
    assert kernel.Encoder24k("PCMA").encode(b"") == b""
    assert kernel.G722Encoder().encode(b"") == b""
    assert kernel.G722Decoder().decode(b"") == b""
    assert kernel.Resampler(8000, 16000).process(b"") == b""


def test_huge_inputs() -> None:
    big = speechish(24000 * 30)  # 30 s at once: exercises chunking and buffer growth
    payload = kernel.Encoder24k("PCMU").encode(big)
    assert len(payload) == 8000 * 30
    assert len(kernel.Decoder24k("G722").decode(payload)) == len(big)
    assert len(kernel.Resampler(24000, 16000).process(big)) == len(big) * 2 // 3
    assert len(kernel.Resampler(8000, 24000).process(big)) == len(big) * 3


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), codec=st.sampled_from(["PCMU", "PCMA", "G722"]))
def test_fuzz_payload_and_pcm_entry_points(data: bytes, codec: str) -> None:
    assert len(kernel.Decoder24k(codec).decode(data)) == 6 * len(data)
    encoder = kernel.Encoder24k(codec)
    out = encoder.encode(data)
    assert len(out) <= len(data) // 6 + 2
    assert encoder.mean_square == kernel.mean_square(data)  # the level of what was encoded, to the bit
    assert len(kernel.G722Decoder().decode(data)) == 4 * len(data)
    assert len(kernel.G722Encoder().encode(data)) == len(data) // 4
    for src, dst in ((8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)):
        n = len(data) // 2
        assert len(kernel.Resampler(src, dst).process(data)) == 2 * -(-n * dst // src)
    if len(data) % 2 == 0:
        assert len(kernel.ulaw_encode(data)) == len(data) // 2
    assert len(kernel.alaw_decode(data)) == 2 * len(data)


@pytest.mark.parametrize(("source", "target"), [(s, t) for s in ("PCMU", "PCMA", "G722")
                                                for t in ("PCMU", "PCMA", "G722")])
def test_transcode_keeps_length_and_the_sound(source: str, target: str) -> None:
    """Queued agent audio moved to a call's new codec: same length, the same tone at the same level."""
    t = np.arange(24000) / 24000
    pcm = np.round(12000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    payload = kernel.Encoder24k(source).encode(pcm)
    moved = kernel.transcode(payload, source, target)
    assert len(moved) == len(payload)
    if source == target:
        assert moved is payload
    back = np.frombuffer(kernel.Decoder24k(target).decode(moved), "<i2")[2400:].astype(float)
    assert 0.85 < np.sqrt(np.mean(back**2)) / (12000 / np.sqrt(2)) < 1.15
    spectrum = np.abs(np.fft.rfft(back))
    assert abs(np.argmax(spectrum) * 24000 / len(back) - 1000) < 5
    if "G722" not in (source, target):  # sample for sample: exactly what decoding and encoding give
        decode = kernel.ulaw_decode if source == "PCMU" else kernel.alaw_decode
        encode = kernel.ulaw_encode if target == "PCMU" else kernel.alaw_encode
        assert moved == encode(decode(payload))
