"""Warm transfer: the caller waits on hold while the agent calls the human, briefs them, and joins the two.

The sequence (``WarmTransfer.run``), each step ended early when the caller hangs up:

1. the caller hears the hold message (spoken by the model), then hold audio;
2. the human's phone is dialled as a second call (``HumanDialer``: the agent process owns SIP and RTP);
3. the same Realtime session speaks the briefing, its audio routed to the human's call for that response;
4. the join: REFER with Replaces (RFC 3891) to the caller when it said ``Supported: replaces`` (in its
   INVITE, or in its 2xx when the agent placed the call);
   otherwise, or when that is refused, the human's call is hung up and the caller blind-transferred to the
   same target (a phone that cannot take Replaces may crash on one: never sent unasked).

No answer, busy or declined: the human's call is over, the caller is taken off hold, and the model is told
(it says so). Whatever happens, the human's call never outlives the transfer: ``run`` closes it on every
path, cancellation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sipagent.bridge.downlink import Downlink
from sipagent.bridge.hold_audio import hold_audio
from sipagent.bridge.interruptions import CANCEL_WAIT_S
from sipagent.bridge.session import RealtimeSession, Responses
from sipagent.bridge.settings import TransferConfig
from sipagent.realtime import events as ev

MAX_SUMMARY_CHARS = 300
HOLD_AHEAD_MS = 400  # hold audio queued ahead of the clock: topped up as it drains, never a gap
JOIN_TIMEOUT_S = 20.0  # a REFER's 202 and final NOTIFY
# How long the outcome of a REFER under way may take to reach the sequence once the caller's call has ended: the
# call decides it as it ends (sipagent.sip.call TransferProgress), a few loop turns before the sequence hears.
REFER_SETTLE_S = 1.0
HOLD_MESSAGE_LIMIT_S = 15.0


class HumanUnavailable(Exception):
    """The human's phone did not answer (``outcome``: busy, no-answer, rejected, failed) in words for the model."""

    def __init__(self, outcome: str, reason: str = "") -> None:
        self.outcome = outcome
        self.reason = reason or outcome
        super().__init__(self.reason)


class HumanCall(Protocol):
    """The SIP side of the human's call (sipagent.sip OutgoingCall)."""

    call_id: str
    ended: asyncio.Event


class HumanLeg(Protocol):
    """The human's answered call with its own media chain (made by the agent process)."""

    @property
    def call(self) -> HumanCall: ...

    def play_pcm24(self, pcm24k: bytes) -> None:
        """Queue 24 kHz PCM16 for the human (encoded for their call's codec)."""

    async def wait_playout(self, timeout: float) -> None:
        """Until the human has heard what is queued, their call ends, or ``timeout`` seconds."""

    async def close(self) -> None:
        """Hang up (if still up) and free the media chain; idempotent, never raises."""


HumanDialer = Callable[[str, float], Awaitable[HumanLeg]]
"""Dials a target URI with a ring timeout; returns the answered leg or raises HumanUnavailable."""


class CallerCall(Protocol):
    """What a warm transfer needs of the caller's call."""

    ended: asyncio.Event

    def peer_supports(self, option: str) -> bool: ...

    async def transfer(self, target: str, timeout: float = ...) -> bool: ...

    async def transfer_replacing(self, other: Any, timeout: float = 30) -> bool: ...


Result = Literal["joined", "joined-blind", "unavailable", "failed", "caller-gone"]


@dataclass(frozen=True)
class WarmOutcome:
    result: Result
    detail: str = ""  # for "unavailable" / "failed": why, in words the model can pass on


def clean_summary(value: object) -> str:
    """The model's summary, made safe to speak: text only, one line, no control or format characters,
    bounded. It came from the caller's words and is spoken to the human, never put into SIP."""
    if not isinstance(value, str):
        return ""
    text = "".join(c if unicodedata.category(c)[0] not in "CZ" or c == " " else " " for c in value)
    text = re.sub(r"\s+", " ", text.replace('"', "'")).strip()
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[:MAX_SUMMARY_CHARS].rsplit(" ", 1)[0] + "..."
    return text


