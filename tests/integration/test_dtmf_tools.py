"""The DTMF built-ins on a real call into the agent (the local backend as the model, the project's SIP caller
as the phone): collect_digits gathers RFC 4733 keys (a key cuts the prompt off), times out with none, and
send_dtmf puts keys on the caller's line. The same with a baresip phone: tests/acceptance/test_acceptance_dtmf.py.

The brain is scripted by keys rather than speech, so nothing here depends on speech recognition: "*" asks
for the order (the bridge passes a lone key to the model as "caller pressed *"), "9" makes the agent press
keys itself.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bridge_helpers import Rig, bridge_config, call_rig

from sipagent.bridge.call import BridgeSettings, CallBridge, RealtimeLink
from sipagent.bridge.settings import AgentConfig, DtmfConfig, RecordingConfig, ToolConfig
from sipagent.config import Config
from sipagent.media.dtmf_detect import ToneDetector
from sipagent.media.dtmf_tones import tone
from sipagent.media.kernel import mean_square
from sipagent.realtime.events import SessionSettings
from sipagent.sdp import make_offer
from sipagent.testing.call_leg import StubCallLeg

PROMPT = ("Please key in your order number on your keypad, then press the hash key. You will find the order "
          "number in the email we sent you when you placed the order.")  # long: time to cut it off
MISSING = "Sorry, I did not get an order number."
INTENTS = [
    {
        "name": "order_status", "phrases": ["pressed *"], "reply": "Let me check that order for you.",
        "tool": {"name": "lookup_order", "arguments": {"order_id": "{digits}"}},
        "ask_digits": {"prompt": PROMPT, "arguments": {"max_digits": 8}, "missing": MISSING,
                       "spoken_digits": False},
    },
    {"name": "menu", "phrases": ["pressed 9"], "reply": "I will choose option one.",
     "tool": {"name": "send_dtmf", "arguments": {"digits": "1#"}}},
]
TOOLS = [
    {"name": "lookup_order", "url": "builtin:demo-orders",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}},
    {"name": "collect_digits"},
    {"name": "send_dtmf"},
]


def keypad_config(tmp_path: Path, **dtmf: Any) -> Config:
    return bridge_config(tmp_path, realtime={"local": {"intents": INTENTS}},
                         agent={"tools": TOOLS, "dtmf": {"terminator": "#", **dtmf}})


async def ask_for_the_order(rig: Rig) -> dict[str, Any]:
    """After the greeting, the caller presses "*": the agent asks for the order number (collect_digits)."""
    await rig.agent_turn()
    rig.caller.send_dtmf("*", 100)
    return await rig.wait_entry("tool_call", 15, lambda e: e["name"] == "collect_digits")


def test_keys_during_the_prompt_cut_it_off_and_are_looked_up(tmp_path: Path) -> None:
    asyncio.run(_keys_during_prompt(tmp_path))


async def _keys_during_prompt(tmp_path: Path) -> None:
    async with call_rig(keypad_config(tmp_path)) as rig:
        # The backend sends the whole prompt at once (as the API does, faster than real time) and its
        # function call right after: the prompt is still playing for seconds when the entry starts.
        assert rig.agent._local_server is not None
        rig.agent._local_server.lead_ms = 60_000
        call = await ask_for_the_order(rig)
        assert call["arguments"] == {"max_digits": 8}
        await rig.wait_for(lambda: rig.bridge.media.buffered_ms > 2000, 5, "the prompt to be queued")
        for key in "1234#":
            rig.caller.send_dtmf(key, 100)
        result = await rig.wait_entry("tool_result", 10, lambda e: e["name"] == "collect_digits")
        await rig.wait_entry("agent", 25, lambda e: "Order 1234 is being prepared" in e["text"])
    assert result["ok"] and result["output"] == {"digits": "1234", "ended_by": "terminator", "count": 4}
    # The first key stopped the prompt where the caller was (an item truncated, not played to its end).
    (barge,) = rig.entries("barge_in")
    assert barge["trigger"] == "dtmf" and 0 < barge["heard_ms"] < 6000, rig.summary()
    assert [e["type"] for e in rig.sent if e["type"] == "conversation.item.truncate"] == [
        "conversation.item.truncate"]
    lookups = [e["arguments"] for e in rig.entries("tool_call") if e["name"] == "lookup_order"]
    assert lookups == [{"order_id": "1234"}], rig.summary()
    # Keys of an entry go to the entry only: the model never saw them as text ("*" before it did).
    texts = [part.get("text") for e in rig.sent if e["type"] == "conversation.item.create"
             for part in e["item"].get("content", [])]
    assert [t for t in texts if t and "pressed" in t] == ["caller pressed *"], texts
    assert [e["digits"] for e in rig.entries("dtmf_collected")] == ["1234"]


def test_an_entry_without_keys_times_out(tmp_path: Path) -> None:
    asyncio.run(_timeout(tmp_path))


async def _timeout(tmp_path: Path) -> None:
    async with call_rig(keypad_config(tmp_path, first_digit_timeout_s=1)) as rig:
        await ask_for_the_order(rig)
        result = await rig.wait_entry("tool_result", 20, lambda e: e["name"] == "collect_digits")
        await rig.wait_entry("agent", 15, lambda e: e["text"] == MISSING)
    assert result["output"] == {"digits": "", "ended_by": "timeout", "count": 0}, rig.summary()
    # The first-digit timer started once the prompt had played out, not at the tool call.
    call = next(e for e in rig.entries("tool_call") if e["name"] == "collect_digits")
    prompt = next(e for e in rig.entries("agent") if e["text"].startswith("Please key in"))
    assert result["t"] - call["t"] >= 1.0 and result["t"] >= prompt["t"] + 1.0, rig.summary()
    assert not rig.entries("barge_in")


def test_send_dtmf_presses_keys_on_the_line(tmp_path: Path) -> None:
    asyncio.run(_send(tmp_path))


async def _send(tmp_path: Path) -> None:
    async with call_rig(keypad_config(tmp_path, tone_ms=80)) as rig:
        await rig.agent_turn()
        rig.caller.send_dtmf("9", 100)
        result = await rig.wait_entry("tool_result", 20, lambda e: e["name"] == "send_dtmf")
        await rig.wait_for(lambda: len(rig.caller.dtmf_heard) >= 2, 5, "the keys at the caller")
    assert result["ok"] and result["output"] == {"sent": "1#"}, rig.summary()
    # Each key once, as long as configured (80 ms: four 20 ms packets), decoded by the caller's RFC 4733 receiver.
    assert rig.caller.dtmf_heard == [("1", 80), ("#", 80)]
    session = next(e["session"] for e in rig.sent if e["type"] == "session.update")
    names = [t["name"] for t in session["tools"]]
    assert "collect_digits" in names and "send_dtmf" in names


def keys_heard(pcm: bytes) -> list[tuple[str, int]]:
    """The keys in 24 kHz PCM, as the agent's own detector finds them (sipagent.media.dtmf_detect, tested on
    its own against tones of every key through every codec): (key, milliseconds heard) per press."""
    detector, presses = ToneDetector(), []
    frames = [pcm[i:i + 960] for i in range(0, len(pcm) // 960 * 960, 960)] + [bytes(960)]
    for frame in frames:
        if (key := detector.push(frame, mean_square(frame))) is not None:
            presses.append(key)
    return presses


async def drop_telephone_events(rig: Rig) -> None:
    """The PBX moves the call to a line in in-band DTMF mode: a re-INVITE with no telephone-event."""
    local = rig.caller.local_sdp
    assert local is not None
    offer = make_offer([rig.caller.codec], "127.0.0.1", local.media[0].port, rig.caller.sdp_session,
                       dtmf_payload_type=None)
    status, answer = await rig.caller.reoffer(offer)
    assert status == 200 and b"telephone-event" not in answer


def test_keys_in_the_audio_work_a_keypad_entry_on_a_line_without_telephone_events(tmp_path: Path) -> None:
    asyncio.run(_keys_as_tones(tmp_path))


async def _keys_as_tones(tmp_path: Path) -> None:
    # PCMU: between what it plays our test caller sends a fixed G.722 silence payload, not its encoder's (a
    # phone codes its silence too), so the agent's G.722 decoder is out of step as each key starts.
    async with call_rig(keypad_config(tmp_path), codec="PCMU") as rig:
        await rig.agent_turn()
        await drop_telephone_events(rig)
        rig.caller.play(tone("*", 100) + bytes(2880))  # a phone's key, 100 ms, in the audio
        await rig.wait_entry("tool_call", 15, lambda e: e["name"] == "collect_digits")
        for key in "1234#":
            rig.caller.play(tone(key, 100) + bytes(2880))  # 60 ms between keys
        result = await rig.wait_entry("tool_result", 15, lambda e: e["name"] == "collect_digits")
        await rig.wait_entry("agent", 25, lambda e: "Order 1234 is being prepared" in e["text"])
    assert result["output"] == {"digits": "1234", "ended_by": "terminator", "count": 4}, rig.summary()
    keys = rig.entries("dtmf")
    # Each key once; its length as heard: the frames it fills whole (the coders' delay may leave two partial).
    assert [e["digit"] for e in keys] == list("*1234#") and all(e["duration_ms"] in (80, 100) for e in keys), [
        (e["digit"], e["duration_ms"]) for e in keys]
    assert rig.caller.dtmf_heard == [] and not rig.entries("caller")  # the beeps reached the model as silence


def test_send_dtmf_plays_tones_on_a_line_without_telephone_events(tmp_path: Path) -> None:
    asyncio.run(_send_tones(tmp_path))


async def _send_tones(tmp_path: Path) -> None:
    async with call_rig(keypad_config(tmp_path, tone_ms=80)) as rig:
        await rig.agent_turn()
        rig.caller.send_dtmf("9", 100)  # "I will choose option one", then send_dtmf("1#")
        await rig.wait_entry("dtmf", 5, lambda e: e.get("digit") == "9")
        await drop_telephone_events(rig)  # before the agent has said its piece
        rig.caller.set_echo(-12.0, 60)  # the line returns the agent's keys: they are not the caller's
        result = await rig.wait_entry("tool_result", 20, lambda e: e["name"] == "send_dtmf")
        await rig.agent_turn(new=False)
    assert result["ok"] and result["output"] == {"sent": "1#"}, rig.summary()
    (sent,) = rig.entries("dtmf_out")
    assert sent["digits"] == "1#" and sent["method"] == "inband"
    assert rig.caller.dtmf_heard == []  # no RFC 4733 event reached the caller
    assert [e["digit"] for e in rig.entries("dtmf")] == ["9"]  # the echo of its own keys was not taken as keys
    # The caller heard the two keys as tones (80 ms: four frames, spread over five by the coders' delay), one
    # after the other, and nothing else as a key.
    presses = keys_heard(bytes(rig.caller.heard.pcm))
    assert [key for key, _ in presses] == ["1", "#"] and all(60 <= ms <= 100 for _, ms in presses), presses


# ---------------------------------------------------------------- the bridge's checks, with a fake line


class FakeMedia:
    """The call's media leg, reduced to what the DTMF tools use; ``dtmf_pt`` False: no telephone-event."""

    codec = "PCMU"
    played_ms = 0
    buffered_ms = 0
    packets_received = 0

    def __init__(self, dtmf_pt: bool = True) -> None:
        self.dtmf_method = "rfc4733" if dtmf_pt else None
        self.keys: list[tuple[str, int]] = []
        self.dtmf_sending = False

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.keys.append((digit, duration_ms))

    def push_audio(self, payload: bytes) -> None: ...
    def flush_audio(self) -> int: return 0
    def pause_audio(self) -> None: ...
    def resume_audio(self) -> None: ...
    def duck_audio(self, gain: float) -> None: ...
    def unduck_audio(self) -> None: ...
    def media_report(self) -> dict[str, int | float | None]: return {}


