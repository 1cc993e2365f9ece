"""The call's Realtime session: connecting (with retries), the one writer and the one reader of the
WebSocket, reconnection with the conversation replayed, and renewal before the provider's session limit.

What the events mean is the bridge's business: the reader hands each one to ``handle``. What a lost
connection means for the call (the agent's audio cut, or a fail-over when no session can be had) is
told through the hooks ``read`` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sipagent.bridge.conversation import Conversation
from sipagent.bridge.legs import CallLeg, RealtimeLink
from sipagent.bridge.records import CallRecords
from sipagent.bridge.state import CallState
from sipagent.errors import RealtimeError
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev


class Responses:
    """Whether the model has a response under way (``Conversation.response_active``), with events to wait
    on for its end instead of looking again and again."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self._idle = asyncio.Event()  # no response is active
        self._idle.set()
        self._done = asyncio.Event()  # a response.done came since ``expect_done``

    @property
    def active(self) -> bool:
        return self.conversation.response_active

    @property
    def idle(self) -> asyncio.Event:
        """Set while no response is active (for waits that also wait on other things)."""
        return self._idle

    def created(self) -> None:
        self.conversation.response_active = True
        self._idle.clear()

    def done(self) -> None:
        """response.done, or a response that will never end (its session is gone)."""
        self.conversation.response_active = False
        self._idle.set()
        self._done.set()

    def expect_done(self) -> None:
        """Before a response.create or response.cancel whose end ``wait_done`` is to wait for."""
        self._done.clear()

    async def wait_done(self, timeout: float | None = None) -> None:
        """Until a response.done after ``expect_done`` (at most ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)

    async def wait_idle(self, timeout: float) -> None:
        """Until no response is active (a cancel takes effect, a response ends), at most ``timeout`` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)


