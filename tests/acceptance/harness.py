"""What the acceptance tests share: the agent's configuration, the agent under test, spoken prompts,
transcripts and the audio a phone heard.

The agent is configured from the shipped demo configuration (its local-backend intents are the
scripted "model"), re-pointed at the test Kamailio as extension ``user`` with password "secret"+user.
"""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from demo_config import demo_data, spoken_order_lookup
from peers import LOCALHOST, Baresip, Kamailio, free_port, wait_until

from sipagent.agent import Agent
from sipagent.bridge.call import CallOutcome
from sipagent.config import Config, load_config_text
from sipagent.media.kernel import Resampler

GREETING = "Thanks for calling Northwind Outfitters. How can I help you today?"
ORDER_ANSWER = "Order 7721 has shipped"
RTP_SPAN = 60


def demo_settings() -> dict[str, Any]:
    """The shipped demo configuration as plain data (its ${VAR:-default}s are left for the loader), its order
    intent looking up order 7721 from speech (demo_config.spoken_order_lookup)."""
    return spoken_order_lookup(demo_data())


def agent_settings(kamailio: Kamailio, user: str, workdir: Path, **changes: dict[str, Any]) -> dict[str, Any]:
    """The agent registered on ``kamailio`` as ``user``; ``changes`` update whole sections key by key."""
    data = demo_settings()
    rtp = free_port(span=RTP_SPAN)
    data["sip"] = {
        "registrar": kamailio.address, "transport": "udp", "username": user, "password": f"secret{user}",
        "domain": LOCALHOST, "listen": f"{LOCALHOST}:{free_port()}", "expires": 60, "max_calls": 20,
    }
    data["media"]["rtp_ports"] = f"{rtp}-{rtp + RTP_SPAN - 1}"
    data["recording"] = {"dir": str(workdir / "recordings"), "transcripts": True, "audio": True}
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return data


def load_settings(data: dict[str, Any], name: str = "acceptance.yaml") -> Config:
    """Through the real loader, so the test configuration is validated like an operator's file."""
    return load_config_text(yaml.safe_dump(data, sort_keys=False), name, env={})