def fake_bridge(media: FakeMedia, tools: tuple[str, ...] = ("collect_digits", "send_dtmf")) -> CallBridge:
    async def no_backend() -> RealtimeLink:
        raise OSError("not in these tests")

    agent = AgentConfig(tools=[ToolConfig(name) for name in tools], dtmf=DtmfConfig(tone_ms=60))
    settings = BridgeSettings(agent=agent, recording=RecordingConfig(transcripts=False), session=SessionSettings())
    return CallBridge(StubCallLeg("dtmf-test"), media, no_backend, settings)


def test_send_dtmf_checks_the_line_and_its_arguments() -> None:
    async def body() -> None:
        media = FakeMedia()
        bridge = fake_bridge(media)
        assert (await bridge.tools.send_dtmf({"digits": "0044#"})).output == {"sent": "0044#"}
        assert media.keys == [(key, 60) for key in "0044#"]
        refused = await bridge.tools.send_dtmf({"digits": "12; DROP"})
        assert not refused.ok and "may only contain 0-9, *, # and A-D" in refused.output["error"]
        media.dtmf_sending = True  # an earlier call's keys still going out
        busy = await bridge.tools.send_dtmf({"digits": "1"})
        assert not busy.ok and "still being sent" in busy.output["error"]
        no_events = await fake_bridge(FakeMedia(dtmf_pt=False)).tools.send_dtmf({"digits": "1"})
        assert not no_events.ok and "cannot carry keypad tones" in no_events.output["error"]
        narrow = fake_bridge(FakeMedia())
        narrow.settings.agent.dtmf.send_keys = "0123456789"  # agent.dtmf.send_keys
        feature_code = await narrow.tools.send_dtmf({"digits": "#1600"})
        assert not feature_code.ok and "may only send the keys 0 1 2" in feature_code.output["error"]

    asyncio.run(body())


