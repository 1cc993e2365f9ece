"""The bridge on real calls: agent (direct mode) + our SIP caller + the offline backend over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from bridge_helpers import LOUD_DB, bridge_config, call_rig, heard_frames, loud_times, speech_span_s, tts
from peers import free_port

from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.server import LocalRealtimeServer
from sipagent.realtime.local.tts import Synthesizer

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]


def test_full_turn_question_tool_and_spoken_answer(tmp_path: Path) -> None:
    asyncio.run(_full_turn(tmp_path))


async def _full_turn(tmp_path: Path) -> None:
    async with call_rig(bridge_config(tmp_path)) as rig:
        await rig.agent_turn()
        _, asked = await rig.say("where is my order seven seven two one")
        await rig.wait_entry("agent", 25, lambda e: "shipped" in e["text"])
        await rig.agent_turn(quiet_s=0.5, new=False)
    heard = loud_times(rig.caller, since=asked)
    assert len(heard) * 20 >= 1500, f"only {len(heard) * 20} ms of agent speech after the question\n{rig.summary()}"
    kinds = [e["type"] for e in rig.entries()]
    caller_text = " ".join(e["text"] for e in rig.entries("caller"))
    assert "order" in caller_text, rig.summary()
    calls = rig.entries("tool_call")
    results = rig.entries("tool_result")
    assert [c["name"] for c in calls] == ["lookup_order"], rig.summary()
    assert results and results[0]["ok"] and results[0]["output"]["status"] == "shipped", rig.summary()
    assert kinds.index("caller") < kinds.index("tool_call") < kinds.index("tool_result"), rig.summary()
    assert any("shipped" in e["text"] for e in rig.entries("agent")[1:]), rig.summary()
    assert rig.entries("call")[-1]["reason"] == "remote-hangup"


LONG_GREETING = ("Thanks for calling Northwind Outfitters. We are open from nine in the morning to five in the "
                 "evening, every day of the week, and we ship to all fifty states. How can I help you today?")


@pytest.mark.parametrize("mode", ["local", "server"])
def test_barge_in_cuts_the_agent_off(tmp_path: Path, mode: str) -> None:
    asyncio.run(_barge_in(tmp_path, mode))


async def _barge_in(tmp_path: Path, mode: str) -> None:
    # The real API's speech_started comes a few hundred ms into speech; a slow backend VAD makes sure the
    # local mode is really cut by our own VAD (which is stricter in double talk, being echo-aware).
    server_min_speech = 500 if mode == "local" else 200
    config = bridge_config(
        tmp_path,
        realtime={"local": {"vad": {"min_speech_ms": server_min_speech}}},
        agent={"greeting": LONG_GREETING, "barge_in": {"mode": mode, "min_speech_ms": 200, "protect_greeting_ms": 0}},
    )
    async with call_rig(config) as rig:
        await rig.wait_for(lambda: len(loud_times(rig.caller)) >= 60, 15, "1.2 s of the greeting")
        pcm = await asyncio.to_thread(tts().synthesize, "how do i return an item")
        started = time.monotonic()
        duration = rig.caller.play(pcm)
        await rig.wait_entry("barge_in", 5)
        await rig.wait_entry("agent", 25, lambda e: "thirty days" in e["text"])
        await rig.agent_turn(quiet_s=0.5, new=False)
    onset = rig.caller.sent.first_loud_after(started)
    assert onset is not None
    # The caller is still talking until onset + duration, so the backend's reply cannot have started yet.
    last = max(loud_times(rig.caller, until=onset + min(duration, 1.5)))
    latency_ms = max(0.0, (last - onset) * 1000)
    print(f"\nbarge-in ({mode}): caller speech onset -> last agent audio heard: {latency_ms:.0f} ms")
    assert latency_ms < 800, f"barge-in ({mode}) took {latency_ms:.0f} ms\n{rig.summary()}"
    cut = rig.entries("barge_in")
    assert len(cut) == 1 and cut[0]["trigger"] == f"{mode}-vad", rig.summary()
    assert cut[0]["heard_ms"] >= 1000, rig.summary()
    sent = [e["type"] for e in rig.sent]
    assert "conversation.item.truncate" in sent, sent
    truncated = [e for e in rig.received if e["type"] == "conversation.item.truncated"]
    assert truncated and truncated[0]["audio_end_ms"] == cut[0]["heard_ms"], rig.received
    errors = [e["error"] for e in rig.received if e["type"] == "error"]
    assert not errors, errors
    # The greeting was cut: its entry says how much of it the caller heard, and the next turn was answered.
    greeting = [e for e in rig.entries("agent") if e.get("greeting")]
    assert len(greeting) == 1 and greeting[0]["interrupted"], rig.summary()
    assert greeting[0]["heard_ms"] == cut[0]["heard_ms"], rig.summary()


def cough(ms: int = 60, db: float = -12.0) -> bytes:
    """A burst of noise as loud as the agent, shorter than min_speech_ms: a cough or a knock, 24 kHz PCM16."""
    noise = np.random.default_rng(7).standard_normal(24 * ms)
    return (noise / np.sqrt(np.mean(noise**2)) * 32768 * 10 ** (db / 20)).clip(-32768, 32767).astype("<i2").tobytes()


@pytest.mark.parametrize(("mode", "stage1"), [("local", "duck"), ("server", "duck"), ("local", "pause")])
def test_cough_ducks_or_pauses_then_speech_barges_in(tmp_path: Path, mode: str, stage1: str) -> None:
    asyncio.run(_cough_then_speech(tmp_path, mode, stage1))


async def _cough_then_speech(tmp_path: Path, mode: str, stage1: str) -> None:
    server_min_speech = 500 if mode == "local" else 200  # as above: the local mode is decided locally
    barge: dict[str, object] = {"mode": mode, "protect_greeting_ms": 0}  # defaults otherwise
    if stage1 != "duck":
        barge["stage1"] = stage1
    start, end = ("barge_in_duck", "barge_in_unduck") if stage1 == "duck" else ("barge_in_pause", "barge_in_resume")
    config = bridge_config(
        tmp_path,
        realtime={"local": {"vad": {"min_speech_ms": server_min_speech}}},
        agent={"greeting": LONG_GREETING, "barge_in": barge},
    )
    async with call_rig(config) as rig:
        await rig.wait_for(lambda: len(loud_times(rig.caller)) >= 60, 15, "1.2 s of the greeting")
        rig.caller.play(cough())
        ended = await rig.wait_entry(end, 5)
        ended_at = time.monotonic()
        queued_before, played_at_end = rig.bridge.conversation.queued_ms, rig.bridge.media.played_ms
        # Frames heard after the first stage ended only: a window reaching back before the cough would be
        # satisfied by the greeting played before it.
        await rig.wait_for(lambda: len(loud_times(rig.caller, since=ended_at)) >= 10, 5,
                           "the greeting to go on")
        played_after = rig.bridge.media.played_ms
        pcm = await asyncio.to_thread(tts().synthesize, "how do i return an item")
        rig.caller.play(pcm)
        await rig.wait_entry("barge_in", 5)
        await rig.wait_entry("agent", 25, lambda e: "thirty days" in e["text"])
    stages = rig.entries(start)
    assert len(stages) == 2, rig.summary()  # the cough's, then the speech's
    if stage1 == "duck":
        # A duck on a burst ends soon after it (unduck_after_ms of quiet), not resume_after_ms later.
        # (< resume_after_ms: the ~100 ms of a cough and unduck_after_ms stretch when frames arrive late,
        # a duck that waits for resume_after_ms lasts at least 300 + 60 ms)
        assert ended["ducked_ms"] < 300, rig.summary()
    else:
        assert ended["paused_ms"] < 1000, rig.summary()
    # The cough did not reach the model: nothing truncated, cancelled or deleted before the real barge-in.
    kinds = [e["type"] for e in rig.sent]
    assert kinds.count("conversation.item.truncate") == 1 and "conversation.item.delete" not in kinds, kinds
    # Nothing of the greeting was lost: it played on past where the first stage began.
    assert played_after > played_at_end >= stages[0]["played_ms"], rig.summary()
    if stage1 == "duck":
        # ... and went on playing (turned down) during the duck: nothing was held back.
        assert played_at_end - stages[0]["played_ms"] >= ended["ducked_ms"] - 40, (stages, ended, played_at_end)
    else:
        # ... held during the pause: what played after the resume had been queued before it.
        assert queued_before >= played_after
    cut = rig.entries("barge_in")
    assert len(cut) == 1 and cut[0]["trigger"] == f"{mode}-vad", rig.summary()
    # The agent was already paused or turned down at the onset: heard_ms is where that began.
    assert cut[0]["paused_ms"] is not None and cut[0]["paused_ms"] > 0, rig.summary()
    assert cut[0]["heard_ms"] == stages[1]["played_ms"], rig.summary()
    assert rig.outcomes and rig.outcomes[0].false_pauses == 1
    metrics = rig.agent.metrics.render().decode()
    assert 'sipagent_barge_in_pauses_total{outcome="resumed"} 1.0' in metrics
    assert 'sipagent_barge_in_pauses_total{outcome="barge-in"} 1.0' in metrics


GREETING = "Thanks for calling Northwind Outfitters. How can I help you today?"


@pytest.mark.parametrize(("delay_ms", "mode"), [(40, "local"), (120, "server"), (200, "local"), (200, "server")])
def test_echo_of_the_agent_does_not_cut_it_off(tmp_path: Path, delay_ms: int, mode: str) -> None:
    asyncio.run(_echo(tmp_path, delay_ms, mode))


async def _echo(tmp_path: Path, delay_ms: int, mode: str) -> None:
    config = bridge_config(tmp_path, agent={
        "greeting": GREETING, "barge_in": {"mode": mode, "min_speech_ms": 200, "protect_greeting_ms": 0}})
    async with call_rig(config) as rig:
        rig.caller.set_echo(-20.0, delay_ms)
        await rig.agent_turn(quiet_s=1.5)
    synthesized = speech_span_s(await asyncio.to_thread(tts().synthesize, GREETING))
    heard = loud_times(rig.caller)
    heard_s = heard[-1] - heard[0] + 0.02
    assert not rig.entries("barge_in"), rig.summary()
    # Nor was it paused or ducked, even for a moment: echo must not make the agent choppy.
    assert not rig.entries("barge_in_pause") and not rig.entries("barge_in_duck"), rig.summary()
    # Heard in full (-0.3 s), and not stretched by a pause (+0.6 s: frames a stalled machine sends late
    # stretch the span by the stall; a pause and resume adds at least resume_after_ms and the frames held).
    assert -0.3 < heard_s - synthesized < 0.6, f"heard {heard_s:.2f} s of a {synthesized:.2f} s greeting"
    assert [e["text"] for e in rig.entries("agent")] == [GREETING], rig.summary()
    backend_heard = [e["type"] for e in rig.received if e["type"].startswith("input_audio_buffer.")]
    assert not backend_heard and not rig.entries("caller"), f"the backend took echo for speech: {backend_heard}"


@pytest.mark.parametrize(("mode", "phone_decodes_gaps"), [("local", False), ("server", False), ("local", True)])
def test_echo_does_not_cut_the_agent_off_through_stalls_of_the_machine(tmp_path: Path, mode: str,
                                                                       phone_decodes_gaps: bool) -> None:
    """A loaded machine stalls the event loop (here the agent's, the caller's and the backend's at once) for
    tens of milliseconds: the ticks that follow are late, frames are concealed at both ends, and the echo
    path must not turn that into something the agent takes for the caller. It did: G.722 concealment
    decoded through the stateful decoder came out louder than the echo it stood in for.
    ``phone_decodes_gaps``: the phone conceals as many do, decoding the repeat (its echo then carries
    what that made of it); without it, its echo delay grew a frame per stall and left the agent's window."""
    asyncio.run(_echo_through_stalls(tmp_path, mode, phone_decodes_gaps))


async def _echo_through_stalls(tmp_path: Path, mode: str, phone_decodes_gaps: bool) -> None:
    config = bridge_config(tmp_path, agent={
        "greeting": GREETING, "barge_in": {"mode": mode, "min_speech_ms": 200, "protect_greeting_ms": 0}})

    async def stall_the_loop() -> None:
        await rig.wait_for(lambda: loud_times(rig.caller), 20, "the greeting")
        for stall_s in (0.05, 0.1, 0.15) * 4:
            await asyncio.sleep(0.2)
            time.sleep(stall_s)  # blocks the loop, as a busy machine does

    async with call_rig(config) as rig:
        rig.caller.set_echo(-20.0, 200)
        if phone_decodes_gaps:
            assert rig.caller._endpoint is not None
            rig.caller._endpoint.on_gap = None  # its concealment goes through its decoder, as a frame
        stalls = asyncio.create_task(stall_the_loop())
        try:
            await rig.agent_turn(quiet_s=1.5)
            await stalls
        finally:
            stalls.cancel()
    interruptions = rig.entries("barge_in") + rig.entries("barge_in_pause") + rig.entries("barge_in_duck")
    assert not interruptions, rig.summary()
    assert [e["text"] for e in rig.entries("agent")] == [GREETING], rig.summary()
    backend_heard = [e["type"] for e in rig.received if e["type"].startswith("input_audio_buffer.")]
    assert not backend_heard and not rig.entries("caller"), f"the backend took echo for speech: {backend_heard}"


class _ToolService(BaseHTTPRequestHandler):
    """A real webhook backend: /stock answers JSON, /broken fails with 500, /slow answers too late."""

    requests: ClassVar[list[tuple[str, dict[str, object]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.requests.append((self.path, body))
        if self.path == "/slow":
            time.sleep(2.5)
        status, reply = (200, {"message": f"We have three pairs of {body.get('item')} in stock."})
        if self.path == "/broken":
            status, reply = 500, {"detail": "database down"}
        data = json.dumps(reply).encode()
        with contextlib.suppress(OSError):  # /slow: the bridge has long given up and closed
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def tool_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ToolService)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _intent(name: str, phrase: str, tool: str, reply_after_tool: str = "", **arguments: str) -> dict[str, object]:
    intent: dict[str, object] = {"name": name, "phrases": [phrase], "tool": {"name": tool, "arguments": arguments}}
    if reply_after_tool:
        intent["reply_after_tool"] = reply_after_tool
    return intent


GOODBYE_REPLY = "Thank you for calling Northwind. Goodbye."
TOOL_INTENTS = [
    _intent("stock", "do you have boots in stock", "check_stock", item="boots"),
    _intent("balance", "what is my account balance", "account_balance", "Sorry, {error}."),
    _intent("delivery", "when will my parcel arrive", "delivery_date", "Sorry, {error}."),
    {"name": "human", "phrases": ["can i speak to a human"], "reply": "I will put you through.",
     "tool": {"name": "transfer_call", "arguments": {}}, "reply_after_tool": "Sorry, {error}."},
    {"name": "goodbye", "phrases": ["goodbye"], "reply": GOODBYE_REPLY, "tool": {"name": "end_call", "arguments": {}}},
]


def _tools(base_url: str) -> list[dict[str, object]]:
    def webhook(name: str, path: str, timeout_s: float = 3.0) -> dict[str, object]:
        return {"name": name, "description": f"{name} webhook", "url": base_url + path, "timeout_s": timeout_s,
                "parameters": {"type": "object", "properties": {"item": {"type": "string"}}}}

    return [webhook("check_stock", "/stock"), webhook("account_balance", "/broken"),
            webhook("delivery_date", "/slow", timeout_s=1.0), {"name": "end_call"}, {"name": "transfer_call"}]


def test_webhook_tools_failures_and_end_call(tmp_path: Path) -> None:
    asyncio.run(_webhooks(tmp_path))


async def _webhooks(tmp_path: Path) -> None:
    with tool_service() as base_url:
        config = bridge_config(tmp_path, realtime={"local": {"intents": TOOL_INTENTS}},
                               agent={"tools": _tools(base_url)})
        async with call_rig(config) as rig:
            await rig.agent_turn()
            await rig.say("do you have boots in stock")
            await rig.wait_entry("agent", 20, lambda e: "in stock" in e["text"])
            await rig.say("what is my account balance")
            await rig.wait_entry("agent", 20, lambda e: "HTTP 500" in e["text"])
            await rig.say("when will my parcel arrive")
            await rig.wait_entry("agent", 20, lambda e: "in time" in e["text"])
            await rig.agent_turn(new=False, quiet_s=0.3)
            heard_before_goodbye = len(rig.caller.heard.frame_times)
            await rig.say("goodbye")
            await rig.wait_for(rig.caller.ended.is_set, 20, "the agent to hang up")
            outcome = await rig.wait_outcome()
    assert rig.caller.end_reason == "remote-bye" and outcome.reason == "agent-hangup", rig.summary()
    results = {e["name"]: e for e in rig.entries("tool_result")}
    assert results["check_stock"]["ok"] and "three pairs" in results["check_stock"]["output"]["message"]
    assert not results["account_balance"]["ok"] and "500" in results["account_balance"]["output"]["error"]
    assert not results["delivery_date"]["ok"] and "in time" in results["delivery_date"]["output"]["error"]
    outputs = [e["item"]["output"] for e in rig.sent
               if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"]
    assert len(outputs) == 3 and all("error" in json.loads(o) for o in outputs[1:]), outputs
    assert [p for p, _ in _ToolService.requests] == ["/stock", "/broken", "/slow"]
    # The model's arguments, and the call's context beside them (the caller is sipagent's own caller).
    sent = dict(_ToolService.requests[0][1])
    assert sent.pop("context")["caller_number"] == "caller" and sent == {"item": "boots"}
    # The goodbye was spoken to the end before the BYE.
    goodbye = speech_span_s(await asyncio.to_thread(tts().synthesize, GOODBYE_REPLY))
    said = [at for at, level in heard_frames(rig.caller)[heard_before_goodbye:] if level >= LOUD_DB]
    assert said and -0.3 < said[-1] - said[0] + 0.02 - goodbye < 0.6, (said[-1] - said[0], goodbye)  # as above


DESK = "sip:desk@127.0.0.1:5099"


@pytest.mark.parametrize("refer_status", [202, 603])
def test_transfer_call(tmp_path: Path, refer_status: int) -> None:
    asyncio.run(_transfer(tmp_path, refer_status))


async def _transfer(tmp_path: Path, refer_status: int) -> None:
    config = bridge_config(tmp_path, realtime={"local": {"intents": TOOL_INTENTS}},
                           agent={"tools": [{"name": "transfer_call"}, {"name": "end_call"}], "transfer_target": DESK})
    async with call_rig(config) as rig:
        rig.caller.refer_status = refer_status
        await rig.agent_turn()
        await rig.say("can i speak to a human")
        if refer_status < 300:
            await rig.wait_for(rig.caller.ended.is_set, 20, "the agent to leave the call")
            outcome = await rig.wait_outcome()
        else:
            await rig.wait_entry("agent", 20, lambda e: "failed" in e["text"])
            await rig.agent_turn(new=False, quiet_s=0.3)
            assert not rig.caller.ended.is_set()
            await rig.say("goodbye")  # the call went on: the next request is served
            await rig.wait_for(rig.caller.ended.is_set, 20, "the agent to hang up")
            outcome = await rig.wait_outcome()
    assert [r.refer_to for r in rig.caller.refers] == [f"<{DESK}>"], rig.caller.refers
    assert rig.caller.end_reason == "remote-bye"
    assert rig.entries("event")[0]["event"] == "transfer", rig.summary()
    # "I will put you through" was heard before the REFER.
    assert any("put you through" in e["text"] for e in rig.entries("agent")), rig.summary()
    if refer_status < 300:
        assert outcome.reason == "transferred", rig.summary()
        return
    assert outcome.reason == "agent-hangup", rig.summary()
    failure = rig.entries("tool_result")[0]
    assert failure["name"] == "transfer_call" and not failure["ok"], failure
    assert failure["output"]["error"] == "the transfer to default failed", failure


@pytest.mark.parametrize("far_end", ["pbx", "idle-phone"])
def test_a_blind_transfer_waits_for_a_caller_taken_away_and_not_for_one_left_here(tmp_path: Path,
                                                                                    far_end: str) -> None:
    """pbx: the far end takes the caller's channel away at the 202 (no more audio reaches the agent) and
    reports the outcome 33 s later (Asterisk: when a person answers a queue with no music). The agent waits
    for it: the call is transferred, and the model never hears of a failure. idle-phone: the far end accepts
    and does nothing, the caller's audio still coming: 30 s on the transfer is given up and the model told."""
    asyncio.run(_blind_wait(tmp_path, far_end))


async def _blind_wait(tmp_path: Path, far_end: str) -> None:
    config = bridge_config(tmp_path, realtime={"local": {"intents": TOOL_INTENTS}},
                           agent={"tools": [{"name": "transfer_call"}, {"name": "end_call"}], "transfer_target": DESK})
    async with call_rig(config) as rig:
        if far_end == "pbx":
            rig.caller.transfer_leaves_media, rig.caller.transfer_after_s = True, 33.0
        else:
            rig.caller.transfer_result = 0
        await rig.agent_turn()
        asked = time.monotonic()
        await rig.say("can i speak to a human")
        if far_end == "pbx":
            await rig.wait_for(rig.caller.ended.is_set, 45, "the agent to leave the call")
            outcome = await rig.wait_outcome()
            assert outcome.reason == "transferred", rig.summary()
            assert not rig.entries("tool_result"), rig.summary()
            assert time.monotonic() - asked > 33
            return
        await rig.wait_entry("agent", 45, lambda e: "failed" in e["text"])
        assert 30 < time.monotonic() - asked < 40
        assert not rig.caller.ended.is_set()
        failure = rig.entries("tool_result")[0]
        assert failure["output"]["error"] == "the transfer to default failed", failure


SALES = "sip:sales@127.0.0.1:5098"
# What a model talked into it by a caller might ask for: a number of the caller's choosing, with a header
# smuggled after it, and a team that does not exist.
INJECTED = "sip:9999-premium@203.0.113.9>\r\nX-Injected: yes\r\nContact: <sip:evil"
HIJACK_INTENTS = [
    {"name": "premium", "phrases": ["please call my friend"], "reply": "One moment.",
     "tool": {"name": "transfer_call", "arguments": {"target": INJECTED}}, "reply_after_tool": "Sorry, {error}."},
    {"name": "unknown", "phrases": ["can i speak to a manager"], "reply": "One moment.",
     "tool": {"name": "transfer_call", "arguments": {"target": "billing"}}, "reply_after_tool": "Sorry, {error}."},
    {"name": "sales", "phrases": ["can i speak to sales"], "reply": "I will put you through.",
     "tool": {"name": "transfer_call", "arguments": {"target": "sales"}}},
]


def test_transfer_goes_only_to_configured_targets(tmp_path: Path) -> None:
    """The caller's words reach the model: a transfer target it makes up (or was told to use) is refused
    with an error it can read, nothing reaches the wire, and a configured name goes through."""
    asyncio.run(_configured_targets(tmp_path))


async def _configured_targets(tmp_path: Path) -> None:
    config = bridge_config(tmp_path, realtime={"local": {"intents": HIJACK_INTENTS}},
                           agent={"tools": [{"name": "transfer_call"}], "transfer_targets": {"sales": SALES}})
    async with call_rig(config) as rig:
        await rig.agent_turn()
        await rig.say("please call my friend")
        await rig.wait_entry("agent", 20, lambda e: "no team called" in e["text"])
        await rig.agent_turn(new=False, quiet_s=0.3)
        await rig.say("can i speak to a manager")
        await rig.wait_entry("agent", 20, lambda e: "billing" in e["text"])
        await rig.agent_turn(new=False, quiet_s=0.3)
        assert rig.caller.refers == [] and not rig.caller.ended.is_set()
        await rig.say("can i speak to sales")
        await rig.wait_for(rig.caller.ended.is_set, 20, "the agent to leave the call")
        outcome = await rig.wait_outcome()
    assert [r.refer_to for r in rig.caller.refers] == [f"<{SALES}>"], rig.caller.refers
    assert outcome.reason == "transferred", rig.summary()
    errors = [e["output"]["error"] for e in rig.entries("tool_result") if not e["ok"]]
    assert errors == [f"there is no team called {INJECTED[:40]!r}; the caller can be transferred to: sales",
                      "there is no team called 'billing'; the caller can be transferred to: sales"], errors
    transfer = rig.entries("event")[0]
    assert transfer["event"] == "transfer" and transfer["target"] == "sales" and transfer["uri"] == SALES
    # What the model was offered: the configured names and nothing else.
    session = next(e["session"] for e in rig.sent if e["type"] == "session.update")
    (tool,) = [t for t in session["tools"] if t["name"] == "transfer_call"]
    assert tool["parameters"]["properties"]["target"]["enum"] == ["sales"], tool


def test_dtmf_reaches_the_model_as_text(tmp_path: Path) -> None:
    asyncio.run(_dtmf(tmp_path))


async def _dtmf(tmp_path: Path) -> None:
    async with call_rig(bridge_config(tmp_path)) as rig:
        await rig.agent_turn()
        for digit in "123#":
            rig.caller.send_dtmf(digit, duration_ms=100)
        sent = await rig.wait_entry("dtmf_sent", 10)
        await rig.agent_turn(timeout=15)  # the model answers the digits
    assert [e["digit"] for e in rig.entries("dtmf")] == ["1", "2", "3", "#"], rig.summary()
    assert sent["text"] == "caller pressed 1 2 3 #"
    texts = [part.get("text") for e in rig.sent if e["type"] == "conversation.item.create"
             for part in e["item"].get("content", [])]
    assert "caller pressed 1 2 3 #" in texts, rig.sent
    assert len(rig.entries("agent")) == 2, rig.summary()


def test_websocket_drop_reconnects_and_carries_the_conversation(tmp_path: Path) -> None:
    asyncio.run(_websocket_drop(tmp_path))


async def _websocket_drop(tmp_path: Path) -> None:
    config = bridge_config(tmp_path)
    brain = LocalBrainConfig.from_mapping(config.realtime.local)
    backend = LocalRealtimeServer(brain, "127.0.0.1", 0)
    await backend.start()
    config.realtime.url = backend.url
    try:
        async with call_rig(config) as rig:
            await rig.agent_turn()
            await rig.say("how do i return an item")
            await rig.wait_entry("agent", 20, lambda e: "thirty days" in e["text"])
            await rig.agent_turn(new=False, quiet_s=0.3)
            # The backend goes away mid-call (its connections closed) and comes back on the same port.
            await backend.stop()
            backend = LocalRealtimeServer(brain, "127.0.0.1", backend.port)
            await backend.start()
            await rig.wait_entry("event", 10, lambda e: e["event"] == "reconnect")
            await rig.wait_for(lambda: rig.connects >= 2 and rig.bridge.state == "live" and rig.bridge.realtime.link,
                               10, "the new session")
            await rig.say("where is my order seven seven two one")
            await rig.wait_entry("agent", 25, lambda e: "shipped" in e["text"])
            assert not rig.caller.ended.is_set()
    finally:
        await backend.stop()
    seeded = [part.get("text", "") for e in rig.sent if e["type"] == "conversation.item.create"
              and e["item"].get("role") == "system" for part in e["item"]["content"]]
    assert len(seeded) == 1 and "thirty days" in seeded[0] and "return" in seeded[0], seeded
    assert rig.connects == 2
    assert not [e for e in rig.entries("event") if e["event"] == "failure"], rig.summary()
    # The greeting is not repeated in the new session.
    assert sum("Hello" in e["text"] for e in rig.entries("agent")) == 1, rig.summary()


def test_session_is_renewed_before_the_provider_limit(tmp_path: Path) -> None:
    asyncio.run(_renewal(tmp_path))


async def _renewal(tmp_path: Path) -> None:
    # Providers end a session after a fixed time (60 min on OpenAI GA); here the limit is 4 s.
    config = bridge_config(tmp_path, realtime={"max_session_s": 4})
    async with call_rig(config) as rig:
        await rig.agent_turn()
        await rig.say("how do i return an item")
        await rig.wait_entry("agent", 20, lambda e: "thirty days" in e["text"])
        await rig.wait_entry("event", 15, lambda e: e["event"] == "session-renewal")
        await rig.wait_for(lambda: rig.connects >= 2 and rig.bridge.state == "live", 10, "the new session")
        await rig.say("where is my order seven seven two one")
        await rig.wait_entry("agent", 25, lambda e: "shipped" in e["text"])
        assert not rig.caller.ended.is_set()
    # The new session was seeded with the conversation so far, and nothing failed over.
    seeded = [part.get("text", "") for e in rig.sent if e["type"] == "conversation.item.create"
              and e["item"].get("role") == "system" for part in e["item"]["content"]]
    assert seeded and "thirty days" in seeded[0], rig.summary()
    assert not [e for e in rig.entries("event") if e["event"] == "failure"], rig.summary()


@pytest.mark.parametrize("action", ["hangup", "transfer"])
def test_api_unreachable_at_call_start(tmp_path: Path, action: str) -> None:
    asyncio.run(_unreachable(tmp_path, action))


APOLOGY = "Sorry, our assistant is unavailable right now."


async def _unreachable(tmp_path: Path, action: str) -> None:
    closed = free_port()  # nothing listens there
    config = bridge_config(tmp_path, realtime={"url": f"ws://127.0.0.1:{closed}/v1/realtime"},
                           agent={"on_failure": {"action": action, "message": APOLOGY, "target": DESK}})
    async with call_rig(config) as rig:
        await rig.wait_for(rig.caller.ended.is_set, 20, "the agent to end the call")
        outcome = await rig.wait_outcome()
    assert rig.attempts == 5 and rig.connects == 0, rig.attempts  # the first attempt and every retry failed
    apology = speech_span_s(await asyncio.to_thread(Synthesizer().synthesize, APOLOGY))
    heard = loud_times(rig.caller)
    assert heard and -0.3 < heard[-1] - heard[0] + 0.02 - apology < 0.6, "the apology was not heard in full"
    assert rig.caller.end_reason == "remote-bye"
    failure = rig.entries("event")[0]
    assert failure["event"] == "failure" and failure["action"] == action, rig.summary()
    if action == "hangup":
        assert outcome.reason == "failover-hangup" and not rig.caller.refers
    else:
        assert outcome.reason == "failover-transferred", rig.summary()
        assert [r.refer_to for r in rig.caller.refers] == [f"<{DESK}>"]


def test_idle_caller_is_prompted_then_the_agent_hangs_up(tmp_path: Path) -> None:
    asyncio.run(_idle(tmp_path))


async def _idle(tmp_path: Path) -> None:
    config = bridge_config(tmp_path, agent={"idle_timeout_s": 3, "idle_prompt": "Are you still there?",
                                            "goodbye": "Thank you for calling. Goodbye."})
    async with call_rig(config) as rig:
        await rig.wait_for(rig.caller.ended.is_set, 30, "the agent to hang up on a silent caller")
        outcome = await rig.wait_outcome()
    events = rig.entries("event")
    assert [e["event"] for e in events] == ["idle-prompt", "idle-hangup"], rig.summary()
    said = [e["text"] for e in rig.entries("agent")]
    assert said == ["Hello.", "Are you still there?", "Thank you for calling. Goodbye."], rig.summary()
    hello = rig.entries("agent")[0]["t"]
    assert events[0]["t"] - hello >= 3.0 and events[1]["t"] - events[0]["t"] >= 3.0, rig.summary()
    assert outcome.reason == "agent-hangup" and rig.caller.end_reason == "remote-bye"
