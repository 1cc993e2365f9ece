"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sipagent.media import kernel


@pytest.fixture(params=[0, -1], ids=["baseline", "simd"])
def level(request: pytest.FixtureRequest) -> Iterator[int]:
    """Runs a kernel test at both SIMD levels: the baseline loops and the best the CPU has."""
    kernel.simd_level(request.param)
    try:
        yield request.param
    finally:
        kernel.simd_level()
