"""The C base64 decoder against the standard library: same bytes for canonical input, and the standard
library's own answer (bytes or error) for everything else."""

from __future__ import annotations

import base64
import binascii
import random

import pytest

from sipagent.media.kernel import Base64Decoder


@pytest.fixture
def decoder() -> Base64Decoder:
    return Base64Decoder()


def test_every_length_and_byte_value_round_trips(decoder: Base64Decoder) -> None:
    rng = random.Random(7)
    for n in range(0, 70):
        for _ in range(20):
            data = rng.randbytes(n)
            text = base64.b64encode(data).decode()
            assert decoder.decode(text) == data
            assert decoder.decode(text.encode()) == data
    every_sextet = bytes(range(256)) * 3
    assert decoder.decode(base64.b64encode(every_sextet).decode()) == every_sextet


def test_a_delta_larger_than_the_buffer_grows_it(decoder: Base64Decoder) -> None:
    data = random.Random(1).randbytes(48_000)  # one second of 24 kHz PCM16
    assert decoder.decode(base64.b64encode(data).decode()) == data
    assert decoder.decode("YWJj") == b"abc"  # and the smaller one after it still uses it right


@pytest.mark.parametrize("text", [
    "YW Jj",        # a space: skipped by the lenient decoder
    "YWJj\n",       # a trailing newline (MIME line breaks)
    "YR==",         # non-canonical trailing bits
    "YWE=YWE=",     # padding inside
    "YWJ",          # missing padding
    "Y",
    "====",
    "YW=j",
    "éàç=",         # not ASCII
    "YWJj-_==",     # the URL-safe alphabet
])
def test_non_canonical_input_gets_the_standard_librarys_answer(decoder: Base64Decoder, text: str) -> None:
    def stdlib(strict: bool) -> bytes | type[Exception]:
        try:
            return binascii.a2b_base64(text, strict_mode=True) if strict else base64.b64decode(text)
        except (binascii.Error, ValueError) as exc:
            return type(exc)

    for strict in (False, True):
        try:
            ours: bytes | type[Exception] = decoder.decode(text, strict=strict)
        except (binascii.Error, ValueError) as exc:
            ours = type(exc)
        assert ours == stdlib(strict), (text, strict)


def test_strict_mode_rejects_what_the_backend_must_refuse(decoder: Base64Decoder) -> None:
    with pytest.raises(binascii.Error):
        decoder.decode("not base64!", strict=True)
    assert decoder.decode("AAAA", strict=True) == b"\0\0\0"
