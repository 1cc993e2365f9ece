"""Latency benchmark: the bridge's own share of turn latency, and barge-in latency, over many turns.

One process, one call, loopback: the agent (with the local backend in-process, as ``sipagent run`` starts
it for ``provider: local``) and a SipCaller, so every timestamp below is on the same monotonic clock.
The caller speaks a synthesized sentence (espeak-ng), the agent answers with the backend's fallback reply.
Observers (class-level wrappers installed by this script, no change to sipagent) timestamp:

  C  the caller's last loud packet put on the wire (its playout queue popped it; >= -40 dBFS, the
     backend VAD's threshold)
  Ar the agent's bridge receiving that same packet (``Uplink.caller_frame`` with the same payload bytes)
  Bi the backend receiving that same packet (the ``input_audio_buffer.append`` the bridge built from it:
     the same base64 text, matched in the backend's append handler)
  Bo the backend sending the first ``response.output_audio.delta`` of its reply
  Aq the bridge queueing the first audio of that reply for playout
  A  the agent putting the first audio frame of the reply on the wire (its playout queue popped it)
  A2 the agent's next packet after A (A->A2 should be 20 ms: no burst, no gap after an early first frame)

C and Bi are the same packet on both sides, matched by content. An earlier version took Bi as the last
loud append *the backend* saw; the agent's 8→24 kHz resampler smears the end of the speech into the next
20 ms frame, so that frame can still be "loud" at the backend though it was quiet at the caller, and
the inbound leg read one frame (20 ms) long. That figure is still printed ("level markers") to show it.

Turn latency C→A splits into bridge inbound (C→Bi: UDP, the agent's jitter buffer (eager: frames go up on
arrival), decode, VAD, the WebSocket), backend (Bi→Bo: its VAD silence window, ASR, the configured response
delay, TTS) and bridge outbound (Bo→A: WebSocket, decode/encode, playout queue, and the wait for the next
20 ms tick where the first frame does not go out at once). The bridge's overhead is inbound + outbound; the
naive figure the issue names, C→A minus the configured response delay, is printed too (it still contains
the backend's silence window, ASR and TTS).

Barge-in: while the agent speaks its (long) reply, the caller talks over it. Barge-in is two-stage: at
the caller's onset (``pause_after_ms`` of loud audio above the agent's echo) the agent's playout is ducked
(``stage1: duck``, the default: turned down by ``duck_db``, still playing) or paused, without telling the
model; once speech is confirmed (local VAD: half of the last ``min_speech_ms`` loud;
server: the backend's ``speech_started``, checked against the local VAD) the bridge flushes, truncates and
cancels; a pause that is not confirmed resumes. Per interruption, from the caller's first loud packet on the
wire (onset), on what the agent really sent:

  stop     the barge-in latency: onset → the start of the run of inaudible agent packets (silence, or
           audio ducked by the first stage) in which the truncate was sent (the caller heard no agent audio
           at full level from then on). A first stage that later ended is not a barge-in: if the agent
           played on at full level after it, only the later stop counts.
  pause    onset → the first inaudible agent packet at or after the first stage-1 decision (on the wire)
  truncate onset → the confirmed barge-in (the bridge queues conversation.item.truncate)
  resumed  pauses that resumed during the interruption (false pauses on real speech; should be 0)
  leaked   agent audio packets sent after the stop while the caller was still talking (should be 0)

Variants ``MODE:MIN_SPEECH_MS[:PAUSE_AFTER_MS[:STAGE1]]``; PAUSE_AFTER_MS 0 is the one-stage barge-in (the agent plays
until speech is confirmed), the named alternative the pause is measured against. ``--coughs N`` plays N
60 ms noise bursts over the agent instead and reports the first stages, the agent audio the caller did not
hear at full level per cough (ducked or silent frames), and that none truncated.

``--codec G722`` has the caller offer G.722 (HD voice): the agent's 16 kHz path, its caller frames decoded
through the media clock's ``received`` batch (with one call, a batch of one).

Usage: python bench/latency.py [--turns 20] [--barge-turns N] [--coughs 10] [--codec PCMU|PCMA|G722]
                               [--barge-variants local:200,local:200:0,local:120:0,server:200]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sipagent.agent as agent_mod
import sipagent.realtime.local.server as server_mod
from bench._common import agent_config, free_udp_port, percentiles_ms
from sipagent.bridge.bargein import BargeInPolicy, Duck, Pause, Resume, Unduck
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.interruptions import Interruptions
from sipagent.bridge.uplink import Uplink
from sipagent.config import load_config_text
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import CODEC_SILENCE, Decoder24k, EncoderBatch, ulaw_decode
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.media.playout import PlayoutQueue
from sipagent.media.vad import level_db
from sipagent.realtime import events as realtime_events
from sipagent.realtime.client import RealtimeClient
from sipagent.realtime.local.session import LocalSession
from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import SipCaller

LOUD_DB = -40.0  # the backend VAD's threshold (agent_config): what counts as a speech packet
DELTA_TYPES = ("response.output_audio.delta", "response.audio.delta")
QUESTION = "could you tell me when the store opens"
SHORT_REPLY = "Sure, noted."
LONG_REPLY = ("Our store opens at nine in the morning on weekdays and at ten on weekends, and it closes at "
              "six in the evening every day except on public holidays when we are closed all day long.")


@dataclass
class Timeline:
    """Everything the observers saw, as (monotonic time, value) pairs."""

    caller: list[tuple[float, bool]] = field(default_factory=list)  # (t, loud) per caller packet sent
    # (t, audible) per agent packet sent: audio at full level (not silence, not ducked)
    agent: list[tuple[float, bool]] = field(default_factory=list)
    backend_in: list[tuple[float, bool]] = field(default_factory=list)  # (t, loud) per append decoded
    backend_out: list[tuple[float, str]] = field(default_factory=list)  # (t, event type) sent
    decisions: list[tuple[float, str]] = field(default_factory=list)  # (t, trigger) bridge barge-in begins
    # (t, "pause" | "resume") policy decisions (a duck counts as "pause", its end as "resume")
    pauses: list[tuple[float, str]] = field(default_factory=list)
    agent_queued: list[float] = field(default_factory=list)  # bridge queued model audio for playout
    # The same packet on every hop, matched by content (first occurrence wins).
    caller_payload: dict[float, bytes] = field(default_factory=dict)  # caller send time -> payload
    agent_rx: dict[bytes, float] = field(default_factory=dict)  # payload -> bridge received it
    append_of: dict[bytes, str] = field(default_factory=dict)  # payload -> base64 of the append it became
    backend_rx: dict[str, float] = field(default_factory=dict)  # append base64 -> backend handled it
    current: bytes | None = None  # the payload the bridge is handling right now

    def clear(self) -> None:
        for lst in (self.caller, self.agent, self.backend_in, self.backend_out, self.decisions, self.pauses,
                    self.agent_queued):
            lst.clear()
        for d in (self.caller_payload, self.agent_rx, self.append_of, self.backend_rx):
            d.clear()


TL = Timeline()


def install_observers() -> None:
    class AgentPlayout(PcmPlayout):
        def pop_frame(self) -> tuple[bytes, bool]:
            frame, is_audio = super().pop_frame()
            TL.agent.append((time.monotonic(), is_audio and getattr(self, "_gain_out", 1.0) >= 1.0))
            return frame, is_audio

        def pop_frame_staged(self, batch: EncoderBatch) -> tuple[bytes | None, bool]:
            # The clock's phase ticks stage a G.722 frame here instead of popping it (G.711: pop_frame).
            if not self._batched:
                return self.pop_frame()
            frame, is_audio = super().pop_frame_staged(batch)
            TL.agent.append((time.monotonic(), is_audio and getattr(self, "_gain_out", 1.0) >= 1.0))
            return frame, is_audio

    agent_mod.Agent.playout_class = AgentPlayout

    original_backend_send = server_mod._Connection.send_now

    def backend_send(self: Any, outputs: list[Any]) -> None:
        # Everything the backend sends goes through here: the pacer's audio deltas and every other event.
        now = time.monotonic()
        for out in outputs:
            if isinstance(out, dict):
                TL.backend_out.append((now, str(out.get("type"))))
        original_backend_send(self, outputs)

    server_mod._Connection.send_now = backend_send  # type: ignore[method-assign]

    original_decode = LocalSession._decode_input

    def decode(self: LocalSession, audio: bytes) -> bytes:
        pcm = original_decode(self, audio)
        TL.backend_in.append((time.monotonic(), level_db(pcm) >= LOUD_DB))
        return pcm

    LocalSession._decode_input = decode  # type: ignore[method-assign]

    original_barge_in = Interruptions.barge_in

    async def barge(self: Interruptions, decision: Any, server_cancelled: bool) -> None:
        TL.decisions.append((time.monotonic(), decision.trigger.value))
        await original_barge_in(self, decision, server_cancelled)

    Interruptions.barge_in = barge  # type: ignore[method-assign]

    original_policy_frame = BargeInPolicy.caller_frame

    def policy_frame(self: BargeInPolicy, now: float, loud_ms: int, speech: bool, agent_playing: bool,
                     faint: bool = False) -> Any:
        decision = original_policy_frame(self, now, loud_ms, speech, agent_playing, faint)
        if isinstance(decision, (Pause, Resume, Duck, Unduck)):
            TL.pauses.append((time.monotonic(), "pause" if isinstance(decision, (Pause, Duck)) else "resume"))
        return decision

    BargeInPolicy.caller_frame = policy_frame  # type: ignore[method-assign]

    original_frame = Uplink.caller_frame  # the endpoint calls the uplink directly (CallMedia.attach)
    original_heard = Uplink._heard
    # Frames received and not yet handled: a G.722 frame is handled (_heard) when the media clock's batch
    # decodes it, after caller_frame has returned; each uplink handles its frames in order.
    unheard: dict[int, collections.deque[bytes]] = collections.defaultdict(collections.deque)

    def on_frame(self: Uplink, payload: bytes) -> None:
        TL.agent_rx.setdefault(payload, time.monotonic())
        unheard[id(self)].append(payload)
        original_frame(self, payload)

    def heard(self: Uplink, mean_sq: float) -> None:
        waiting = unheard[id(self)]
        TL.current = waiting.popleft() if waiting else None
        try:
            original_heard(self, mean_sq)
        finally:
            TL.current = None

    Uplink.caller_frame = on_frame  # type: ignore[method-assign]
    Uplink._heard = heard  # type: ignore[method-assign]

    original_send_now = RealtimeClient.send_now
    head, tail = len(realtime_events.AUDIO_APPEND_HEAD), len(realtime_events.AUDIO_APPEND_TAIL)

    def send_now(self: RealtimeClient, text: bytes) -> bool:
        # The bridge writes each inbound frame's append (JSON text from the kernel) at once; note which
        # packet it came from. (An append queued behind other events instead is not noted.)
        if TL.current is not None:
            TL.append_of.setdefault(TL.current, text[head:-tail].decode("ascii"))
        return original_send_now(self, text)

    RealtimeClient.send_now = send_now  # type: ignore[method-assign]

    # Every append's audio goes through ``_append``, whether its text took the backend's quick path (the
    # agent's own append) or the full JSON parse.
    original_append = LocalSession._append

    def on_append(self: LocalSession, raw: bytes, event: dict[str, Any]) -> Any:
        audio = event.get("audio")
        if isinstance(audio, str):
            TL.backend_rx.setdefault(audio, time.monotonic())
        return original_append(self, raw, event)

    LocalSession._append = on_append  # type: ignore[method-assign]

    original_queue = Downlink.queue

    def queue_audio(self: Downlink, item_id: str, pcm24k: bytes) -> None:
        TL.agent_queued.append(time.monotonic())
        original_queue(self, item_id, pcm24k)

    Downlink.queue = queue_audio  # type: ignore[method-assign]


class CallerPlayout(PlayoutQueue):
    """The caller's playout queue, noting when each packet goes out and whether it is speech."""

    def __init__(self, codec: str) -> None:
        super().__init__(frame_bytes=160, silence=CODEC_SILENCE[codec])
        # Each frame's level as the agent hears it; G.722 is adaptive, so its frames are decoded in order.
        self._decode = ulaw_decode if codec == "PCMU" else Decoder24k(codec).decode

    def pop_frame(self) -> tuple[bytes, bool]:
        frame, is_audio = super().pop_frame()
        now = time.monotonic()
        TL.caller.append((now, is_audio and level_db(self._decode(frame)) >= LOUD_DB))
        TL.caller_payload[now] = frame
        return frame, is_audio


