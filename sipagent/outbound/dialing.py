"""The dialer as the outbound side sees it, and the two steps of ``place`` that do not touch media.

``Dialer`` is what ``sipagent.sip.ua.UserAgent.dial`` offers (typed here as a Protocol, so this package
does not depend on the UA's internals and tests use a fake with the same shape). ``dial`` runs it for one
request and reports progress (ringing, answered, the SIP Call-ID); a ``DialError`` (busy, no-answer,
rejected, failed, cancelled) goes up unchanged, and OutboundCalls turns its ``outcome`` into the call's.
``hold_until_end`` waits for an answered call to end, and hangs it up when the wait is cancelled (DELETE,
Ctrl-C, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from sipagent.outbound.calls import CallProgress


class OutgoingCallLike(Protocol):
    """The parts of sip's ``OutgoingCall`` the outbound side uses (media, DTMF and transfer are the agent's)."""

    call_id: str
    ended: asyncio.Event
    end_reason: str

    async def hangup(self) -> None: ...


class Dialer(Protocol):
    async def dial(self, target: str, *, rtp_port: int, codecs: list[str] | None = None,
                   account: str | None = None, ring_timeout: float = 30.0,
                   headers: list[tuple[str, str]] | None = None,
                   on_progress: Callable[[int, Any], None] | None = None) -> OutgoingCallLike: ...


async def dial(ua: Dialer, progress: CallProgress, *, rtp_port: int, codecs: list[str] | None = None,
               account: str | None = None, ring_timeout: float = 30.0,
               on_progress: Callable[[int, Any], None] | None = None) -> OutgoingCallLike:
    """Dial ``progress.request.to``; the call once answered (progress says ringing, then answered).
    ``on_progress`` also gets every provisional response (early media: the agent may play it or not).
    Cancelling this coroutine makes the UA send CANCEL."""

    def progressed(status: int, media: Any) -> None:
        if 180 <= status < 200:
            progress.ringing()
        if on_progress is not None:
            on_progress(status, media)

    call = await ua.dial(progress.request.to, rtp_port=rtp_port, codecs=codecs, account=account,
                         ring_timeout=ring_timeout, on_progress=progressed)
    progress.sip_call_id(call.call_id)
    progress.answered()
    return call


async def hold_until_end(call: OutgoingCallLike) -> str:
    """Wait until ``call`` ends; its end reason. Cancelled, it hangs the call up first (BYE), then lets
    the cancellation through."""
    try:
        await call.ended.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(call.hangup())
        raise
    return call.end_reason