def test_collect_digits_arguments_are_checked_before_anything_waits() -> None:
    async def body() -> None:
        bridge = fake_bridge(FakeMedia())
        bad = await bridge.tools.collect_digits({"max_digits": 1000, "timeout_s": 5})
        assert not bad.ok and bad.output == {"error": "max_digits must be from 1 to 64, not 1000"}
        # Keys typed just before the call (not yet passed to the model) start the entry; "#" ends it at once.
        now = time.monotonic()
        bridge.tools.typed = [("4", now - 0.5), ("2", now - 0.3), ("#", now - 0.1)]
        typed = await asyncio.wait_for(bridge.tools.collect_digits({}), 2)
        assert typed.output == {"digits": "42", "ended_by": "terminator", "count": 2}

    asyncio.run(body())


def test_a_built_in_the_profile_does_not_offer_does_nothing() -> None:
    """The caller's words reach the model, which may name end_call or transfer_call without being given them:
    it gets "unknown tool", and the call is neither ended nor transferred."""

    async def body() -> None:
        bridge = fake_bridge(FakeMedia(), tools=("collect_digits",))
        bridge.settings.agent.transfer_target = "sip:600@127.0.0.1"
        outputs: list[Any] = []
        bridge.tools.uses.clear()
        real_output = bridge.tools._output

        async def output(call_id: str, name: str, args: dict[str, Any], result: Any, respond: bool = True) -> None:
            outputs.append((name, result.ok, result.output))
            await real_output(call_id, name, args, result, respond)

        bridge.tools._output = output  # type: ignore[method-assign]
        for name in ("end_call", "transfer_call"):
            await bridge.tools.run(name, f"c-{name}", "{}")
        assert bridge.tools.pending is None and not bridge.tools.state.closing
        assert outputs == [(name, False, {"error": f"unknown tool {name}"}) for name in ("end_call", "transfer_call")]

    asyncio.run(body())
