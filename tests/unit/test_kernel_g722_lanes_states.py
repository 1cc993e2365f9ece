"""The G.722 lanes (EncoderBatch, DecoderBatch) keep the per-call coder's arithmetic from any band state
the coder can reach, its extremes included: full-scale zero coefficients b(i) = -32768 against differences
whose doubles saturate at -32768 (a product of 2^30), the widest pole coefficients, the largest scale
factors. Speech rarely drives the coder there; the 16-bit lanes of SIMD level 2 must give the same values
as the per-call coder's 32-bit arithmetic all the same."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_kernel_decode_batch import HEAD, TAIL, Pass
from test_kernel_g722_lanes import call_audio

from sipagent.media.kernel import LANES, Encoder24k, EncoderBatch, FrameDecoder

FIELDS = ("s", "sp", "sz", "nb", "det")
ARRAYS = ("r", "p", "a", "d", "b")


def pick(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Either end of [lo, hi] two times in ten, else a value between."""
    u = rng.random()
    return lo if u < 0.1 else hi if u < 0.2 else int(rng.integers(lo, hi + 1))


def extreme_band(band: Any, rng: np.random.Generator, nb_max: int) -> None:
    """A band state within the ranges the coder keeps (g722.c): any 16-bit signal values and zero
    coefficients, the pole coefficients within their limits, the scale factor within its table."""
    for name in ("s", "sp", "sz"):
        setattr(band, name, pick(rng, -32768, 32767))
    for i in range(2):
        band.r[i] = pick(rng, -32768, 32767)
        band.p[i] = pick(rng, -32768, 32767)
    band.a[1] = pick(rng, -12288, 12288)
    limit = 15360 - band.a[1]
    band.a[0] = pick(rng, -limit, limit)
    for i in range(6):
        band.d[i] = pick(rng, -20016, 20016)  # the largest difference: 32064 * 20456 >> 15
        band.b[i] = pick(rng, -32768, 32767)
    band.nb = pick(rng, 0, nb_max)
    band.det = pick(rng, 1, 32064)


def band_state(band: Any) -> tuple[int, ...]:
    return tuple(getattr(band, f) for f in FIELDS) + tuple(v for a in ARRAYS for v in getattr(band, a))


def same_extreme_states(codecs: list[Any], rng: np.random.Generator) -> None:
    """One extreme state, set in every G.722 state of ``codecs`` (a call's batched and own coder)."""
    first = codecs[0]
    extreme_band(first.low, rng, 18432)
    extreme_band(first.high, rng, 22528)
    for other in codecs[1:]:
        for band in ("low", "high"):
            src, dst = getattr(first, band), getattr(other, band)
            for name in FIELDS:
                setattr(dst, name, getattr(src, name))
            for name in ARRAYS:
                for i, v in enumerate(getattr(src, name)):
                    getattr(dst, name)[i] = v


def loud_frames(call: int, frames: int) -> list[bytes]:
    """Full-scale squares, noise and tones (call_audio's loud kinds) and silence after them."""
    kinds = [0, 1, 2, 4]
    return call_audio(kinds[call % len(kinds)] + 6 * (call // len(kinds)), frames)


@pytest.mark.parametrize("seed", range(6))
def test_encoder_lanes_equal_each_calls_coder_from_extreme_states(level: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batched = [Encoder24k("G722") for _ in range(LANES)]
    alone = [Encoder24k("G722") for _ in range(LANES)]
    for b, a in zip(batched, alone, strict=True):
        same_extreme_states([b._state.g722, a._state.g722], rng)
    audio = [loud_frames(call, 6) for call in range(LANES)]
    got: list[bytearray] = [bytearray() for _ in range(LANES)]
    want = [bytearray() for _ in range(LANES)]
    batch = EncoderBatch()
    for tick in range(6):
        for call in range(LANES):
            batch.stage(batched[call], audio[call][tick])
            batch.send(lambda header, payload, call=call: got[call].extend(payload), b"")
            want[call] += alone[call].encode(audio[call][tick])
        batch.run()
    for call in range(LANES):
        assert bytes(got[call]) == bytes(want[call]), f"seed {seed}, call {call}"
        for band in ("low", "high"):
            assert band_state(getattr(batched[call]._state.g722, band)) == band_state(
                getattr(alone[call]._state.g722, band)
            ), f"seed {seed}, call {call}, {band} band"


@pytest.mark.parametrize("seed", range(6))
def test_decoder_lanes_equal_each_calls_decoder_from_extreme_states(level: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    batched = [FrameDecoder("G722", "pcm", HEAD, TAIL) for _ in range(LANES)]
    alone = [FrameDecoder("G722", "pcm", HEAD, TAIL) for _ in range(LANES)]
    for b, a in zip(batched, alone, strict=True):
        same_extreme_states([b._state.dec.g722, a._state.dec.g722], rng)
    # any codes: random bytes, then for half the calls the largest lower-band codes alternating in sign
    largest = bytes([0x04, 0x3C] * 80)
    payloads = [
        [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() if tick < 3 or call % 2 else largest for tick in range(6)]
        for call in range(LANES)
    ]
    got: list[list[bytes]] = [[] for _ in range(LANES)]
    loop = Pass()
    for tick in range(6):
        for call in range(LANES):
            d = batched[call]
            loop.batch.stage(d, payloads[call][tick], lambda ms, call=call, d=d: got[call].append(bytes(d.pcm)))
        loop.end()
        for call in range(LANES):
            alone[call].push(payloads[call][tick])
            assert got[call][tick] == bytes(alone[call].pcm), f"seed {seed}, call {call}, frame {tick}"
    for call in range(LANES):
        for band in ("low", "high"):
            assert band_state(getattr(batched[call]._state.dec.g722, band)) == band_state(
                getattr(alone[call]._state.dec.g722, band)
            ), f"seed {seed}, call {call}, {band} band"
