"""A customer calls the agent's extension through the PBX and has a conversation with it.

The phone is baresip: it plays spoken prompts (espeak-ng WAVs) through its aufile source, sends DTMF,
and its sndfile module records what it heard. The agent is the real product with the offline backend.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from harness import (
    GREETING,
    ORDER_ANSWER,
    Audio,
    agent_settings,
    entries,
    load_settings,
    phones,
    read_transcript,
    run,
    running,
    speech_segments,
    wait_until,
    write_prompt,
)
from peers import Kamailio

from sipagent.realtime.local.asr import GrammarRecognizer

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

QUESTION = "where is my order seven seven two one"
# What the agent may say on this line; recognising the answer among them shows the caller heard it.
AGENT_LINES = [
    GREETING,
    "Let me check that order for you.",
    # espeak-ng reads "Order 7721 has shipped with UPS ..." as below.
    "Order seven thousand seven hundred and twenty one has shipped with u p s and should arrive on Thursday.",
    "Sorry, I can help with orders, returns, or put you through to a colleague.",
    "You can return any item within thirty days.",
]


def test_caller_asks_a_question_and_hears_the_answer(kamailio: Kamailio, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, "2101", tmp_path))
        async with running(config) as agent, phones(tmp_path, kamailio, ["1101"], codecs=["G722"],
                                                    record=True) as (phone,):
            question = tmp_path / "question.wav"
            lead_s = 0.3
            spoken_s = write_prompt(question, QUESTION, lead_s=lead_s, rate=phone.source_rate)
            loop = asyncio.get_running_loop()
            await phone.dial(f"sip:2101@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            established = loop.time()
            (call_id,) = await agent.wait_calls(1, 10)
            await agent.wait_greeted(call_id)
            asked = loop.time()
            await phone.set_source(question)
            said = await agent.wait_said(call_id, "caller", 1, 30)
            assert "where is my order" in said[0]
            replies = await agent.wait_said(call_id, "agent", 3, 45)
            await agent.wait_quiet(call_id, 30)
            await phone.hangup()
            assert await phone.wait_event("CALL_CLOSED", 15), phone.event_types()
            outcome = await agent.wait_outcome(call_id, 15)
        assert replies[0] == GREETING and ORDER_ANSWER in replies[2], replies
        assert outcome.reason == "remote-hangup"

        # The transcript: the caller's words, the tool call with its result, then the spoken answer.
        assert outcome.transcript_path is not None
        transcript = read_transcript(outcome.transcript_path)
        assert entries(transcript, "call", event="start")[0]["codec"] == "G722"
        caller = entries(transcript, "caller")
        tool = entries(transcript, "tool_call", name="lookup_order")
        result = entries(transcript, "tool_result", name="lookup_order")
        answer = [e for e in entries(transcript, "agent") if ORDER_ANSWER in e["text"]]
        assert caller and tool and result and answer, transcript
        assert tool[0]["arguments"] == {"order_id": "7721"} and result[0]["ok"] is True
        assert caller[0]["t"] <= tool[0]["t"] <= answer[0]["t"]
        assert entries(transcript, "call", event="end")[0]["reason"] == "remote-hangup"

        # What the phone heard: the greeting, quiet while it asked, then the answer.
        (heard_path,) = phone.recordings("dec")
        heard = Audio.read(heard_path)
        assert heard.rate == 16000  # G.722's clock: the HD call reached the phone's decoder
        question_at = asked - established
        answered_at = question_at + lead_s + spoken_s
        assert heard.window(0, question_at).voiced_seconds() >= 2.0, "the greeting was not heard"
        assert heard.window(question_at + 0.5, answered_at).voiced_seconds() <= 0.5, "agent spoke over it"
        after = heard.window(answered_at)
        assert after.voiced_seconds() >= 3.0, f"only {after.voiced_seconds():.1f} s of answer heard"
        recognizer = GrammarRecognizer(AGENT_LINES)
        heard_text = [recognizer.recognize(segment.pcm24k()) for segment in speech_segments(after)]
        assert any("shipped" in text for text in heard_text), heard_text

    run(scenario(), 150)


@pytest.mark.parametrize("codec", ["G722", "PCMA"])
def test_caller_gets_the_only_codec_it_offers(kamailio: Kamailio, tmp_path: Path, codec: str) -> None:
    """HD voice end to end when the phone offers only G.722; G.711 A-law when that is all it has."""
    user = {"G722": "2111", "PCMA": "2112"}[codec]
    phone_user = {"G722": "1111", "PCMA": "1112"}[codec]

    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, user, tmp_path))
        async with running(config) as agent, phones(tmp_path, kamailio, [phone_user], codecs=[codec],
                                                    record=True) as (phone,):
            hello = tmp_path / "hello.wav"
            write_prompt(hello, "can i speak to a human", rate=phone.source_rate)
            await phone.dial(f"sip:{user}@{kamailio.address}")
            established = await phone.wait_event("CALL_ESTABLISHED", 20)
            assert established is not None, phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            assert agent.agent.bridges[call_id].media.codec == codec
            await agent.wait_greeted(call_id)
            await phone.set_source(hello)
            # The caller's speech crossed the codec: the agent took it as a turn and replied. (The offline
            # recogniser often finds no words in narrowband audio; the fallback reply is still a reply.)
            replies = await agent.wait_said(call_id, "agent", 2, 30)
            assert replies[1] != config.agent.idle_prompt, replies
            await phone.hangup()
            assert await phone.wait_event("CALL_CLOSED", 15), phone.event_types()
            outcome = await agent.wait_outcome(call_id, 15)
        assert outcome.transcript_path is not None
        transcript = read_transcript(outcome.transcript_path)
        assert entries(transcript, "call", event="start")[0]["codec"] == codec
        log = phone.log_path.read_text(errors="replace")
        rate = 16000 if codec == "G722" else 8000
        assert f"Set audio decoder: {codec} {rate}Hz" in log and f"Set audio encoder: {codec} {rate}Hz" in log
        for other in {"G722", "PCMU", "PCMA"} - {codec}:
            assert f"Set audio decoder: {other}" not in log
        (heard_path,) = phone.recordings("dec")
        heard = Audio.read(heard_path)
        assert heard.rate == rate
        assert heard.voiced_seconds() >= 2.0, "the phone heard no greeting"
        assert outcome.recording_path is not None
        caller_side = Audio.read_channel(outcome.recording_path, 0)
        assert caller_side.voiced_seconds() >= 0.5, "the agent received no speech from the phone"

    run(scenario(), 120)


def test_dtmf_digits_reach_the_transcript(
    kamailio: Kamailio, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sipagent")

    async def scenario() -> None:
        config = load_settings(agent_settings(kamailio, "2121", tmp_path))
        async with running(config) as agent, phones(tmp_path, kamailio, ["1121"], codecs=["G722"]) as (phone,):
            await phone.dial(f"sip:2121@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            await agent.wait_greeted(call_id)
            await phone.send_dtmf("4711#")
            transcript_path = agent.agent.bridges[call_id].transcript
            assert transcript_path is not None
            path = transcript_path.path
            assert await wait_until(lambda: bool(entries(read_transcript(path), "dtmf_sent")), 20), (
                read_transcript(path))
            await phone.hangup()
            outcome = await agent.wait_outcome(call_id, 15)
        assert outcome.transcript_path == path
        transcript = read_transcript(path)
        assert [e["digit"] for e in entries(transcript, "dtmf")] == list("4711#")
        assert all(e["duration_ms"] > 0 for e in entries(transcript, "dtmf"))
        assert entries(transcript, "dtmf_sent")[0]["text"] == "caller pressed 4 7 1 1 #"
        # They came as RFC 4733 telephone-events on the RTP stream, not as SIP INFO.
        rtp_digits = [r.getMessage() for r in caplog.records if r.name == "sipagent.rtp.endpoint"]
        assert sum(" DTMF " in message for message in rtp_digits) == 5, rtp_digits
        assert "by INFO" not in caplog.text

    run(scenario(), 120)


def test_transfer_to_a_colleague(kamailio: Kamailio, tmp_path: Path) -> None:
    """The model calls transfer_call; the caller ends up talking to extension 1132; the agent leaves."""

    async def scenario() -> None:
        target = f"sip:1132@{kamailio.address}"
        config = load_settings(agent_settings(kamailio, "2131", tmp_path, agent={"transfer_target": target}))
        async with running(config) as agent, \
                phones(tmp_path, kamailio, ["1131"], codecs=["G722"]) as (phone,), \
                phones(tmp_path, kamailio, ["1132"], codecs=["G722"], answer=True) as (colleague,):
            request = tmp_path / "transfer.wav"
            write_prompt(request, "i want to talk to a person", rate=phone.source_rate)
            await phone.dial(f"sip:2131@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            await agent.wait_greeted(call_id)
            await phone.set_source(request)
            await agent.wait_said(call_id, "caller", 1, 30)
            outcome = await agent.wait_outcome(call_id, 60)
            assert outcome.reason == "transferred", outcome
            answered = await colleague.wait_event("CALL_ESTABLISHED", 20)
            assert answered is not None, colleague.event_types()
            assert "1131" in str(answered.data.get("peeruri")), answered.data
            # The caller's phone: its call with the agent closed, a new one with the colleague is up.
            assert await phone.wait_count("CALL_ESTABLISHED", 2, 20), phone.event_types()
            assert await phone.wait_event("CALL_CLOSED", 20), phone.event_types()
            calls = str((await phone.command("listcalls")).get("data", ""))
            assert "ESTABLISHED" in calls and "1132@" in calls and "2131@" not in calls, calls
            assert agent.agent.ua is not None and agent.agent.ua.active_calls == 0
            await phone.hangup()
            assert await colleague.wait_event("CALL_CLOSED", 15), colleague.event_types()
        assert outcome.transcript_path is not None
        transcript = read_transcript(outcome.transcript_path)
        assert entries(transcript, "tool_call", name="transfer_call"), transcript
        assert entries(transcript, "event", event="transfer", target="default", uri=target), transcript
        assert entries(transcript, "call", event="end")[0]["reason"] == "transferred"

    run(scenario(), 150)
