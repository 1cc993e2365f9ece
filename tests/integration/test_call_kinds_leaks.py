"""What a call of a given kind leaves behind, measured exactly in the agent's own tables.

In process: the agent (direct mode, offline backend) and our SIP caller. Found by running each kind of call
30-60 times and comparing every table reachable from the agent before and after (docs/benchmarks.md, soak).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bridge_helpers import bridge_config, call_rig

from sipagent.sip.front import HANGUP_ANSWER_WAIT_S

pytestmark = pytest.mark.timeout(60)


def test_a_call_hung_up_on_a_vanished_phone_queues_no_audio_and_lets_go_before_its_bye_times_out(
        tmp_path: Path) -> None:
    asyncio.run(_vanished(tmp_path))


async def _vanished(tmp_path: Path) -> None:
    """The phone is gone without a BYE (a PBX restarted, a NAT binding expired): the agent hangs up (media
    timeout, idle timeout, end_call), and its BYE goes unanswered for timer F (32 s). The call is over once the
    BYE is out (RFC 3261 15.1.1): the bridge waits a few seconds for the answer, no longer. While it waits, the
    call's endpoint still ticks, and its frames must not pile up, 50 a second, for a Realtime session that is
    closed; then the bridge, its RTP ports and its records let go, and the BYE's retransmissions go on alone."""
    async with call_rig(bridge_config(tmp_path)) as rig:
        await rig.wait_for(lambda: rig.caller.call_id in rig.agent.bridges, 5, "the bridge")
        bridge = rig.bridge
        await rig.wait_for(lambda: bridge.call_state.live, 5, "the call to be live")
        await rig.caller.vanish()
        bridge.call_state.finish("media-timeout")  # what media.rtp_timeout_s does, without waiting 5 s for it
        await rig.wait_for(lambda: not bridge._tasks, 5, "the call's tasks to stop")
        await asyncio.sleep(1.0)  # the BYE is unanswered: the call is still being hung up
        assert rig.caller.call_id in rig.agent.bridges, "the BYE was answered: nothing measured"
        queued = bridge.realtime.outbox.qsize()
        await asyncio.sleep(0.5)
        assert (queued, bridge.realtime.outbox.qsize()) == (0, 0), "caller audio queued for a closed session"
        await rig.wait_for(lambda: rig.caller.call_id not in rig.agent.bridges, HANGUP_ANSWER_WAIT_S + 3,
                           "the bridge to let go of the call")
        assert [outcome.reason for outcome in rig.outcomes] == ["media-timeout"]
        assert rig.agent.ports.in_use == 0, "the call's RTP ports are held while its BYE goes unanswered"