def briefing_text(team: str, summary: str) -> str:
    """What the human hears before the caller is put through."""
    who = f"a caller for {team}" if team and team != "default" else "a caller"
    return f"Hello, this is the virtual assistant with {who}. {summary + ' ' if summary else ''}" \
           "I am putting them through now."


class WarmTransfer:
    """One warm transfer of the caller to ``uri`` (see the module's docstring)."""

    def __init__(self, settings: TransferConfig, caller: CallerCall, dialer: HumanDialer, downlink: Downlink,
                 session: RealtimeSession, responses: Responses, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.settings = settings
        self.caller = caller
        self.dialer = dialer
        self.downlink = downlink
        self.session = session
        self.responses = responses
        self.log = log
        self.human: HumanLeg | None = None
        self.steps: list[str] = []  # what happened, in order (logs and tests)
        self._hold_pcm = b""
        self._hold_at = 0  # where the hold audio goes on from
        self._referring = False  # a REFER of the join has been sent: the caller's end may be its success

    async def run(self, uri: str, team: str, summary: str) -> WarmOutcome:
        """The whole transfer; never leaves the human's call up. Cancelling it (the bridge ending) cleans up."""
        sequence = asyncio.ensure_future(self._sequence(uri, team, summary))
        ended = asyncio.ensure_future(self.caller.ended.wait())
        try:
            await asyncio.wait({sequence, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not sequence.done() and self._referring:
                # The caller's call ended during the join: perhaps by the very message that put them through (a
                # PBX's BYE right behind the 202 to our REFER, our own BYE after its NOTIFY 200). The call set
                # ``ended`` as it read it; the REFER's outcome, decided then too, reaches the sequence a few loop
                # turns later. Which of the two wakes us first says nothing of what happened.
                await asyncio.wait({sequence}, timeout=REFER_SETTLE_S)
            if sequence.done():
                try:
                    outcome = sequence.result()
                except Exception:  # a fault of ours (or an unexpected answer): the caller must not stay on hold
                    self.log.exception("warm transfer failed")
                    return WarmOutcome("failed", "the colleague could not be called")
                if outcome.result in ("joined", "joined-blind") or not self.caller.ended.is_set():
                    return outcome
                # Not put through, and the caller is gone (a REFER that failed as the caller hung up): nobody is
                # left to be told the transfer failed.
            self.steps.append("caller-gone")
            self.log.info("warm transfer: the caller hung up")
            return WarmOutcome("caller-gone")
        finally:
            ended.cancel()
            if not sequence.done():
                sequence.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sequence
            self._stop_hold()
            await self._close_human()

    async def _sequence(self, uri: str, team: str, summary: str) -> WarmOutcome:
        await self._say_to_caller(self.settings.hold_message)
        self._hold_pcm, self._hold_at = hold_audio(self.settings.hold_audio), 0
        self.steps.append("hold")
        self._top_up_hold()  # at once: no gap between the message and the hold audio
        hold = asyncio.ensure_future(self._hold_loop())
        try:
            self.steps.append("dial")
            try:
                self.human = await self.dialer(uri, self.settings.ring_timeout_s)
            except HumanUnavailable as exc:
                self.steps.append(f"unavailable:{exc.outcome}")
                self.log.info("warm transfer: %s did not take the call (%s)", team, exc.reason)
                return WarmOutcome("unavailable", exc.reason)
            self.steps.append("answered")
            await self._brief(self.human, briefing_text(team, summary))
            if self.human.call.ended.is_set():
                self.steps.append("human-gone")
                return WarmOutcome("unavailable", "the colleague hung up before the caller was put through")
        finally:
            hold.cancel()
            self._stop_hold()
        return await self._join(uri, self.human)

    async def _join(self, uri: str, human: HumanLeg) -> WarmOutcome:
        if self.caller.peer_supports("replaces"):
            self.log.info("warm transfer: joining the caller with %s by REFER with Replaces", human.call.call_id)
            self.steps.append("refer-replaces")
            self._referring = True
            try:
                joined = await self.caller.transfer_replacing(human.call, JOIN_TIMEOUT_S)
            except RuntimeError as exc:  # one of the calls is no longer up
                self.log.info("warm transfer: no Replaces (%s)", exc)
                joined = False
            if joined:
                self.steps.append("joined")
                return WarmOutcome("joined")
            self.log.info("warm transfer: REFER with Replaces refused; blind transfer instead")
        else:
            self.log.info("warm transfer: the caller did not advertise Replaces: blind transfer to the human")
        if human.call.ended.is_set():
            # The person hung up while the caller was being put through: a blind transfer would ring them again
            # for a caller they have just left. The caller comes back to the agent.
            self.steps.append("human-gone")
            return WarmOutcome("unavailable", "the colleague hung up before the caller was put through")
        # The human's phone must be free for the caller's call: hang up first, then the blind REFER.
        await self._close_human()
        self.steps.append("refer-blind")
        if self.caller.ended.is_set():
            return WarmOutcome("caller-gone")
        self._referring = True
        if await self.caller.transfer(uri, JOIN_TIMEOUT_S):
            self.steps.append("joined-blind")
            return WarmOutcome("joined-blind")
        self.steps.append("failed")
        return WarmOutcome("failed", "the colleague answered, but the call could not be put through")

    # ---------------------------------------------------------------- what the caller hears

    async def _say_to_caller(self, message: str) -> None:
        if not message or self.session.link is None:
            return
        self.steps.append("hold-message")
        self.responses.expect_done()
        self.session.send(ev.say_exactly(message))
        await self.responses.wait_done(HOLD_MESSAGE_LIMIT_S)
        await self.downlink.wait_playout()

    def _top_up_hold(self) -> None:
        """Queue the next piece of hold audio when less than half of HOLD_AHEAD_MS is left to play."""
        if self.downlink.media.buffered_ms < HOLD_AHEAD_MS // 2:
            chunk = 2 * 24 * HOLD_AHEAD_MS  # bytes of 24 kHz PCM16
            piece = self._hold_pcm[self._hold_at:self._hold_at + chunk]
            self._hold_at = 0 if self._hold_at + len(piece) >= len(self._hold_pcm) else self._hold_at + len(piece)
            self.downlink.play_pcm24(piece)

    async def _hold_loop(self) -> None:
        """Hold audio on the caller's line, topped up as the queue drains, until cancelled."""
        while True:
            self.downlink.drained.clear()
            await self.downlink.drained.wait()
            self._top_up_hold()

    def _stop_hold(self) -> None:
        self.downlink.flush()

    # ---------------------------------------------------------------- what the human hears

    async def _brief(self, human: HumanLeg, text: str) -> None:
        """The briefing, spoken by the call's Realtime session with its audio routed to the human."""
        if self.session.link is None:
            return
        self.steps.append("briefing")
        limit = self.settings.briefing_limit_s
        self.downlink.divert = human.play_pcm24
        try:
            self.responses.expect_done()
            self.session.send(ev.say_exactly(text))
            ended = asyncio.ensure_future(human.call.ended.wait())
            done = asyncio.ensure_future(self.responses.wait_done(limit))
            try:
                await asyncio.wait({ended, done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                done.cancel()
            if not self.responses.finished and not self.responses.active:
                # Asked for and not begun yet (the human hung up at once): it begins any moment, and must be cut
                # as it does, or it would play to the caller.
                await self.responses.wait_started(CANCEL_WAIT_S)
            if self.responses.active:
                # The human hung up mid-briefing, or it ran past its limit. The rest of it is for nobody: once
                # the divert is gone it would play to the caller ("this is the virtual assistant with a
                # caller..."), and the model could start no response of its own to tell them (one is under
                # way). Cancelled, its late audio dropped, before the caller's line is theirs again.
                self.steps.append("briefing-cut")
                self.responses.cut()
                self.session.send(ev.response_cancel(self.responses.current_id or None))
                await self.responses.wait_idle(CANCEL_WAIT_S)
        finally:
            self.downlink.divert = None
        await human.wait_playout(limit)

    async def _close_human(self) -> None:
        human, self.human = self.human, None
        if human is not None:
            with contextlib.suppress(Exception):
                await human.close()
            self.steps.append("human-closed")



__all__ = ["HumanDialer", "HumanLeg", "HumanUnavailable", "WarmOutcome", "WarmTransfer", "briefing_text",
           "clean_summary"]
