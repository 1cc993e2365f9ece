"""A warm transfer's join (here its blind REFER: the caller did not advertise Replaces) taken by a PBX that
answers the REFER with 202 and sends its BYE right behind it (Asterisk's chan_pjsip): the one BYE both ends the
caller's call and decides the REFER ("transferred"), and ``WarmTransfer.run`` must report the join, not a
caller who hung up. The call sets ``caller.ended`` as it reads the BYE, and the REFER's outcome reaches the
transfer's task a few loop turns later (through its queue): ``run``, waiting for whichever comes first, took the
end for the caller hanging up, on either loop. A caller who really hangs up during the REFER (no 202) is still
"caller-gone"."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from loop_order import LOOPS, answered, scripted_call
from test_session_timers import reply
from test_sip_direct import ScriptedPeer

from sipagent.bridge.settings import TransferConfig
from sipagent.bridge.warm import WarmOutcome, WarmTransfer
from sipagent.sip.ua import IncomingCall

pytestmark = pytest.mark.timeout(30)

HUMAN = "sip:desk@127.0.0.1:5099"


class _Media:
    buffered_ms = 10_000  # hold audio never needs topping up


class _Downlink:
    def __init__(self) -> None:
        self.media = _Media()
        self.drained = asyncio.Event()

    def play_pcm24(self, pcm24k: bytes) -> None:
        pass

    def flush(self) -> None:
        pass


class _Session:
    link = None  # no model: no hold message, no briefing


class _HumanCall:
    call_id = "human-1"

    def __init__(self) -> None:
        self.ended = asyncio.Event()


class _Human:
    def __init__(self) -> None:
        self.call = _HumanCall()

    def play_pcm24(self, pcm24k: bytes) -> None:
        pass

    async def wait_playout(self, timeout: float) -> None:
        pass

    async def close(self) -> None:
        self.call.ended.set()


async def _dial_human(uri: str, ring_timeout: float) -> Any:
    return _Human()


def _warm_transfer(loop: str, pbx_bye_after_202: bool) -> tuple[WarmOutcome, str, list[str]]:
    results: list[tuple[WarmOutcome, str, list[str]]] = []

    async def on_call(call: IncomingCall) -> None:
        await call.answer("127.0.0.1", 41010)
        while call.state != "confirmed":
            await asyncio.sleep(0.01)
        warm = WarmTransfer(TransferConfig(mode="warm", hold_audio="silence"), call, _dial_human,
                            cast(Any, _Downlink()), cast(Any, _Session()), cast(Any, None),
                            logging.LoggerAdapter(logging.getLogger("test.warm"), {}))
        outcome = await warm.run(HUMAN, "sales", "")
        results.append((outcome, call.end_reason, warm.steps))

    async def script(peer: ScriptedPeer) -> None:
        tag = await answered(peer)
        refer = await peer.expect(lambda data: data.startswith(b"REFER "), 5)
        if pbx_bye_after_202:
            reply(peer, refer, 202, "Accepted")
        peer.request("BYE", 2, to_tag=tag)  # right behind the 202, or instead of any answer
        await peer.status(200, "BYE")

    scripted_call(loop, on_call, script, lambda: bool(results))
    assert results, "the warm transfer did not finish"
    return results[0]


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_pbx_bye_right_behind_the_202_is_a_joined_warm_transfer(loop: str) -> None:
    outcome, end_reason, steps = _warm_transfer(loop, pbx_bye_after_202=True)
    assert (outcome.result, end_reason) == ("joined-blind", "transferred"), steps
    assert "caller-gone" not in steps and steps[-2:] == ["refer-blind", "joined-blind"], steps


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_caller_hanging_up_before_the_refer_is_answered_is_gone(loop: str) -> None:
    outcome, end_reason, steps = _warm_transfer(loop, pbx_bye_after_202=False)
    assert (outcome.result, end_reason) == ("caller-gone", "remote-bye"), steps
    assert "joined-blind" not in steps, steps