class RealtimeSession:
    def __init__(self, connect: Callable[[], Awaitable[RealtimeLink]], session: ev.SessionSettings,
                 dialect: ev.Dialect, reconnect_delays: tuple[float, ...], max_session_s: float, call: CallLeg,
                 state: CallState, conversation: Conversation, records: CallRecords,
                 log: logging.LoggerAdapter[logging.Logger], metrics: Metrics | None = None) -> None:
        self._connect = connect
        self.session = session
        self.dialect = dialect
        self.reconnect_delays = reconnect_delays
        self.max_session_s = max_session_s
        self.call = call
        self.state = state
        self.conversation = conversation
        self.records = records
        self.log = log
        self.metrics = metrics
        self.link: RealtimeLink | None = None  # None until connected, and while reconnecting
        self.outbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue()
        self.reconnects = 0
        # The reader's state for events taken as they arrive (``_take``): its handler, whether it is waiting
        # for the next event (and nothing else), and what an event taken that way left to wait for.
        self._handle: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None
        self._idle = False
        self._pending: asyncio.Future[None] | None = None

    async def open(self, first: bool) -> bool:
        """Connects (with retries) and configures a session; on a reconnect, replays the conversation."""
        delays = (0.0, *self.reconnect_delays)
        for attempt, delay in enumerate(delays):
            if self.call.ended.is_set():
                return False
            await asyncio.sleep(delay)
            try:
                link = await self._connect()
                await link.send(ev.session_update(self.session, self.dialect))
            except (TimeoutError, RealtimeError, OSError) as exc:
                self.log.warning("Realtime connect attempt %d failed: %s", attempt + 1, exc)
                continue
            self.link = link
            if not first:
                history = self.conversation.history_text()
                if history:
                    await link.send(ev.message_item(
                        "system",
                        "The call was interrupted by a technical problem and resumed. The conversation so "
                        f"far:\n{history}\nContinue from there; do not greet the caller again.",
                        self.dialect,
                    ))
            return True
        return False

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event for the writer: events leave in the order they were queued."""
        self.outbox.put_nowait(event)

    async def pump(self) -> None:
        """The one writer to the WebSocket."""
        while True:
            event = await self.outbox.get()
            link = self.link
            if link is None:
                continue  # reconnecting: audio and events from the dead session are stale
            try:
                await link.send(event)
            except (RealtimeError, OSError) as exc:
                self.log.debug("send failed (%s); the reader reconnects", exc)

    async def read(self, handle: Callable[[dict[str, Any]], Awaitable[None] | None], lost: Callable[[], None],
                   fail_over: Callable[[str], Awaitable[None]]) -> None:
        """The one reader: each event to ``handle``, and what it returns (if anything) awaited before the
        next event; a lost connection is told to ``lost`` (before the reconnect), and when no new session
        can be had, ``fail_over`` is awaited with why. ``handle`` is a plain function, not a coroutine: most
        events (the audio deltas, about 25 a second per call) need no wait, and a coroutine per event
        cost more than the delta's own work."""
        self._handle = handle
        taking: RealtimeLink | None = None
        try:
            while not self.state.done.is_set():
                link = self.link
                assert link is not None
                if link is not taking:
                    taking = link
                    link.deliver_to(self._take)
                self._idle = True
                try:
                    event = await link.recv()
                except (RealtimeError, OSError) as exc:
                    if self.state.done.is_set() or self.call.ended.is_set():
                        return
                    await self._recover(str(exc), lost, fail_over)
                    continue
                finally:
                    self._idle = False
                pending, self._pending = self._pending, None
                if pending is not None:
                    await asyncio.wait([pending])  # the event taken before this one is handled first
                try:
                    result = handle(event)
                    if result is not None:
                        await result
                except Exception:
                    # One bad event must not take the call down.
                    self.log.exception("error handling %s", event.get("type"))
        finally:
            self._idle = False
            if taking is not None:
                taking.deliver_to(None)
            if self._pending is not None:
                self._pending.cancel()  # as the reader's own wait would be, had it run there

    def _take(self, event: dict[str, Any]) -> bool:
        """An event as it arrives (``RealtimeLink.deliver_to``), handled at once if the reader is waiting
        for the next one and nothing an earlier event started is still running; False leaves it to the
        reader, which gets it (and every later one) in order. What the handler returns to wait for runs on
        as a task, and the reader waits for it before it handles the next event, as it would have."""
        handle = self._handle
        pending = self._pending
        if (not self._idle or handle is None or self.state.done.is_set()
                or (pending is not None and not pending.done())):
            return False
        self._pending = None
        try:
            result = handle(event)
        except Exception:
            self.log.exception("error handling %s", event.get("type"))
            return True
        if result is not None:
            self._pending = asyncio.ensure_future(result)
            self._pending.add_done_callback(functools.partial(self._pending_done, event.get("type")))
        return True

    def _pending_done(self, kind: object, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self.log.error("error handling %s", kind, exc_info=exc)

    async def _recover(self, why: str, lost: Callable[[], None], fail_over: Callable[[str], Awaitable[None]]) -> None:
        self.log.warning("Realtime connection lost (%s); reconnecting", why)
        self.reconnects += 1
        if self.metrics:
            self.metrics.realtime_reconnected()
        self.records.record("event", event="reconnect", reason=why)
        lost()
        old, self.link = self.link, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        if not await self.open(first=False):
            await fail_over(f"the Realtime connection was lost and could not be restored ({why})")

    async def renew_before_limit(self, quiet: Callable[[], Awaitable[None]]) -> None:
        """Providers end sessions at a fixed length; move to a fresh one before that, once ``quiet`` returns
        (the agent silent): closing the link makes the reader reconnect with the history."""
        while True:
            await asyncio.sleep(self.max_session_s)
            await quiet()
            self.records.record("event", event="session-renewal")
            old = self.link
            if old is not None:
                await old.close()

    async def close(self) -> None:
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.close()


__all__ = ["RealtimeSession", "Responses"]
