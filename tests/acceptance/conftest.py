"""The acceptance suite: the whole product met the way a call center meets it.

Kamailio is the PBX, baresip processes are the customers' phones (and a human colleague's), the agent
runs with the offline local backend as its model; everything on 127.0.0.1 with free ports. Tests are
skipped only when a peer program is missing (scripts/setup --test installs them all on CI).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "integration"), str(HERE)]

from peers import Kamailio, missing_binaries, running_kamailio  # noqa: E402

PROGRAMS = ("kamailio", "baresip", "espeak-ng", "sox")


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """One PBX per test module; every test registers its own extensions, so tests do not interact."""
    missing = missing_binaries(*PROGRAMS)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (install with scripts/setup --test)")
    with running_kamailio(tmp_path_factory.mktemp("kamailio")) as server:
        yield server
