"""Graceful shutdown with a call in progress: no new calls, the active one ends politely, then exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bridge_helpers import bridge_config, call_rig

from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import CallFailed, SipCaller


def test_shutdown_refuses_new_calls_and_ends_the_active_one_politely(tmp_path: Path) -> None:
    config = bridge_config(tmp_path, agent={"greeting": "Hello.", "goodbye": "We are closing now. Goodbye."})

    async def main() -> None:
        async with call_rig(config) as rig:
            await rig.agent_turn(timeout=15)  # the greeting has been heard: the call is live
            heard_before = rig.caller.heard.audio_frames
            stopping = asyncio.ensure_future(rig.agent.stop(grace_s=1.0))
            await asyncio.sleep(0.2)
            # A new call during the grace period is refused with 503.
            _, high = config.media.rtp_port_range
            late = SipCaller(rig.clock, PortAllocator(high + 40, high + 59),
                             f"sip:agent@127.0.0.1:{rig.agent.sip_address[1]}", host="127.0.0.1")
            with pytest.raises(CallFailed, match="503"):
                await late.dial(timeout=5)
            # The active call outlives the grace time, so the agent says goodbye and hangs up.
            await asyncio.wait_for(rig.caller.ended.wait(), 20)
            await asyncio.wait_for(stopping, 20)
            assert rig.caller.end_reason == "remote-bye"
            assert rig.caller.heard.audio_frames - heard_before > 50  # > 1 s of goodbye was heard
            outcome = await rig.wait_outcome()
            assert outcome.reason == "agent-hangup"

    asyncio.run(main())
