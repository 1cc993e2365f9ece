"""What the bridge sends the model for each caller frame, byte for byte: the fused kernel path (one call
per frame, cached silence appends, the client's own framing) against the composed primitives.

The bridge runs with its real kernel, VAD, RealtimeClient and websockets connection; only the socket is
replaced by a transport that keeps what is written, read back by a websockets server core."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.protocol import SERVER, Protocol, State
from websockets.uri import parse_uri

from sipagent.bridge.call import BridgeSettings, CallBridge
from sipagent.bridge.settings import AgentConfig, BargeInConfig, RecordingConfig
from sipagent.media.kernel import (
    CODEC_SILENCE,
    Decoder24k,
    DecoderBatch,
    Encoder24k,
    FrameDecoder,
    Resampler,
    ulaw_encode,
)
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.media.vad import EchoAwareVad, VadSettings, level_db
from sipagent.realtime import events as ev
from sipagent.realtime.client import MaskSource, RealtimeClient


class KeptWrites(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: Any) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Leg:
    """The answered call and its media as the bridge sees them: the agent's audio in a real playout queue,
    popped by the test as the clock would."""

    call_id, from_uri, end_reason = "uplink-test", "sip:caller@example.com", ""
    played_ms = buffered_ms = 0

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.ended = asyncio.Event()
        self.playout = PcmPlayout(codec)

    @property
    def sent_audio(self) -> tuple[bytes, float]:
        return self.playout.sent_pcm, self.playout.sent_mean_square

    def flush_audio(self) -> int:
        return 0

    def pause_audio(self) -> None:
        pass

    def duck_audio(self, gain: float) -> None:
        pass

    def unduck_audio(self) -> None:
        pass


def speech(db: float, n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 24000
    x = np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 2 * t) + 0.3 * rng.standard_normal(n)
    return (x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (db / 20)).clip(-32768, 32767).astype("<i2").tobytes()


def live_bridge(codec: str, audio_format: str, batch: DecoderBatch | None) -> tuple[CallBridge, Leg, KeptWrites]:
    """A live call's bridge whose Realtime connection writes into the returned transport."""
    settings = BridgeSettings(AgentConfig(barge_in=BargeInConfig(mode="server")),
                              RecordingConfig(transcripts=False), ev.SessionSettings(), audio_format=audio_format,
                              frames=batch)
    leg = Leg(codec)
    bridge = CallBridge(leg, leg, None, settings)  # type: ignore[arg-type]
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/v1/realtime"))
    protocol.state = State.OPEN
    connection = ClientConnection(protocol)
    wire = KeptWrites()
    connection.connection_made(wire)
    link = RealtimeClient("ws://127.0.0.1/v1/realtime")
    link._ws, link._masks = connection, MaskSource()  # what connect() sets up
    bridge.realtime.link, bridge.call_state.name = link, "live"
    return bridge, leg, wire


def sent_texts(wire: bytes) -> list[str]:
    """The text frames written to the WebSocket, as a server reads them."""
    server = Protocol(SERVER)
    server.receive_data(wire)
    return [bytes(frame.data).decode() for frame in server.events_received()]


@pytest.mark.parametrize(("codec", "audio_format", "batched"),
                         [("PCMU", "pcm16", False), ("G722", "pcm16", False), ("PCMA", "g711_alaw", False),
                          ("G722", "g711_ulaw", False), ("G722", "pcm16", True), ("G722", "g711_ulaw", True),
                          ("PCMU", "pcm16", True)])
def test_appends_are_those_of_the_composed_path(codec: str, audio_format: str, batched: bool) -> None:
    """``batched``: the bridge's caller frames are decoded in a DecoderBatch, each with four other calls'
    frames of the same loop pass (the kernel's lanes), and handled when the pass ends."""
    agent = speech(-12, 24000, 1)  # 1 s of the agent, then silence
    caller = Encoder24k(codec).encode(speech(-34, 12000, 2) + speech(-14, 12000, 3) + speech(-60, 12000, 4))
    frames = len(caller) // 160
    batch = DecoderBatch() if batched else None
    scheduled: list[Callable[[], None]] = []
    others = [FrameDecoder("G722") for _ in range(4)]
    if batch is not None:
        batch.schedule = scheduled.append

    def end_of_pass() -> None:
        runs = scheduled[:]
        scheduled.clear()
        for run in runs:
            run()

    async def run() -> bytes:
        bridge, leg, wire = live_bridge(codec, audio_format, batch)
        leg.playout.push(agent)
        wire_before = len(wire.data)
        for i in range(frames):
            bridge.on_outbound_frame(*leg.playout.pop_frame())
            bridge.on_inbound_frame(caller[160 * i : 160 * (i + 1)])
            if batch is not None:
                for other in others:
                    batch.stage(other, caller[160 * i : 160 * (i + 1)], lambda ms: None)
                if codec == "G722":
                    assert len(batch) == 5 and len(wire.data) == wire_before  # nothing sent before the pass ends
                end_of_pass()
                wire_before = len(wire.data)
        return bytes(wire.data)

    texts = sent_texts(asyncio.run(run()))

    # The same frames through the separate primitives, as the bridge composed them before.
    vad = EchoAwareVad(VadSettings(threshold_db=-35.0, min_speech_ms=200))
    down = Decoder24k(codec)
    to_8k = Resampler(24000, 8000)
    expected, echo_frames = [], 0
    for i in range(frames):
        sent = agent[960 * i : 960 * (i + 1)]  # the echo reference: the PCM each frame was encoded from
        vad.agent_frame(level_db(sent) if sent else -96.0)
        payload = caller[160 * i : 160 * (i + 1)]
        pcm = down.decode(payload)
        vad.caller_frame(pcm)
        if vad.echo_only:
            echo_frames += 1
            pcm, payload = bytes(len(pcm)), CODEC_SILENCE[codec]
        if audio_format == "pcm16":
            audio = pcm
        elif codec == "PCMA":
            audio = payload
        else:
            audio = ulaw_encode(to_8k.process(pcm))
        expected.append(ev.audio_append_json(audio))
    assert 10 < echo_frames < frames - 10  # both kinds of frames were sent
    assert texts == expected


