"""A customer keys a number in on a real phone (baresip, through Kamailio) when the agent asks for it.

The agent asks with the collect_digits tool (the local backend's scripted brain: "*" asks for the order
number, so no speech recognition is involved); baresip sends the keys from its command interface
(``sndcode``) as RFC 4733 telephone-events; collect_digits returns them and the order keyed in is read back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from harness import agent_settings, entries, load_settings, phones, read_transcript, run, running, wait_until
from peers import Kamailio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

INTENTS = [{
    "name": "order_status", "phrases": ["pressed *"], "reply": "Let me check that order for you.",
    "tool": {"name": "lookup_order", "arguments": {"order_id": "{digits}"}},
    "ask_digits": {"prompt": "Please key in your order number, then press the hash key.",
                   "arguments": {"max_digits": 8}, "spoken_digits": False},
}]
TOOLS = [
    {"name": "lookup_order", "url": "builtin:demo-orders",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}},
    {"name": "collect_digits"},
]


def test_collect_digits_returns_what_a_phone_keyed_in(
    kamailio: Kamailio, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sipagent")

    async def scenario() -> None:
        data = agent_settings(kamailio, "2141", tmp_path)
        data["realtime"]["local"]["intents"] = INTENTS
        data["agent"]["tools"] = TOOLS
        async with running(load_settings(data)) as agent, phones(tmp_path, kamailio, ["1141"],
                                                                 codecs=["PCMU"]) as (phone,):
            await phone.dial(f"sip:2141@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            await agent.wait_greeted(call_id)
            transcript = agent.agent.bridges[call_id].transcript
            assert transcript is not None
            path = transcript.path

            def logged(kind: str, name: str) -> bool:
                return bool(entries(read_transcript(path), kind, name=name))

            await phone.send_dtmf("*")
            assert await wait_until(lambda: logged("tool_call", "collect_digits"), 20), read_transcript(path)
            await agent.wait_quiet(call_id, 20)  # the prompt has been heard
            await phone.send_dtmf("1234#")
            assert await wait_until(lambda: logged("tool_result", "collect_digits"), 20), read_transcript(path)
            assert await wait_until(
                lambda: any("Order 1234 is being prepared" in line for line in agent.lines(call_id, "agent")), 30
            ), agent.said
            await phone.hangup()
            await agent.wait_outcome(call_id, 15)
        lines = read_transcript(path)
        (result,) = entries(lines, "tool_result", name="collect_digits")
        assert result["ok"] and result["output"] == {"digits": "1234", "ended_by": "terminator", "count": 4}
        assert [e["digit"] for e in entries(lines, "dtmf")] == list("*1234#")
        assert [e["arguments"] for e in entries(lines, "tool_call", name="lookup_order")] == [{"order_id": "1234"}]
        # The keys came as RFC 4733 telephone-events on the RTP stream, not as SIP INFO.
        rtp_digits = [r.getMessage() for r in caplog.records if r.name == "sipagent.rtp.endpoint"]
        assert sum(" DTMF " in message for message in rtp_digits) == 6, rtp_digits
        assert "by INFO" not in caplog.text

    run(scenario(), 150)

