"""SDES a=crypto attributes built to hurt: key text out of place never reaches an error message, lines made of
the grammar's own pieces in any order raise nothing but SdpError, and no line or list of lines is costly."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.errors import SdpError
from sipagent.sdp.crypto import MAX_CRYPTO_LINES, MAX_LINE, SUITES, choose, crypto_lines, parse_crypto

KEY30 = bytes(range(200, 230))
B64 = base64.b64encode(KEY30).decode()  # 40 characters, no padding
KEY28 = bytes(range(50, 78))
B64_28 = base64.b64encode(KEY28).decode()  # 38 characters and "=="


def shows_key(message: str) -> bool:
    """Whether ``message`` holds any 8 consecutive characters of either key's base64."""
    return any(text[i:i + 8] in message for text in (B64, B64_28) for i in range(len(text) - 7))


@pytest.mark.parametrize("value", [
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} inline:{B64}",  # a second key after a blank, not a ";"
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} {B64}",
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64[:20]} {B64[20:]}",  # a key split by a stray blank
    f"1 AEAD_AES_128_GCM inline:{B64_28} {B64_28}",  # "=" padding: the text before it was the "name"
    f"1 AEAD_AES_128_GCM inline:{B64_28} WSH=64 inline:{B64_28}",
    f"1 {B64} inline:{B64}",  # the key where the suite goes
    f"1 {B64.upper()[:30]} inline:{B64}",
])
def test_key_text_out_of_place_is_never_in_the_message(value: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_crypto(value)
    assert not shows_key(str(info.value)), str(info.value)


def test_registered_names_are_still_named() -> None:
    for param in ("UNENCRYPTED_SRTP", "UNAUTHENTICATED_SRTP", "FEC_ORDER=FEC_SRTP", f"FEC_KEY=inline:{B64}",
                  "KDR=24", "-X_VENDOR"):
        with pytest.raises(SdpError) as info:
            parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} {param}")
        assert param.split("=")[0] in str(info.value) and not shows_key(str(info.value))
    with pytest.raises(SdpError, match="unsupported crypto suite AES_256_CM_HMAC_SHA1_80"):
        parse_crypto(f"1 AES_256_CM_HMAC_SHA1_80 inline:{B64}")


# The grammar's pieces (RFC 4568 9.2), right and wrong, with the key in each place it may land.
PIECES = st.sampled_from([
    "1", "0", "999999999", "1234567890", *SUITES, "AES_CM_128_HMAC_SHA1_80", "aes_cm_128_hmac_sha1_80",
    "F8_128_HMAC_SHA1_80", f"inline:{B64}", f"inline:{B64_28}", f"inline:{B64}|2^31", f"inline:{B64}|2^20",
    f"inline:{B64}|2^31|1:4", f"inline:{B64}|1:4", f"inline:{B64}|{2**48}", f"inline:{B64}|2^99",
    f"inline:{B64};inline:{B64}", f"inline:{B64}|", "inline:|2^31", "inline:", f"uri:{B64}", B64, B64_28,
    "WSH=64", "WSH=", "KDR=0", "KDR=99", "UNENCRYPTED_SRTP", f"FEC_KEY=inline:{B64}", "|", ":", "=", "^",
    "2^31", "\u00a0", "\u0661", "\x00",
])
SEPARATORS = st.sampled_from([" ", "\t", "  ", " \t ", "", "|", ";"])


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(PIECES, SEPARATORS), max_size=14))
def test_lines_of_the_grammars_pieces_raise_only_sdp_error_without_the_key(parts: list[tuple[str, str]]) -> None:
    value = "".join(piece + sep for piece, sep in parts)
    try:
        crypto = parse_crypto(value)
    except SdpError as exc:
        assert not shows_key(str(exc)), str(exc)
        return
    key_len, salt_len = SUITES[crypto.suite]
    assert crypto.key in (KEY30, KEY28) and len(crypto.key) == key_len + salt_len
    assert not shows_key(repr(crypto))


@pytest.mark.parametrize("value", [
    "1 AES " + "a " * 300,
    "1 " + "A" * 64 + " " + "x" * 400 + (" " + "y" * 64) * 8 + " z",
    "1" + " \t" * 300,
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}" + "|2^31" * 100,
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}" + " WSH=64" * 70,
    "1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 400 + "=" * 100,
])
def test_worst_case_lines_are_cheap(value: str) -> None:
    started = time.perf_counter()
    for _ in range(200):
        with pytest.raises(SdpError):
            parse_crypto(value[:MAX_LINE])
    assert time.perf_counter() - started < 1.0  # ~10 us each: no backtracking blow-up


def test_a_flood_of_crypto_lines_reads_sixteen_and_says_why_briefly() -> None:
    attributes: list[tuple[str, str | None]] = [
        ("crypto", f"{n} AES_CM_128_HMAC_SHA1_80 inline:{B64} inline:{B64}") for n in range(20000)]
    attributes += [("crypto", None), ("crypto", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")]
    started = time.perf_counter()
    offered = crypto_lines(attributes)
    assert len(offered) == MAX_CRYPTO_LINES and time.perf_counter() - started < 0.5
    with pytest.raises(SdpError) as info:
        choose(offered, list(SUITES))
    assert len(str(info.value)) < 300 and not shows_key(str(info.value))
