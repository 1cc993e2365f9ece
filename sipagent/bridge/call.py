"""One answered call bridged to one Realtime session.

The bridge composes what the lower layers provide (the SIP call, an RTP endpoint on the shared media
clock, the native transcoders, a Realtime connection) and owns only the policy between them: barge-in,
tools, DTMF, idle prompts, transcripts and recordings, recovery when the WebSocket drops.

States (logged on every change): answering → connecting → live ⇄ (agent speaking) → transferring /
ending → ended, and live ⇄ held while the far end holds the call (a re-INVITE: ``set_hold``). "Agent
speaking" is not stored: it is whether the playout queue holds audio.

Every call ends by itself: the caller or the agent hangs up, or a limit ends it — agent.max_call_s (the
agent says max_call_message first), media.rtp_timeout_s without media (not on hold), agent.idle_timeout_s of
silence (a prompt, then the goodbye). Limits are timers of their own, never work per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sipagent.bridge.bargein import BargeIn, BargeInPolicy, Duck, Pause, Resume, Trigger, Unduck
from sipagent.bridge.call_events import ToolUse
from sipagent.bridge.context import CallContext, TemplateError, render
from sipagent.bridge.conversation import Conversation
from sipagent.bridge.digits import (
    Collected,
    CollectSpec,
    DigitCollector,
    ToolArgumentError,
    collect_spec,
    send_digits,
)
from sipagent.bridge.settings import AgentConfig, DtmfConfig, RecordingConfig, ToolConfig
from sipagent.bridge.tools import ToolResult, parse_arguments, run_webhook
from sipagent.bridge.transcript import StereoRecorder, TranscriptWriter, call_file_stem
from sipagent.errors import RealtimeError, RtpError
from sipagent.media.gain import duck_gain
from sipagent.media.kernel import (
    CODEC_SILENCE,
    Base64Decoder,
    Encoder24k,
    FrameDecoder,
    Resampler,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from sipagent.media.vad import SILENCE_DB, EchoAwareVad, VadSettings, mean_square_db
from sipagent.observability.logs import call_logger
from sipagent.observability.metrics import Metrics, RecordingKind
from sipagent.realtime import events as ev

log = logging.getLogger(__name__)

FRAME_24K_BYTES = 960  # 20 ms of 24 kHz PCM16
BENIGN_ERRORS = frozenset({"response_cancel_not_active"})
DTMF_FLUSH_S = 1.5  # digits typed with pauses shorter than this go to the model together
GOODBYE_LIMIT_S = 20.0  # a goodbye the model has not said (and the caller heard) by then: hang up anyway
CANCEL_WAIT_S = 2.0  # how long a goodbye waits for the response it cancelled to end before it asks for its own


class RealtimeLink(Protocol):
    """What the bridge needs of a Realtime connection (sipagent.realtime.client.RealtimeClient)."""

    async def send(self, event: dict[str, Any] | str) -> None:
        """An event as a mapping, or already as JSON text (the per-frame audio appends)."""

    def send_now(self, text: bytes) -> bool:
        """Write JSON text (UTF-8) to the socket without a task switch if nothing stands in the way; False
        when it could not (then ``send`` it, as str)."""

    async def recv(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class CallLeg(Protocol):
    """What the bridge needs of the SIP call (sipagent.sip.ua.IncomingCall), once answered."""

    call_id: str
    from_uri: str
    ended: asyncio.Event
    end_reason: str  # set when ``ended`` is: "remote-bye", "transferred", ...

    async def hangup(self) -> None: ...

    async def transfer(self, target: str, timeout: float = 30) -> bool: ...


class MediaLeg(Protocol):
    """What the bridge needs of the call's RTP endpoint and its playout queue."""

    codec: str

    def push_audio(self, payload: bytes) -> None: ...

    def flush_audio(self) -> int: ...

    def pause_audio(self) -> None: ...

    def resume_audio(self) -> None: ...

    def duck_audio(self, gain: float) -> None:
        """Turn the agent's audio down to ``gain`` from the next frame on; it plays on (nothing held)."""

    def unduck_audio(self) -> None: ...

    @property
    def played_ms(self) -> int: ...

    @property
    def buffered_ms(self) -> int: ...

    @property
    def packets_received(self) -> int:
        """RTP packets taken from the far end: a count that changes whenever media arrives (it restarts with
        a new source), which the media timeout watches."""

    @property
    def can_send_dtmf(self) -> bool:
        """The far end negotiated RFC 4733 telephone-events."""

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Queue one key as RFC 4733 events, sent on the clock's ticks in place of audio."""

    @property
    def dtmf_sending(self) -> bool:
        """Keys queued by ``send_dtmf`` are still going out."""


@dataclass
class BridgeSettings:
    agent: AgentConfig
    recording: RecordingConfig
    session: ev.SessionSettings
    profile: str = "default"  # the agent profile the call was routed to (agent: the profile's settings)
    route: str = "default"  # why: "route 2", "account support" or "default"
    dialect: ev.Dialect = "ga"
    audio_format: str = "pcm16"
    max_session_s: float = 3300.0
    rtp_timeout_s: float = 30.0  # media.rtp_timeout_s: no RTP this long (not on hold) ends the call; 0 = never
    reconnect_delays: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    apology_audio: Callable[[str], Awaitable[bytes]] | None = None  # text → 24 kHz PCM16 (local TTS)
    metrics: Metrics | None = None
    # context.defaults: what a template variable absent from the call renders as (keys as Variable.key).
    context_defaults: Mapping[str, str] = field(default_factory=dict)


@dataclass
class CallOutcome:
    reason: str
    transcript_path: Path | None = None
    recording_path: Path | None = None
    usage: dict[str, int] = field(default_factory=dict)
    barge_ins: list[float] = field(default_factory=list)
    false_pauses: int = 0  # the agent paused at a caller's onset that was not confirmed as speech
    tools: list[ToolUse] = field(default_factory=list)  # every tool call the model made, in order
    transfer_target: str = ""  # where a transferred call went: the target's name ("default", "on_failure")
    transfer_uri: str = ""  # ... and its URI; both "" unless the outcome is a transfer


@dataclass
class _Greeting:
    """The greeting's transcript entry, written once the greeting is over (played to its end, cut by the
    caller or a limit, or the call ended) so that it can say how much of it the caller heard."""

    text: str = ""  # the model's transcript of it, once known
    sent_all: bool = False  # the model finished it (response.done, completed): its length is known
    heard_ms: int | None = None  # None while it has not stopped playing
    total_ms: int | None = None  # its whole length; None when it was cut before the model had sent all of it
    interrupted: bool = False
    written: bool = False


