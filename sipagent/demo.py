"""``sipagent demo``: a real SIP call into an offline agent, end to end, with no PBX and no API key.

The agent runs in direct mode on 127.0.0.1 with the local Realtime-compatible backend in-process
(speech recognition, intents and speech synthesis, all offline). A caller built on the same SIP and RTP
stack dials it, listens to the greeting, asks where its order is, keys the order number in on the keypad
when the agent asks for it (RFC 4733 telephone-events; the agent's collect_digits tool gathers them), hears
the agent read back that order's status, says goodbye, and the agent hangs up. The live transcript is
printed; the agent's transcript and stereo recording, and what the caller heard, are saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import wave
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from sipagent.agent import Agent
from sipagent.bridge.call import CallOutcome
from sipagent.config import Config, load_config, load_config_text
from sipagent.errors import SipagentError
from sipagent.media.clock import MediaClock
from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import SipCaller

log = logging.getLogger(__name__)

DEFAULT_QUESTION = "where is my order"
DEFAULT_ORDER = "7721"  # what the caller keys in when asked (the demo's order system knows 7721 and 1234)
KEY_MS = 120  # each key's length; RFC 4733 events, with the sender's gap between keys
GOODBYE = "that is all thank you"


class DemoError(SipagentError):
    """The demo was asked for something it cannot do."""


@dataclass
class DemoResult:
    outcome: CallOutcome | None
    heard_path: Path
    transcript: list[dict[str, object]]


def load_demo_config(path: str | None, out_dir: Path | None) -> Config:
    env = dict(os.environ)
    if out_dir is not None:
        env["SIPAGENT_DEMO_DIR"] = str(out_dir)
    if path:
        return load_config(path, env=env)
    text = resources.files("sipagent").joinpath("data/demo.yaml").read_text(encoding="utf-8")
    return load_config_text(text, "sipagent/data/demo.yaml (built in)", env=env)


def run_demo(path: str | None, question: str | None, out: str | None, order: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out_dir = Path(out or f"recordings/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    try:
        config = load_demo_config(path, out_dir)
        result = asyncio.run(run_demo_call(config, question or DEFAULT_QUESTION, out_dir, echo=True,
                                           order=order or DEFAULT_ORDER))
    except SipagentError as exc:
        print(f"sipagent demo: {exc}", file=sys.stderr)
        return 1
    said = {entry["type"] for entry in result.transcript}
    if not result.outcome or "agent" not in said:
        print("sipagent demo: the agent did not answer as expected; see the transcript above", file=sys.stderr)
        return 1
    print()
    print(f"transcript:       {result.outcome.transcript_path}")
    print(f"recording:        {result.outcome.recording_path}  (stereo: caller left, agent right)")
    print(f"caller heard:     {result.heard_path}")
    print(f"call ended:       {result.outcome.reason}")
    return 0


async def run_demo_call(config: Config, question: str, out_dir: Path, echo: bool = False,
                        codec: str = "G722", order: str = DEFAULT_ORDER) -> DemoResult:
    from sipagent.realtime.local.tts import Synthesizer

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def show(call_id: str, role: str, text: str) -> None:
        if echo:
            print(f"[{time.monotonic() - start:5.1f}s] {role:>11}: {text}", flush=True)

    if not order.isdigit() or not 1 <= len(order) <= 16:
        raise DemoError(f"the order number to key in must be 1 to 16 digits, not {order[:20]!r}")
    ended: list[CallOutcome] = []
    config = replace(config, recording=replace(config.recording, dir=str(out_dir)))
    agent = Agent(config, on_transcript=show, on_call_end=lambda _id, outcome: ended.append(outcome))
    await agent.start()
    host, port = agent.sip_address
    clock = MediaClock()
    clock.start()
    low, high = config.media.rtp_port_range
    caller_ports = PortAllocator(high + 1, high + 100) if high + 100 < 65536 else PortAllocator(low - 100, low - 1)
    tts = Synthesizer()
    question_pcm, goodbye_pcm = await asyncio.gather(
        asyncio.to_thread(tts.synthesize, question), asyncio.to_thread(tts.synthesize, GOODBYE)
    )
    caller = SipCaller(clock, caller_ports, f"sip:agent@{host}:{port}", codec=codec, host="127.0.0.1")
    if echo:
        print(f"calling sip:agent@{host}:{port} ({codec}); the agent runs offline on this machine", flush=True)
    try:
        await caller.dial()
        await _wait_for_agent_turn(caller, timeout=15.0)
        show("", "caller says", question)
        await _speak(caller, question_pcm)
        await _wait_for_agent_turn(caller, timeout=25.0)  # it asks for the order number on the keypad
        keys = order + "#"
        show("", "caller keys", keys)
        for key in keys:
            caller.send_dtmf(key, KEY_MS)  # queued: the caller's endpoint sends them one after the other
        await _wait_for_agent_turn(caller, timeout=25.0, quiet_s=2.0)  # "let me check", then the order
        show("", "caller says", GOODBYE)
        await _speak(caller, goodbye_pcm)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(caller.ended.wait(), 15.0)
    finally:
        await caller.hangup()
        for _ in range(100):  # the agent writes its files as the call ends
            if ended:
                break
            await asyncio.sleep(0.05)
        await agent.stop()
        clock.stop()
    heard_path = out_dir / "caller-heard.wav"
    _write_wav(heard_path, bytes(caller.heard.pcm))
    outcome = ended[0] if ended else None
    transcript: list[dict[str, object]] = []
    if outcome and outcome.transcript_path and outcome.transcript_path.exists():
        transcript = [json.loads(line) for line in outcome.transcript_path.read_text().splitlines() if line]
    return DemoResult(outcome, heard_path, transcript)


async def _speak(caller: SipCaller, pcm24k: bytes) -> None:
    caller.play(pcm24k)
    while caller.speaking and not caller.ended.is_set():
        await asyncio.sleep(0.02)


async def _wait_for_agent_turn(caller: SipCaller, timeout: float, quiet_s: float = 1.2) -> None:
    """Waits until the agent has spoken and then been quiet for ``quiet_s`` (or the call ended)."""
    deadline = time.monotonic() + timeout
    start_frames = caller.heard.audio_frames
    heard_at = 0.0
    last_count = start_frames
    while time.monotonic() < deadline and not caller.ended.is_set():
        await asyncio.sleep(0.05)
        count = caller.heard.audio_frames
        if count != last_count:
            last_count, heard_at = count, time.monotonic()
        elif count > start_frames and time.monotonic() - heard_at >= quiet_s:
            return


def _write_wav(path: Path, pcm24k: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(24000)
        wav.writeframes(pcm24k)
