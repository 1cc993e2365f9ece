"""Calls we place: the answered call's front, and the outcomes of one that was not answered.

``UserAgent.dial`` returns an :class:`OutgoingCall` (the same surface as an ``IncomingCall`` where it applies)
or raises :class:`DialError` with one of ``DIAL_OUTCOMES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sipagent.errors import SipagentError
from sipagent.sdp import NegotiatedMedia
from sipagent.sip.call import CallAction, CallCore, Progress, Referred
from sipagent.sip.front import CallDriver, CallFront
from sipagent.sip.transport import Peer

logger = logging.getLogger(__name__)

DIAL_OUTCOMES = ("answered", "busy", "no-answer", "rejected", "failed", "cancelled")


class DialError(SipagentError):
    """A call we placed was not answered. ``outcome`` is one of ``DIAL_OUTCOMES`` but "answered"; ``status``
    the final SIP status (486, 603, 480, 404 ...), 0 when there was none (timeout, transport error, ring
    timeout); ``reason`` plain words for a log or CLI line."""

    def __init__(self, outcome: str, status: int = 0, reason: str = "") -> None:
        self.outcome = outcome
        self.status = status
        self.reason = reason or outcome
        super().__init__(f"call {outcome}" + (f" ({status})" if status else "") + (f": {reason}" if reason else ""))


class OutgoingCall(CallFront):
    """A call we placed and the far end answered (``UserAgent.dial``): the same surface as ``IncomingCall``
    where it applies. ``from_uri`` is our account's AoR, ``to_uri`` the target."""

    def __init__(self, driver: CallDriver, core: CallCore, peer: Peer, local_host: str, account: str = "",
                 referred_by: str | None = None,
                 on_progress: Callable[[int, NegotiatedMedia | None], None] | None = None) -> None:
        super().__init__(driver, core, peer, local_host, account, referred_by)
        invite = core.invite
        self.from_uri = str(invite.from_addr.uri)
        self.to_uri = str(invite.to_addr.uri)
        self.on_progress = on_progress
        # Told of a REFER from the far end (a test caller being transferred): returns the status to answer it
        # with (202 accepts; then report with ``notify_transfer``). None: REFERs are refused.
        self.on_refer: Callable[[str, str | None], int] | None = None

    def __repr__(self) -> str:
        return f"OutgoingCall({self.call_id!r}, {self.to_uri!r}, state={self.state})"

    def _event(self, event: CallAction) -> None:
        if isinstance(event, Progress):
            self._callback(self.on_progress, event.status, event.media)
        elif isinstance(event, Referred):
            status = 603
            if self.on_refer is not None:
                try:
                    status = self.on_refer(event.refer_to, event.referred_by)
                except Exception:
                    logger.exception("call %s: on_refer failed", self.call_id)
                    status = 500
            self._drive(self.core.answer_refer(status, self._driver.now()))

    async def established(self) -> NegotiatedMedia:
        """Wait for the answer: the negotiated media, or DialError with the outcome. Cancelling the wait
        CANCELs the call and returns (CancelledError) once the CANCEL is handled."""
        try:
            await asyncio.shield(self._settled.wait())
        except asyncio.CancelledError:
            self._drive(self.core.hangup(self._driver.now()))
            if not self.core.cancel_deferred:  # no provisional response yet: the core CANCELs when one comes
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ended.wait(), 40.0)
            raise
        if self.ended.is_set() or self.media is None:
            reason = self.end_reason
            outcome = reason if reason in DIAL_OUTCOMES else "failed"
            raise DialError(outcome, self.core.end_status, _dial_words(outcome, self.core.end_detail))
        return self.media

    def notify_transfer(self, status: int) -> None:
        """Report the transfer the far end asked of us (``on_refer``): NOTIFY with a sipfrag of ``status``."""
        self._drive(self.core.notify_transfer(status, self._driver.now()))


def _dial_words(outcome: str, detail: str) -> str:
    words = {
        "busy": "the callee is busy", "no-answer": "nobody answered", "rejected": "the call was refused",
        "failed": "the call could not be placed", "cancelled": "the call was cancelled",
    }.get(outcome, outcome)
    # The detail is the far end's reason phrase or our own words: printable text only, bounded.
    detail = "".join(c for c in detail if c.isprintable())[:80]
    return f"{words} ({detail})" if detail else words


__all__ = ["DIAL_OUTCOMES", "DialError", "OutgoingCall"]
