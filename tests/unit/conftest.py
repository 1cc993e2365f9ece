"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sipagent.media import kernel


@pytest.fixture(params=[0, 1, -1], ids=["baseline", "avx2", "simd"])
def level(request: pytest.FixtureRequest) -> Iterator[int]:
    """Runs a kernel test at each SIMD level: the baseline loops, AVX2 with 16 registers, and the best the
    CPU has (AVX2 with AVX-512VL's 32 registers where it has them; otherwise a repeat of the one before)."""
    kernel.simd_level(request.param)
    try:
        yield request.param
    finally:
        kernel.simd_level()
