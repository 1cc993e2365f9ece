"""A PBX that answers our REFER with 202 and sends its BYE right behind it (Asterisk's chan_pjsip on a blind
transfer): the two arrive together, and the agent reads them in one go (uvloop reads every datagram waiting, a
TCP read takes both messages). The 202 must reach the call before the BYE does, or the transfer is counted as
the caller hanging up (and the model is told it failed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from test_session_timers import reply
from test_sip_direct import OFFER, ScriptedPeer, settings, to_tag

from sipagent.sip.ua import IncomingCall, UserAgent

pytestmark = pytest.mark.timeout(30)

# asyncio's own loop whatever the policy (a uvloop policy would make new_event_loop a uvloop one).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.SelectorEventLoop,
                                                              "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_bye_read_together_with_the_refers_202_ends_the_call_as_transferred(loop: str) -> None:
    outcome: list[tuple[bool, str]] = []

    async def on_call(call: IncomingCall) -> None:
        await call.answer("127.0.0.1", 41010)
        while call.state != "confirmed":
            await asyncio.sleep(0.01)
        outcome.append((await call.transfer("sip:desk@127.0.0.1:5099", timeout=5), call.end_reason))

    async def main() -> None:
        ua = UserAgent(settings(codecs=["PCMU"]), on_call)
        await ua.start()
        peer = await ScriptedPeer.open(ua.local_address)
        try:
            peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
            tag = to_tag(await peer.status(200, "INVITE"))
            peer.ack(1, tag)
            refer = await peer.expect(lambda data: data.startswith(b"REFER "), 5)
            reply(peer, refer, 202, "Accepted")
            peer.request("BYE", 2, to_tag=tag)  # the same instant: both wait in the agent's socket together
            await peer.status(200, "BYE")
            for _ in range(100):
                if outcome:
                    break
                await asyncio.sleep(0.02)
        finally:
            peer.close()
            await ua.stop()

    run_on(LOOPS[loop], main())
    assert outcome == [(True, "transferred")]


def run_on(factory: Callable[[], asyncio.AbstractEventLoop], main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)
