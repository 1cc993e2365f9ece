"""A PBX whose ACK never arrives (NAT on the way back, a wrong sip.public_address): the agent re-sends its 200
OK until timer H, then hangs up with BYE, says in the log where to look, and counts the call as an error.

The agent runs in this process with RFC 3261's T1 scaled down (timer H is 64*T1: 32 s, here 3.2 s); the PBX
is SIPp, which never ACKs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from bridge_helpers import bridge_config
from peers import require
from sipp import sipp_scenario

from sipagent.agent import Agent
from sipagent.sip import transaction

pytestmark = pytest.mark.timeout(60)


def test_a_200_never_acked_is_ended_with_bye_said_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require("sipp")
    monkeypatch.setattr(transaction, "T1", 0.05)
    caplog.set_level(logging.WARNING, logger="sipagent.agent")

    async def scenario() -> None:
        agent = Agent(bridge_config(tmp_path))
        await agent.start()
        try:
            with sipp_scenario("uac_call_no_ack.xml", agent.sip_address, tmp_path / "sipp", keys={"user": "agent"},
                               timeout_s=30) as run:
                result = await asyncio.to_thread(run.wait, 30)
            assert result.returncode == 0, result.failed()
            assert agent.stats.outcomes == {"error": 1}
            counted = agent.metrics.registry.get_sample_value("sipagent_calls_total", {"outcome": "error"})
            assert counted == 1 and not agent.bridges
        finally:
            await agent.stop()

    asyncio.run(scenario())
    assert "no ACK for our 200 OK" in caplog.text and "sip.public_address" in caplog.text
