"""The agent process: one SIP user agent, one media clock, one bridge per answered call.

Composes the layers and owns process-wide policy: which calls are accepted, the local backend when the
provider is ``local`` without a URL, graceful shutdown, and what operators can see.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sipagent.bridge.call import BridgeSettings, CallBridge, CallOutcome, RealtimeLink
from sipagent.bridge.call_events import CallEvents, CallSummary
from sipagent.bridge.context import CallContext
from sipagent.bridge.conversation import Conversation
from sipagent.bridge.event_sender import EventSender, new_event_id
from sipagent.bridge.records import CallRecords
from sipagent.bridge.retention import sweep
from sipagent.bridge.routing import Router
from sipagent.bridge.settings import AgentProfile
from sipagent.bridge.tools import tool_definitions
from sipagent.bridge.transcript import directory_problem
from sipagent.bridge.warm import HumanDialer, HumanUnavailable
from sipagent.call_media import CallMedia, EndpointLeg, MediaSettings
from sipagent.config import Config, HostPort, load_config, rtp_port_shortage
from sipagent.errors import CallAbandoned, ConfigError, RealtimeError, RtpError, SdpError, SrtpRefused
from sipagent.human_leg import HumanCallLeg, dial_human
from sipagent.media.clock import MediaClock
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.observability.health import HealthState, LoopStallDetector, start_health_server
from sipagent.observability.logs import call_logger, configure_logging, install_trace_toggle, set_call_id
from sipagent.observability.metrics import Metrics
from sipagent.outbound.answer import OutboundAnswer
from sipagent.outbound.calls import CallProgress, PlaceResult
from sipagent.outbound.control import OutboundService, start_outbound
from sipagent.outbound.dialing import dial
from sipagent.outbound.listening import frame_rate, listen_for_machine
from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient
from sipagent.realtime.local.brain import LocalBrainConfig
from sipagent.realtime.local.server import LocalRealtimeServer
from sipagent.realtime.providers import Endpoint, endpoint_for
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.ports import PortAllocator
from sipagent.sdp import NegotiatedMedia
from sipagent.sip.admission import BudgetLimits
from sipagent.sip.call import SipTimeout
from sipagent.sip.outgoing import DialError, OutgoingCall
from sipagent.sip.transport import TransportLimits
from sipagent.sip.ua import IncomingCall, SipAccount, UaSettings, UserAgent

log = logging.getLogger(__name__)
T = TypeVar("T")
MESSAGE_LEFT = "message-left"  # the outcome of an outbound call whose answering machine got the message
RETENTION_SWEEP_S = 3600.0  # how often recording.keep_days deletes what has grown too old


@dataclass
class AgentStats:
    calls_total: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class Agent:
    # The playout queue of each answered call's endpoint; the benchmarks put an observing subclass here.
    playout_class: type[PcmPlayout] = PcmPlayout

    def __init__(self, config: Config, on_transcript: Callable[[str, str, str], None] | None = None,
                 on_call_end: Callable[[str, CallOutcome], None] | None = None) -> None:
        self.config = config
        # What a new call is answered with: swapped whole by reload(), read once by each call as it starts,
        # so a call in progress keeps the profile it began with.
        self.profiles: dict[str, AgentProfile] = config.profiles()
        self.router: Router = config.router()
        self.on_transcript = on_transcript
        self.on_call_end = on_call_end
        self.clock = MediaClock()
        low, high = config.media.rtp_port_range
        self.ports = PortAllocator(low, high)
        self.stats = AgentStats()
        self._local_server: LocalRealtimeServer | None = None
        self._endpoint: Endpoint | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._accepting = True
        self.ua: UserAgent | None = None
        self.outbound: OutboundService | None = None  # the calls we place, and the control API
        self.bridges: dict[str, CallBridge] = {}
        self.metrics = Metrics()
        self.health = HealthState()
        self._monitor: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._apology = _apology_audio()
        self._late_ticks_seen = 0
        # Foreign RTP is counted live (an attack on calls in progress shows before they hang up).
        self._endpoints: set[RtpEndpoint] = set()
        self._foreign_ended = 0
        self._foreign_seen = 0
        self._registration_failures_seen: dict[str, Counter[str]] = {}  # by account: the failures counted
        self._srtp_dropped_ended = 0
        self._srtp_dropped_seen = 0
        hook = config.events.webhook
        # Call events go through one process-wide sender, off every call's path (None: events are off).
        self.events = EventSender(hook, self.metrics) if hook is not None else None
        self._retiring: set[asyncio.Task[None]] = set()  # senders a reload turned off, flushing what they held
        # The calls in progress already counted in sipagent_calls_total (a failure after that is not counted again).
        self._counted: set[str] = set()

    async def start(self) -> None:
        recording = self.config.recording
        problem = directory_problem(Path(recording.dir)) if recording.transcripts or recording.audio else None
        if problem is not None:  # calls are still answered; each one's writer reports its own failure
            log.warning("%s", self.config.key_problem(
                "recording.dir", f"{problem}; calls will be answered without transcripts or recordings"))
        shortage = rtp_port_shortage(self.config)
        if shortage is not None:
            log.warning("%s", shortage)
        media = self.config.media
        if media.srtp == "optional" and self.config.sip.transport != "tls" and not media.srtp_over_insecure_signalling:
            # Not an error (plain offers are answered), but every RTP/SAVP offer will get 488: say so once.
            log.warning("%s", self.config.key_problem(
                "media.srtp", f"optional over sip.transport {self.config.sip.transport}: RTP/SAVP offers will be "
                "refused, since SDES keys are taken only over TLS (media.srtp_over_insecure_signalling)"))
        self._local_server, self._endpoint = await realtime_endpoint(self.config)
        if self.events is not None:
            self.events.start()
        self.clock.start()
        settings = ua_settings(self.config)
        self.ua = UserAgent(settings, self._on_call, on_refused=self._on_refused, on_shed=self.metrics.sip_shed)
        await self.ua.start()
        self.outbound = await start_outbound(self.config, self.place_outbound, self.metrics, self._sip_room)
        self._monitor = asyncio.ensure_future(self._watch())
        if recording.keep_days > 0:
            self._retention = asyncio.ensure_future(self._keep_recordings(Path(recording.dir), recording.keep_days))

    async def _watch(self) -> None:
        """Once a second: registration state and media clock health into metrics and /healthz."""
        last_states: dict[str, str] = {}
        up = ("registered", "refreshing")
        while True:
            assert self.ua is not None
            # Each account on its own: its state series, its failures, its health (direct mode: one "").
            states = self.ua.registration_states or {"": self.ua.registration_state}
            for account, state in states.items():
                last_state = last_states.get(account, "")
                if state == last_state:
                    continue
                self.metrics.set_registration_state(state, account)
                if self.config.sip.registrar:
                    self.health.note_registration(state in up, account)
                last_states[account] = state
            self.metrics.set_sip_transactions(self.ua.server_transactions)
            # Every attempt that failed, by the registration's own count: a state polled once a second misses
            # a refusal repeated in back-off, and a lost connection re-registered within milliseconds.
            for account, failed in self.ua.registration_failures.items():
                seen = self._registration_failures_seen.setdefault(account, Counter())
                for reason, count in failed.items():
                    if count > seen[reason]:
                        self.metrics.registration_failed(reason, account, count - seen[reason])
                        seen[reason] = count
            foreign = self._foreign_ended + sum(endpoint.foreign_packets for endpoint in self._endpoints)
            self.metrics.add_rtp_foreign(foreign - self._foreign_seen)
            self._foreign_seen = foreign
            dropped = self._srtp_dropped_ended + sum(endpoint.srtp_dropped for endpoint in self._endpoints)
            self.metrics.add_srtp_dropped(dropped - self._srtp_dropped_seen)
            self._srtp_dropped_seen = dropped
            late = self.clock.late_ticks + self.clock.skipped_ticks
            if late > self._late_ticks_seen:
                self.metrics.add_late_ticks(late - self._late_ticks_seen)
                self._late_ticks_seen = late
            await asyncio.sleep(1.0)

    async def _keep_recordings(self, directory: Path, keep_days: float) -> None:
        """recording.keep_days: at start, then every RETENTION_SWEEP_S, the calls' files older than that are
        deleted, in a worker thread (a directory of a million files must not stall the media clock)."""
        while True:
            done = await asyncio.to_thread(sweep, directory, keep_days, time.time())
            if done.deleted:
                log.info("recording.keep_days: deleted %d call files older than %g days (%.1f MB)", done.deleted,
                         keep_days, done.freed_bytes / 1e6)
            if done.failed:
                log.warning("recording.keep_days: %d call files in %s could not be deleted: %s", done.failed,
                            directory, done.problem)
            await asyncio.sleep(RETENTION_SWEEP_S)

    def reload(self, config: Config) -> None:
        """SIGHUP: new profiles (instructions, voice, greeting, tools, transfer targets…) and routes for calls
        answered from now on, and call events from the next one on. The SIP section (listen address,
        accounts) needs a restart."""
        self.config.realtime.instructions = config.realtime.instructions
        self.config.realtime.voice = config.realtime.voice
        self.config.agent = config.agent
        self.config.context = config.context
        self.config.agents = config.agents
        self.config.routes = config.routes
        if [(a.name, a.agent) for a in config.accounts()] != [(a.name, a.agent) for a in self.config.accounts()]:
            log.warning("reload: sip.accounts changed; the accounts registered stay as they were until a restart")
        self.profiles, self.router = config.profiles(), config.router()
        if self.ua is not None:  # headers new templates or routes name: kept from the next INVITE on
            self.ua.settings.context_headers = context_headers(config)
        self.config.outbound = config.outbound
        if self.outbound is not None:
            self.outbound.reload(config)
        self._reload_events(config)
        log.info("configuration reloaded for new calls: profiles %s; %d routes", ", ".join(self.profiles),
                 len(self.router.routes))

    def _reload_events(self, config: Config) -> None:
        """Call events follow the file from the next event on: a rotated secret or a moved receiver applies
        to the events already held too; turning events off lets the held ones go out (the shutdown flush's
        bound), as at a stop."""
        hook, sender = config.events.webhook, self.events
        self.config.events = config.events
        if hook is not None and sender is not None:
            sender.reconfigure(hook)
        elif hook is not None:
            self.events = EventSender(hook, self.metrics)
            self.events.start()
        elif sender is not None:
            self.events = None
            retiring = asyncio.ensure_future(sender.stop())
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)

    @property
    def sip_address(self) -> tuple[str, int]:
        assert self.ua is not None
        return self.ua.local_address

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop taking calls (503), give active ones ``grace_s`` to finish, end the rest politely,
        unregister."""
        self._accepting = False
        if self.outbound is not None:  # the control API answers 503 from now on, through the grace period
            self.outbound.calls.stop_admitting()
        self.health.set_problem("shutdown", "shutting down")
        if self._calls and grace_s > 0:
            await asyncio.wait(set(self._calls), timeout=grace_s)
        if self.bridges:
            await asyncio.gather(*(bridge.end_politely() for bridge in list(self.bridges.values())),
                                 return_exceptions=True)
        if self._monitor is not None:
            self._monitor.cancel()
        if self._retention is not None:
            self._retention.cancel()
        if self.outbound is not None:  # the API stops; calls still ringing are CANCELled, the rest hung up
            await self.outbound.close()
        if self.ua is not None:
            await self.ua.stop()
        for task in list(self._calls):
            task.cancel()
        for task in list(self._calls):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.events is not None:  # after the calls: their call.ended events are in the outbox by now
            await self.events.stop()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self.clock.stop()
        if self._local_server is not None:
            await self._local_server.stop()

    # ---------------------------------------------------------------- calls

    async def _on_call(self, call: IncomingCall) -> None:
        task = asyncio.current_task()
        assert task is not None
        set_call_id(call.call_id)  # every log line of this call's tasks carries its Call-ID
        self._calls.add(task)
        try:
            await self._handle_call(call)
        except asyncio.CancelledError:
            # A shutdown while the call was being answered (waiting for its ACK): counted once all the same.
            if call.call_id not in self._counted:
                self._count("cancelled")
            raise
        except Exception:
            log.exception("call failed")
            with contextlib.suppress(Exception):
                await call.hangup()
            if call.call_id not in self._counted:  # failed before it was counted: counted once, as what it is
                self._count("error")
        finally:
            self._calls.discard(task)
            self._counted.discard(call.call_id)

    async def _handle_call(self, call: IncomingCall) -> None:
        if not self._accepting:
            await call.reject(503)
            self._count("rejected-busy", call.call_id)
            return
        self.stats.calls_total += 1
        decision = self.router.choose(call.identity, call.account)
        profile = self.profiles[decision.profile]
        # The port first (the answer names it), then the endpoint for the codec the answer settled.
        try:
            chain = self._media_chain(call.call_id)
        except RtpError as exc:  # media.rtp_ports is used up (or its ports are taken by other programs)
            log.warning("call refused (503): %s; media.rtp_ports needs 2 ports per call (sip.max_calls %d)", exc,
                        self.config.sip.max_calls)
            with contextlib.suppress(Exception):
                await call.reject(503)
            self._count("error", call.call_id)
            return
        try:
            rtp_host = call.local_host  # the UA's decision for the SDP answer (the offer's IP family)
            try:
                media = await call.answer(rtp_host, chain.local_port)
            except SdpError as exc:
                log.info("offer refused (488): %s", exc)
                self._count("rejected-srtp" if isinstance(exc, SrtpRefused) else "rejected-codec", call.call_id)
                return
            except CallAbandoned as exc:
                log.info("%s", exc)
                self._count("cancelled", call.call_id)
                return
            except SipTimeout:
                log.warning("no ACK for our 200 OK: the call was ended with BYE (does our answer reach the PBX? "
                            "check sip.public_address and NAT)")
                self._count("error", call.call_id)
                return
            if call.ended.is_set():
                self._count("cancelled", call.call_id)
                return
            context = call_context(call, self.config)
            self._build_leg(call, chain, media)
            # Numbers only (bounded by identify()): names and header values stay in the transcript.
            log.info("answered %s with %s: profile %s (%s)%s, caller %s, dialed %s%s%s", call.from_uri, media.codec,
                     profile.name, decision.reason, f", account {call.account}" if call.account else "",
                     context.caller_number or "(unknown)", context.dialed or "(unknown)",
                     f", redirected from {context.redirected_from}" if context.redirected_from else "",
                     f", headers {', '.join(context.headers)}" if context.headers else "")
            events = CallEvents(call.call_id, {**context.to_json(), "caller_uri": call.from_uri,
                                               "dialed_uri": call.to_uri, "remote_host": call.remote_host},
                                profile.name, new_event_id)
            settings = self._bridge_settings(profile, decision.reason, call.account)
            await self._bridge(call, chain, media, settings, context, events)
        finally:
            self._close_chain(chain)

    def _sip_room(self) -> bool:
        """Room for one more call in ``sip.max_calls``, which answered and placed calls share (``_dial`` checks
        again: a call admitted a moment ago may not have reached the UA yet)."""
        return self.ua is not None and self.ua.active_calls < self.config.sip.max_calls

    async def place_outbound(self, progress: CallProgress) -> PlaceResult:
        """Dial ``progress.request`` and run the answered call to its end (sipagent.outbound.calls' ``place``).

        An answered call is first listened to by the profile's answering-machine detection; a person (or no
        verdict) gets the conversation, as an inbound call does; a machine is hung up on or gets the
        profile's message. Cancelling the task CANCELs a ringing call and hangs up an answered one; a call
        not answered raises DialError with its outcome. Every call placed sends one ``call.ended``."""
        task = asyncio.current_task()
        assert task is not None
        profile = self.profiles[progress.request.profile]  # read once: a reload does not change a call under way
        self._calls.add(task)
        try:
            try:
                chain = self._media_chain(progress.call.id)
            except RtpError:  # no RTP port: never dialed (OutboundCalls says "failed", with the error)
                self._unanswered(progress, profile, "failed")
                raise
            try:
                call = await self._dial(progress, chain, profile)
                set_call_id(call.call_id)
                return await self._outbound_answered(progress, call, chain, profile)
            finally:
                self._close_chain(chain)
        finally:
            self._calls.discard(task)
            self._counted.discard(progress.call.sip_call_id)

    async def _dial(self, progress: CallProgress, chain: CallMedia, profile: AgentProfile) -> OutgoingCall:
        """The answered call; DialError (reported as a call.ended event first) when it was not answered, and
        a cancellation before the answer (reported as ``cancelled``) goes on."""
        assert self.ua is not None
        try:
            if not self._accepting:
                raise DialError("failed", 0, "the agent is shutting down")
            if self.ua.active_calls >= self.config.sip.max_calls:  # calls both ways share the one budget
                raise DialError("failed", 0, f"sip.max_calls ({self.config.sip.max_calls}) calls are in progress")
            account = self.config.outbound_account()
            call = await dial(self.ua, progress, rtp_port=chain.local_port, codecs=list(self.config.media.codecs),
                              account=account.name if account is not None else None,
                              ring_timeout=self.config.outbound.ring_timeout_s)
        except DialError as exc:
            self._unanswered(progress, profile, exc.outcome)
            raise
        except asyncio.CancelledError:  # DELETE or shutdown before the answer: the UA CANCELled it
            self._unanswered(progress, profile, "cancelled")
            raise
        assert isinstance(call, OutgoingCall) and call.media is not None
        return call

    def _unanswered(self, progress: CallProgress, profile: AgentProfile, outcome: str) -> None:
        """The ``call.ended`` of an outbound call that was not answered (busy, no-answer, cancelled, failed…)."""
        context = outbound_context(progress.call.id, progress, self.config)
        events = CallEvents(progress.call.id, {**context.to_json(), "dialed_uri": progress.request.to},
                            profile.name, new_event_id, direction="outbound", outbound_id=progress.call.id)
        self._emit(lambda: events.ended(time.time(), CallSummary(outcome, 0.0)))

    async def _outbound_answered(self, progress: CallProgress, call: OutgoingCall, chain: CallMedia,
                                 profile: AgentProfile) -> PlaceResult:
        """Listen for an answering machine, then do what the profile says: converse, hang up, leave the message.
        The call is active (sipagent_calls_active) from its answer, the listening included."""
        assert call.media is not None
        self.stats.calls_total += 1
        answered = time.monotonic()
        media = call.media
        context = outbound_context(call.call_id, progress, self.config)
        events = CallEvents(call.call_id, {**context.to_json(), "caller_uri": call.from_uri,
                                           "dialed_uri": call.to_uri, "remote_host": call.remote_host},
                            profile.name, new_event_id, direction="outbound", outbound_id=progress.call.id)
        settings = self._bridge_settings(profile, "outbound", call.account)
        answer = OutboundAnswer(profile.answering_machine, context.variables(self.config.context.template_defaults),
                                sample_rate=frame_rate(media.codec))

        def heard(verdict: str | None, action: str) -> list[tuple[str, dict[str, Any]]]:
            """What the detector heard and what was done about it: the transcript's first entries."""
            entries: list[tuple[str, dict[str, Any]]] = [
                ("event", {"event": "answering-machine", "heard": event.kind, "at": round(event.at, 2),
                           "reason": event.reason}) for event in answer.events]
            entries.append(("event", {"event": "outbound", "outbound_id": progress.call.id, "to": call.to_uri,
                                      "answering_machine": verdict, "action": action}))
            return entries

        def unbridged(reason: str, placed: PlaceResult, action: str) -> PlaceResult:
            """The end of an answered call that never reached a conversation: transcript, count, event."""
            assert chain.endpoint is not None
            figures = leg.media_report()
            records = self._transcript_without_bridge(call, media.codec, settings, context,
                                                      heard(placed.answering_machine, action), reason, figures,
                                                      answered)
            path = records.transcript.path if records.transcript and records.transcript.ok else None
            outcome = CallOutcome(reason, transcript_path=path, media=figures)

            def unbridged_summary(outcome: CallOutcome, duration_s: float) -> CallSummary:
                return dataclasses.replace(call_summary(outcome, duration_s), outcome=placed.outcome,
                                           answering_machine=placed.answering_machine or "")

            self._call_over(events, outcome, time.monotonic() - answered, chain.endpoint, unbridged_summary)
            return placed

        leg = self._build_leg(call, chain, media)
        self._call_active(call.call_id)
        log.info("outbound call %s answered by %s with %s: profile %s", progress.call.id, call.to_uri,
                 media.codec, profile.name)
        try:
            decision = await listen_for_machine(call, leg.endpoint, answer, media.codec)
        except (asyncio.CancelledError, Exception) as exc:  # DELETE or shutdown while we listened (or a fault)
            try:
                if not call.ended.is_set():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(call.hangup())
            finally:  # recorded even when a second cancellation (a repeated DELETE) cuts the hang-up's wait
                if isinstance(exc, asyncio.CancelledError):
                    unbridged("agent-hangup", PlaceResult("answered", "hung up while listening for a machine"),
                              "hang_up")
                else:
                    unbridged("error", PlaceResult("failed", f"internal error: {type(exc).__name__}"), "hang_up")
            raise
        progress.call.answering_machine = decision.verdict
        if call.ended.is_set():  # hung up while we listened
            return unbridged("remote-hangup", PlaceResult("answered", call.end_reason, decision.verdict),
                             decision.action)
        if decision.action == "hang_up":
            log.info("outbound call %s: answering machine (%s): hanging up", progress.call.id, decision.reason)
            try:
                with contextlib.suppress(Exception):
                    await call.hangup()
            finally:  # counted and reported even if cancelled meanwhile
                placed = unbridged("answering-machine",
                                   PlaceResult("machine", "answering machine: hung up", "machine"), decision.action)
            return placed
        if decision.action == "leave_message":
            # The message is this call's greeting (its template filled in by the bridge, as greetings are),
            # and the call ends once it has been heard. A machine does not interrupt: with barge-in on, the
            # line's noise or a recording still playing after the beep would cut the message short.
            spoken = dataclasses.replace(profile, greeting=profile.answering_machine.message,
                                         barge_in=dataclasses.replace(profile.barge_in, mode="off"))
            settings = dataclasses.replace(self._bridge_settings(spoken, "outbound", call.account),
                                           end_after_greeting=MESSAGE_LEFT)

        def result(outcome: CallOutcome) -> PlaceResult:
            if decision.action == "leave_message":
                return PlaceResult("machine", outcome.reason, "machine", message_left=outcome.reason == MESSAGE_LEFT)
            return PlaceResult("answered", outcome.reason, decision.verdict)

        def summary(outcome: CallOutcome, duration_s: float) -> CallSummary:
            # The call's outbound outcome, as the control API and the metrics have it.
            placed = result(outcome)
            return dataclasses.replace(call_summary(outcome, duration_s), outcome=placed.outcome,
                                       answering_machine=placed.answering_machine or "",
                                       message_left=placed.message_left)

        return result(await self._bridge(call, chain, media, settings, context, events,
                                         heard(decision.verdict, decision.action), summary, answered=answered))

    @staticmethod
    def _transcript_without_bridge(call: OutgoingCall, codec: str, settings: BridgeSettings, context: CallContext,
                                   records: Sequence[tuple[str, dict[str, Any]]], reason: str,
                                   media: dict[str, int | float | None], origin: float) -> CallRecords:
        """The transcript of an answered call that ended before any conversation (a machine hung up on): its
        start, what was heard and why it ended, as a bridged call's transcript has them. ``origin``: the
        answer (time.monotonic)."""
        written = CallRecords(call.call_id, datetime.now(UTC), origin, settings.recording, Conversation(),
                              "", call_logger(log, call.call_id))
        written.started(call.call_id, call.from_uri, codec, settings.profile, settings.route, context.to_json())
        for kind, fields in records:
            written.record(kind, **fields)
        written.close({}, reason, media)
        return written

    def _media_chain(self, call_id: str) -> CallMedia:
        """A new call's media chain, its RTP port pair bound (the SDP names it before the codec is settled)."""
        return CallMedia(self.clock, self.ports, self._media_settings(), cname=f"sipagent-{call_id[:8]}")

    def _media_settings(self) -> MediaSettings:
        media = self.config.media
        return MediaSettings(self.config.sip.listen_address.host, media.jitter_ms, media.symmetric_rtp,
                             self.playout_class)

    def _build_leg(self, call: IncomingCall | OutgoingCall, chain: CallMedia, media: NegotiatedMedia) -> EndpointLeg:
        """The endpoint for the codec the offer/answer settled, following every later negotiation."""
        leg = chain.build(media)
        self._track(chain)
        call.on_media_change = chain.apply
        return leg

    def _track(self, chain: CallMedia) -> None:
        """A call's endpoint, once built: its packet counts go into the metrics until ``_close_chain``."""
        if chain.endpoint is not None:
            self._endpoints.add(chain.endpoint)

    def _close_chain(self, chain: CallMedia) -> None:
        chain.close()
        endpoint = chain.endpoint
        if endpoint is not None and endpoint in self._endpoints:
            self._endpoints.discard(endpoint)
            self._foreign_ended += endpoint.foreign_packets
            self._srtp_dropped_ended += endpoint.srtp_dropped

    async def _bridge(self, call: IncomingCall | OutgoingCall, chain: CallMedia, media: NegotiatedMedia,
                      settings: BridgeSettings, context: CallContext, events: CallEvents,
                      records: Sequence[tuple[str, dict[str, Any]]] = (),
                      summarize: Callable[[CallOutcome, float], CallSummary] | None = None,
                      answered: float | None = None) -> CallOutcome:
        """Bridge an answered call (either way) to a Realtime session until it ends, and count it; ``records``
        go to its transcript right after its start, ``summarize`` makes its ``call.ended`` (default:
        ``call_summary``). ``answered``: when the call was answered and counted active (time.monotonic),
        if that was before (an outbound call listened to for a machine); None: now.
        Cancelled (shutdown, or DELETE of an outbound call), the call is hung up and counted, then the
        cancellation goes on: a second cancellation while it hangs up changes nothing."""
        assert chain.leg is not None and chain.endpoint is not None
        bridge = CallBridge(call, chain.leg, self._connect, settings,
                            on_transcript=self._transcript_callback(call.call_id), context=context, origin=answered)
        # From now on the endpoint's per-frame callbacks go straight to the bridge; nothing ran in
        # between (no await since build), so it hears of every frame either way.
        chain.attach(bridge, media)
        call.on_dtmf = bridge.on_dtmf
        bridge.prelude.extend(records)
        self.bridges[call.call_id] = bridge
        if answered is None:
            self._call_active(call.call_id)
            answered = time.monotonic()
        self.metrics.call_profile(settings.profile, call.account)
        self._emit(lambda: events.started(time.time(), media.codec))
        running = asyncio.ensure_future(bridge.run())
        cancelled = False
        try:
            while True:
                try:
                    outcome = await asyncio.shield(running)
                    break
                except asyncio.CancelledError:
                    if running.cancelled():  # the bridge's own task (the loop is closing): its end as it stood
                        outcome = bridge.outcome()
                        break
                    cancelled = True
                    bridge.call_state.finish("agent-hangup")
                except Exception:  # run() never raises; should it, the call is still counted, and said to be over
                    log.exception("call bridge failed")
                    bridge.call_state.outcome = "error"
                    outcome = bridge.outcome()
                    break
            self._call_over(events, outcome, time.monotonic() - answered, chain.endpoint, summarize or call_summary)
            if self.on_call_end:
                self.on_call_end(call.call_id, outcome)
        finally:
            self.bridges.pop(call.call_id, None)
        if cancelled:
            raise asyncio.CancelledError
        return outcome

    def _call_active(self, call_id: str) -> None:
        """An answered call counts as active from now on (and in sipagent_calls_total once it ends)."""
        self.metrics.call_started()
        self._counted.add(call_id)

    def _call_over(self, events: CallEvents, outcome: CallOutcome, duration: float, endpoint: RtpEndpoint,
                   summarize: Callable[[CallOutcome, float], CallSummary]) -> None:
        """An active call ended with ``outcome`` after ``duration`` seconds: counted, its ``call.ended`` sent, its
        line logged, its RTP figures into the metrics."""
        rtp = endpoint.stats()
        figures = outcome.media or rtp.summary()
        self.stats.outcomes[outcome.reason] = self.stats.outcomes.get(outcome.reason, 0) + 1
        self.metrics.call_ended(outcome.reason, duration)
        if outcome.transfer_uri:
            self._emit(lambda: events.transferred(time.time(), outcome.transfer_target, outcome.transfer_uri))
        self._emit(lambda: events.ended(time.time(), summarize(outcome, duration)))
        # One line per call with what an operator asks first: how it ended, and whether the audio was sound.
        log.info("call ended: %s after %.1f s; RTP in %s packets (%s %% lost, jitter %s ms, %s frames "
                 "concealed), out %s%s", outcome.reason, duration, figures.get("packets_received"),
                 figures.get("loss_pct"), figures.get("jitter_ms"), figures.get("concealed_frames"),
                 figures.get("packets_sent"),
                 "" if figures.get("remote_lost") is None else f" ({figures['remote_lost']} lost, as the far "
                                                              "end reports)")
        self.metrics.add_rtp(sent=rtp.packets_sent, received=rtp.packets_received, lost=max(0, rtp.lost))
        self.metrics.observe_jitter(rtp.jitter_ms / 1000)

    def _emit(self, build: Callable[[], Any]) -> None:
        """Queue a call event (built only when events are on); a fault here never reaches the call."""
        if self.events is None:
            return
        try:
            self.events.emit(build())
        except Exception:
            log.exception("call event not queued")

    def _on_refused(self, status: int) -> None:
        self._count({403: "rejected-forbidden", 404: "rejected-not-ours", 486: "rejected-busy",
                     488: "rejected-codec"}.get(status, "error"))

    def _count(self, outcome: str, call_id: str = "") -> None:
        """A call that never became active (``call_id``: one of ours, now counted: see ``_on_call``)."""
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        self.metrics.call_counted(outcome)
        if call_id:
            self._counted.add(call_id)

    def _transcript_callback(self, call_id: str) -> Callable[[str, str], None] | None:
        if self.on_transcript is None:
            return None
        callback = self.on_transcript
        return lambda role, text: callback(call_id, role, text)

    def _bridge_settings(self, profile: AgentProfile, route: str = "default", account: str = "") -> BridgeSettings:
        """What a bridge is given; ``account`` is the line its call is on, which a warm transfer dials from."""
        rt = self.config.realtime
        return BridgeSettings(
            agent=profile, recording=self.config.recording, session=session_settings(self.config, profile),
            profile=profile.name, route=route, dialect=ev.check_dialect(rt.dialect),
            audio_format=rt.audio_format, max_session_s=rt.max_session_s, apology_audio=self._apology,
            metrics=self.metrics, rtp_timeout_s=self.config.media.rtp_timeout_s,
            context_defaults=self.config.context.template_defaults, dialer=self._human_dialer(account),
            frames=self.clock.received,
        )

    def _human_dialer(self, account: str) -> HumanDialer:
        """A warm transfer's call to the human, on this agent's SIP stack and media clock, from ``account``: the
        human sees the line the caller called, and the PBX takes the call on that line's credentials."""

        async def dial(uri: str, ring_timeout: float) -> HumanCallLeg:
            if self.ua is None:
                raise HumanUnavailable("failed", "the SIP user agent is not running")
            # Its endpoint is in the agent's books like a caller's: foreign and SRTP-dropped packets counted.
            return await dial_human(self.ua, self.clock, self.ports, self._media_settings(), uri, ring_timeout,
                                    account, track=self._track, release=self._close_chain)

        return dial

    async def _connect(self) -> RealtimeLink:
        assert self._endpoint is not None
        client = RealtimeClient.for_endpoint(self._endpoint, connect_timeout=self.config.realtime.connect_timeout_s,
                                             after_receive=self.clock.run_due)
        await client.connect()
        return client


