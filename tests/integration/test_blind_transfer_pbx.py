"""Blind transfer end to end against `sipagent run` (the Realtime backend of test_warm_transfer asks for
``transfer_call`` after the greeting), with SIPp playing what a PBX does with the REFER.

A PBX that answers the REFER with 202 and sends BYE to the transferor before any final NOTIFY (Asterisk's
chan_pjsip when the transferor's channel is hung up during a blind transfer; its progress NOTIFYs come after
the BYE): the call is a transfer, not a caller hanging up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from agent_helpers import running_agent
from peers import require
from sipp import sipp_scenario
from test_warm_transfer import backend

pytestmark = pytest.mark.timeout(60)

DESK = "sip:desk@127.0.0.1:5099"


def test_asterisks_bye_right_after_the_202_counts_as_transferred(tmp_path: Path) -> None:
    require("sipp")
    with contextlib.ExitStack() as stack:
        _, ws_url = stack.enter_context(backend(DESK))
        sections = {"realtime": {"url": ws_url},
                    "agent": {"greeting": "Hello.", "tools": [{"name": "transfer_call"}],
                              "transfer_targets": {"sales": DESK}, "transfer": {"mode": "blind"}}}
        agent = stack.enter_context(running_agent(tmp_path, sections=sections))
        with sipp_scenario("uac_blind_transfer_bye_after_202.xml", agent.target, tmp_path / "pbx",
                           keys={"user": "agent"}, timeout_s=25) as pbx:
            result = pbx.wait(30)
        assert result.returncode == 0, result.failed() + agent.log.read_text()[-4000:]
        agent.wait_metric('sipagent_calls_total{outcome="transferred"}', lambda v: v == 1, 10)
        log = agent.log.read_text()
    refer = next(block for block in result.messages.split("\n\n") if block.lstrip().startswith("REFER "))
    assert f"Refer-To: <{DESK}>" in refer, refer
    assert "BYE after the REFER's 2xx" in log, log[-3000:]
