"""A call the PBX moves around: switched to another codec mid-greeting, held, resumed, and a conversation throughout.

Kamailio plays the PBX that changes the codec (the phone dials ``;offer=PCMU;reoffer=PCMA``: the proxy narrows
its first offer to μ-law and turns its re-INVITEs' offers into A-law, see tests/integration/peers/kamailio.cfg);
baresip is the phone that holds and resumes; the agent is the product with the offline backend.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import numpy as np
import pytest
from harness import (
    Audio,
    agent_settings,
    demo_settings,
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

from sipagent.realtime.local.asr import GrammarRecognizer

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

QUESTION = "i would like a refund"  # of the demo's phrases, the one its recogniser gets in narrowband too
ANSWER = "You can return any item within thirty days."
GOODBYE = "that is all thank you"
AGENT_LINES = [
    "Thanks for calling Northwind Outfitters. How can I help you today?",
    "You can return any item within thirty days. I will email you a prepaid return label.",
    "Sorry, I can help with orders, returns, or put you through to a colleague.",
    "Thank you for calling Northwind. Goodbye.",
]
CALLER_LINES = ["where is my order", "how do i return an item", QUESTION, GOODBYE]


def readings(audio: Audio, lines: list[str]) -> list[str]:
    """The recogniser's readings of each stretch of speech in ``audio``, each cut with 0.4, 0.6 and 0.8 s of
    lead-in (on narrowband audio the grammar recogniser is that sensitive to where an utterance starts)."""
    frame = audio.rate // 50
    frames = audio.samples[: len(audio.samples) // frame * frame].reshape(-1, frame)
    loud = list(20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-12) > -35)
    recognizer = GrammarRecognizer(lines)
    out: list[str] = []
    start: int | None = None
    quiet = 0
    for index, is_loud in enumerate([*loud, *[False] * 25]):
        if is_loud:
            start, quiet = (index if start is None else start), 0
        elif start is not None:
            quiet += 1
            if quiet == 25:
                for lead in (20, 30, 40):
                    out.append(recognizer.recognize(Audio(audio.samples[max(0, start - lead) * frame:index * frame],
                                                          audio.rate).pcm24k()))
                start = None
    return out


def test_call_switched_to_another_codec_held_and_resumed(kamailio: Kamailio, tmp_path: Path) -> None:
    """Greeting in μ-law, moved to A-law mid-greeting, a question answered, the caller holds and resumes, then
    says goodbye and the agent hangs up. (baresip 1.0 stops recording what it hears at its own hold, so the
    phone's hearing is checked on the answer before the hold; the agent's, on everything after it.)"""

    async def scenario() -> None:
        local = copy.deepcopy(demo_settings()["realtime"]["local"])
        local["vad"]["prefix_ms"] = 600  # the recogniser needs this much lead-in on G.711
        config = load_settings(agent_settings(kamailio, "2301", tmp_path, media={"codecs": ["G722", "PCMA", "PCMU"]},
                                              realtime={"local": local}))
        async with running(config) as agent, phones(tmp_path, kamailio, ["1301"], codecs=["PCMU", "PCMA"],
                                                    record=True) as (phone,):
            question, goodbye = tmp_path / "question.wav", tmp_path / "goodbye.wav"
            write_prompt(question, QUESTION, rate=phone.source_rate)
            write_prompt(goodbye, GOODBYE, rate=phone.source_rate)
            await phone.dial(f"sip:2301@{kamailio.address};offer=PCMU;reoffer=PCMA")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()
            (call_id,) = await agent.wait_calls(1, 10)
            bridge = agent.agent.bridges[call_id]
            endpoint = bridge.media.endpoint  # type: ignore[attr-defined]  # the agent's _MediaLeg
            assert bridge.codec == "PCMU"
            assert await wait_until(lambda: bridge.media.played_ms >= 1000, 20), "the greeting did not start"
            # In mid-greeting the PBX moves the call to A-law (the phone's re-INVITE, its offer rewritten).
            assert (await phone.command("reinvite"))["ok"]
            assert await wait_until(lambda: bridge.codec == "PCMA", 5), bridge.codec
            await agent.wait_greeted(call_id)
            assert bridge.media.played_ms == bridge.conversation.queued_ms, "greeting audio lost or replayed"
            await phone.set_source(question)
            await agent.wait_said(call_id, "agent", 2, 30)
            await agent.wait_quiet(call_id, 30)
            # The caller holds: the agent goes quiet on the wire, then plays on when the caller is back.
            assert (await phone.command("hold"))["ok"]
            assert await wait_until(lambda: bridge.on_hold, 5), "the agent never learned of the hold"
            await asyncio.sleep(0.1)
            sent = endpoint.packets_sent
            await asyncio.sleep(3)
            assert endpoint.packets_sent == sent, "RTP into the held call"
            assert (await phone.command("resume"))["ok"]
            assert await wait_until(lambda: not bridge.on_hold and endpoint.packets_sent > sent, 5)
            # Back from the hold, the caller says goodbye: understood, answered, and the agent hangs up.
            await phone.set_source(goodbye)
            assert await phone.wait_event("CALL_CLOSED", 45), phone.event_types()
            outcome = await agent.wait_outcome(call_id, 15)
        assert outcome.reason == "agent-hangup" and outcome.transcript_path and outcome.recording_path
        transcript = read_transcript(outcome.transcript_path)
        said = [e["text"] for e in entries(transcript, "caller")]
        replies = [e["text"] for e in entries(transcript, "agent")]
        assert said == [QUESTION, GOODBYE] and ANSWER in replies[1] and "Goodbye" in replies[-1], transcript
        assert entries(transcript, "call", event="start")[0]["codec"] == "PCMU"
        events = [(e["event"], e.get("codec") or e.get("direction")) for e in entries(transcript, "event")]
        assert events == [("codec-change", "PCMA"), ("hold", "recvonly"), ("resume", None)], events
        log = phone.log_path.read_text(errors="replace")
        assert "Set audio encoder: PCMA 8000Hz" in log and "Set audio decoder: PCMA 8000Hz" in log
        # Both sides' audio, recognised: the answer as the phone decoded it in A-law, and the agent's recording
        # of the caller, both utterances (the second after the hold).
        (heard,) = phone.recordings("dec")
        assert any("thirty days" in text for text in readings(Audio.read(heard), AGENT_LINES)), \
            readings(Audio.read(heard), AGENT_LINES)
        caller_side = readings(Audio.read_channel(outcome.recording_path, 0), CALLER_LINES)
        assert QUESTION in caller_side and GOODBYE in caller_side, caller_side

    run(scenario(), 150)