def call_context(call: IncomingCall, config: Config) -> CallContext:
    """What the bridge's templates, webhooks and transcript know of ``call``: its identity from the INVITE
    and the moment it was answered, in context.timezone."""
    identity, zone = call.identity, config.context.zone
    started = datetime.now(zone) if zone is not None else datetime.now().astimezone()
    return CallContext(call.call_id, started, caller_number=identity.caller_number, caller_name=identity.caller_name,
                       dialed=identity.dialed, redirected_from=identity.redirected_from, headers=dict(identity.headers))


def outbound_context(call_id: str, progress: CallProgress, config: Config) -> CallContext:
    """What the bridge's templates, webhooks and transcript know of a call we placed: whom we dialed, the
    request's variables, and the moment it was answered, in context.timezone."""
    zone = config.context.zone
    started = datetime.now(zone) if zone is not None else datetime.now().astimezone()
    request = progress.request
    return CallContext(call_id, started, dialed=request.to, call_variables=dict(request.variables))


def call_summary(outcome: CallOutcome, duration_s: float) -> CallSummary:
    return CallSummary(
        outcome=outcome.reason, duration_s=duration_s, tools=list(outcome.tools),
        transfer_target=outcome.transfer_target, transfer_uri=outcome.transfer_uri, usage=dict(outcome.usage),
        transcript_path=str(outcome.transcript_path) if outcome.transcript_path else None,
        recording_path=str(outcome.recording_path) if outcome.recording_path else None, media=dict(outcome.media),
    )


