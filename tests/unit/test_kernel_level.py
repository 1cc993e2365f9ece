"""mean_square in C against NumPy, and level_db built on it."""

from __future__ import annotations

import numpy as np
import pytest

from sipagent.media import kernel
from sipagent.media.vad import SILENCE_DB, level_db


@pytest.mark.parametrize("n", [0, 1, 2, 3, 160, 320, 961, 48000])
def test_mean_square_matches_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.integers(-32768, 32768, size=n, dtype=np.int16)
    expected = float(np.mean(x.astype(np.float64) ** 2)) if n else 0.0
    assert kernel.mean_square(x.astype("<i2").tobytes()) == pytest.approx(expected, rel=1e-12)
    exact = sum(int(v) * int(v) for v in x) / n if n else 0.0  # the integer sum, one rounding
    assert kernel.mean_square(x.astype("<i2").tobytes()) == exact


def test_mean_square_extremes_and_odd_bytes() -> None:
    full = np.full(480, -32768, dtype="<i2").tobytes()
    assert kernel.mean_square(full) == 32768.0**2  # exact: no 32-bit overflow in the sum
    loud = np.tile(np.array([-32768, -32768, 32767, -32768], dtype="<i2"), 41)  # pairs' squares near 2^31
    assert kernel.mean_square(loud.tobytes()) == (3 * 32768**2 + 32767**2) / 4
    assert kernel.mean_square(full + b"\x7f") == 32768.0**2  # the dangling byte is ignored
    assert kernel.mean_square(b"\x01") == 0.0


def test_level_db_uses_the_exact_mean_square() -> None:
    x = np.round(1000 * np.sin(2 * np.pi * 440 * np.arange(480) / 24000)).astype("<i2")
    ms = float(np.mean(x.astype(np.float64) ** 2))
    assert level_db(x.tobytes()) == pytest.approx(10 * np.log10(ms / 32768**2), abs=1e-9)
    assert level_db(bytes(960)) == SILENCE_DB
    assert level_db(b"") == SILENCE_DB
