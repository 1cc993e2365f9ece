"""One answered call bridged to one Realtime session: the parts that do the work, wired together.

The bridge composes what the lower layers provide (the SIP call, an RTP endpoint on the shared media
clock, the native transcoders, a Realtime connection) and owns only the policy between them. One job per
part, each in its own module:

- ``session.RealtimeSession``: connecting, the WebSocket's one writer and one reader, reconnection with
  the conversation replayed, renewal before the provider's limit (``Responses``: a response under way).
- ``uplink.Uplink``: the caller's audio to the model, heard against the echo of the agent's.
- ``downlink.Downlink``: the agent's audio to the caller, and the waits for it to be heard.
- ``interruptions.Interruptions``: barge-in, the policy of ``bargein`` carried out.
- ``tool_runner.ToolRunner``: tool calls (webhooks, transfer, end_call, keypad entry, sending keys) and
  the caller's keys.
- ``records.CallRecords``: transcript, recording and the greeting's entry.
- ``limits.CallLimits``: idle prompts, the call's length, media timeout.
- ``response_retry.ResponseRetries``: a response that failed for a passing cause asked for again.
- ``state.CallState``: the state all of them read (answering → connecting → live ⇄ held → transferring /
  ending → ended), the closing goodbye and the outcome.

What stays here: the table of the model's events and who handles each, the call's start and end (the
greeting, a polite goodbye, fail-over when no model can be had), holds and codec changes. Waits are
woken by what they wait for (events), never by looking again after a sleep; the limits are deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sipagent.bridge.bargein import BargeInPolicy
from sipagent.bridge.call_events import ToolUse
from sipagent.bridge.context import CallContext, TemplateError, render
from sipagent.bridge.conversation import Conversation
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.interruptions import Interruptions
from sipagent.bridge.legs import CallLeg, MediaLeg, RealtimeLink
from sipagent.bridge.limits import CallLimits
from sipagent.bridge.records import CallRecords
from sipagent.bridge.response_retry import REFUSED, Line, NoRetry, Retry, Take
from sipagent.bridge.session import RealtimeSession, Responses
from sipagent.bridge.settings import AgentConfig, RecordingConfig
from sipagent.bridge.state import CallState
from sipagent.bridge.tool_runner import ToolRunner
from sipagent.bridge.transcript import StereoRecorder, TranscriptWriter
from sipagent.bridge.uplink import Uplink
from sipagent.bridge.warm import HumanDialer
from sipagent.errors import RealtimeError
from sipagent.media.kernel import DecoderBatch
from sipagent.media.vad import EchoAwareVad, VadSettings
from sipagent.observability.logs import call_logger
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev

log = logging.getLogger(__name__)

OWN_KEYS_ECHO_S = 1.0  # after the agent's last key went out, a key heard in the audio may be its echo
ONE_KEY_TWO_WAYS_S = 1.0  # one digit by SIP INFO and heard in the audio this close together: one press
GOODBYE_LIMIT_S = 20.0  # a goodbye the model has not said (and the caller heard) by then: hang up anyway
# A renewal waits for the caller too: this long without a word (longer than a server VAD's end of turn, so
# what the caller said is a turn of the old session, replayed, not half an utterance in its buffer) ...
RENEW_CALLER_QUIET_S = 1.0
RENEW_CALLER_WAIT_S = 60.0  # ... but not longer than this (the default max_session_s leaves 300 s)
RENEW_POLL_S = 0.1

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


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
    # Places the human's call of a warm transfer (the agent process); None: every transfer is blind.
    dialer: HumanDialer | None = None
    # An outcome: the call ends with it once the greeting has been heard (a message left on a machine).
    end_after_greeting: str = ""
    # Where G.722 caller frames are decoded together with other calls' (the media clock's ``received``);
    # None: each as it arrives.
    frames: DecoderBatch | None = None


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
    media: dict[str, int | float | None] = field(default_factory=dict)  # MediaLeg.media_report at the end


class CallBridge:
    def __init__(
        self,
        call: CallLeg,
        media: MediaLeg,
        connect: Callable[[], Awaitable[RealtimeLink]],
        settings: BridgeSettings,
        on_transcript: Callable[[str, str], None] | None = None,
        context: CallContext | None = None,
        origin: float | None = None,
    ) -> None:
        """``origin``: when the call was answered (time.monotonic), if before now (an outbound call listened to
        for an answering machine first): the transcript's times, the call's length and its limits count from
        there."""
        self.call = call
        self.log = call_logger(log, call.call_id)  # its callbacks also run outside the call's task
        self.media = media
        self.settings = settings
        self.metrics = settings.metrics
        self.context = context or CallContext(call.call_id, datetime.now(UTC).astimezone())
        # The templates of this call's texts, filled in once: the instructions and everything the agent says.
        self.agent, self.session = self._render_texts(settings.agent, settings.session)
        self.conversation = Conversation()
        self.responses = Responses(self.conversation)
        self.call_state = CallState(self.log)
        self._origin = time.monotonic() if origin is None else origin
        # Entries of the call's first moments, before the bridge (what the answering-machine detector heard):
        # written right after the transcript's start entry.
        self.prelude: list[tuple[str, dict[str, Any]]] = []
        self.media_report: dict[str, int | float | None] = {}  # taken as the call ends
        self.records = CallRecords(call.call_id, datetime.now(UTC), self._origin, settings.recording,
                                   self.conversation, self.agent.greeting, self.log, self.metrics, on_transcript)
        barge = self.agent.barge_in
        self.policy = BargeInPolicy(barge.mode, barge.protect_greeting_ms, pause_after_ms=barge.pause_after_ms,
                                    resume_after_ms=barge.resume_after_ms, stage1=barge.stage1,
                                    unduck_after_ms=barge.unduck_after_ms)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._greeting_pending = bool(self.agent.greeting)
        state, records = self.call_state, self.records
        self.realtime = RealtimeSession(connect, self.session, settings.dialect, settings.reconnect_delays,
                                        settings.max_session_s, call, state, self.conversation, records, self.log,
                                        self.metrics)
        self.retries = self.realtime.retries
        self.uplink = Uplink(media.codec, settings.audio_format,
                             VadSettings(threshold_db=barge.threshold_db, min_speech_ms=barge.min_speech_ms),
                             barge.mode != "off", self.realtime, state, self.policy, self._caller_sound,
                             records.recorder, settings.frames)
        # A call that ends with its greeting (a message left on a machine) listens to no one: the machine's
        # sounds after its beep would otherwise make the model's turn detection cut the message short.
        self.uplink.to_model = not settings.end_after_greeting
        self.uplink.on_key = self._key_in_audio
        self._last_key: tuple[str, str, float] | None = None  # (how it came, digit, when): see _key
        self.downlink = Downlink(settings.audio_format, media, call, state, self.conversation, self.responses,
                                 self.policy, records, self.uplink.agent_sent, self.metrics)
        self.interruptions = Interruptions(self.policy, barge.duck_db, media, self.uplink, self.downlink,
                                           self.realtime, self.responses, state, records, self.log, self._spawn,
                                           self.metrics)
        self.tools = ToolRunner(self.agent, call, media, self.context, settings.dialect, self.realtime,
                                self.responses, self.downlink, self.interruptions, state, records, self.log,
                                self._spawn, self._after_response, self.metrics, settings.dialer)
        self.limits = CallLimits(self.agent, settings.rtp_timeout_s, self._origin, media, state, records, self.log,
                                 self._busy, lambda: self.on_hold, self._idle_prompt, self._say_goodbye)
        # The model's events and who handles each; any other type is ignored.
        self._handlers: dict[str, Handler] = {
            "response.output_audio.delta": self._agent_audio,
            "response.created": self._response_created,
            "response.done": self._response_done,
            "input_audio_buffer.speech_started": self._speech_started,
            "input_audio_buffer.speech_stopped": lambda event: self.downlink.caller_turn_ended(),
            "conversation.item.input_audio_transcription.completed": self._caller_transcript,
            "response.output_audio_transcript.done":
                lambda event: self.records.agent_transcript(event.get("item_id"), _text(event.get("transcript"))),
            "response.function_call_arguments.done": self._tool_call,
            "session.updated": lambda event: self._check_session_formats(event.get("session")),
            "error": self._error,
            "rate_limits.updated": lambda event: self.log.debug("rate limits %s", event.get("rate_limits")),
        }

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

    # ---------------------------------------------------------------- what others read

    @property
    def state(self) -> str:
        return self.call_state.name

    @property
    def codec(self) -> str:
        return self.uplink.codec

    @property
    def on_hold(self) -> bool:
        """The far end holds the call (its re-INVITE said sendonly, inactive or c=0.0.0.0): a held leg may
        send no media, and the caller is not idle."""
        return self.call_state.held

    @property
    def transcript(self) -> TranscriptWriter | None:
        return self.records.transcript

    @property
    def recorder(self) -> StereoRecorder | None:
        return self.records.recorder

    @property
    def vad(self) -> EchoAwareVad:
        return self.uplink.vad

    @property
    def barge_in_times(self) -> list[float]:
        return self.interruptions.times

    @property
    def turn_latencies(self) -> list[float]:
        return self.downlink.turn_latencies

    @property
    def reconnects(self) -> int:
        return self.realtime.reconnects

    @property
    def tool_uses(self) -> list[ToolUse]:
        return self.tools.uses

    # ---------------------------------------------------------------- the line: frames, keys, re-INVITEs

    def on_inbound_frame(self, payload: bytes) -> None:
        """One 20 ms payload from the jitter buffer (called every tick while media flows)."""
        self.uplink.caller_frame(payload)

    def on_outbound_frame(self, payload: bytes, is_audio: bool) -> None:
        """The media clock just sent this frame to the caller (audio or silence)."""
        self.downlink.frame_sent(payload, is_audio)

    def on_dtmf(self, digit: str, duration_ms: int) -> None:
        """A key from the caller (RFC 4733 or SIP INFO): see ToolRunner.on_dtmf."""
        self._key("signalled", digit, duration_ms)

    def _key(self, way: str, digit: str, duration_ms: int) -> None:
        # A PBX may signal a key by SIP INFO and leave its tones in the audio too: on a line without
        # telephone-event both are heard, and the same digit both ways within a second is one press.
        now = time.monotonic()
        last, self._last_key = self._last_key, (way, digit, now)
        if last is not None and last[0] != way and last[1] == digit and now - last[2] < ONE_KEY_TWO_WAYS_S:
            self.log.debug("key %s both signalled and heard in the audio: taken once", digit)
            return
        self.tools.on_dtmf(digit, duration_ms)

    def listen_for_keys(self, on: bool) -> None:
        """The line negotiated no telephone-event (``on``): the caller's keys come as tones in the audio."""
        self.uplink.listen_for_keys(on)

    def _key_in_audio(self, digit: str, duration_ms: int) -> None:
        # The agent's own keys (send_dtmf's tones) may come back as echo: not the caller's.
        if self.media.dtmf_sending or time.monotonic() - self.tools.keys_sent_at < OWN_KEYS_ECHO_S:
            self.log.debug("key %s heard in the audio while the agent sent keys: taken as their echo", digit)
            return
        self.log.info("key %s heard in the audio (%d ms)", digit, duration_ms)
        self._key("audio", digit, duration_ms)

    def change_codec(self, codec: str) -> None:
        """A re-INVITE moved the call to ``codec`` (the endpoint has already moved its playout queue to it, which
        encodes the agent's audio): the caller's frames are decoded in it from now on."""
        if codec == self.codec:
            return
        previous = self.codec
        self.uplink.use_codec(codec)
        self.media.codec = codec
        self.log.info("codec %s -> %s", previous, codec)
        self.records.record("event", event="codec-change", codec=codec, previous=previous)

    def set_hold(self, held: bool, direction: str = "") -> None:
        """The far end put the call on hold (``direction``: ours in the answer) or took it off.

        The endpoint sends nothing while held. Here: nothing from the line reaches the model (what comes is
        the PBX's music, not the caller: the model would talk over it or answer it) or the barge-in policy;
        the idle timer stands still (state "held"); the agent's audio waits in the playout queue, and a
        response the model is still streaming goes on into it. Nothing is cancelled: after the hold the
        caller hears the rest word for word, where cancelling and asking again would say it differently,
        spend the tokens twice and lose the truncation point. The voice detector starts afresh on resume,
        since what it measured on hold was music."""
        state = self.call_state
        if held == state.held:
            return
        now = time.monotonic()
        state.held = held
        queued_ms = self.media.buffered_ms
        if held:
            state.held_since = now
            self.log.info("held by the far end (%s); %d ms of agent audio waits", direction, queued_ms)
            self.records.record("event", event="hold", direction=direction, queued_ms=queued_ms)
            if state.name == "live":
                state.set("held")
        else:
            held_ms = round((now - state.held_since) * 1000)
            self.uplink.reset_vad()
            state.active(now)
            self.log.info("resumed after %d ms on hold; %d ms of agent audio to play", held_ms, queued_ms)
            self.records.record("event", event="resume", held_ms=held_ms, queued_ms=queued_ms)
            if state.name == "held":
                state.set("live")

    def _caller_sound(self, speech: bool) -> None:
        self.interruptions.caller_sound(speech)

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> CallOutcome:
        """Runs the call until either side or a limit ends it. Never raises: whatever fails, the call ends
        and its outcome is returned (``error`` for a fault of our own), so that it is counted."""
        state = self.call_state
        self.records.started(self.call.call_id, self.call.from_uri, self.codec, self.settings.profile,
                             self.settings.route, self.context.to_json())
        for kind, fields in self.prelude:
            self.records.record(kind, **fields)
        try:
            state.set("connecting")
            if not await self.realtime.open(first=True):
                if self.call.ended.is_set():  # the caller hung up while we connected: no backend's fault
                    self.log.info("the caller hung up before the Realtime session was up")
                else:
                    await self._fail_over("the Realtime API could not be reached")
            else:
                await self._greet()
                state.set("live")
                self._spawn(self.realtime.pump())
                self._spawn(self.realtime.read(self._handle, self._session_lost, self._fail_over))
                self._spawn(self.limits.watch_idle())
                self._spawn(self.limits.watch_call_length())
                self._spawn(self.limits.watch_media())
                self._spawn(self.realtime.renew_before_limit(self._quiet_for_renewal))
                ended = asyncio.ensure_future(self.call.ended.wait())
                done = asyncio.ensure_future(state.done.wait())
                await asyncio.wait({ended, done}, return_when=asyncio.FIRST_COMPLETED)
                for waiter in (ended, done):
                    waiter.cancel()
                if not state.done.is_set() and self.call.end_reason == "transferred":
                    # A completed transfer ends the SIP call before transfer() returns to the bridge.
                    state.outcome = "transferred"
                elif not state.done.is_set() and self.call.end_reason in ("session-expired", "refresh-failed"):
                    # RFC 4028: nobody refreshed the session (or our refresh was refused): the PBX has most
                    # likely forgotten the call; not a caller hanging up.
                    state.outcome = "session-expired"
        except Exception:
            # Whatever failed, the call is over and must be counted as such (outcome, calls_active).
            self.log.exception("call failed")
            state.outcome = "error"
        finally:
            await self._cleanup()
        return self.outcome()

    def outcome(self) -> CallOutcome:
        """How the call ended, as it stands (final once ``run`` has returned)."""
        state = self.call_state
        outcome, transfer_to = state.outcome, self.tools.transfer_to
        transferred = outcome in ("transferred", "failover-transferred") and transfer_to is not None
        target, uri = transfer_to if transferred and transfer_to else ("", "")
        tools = list(self.tools.uses)
        if outcome == "transferred":
            tools.append(ToolUse("transfer_call", True))  # a failed one was recorded with its error output
        records = self.records
        return CallOutcome(
            outcome,
            records.transcript.path if records.transcript and records.transcript.ok else None,  # None: see the log
            records.recorder.path if records.recorder and records.recorder.ok else None,
            dict(self.conversation.usage),
            list(self.interruptions.times),
            self.policy.false_alarms,
            tools,
            target,
            uri,
            dict(self.media_report),
        )

    async def _greet(self) -> None:
        """The greeting starts at once, on the new session, protected from barge-in for its first moments."""
        if self.agent.greeting and self.realtime.link is not None:
            self.policy.greeting_started(time.monotonic())
            await self.realtime.send_first(ev.say_exactly(self.agent.greeting))  # again if that session was dead

    async def _cleanup(self) -> None:
        """The call's parts stopped, the line hung up, then its records closed: the transcript gets its usage,
        media and end entries whatever happened before (a failure here, or a cancellation of the call's task)."""
        try:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self.realtime.close()
            if not self.call.ended.is_set():
                with contextlib.suppress(Exception):
                    await self.call.hangup()
        finally:
            self._close_records()

    def _close_records(self) -> None:
        state = self.call_state
        state.set("ended")
        try:
            self.records.greeting_over(self.media.played_ms, interrupted=None)  # the call ended while it played
        except Exception:
            self.log.exception("the greeting's entry could not be completed")
        try:
            self.media_report = self.media.media_report()
        except Exception:  # figures are worth less than the transcript's end
            self.log.exception("media figures unavailable")
        self.records.close(self.conversation.usage, state.outcome, self.media_report)
        state.done.set()  # whoever waits for the end (end_politely) learns of it, whatever ended the call

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def end_politely(self, timeout: float = 10.0) -> None:
        """Shutdown: the agent says goodbye, then hangs up (or is cut after ``timeout``)."""
        state = self.call_state
        if state.done.is_set() or self.realtime.link is None:
            state.finish("agent-hangup")
            return
        self._spawn(self._say_goodbye(self.agent.goodbye, "agent-hangup", limit=timeout))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.done.wait(), timeout)
        state.finish("agent-hangup")

    async def _say_goodbye(self, message: str, outcome: str, limit: float = GOODBYE_LIMIT_S) -> None:
        """End the call politely: the agent stops what it is saying, says ``message`` and hangs up once the
        caller has heard it, with ``outcome``. At once when no model is there to say it or nobody to hear it
        (on hold), and after ``limit`` seconds whatever happens: a model that never answers must not keep the
        line up."""
        state = self.call_state
        if state.closing is not None or state.done.is_set():
            return
        state.closing = outcome
        self.tools.pending = None  # a transfer or an end the model asked for gives way to this one
        if self.realtime.link is not None and state.live and message and not self.on_hold:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    if self.responses.active or self.media.buffered_ms > 0:
                        await self.interruptions.stop_agent()
                    self.responses.expect_done()
                    self.realtime.send(ev.say_exactly(message))
                    await self.responses.wait_done()
                    await self.downlink.wait_playout()
        state.finish(outcome)

    def _session_lost(self) -> None:
        """The WebSocket dropped: what was playing ends here (the greeting too); the response that was under
        way will never end, so nobody may wait for it."""
        self.downlink.cut(self.media.played_ms)
        self.downlink.flush()
        self.responses.done()

    async def _fail_over(self, why: str) -> None:
        """No model: apologise with local speech, then transfer or hang up as configured."""
        failure = self.agent.on_failure
        self.log.error("%s; %s", why, failure.action)
        self.records.record("event", event="failure", reason=why, action=failure.action)
        if self.settings.apology_audio is not None and failure.message:
            with contextlib.suppress(Exception):
                self.downlink.play_pcm24(await self.settings.apology_audio(failure.message))
                await self.downlink.wait_playout()
        target = failure.target or self.agent.transfer_target
        if failure.action == "transfer" and target and await self.tools.fail_over_transfer(target):
            self.call_state.finish("failover-transferred")
            return
        self.call_state.finish("failover-hangup")

    async def _after_response(self) -> None:
        """Once the agent has finished speaking: the greeting's protection ends; pending actions run."""
        await self.downlink.wait_playout()
        if self._greeting_pending:
            self._greeting_pending = False
            self.policy.greeting_finished()
            self.records.greeting_over(self.media.played_ms, interrupted=False)  # unless it was cut already
            self.records.write_greeting()
            if self.settings.end_after_greeting:
                self.call_state.finish(self.settings.end_after_greeting)
                return
        self.call_state.active()
        await self.tools.run_pending()

    def _busy(self) -> bool:
        """Silence now is not the caller being idle: someone speaks, or something is under way."""
        state, tools = self.call_state, self.tools
        return (self.media.buffered_ms > 0 or self.responses.active or tools.pending is not None
                or tools.collector is not None  # a keypad entry has its own timeouts
                or state.name != "live" or self.on_hold  # e.g. transferring: never prompt a caller put through
                or self.uplink.vad.speaking
                or self.retries.pending is not None)  # a failed response is about to be asked for again

    async def _quiet_for_renewal(self) -> Callable[[], bool]:
        """Until neither side speaks: the agent silent (nothing queued, no response), and the caller silent for
        RENEW_CALLER_QUIET_S. Audio of an utterance under way, appended to the old session and not yet a turn,
        would go with it: the new session would hear the caller's words from the middle. A caller who never
        stops (or a noisy line) is waited for RENEW_CALLER_WAIT_S at most. Looked at every 100 ms: this runs
        once per session (an hour), not per frame. Returns what says whether it is still so (the new session
        opens meanwhile)."""
        give_up = time.monotonic() + RENEW_CALLER_WAIT_S
        quiet_since: float | None = None
        while True:
            await self.downlink.wait_quiet()
            now = time.monotonic()
            if self.uplink.vad.speaking:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            if now >= give_up or (quiet_since is not None and now - quiet_since >= RENEW_CALLER_QUIET_S):
                return functools.partial(self._still_quiet, now)
            await asyncio.sleep(RENEW_POLL_S)

    def _still_quiet(self, since: float) -> bool:
        """Nobody has spoken since ``since``: the caller not (no speech onset, not speaking now) and the agent not
        (nothing queued, no response under way, none ended)."""
        return (not self.uplink.vad.speaking and self.call_state.last_activity <= since
                and self.media.buffered_ms <= 0 and not self.responses.active)

    def _idle_prompt(self) -> None:
        self.realtime.send(ev.say_exactly(self.agent.idle_prompt))

    # ---------------------------------------------------------------- events from the model

    def _handle(self, event: dict[str, Any]) -> Awaitable[None] | None:
        """The event's handler called; what it returns to wait for (RealtimeSession.read awaits it)."""
        handler = self._handlers.get(event.get("type", ""))
        return None if handler is None else handler(event)

    def _agent_audio(self, event: dict[str, Any]) -> None:
        """response.output_audio.delta: to the downlink; whether it queued audio for the caller (the item playing
        began or grew) decides whether its response, should it fail, may be asked for again."""
        conversation = self.conversation
        item = conversation.current
        queued = -1 if item is None else item.queued_ms
        self.downlink.delta(event)
        after = conversation.current
        if after is not item or (after is not None and after.queued_ms != queued):
            self.retries.audio()

    def _response_created(self, event: dict[str, Any]) -> None:
        self.responses.created(event)
        response = event.get("response")
        self.retries.created(response if isinstance(response, dict) else {})

    def _speech_started(self, event: dict[str, Any]) -> Awaitable[None]:
        self.retries.caller_spoke(event.get("item_id"))  # the server answers the caller: no retry of ours
        return self.interruptions.server_speech()

    def _caller_transcript(self, event: dict[str, Any]) -> None:
        self.retries.caller_said(event.get("item_id"))
        self.records.said("caller", _text(event.get("transcript")))

    def _response_done(self, event: dict[str, Any]) -> None:
        # Whatever its shape, the response is over: a handler that raised before ``responses.done()`` would
        # leave the call waiting for it (no end_call, no idle prompt) until its time limit.
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.conversation.add_usage(usage)
            if self.metrics:
                self.metrics.tokens_used(_count(usage.get("input_tokens")), _count(usage.get("output_tokens")))
        self.records.greeting_done(response)
        self.responses.done()
        self.realtime.response_done(response)  # failed or incomplete: said and counted
        verdict = self.retries.done(response, time.monotonic(), self._line())
        if isinstance(verdict, Retry):
            # The agent has not said what it was to say yet: what waits for that (the greeting's end, an end_call
            # or transfer) waits for the retry's response, or for the retry to be given up.
            self.log.info("retrying the failed response in %g s (%s)", verdict.delay_s, verdict.code or "no code")
            self.records.record("event", event="response-retry", code=verdict.code, attempt=verdict.attempt,
                                delay_s=verdict.delay_s, request="ours" if verdict.ours else "server")
            if self.metrics:
                self.metrics.response_retried(verdict.code)
            self._spawn(self._retry(verdict))
            return
        if isinstance(verdict, NoRetry):
            self.log.log(logging.INFO if verdict.gave_up else logging.DEBUG, "failed response not retried: %s",
                         verdict.reason)
        self._spawn(self._after_response())

    async def _retry(self, retry: Retry) -> None:
        """The failed response's request sent again once its delay is over, unless the call has moved on."""
        take = Take.WAIT
        while take is Take.WAIT:
            await asyncio.sleep(max(0.0, retry.due - time.monotonic()))
            take = self.retries.take(retry, time.monotonic(), self._line())
        if take is Take.SEND:
            if self._greeting_pending:
                self.policy.greeting_started(time.monotonic())  # the greeting, asked again: protected afresh
            self.realtime.send(retry.event)
            return
        self.log.info("failed response not retried: %s", self.retries.why_not)
        self.records.record("event", event="response-retry-dropped", reason=self.retries.why_not)
        await self._after_response()

    def _line(self) -> Line:
        """What the call is doing, for the retry of a failed response."""
        state = self.call_state
        live = (state.live and state.closing is None and not self.tools.transferring and not state.done.is_set()
                and not self.call.ended.is_set())
        return Line(live=live, held=self.on_hold, connected=self.realtime.link is not None,
                    responding=self.responses.active, caller_speaking=self.uplink.vad.speaking)

    def _tool_call(self, event: dict[str, Any]) -> None:
        name, call_id = event.get("name", ""), event.get("call_id", "")
        if not isinstance(name, str) or not isinstance(call_id, str):  # no output can answer it: not a call
            self.log.warning("tool call ignored: its name and call_id are not strings")
            return
        self._spawn(self.tools.run(name, call_id, event.get("arguments", "")))

    def _error(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        error = error if isinstance(error, dict) else {"message": error}
        code = _text(error.get("code")) or _text(error.get("type"))
        message = _text(error.get("message"))[:300]
        level = self.realtime.server_error(code)  # an expired session is replaced; a repeated code logs once
        if code == REFUSED:
            self.retries.refused()  # a response.create of ours came while a response was under way
        elif self.retries.tagging and "response.metadata" in _text(error.get("param")) + message:
            # A server that refuses the tag (not OpenAI's, which echoes it) would refuse every response.create:
            # the one refused goes again untagged, and so does every later one.
            self.log.warning("the Realtime server refuses response.metadata: responses are no longer tagged")
            refused = self.retries.metadata_refused()
            if refused is not None:
                self.realtime.send(refused)
        self.log.log(level, "Realtime error %s: %s", code[:60].encode("unicode_escape").decode(),
                     message.encode("unicode_escape").decode())  # the server's text: one log line, never two
        self.records.record("event", event="realtime-error", code=code, message=message)
        if self.metrics:
            self.metrics.realtime_error(code)

    def _check_session_formats(self, session: object) -> None:
        if not isinstance(session, dict):
            return
        try:
            acknowledged = ev.parse_session(session).audio_format
        except (RealtimeError, TypeError, AttributeError, KeyError, ValueError):  # a shape we cannot read
            return
        if acknowledged != self.settings.audio_format:
            # Some sessions ignore a G.711 request and send 24 kHz PCM16: decode what really arrives.
            self.log.warning("server sends %s audio, not %s as asked", acknowledged, self.settings.audio_format)
            self.downlink.wire_format(acknowledged)



def _text(value: object) -> str:
    """A text field of a server event: its string, or "" for anything else (null, a number, an object)."""
    return value if isinstance(value, str) else ""


def _count(value: object) -> int:
    """A token count of a server event: a whole number, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


__all__ = ["BridgeSettings", "CallBridge", "CallLeg", "CallOutcome", "MediaLeg", "RealtimeLink"]