def session_settings(config: Config, profile: AgentProfile | None = None) -> ev.SessionSettings:
    """The Realtime session a call starts with: the ``realtime`` section, and what ``profile`` (the default
    one when None) says. The model is offered the profile's tools and transfer targets, and no others."""
    rt, profile = config.realtime, profile or config.default_profile()
    return ev.SessionSettings(
        instructions=profile.instructions, voice=profile.voice, turn_detection=rt.turn_detection or None,
        transcription_model=rt.transcription_model or None, tools=tool_definitions(
            profile.tools, list(profile.transfer_targets), bool(profile.transfer_target)),
        audio_format=rt.audio_format, transcription_language=profile.language or None,
    )


async def realtime_endpoint(config: Config) -> tuple[LocalRealtimeServer | None, Endpoint]:
    """Where Realtime sessions go; starts the in-process local backend for ``provider: local`` without
    a url (the caller stops the returned server)."""
    rt = config.realtime
    server = None
    url, api_key = rt.url, rt.api_key
    if rt.provider == "local" and not url:
        # Two sessions per call: a session renewal opens the new one before the old one closes.
        server = LocalRealtimeServer(LocalBrainConfig.from_mapping(rt.local), "127.0.0.1", 0,
                                     max_sessions=2 * config.sip.max_calls)
        await server.start()
        url, api_key = server.url, ""  # our own process on loopback: no token, and no key sent to it
        log.info("local Realtime backend running in-process at %s", url)
    return server, endpoint_for(rt.provider, url=url, model=rt.model, api_key=api_key, dialect=rt.dialect,
                                api_version=rt.api_version)


