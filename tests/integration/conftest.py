"""Fixtures starting real SIP peers on 127.0.0.1 (see peers.py); skipped when a binary is missing.

scripts/setup --test installs kamailio and baresip, so on CI they are always there.

The in-process tests run on the event loop the agent runs on (sipagent.agent.event_loop_factory): uvloop, unless
SIPAGENT_EVENT_LOOP=asyncio. uvloop reads every datagram waiting in one go where asyncio reads one per loop turn,
and what a peer sends back to back is then handled before the tasks the first message woke: tests on asyncio alone
missed what that order does (a blind transfer counted as a hang-up). Tests that compare the two loops name theirs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Kamailio, require, running_kamailio

from sipagent.agent import event_loop_factory

if event_loop_factory() is not None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """One Kamailio registrar/proxy per test module; tests use distinct users so they do not interact."""
    require("kamailio")
    with running_kamailio(tmp_path_factory.mktemp("kamailio")) as server:
        yield server


@pytest.fixture
def own_kamailio(tmp_path: Path) -> Iterator[Kamailio]:
    """A Kamailio for one test that restarts it."""
    require("kamailio")
    with running_kamailio(tmp_path / "kamailio") as server:
        yield server


@pytest.fixture
def baresip_available() -> None:
    require("baresip")


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and the agent's certificate for 127.0.0.1 and agent.test, as PEM files (ca, cert, key):
    for the TLS transport's own tests."""
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("tls-pem")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "agent.test")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    return paths
