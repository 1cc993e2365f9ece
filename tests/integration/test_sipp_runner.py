"""The SIPp runner the PBX-behaviour tests build on: a scripted call into a running agent, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import running_agent
from peers import require
from sipp import sipp_scenario

pytestmark = pytest.mark.timeout(90)


def test_a_scripted_pbx_call_is_answered_and_hung_up(tmp_path: Path) -> None:
    require("sipp")
    with running_agent(tmp_path) as agent, \
            sipp_scenario("uac_call.xml", agent.target, tmp_path / "sipp", keys={"user": "agent"}, pause_ms=1500,
                          timeout_s=30) as run:
        result = run.wait(30)
        assert result.returncode == 0, result.failed()
        # The bridge counts the call once it has wound down, a moment after the BYE was answered.
        agent.wait_metric('sipagent_calls_total{outcome="remote-hangup"}', lambda v: v == 1, 10)
    assert "SIP/2.0 200 OK" in result.messages and "BYE sip:" in result.messages