def ua_settings(config: Config) -> UaSettings:
    sip, limits = config.sip, config.sip.limits
    listen = sip.listen_address
    registrar = sip.registrar_address
    return UaSettings(
        registrar=str(registrar) if registrar else None, transport=sip.transport, username=sip.username,
        password=sip.password, domain=sip.effective_domain, listen_host=listen.host, listen_port=listen.port,
        public_host=sip.public_address or None, expires=sip.expires, max_calls=sip.max_calls,
        trusted_hosts=list(sip.trusted_hosts), codecs=list(config.media.codecs), user_agent=sip.user_agent,
        aliases=list(sip.aliases), allow_any_caller=sip.allow_any_caller, context_headers=context_headers(config),
        srtp=config.media.srtp, srtp_suites=list(config.media.srtp_suites),
        srtp_over_insecure_signalling=config.media.srtp_over_insecure_signalling,
        session_expires=sip.session_expires, min_se=sip.min_se,
        accounts=[SipAccount(account.name, account.username, account.password, account.auth_user,
                             account.expires or sip.expires) for account in config.accounts()],
        limits=BudgetLimits(transactions=limits.transactions, transactions_per_source=limits.transactions_per_source),
        transport_limits=TransportLimits(
            max_message_bytes=limits.max_message_bytes, tcp_connections=limits.tcp_connections,
            tcp_connections_per_source=limits.tcp_connections_per_source, tcp_idle_s=limits.tcp_idle_s,
            tcp_message_s=limits.tcp_message_s),
        tls=sip.tls.settings, keepalive_s=sip.keepalive_s, keepalive_timeout_s=sip.keepalive_timeout_s,
        outbound_proxy=sip.outbound_proxy or None,
    )


