"""Shared rig for the bridge integration tests: a real agent (direct mode, 127.0.0.1) and our SIP caller.

Each call is real: SIP over UDP, RTP on the shared media clock, the Realtime protocol over a WebSocket
to the offline backend (in-process, or one the test runs itself). Every event the bridge exchanges
with the backend is recorded by wrapping the agent's connection, so tests can check what reached the
backend (a truncate, a function_call_output) without mocking anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from demo_config import demo_data, spoken_order_lookup
from peers import free_port

from sipagent.agent import Agent
from sipagent.bridge.call import CallBridge, CallOutcome, RealtimeLink
from sipagent.config import Config, load_config_text
from sipagent.media.clock import MediaClock
from sipagent.media.vad import level_db
from sipagent.realtime.local.tts import Synthesizer
from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import FRAME_24K, SipCaller

LOUD_DB = -45.0  # a heard 20 ms frame at least this loud is agent speech (espeak speaks at about -20 dBFS)
TTS_VOICE, TTS_RATE = "en-us", 170

_tts: Synthesizer | None = None


def tts() -> Synthesizer:
    """One synthesiser (with its phrase cache) for the whole test session; same voice as the backend."""
    global _tts
    if _tts is None:
        _tts = Synthesizer(TTS_VOICE, TTS_RATE)
    return _tts


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def bridge_config_data(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The demo configuration on free ports, recording into ``tmp_path``, with per-test overrides (as YAML data,
    for a configuration file of a process)."""
    data = spoken_order_lookup(demo_data())
    rtp = free_port(span=40)
    base = {
        "sip": {"listen": f"127.0.0.1:{free_port()}"},
        "media": {"rtp_ports": f"{rtp}-{rtp + 19}"},
        "realtime": {"local": {"response_delay_ms": 50, "tts": {"voice": TTS_VOICE, "rate": TTS_RATE},
                               "vad": {"threshold_db": -40, "min_speech_ms": 200, "silence_ms": 500}}},
        "agent": {"greeting": "Hello.", "idle_timeout_s": 0},
        "recording": {"dir": str(tmp_path), "audio": False},
        "logging": {"level": "info"},
    }
    return _merge(_merge(data, base), sections)


def bridge_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """The demo configuration on free ports, recording into ``tmp_path``, with per-test overrides."""
    config = load_config_text(yaml.safe_dump(bridge_config_data(tmp_path, **sections)), "bridge test config")
    config.source = ""
    return config