def test_a_frame_staged_before_a_codec_change_is_sent_as_its_own_codec_decoded_it() -> None:
    """A re-INVITE moves the call to PCMU while its last G.722 frame waits in the batch: that frame is
    handled first, with the G.722 decoder that decoded it; the next frame is PCMU's."""
    g722 = Encoder24k("G722").encode(speech(-14, 480, 5))
    pcmu = Encoder24k("PCMU").encode(speech(-14, 480, 6))
    batch = DecoderBatch()
    scheduled: list[Callable[[], None]] = []
    batch.schedule = scheduled.append

    async def run() -> bytes:
        bridge, _, wire = live_bridge("G722", "pcm16", batch)
        bridge.on_inbound_frame(g722)
        assert len(batch) == 1 and not wire.data
        bridge.uplink.use_codec("PCMU")
        assert len(batch) == 0 and wire.data  # handled before the change
        bridge.on_inbound_frame(pcmu)
        for run in scheduled:
            run()
        return bytes(wire.data)

    expected = [ev.audio_append_json(Decoder24k("G722").decode(g722)),
                ev.audio_append_json(Decoder24k("PCMU").decode(pcmu))]
    assert sent_texts(asyncio.run(run())) == expected


@pytest.mark.parametrize(("codec", "batched"), [("G722", False), ("G722", True), ("PCMU", False)])
def test_a_gap_in_the_caller_stream(codec: str, batched: bool) -> None:
    """The jitter buffer's stand-ins for a lost frame (the last payload once more, then silence) are heard as
    silence, never decoded (G.722's decoder is stateful); G.722 decodes the frames after the loss from a fresh
    state (carried on, its adaptation is off by what the lost frames taught the far end's encoder)."""
    payloads = Encoder24k(codec).encode(speech(-14, 24000, 7))
    frames = [payloads[160 * i : 160 * (i + 1)] for i in range(len(payloads) // 160)]
    lost = range(20, 23)  # three frames lost in the middle of speech
    batch = DecoderBatch() if batched else None
    scheduled: list[Callable[[], None]] = []
    if batch is not None:
        batch.schedule = scheduled.append
    levels: list[float] = []

    async def run() -> bytes:
        bridge, _, wire = live_bridge(codec, "pcm16", batch)
        for i, frame in enumerate(frames):
            if i in lost:
                bridge.uplink.caller_gap(frames[19] if i == 20 else CODEC_SILENCE[codec])
            else:
                bridge.uplink.caller_frame(frame)
            if i == 19:
                # Frame 19 waits in the batch when the gap comes (a late tick in the same pass): it is
                # handled first, with the decoder that decoded it.
                levels.append(bridge.uplink.vad.last_level_db)
                continue
            for run in scheduled:
                run()
            scheduled.clear()
            levels.append(bridge.uplink.vad.last_level_db)
        return bytes(wire.data)

    texts = sent_texts(asyncio.run(run()))
    decoder = Decoder24k(codec)
    expected = []
    for i, frame in enumerate(frames):
        if i in lost:
            expected.append(ev.audio_append_json(bytes(960)))
            if codec == "G722":
                decoder = Decoder24k(codec)  # what comes after is decoded afresh
            continue
        expected.append(ev.audio_append_json(decoder.decode(frame)))
    assert texts == expected
    assert [levels[i] for i in lost] == [-96.0] * 3  # quiet to the voice detector
    if batched:
        assert levels[19] == levels[18]  # frame 19 was not heard until the gap ran the batch