def context_headers(config: Config) -> list[str]:
    """The INVITE headers each call's identity keeps: those listed in context.headers (for the templates,
    webhooks and transcripts), then those the routes match on."""
    listed = list(config.context.headers)
    known = {name.lower() for name in listed}
    return listed + [name for name in config.router().header_names() if name.lower() not in known]


def _apology_audio() -> Callable[[str], Any] | None:
    """Local speech for when the model cannot be reached (espeak-ng, if installed)."""
    from sipagent.realtime.local.tts import Synthesizer

    try:
        synthesizer = Synthesizer()
    except RealtimeError as exc:
        log.warning("no local speech for apologies: %s", exc)
        return None

    async def speak(text: str) -> bytes:
        return await asyncio.to_thread(synthesizer.synthesize, text)

    return speak


LOOP_ENV = "SIPAGENT_EVENT_LOOP"


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the process runs on: uvloop when it is installed (its C loop costs less per
    callback, socket write and wake-up, which is what bounds the calls one process holds), the stdlib
    loop when it is not or when ``SIPAGENT_EVENT_LOOP=asyncio`` asks for it. None = asyncio's default."""
    choice = os.environ.get(LOOP_ENV, "uvloop").strip().lower()
    if choice not in ("uvloop", "asyncio"):
        raise ConfigError(f"{LOOP_ENV} must be 'uvloop' or 'asyncio', not {choice!r}", key=LOOP_ENV)
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop ``event_loop_factory`` picks."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


