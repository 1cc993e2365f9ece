"""A key the caller's PBX signals by SIP INFO right behind its ACK (both read in one go: uvloop reads every
datagram waiting, and a busy agent's socket holds several) must reach the call like any later key.

The agent sets the call's ``on_dtmf`` only once ``answer()`` has returned (agent.py ``_bridge``). On asyncio,
which reads one datagram per loop iteration, the answering task runs between the ACK and the INFO; on uvloop the
INFO is handled before that task runs, and the key was dropped. The front now keeps the keys that come before
anyone listens and hands them to the first ``on_dtmf`` set."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bridge_helpers import bridge_config, call_rig
from loop_order import LOOPS, run_on
from test_sip_direct import OFFER, ScriptedPeer, to_tag

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_key_signalled_by_info_right_behind_the_ack_reaches_the_call(loop: str, tmp_path: Path) -> None:
    keys: list[str] = []
    run_on(loop, _key_behind_the_ack(tmp_path, keys))
    assert keys == ["5"]


async def _key_behind_the_ack(tmp_path: Path, keys: list[str]) -> None:
    async with call_rig(bridge_config(tmp_path), dial=False) as rig:
        peer = await ScriptedPeer.open(rig.agent.sip_address)
        try:
            peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
            tag = to_tag(await peer.status(200, "INVITE", 10))
            peer.ack(1, tag)
            # The same instant: both wait in the agent's socket together.
            peer.request("INFO", 2, to_tag=tag, body="Signal=5\r\nDuration=160\r\n",
                         content_type="application/dtmf-relay")
            await peer.status(200, "INFO")
            deadline = asyncio.get_running_loop().time() + 3
            while asyncio.get_running_loop().time() < deadline and not keys:
                bridge = rig.agent.bridges.get(peer.call_id)
                if bridge is not None and bridge.transcript is not None:
                    keys[:] = [entry["digit"] for entry in bridge.transcript.entries if entry["type"] == "dtmf"]
                await asyncio.sleep(0.05)
            peer.request("BYE", 3, to_tag=tag)
            await peer.status(200, "BYE")
        finally:
            peer.close()
