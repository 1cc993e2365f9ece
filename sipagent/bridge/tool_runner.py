"""The model's tool calls, and the caller's keys.

Webhook tools run as they come; the built-ins ``end_call`` and ``transfer_call`` wait until the agent has
finished what it is saying (``run_pending``); ``collect_digits`` and ``send_dtmf`` are the bridge's own.
Keys from the caller go to a keypad entry under way, or to the model as text with the keys typed after it.
Every argument from the model is hostile: it is checked before anything acts on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sipagent.bridge.call_events import ToolUse
from sipagent.bridge.context import CallContext
from sipagent.bridge.digits import (
    Collected,
    CollectSpec,
    DigitCollector,
    ToolArgumentError,
    collect_spec,
    send_digits,
)
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.interruptions import CANCEL_WAIT_S, Interruptions
from sipagent.bridge.legs import CallLeg, MediaLeg
from sipagent.bridge.records import CallRecords
from sipagent.bridge.session import RealtimeSession, Responses
from sipagent.bridge.settings import AgentConfig, DtmfConfig, ToolConfig
from sipagent.bridge.state import CallState
from sipagent.bridge.tools import ToolResult, parse_arguments, run_webhook
from sipagent.bridge.waiting import first_of
from sipagent.bridge.warm import HumanDialer, WarmOutcome, WarmTransfer, clean_summary
from sipagent.errors import RtpError
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev

DTMF_FLUSH_S = 1.5  # digits typed with pauses shorter than this go to the model together

# Bounds on what one call's model may start. Its arguments and its choice of tools are steered by the caller's
# words (and a backend may misbehave): without them, a caller could have it open hundreds of webhook requests
# at once (each up to its timeout_s), loop tool calls for the whole call (every result starts a new response:
# tokens billed), ring the human desks again and again, or try PINs on an IVR key by key.
MAX_TOOLS_IN_FLIGHT = 4  # webhook tools running at once; another gets an error until one has answered
MAX_TOOL_CALLS = 100  # tool calls per call; past it each gets an error and no new response (the loop ends)
MAX_TRANSFERS = 3  # transfer_call attempts per call (a failed one counts: the desk's phone rang)
MAX_KEYS_SENT = 128  # send_dtmf keys per call, all calls of it together
MAX_NAME_CHARS = 64  # of a tool name the model made up, as echoed in an error and the transcript
# A blind transfer is waited for until the far end reports its outcome (the call front's limit: as long as a
# REFER stays undecided), unless the caller's audio still reaches us this long after the REFER: then the far
# end accepted it and took the caller nowhere (a phone that never reports), and they are back with the agent.
# A PBX that took the caller away sends us no more of their audio.
BLIND_STILL_HERE_S = 30.0
MEDIA_CHECK_S = 2.0  # how long a look at the caller's audio lasts, after BLIND_STILL_HERE_S


class ToolRunner:
    def __init__(self, agent: AgentConfig, call: CallLeg, media: MediaLeg, context: CallContext, dialect: ev.Dialect,
                 session: RealtimeSession, responses: Responses, downlink: Downlink, interruptions: Interruptions,
                 state: CallState, records: CallRecords, log: logging.LoggerAdapter[logging.Logger],
                 spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]], after_response: Callable[[], Awaitable[None]],
                 metrics: Metrics | None = None, dialer: HumanDialer | None = None) -> None:
        self.agent = agent
        self.call = call
        self.media = media
        self.context = context
        self.dialect = dialect
        self.session = session
        self.responses = responses
        self.downlink = downlink
        self.interruptions = interruptions
        self.state = state
        self.records = records
        self.log = log
        self._spawn = spawn
        self._after_response = after_response  # what runs once the agent has finished speaking (run_pending)
        self.metrics = metrics
        self.dialer = dialer  # places the human's call of a warm transfer (None: every transfer is blind)
        self.warm: WarmTransfer | None = None  # the warm transfer under way
        self.uses: list[ToolUse] = []  # every tool call the model made, in order (CallOutcome.tools)
        self.pending: tuple[str, dict[str, Any]] | None = None  # a built-in waiting for the agent to finish
        # The transfer under way (target name, URI), set before the REFER: a completed transfer can end the
        # call before transfer() returns, and the outcome still names where the caller went.
        self.transfer_to: tuple[str, str] | None = None
        self.typed: list[tuple[str, float]] = []  # keys not yet passed to the model, with when they came
        self._typed_task: asyncio.Task[None] | None = None
        self.collector: DigitCollector | None = None  # a collect_digits entry under way
        self._key = asyncio.Event()  # a key came for it
        self.keys_sent_at = -1e9  # monotonic time the agent's last keys (send_dtmf) finished going out
        self.calls = 0  # tool calls the model made (MAX_TOOL_CALLS)
        self.in_flight = 0  # webhook tools running now (MAX_TOOLS_IN_FLIGHT)
        self.transfers = 0  # transfer_call attempts accepted (MAX_TRANSFERS)
        self.keys_sent = 0  # keys send_dtmf has put on the line (MAX_KEYS_SENT)
        # A transfer is being carried out (the REFER, or the warm transfer's hold, dial, briefing and join):
        # no tool call may act then, and no tool's result may start a response.
        self.transferring = False

    # ---------------------------------------------------------------- tool calls

    async def run(self, name: str, call_id: str, raw_arguments: object) -> None:
        if not any(t.name == name for t in self.agent.tools):
            name = name[:MAX_NAME_CHARS]  # made up by the model: echoed in an error and the transcript, bounded
        self.calls += 1
        if self.calls > MAX_TOOL_CALLS:
            # No response.create: answering each with a new response is what keeps such a loop going.
            if self.calls == MAX_TOOL_CALLS + 1:
                self.log.warning("tool calls: the limit of %d in one call is reached; the rest are refused",
                                 MAX_TOOL_CALLS)
            self.session.send(ev.function_call_output(call_id, ToolResult(False, {
                "error": f"no more tools in this call (at most {MAX_TOOL_CALLS})"}).to_json()))
            return
        if self.transferring or self.state.closing is not None:
            # The caller is on hold or being put through, or the agent says goodbye: a tool acting now would
            # cut across it, and a response now would be heard by the person being briefed.
            await self._output(call_id, name, {}, ToolResult(False, {
                "error": "the call is being transferred or ended; no tool can be used now"}), respond=False)
            return
        self.state.set("live")
        try:
            args = parse_arguments(raw_arguments)
        except ValueError as exc:
            await self._output(call_id, name, {}, ToolResult(False, {"error": f"bad arguments: {exc}"}))
            return
        self.records.record("tool_call", name=name, arguments=args)
        # A built-in runs only when the profile offers it: a model that names one it was not given (the
        # caller's words reach it) gets "unknown tool" below, and hangs up or transfers nobody.
        offered = any(t.name == name for t in self.agent.tools)
        if name in ("collect_digits", "send_dtmf") and offered:
            # Keys are the bridge's own business: no webhook.
            result = await (self.collect_digits(args) if name == "collect_digits" else self.send_dtmf(args))
            if name == "collect_digits":
                await self.responses.wait_idle(CANCEL_WAIT_S)  # response.create while one is active is refused
            await self._output(call_id, name, args, result)
            return
        if name in ("end_call", "transfer_call") and offered:
            action_args = {**args, "_call_id": call_id}
            if name == "transfer_call":
                error = self.transfer_error(args.get("target"))
                if error is None and self.transfers >= MAX_TRANSFERS:
                    error = (f"{MAX_TRANSFERS} transfers were tried in this call already; no more: offer to "
                             "help otherwise")
                if error is not None:
                    await self._output(call_id, name, args, ToolResult(False, {"error": error}))
                    return
                self.transfers += 1
            # Built-ins act once the agent has finished what it is saying.
            self.pending = (name, action_args)
            if not self.responses.active:
                self._spawn(self._after_response())
            return
        tool = next((t for t in self.agent.tools if t.name == name), None)
        if tool is None:
            result = ToolResult(False, {"error": f"unknown tool {name}"})
        elif self.in_flight >= MAX_TOOLS_IN_FLIGHT:
            result = ToolResult(False, {"error": f"{self.in_flight} tools are running already; wait for their "
                                                 "results before calling another"})
        else:
            self.in_flight += 1
            try:
                result = await self._webhook(tool, args)
            finally:
                self.in_flight -= 1
        await self._output(call_id, name, args, result)

    async def run_pending(self) -> None:
        """The built-in the model asked for, now that the agent has finished speaking."""
        action, self.pending = self.pending, None
        if action is None:
            return
        name, args = action
        if name == "end_call":
            self.uses.append(ToolUse("end_call", True))
            self.state.finish(self.state.closing or "agent-hangup")
        elif name == "transfer_call":
            await self._transfer(args)

    async def _webhook(self, tool: ToolConfig, args: dict[str, Any]) -> ToolResult:
        try:
            return await run_webhook(tool, args, self.call.call_id, self.context)
        except Exception as exc:  # a tool's failure is the model's to explain, never the call's end
            self.log.warning("tool %s failed: %s", tool.name, exc)
            return ToolResult(False, {"error": f"{tool.name} failed"})

    async def _output(self, call_id: str, name: str, args: dict[str, Any], result: ToolResult,
                      respond: bool = True) -> None:
        self.records.record("tool_result", name=name, ok=result.ok, output=result.output)
        self.uses.append(ToolUse(name, result.ok))
        if self.metrics:
            self.metrics.tool_called(name, "ok" if result.ok else "error")
        self.session.send(ev.function_call_output(call_id, result.to_json()))
        if respond and not self.transferring:  # a webhook answering during a transfer: the model reads it later
            self.session.send(ev.response_create())

    # ---------------------------------------------------------------- transfer

    def transfer_error(self, name: object) -> str | None:
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
            await self._output(str(args.get("_call_id", "")), "transfer_call", tool_args,
                               ToolResult(False, {"error": self.transfer_error(name)}))
            return
        self.transferring = True
        try:
            failure = await self._put_through(args, label, uri)
        finally:
            self.transferring = False
        if failure is not None:  # the caller is back with the agent: the model is told, and answers
            await self._output(str(args.get("_call_id", "")), "transfer_call", tool_args, failure)

    async def _put_through(self, args: dict[str, Any], label: str, uri: str) -> ToolResult | None:
        """The transfer itself; the tool's error when the caller is still the agent's afterwards."""
        warm = self.agent.transfer.mode_of(label) == "warm" and self.dialer is not None
        self.state.set("transferring")
        self.records.record("event", event="transfer", target=label, uri=uri, mode="warm" if warm else "blind")
        self.transfer_to = (label, uri)
        if warm:
            return await self._warm_transfer(args, label, uri)
        if await self._blind_transfer(uri):
            self.state.finish("transferred")
            return None
        self.state.set("live")
        return ToolResult(False, {"error": f"the transfer to {label} failed"})

    async def _warm_transfer(self, args: dict[str, Any], label: str, uri: str) -> ToolResult | None:
        assert self.dialer is not None
        self.warm = WarmTransfer(self.agent.transfer, self.call, self.dialer, self.downlink, self.session,
                                 self.responses, self.log)
        try:
            outcome: WarmOutcome = await self.warm.run(uri, label, clean_summary(args.get("summary")))
        finally:
            steps, self.warm = self.warm.steps, None
        self.log.info("warm transfer to %s: %s (%s)", label, outcome.result, " ".join(steps))
        self.records.record("event", event="warm-transfer", target=label, result=outcome.result)
        if outcome.result in ("joined", "joined-blind"):
            self.state.finish("transferred")
            return None
        if outcome.result == "caller-gone":
            return None  # the call's end is the bridge's to see (remote-bye)
        self.transfer_to = None
        self.state.set("live")
        error = (f"{label} could not take the call: {outcome.detail}. The caller is back on the line with you "
                 "(they heard hold audio meanwhile): tell them, and offer to help otherwise."
                 if outcome.result == "unavailable" else f"the transfer to {label} failed: {outcome.detail}")
        return ToolResult(False, {"error": error})

    async def fail_over_transfer(self, target: str) -> bool:
        """The configured fail-over transfer (no model to ask): whether the far end took it."""
        self.transfer_to = ("on_failure", target)
        return await self._blind_transfer(target)

    async def _blind_transfer(self, uri: str) -> bool:
        """The REFER and its outcome (``call.transfer``), given up once the caller's audio shows that the far
        end took them nowhere (BLIND_STILL_HERE_S)."""
        transfer = asyncio.ensure_future(self.call.transfer(uri))
        try:
            done, _ = await asyncio.wait({transfer}, timeout=BLIND_STILL_HERE_S)
            while not done:
                count = self.media.packets_received
                done, _ = await asyncio.wait({transfer}, timeout=MEDIA_CHECK_S)
                if not done and self.media.packets_received != count:
                    self.log.info("transfer to %s: no outcome after %.0f s, and the caller's audio still comes: "
                                  "given up", uri[:80], BLIND_STILL_HERE_S)
                    return False
            return transfer.result()
        finally:
            transfer.cancel()  # done already, or given up (its REFER stays undecided: no second one for now)

    # ---------------------------------------------------------------- keys

    def on_dtmf(self, digit: str, duration_ms: int) -> None:
        """A key from the caller (RFC 4733, SIP INFO, or tones in the audio). During a collect_digits entry it
        goes to the entry and cuts the agent off; otherwise it is passed to the model as text with the keys
        typed after it."""
        now = time.monotonic()
        self.state.active(now)
        self.records.record("dtmf", digit=digit, duration_ms=duration_ms)
        if self.warm is not None or self.transferring:
            # Being transferred (on hold for a warm transfer, or waiting for the PBX to take a blind one): a key
            # passed on would start a response, heard over the hold or by the human during the briefing.
            # Dropped.
            return
        collector = self.collector
        if collector is not None and collector.result is None:
            self.interruptions.key_pressed(now)
            collector.key(digit, now)
            self._key.set()
            return
        self.typed.append((digit, now))
        if self._typed_task is not None:
            self._typed_task.cancel()
        self._typed_task = self._spawn(self._pass_keys(0.0 if digit == "#" else DTMF_FLUSH_S))

    async def _pass_keys(self, delay: float) -> None:
        await asyncio.sleep(delay)
        keys, self.typed = self.typed, []
        if not keys or self.transferring:  # typed just before a transfer began: as keys during it (on_dtmf)
            return
        text = f"caller pressed {' '.join(key for key, _ in keys)}"
        self.records.record("dtmf_sent", text=text)
        self.session.send(ev.user_text(text, self.dialect))
        if not self.responses.active:
            self.session.send(ev.response_create())

    async def collect_digits(self, args: dict[str, Any]) -> ToolResult:
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
        if self.collector is not None:
            return ToolResult(False, {"error": "a keypad entry is already under way"})
        now = time.monotonic()
        collector = self.collector = DigitCollector(spec, now)
        if self._typed_task is not None:
            self._typed_task.cancel()
        typed, self.typed = self.typed, []
        if typed:
            self.interruptions.key_pressed(now)
        collector.keys(typed)
        try:
            while collector.result is None:
                now = time.monotonic()
                if not collector.prompt_over and self.media.buffered_ms <= 0 and not self.responses.active:
                    collector.prompt_finished(now)  # the prompt played out: the first-digit timer starts
                if collector.poll(now) is not None:
                    break
                self._key.clear()
                wait = max(0.0, collector.deadline - now)
                if collector.prompt_over:
                    await first_of(self._key, timeout=wait)
                elif self.media.buffered_ms > 0:  # the prompt plays on: until it has all been sent
                    self.downlink.drained.clear()
                    await first_of(self._key, self.downlink.drained, timeout=wait)
                else:  # all sent; the model may still be sending more of it
                    await first_of(self._key, self.responses.idle, timeout=wait)
        finally:
            self.collector = None
        collected: Collected | None = collector.result
        assert collected is not None
        self.state.active()
        self.log.info("keypad entry of %d digits ended by %s", len(collected.digits), collected.ended_by)
        self.records.record("dtmf_collected", digits=collected.digits, ended_by=collected.ended_by)
        return ToolResult(True, collected.output())

    async def send_dtmf(self, args: dict[str, Any]) -> ToolResult:
        """The send_dtmf tool: the keys go out on the call's RTP in place of the audio of their ticks (which
        waits, nothing lost), as RFC 4733 events, or as tones in the audio on a line that negotiated no
        telephone-event (made by the endpoint, past the model's voice path, so they reach the wire as clean as
        a phone's); the result comes once the last one has been sent. No SIP INFO: a PBX that takes neither
        from a phone rarely routes INFO on to an IVR."""
        try:
            digits = send_digits(args, self.agent.dtmf.send_keys)
        except ToolArgumentError as exc:
            return ToolResult(False, {"error": str(exc)})
        method = self.media.dtmf_method
        if method is None:
            return ToolResult(False, {"error": "this line cannot carry keypad tones; say the choice instead"})
        if self.media.dtmf_sending:  # one call at a time: parallel calls would queue keys without bound
            return ToolResult(False, {"error": "keys are still being sent; wait for that result first"})
        if self.keys_sent + len(digits) > MAX_KEYS_SENT:
            return ToolResult(False, {"error": f"at most {MAX_KEYS_SENT} keys can be sent in one call; "
                                               f"{MAX_KEYS_SENT - self.keys_sent} are left"})
        tone_ms = self.agent.dtmf.tone_ms
        try:
            for digit in digits:
                self.media.send_dtmf(digit, tone_ms)
        except RtpError as exc:
            return ToolResult(False, {"error": str(exc)})
        self.keys_sent += len(digits)
        self.records.record("dtmf_out", digits=digits, method=method)
        # Each key: its ticks, then three end packets and a gap (or a pause of tones); a hold stops the
        # clock's sending, so bound it.
        limit = len(digits) * (tone_ms + 120) / 1000 + 5.0
        sent = await self.downlink.until_sent(lambda: not self.media.dtmf_sending, limit)
        self.keys_sent_at = time.monotonic()
        if not sent:
            return ToolResult(False, {"error": "the keys could not all be sent in time (is the call on hold?)"})
        return ToolResult(True, {"sent": digits})


def _collect_defaults(dtmf: DtmfConfig) -> CollectSpec:
    return CollectSpec(dtmf.max_digits, dtmf.terminator, dtmf.first_digit_timeout_s, dtmf.inter_digit_timeout_s,
                       dtmf.max_wait_s)


__all__ = ["DTMF_FLUSH_S", "MAX_KEYS_SENT", "MAX_TOOLS_IN_FLIGHT", "MAX_TOOL_CALLS", "MAX_TRANSFERS",
           "ToolRunner"]