class RecordingLink:
    """A real Realtime connection, with every event sent and received kept for the test to inspect."""

    def __init__(self, inner: RealtimeLink, sent: list[dict[str, Any]], received: list[dict[str, Any]]) -> None:
        self.inner, self.sent, self.received = inner, sent, received

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.inner.send(event)
        if isinstance(event, dict):  # audio appends go as prebuilt JSON text: not kept
            self.sent.append(event)

    def send_now(self, text: bytes) -> bool:  # the audio appends' path, as in production: not kept
        return self.inner.send_now(text)

    async def recv(self) -> dict[str, Any]:
        event = await self.inner.recv()
        self._keep(event)
        return event

    def deliver_to(self, take: Callable[[dict[str, Any]], bool] | None) -> None:
        """As in production, most events reach the bridge this way (RealtimeClient.deliver_to): kept too."""
        if take is None:
            self.inner.deliver_to(None)
            return

        def kept(event: dict[str, Any]) -> bool:
            if not take(event):
                return False
            self._keep(event)
            return True

        self.inner.deliver_to(kept)

    def _keep(self, event: dict[str, Any]) -> None:
        if event.get("type") not in ("response.output_audio.delta", "response.output_audio_transcript.delta"):
            self.received.append(event)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Rig:
    agent: Agent
    caller: SipCaller
    clock: MediaClock
    outcomes: list[CallOutcome] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # client events (no audio appends)
    received: list[dict[str, Any]] = field(default_factory=list)  # server events (no deltas)
    attempts: int = 0  # connection attempts to the backend
    connects: int = 0  # ... of which succeeded
    _bridge: CallBridge | None = None

    @property
    def bridge(self) -> CallBridge:
        if self._bridge is None:
            self._bridge = self.agent.bridges[self.caller.call_id]
        return self._bridge

    def entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The call's transcript as written so far (JSONL on disk once the call has ended)."""
        if self.outcomes and self.outcomes[0].transcript_path is not None:
            lines = self.outcomes[0].transcript_path.read_text(encoding="utf-8").splitlines()
            entries = [json.loads(line) for line in lines if line]
        else:
            bridge = self._bridge or self.agent.bridges.get(self.caller.call_id)
            self._bridge = bridge
            entries = list(bridge.transcript.entries) if bridge and bridge.transcript else []
        return [e for e in entries if kind is None or e["type"] == kind]

    def summary(self) -> str:
        lines = [json.dumps({k: v for k, v in e.items() if k != "at"})[:160] for e in self.entries()]
        return "transcript:\n  " + "\n  ".join(lines)

    async def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.summary()}")
            await asyncio.sleep(0.05)

    async def wait_entry(self, kind: str, timeout: float, match: Callable[[dict[str, Any]], bool] | None = None,
                         after: int = 0) -> dict[str, Any]:
        """The first transcript entry of ``kind`` (among entries after index ``after``) matching ``match``."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [e for e in self.entries()[after:] if e["type"] == kind and (match is None or match(e))]
            return bool(found)

        await self.wait_for(check, timeout, f"a {kind!r} transcript entry")
        return found[0]

    async def say(self, text: str) -> tuple[float, float]:
        """The caller speaks ``text``; returns (when it started, when it finished) in monotonic time."""
        pcm = await asyncio.to_thread(tts().synthesize, text)
        start = time.monotonic()
        duration = self.caller.play(pcm)
        await asyncio.sleep(duration + 0.06)
        return start, start + duration

    async def agent_turn(self, timeout: float = 20.0, quiet_s: float = 0.8, new: bool = True) -> None:
        """Waits until the caller has heard the agent speak (something new, unless ``new`` is False) and
        then be quiet for ``quiet_s``."""
        start = time.monotonic()
        if new:
            await self.wait_for(
                lambda: self.caller.ended.is_set() or any(t >= start for t in loud_times(self.caller)),
                timeout, "the agent to speak")
        while not self.caller.ended.is_set():
            heard = loud_times(self.caller)
            if time.monotonic() - (heard[-1] if heard else 0.0) >= quiet_s:
                return
            if time.monotonic() - start > timeout:
                raise AssertionError(f"the agent kept talking for {timeout:.0f} s\n{self.summary()}")
            await asyncio.sleep(0.05)

    async def wait_outcome(self, timeout: float = 10.0) -> CallOutcome:
        await self.wait_for(lambda: self.outcomes, timeout, "the agent to finish the call")
        return self.outcomes[0]


def heard_frames(caller: SipCaller) -> list[tuple[float, float]]:
    """(arrival time, level dBFS) of every 20 ms frame the caller received."""
    pcm = bytes(caller.heard.pcm)
    return [(at, level_db(pcm[i * FRAME_24K:(i + 1) * FRAME_24K])) for i, at in enumerate(caller.heard.frame_times)]


def loud_times(caller: SipCaller, since: float = 0.0, until: float = float("inf")) -> list[float]:
    return [at for at, level in heard_frames(caller) if since <= at <= until and level >= LOUD_DB]


def speech_span_s(pcm24k: bytes) -> float:
    """Seconds from the first to the last loud 20 ms frame of synthesised speech."""
    loud = [i for i in range(len(pcm24k) // FRAME_24K)
            if level_db(pcm24k[i * FRAME_24K:(i + 1) * FRAME_24K]) >= LOUD_DB]
    return (loud[-1] - loud[0] + 1) * 0.02 if loud else 0.0


@contextlib.asynccontextmanager
async def call_rig(config: Config, *, codec: str = "G722", dial: bool = True) -> AsyncIterator[Rig]:
    """Starts the agent, dials it, and tears everything down (caller BYE, agent stop) afterwards."""
    outcomes: list[CallOutcome] = []
    agent = Agent(config, on_call_end=lambda _id, outcome: outcomes.append(outcome))
    clock = MediaClock()
    rig: Rig | None = None
    await agent.start()
    try:
        clock.start()
        _, high = config.media.rtp_port_range
        caller = SipCaller(clock, PortAllocator(high + 1, high + 20), f"sip:agent@127.0.0.1:{agent.sip_address[1]}",
                           codec=codec, host="127.0.0.1")
        rig = Rig(agent, caller, clock, outcomes)
        connect = agent._connect
        current = rig

        async def recording_connect() -> RealtimeLink:
            current.attempts += 1
            link = await connect()
            current.connects += 1
            return RecordingLink(link, current.sent, current.received)

        agent._connect = recording_connect  # type: ignore[method-assign]
        if dial:
            await caller.dial()
        yield rig
    finally:
        if rig is not None:
            await rig.caller.hangup()
            deadline = time.monotonic() + 5
            while rig.caller.answered_at and not outcomes and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await agent.stop()
        clock.stop()
