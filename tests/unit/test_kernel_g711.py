"""G.711 against Python 3.11's audioop (μ-law: Sun lineage) over every input and every code."""

from __future__ import annotations

import struct
import warnings

import pytest

from sipagent.errors import KernelError
from sipagent.media import kernel

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")

ALL_PCM = struct.pack("<65536h", *range(-32768, 32768))
ALL_CODES = bytes(range(256))


def test_ulaw_encode_all_inputs_bit_exact() -> None:
    assert kernel.ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM, 2)


def test_alaw_encode_all_inputs_bit_exact() -> None:
    assert kernel.alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)


def test_ulaw_decode_all_codes_bit_exact() -> None:
    assert kernel.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_decode_all_codes_bit_exact() -> None:
    assert kernel.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_sun_lineage_small_negatives() -> None:
    # The ITU G.191 reference maps -1..-4 to 0x7F; the Sun/audioop table (ours) to 0x7E.
    assert kernel.ulaw_encode(struct.pack("<4h", -1, -2, -3, -4)) == b"\x7e" * 4
    assert kernel.ulaw_encode(b"\x00\x00") == b"\xff"
    assert kernel.alaw_encode(b"\x00\x00") == b"\xd5"


def test_round_trip_is_idempotent_on_codes() -> None:
    for enc, dec in ((kernel.ulaw_encode, kernel.ulaw_decode), (kernel.alaw_encode, kernel.alaw_decode)):
        codes = enc(dec(ALL_CODES))
        # μ-law has two codes for zero (0x7F and 0xFF); everything else maps back to itself.
        assert [c for c, d in zip(codes, ALL_CODES, strict=True) if c != d] in ([], [0xFF])


def test_empty_and_odd_lengths() -> None:
    assert kernel.ulaw_encode(b"") == b""
    assert kernel.alaw_decode(b"") == b""
    with pytest.raises(KernelError):
        kernel.ulaw_encode(b"\x00\x01\x02")
    with pytest.raises(KernelError):
        kernel.alaw_encode(b"\x00")
