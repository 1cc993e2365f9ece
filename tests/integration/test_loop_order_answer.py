"""A caller's ACK to our 200 and its BYE arrive together (a PBX whose caller hung up just as the agent answered
sends both at once): the agent reads them in one go on uvloop, which reads every datagram waiting, and the BYE
is handled before ``answer()`` has returned. The call was answered all the same: ``answer()`` must return its
media, as it does on asyncio (which reads one datagram per loop iteration), and the call then ends
"remote-bye". ``CallAbandoned`` is for a call the caller ended before its ACK (CANCEL, or BYE first). (On
uvloop ``answer`` raised it here: it looked at ``ended`` after its wait.)"""

from __future__ import annotations

import pytest
from loop_order import LOOPS, answered, scripted_call
from test_sip_direct import ScriptedPeer

from sipagent.errors import CallAbandoned
from sipagent.sip.ua import IncomingCall

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_bye_read_together_with_the_ack_ends_a_call_that_was_answered(loop: str) -> None:
    outcome: list[tuple[str, str]] = []

    async def on_call(call: IncomingCall) -> None:
        try:
            media = await call.answer("127.0.0.1", 41010)
        except CallAbandoned as exc:
            outcome.append(("abandoned", str(exc)))
        else:
            outcome.append(("answered", media.codec))
        await call.ended.wait()
        outcome.append(("ended", call.end_reason))

    async def script(peer: ScriptedPeer) -> None:
        tag = await answered(peer)
        peer.request("BYE", 2, to_tag=tag)  # the same instant: both wait in the agent's socket together
        await peer.status(200, "BYE")

    scripted_call(loop, on_call, script, lambda: len(outcome) == 2)
    assert outcome == [("answered", "PCMU"), ("ended", "remote-bye")]
