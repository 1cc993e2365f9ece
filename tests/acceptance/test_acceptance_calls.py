"""Call handling as a PBX sees it: hang-ups from either side, CANCEL while ringing, several calls at
once, and a caller who never says anything."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import (
    GREETING,
    Audio,
    agent_settings,
    entries,
    load_settings,
    phones,
    read_transcript,
    run,
    running,
    wait_until,
    write_prompt,
)
from peers import Kamailio

from sipagent.agent import Agent
from sipagent.sip.ua import IncomingCall

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]


def test_caller_hangs_up(kamailio: Kamailio, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, "2201", tmp_path))
        async with running(config) as agent, phones(tmp_path, kamailio, ["1201"], codecs=["G722"]) as (phone,):
            await phone.dial(f"sip:2201@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            await agent.wait_said(call_id, "agent", 1, 45)
            await phone.hangup()  # BYE from the caller
            assert await phone.wait_event("CALL_CLOSED", 15), phone.event_types()
            outcome = await agent.wait_outcome(call_id, 15)
            assert agent.agent.ua is not None and agent.agent.ua.active_calls == 0
            assert not agent.agent.bridges
        assert outcome.reason == "remote-hangup"
        assert outcome.transcript_path is not None
        transcript = read_transcript(outcome.transcript_path)
        assert entries(transcript, "call", event="end")[0]["reason"] == "remote-hangup"

    run(scenario(), 120)


def test_agent_says_goodbye_and_hangs_up(kamailio: Kamailio, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, "2211", tmp_path))
        async with running(config) as agent, phones(tmp_path, kamailio, ["1211"], codecs=["G722"]) as (phone,):
            goodbye = tmp_path / "goodbye.wav"
            write_prompt(goodbye, "that is all thank you", rate=phone.source_rate)
            await phone.dial(f"sip:2211@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            await agent.wait_greeted(call_id)
            await phone.set_source(goodbye)
            closed = await phone.wait_event("CALL_CLOSED", 45)  # BYE from the agent
            assert closed is not None, phone.event_types()
            outcome = await agent.wait_outcome(call_id, 15)
        assert outcome.reason == "agent-hangup"
        assert outcome.transcript_path is not None
        transcript = read_transcript(outcome.transcript_path)
        assert entries(transcript, "tool_call", name="end_call"), transcript
        farewell = entries(transcript, "agent")[-1]
        assert "Goodbye" in farewell["text"], transcript
        assert farewell["t"] <= entries(transcript, "call", event="end")[0]["t"]

    run(scenario(), 120)


class SlowAnswerAgent(Agent):
    """Test hook: the product answers at once (no ring delay setting), too fast for a CANCEL to win.
    This agent lets each call ring until the caller gives up or 20 s pass, then handles it as usual."""

    ringing: list[IncomingCall]

    async def _on_call(self, call: IncomingCall) -> None:
        self.ringing = [*getattr(self, "ringing", []), call]
        try:
            await asyncio.wait_for(call.ended.wait(), 20)
        except TimeoutError:
            await super()._on_call(call)


def test_caller_cancels_while_ringing(kamailio: Kamailio, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, "2221", tmp_path))
        async with running(config, SlowAnswerAgent) as agent, \
                phones(tmp_path, kamailio, ["1221"], codecs=["G722"]) as (phone,):
            slow = agent.agent
            assert isinstance(slow, SlowAnswerAgent)
            await phone.dial(f"sip:2221@{kamailio.address}")
            assert await phone.wait_event("CALL_RINGING", 20), phone.event_types()
            assert await wait_until(lambda: bool(getattr(slow, "ringing", [])), 10)
            (call,) = slow.ringing
            assert call.state == "ringing"
            await phone.hangup()  # CANCEL through the proxy
            assert await phone.wait_event("CALL_CLOSED", 15), phone.event_types()
            await asyncio.wait_for(call.ended.wait(), 15)
            assert call.end_reason == "cancelled"
            assert "CALL_ESTABLISHED" not in phone.event_types()
            assert slow.ua is not None and slow.ua.active_calls == 0
            assert not agent.outcomes and not slow.bridges

    run(scenario(), 90)


@pytest.mark.parametrize("count", [2, 10])
def test_simultaneous_calls_are_all_answered_and_greeted(kamailio: Kamailio, tmp_path: Path, count: int) -> None:
    agent_user = f"23{count:02d}"
    users = [f"1{count:02d}{i}" for i in range(count)]  # e.g. 1020, 1021 / 1100 … 1109

    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, agent_user, tmp_path))
        async with running(config) as agent, \
                phones(tmp_path, kamailio, users, codecs=["G722"], record=True) as callers:
            await asyncio.gather(*(phone.dial(f"sip:{agent_user}@{kamailio.address}") for phone in callers))
            for phone in callers:
                assert await phone.wait_event("CALL_ESTABLISHED", 60), (phone.user, phone.event_types())
            call_ids = await agent.wait_calls(count, 30)
            assert len(call_ids) == count
            for call_id in call_ids:
                assert await agent.wait_said(call_id, "agent", 1, 90) == [GREETING]
            for call_id in call_ids:
                await agent.wait_quiet(call_id, 30)
            await asyncio.gather(*(phone.hangup() for phone in callers))
            for phone in callers:
                assert await phone.wait_event("CALL_CLOSED", 30), (phone.user, phone.event_types())
            outcomes = [await agent.wait_outcome(call_id, 30) for call_id in call_ids]
        assert [outcome.reason for outcome in outcomes] == ["remote-hangup"] * count
        assert not {"rejected-busy", "rejected-codec"} & set(agent.agent.stats.outcomes)
        # Every phone heard its own greeting, and every call's recording shows the agent speaking.
        for phone in callers:
            (heard,) = phone.recordings("dec")
            assert Audio.read(heard).voiced_seconds() >= 2.0, f"{phone.user} heard no greeting"
        for outcome in outcomes:
            assert outcome.recording_path is not None
            assert Audio.read_channel(outcome.recording_path, 1).voiced_seconds() >= 2.0

    run(scenario(), 170)


def test_silent_caller_is_prompted_then_let_go(kamailio: Kamailio, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, "2231", tmp_path, agent={"idle_timeout_s": 2}))
        async with running(config) as agent, phones(tmp_path, kamailio, ["1231"], codecs=["G722"]) as (phone,):
            await phone.dial(f"sip:2231@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            closed = await phone.wait_event("CALL_CLOSED", 60)  # the agent ends the call
            assert closed is not None, phone.event_types()
            outcome = await agent.wait_outcome(call_id, 15)
        assert outcome.reason == "agent-hangup"
        assert outcome.transcript_path is not None
        transcript = read_transcript(outcome.transcript_path)
        prompt = entries(transcript, "event", event="idle-prompt")
        hangup = entries(transcript, "event", event="idle-hangup")
        assert len(prompt) == 1 and len(hangup) == 1, transcript
        assert not entries(transcript, "caller")
        said = [(e["t"], e["text"]) for e in entries(transcript, "agent")]
        texts = [text for _, text in said]
        assert texts == [GREETING, config.agent.idle_prompt, config.agent.goodbye], texts
        # Greeting, then the prompt after the idle time, then the polite goodbye, then the BYE.
        assert said[0][0] < prompt[0]["t"] <= said[1][0] < hangup[0]["t"] <= said[2][0]
        assert hangup[0]["t"] - said[1][0] >= config.agent.idle_timeout_s - 0.5
        assert said[2][0] <= entries(transcript, "call", event="end")[0]["t"]

    run(scenario(), 120)