@dataclass
class AgentUnderTest:
    """An in-process agent plus what it reported: live transcript lines and call outcomes."""

    agent: Agent
    said: list[tuple[str, str, str]] = field(default_factory=list)  # (call_id, role, text)
    outcomes: dict[str, CallOutcome] = field(default_factory=dict)

    @classmethod
    def create(cls, config: Config, agent_class: type[Agent] = Agent) -> AgentUnderTest:
        holder: list[AgentUnderTest] = []
        agent = agent_class(
            config,
            on_transcript=lambda call_id, role, text: holder[0].said.append((call_id, role, text)),
            on_call_end=lambda call_id, outcome: holder[0].outcomes.__setitem__(call_id, outcome),
        )
        holder.append(cls(agent))
        return holder[0]

    async def start(self, timeout: float = 20.0) -> None:
        await self.agent.start()
        assert self.agent.ua is not None
        assert await self.agent.ua.wait_registered(timeout), self.agent.ua.registration_state

    async def stop(self) -> None:
        await self.agent.stop()

    def lines(self, call_id: str, role: str) -> list[str]:
        return [text for cid, r, text in self.said if cid == call_id and r == role]

    def call_ids(self) -> list[str]:
        """Calls the agent answered (bridged), in answer order."""
        return list(dict.fromkeys([*self.agent.bridges, *self.outcomes]))

    async def wait_calls(self, count: int, timeout: float) -> list[str]:
        assert await wait_until(lambda: len(self.call_ids()) >= count, timeout), (
            f"{len(self.call_ids())} of {count} calls answered")
        return self.call_ids()

    async def wait_said(self, call_id: str, role: str, count: int, timeout: float) -> list[str]:
        """The first ``count`` final transcript lines of ``role`` ("agent" or "caller")."""
        ok = await wait_until(lambda: len(self.lines(call_id, role)) >= count, timeout)
        assert ok, f"expected {count} {role} lines, got {self.said}; inbound RTP: {self.inbound_stats(call_id)}"
        return self.lines(call_id, role)

    def inbound_stats(self, call_id: str) -> str:
        """The call's jitter-buffer counters, for failure messages (why the agent heard nothing)."""
        bridge = self.agent.bridges.get(call_id)
        endpoint = getattr(bridge.media, "endpoint", None) if bridge is not None else None
        return str(getattr(getattr(endpoint, "jitter", None), "stats", "(call over)"))

    async def wait_quiet(self, call_id: str, timeout: float, quiet_s: float = 0.6) -> None:
        """Until the agent has nothing left to play on the call for ``quiet_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since: float | None = None
        while loop.time() < deadline:
            bridge = self.agent.bridges.get(call_id)
            if bridge is None:
                return
            if bridge.media.buffered_ms > 0:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the agent kept talking for {timeout} s")

    async def wait_greeted(self, call_id: str, timeout: float = 45.0) -> None:
        """Until the greeting was said and has finished playing (the caller may speak now)."""
        await self.wait_said(call_id, "agent", 1, timeout)
        await self.wait_quiet(call_id, timeout)

    async def wait_outcome(self, call_id: str, timeout: float) -> CallOutcome:
        assert await wait_until(lambda: call_id in self.outcomes, timeout), f"call {call_id} did not end"
        return self.outcomes[call_id]


@asynccontextmanager
async def running(config: Config, agent_class: type[Agent] = Agent) -> AsyncIterator[AgentUnderTest]:
    """The agent started and registered; stopped (calls ended, unregistered) on exit."""
    under_test = AgentUnderTest.create(config, agent_class)
    try:
        await under_test.start()
        yield under_test
    finally:
        await under_test.stop()


def run(coro: Coroutine[Any, Any, None], timeout: float) -> None:
    """Run one scenario on a fresh event loop, bounded so a hung peer fails the test instead of CI."""

    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


@asynccontextmanager
async def phones(workdir: Path, kamailio: Kamailio, users: list[str], **options: Any) -> AsyncIterator[list[Baresip]]:
    """Started baresip phones, one per user (registered on ``kamailio``); stopped by PID on exit."""
    started: list[Baresip] = []

    async def start(user: str) -> Baresip:
        for attempt in range(3):
            phone = Baresip(workdir / f"phone{user}-{attempt}", user, kamailio.address, **options)
            started.append(phone)
            try:
                await phone.start(timeout=30)
                return phone
            except RuntimeError as exc:
                # Another program took one of its ports between picking and binding: pick new ones.
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                await phone.close()
        raise AssertionError("unreachable")

    try:
        yield list(await asyncio.gather(*(start(user) for user in users)))
    finally:
        await asyncio.gather(*(phone.close() for phone in started), return_exceptions=True)


# -- transcripts --------------------------------------------------------------------------------------
def read_transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def find_transcripts(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def entries(transcript: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in transcript if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())]


# -- prompts the phone plays --------------------------------------------------------------------------
def write_prompt(path: Path, text: str, *, lead_s: float = 0.3, tail_s: float = 30.0, rate: int = 16000) -> float:
    """``text`` spoken by espeak-ng into a mono PCM16 WAV for baresip's aufile source; returns the
    speech's length in seconds. The long silent tail keeps the source running (at the end of its file
    aufile stops sending audio)."""
    from sipagent.realtime.local.tts import Synthesizer

    speech = Resampler(24000, rate).process(Synthesizer().synthesize(text))
    silence = b"\x00\x00"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(silence * int(lead_s * rate) + speech + silence * int(tail_s * rate))
    return len(speech) / 2 / rate


# -- audio a phone heard ------------------------------------------------------------------------------
@dataclass
class Audio:
    samples: np.ndarray  # float in [-1, 1), first channel
    rate: int

    @classmethod
    def read(cls, path: Path) -> Audio:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            raw = wav.readframes(wav.getnframes())
        assert width == 2, f"{path}: expected 16-bit samples"
        data = np.frombuffer(raw[: len(raw) - len(raw) % (2 * channels)], dtype="<i2").reshape(-1, channels)
        return cls(data[:, 0].astype(np.float64) / 32768.0, rate)

    @classmethod
    def read_channel(cls, path: Path, channel: int) -> Audio:
        with wave.open(str(path), "rb") as wav:
            rate, channels = wav.getframerate(), wav.getnchannels()
            raw = wav.readframes(wav.getnframes())
        data = np.frombuffer(raw[: len(raw) - len(raw) % (2 * channels)], dtype="<i2").reshape(-1, channels)
        return cls(data[:, channel].astype(np.float64) / 32768.0, rate)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def window(self, start_s: float, end_s: float | None = None) -> Audio:
        start = max(0, int(start_s * self.rate))
        end = len(self.samples) if end_s is None else max(start, int(end_s * self.rate))
        return Audio(self.samples[start:end], self.rate)

    def voiced_seconds(self, threshold_db: float = -35.0) -> float:
        """How long the 20 ms frames louder than ``threshold_db`` dBFS last in total."""
        frame = self.rate // 50
        usable = len(self.samples) - len(self.samples) % frame
        if usable == 0:
            return 0.0
        frames = self.samples[:usable].reshape(-1, frame)
        rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-12
        return float(np.sum(20 * np.log10(rms) > threshold_db)) * 0.02

    def pcm24k(self) -> bytes:
        pcm = (np.clip(self.samples, -1, 1 - 2**-15) * 32768).astype("<i2").tobytes()
        return pcm if self.rate == 24000 else Resampler(self.rate, 24000).process(pcm)


def speech_segments(audio: Audio, threshold_db: float = -35.0, gap_s: float = 0.35,
                    min_s: float = 0.4) -> list[Audio]:
    """The stretches of speech in ``audio``: loud 20 ms frames, split at pauses of ``gap_s`` or more."""
    frame = audio.rate // 50
    usable = len(audio.samples) - len(audio.samples) % frame
    frames = audio.samples[:usable].reshape(-1, frame)
    loud = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-12) > threshold_db
    segments: list[Audio] = []
    start: int | None = None
    quiet = 0
    max_quiet = int(gap_s / 0.02)
    for index, is_loud in enumerate([*loud, False] + [False] * max_quiet):
        if is_loud:
            start = index if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= max_quiet:
                end = index - quiet + 1
                if (end - start) * 0.02 >= min_s:
                    segments.append(Audio(audio.samples[start * frame : end * frame], audio.rate))
                start, quiet = None, 0
    return segments