def run_agent(config: Config) -> int:
    """``sipagent run``: serve until SIGTERM/SIGINT, then shut down gracefully."""
    configure_logging(config.logging.level, config.logging.format,
                      secrets=[config.sip.password, config.realtime.api_key,
                               config.events.webhook.secret if config.events.webhook else "",
                               *(account.password for account in config.sip.accounts)])
    return run_loop(_serve(config))


async def _serve(config: Config) -> int:
    agent = Agent(config)
    try:
        await agent.start()
    except (OSError, RealtimeError) as exc:
        log.error("cannot start: %s", exc)
        await agent.stop()
        return 1
    loop = asyncio.get_running_loop()
    stall = LoopStallDetector(agent.health, agent.metrics)
    stall.start()
    server = None
    metrics_address = config.metrics.listen_address
    if metrics_address is not None:
        server = await start_health_server(metrics_address.host, metrics_address.port, agent.metrics, agent.health)
    install_trace_toggle(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        try:
            agent.reload(load_config(config.source))
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)

    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("sipagent ready on %s (%s, %s loop)", HostPort(*agent.sip_address),
             "direct mode" if config.sip.direct_mode else f"registering at {config.sip.registrar}",
             type(loop).__module__.split(".")[0])
    await stop.wait()
    log.info("shutting down: no new calls; %d active get %.0f s to finish", len(agent.bridges),
             config.agent.shutdown_grace_s)
    await agent.stop(grace_s=config.agent.shutdown_grace_s)
    await stall.stop()
    if server is not None:
        server.close()
        await server.wait_closed()
    log.info("stopped")
    return 0