class CallBridge:
    def __init__(
        self,
        call: CallLeg,
        media: MediaLeg,
        connect: Callable[[], Awaitable[RealtimeLink]],
        settings: BridgeSettings,
        on_transcript: Callable[[str, str], None] | None = None,
        context: CallContext | None = None,
    ) -> None:
        self.call = call
        self.log = call_logger(log, call.call_id)  # its callbacks also run outside the call's task
        self.media = media
        self._connect = connect
        self.settings = settings
        self.context = context or CallContext(call.call_id, datetime.now(UTC).astimezone())
        # The templates of this call's texts, filled in once: the instructions and everything the agent says.
        self.agent, self.session = self._render_texts(settings.agent, settings.session)
        self.on_transcript = on_transcript
        self.conversation = Conversation()
        barge = self.agent.barge_in
        self.policy = BargeInPolicy(barge.mode, barge.protect_greeting_ms, pause_after_ms=barge.pause_after_ms,
                                    resume_after_ms=barge.resume_after_ms, stage1=barge.stage1,
                                    unduck_after_ms=barge.unduck_after_ms)
        self._duck_gain = duck_gain(barge.duck_db)
        self._onset_at = 0.0  # the caller's first loud frame of the speech the agent is paused (ducked) on
        self._stage1_played_ms = 0  # what the caller had heard at full level when the first stage began
        self.vad = EchoAwareVad(VadSettings(threshold_db=self.agent.barge_in.threshold_db,
                                            min_speech_ms=self.agent.barge_in.min_speech_ms))
        self._passthrough = _passthrough_codec(settings.audio_format)
        # G.711 to the model from a call in another codec: our 24 kHz audio, down to 8 kHz and encoded.
        self._to_8k = Resampler(24000, 8000) if self._passthrough else None
        self._use_codec(media.codec)
        self._held = False
        self._held_since = 0.0
        self._down_decode = _wire_decoder(settings.audio_format)
        self._base64 = Base64Decoder()  # the deltas' base64 in C: ~2.6 us instead of ~7.9 per 40 ms
        self.state = "answering"
        self._link: RealtimeLink | None = None
        self._outbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done = asyncio.Event()
        self._outcome = "remote-hangup"
        self._pending_action: tuple[str, dict[str, Any]] | None = None
        self._dtmf: list[tuple[str, float]] = []  # keys not yet passed to the model, with when they came
        self._dtmf_task: asyncio.Task[None] | None = None
        self._collector: DigitCollector | None = None  # a collect_digits entry under way
        self._collector_woken = asyncio.Event()  # a key came for it
        self._last_activity = time.monotonic()
        self._idle_prompts = 0
        self._greeting_pending = bool(self.agent.greeting)
        self._greeting = _Greeting() if self.agent.greeting else None
        self._closing: str | None = None  # the outcome of a goodbye under way (nothing else starts then)
        self._response_done = asyncio.Event()  # set at each response.done (a goodbye waits for its own)
        self.metrics = settings.metrics
        started = datetime.now(UTC)
        self._origin = time.monotonic()
        stem = call_file_stem(call.call_id, started)
        directory = Path(settings.recording.dir)
        recording = settings.recording
        self.transcript = TranscriptWriter(directory / f"{stem}.jsonl", self._origin,
                                           on_error=self._file_failed("transcript")) if recording.transcripts else None
        self.recorder = StereoRecorder(directory / f"{stem}.wav",
                                       on_error=self._file_failed("audio")) if recording.audio else None
        self.barge_in_times: list[float] = []
        self.turn_latencies: list[float] = []
        self._turn_ended_at: float | None = None
        self.reconnects = 0
        self.tool_uses: list[ToolUse] = []
        # The transfer under way (target name, URI), set before the REFER: a completed transfer can end the
        # call before transfer() returns, and the outcome still names where the caller went.
        self._transfer_to: tuple[str, str] | None = None

    def _render_texts(self, agent: AgentConfig, session: ev.SessionSettings) -> tuple[AgentConfig, ev.SessionSettings]:
        variables = self.context.variables(self.settings.context_defaults)

        def fill(text: str) -> str:
            try:
                return render(text, variables)
            except TemplateError as exc:  # the loader checks every template; settings built in code may not be
                self.log.warning("template not filled in (%s): %s", exc, text[:60])
                return text

        failure = dataclasses.replace(agent.on_failure, message=fill(agent.on_failure.message))
        agent = dataclasses.replace(agent, greeting=fill(agent.greeting), idle_prompt=fill(agent.idle_prompt),
                                    goodbye=fill(agent.goodbye), max_call_message=fill(agent.max_call_message),
                                    on_failure=failure)
        return agent, dataclasses.replace(session, instructions=fill(session.instructions))

    def _use_codec(self, codec: str) -> None:
        """Everything of the bridge that depends on the call's codec, with fresh codec state (as the far end
        has after a change): at the answer, and again when a re-INVITE changes the codec."""
        self.codec = codec
        # Each caller frame goes to the model as an append of its 24 kHz PCM (pcm16) or of the payload
        # itself (G.711 of the call's own codec): then the kernel writes the append's JSON text as it
        # decodes the frame. G.711 from a call in another codec is re-encoded here (_up_encode).
        self._kernel_text = self._passthrough is None or self._passthrough == codec
        self.decoder = FrameDecoder(codec, ("payload" if self._passthrough else "pcm") if self._kernel_text
                                    else None, ev.AUDIO_APPEND_HEAD.encode(), ev.AUDIO_APPEND_TAIL.encode())
        self._silence_texts: dict[int, bytes] = {}  # payload length -> the append of an echo-only frame
        self.encoder = Encoder24k(codec)
        # What was sent, back to 24 kHz: the echo reference barge-in compares the caller with, and the
        # recording's agent side. Decoding the new codec's frames with the old decoder would give noise.
        self._agent_decoder = FrameDecoder(codec)

    # ---------------------------------------------------------------- re-INVITEs

    def change_codec(self, codec: str) -> None:
        """A re-INVITE moved the call to ``codec`` (the endpoint has already moved its playout queue to it):
        the caller's frames are decoded, the agent's audio encoded and the echo reference taken in it."""
        if codec == self.codec:
            return
        previous = self.codec
        self._use_codec(codec)
        self.media.codec = codec
        self.log.info("codec %s -> %s", previous, codec)
        self._record("event", event="codec-change", codec=codec, previous=previous)

    @property
    def on_hold(self) -> bool:
        """The far end holds the call (its re-INVITE said sendonly, inactive or c=0.0.0.0): a held leg may
        send no media, and the caller is not idle."""
        return self._held

    def set_hold(self, held: bool, direction: str = "") -> None:
        """The far end put the call on hold (``direction``: ours in the answer) or took it off.

        The endpoint sends nothing while held. Here: nothing from the line reaches the model (what comes is
        the PBX's music, not the caller: the model would talk over it or answer it) or the barge-in policy;
        the idle timer stands still (state "held"); the agent's audio waits in the playout queue, and a
        response the model is still streaming goes on into it. Nothing is cancelled: after the hold the
        caller hears the rest word for word, where cancelling and asking again would say it differently,
        spend the tokens twice and lose the truncation point. The voice detector starts afresh on resume,
        since what it measured on hold was music."""
        if held == self._held:
            return
        now = time.monotonic()
        self._held = held
        queued_ms = self.media.buffered_ms
        if held:
            self._held_since = now
            self.log.info("held by the far end (%s); %d ms of agent audio waits", direction, queued_ms)
            self._record("event", event="hold", direction=direction, queued_ms=queued_ms)
            if self.state == "live":
                self._set_state("held")
        else:
            held_ms = round((now - self._held_since) * 1000)
            self.vad = EchoAwareVad(self.vad.settings)
            self._last_activity = now
            self.log.info("resumed after %d ms on hold; %d ms of agent audio to play", held_ms, queued_ms)
            self._record("event", event="resume", held_ms=held_ms, queued_ms=queued_ms)
            if self.state == "held":
                self._set_state("live")

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> CallOutcome:
        """Runs the call until either side or a limit ends it. Never raises: whatever fails, the call ends
        and its outcome is returned (``error`` for a fault of our own), so that it is counted."""
        self._record("call", event="start", call_id=self.call.call_id, caller=self.call.from_uri,
                     codec=self.codec, profile=self.settings.profile, route=self.settings.route,
                     context=self.context.to_json())
        try:
            self._set_state("connecting")
            if not await self._open_session(first=True):
                await self._fail_over("the Realtime API could not be reached")
            else:
                self._set_state("live")
                self._spawn(self._pump())
                self._spawn(self._read_events())
                self._spawn(self._watch_idle())
                self._spawn(self._watch_call_length())
                self._spawn(self._watch_media())
                self._spawn(self._renew_before_limit())
                ended = asyncio.ensure_future(self.call.ended.wait())
                done = asyncio.ensure_future(self._done.wait())
                await asyncio.wait({ended, done}, return_when=asyncio.FIRST_COMPLETED)
                for waiter in (ended, done):
                    waiter.cancel()
                if not self._done.is_set() and self.call.end_reason == "transferred":
                    # A completed transfer ends the SIP call before transfer() returns to the bridge.
                    self._outcome = "transferred"
                elif not self._done.is_set() and self.call.end_reason in ("session-expired", "refresh-failed"):
                    # RFC 4028: nobody refreshed the session (or our refresh was refused): the PBX has most
                    # likely forgotten the call; not a caller hanging up.
                    self._outcome = "session-expired"
        except Exception:
            # Whatever failed, the call is over and must be counted as such (outcome, calls_active).
            self.log.exception("call failed")
            self._outcome = "error"
        finally:
            await self._cleanup()
        transferred = self._outcome in ("transferred", "failover-transferred") and self._transfer_to is not None
        target, uri = self._transfer_to if transferred and self._transfer_to else ("", "")
        tools = list(self.tool_uses)
        if self._outcome == "transferred":
            tools.append(ToolUse("transfer_call", True))  # a failed one was recorded with its error output
        return CallOutcome(
            self._outcome,
            self.transcript.path if self.transcript and self.transcript.ok else None,  # None: see the log
            self.recorder.path if self.recorder and self.recorder.ok else None,
            dict(self.conversation.usage),
            list(self.barge_in_times),
            self.policy.false_alarms,
            tools,
            target,
            uri,
        )

    async def _cleanup(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._link is not None:
            with contextlib.suppress(Exception):
                await self._link.close()
        if not self.call.ended.is_set():
            with contextlib.suppress(Exception):
                await self.call.hangup()
        self._set_state("ended")
        self._greeting_over(self.media.played_ms, interrupted=None)  # the call ended while it played
        self._write_greeting()
        self._record("usage", **self.conversation.usage)
        self._record("call", event="end", reason=self._outcome)
        if self.transcript:
            self.transcript.close()
        if self.recorder:
            self.recorder.close()
        self._done.set()  # whoever waits for the end (end_politely) learns of it, whatever ended the call

    def _finish(self, outcome: str) -> None:
        """The call is over with ``outcome``; the first outcome stands."""
        if not self._done.is_set():
            self._outcome = outcome
            self._done.set()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _set_state(self, state: str) -> None:
        if state == "live" and self._held:
            state = "held"  # a hold outlasts what would make the call live again (a tool, a failed transfer)
        if state != self.state:
            self.log.info("state %s -> %s", self.state, state)
            self.state = state

    def _record(self, kind: str, **fields: Any) -> None:
        if self.transcript:
            self.transcript.write(time.monotonic(), kind, **fields)

    def _file_failed(self, kind: RecordingKind) -> Callable[[Path, OSError], None]:
        """What a transcript or recording writer calls, once, when its file fails: the call goes on."""

        def failed(path: Path, exc: OSError) -> None:
            self.log.warning("%s %s stopped, the call goes on without it: %s (check recording.dir: free space, "
                             "permissions)", kind, path, exc.strerror or exc)
            if self.metrics:
                self.metrics.recording_error(kind)

        return failed

    async def end_politely(self, timeout: float = 10.0) -> None:
        """Shutdown: the agent says goodbye, then hangs up (or is cut after ``timeout``)."""
        if self._done.is_set() or self._link is None:
            self._finish("agent-hangup")
            return
        self._spawn(self._say_goodbye(self.agent.goodbye, "agent-hangup", limit=timeout))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        self._finish("agent-hangup")

    async def _say_goodbye(self, message: str, outcome: str, limit: float = GOODBYE_LIMIT_S) -> None:
        """End the call politely: the agent stops what it is saying, says ``message`` and hangs up once the
        caller has heard it, with ``outcome``. At once when no model is there to say it or nobody to hear it
        (on hold), and after ``limit`` seconds whatever happens: a model that never answers must not keep the
        line up."""
        if self._closing is not None or self._done.is_set():
            return
        self._closing = outcome
        self._pending_action = None  # a transfer or an end the model asked for gives way to this one
        if self._link is not None and self.state == "live" and message and not self.on_hold:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    if self.conversation.response_active or self.media.buffered_ms > 0:
                        await self._stop_agent()
                    self._response_done.clear()
                    await self._send(ev.response_create(instructions=_say_exactly(message)))
                    await self._response_done.wait()
                    await self._wait_playout()
        self._finish(outcome)

    async def _stop_agent(self) -> None:
        """Silence the agent at once: its audio is cut where the caller is, its response cancelled (and that
        response's end awaited, since a new response.create while one is active is refused)."""
        played = self.media.played_ms
        self._flush_agent_audio()
        self._cut_agent(played)  # deltas of the cut item still in flight are dropped
        if self.conversation.response_active:
            self._response_done.clear()
            await self._send(ev.response_cancel())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._response_done.wait(), CANCEL_WAIT_S)

    # ---------------------------------------------------------------- Realtime session

    async def _open_session(self, first: bool) -> bool:
        """Connects (with retries) and configures a session; on a reconnect, replays the conversation."""
        delays = (0.0, *self.settings.reconnect_delays)
        for attempt, delay in enumerate(delays):
            if self.call.ended.is_set():
                return False
            await asyncio.sleep(delay)
            try:
                link = await self._connect()
                await link.send(ev.session_update(self.session, self.settings.dialect))
            except (TimeoutError, RealtimeError, OSError) as exc:
                self.log.warning("Realtime connect attempt %d failed: %s", attempt + 1, exc)
                continue
            self._link = link
            if not first:
                history = self.conversation.history_text()
                if history:
                    await link.send(ev.message_item(
                        "system",
                        "The call was interrupted by a technical problem and resumed. The conversation so "
                        f"far:\n{history}\nContinue from there; do not greet the caller again.",
                        self.settings.dialect,
                    ))
            if first and self.agent.greeting:
                self.policy.greeting_started(time.monotonic())
                await link.send(ev.response_create(instructions=_say_exactly(self.agent.greeting)))
            return True
        return False

    async def _send(self, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(event)

    async def _pump(self) -> None:
        """The one writer to the WebSocket: events leave in the order they were queued."""
        while True:
            event = await self._outbox.get()
            link = self._link
            if link is None:
                continue  # reconnecting: audio and events from the dead session are stale
            try:
                await link.send(event)
            except (RealtimeError, OSError) as exc:
                self.log.debug("send failed (%s); the reader reconnects", exc)

    async def _read_events(self) -> None:
        while not self._done.is_set():
            link = self._link
            assert link is not None
            try:
                event = await link.recv()
            except (RealtimeError, OSError) as exc:
                if self._done.is_set() or self.call.ended.is_set():
                    return
                await self._recover(str(exc))
                continue
            try:
                await self._handle(event)
            except Exception:
                # One bad event must not take the call down.
                self.log.exception("error handling %s", event.get("type"))

    async def _recover(self, why: str) -> None:
        self.log.warning("Realtime connection lost (%s); reconnecting", why)
        self.reconnects += 1
        if self.metrics:
            self.metrics.realtime_reconnected()
        self._record("event", event="reconnect", reason=why)
        self._cut_agent(self.media.played_ms)  # what was playing ends here, the greeting too
        self._flush_agent_audio()
        self.conversation.response_active = False
        self._response_done.set()  # that response will never end: nobody may wait for it
        old, self._link = self._link, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        if not await self._open_session(first=False):
            await self._fail_over(f"the Realtime connection was lost and could not be restored ({why})")

    async def _renew_before_limit(self) -> None:
        """Providers end sessions at a fixed length; move to a fresh one at a quiet moment before that."""
        while True:
            await asyncio.sleep(self.settings.max_session_s)
            while self.media.buffered_ms > 0 or self.conversation.response_active:
                await asyncio.sleep(0.1)
            self._record("event", event="session-renewal")
            old = self._link
            if old is not None:
                await old.close()  # the reader sees the close and reconnects with the history

    async def _fail_over(self, why: str) -> None:
        """No model: apologise with local speech, then transfer or hang up as configured."""
        failure = self.agent.on_failure
        self.log.error("%s; %s", why, failure.action)
        self._record("event", event="failure", reason=why, action=failure.action)
        if self.settings.apology_audio is not None and failure.message:
            with contextlib.suppress(Exception):
                self._play_pcm24(await self.settings.apology_audio(failure.message))
                await self._wait_playout()
        target = failure.target or self.agent.transfer_target
        if failure.action == "transfer" and target:
            self._transfer_to = ("on_failure", target)
        if failure.action == "transfer" and target and await self.call.transfer(target):
            self._finish("failover-transferred")
            return
        self._finish("failover-hangup")

    # ---------------------------------------------------------------- events from the model

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind == "response.output_audio.delta":
            if self._turn_ended_at is not None:
                self.turn_latencies.append(time.monotonic() - self._turn_ended_at)
                if self.metrics:
                    self.metrics.observe_turn_latency(self.turn_latencies[-1])
                self._turn_ended_at = None
            pcm = self._down_decode(self._base64.decode(event.get("delta", "")))
            self._queue_agent_audio(event.get("item_id", ""), pcm)
        elif kind == "response.created":
            self.conversation.response_active = True
        elif kind == "response.done":
            self.conversation.response_active = False
            response = event.get("response", {})
            usage = response.get("usage")
            self.conversation.add_usage(usage)
            if self.metrics and isinstance(usage, dict):
                self.metrics.tokens_used(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))
            self._greeting_done(response)
            self._spawn(self._after_response())
            self._response_done.set()
        elif kind == "input_audio_buffer.speech_started":
            self._last_activity = time.monotonic()
            playing = self._agent_playing()
            decision = self.policy.server_speech_started(
                time.monotonic(), playing, caller_speaking=self.vad.recent_speech_ms >= 60
            )
            if decision:
                await self._barge_in(decision, server_cancelled=True)
        elif kind == "input_audio_buffer.speech_stopped":
            self._turn_ended_at = time.monotonic()
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._transcript("caller", event.get("transcript", ""))
        elif kind == "response.output_audio_transcript.done":
            if not self._is_greeting(event.get("item_id")):
                self._transcript("agent", event.get("transcript", ""))
            elif self._greeting is not None and not self._greeting.text:
                self._greeting.text = event.get("transcript", "").strip()  # written once it has been heard
        elif kind == "response.function_call_arguments.done":
            self._spawn(self._run_tool(event.get("name", ""), event.get("call_id", ""), event.get("arguments", "")))
        elif kind == "session.updated":
            self._check_session_formats(event.get("session", {}))
        elif kind == "error":
            error = event.get("error", {})
            code = error.get("code") or error.get("type")
            # A barge-in races the server's own cancellation; losing that race is expected, not a fault.
            level = logging.DEBUG if code in BENIGN_ERRORS else logging.WARNING
            self.log.log(level, "Realtime error %s: %s", code, error.get("message"))
            self._record("event", event="realtime-error", code=error.get("code"), message=error.get("message"))
            if self.metrics:
                self.metrics.realtime_error(str(error.get("code") or error.get("type") or "unknown"))
        elif kind == "rate_limits.updated":
            self.log.debug("rate limits %s", event.get("rate_limits"))

    def _check_session_formats(self, session: dict[str, Any]) -> None:
        try:
            acknowledged = ev.parse_session(session).audio_format
        except RealtimeError:
            return
        if acknowledged != self.settings.audio_format:
            # Some sessions ignore a G.711 request and send 24 kHz PCM16: decode what really arrives.
            self.log.warning("server sends %s audio, not %s as asked", acknowledged,
                        self.settings.audio_format)
            self._down_decode = _wire_decoder(acknowledged)

    def _transcript(self, role: str, text: str, **fields: Any) -> None:
        if not text.strip():
            return
        if role == "caller":
            self.conversation.caller_said(text)
        else:
            self.conversation.agent_said(text)
        self._record(role, text=text.strip(), **fields)
        if self.on_transcript:
            self.on_transcript(role, text.strip())

    # The greeting's entry waits until the greeting is over, so that it says how much the caller heard of
    # it, also when the caller cut in (then the model may never send its transcript.done).

    def _is_greeting(self, item_id: object) -> bool:
        first = self.conversation.first
        return self._greeting is not None and first is not None and first.item_id == item_id

    def _greeting_done(self, response: dict[str, Any]) -> None:
        """The greeting's response ended: whether the model sent all of it, and its text as far as the model
        got (a cancelled response brings no transcript.done, only its items in response.done's output)."""
        greeting, output = self._greeting, response.get("output")
        if greeting is None or greeting.written or not isinstance(output, list):
            return
        for item in output:
            if isinstance(item, dict) and self._is_greeting(item.get("id")):
                # Its length counts only if it was all sent before it stopped playing (after a cut, the
                # deltas still in flight are dropped).
                greeting.sent_all = greeting.heard_ms is None and response.get("status") == "completed"
                content = item.get("content")
                parts = content if isinstance(content, list) else []
                greeting.text = greeting.text or " ".join(str(part.get("transcript") or "") for part in parts
                                                          if isinstance(part, dict)).strip()

    def _greeting_over(self, played_ms: int, interrupted: bool | None) -> None:
        """The greeting stopped playing at ``played_ms`` (``interrupted`` None: if not all of it was heard)."""
        greeting, item = self._greeting, self.conversation.first
        if greeting is None or item is None or greeting.heard_ms is not None:
            return  # no greeting, none of it played yet, or it is over already
        greeting.heard_ms = item.heard_ms(played_ms)
        greeting.total_ms = item.queued_ms if greeting.sent_all else None
        greeting.interrupted = greeting.heard_ms != greeting.total_ms if interrupted is None else interrupted

    def _write_greeting(self) -> None:
        greeting = self._greeting
        if greeting is None or greeting.written or greeting.heard_ms is None:
            return  # still playing, or none of it was ever played: nothing to write
        greeting.written = True
        # Without the model's transcript (cut before it came), what the model was told to say exactly.
        self._transcript("agent", greeting.text or self.agent.greeting, greeting=True, heard_ms=greeting.heard_ms,
                         total_ms=greeting.total_ms, interrupted=greeting.interrupted)

    def _cut_agent(self, played_ms: int, heard_ms: int | None = None) -> tuple[str, int] | None:
        """The item playing stops at ``played_ms`` (the caller heard it up to ``heard_ms``, by default the
        same): (its id, ms of it heard), None when none was playing."""
        heard_ms = played_ms if heard_ms is None else min(heard_ms, played_ms)
        current = self.conversation.current
        if current is not None and current is self.conversation.first:
            self._greeting_over(heard_ms, interrupted=True)
        cut = self.conversation.interrupted(played_ms)
        if cut is None or current is None:
            return cut
        return cut[0], current.heard_ms(heard_ms)

    async def _after_response(self) -> None:
        """Once the agent has finished speaking: the greeting's protection ends; pending actions run."""
        await self._wait_playout()
        if self._greeting_pending:
            self._greeting_pending = False
            self.policy.greeting_finished()
            self._greeting_over(self.media.played_ms, interrupted=False)  # unless it was cut already
            self._write_greeting()
        self._last_activity = time.monotonic()
        action, self._pending_action = self._pending_action, None
        if action is None:
            return
        name, args = action
        if name == "end_call":
            self.tool_uses.append(ToolUse("end_call", True))
            self._finish(self._closing or "agent-hangup")
        elif name == "transfer_call":
            await self._transfer(args)

    async def _wait_playout(self) -> None:
        while self.media.buffered_ms > 0 and not self.call.ended.is_set():
            await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- audio

    def on_inbound_frame(self, payload: bytes) -> None:
        """One 20 ms payload from the jitter buffer (called every tick while media flows)."""
        frame = self.decoder
        # One kernel call: the 24 kHz PCM, its level for the VAD and the append's JSON text.
        speech = self.vad.caller_mean_square(frame.push(payload))
        if self.recorder:
            self.recorder.caller(frame.pcm)
        if speech or self.vad.onset_ms or self.policy.paused:  # onset_ms >= loud_ms: its threshold is lower
            self._caller_sound(speech)
        if self._link is None or self.state != "live":
            return
        if self.vad.echo_only and self.agent.barge_in.mode != "off":
            # Half-duplex echo suppression: while the agent is audible, frames no louder than its echo are
            # sent as silence, so the model's VAD and transcription never hear the agent's own voice.
            text = self._silence_text(len(payload))
        elif self._kernel_text:
            text = frame.text
        else:
            text = ev.audio_append_json(self._up_encode(frame.pcm)).encode()
        # Every 20 ms of every call: JSON text built without json.dumps (it was the bridge's largest cost),
        # written at once when nothing is queued before it (RealtimeClient.send_now), else via the pump.
        if not self._outbox.empty() or not self._link.send_now(text):
            self._outbox.put_nowait(text.decode())

    def _silence_text(self, n: int) -> bytes:
        """The append sent instead of an echo-only caller frame of n payload bytes: silence in the model's
        format, the same text every time (cached) unless it goes through the stateful resampler."""
        if not self._kernel_text:
            return ev.audio_append_json(self._up_encode(bytes(6 * n))).encode()
        text = self._silence_texts.get(n)
        if text is None:
            silence = CODEC_SILENCE[self.codec] if self._passthrough else bytes(6 * n)
            text = self._silence_texts[n] = ev.audio_append_json(silence).encode()
        return text

    def on_outbound_frame(self, payload: bytes, is_audio: bool) -> None:
        """The media clock just sent this frame to the caller (audio or silence)."""
        if is_audio:
            self.vad.agent_frame(mean_square_db(self._agent_decoder.push(payload)))
            if self.recorder:
                self.recorder.agent(self._agent_decoder.pcm)
        else:
            self.vad.agent_frame(SILENCE_DB)
            if self.recorder:
                self.recorder.agent(bytes(FRAME_24K_BYTES))

    def _up_encode(self, pcm24k: bytes) -> bytes:
        if self._to_8k is None:
            return pcm24k
        pcm8k = self._to_8k.process(pcm24k)
        return ulaw_encode(pcm8k) if self._passthrough == "PCMU" else alaw_encode(pcm8k)

    def _queue_agent_audio(self, item_id: str, pcm24k: bytes) -> None:
        if self._done.is_set() or item_id == self.conversation.cut_item:
            return  # deltas of an interrupted item still arrive until the cancel takes effect: drop them
        payload = self.encoder.encode(pcm24k)
        self.media.push_audio(payload)
        self.conversation.agent_audio(item_id, len(payload))

    def _play_pcm24(self, pcm24k: bytes) -> None:
        self.media.push_audio(self.encoder.encode(pcm24k))

    def _flush_agent_audio(self) -> None:
        self.media.flush_audio()  # also ends a pause: what comes next is new audio, not the paused speech
        self.policy.flushed()

    def _agent_playing(self) -> bool:
        """Agent audio is queued, or (while it is turned down at an onset) its response is still coming: the
        model's audio arrives in real time, and the queue may run dry between two deltas."""
        return self.media.buffered_ms > 0 or (self.policy.paused and self.conversation.response_active)

    def _caller_sound(self, speech: bool) -> None:
        """A caller frame with sound in it (or one while the agent is paused or ducked): the barge-in policy's
        turn. The onset is the VAD's onset run (echo margin learned from the line), confirmation its speech."""
        if self._held:
            return  # music on hold: neither speech nor an interruption
        now = time.monotonic()
        if speech:
            self._last_activity = now
        onset_ms = self.vad.onset_ms
        decision = self.policy.caller_frame(now, onset_ms, speech, self._agent_playing(), self.vad.faint)
        if isinstance(decision, Duck):
            # Stage 1, at the onset: turned down from the next tick on, still playing, the model not told.
            self.media.duck_audio(self._duck_gain)
            self._onset_at = now - (onset_ms - self.vad.settings.frame_ms) / 1000
            self._stage1_played_ms = self.media.played_ms
            self._record("barge_in_duck", played_ms=self._stage1_played_ms)
        elif isinstance(decision, Unduck):
            self.media.unduck_audio()
            self.log.info("barge-in duck ended after %.0f ms (not speech)", decision.ducked_s * 1000)
            self._record("barge_in_unduck", ducked_ms=round(decision.ducked_s * 1000))
            if self.metrics:
                self.metrics.barge_in_pause_ended("resumed", decision.ducked_s)
        elif isinstance(decision, Pause):
            # Stage 1, at the onset: silence from the next tick on, the model not told (it may be a cough).
            self.media.pause_audio()
            self._onset_at = now - (onset_ms - self.vad.settings.frame_ms) / 1000
            self._stage1_played_ms = self.media.played_ms
            self._record("barge_in_pause", played_ms=self._stage1_played_ms)
        elif isinstance(decision, Resume):
            self.media.resume_audio()
            self.log.info("barge-in pause resumed after %.0f ms (not speech)", decision.paused_s * 1000)
            self._record("barge_in_resume", paused_ms=round(decision.paused_s * 1000))
            if self.metrics:
                self.metrics.barge_in_pause_ended("resumed", decision.paused_s)
        elif decision is not None:
            self.media.pause_audio()  # quiet from the next tick even if the task below runs after it
            self._spawn(self._barge_in(decision, server_cancelled=False))

    async def _barge_in(self, decision: BargeIn, server_cancelled: bool) -> None:
        played = self.media.played_ms  # exact when paused: what the caller heard up to the pause
        # After a duck the frames since its start went out turned down, under the caller's voice: what the
        # caller heard ends where the duck began.
        heard = self._stage1_played_ms if decision.paused_at is not None else played
        self.media.flush_audio()  # also ends a duck
        cut = self._cut_agent(played, heard)
        self.barge_in_times.append(decision.at)
        if self.metrics and decision.paused_at is not None:
            # The agent went quiet at the pause; confirming it later changed nothing the caller heard.
            self.metrics.observe_barge_in_latency(decision.paused_at - self._onset_at)
            self.metrics.barge_in_pause_ended("barge-in", decision.at - decision.paused_at)
        elif self.metrics and self.vad.recent_speech_ms and decision.trigger is not Trigger.DTMF:
            # From the first loud caller frame to the moment the agent went quiet on the wire.
            self.metrics.observe_barge_in_latency(self.vad.recent_speech_ms / 1000 + time.monotonic() - decision.at)
        self.log.info("barge-in (%s)", decision.trigger.value)
        if cut is not None:
            item_id, heard_ms = cut
            paused_ms = None if decision.paused_at is None else round((decision.at - decision.paused_at) * 1000)
            self._record("barge_in", trigger=decision.trigger.value, item_id=item_id, heard_ms=heard_ms,
                         paused_ms=paused_ms)
            if heard_ms > 0:
                await self._send(ev.item_truncate(item_id, heard_ms))
            else:
                await self._send(ev.item_delete(item_id))
        if self.conversation.response_active and not server_cancelled:
            await self._send(ev.response_cancel())

    # ---------------------------------------------------------------- tools, DTMF, idle

    async def _run_tool(self, name: str, call_id: str, raw_arguments: str) -> None:
        self._set_state("live")
        try:
            args = parse_arguments(raw_arguments)
        except ValueError as exc:
            await self._tool_output(call_id, name, {}, ToolResult(False, {"error": f"bad arguments: {exc}"}))
            return
        self._record("tool_call", name=name, arguments=args)
        if name in ("collect_digits", "send_dtmf") and any(t.name == name for t in self.agent.tools):
            # Keys are the bridge's own business: no webhook. Offered only when configured, so a model that
            # names one that is not configured gets "unknown tool" below.
            result = await (self._collect_digits(args) if name == "collect_digits" else self._send_dtmf(args))
            if name == "collect_digits":
                await self._response_idle()  # response.create while one is active would be refused
            await self._tool_output(call_id, name, args, result)
            return
        if name in ("end_call", "transfer_call"):
            action_args = {**args, "_call_id": call_id}
            if name == "transfer_call":
                error = self._transfer_error(args.get("target"))
                if error is not None:
                    await self._tool_output(call_id, name, args, ToolResult(False, {"error": error}))
                    return
            # Built-ins act once the agent has finished what it is saying.
            self._pending_action = (name, action_args)
            if not self.conversation.response_active:
                self._spawn(self._after_response())
            return
        tool = next((t for t in self.agent.tools if t.name == name), None)
        if tool is None:
            result = ToolResult(False, {"error": f"unknown tool {name}"})
        else:
            result = await self._webhook(tool, args)
        await self._tool_output(call_id, name, args, result)

    async def _webhook(self, tool: ToolConfig, args: dict[str, Any]) -> ToolResult:
        try:
            return await run_webhook(tool, args, self.call.call_id, self.context)
        except Exception as exc:  # a tool's failure is the model's to explain, never the call's end
            self.log.warning("tool %s failed: %s", tool.name, exc)
            return ToolResult(False, {"error": f"{tool.name} failed"})

    async def _tool_output(self, call_id: str, name: str, args: dict[str, Any], result: ToolResult,
                           respond: bool = True) -> None:
        self._record("tool_result", name=name, ok=result.ok, output=result.output)
        self.tool_uses.append(ToolUse(name, result.ok))
        if self.metrics:
            self.metrics.tool_called(name, "ok" if result.ok else "error")
        await self._send(ev.function_call_output(call_id, result.to_json()))
        if respond:
            await self._send(ev.response_create())

    def _transfer_error(self, name: object) -> str | None:
        """Why the model's transfer target cannot be used (it may only name a configured one), or None."""
        if name is not None and not isinstance(name, str):
            return "target must be the name of a team, as a string"
        if self.agent.transfer_uri(name) is not None:
            return None
        names = ", ".join(self.agent.transfer_targets)
        if not name:
            return f"say which team to transfer to: {names}" if names else "no transfer target is configured"
        return (f"there is no team called {name[:40]!r}; the caller can be transferred to: {names}" if names
                else "no transfer target is configured")

    async def _transfer(self, args: dict[str, Any]) -> None:
        name = args.get("target")
        uri = self.agent.transfer_uri(name if isinstance(name, str) else None)
        label = name if isinstance(name, str) and name else "default"
        tool_args = {key: value for key, value in args.items() if not key.startswith("_")}
        if uri is None:  # the configuration was reloaded since the model asked
            await self._tool_output(str(args.get("_call_id", "")), "transfer_call", tool_args,
                                    ToolResult(False, {"error": self._transfer_error(name)}))
            return
        self._set_state("transferring")
        self._record("event", event="transfer", target=label, uri=uri)
        self._transfer_to = (label, uri)
        ok = await self.call.transfer(uri)
        if ok:
            self._finish("transferred")
            return
        self._set_state("live")
        await self._tool_output(str(args.get("_call_id", "")), "transfer_call", tool_args,
                                ToolResult(False, {"error": f"the transfer to {label} failed"}))

    def on_dtmf(self, digit: str, duration_ms: int) -> None:
        """A key from the caller (RFC 4733 or SIP INFO). During a collect_digits entry it goes to the entry
        and cuts the agent off; otherwise it is passed to the model as text with the keys typed after it."""
        now = time.monotonic()
        self._last_activity = now
        self._record("dtmf", digit=digit, duration_ms=duration_ms)
        collector = self._collector
        if collector is not None and collector.result is None:
            self._key_barge_in(now)
            collector.key(digit, now)
            self._collector_woken.set()
            return
        self._dtmf.append((digit, now))
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        self._dtmf_task = self._spawn(self._flush_dtmf(0.0 if digit == "#" else DTMF_FLUSH_S))

    def _key_barge_in(self, now: float) -> None:
        """A key pressed while the agent asks for the entry stops it at once, as speech would: the caller
        knows what to type. Unlike speech it needs no confirmation (a key is never echo or a cough), and is
        not subject to the greeting's protection (no entry runs during the greeting)."""
        if self.media.buffered_ms <= 0 and not self.conversation.response_active:
            return
        self.media.pause_audio()  # quiet from the next tick even if the task below runs after it
        self.policy.flushed()
        self._spawn(self._barge_in(BargeIn(Trigger.DTMF, now), server_cancelled=False))

    async def _collect_digits(self, args: dict[str, Any]) -> ToolResult:
        """The collect_digits tool: gathers keys until the terminator, the count or a timeout (see
        sipagent.bridge.digits for when each timer starts).

        Keys typed shortly before the tool call count too ("type-ahead"): those still waiting to be passed
        to the model (typed less than DTMF_FLUSH_S before, with no "#" after them) start the entry, since a
        caller who knows the menu types as soon as asked, often before the model's function call arrives.
        Keys the model has already read as text are not taken again."""
        try:
            spec = collect_spec(args, _collect_defaults(self.agent.dtmf))
        except ToolArgumentError as exc:
            return ToolResult(False, {"error": str(exc)})
        if self._collector is not None:
            return ToolResult(False, {"error": "a keypad entry is already under way"})
        now = time.monotonic()
        collector = self._collector = DigitCollector(spec, now)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        typed, self._dtmf = self._dtmf, []
        if typed:
            self._key_barge_in(now)
        collector.keys(typed)
        try:
            while collector.result is None:
                now = time.monotonic()
                if not collector.prompt_over and self.media.buffered_ms <= 0 and not self.conversation.response_active:
                    collector.prompt_finished(now)  # the prompt played out: the first-digit timer starts
                if collector.poll(now) is not None:
                    break
                self._collector_woken.clear()
                # A key wakes us at once; otherwise look again at the next deadline, or in 50 ms while the
                # prompt still plays (its end is a queue running dry, which nothing signals).
                wait = max(0.0, collector.deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._collector_woken.wait(), wait if collector.prompt_over else
                                           min(wait, 0.05))
        finally:
            self._collector = None
        collected: Collected | None = collector.result
        assert collected is not None
        self._last_activity = time.monotonic()
        self.log.info("keypad entry of %d digits ended by %s", len(collected.digits), collected.ended_by)
        self._record("dtmf_collected", digits=collected.digits, ended_by=collected.ended_by)
        return ToolResult(True, collected.output())

    async def _send_dtmf(self, args: dict[str, Any]) -> ToolResult:
        """The send_dtmf tool: the keys go out as RFC 4733 events on the call's RTP, in place of the audio
        of their ticks (which waits, nothing lost); the result comes once the last one has been sent. With
        no telephone-event negotiated the model is told so: no SIP INFO fallback, since a PBX that does not
        take RFC 4733 from a phone rarely routes INFO to an IVR either (and tones in the audio would be
        mangled by the model's voice codec path)."""
        try:
            digits = send_digits(args)
        except ToolArgumentError as exc:
            return ToolResult(False, {"error": str(exc)})
        if not self.media.can_send_dtmf:
            return ToolResult(False, {"error": "this line does not accept keypad tones (no RFC 4733 "
                                               "telephone-event was negotiated); say the choice instead"})
        if self.media.dtmf_sending:  # one call at a time: parallel calls would queue keys without bound
            return ToolResult(False, {"error": "keys are still being sent; wait for that result first"})
        tone_ms = self.agent.dtmf.tone_ms
        try:
            for digit in digits:
                self.media.send_dtmf(digit, tone_ms)
        except RtpError as exc:
            return ToolResult(False, {"error": str(exc)})
        self._record("dtmf_out", digits=digits)
        # Each key: its ticks, three end packets, the gap; a hold stops the clock's sending, so bound it.
        limit = len(digits) * (tone_ms + 120) / 1000 + 5.0
        deadline = time.monotonic() + limit
        while self.media.dtmf_sending and time.monotonic() < deadline and not self.call.ended.is_set():
            await asyncio.sleep(0.02)
        if self.media.dtmf_sending:
            return ToolResult(False, {"error": "the keys could not all be sent in time (is the call on hold?)"})
        return ToolResult(True, {"sent": digits})

    async def _response_idle(self) -> None:
        """Until no response is active (a barge-in's cancel takes effect, a function call's response ends),
        at most CANCEL_WAIT_S. Polled rather than waiting on ``_response_done``, which a goodbye clears."""
        deadline = time.monotonic() + CANCEL_WAIT_S
        while self.conversation.response_active and time.monotonic() < deadline and not self._done.is_set():
            await asyncio.sleep(0.02)

    async def _flush_dtmf(self, delay: float) -> None:
        await asyncio.sleep(delay)
        keys, self._dtmf = self._dtmf, []
        if not keys:
            return
        text = f"caller pressed {' '.join(key for key, _ in keys)}"
        self._record("dtmf_sent", text=text)
        await self._send(ev.user_text(text, self.settings.dialect))
        if not self.conversation.response_active:
            await self._send(ev.response_create())

    async def _watch_idle(self) -> None:
        """Re-prompt a silent caller once, then say goodbye and hang up. Sleeps until the silence would be
        long enough; the caller's sound, a digit or the end of the agent's reply moves that moment."""
        timeout = self.agent.idle_timeout_s
        if timeout <= 0:
            return  # no prompt; a dead line still ends by media.rtp_timeout_s or agent.max_call_s
        while self._closing is None:
            wait = self._last_activity + timeout - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            busy = (self.media.buffered_ms > 0 or self.conversation.response_active or self._pending_action
                    or self._collector is not None  # a keypad entry has its own timeouts
                    or self.state != "live" or self.on_hold)  # e.g. transferring: never prompt a caller put through
            self._last_activity = time.monotonic()  # if busy, counted again from now (a reply's end moves it)
            if busy or self.vad.speaking:
                continue
            self._idle_prompts += 1
            if self._idle_prompts == 1:
                self._record("event", event="idle-prompt")
                await self._send(ev.response_create(instructions=_say_exactly(self.agent.idle_prompt)))
            else:
                self._record("event", event="idle-hangup")
                await self._say_goodbye(self.agent.goodbye, "agent-hangup")
                return

    async def _watch_call_length(self) -> None:
        """agent.max_call_s: the agent says max_call_message, then hangs up (outcome "time-limit")."""
        limit = self.agent.max_call_s
        if limit <= 0:
            return
        await asyncio.sleep(self._origin + limit - time.monotonic())
        if self._closing is not None:
            return  # already saying goodbye
        self.log.info("the call reached agent.max_call_s (%.0f s): the agent says goodbye", limit)
        self._record("event", event="time-limit", max_call_s=limit)
        await self._say_goodbye(self.agent.max_call_message, "time-limit")

    async def _watch_media(self) -> None:
        """media.rtp_timeout_s: hang up (outcome "media-timeout") when no RTP came for that long, except on
        hold or during a transfer, where the far end may rightly send none. The endpoint counts packets
        anyway; reading that count every few seconds costs nothing per packet, and the call ends between
        rtp_timeout_s and rtp_timeout_s + one interval after the last packet."""
        timeout = self.settings.rtp_timeout_s
        if timeout <= 0:
            return
        interval = min(5.0, timeout / 6)
        count, heard_at = self.media.packets_received, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now, received = time.monotonic(), self.media.packets_received
            if received != count or self.on_hold or self.state == "transferring":
                count, heard_at = received, now
            elif now - heard_at >= timeout:
                break
        if count == 0:
            self.log.warning(
                "no RTP has arrived since the call was answered (media.rtp_timeout_s %.0f s): hanging up. The "
                "caller's audio does not reach this host: check NAT and firewalls (UDP to media.rtp_ports), "
                "sip.public_address behind NAT, and that the PBX does not send media straight from the phone "
                "(Asterisk direct_media=no, FreeSWITCH bypass_media=false)", timeout)
        else:
            self.log.warning(
                "no RTP for %.0f s (media.rtp_timeout_s): hanging up. The far end stopped sending without a "
                "BYE, or its media stopped reaching this host: check NAT bindings and firewall timeouts for UDP "
                "to media.rtp_ports, and direct media on the PBX (Asterisk direct_media=no, FreeSWITCH "
                "bypass_media=false)", timeout)
        self._record("event", event="media-timeout", rtp_timeout_s=timeout, media_seen=count > 0)
        self._finish("media-timeout")

def _collect_defaults(dtmf: DtmfConfig) -> CollectSpec:
    return CollectSpec(dtmf.max_digits, dtmf.terminator, dtmf.first_digit_timeout_s, dtmf.inter_digit_timeout_s,
                       dtmf.max_wait_s)


def _say_exactly(text: str) -> str:
    return f'Say exactly the following, and nothing else: "{text}"'


def _passthrough_codec(audio_format: str) -> str | None:
    return {"g711_ulaw": "PCMU", "g711_alaw": "PCMA"}.get(audio_format)


def _wire_decoder(audio_format: str) -> Callable[[bytes], bytes]:
    """Output deltas → 24 kHz PCM16, whatever format the server really sends."""
    if audio_format == "pcm16":
        return lambda data: data
    to_24k = Resampler(8000, 24000)
    decode = ulaw_decode if audio_format == "g711_ulaw" else alaw_decode
    return lambda data: to_24k.process(decode(data))


__all__ = ["BridgeSettings", "CallBridge", "CallOutcome"]
