"""Calls the agent places, end to end with real peers: Kamailio as the PBX, baresip as the called phone.

`sipagent call` runs as a real process (answered: the phone hears the agent; busy; no answer, each with its
exit code); a running agent places and ends a call through its control API, and refuses one without the
token; a phone that answers with a voicemail greeting and a beep is hung up on, or gets the message after
the beep.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import yaml
from bridge_helpers import bridge_config, bridge_config_data
from peers import Baresip, Kamailio, free_port, wait_until
from srtp_helpers import read_pcm24k
from test_amd_speech import beep, silence, speech
from test_control_api import request
from test_events_webhook import SECRET, receiver
from test_hold_and_codec_change import AGENT_LINES, ANSWER, GREETING, LOUD_DB, recognised

from sipagent.agent import Agent
from sipagent.config import Config
from sipagent.media.vad import level_db
from sipagent.outbound.calls import CallRefused, CallRequest, OutboundCall
from sipagent.outbound.one_call import EXIT_CODES

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"  # the one test_control_api's request() sends
NO_AMD = {"detect": False}


def agent_sections(kamailio: Kamailio, user: str, *, greeting: str = ANSWER,
                   answering_machine: dict[str, Any] | None = None, **more: dict[str, Any]) -> dict[str, Any]:
    """The agent registered as ``user`` on ``kamailio``, dialing from that account."""
    return {
        "sip": {"registrar": kamailio.address, "domain": "127.0.0.1", "username": user,
                "password": f"secret{user}", "expires": 60},
        "agent": {"greeting": greeting, "idle_timeout_s": 0, "answering_machine": answering_machine or NO_AMD},
        "outbound": {"ring_timeout_s": 5},
        **more,
    }


def sipagent_call(tmp_path: Path, sections: dict[str, Any], target: str) -> subprocess.Popen[str]:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(bridge_config_data(tmp_path / "rec", **sections)))
    return subprocess.Popen([sys.executable, "-m", "sipagent.cli", "call", "-c", str(config), target],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


async def finished(process: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    out, err = await asyncio.to_thread(process.communicate, timeout=timeout)
    return process.returncode, out + err


def output_of(process: subprocess.Popen[str]) -> str:
    """What a process that went wrong said (it is killed)."""
    process.kill()
    out, err = process.communicate(timeout=5)
    return out + err


def heard(phone: Baresip) -> bytes:
    """What the phone heard (24 kHz PCM16), from its longest recording of the far end."""
    return read_pcm24k(max(phone.recordings("dec"), key=lambda p: p.stat().st_size))


def first_loud_s(pcm24k: bytes) -> float:
    return next((i / 48000 for i in range(0, len(pcm24k) - 959, 960) if level_db(pcm24k[i:i + 960]) >= LOUD_DB), -1)


def test_sipagent_call_answered_and_the_phone_hears_the_agent(
    kamailio: Kamailio, tmp_path: Path, baresip_available: None
) -> None:
    async def scenario() -> None:
        phone = Baresip(tmp_path / "phone", "7211", kamailio.address, answer=True, codecs=["PCMU"], record=True)
        await phone.start()
        process = sipagent_call(tmp_path, agent_sections(kamailio, "7210"), "sip:7211@127.0.0.1")
        try:
            assert await phone.wait_event("CALL_ESTABLISHED", 20), (phone.event_types(), output_of(process))
            await asyncio.sleep(8.0)  # the greeting (about 5 s), heard whole
            await phone.hangup()
            code, output = await finished(process)
        finally:
            if process.poll() is None:
                process.kill()
            await phone.close()
        assert code == 0, output
        assert "sip:7211@127.0.0.1: answered (remote-hangup)" in output, output
        assert any("thirty days" in text for text in recognised(heard(phone), AGENT_LINES))

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_sipagent_call_busy_and_no_answer_exit_codes(
    kamailio: Kamailio, tmp_path: Path, baresip_available: None
) -> None:
    async def scenario() -> None:
        phone = Baresip(tmp_path / "phone", "7221", kamailio.address)
        await phone.start()
        try:
            busy = sipagent_call(tmp_path / "busy", agent_sections(kamailio, "7220"), "sip:7221@127.0.0.1")
            assert await phone.wait_event("CALL_INCOMING", 20), phone.event_types()
            await phone.hangup()  # refusing a ringing call: 486
            code, output = await finished(busy)
            assert code == EXIT_CODES["busy"] == 10, output
            assert "sip:7221@127.0.0.1: busy" in output, output
            rings = phone.count_events("CALL_INCOMING")
            unanswered = sipagent_call(tmp_path / "ring", agent_sections(kamailio, "7220"), "sip:7221@127.0.0.1")
            assert await phone.wait_count("CALL_INCOMING", rings + 1, 20), phone.event_types()
            code, output = await finished(unanswered)  # outbound.ring_timeout_s: 5, then CANCEL
            assert code == EXIT_CODES["no-answer"] == 11, output
            assert "sip:7221@127.0.0.1: no-answer" in output, output
        finally:
            await phone.close()

    for sub in ("busy", "ring"):
        (tmp_path / sub).mkdir()
    asyncio.run(asyncio.wait_for(scenario(), 80))


def test_control_api_places_a_call_and_hangs_it_up(
    kamailio: Kamailio, tmp_path: Path, baresip_available: None
) -> None:
    async def scenario() -> None:
        port = free_port()
        config = bridge_config(tmp_path, **agent_sections(
            kamailio, "7230", control={"listen": f"127.0.0.1:{port}", "token": TOKEN}))
        agent = Agent(config)
        await agent.start()
        phone = Baresip(tmp_path / "phone", "7231", kamailio.address, answer=True, codecs=["PCMU"])
        await phone.start()
        try:
            assert agent.outbound is not None
            status, headers, body = await request(port, "POST", "/v1/calls", {"to": "7231"}, auth="")
            assert status == 401 and "error" in body and "bearer" in headers["www-authenticate"].lower()
            wrong = "Authorization: Bearer not-the-token\r\n"
            status, _, _ = await request(port, "POST", "/v1/calls", {"to": "7231"}, auth=wrong)
            assert status == 401
            await asyncio.sleep(1.0)
            assert agent.outbound.calls.active == 0 and not phone.events, phone.event_types()

            status, headers, call = await request(port, "POST", "/v1/calls",
                                                  {"to": "7231", "variables": {"first_name": "Ada"}})
            assert status == 201, call
            path = headers["location"]
            assert path == f"/v1/calls/{call['id']}" and call["to"] == "sip:7231@127.0.0.1"
            assert await phone.wait_event("CALL_ESTABLISHED", 15), phone.event_types()

            async def state() -> str:
                return str((await request(port, "GET", path))[2]["state"])

            assert await wait_until_async(lambda: state(), "answered", 5)
            assert len(agent.bridges) == 1  # answered and bridged to the model
            status, _, _ = await request(port, "DELETE", path)
            assert status == 202
            assert await phone.wait_event("CALL_CLOSED", 10), phone.event_types()
            assert await wait_until_async(lambda: state(), "ended", 10)
            status, _, ended = await request(port, "GET", path)
            assert (ended["outcome"], ended["end_reason"]) == ("answered", "hung up: cancelled by request"), ended
            assert agent.outbound.calls.active == 0
        finally:
            await phone.close()
            await agent.stop()
        body = agent.metrics.render().decode()
        assert 'sipagent_outbound_calls_total{outcome="answered"} 1.0' in body, body

    asyncio.run(asyncio.wait_for(scenario(), 70))


async def wait_until_async(read: Any, value: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await read() == value:
            return True
        await asyncio.sleep(0.2)
    return False


VOICEMAIL = ("Hi, you have reached Ada Lovelace. I can't take your call right now. "
             "Please leave a message after the tone.")


def voicemail_wav(path: Path, tmp: Path, talk_after_beep: bool = False) -> float:
    """A voicemail greeting and its beep as a phone's audio source (8 kHz); the second the beep ends. With
    ``talk_after_beep``, loud speech 1.5 s after the beep (a noisy line, or a recording playing on), while the
    agent leaves its message."""
    lead = silence(0.3) + speech(VOICEMAIL, tmp) + silence(0.5)
    after = silence(1.5) + speech(VOICEMAIL, tmp) if talk_after_beep else b""
    audio = lead + beep(0.5) + after + silence(30.0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(audio)
    return len(lead) / 16000 + 0.5


async def call_a_machine(config: Config, kamailio: Kamailio, user: str, tmp: Path,
                         talk_after_beep: bool = False) -> tuple[OutboundCall, Baresip, float]:
    """An agent places one call to a phone (``user``) that answers with a voicemail greeting and its beep;
    the finished call, the phone (stopped) and when its beep ended."""
    agent = Agent(config)
    await agent.start()
    phone = Baresip(tmp / "phone", user, kamailio.address, answer=True, codecs=["PCMU"], record=True)
    await phone.start()
    beep_end = voicemail_wav(phone.workdir / "send.wav", tmp, talk_after_beep)  # aufile opens it at the answer
    try:
        assert agent.outbound is not None
        calls = agent.outbound.calls
        placed = calls.start(CallRequest(f"sip:{user}@127.0.0.1", "default"))
        call = await asyncio.wait_for(calls.wait(placed.id), 45)
        assert await phone.wait_event("CALL_CLOSED", 5), phone.event_types()
    finally:
        await phone.close()
        await agent.stop()
    return call, phone, beep_end


@pytest.mark.parametrize("on_machine", ["hang_up", "leave_message", "leave_message_over_talk"])
def test_an_answering_machine(on_machine: str, kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    """A machine is hung up on, or gets the whole message after its beep, even when the line carries speech
    meanwhile (a machine does not barge in: the message is not cut)."""
    async def scenario() -> None:
        talk = on_machine == "leave_message_over_talk"
        on_machine_ = "leave_message" if talk else on_machine
        user = {"hang_up": "7240", "leave_message": "7242", "leave_message_over_talk": "7244"}[on_machine]
        amd = {"detect": True, "on_machine": on_machine_, "message": ANSWER}
        async with receiver() as hooks:
            hook = {"webhook": {"url": hooks.url, "secret": SECRET}}
            config = bridge_config(tmp_path, **agent_sections(kamailio, user, greeting=GREETING, answering_machine=amd,
                                                              events=hook))
            call, phone, beep_end = await call_a_machine(config, kamailio, str(int(user) + 1), tmp_path, talk)
            ended = hooks.events("call.ended")
        assert len(ended) == 1, ended
        data = ended[0]["data"]
        assert (data["direction"], data["outbound_id"], data["outcome"]) == ("outbound", call.id, "machine"), data
        assert (data["answering_machine"], data["message_left"]) == ("machine", on_machine_ == "leave_message"), data
        assert (call.outcome, call.answering_machine) == ("machine", "machine"), call
        entries = [json.loads(line) for path in tmp_path.glob("*.jsonl") for line in path.read_text().splitlines()]
        heard_kinds = [e.get("heard") for e in entries if e.get("event") == "answering-machine"]
        assert "machine" in heard_kinds, entries  # the transcript says what was heard, also of a machine hung up on
        if on_machine == "hang_up":
            assert not call.message_left and call.end_reason == "answering machine: hung up", call
            ends = [e for e in entries if e.get("event") == "end"]
            assert len(ends) == 1 and ends[0]["reason"] == "answering-machine", entries
            return
        assert call.message_left and call.end_reason == "message-left", call
        pcm = heard(phone)
        assert any("thirty days" in text for text in recognised(pcm, AGENT_LINES))
        if talk:  # the whole message, its last words too
            assert any("return label" in text for text in recognised(pcm, AGENT_LINES))
        assert first_loud_s(pcm) > beep_end - 0.3, (first_loud_s(pcm), beep_end)  # not a word before the beep
        assert "message" in heard_kinds, heard_kinds

    asyncio.run(asyncio.wait_for(scenario(), 75))


def test_calls_both_ways_share_sip_max_calls(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    async def scenario() -> None:
        sections = agent_sections(kamailio, "7250")
        sections["sip"]["max_calls"] = 1
        sections["outbound"]["calls_per_second"] = 10  # the second call follows the first within a second
        agent = Agent(bridge_config(tmp_path, **sections))
        await agent.start()
        caller = Baresip(tmp_path / "caller", "7251", kamailio.address, codecs=["PCMU"])
        callee = Baresip(tmp_path / "callee", "7252", kamailio.address, answer=True, codecs=["PCMU"])
        await caller.start()
        await callee.start()
        try:
            assert agent.outbound is not None and agent.ua is not None
            assert await agent.ua.wait_registered(10)
            calls = agent.outbound.calls
            # An answered call holds the one place: a call we would place is refused up front, and says why.
            await caller.dial(f"sip:7250@{kamailio.address}")
            assert await caller.wait_event("CALL_ESTABLISHED", 10), caller.event_types()
            with pytest.raises(CallRefused) as refused:
                calls.start(CallRequest("sip:7252@127.0.0.1", "default"))
            assert refused.value.reason == "sip_max_calls" and calls.active == 0
            assert not callee.events, callee.event_types()
            await caller.hangup()
            assert await caller.wait_event("CALL_CLOSED", 10)
            # The phone's CALL_CLOSED says nothing of when the agent let its place go: wait for that.
            ua = agent.ua
            assert await wait_until(lambda: ua.active_calls == 0 and not agent.bridges, 10), \
                (ua.active_calls, list(agent.bridges))
            # A call we placed holds it too: the phone calling in is turned away.
            placed = calls.start(CallRequest("sip:7252@127.0.0.1", "default"))
            assert await callee.wait_event("CALL_ESTABLISHED", 10), callee.event_types()
            closed = caller.count_events("CALL_CLOSED")
            await caller.dial(f"sip:7250@{kamailio.address}")
            assert await caller.wait_count("CALL_CLOSED", closed + 1, 10), caller.event_types()
            assert caller.count_events("CALL_ESTABLISHED") == 1
            calls.cancel(placed.id)
            assert (await asyncio.wait_for(calls.wait(placed.id), 10)).outcome == "answered"
        finally:
            await caller.close()
            await callee.close()
            await agent.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