def first_after(events: list[tuple[float, Any]], t: float, want: Any) -> float | None:
    return next((at for at, v in events if at > t and v == want), None)


def last_between(events: list[tuple[float, Any]], t0: float, t1: float, want: Any) -> float | None:
    found = None
    for at, v in events:
        if t0 <= at <= t1 and v == want:
            found = at
    return found


async def wait_agent_quiet(after: float, quiet_s: float, timeout: float) -> bool:
    """Until the agent has sent audio after ``after`` and then ``quiet_s`` of silence."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        heard = [t for t, audio in TL.agent if audio and t > after]
        if heard and time.monotonic() - heard[-1] >= quiet_s:
            return True
    return False


async def wait_agent_audio(after: float, seconds: float, timeout: float) -> float | None:
    """Until the agent has been sending audio for ``seconds`` since its first audio after ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        start = first_after(TL.agent, after, True)
        if start is not None and time.monotonic() - start >= seconds:
            return start
    return None


class Session:
    codec = "PCMU"  # what the caller offers (--codec)
    """One agent + one caller for a variant."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.agent: agent_mod.Agent | None = None
        self.clock = MediaClock()
        self.caller: SipCaller | None = None

    async def __aenter__(self) -> Session:
        self.config["media"]["codecs"] = [self.codec]
        cfg = load_config_text(yaml.safe_dump(self.config), "bench")
        self.agent = agent_mod.Agent(cfg)
        await self.agent.start()
        host, port = self.agent.sip_address
        self.clock.start()
        self.caller = SipCaller(self.clock, PortAllocator(30000, 30999), f"sip:agent@{host}:{port}",
                                codec=self.codec)
        TL.clear()  # the previous session's frames would pass for this one's greeting
        dialled = time.monotonic()
        await self.caller.dial()
        assert self.caller._endpoint is not None
        self.caller._endpoint.playout = CallerPlayout(self.codec)
        if not await wait_agent_quiet(dialled, 0.5, 15.0):
            raise RuntimeError("no greeting from the agent")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.caller is not None:
            await self.caller.hangup()
        if self.agent is not None:
            await self.agent.stop()
        self.clock.stop()


async def turn_latency(turns: int, speech: bytes, delay_ms: int, silence_ms: int, jitter_ms: int) -> None:
    config = agent_config(free_udp_port(), greeting="Hello.", fallback=SHORT_REPLY, silence_ms=silence_ms,
                          response_delay_ms=delay_ms, jitter_ms=jitter_ms, rtp_ports="31000-31099")
    rows: dict[str, list[float]] = {k: [] for k in ("total", "naive", "inbound", "in_udp", "in_ws", "inbound_level",
                                                     "backend", "outbound", "out_ws", "out_tick", "overhead",
                                                     "gap12")}
    async with Session(config) as s:
        assert s.caller is not None
        for _ in range(turns):
            TL.clear()
            s.caller.play(speech)
            t_play = time.monotonic()
            if not await wait_agent_quiet(t_play, 0.3, 15.0):
                print("  turn timed out (no reply)", flush=True)
                continue
            c = last_between(TL.caller, t_play, time.monotonic(), True)
            a_any = first_after(TL.agent, c or 0.0, True)
            bi_level = last_between(TL.backend_in, t_play, a_any or 0.0, True)
            payload = TL.caller_payload.get(c) if c is not None else None
            ar = TL.agent_rx.get(payload) if payload is not None else None
            b64 = TL.append_of.get(payload) if payload is not None else None
            bi = TL.backend_rx.get(b64) if b64 is not None else None
            bo = next((t for t, kind in TL.backend_out if bi is not None and t > bi and kind in DELTA_TYPES), None)
            aq = next((t for t in TL.agent_queued if bo is not None and t >= bo), None)
            a = first_after(TL.agent, bo or 0.0, True)
            if None in (c, ar, bi, bo, aq, a, bi_level):
                print("  turn skipped (incomplete timeline)", flush=True)
                continue
            assert c is not None and ar is not None and bi is not None and bo is not None
            assert aq is not None and a is not None and bi_level is not None
            rows["total"].append(a - c)
            rows["naive"].append(a - c - delay_ms / 1000)
            rows["inbound"].append(bi - c)
            rows["in_udp"].append(ar - c)
            rows["in_ws"].append(bi - ar)
            rows["inbound_level"].append(bi_level - c)
            rows["backend"].append(bo - bi)
            rows["outbound"].append(a - bo)
            rows["out_ws"].append(aq - bo)
            rows["out_tick"].append(a - aq)
            rows["overhead"].append((bi - c) + (a - bo))
            a2 = next((at for at, _ in TL.agent if at > a), None)  # the packet after the first audio
            if a2 is not None:
                rows["gap12"].append(a2 - a)
            await asyncio.sleep(0.2)
    print(f"\nturn latency over {len(rows['total'])} turns (response_delay {delay_ms} ms, VAD silence window "
          f"{silence_ms} ms, jitter buffer {jitter_ms} ms)")
    print(f"{'segment':<44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    labels = {
        "total": "C->A  caller last speech -> agent first audio",
        "naive": "C->A minus configured response delay",
        "backend": "Bi->Bo backend (silence+ASR+delay+TTS)",
        "inbound": "C->Bi bridge inbound (same packet)",
        "in_udp": "  C->Ar  UDP + jitter buffer to the bridge",
        "in_ws": "  Ar->Bi decode, VAD, WebSocket to backend",
        "inbound_level": "C->Bi' inbound by level markers (artifact)",
        "outbound": "Bo->A bridge outbound (incl. tick wait)",
        "out_ws": "  Bo->Aq WebSocket, decode, encode, queue",
        "out_tick": "  Aq->A  queued -> on the wire (any tick wait)",
        "overhead": "bridge overhead = inbound + outbound",
        "gap12": "A->A2  first to second reply frame on the wire",
    }
    for key, label in labels.items():
        p = percentiles_ms(rows[key], (50, 95))
        print(f"{label:<44} {p['p50']:>8.1f} {p['p95']:>8.1f} {p['max']:>8.1f}")
    p95 = percentiles_ms(rows["overhead"], (95,))["p95"]
    backend_extra = percentiles_ms(rows["backend"], (50,))["p50"] - silence_ms - delay_ms
    print(f"bridge overhead p95 vs the 30 ms goal: {p95 / 30:.2f}x; vs the configured response delay: "
          f"{p95 / delay_ms:.2f}x. Backend beyond its silence window and delay (ASR+TTS), p50: "
          f"{backend_extra:.0f} ms", flush=True)


def stop_of_barge_in(events: list[tuple[float, bool]], decided: float) -> float | None:
    """Start of the run of non-audio agent packets the confirmed barge-in at ``decided`` is in: the last agent
    audio the caller heard before it. None if the agent was still sending audio 40 ms after the decision."""
    after = next((i for i, (at, _) in enumerate(events) if at >= decided + 0.04), None)
    if after is None or events[after][1]:
        return None
    i = after
    while i > 0 and not events[i - 1][1]:
        i -= 1
    return events[i][0]


async def barge_in(turns: int, speech: bytes, mode: str, min_speech_ms: int, pause_ms: int | None,
                   jitter_ms: int, stage1: str | None = None) -> None:
    barge: dict[str, Any] = {"mode": mode, "min_speech_ms": min_speech_ms, "protect_greeting_ms": 1000}
    if pause_ms is not None:
        barge["pause_after_ms"] = pause_ms
    if stage1:
        barge["stage1"] = stage1
    config = agent_config(free_udp_port(), greeting="Hello.", fallback=LONG_REPLY, jitter_ms=jitter_ms,
                          barge_in=barge, rtp_ports="31100-31199")
    rows: dict[str, list[float]] = {"stop": [], "pause": [], "truncate": [], "server speech_started": []}
    missed = resumed = leaked = 0
    # Interrupt at a different point of the reply each time (seeded: the same points in every variant), so
    # the agent's level under the caller's onset and the phase of its 20 ms tick vary as on real calls.
    into_reply = random.Random(8)
    async with Session(config) as s:
        assert s.caller is not None
        s.caller.play(speech)  # the first question; every barge-in after that is the next question
        after = time.monotonic()
        for _ in range(turns):
            started = await wait_agent_audio(after, into_reply.uniform(0.6, 3.0), 20.0)
            if started is None:
                print("  the agent did not reply; stopping this variant", flush=True)
                break
            TL.clear()
            s.caller.play(speech)
            played = time.monotonic()
            await asyncio.sleep(len(speech) / 48000 + 0.5)
            after = time.monotonic()  # the next reply is the one to this question, whatever played before
            onset = first_after(TL.caller, played - 0.001, True)
            decided = next((t for t, _ in TL.decisions if onset is not None and t > onset), None)
            stop = stop_of_barge_in(TL.agent, decided) if decided is not None else None
            if onset is None or decided is None or stop is None:
                missed += 1
                continue
            rows["stop"].append(stop - onset)
            # Agent audio after the stop while the caller is still talking (its reply cannot have begun).
            leaked += sum(1 for t, audio in TL.agent if audio and stop < t < onset + len(speech) / 48000)
            rows["truncate"].append(decided - onset)
            paused = first_after(TL.pauses, onset, "pause")
            if paused is not None:
                wire = next((t for t, audio in TL.agent if t >= paused and not audio), None)
                if wire is not None:
                    rows["pause"].append(wire - onset)
            resumed += sum(1 for t, kind in TL.pauses if kind == "resume" and t > onset)
            started_at = next((t for t, kind in TL.backend_out
                               if t > onset and kind == "input_audio_buffer.speech_started"), None)
            if started_at is not None:
                rows["server speech_started"].append(started_at - onset)
    p = percentiles_ms(rows["stop"], (50, 95))
    pause_label = "default" if pause_ms is None else f"{pause_ms} ms"
    print(f"barge-in {mode:<6} min_speech {min_speech_ms:>3} ms  n={len(rows['stop']):<3} missed={missed}  "
          f"pause_after {pause_label}, stage1 {stage1 or 'default'}:\n"
          f"    stop p50 {p['p50']:6.1f}  p95 {p['p95']:6.1f}  max {p['max']:6.1f} ms;  "
          f"p95 vs 50 ms goal {p['p95'] / 50:.2f}x; first stages ended on real speech: {resumed}; agent "
          f"frames at full level after the stop: {leaked}", flush=True)
    print("    stops (ms): " + " ".join(f"{v * 1000:.0f}" for v in sorted(rows["stop"])), flush=True)
    for name in ("pause", "truncate", "server speech_started"):
        q = percentiles_ms(rows[name], (50, 95))
        print(f"    onset -> {name:<22} n={len(rows[name]):<3} p50 {q['p50']:6.1f}  p95 {q['p95']:6.1f}  "
              f"max {q['max']:6.1f} ms", flush=True)


def cough_burst(ms: int = 60, db: float = -12.0) -> bytes:
    """Noise as loud as the agent, shorter than min_speech_ms (a cough, a knock), 24 kHz PCM16."""
    noise = np.random.default_rng(7).standard_normal(24 * ms)
    pcm = (noise / np.sqrt(np.mean(noise**2)) * 32768 * 10 ** (db / 20)).clip(-32768, 32767).astype("<i2")
    return bytes(pcm.tobytes())


async def coughs(count: int, speech: bytes, jitter_ms: int, stage1: str | None = None) -> None:
    """Short bursts over the agent with the default barge-in config (local mode): each should duck (or
    pause) and end, never truncate. Reports the agent audio the caller did not hear at full level."""
    barge: dict[str, Any] = {"mode": "local", "protect_greeting_ms": 1000}
    if stage1:
        barge["stage1"] = stage1
    config = agent_config(free_udp_port(), greeting="Hello.", fallback=LONG_REPLY, jitter_ms=jitter_ms,
                          barge_in=barge, rtp_ports="31200-31299")
    gaps: list[float] = []
    pauses = resumes = truncates = 0
    async with Session(config) as s:
        assert s.caller is not None
        s.caller.play(speech)
        after = time.monotonic()
        if await wait_agent_audio(after, 1.0, 20.0) is None:
            print("  the agent did not reply", flush=True)
            return
        for _ in range(count):
            TL.clear()
            s.caller.play(cough_burst())
            await asyncio.sleep(0.8)
            pauses += sum(1 for _, kind in TL.pauses if kind == "pause")
            resumes += sum(1 for _, kind in TL.pauses if kind == "resume")
            truncates += len(TL.decisions)
            silent = [t for t, audio in TL.agent if not audio]
            if silent and TL.agent[-1][1]:  # the agent was playing again at the end
                gaps.append(len(silent) * 0.02)
            if not TL.agent or not any(audio for _, audio in TL.agent[-10:]):
                break  # the reply ended: no more agent audio to cough over
    q = percentiles_ms(gaps, (50, 95))
    print(f"coughs (60 ms noise at -12 dBFS, local:200, stage1 {stage1 or 'default'}): n={count} "
          f"first stages={pauses} ended={resumes} truncates={truncates}; agent audio not heard at full level "
          f"(silent or ducked) per cough p50 {q['p50']:.0f}  p95 {q['p95']:.0f}  max {q['max']:.0f} ms",
          flush=True)


async def main_async(args: argparse.Namespace) -> None:
    from sipagent.realtime.local.tts import Synthesizer

    speech = await asyncio.to_thread(Synthesizer().synthesize, QUESTION)
    print(f"caller utterance: {QUESTION!r} ({len(speech) / 48000:.2f} s, espeak-ng); one call, one process, "
          f"loopback; {Session.codec}")
    if args.turns > 0:
        await turn_latency(args.turns, speech, args.delay_ms, args.silence_ms, args.jitter_ms)
    interruptions = max(1, args.turns if args.barge_turns is None else args.barge_turns)
    if args.barge_variants:
        print(f"\nbarge-in latency over {interruptions} interruptions per variant (caller onset -> agent audio "
              "stops on the wire)")
        for variant in args.barge_variants.split(","):
            mode, ms, pause, stage1 = [*variant.split(":"), "", "", ""][:4]
            await barge_in(interruptions, speech, mode, int(ms or 200), int(pause) if pause else None,
                           args.jitter_ms, stage1 or None)
    if args.coughs > 0:
        print()
        for stage1 in args.cough_stage1.split(","):
            await coughs(args.coughs, speech, args.jitter_ms, stage1 if stage1 != "default" else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--delay-ms", type=int, default=200, help="the backend's response_delay_ms")
    parser.add_argument("--silence-ms", type=int, default=500, help="the server VAD silence window")
    parser.add_argument("--jitter-ms", type=int, default=60, help="the agent's media.jitter_ms")
    parser.add_argument("--barge-variants", default="local:200,local:200:0,local:120:0,server:200")
    parser.add_argument("--barge-turns", type=int, default=None, help="interruptions per variant (default: --turns)")
    parser.add_argument("--coughs", type=int, default=10, help="noise bursts over the agent (0: none)")
    parser.add_argument("--cough-stage1", default="default", help="first stages to cough over: default,duck,pause")
    parser.add_argument("--codec", choices=("PCMU", "PCMA", "G722"), default="PCMU", help="what the caller offers")
    args = parser.parse_args()
    Session.codec = args.codec
    import logging

    logging.basicConfig(level=logging.WARNING)
    install_observers()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
