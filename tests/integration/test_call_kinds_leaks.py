"""What a call of a given kind leaves behind, measured exactly in the agent's own tables.

In process: the agent (direct mode, offline backend) and our SIP caller. Found by running each kind of call
30-60 times and comparing every table reachable from the agent before and after (docs/benchmarks.md, soak).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bridge_helpers import bridge_config, call_rig

pytestmark = pytest.mark.timeout(60)


def test_a_call_hung_up_on_a_vanished_phone_queues_no_audio_while_its_bye_goes_unanswered(tmp_path: Path) -> None:
    asyncio.run(_vanished(tmp_path))


async def _vanished(tmp_path: Path) -> None:
    """The phone is gone without a BYE (a PBX restarted, a NAT binding expired): the agent hangs up (media
    timeout, idle timeout, end_call), and its BYE goes unanswered for timer F (32 s). Meanwhile the call's
    endpoint still ticks, and its frames must not pile up, 50 a second, for a Realtime session that is closed."""
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
