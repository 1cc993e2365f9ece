"""A PBX that answers our REFER with 202 and sends its BYE right behind it (Asterisk's chan_pjsip on a blind
transfer): the two arrive together, and the agent reads them in one go (uvloop reads every datagram waiting, a
TCP read takes both messages). The 202 must reach the call before the BYE does, or the transfer is counted as
the caller hanging up (and the model is told it failed)."""

from __future__ import annotations

import asyncio

import pytest
from loop_order import LOOPS, answered, scripted_call
from test_session_timers import reply
from test_sip_direct import ScriptedPeer

from sipagent.sip.ua import IncomingCall

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_bye_read_together_with_the_refers_202_ends_the_call_as_transferred(loop: str) -> None:
    outcome: list[tuple[bool, str]] = []

    async def on_call(call: IncomingCall) -> None:
        await call.answer("127.0.0.1", 41010)
        while call.state != "confirmed":
            await asyncio.sleep(0.01)
        outcome.append((await call.transfer("sip:desk@127.0.0.1:5099", timeout=5), call.end_reason))

    async def script(peer: ScriptedPeer) -> None:
        tag = await answered(peer)
        refer = await peer.expect(lambda data: data.startswith(b"REFER "), 5)
        reply(peer, refer, 202, "Accepted")
        peer.request("BYE", 2, to_tag=tag)  # the same instant: both wait in the agent's socket together
        await peer.status(200, "BYE")

    scripted_call(loop, on_call, script, lambda: bool(outcome))
    assert outcome == [(True, "transferred")]
