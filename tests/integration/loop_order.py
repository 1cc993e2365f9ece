"""One scripted call on a chosen event loop, for the tests of the order in which the agent handles what a peer
sends back to back (test_transfer_bye_race, test_loop_order_*). uvloop reads every datagram waiting in one go,
asyncio one per loop turn: a second message is handled before or after the tasks the first one woke."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop
from test_sip_direct import OFFER, ScriptedPeer, settings, to_tag

from sipagent.sip.ua import IncomingCall, UserAgent

# asyncio's own loop whatever the policy (tests/integration/conftest.py makes uvloop the default).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.SelectorEventLoop,
                                                              "uvloop": uvloop.new_event_loop}


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on the loop named ("asyncio" or "uvloop"). The stdlib loop runs under asyncio's own policy:
    the uvloop policy the suite installs (conftest.py) has no child watcher, and an asyncio loop under it cannot
    start a subprocess on Python 3.11."""
    policy = asyncio.get_event_loop_policy()
    if loop == "asyncio":
        asyncio.set_event_loop_policy(None)
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(main)
    finally:
        asyncio.set_event_loop_policy(policy)


async def answered(peer: ScriptedPeer) -> str:
    """The peer calls the agent: INVITE, the agent's 200 OK, the ACK. The dialog's To tag."""
    peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
    tag = to_tag(await peer.status(200, "INVITE"))
    peer.ack(1, tag)
    return tag


def scripted_call(loop: str, on_call: Callable[[IncomingCall], Awaitable[None]],
                  script: Callable[[ScriptedPeer], Awaitable[None]], done: Callable[[], bool],
                  wait_s: float = 3.0) -> None:
    """A user agent answering with ``on_call`` and a scripted peer playing ``script`` against it, on ``loop``;
    then up to ``wait_s`` for ``done`` (what ``on_call`` records) before both stop."""
    async def main() -> None:
        ua = UserAgent(settings(codecs=["PCMU"]), on_call)
        await ua.start()
        peer = await ScriptedPeer.open(ua.local_address)
        try:
            await script(peer)
            deadline = asyncio.get_running_loop().time() + wait_s
            while not done() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
        finally:
            peer.close()
            await ua.stop()

    run_on(loop, main())
