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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sipagent.bridge.conversation import Conversation
from sipagent.bridge.legs import CallLeg, RealtimeLink
from sipagent.bridge.records import CallRecords
from sipagent.bridge.response_retry import ResponseRetries
from sipagent.bridge.state import CallState
from sipagent.errors import RealtimeError
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev

# session.created comes right after the handshake: a server that has sent no event at all this long after it
# accepted the WebSocket is hung (the WebSocket layer may still answer pings).
SESSION_START_TIMEOUT_S = 5.0
# Close codes of a server that ended the session on purpose (its duration limit): a new session carries the
# call on, and that is not counted as a lost connection. 1001 (going away: a server shutting down) and the
# rest (1008 policy, 1011 internal error, 4xxx) are faults: reconnected all the same, and counted.
SESSION_ENDED_CODES = frozenset({1000})
RENEW_ERRORS = frozenset({"session_expired"})  # "Your session hit the maximum duration of 60 minutes."
# A barge-in races the server's own cancellation; losing that race is expected, not a fault.
BENIGN_ERRORS = frozenset({"response_cancel_not_active"})
MAX_ERROR_CODES = 32
RENEW_RETRY_S = 5.0
RENEW_DEFERRALS = 3  # renewals dropped because the call spoke while the new session opened, before one goes anyway
RESUMED = ("The call was interrupted by a technical problem and resumed. The conversation so far:\n{history}\n"
           "Continue from there; do not greet the caller again.")
RENEWED = ("This call continues from an earlier session. The conversation so far:\n{history}\n"
           "Continue from there; do not greet the caller again.")


class Responses:
    """Whether the model has a response under way (``Conversation.response_active``), with events to wait
    on for its end instead of looking again and again; and which response that is, so that what is still
    in flight of a response the caller cut off is not played (``cut``)."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self._idle = asyncio.Event()  # no response is active
        self._idle.set()
        self._done = asyncio.Event()  # a response.done came since ``expect_done``
        self._busy = asyncio.Event()  # a response is active (the opposite of ``_idle``, to wait on)
        self.current_id = ""  # the id of the response under way ("" when the server gave none)
        self.cut_id = ""  # the last response cut off: its deltas still in flight are dropped
        self._on_done: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        return self.conversation.response_active

    @property
    def idle(self) -> asyncio.Event:
        """Set while no response is active (for waits that also wait on other things)."""
        return self._idle

    def created(self, event: Mapping[str, Any] | None = None) -> None:
        """response.created (``event``, for the response's id)."""
        response = event.get("response") if event is not None else None
        rid = response.get("id") if isinstance(response, dict) else None
        self.current_id = rid if isinstance(rid, str) else ""
        self.conversation.response_active = True
        self._idle.clear()
        self._busy.set()

    def cut(self) -> None:
        """The caller cut the response under way off: the rest of its audio, still coming until the
        server has taken the cancel, is not for the caller (even of an item that has not begun yet)."""
        if self.active and self.current_id:
            self.cut_id = self.current_id

    def on_done(self, callback: Callable[[], None]) -> None:
        """``callback`` is called at each response's end, before anyone waiting for it is woken."""
        self._on_done.append(callback)

    def done(self) -> None:
        """response.done, or a response that will never end (its session is gone)."""
        self.conversation.response_active = False
        for callback in self._on_done:
            callback()
        self._busy.clear()
        self._idle.set()
        self._done.set()

    def expect_done(self) -> None:
        """Before a response.create or response.cancel whose end ``wait_done`` is to wait for."""
        self._done.clear()

    @property
    def finished(self) -> bool:
        """A response.done came since ``expect_done`` (else the response asked for may not even have begun)."""
        return self._done.is_set()

    async def wait_started(self, timeout: float) -> None:
        """Until a response is active (response.created), at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._busy.wait(), timeout)

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
        self.reconnects = 0  # connections lost (a fault: counted in realtime_reconnects)
        self.renewals = 0  # sessions replaced at the provider's limit or after the server ended one (no fault)
        self.expired = False  # the server said the session is over (session_expired): a new one is on its way
        # The reader's state for events taken as they arrive (``_take``): its handler, whether it is waiting
        # for the next event (and nothing else), and what an event taken that way left to wait for.
        self._handle: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None
        self._lost: Callable[[], None] | None = None
        self._idle = False
        self._pending: asyncio.Future[None] | None = None
        # Until the current session's first event: whether one came, the events to send again on the next
        # session if none ever comes (the greeting: ``send_first``), and the watch that gives up on it.
        self._alive = False
        self._unanswered: list[dict[str, Any]] = []
        self._start_watch: asyncio.TimerHandle | None = None
        self._dead: str | None = None  # why the reader's link was given up on, when we closed it
        self._giving_up: asyncio.Future[None] | None = None
        self._renew_at = 0.0  # loop time when the current session is to be renewed
        self._replacing: asyncio.Task[bool | None] | None = None  # a new session being opened beside the old one
        self._error_codes: set[str] = set()  # error codes logged at WARNING once already
        # Which response answers which response.create of ours (each leaves tagged), for a failed one's retry.
        self.retries = ResponseRetries()

    async def open(self, first: bool) -> bool:
        """Connects (with retries) and configures a session; on a reconnect, replays the conversation."""
        link = await self._new_link(replay=None if first else RESUMED)
        if link is None:
            return False
        self._use(link)
        return True

    async def _new_link(self, replay: str | None) -> RealtimeLink | None:
        """A configured session (with the conversation so far after ``replay``, when there is any); None when
        no attempt succeeded."""
        delays = (0.0, *self.reconnect_delays)
        for attempt, delay in enumerate(delays):
            if self.call.ended.is_set():
                return None
            await asyncio.sleep(delay)
            link: RealtimeLink | None = None
            try:
                link = await self._connect()
                await link.send(ev.session_update(self.session, self.dialect))
                history = self.conversation.history_text() if replay is not None else ""
                if history and replay is not None:
                    # Before the link is used: nothing (audio, a response.create) may overtake the context.
                    await link.send(ev.message_item("system", replay.format(history=history), self.dialect))
            except (TimeoutError, RealtimeError, OSError) as exc:
                self.log.warning("Realtime connect attempt %d failed: %s", attempt + 1, exc)
                if link is not None:
                    with contextlib.suppress(Exception):
                        await link.close()
                continue
            return link
        return None

    def _use(self, link: RealtimeLink) -> None:
        self.link = link
        self.expired = False
        self.retries.new_session()  # nothing asked of the old session is answered here
        self._dead = None
        loop = asyncio.get_running_loop()
        self._renew_at = loop.time() + self.max_session_s
        # Not waited for (the greeting goes out at once): watched. A server that accepted the WebSocket and
        # then says nothing, not even session.created, would hold the call in silence for good.
        self._alive = False
        if self._start_watch is not None:
            self._start_watch.cancel()
        self._start_watch = loop.call_later(SESSION_START_TIMEOUT_S, self._silent_session, link)

    def _silent_session(self, link: RealtimeLink) -> None:
        if self._alive or link is not self.link or self.state.done.is_set():
            return
        self._dead = f"the server sent no event, not even session.created, within {SESSION_START_TIMEOUT_S:g} s"
        self._giving_up = asyncio.ensure_future(link.close())  # the reader, waiting on it, reconnects

    def _heard(self) -> None:
        """The current session's first event came: it is alive."""
        self._alive = True
        self._unanswered.clear()
        if self._start_watch is not None:
            self._start_watch.cancel()
            self._start_watch = None

    async def send_first(self, event: dict[str, Any]) -> None:
        """Send ``event`` (the greeting) on the session now, and again on the next one should this session
        turn out never to have been live (no event from it before it was given up on)."""
        link = self.link
        if link is None:
            return
        if not self._alive:
            self._unanswered.append(event)
        await link.send(self._outgoing(event))

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event for the writer: events leave in the order they were queued."""
        self.outbox.put_nowait(event)

    def _outgoing(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` as it leaves: a response.create tagged and remembered, so that its response can be told
        from one the server began on its own (``ResponseRetries.asked``)."""
        return self.retries.asked(event) if event.get("type") == "response.create" else event

    async def pump(self) -> None:
        """The one writer to the WebSocket."""
        while True:
            event = await self.outbox.get()
            link = self.link
            if link is None:
                continue  # reconnecting: audio and events from the dead session are stale
            if isinstance(event, dict):  # not an audio append (already JSON text)
                event = self._outgoing(event)
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
        self._lost = lost
        taking: RealtimeLink | None = None
        try:
            while not self.state.done.is_set():
                link = self.link
                assert link is not None
                if link is not taking:
                    if taking is not None:
                        taking.deliver_to(None)
                    taking = link
                    link.deliver_to(self._take)
                self._idle = True
                try:
                    event = await link.recv()
                except (RealtimeError, OSError) as exc:
                    if self.state.done.is_set() or self.call.ended.is_set():
                        return
                    await self._link_failed(link, exc, lost, fail_over)
                    continue
                finally:
                    self._idle = False
                if not self._alive:
                    self._heard()
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
        if not self._alive:
            self._heard()
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

    async def _link_failed(self, link: RealtimeLink, exc: BaseException, lost: Callable[[], None],
                           fail_over: Callable[[str], Awaitable[None]]) -> None:
        """The reader's link stopped: replaced by a renewal (nothing to do), ended by the server (a new
        session, not a fault), or lost (reconnect, counted)."""
        replacing = self._replacing
        if replacing is not None and not replacing.done() and link is self.link:
            await asyncio.wait([replacing])  # its successor is being opened: that one takes over
        if link is not self.link:
            return
        code = getattr(exc, "code", None)
        if self._dead is not None:
            await self._recover(self._dead, lost, fail_over)
        elif self.expired or code in SESSION_ENDED_CODES:
            # The server ended the session (its duration limit): no more a fault than a renewal is.
            await self._recover(f"the server ended the session ({exc})", lost, fail_over, planned=True)
        else:
            await self._recover(str(exc), lost, fail_over)

    async def _recover(self, why: str, lost: Callable[[], None], fail_over: Callable[[str], Awaitable[None]],
                       planned: bool = False) -> None:
        if planned:
            self.log.info("Realtime session over (%s); opening a new one", why)
            self._renewed(why)
        else:
            self.log.warning("Realtime connection lost (%s); reconnecting", why)
            self.reconnects += 1
            if self.metrics:
                self.metrics.realtime_reconnected()
            self.records.record("event", event="reconnect", reason=why)
        if not planned or self.conversation.response_active:
            # A response under way will never end; after a planned end, audio already here plays on.
            lost()
        resend = [] if self._alive else list(self._unanswered)  # asked of a session that never answered
        old, self.link = self.link, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        link = await self._new_link(replay=RENEWED if planned else RESUMED)
        if link is None:
            await fail_over(f"the Realtime connection was lost and could not be restored ({why})")
            return
        self._use(link)
        for event in resend:
            await self.send_first(event)

    async def _replace(self, why: str, still_quiet: Callable[[], bool] | None = None) -> bool | None:
        """Make before break: a new session (the conversation replayed) is opened while the old one still
        serves, then the link switches over; the caller hears no gap. False when none could be opened; None
        when ``still_quiet`` says someone spoke while it opened (the new session's replay lacks that: it is
        closed, and the renewal waits for the next quiet moment)."""
        old = self.link
        link = await self._new_link(replay=RENEWED)
        if link is None:
            return False
        if self.link is not old or old is None or self.state.done.is_set():  # lost meanwhile: the reader won
            with contextlib.suppress(Exception):
                await link.close()
            return True
        if still_quiet is not None and not still_quiet():
            with contextlib.suppress(Exception):
                await link.close()
            return None
        if self.conversation.response_active and self._lost is not None:
            # A response of the old session (it expired mid-reply, or one began while this one opened) will
            # never end there, and its items are unknown to the new one.
            self._lost()
        self._use(link)
        self._renewed(why)
        self.log.info("Realtime session renewed (%s)", why)
        with contextlib.suppress(Exception):
            await old.close()  # the reader, waiting on it, sees the link replaced and carries on
        return True

    def _renewed(self, why: str) -> None:
        """A session replaced on purpose (its limit, or the server ended it): counted apart from faults."""
        self.renewals += 1
        self.records.record("event", event="session-renewal", reason=why)
        if self.metrics:
            self.metrics.realtime_renewed()

    def server_error(self, code: str) -> int:
        """A server ``error`` event with ``code``: the level to log it at. None of them ends the call: an
        expired session is replaced at once; other codes are logged at WARNING the first time in a call and
        at DEBUG after that (a server repeating one error, e.g. input_audio_buffer_commit_empty on every
        turn, must not flood the log; the metric counts each)."""
        if code in RENEW_ERRORS:
            self._expire()
            return logging.INFO
        if code in BENIGN_ERRORS or code in self._error_codes:
            return logging.DEBUG
        if len(self._error_codes) < MAX_ERROR_CODES:  # codes are the server's words: keep a bounded set
            self._error_codes.add(code)
        return logging.WARNING

    def response_done(self, response: Mapping[str, Any]) -> None:
        """A response.done, of any shape: one that did not complete is said in the log and counted. A failed
        one (server_error, rate_limit_exceeded...) left the caller without an answer (the bridge may ask for it
        again: ``ResponseRetries``): WARNING (once per code, as for error events) and realtime_errors{code}; an
        incomplete one (max_output_tokens, content_filter) was cut short by the server: INFO, and a transcript
        event; a cancelled one is a barge-in: DEBUG."""
        status = response.get("status")
        if not isinstance(status, str) or status in ("completed", "in_progress"):
            return
        details = response.get("status_details")
        details = details if isinstance(details, dict) else {}
        error = details.get("error")
        error = error if isinstance(error, dict) else {}
        # The server's words, one log line each (a newline in them would forge a second).
        reason = (_word(details.get("reason")) or _word(error.get("code")) or _word(error.get("type"))
                  ).encode("unicode_escape").decode()
        if status == "failed":
            code = reason or "response_failed"
            self.log.log(self.server_error(code), "Realtime response failed (%s): %s", code,
                         _word(error.get("message"), 200).encode("unicode_escape").decode())
            if self.metrics:
                self.metrics.realtime_error(code)
        elif status == "incomplete":
            self.log.info("Realtime response incomplete (%s)", reason or "no reason given")
        else:
            self.log.debug("Realtime response %s (%s)", status[:40], reason)
            return
        self.records.record("event", event=f"response-{status[:20]}", reason=reason)

    def _expire(self) -> None:
        """The server says the session is over (its maximum duration): it will answer nothing more, so a new
        one is opened now rather than at the next quiet moment; the server may close this one any time."""
        if self.expired or self.link is None:
            return
        self.expired = True
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.ensure_future(self._replace_expired(self.link))

    async def _replace_expired(self, old: RealtimeLink) -> bool:
        if await self._replace("session expired"):
            return True
        if self.link is old:
            # No new session yet: closing the dead one makes the reader reconnect (with retries) or fail over.
            with contextlib.suppress(Exception):
                await old.close()
        return False

    async def renew_before_limit(self, quiet: Callable[[], Awaitable[Callable[[], bool] | None]]) -> None:
        """Providers end sessions at a fixed length; move to a fresh one before that, once ``quiet`` returns
        (nobody speaking), with what tells whether it is still so once the new session is open (someone spoke
        meanwhile: that session's replay lacks it, and it is dropped; after RENEW_DEFERRALS of those, the
        renewal goes on anyway). The deadline counts from when the current session opened (a reconnect starts
        a new one); a renewal that fails is tried again RENEW_RETRY_S later, the old session still serving."""
        loop = asyncio.get_running_loop()
        deferrals = 0
        while True:
            wait = self._renew_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # looked at again: the session may have been replaced meanwhile
            still_quiet = await quiet()
            if self._renew_at > loop.time() or self.link is None:
                continue
            replacing = self._replacing
            if replacing is not None and not replacing.done():
                await asyncio.wait([replacing])
                continue
            checked = still_quiet if deferrals < RENEW_DEFERRALS else None
            self._replacing = asyncio.ensure_future(self._replace("session limit", checked))
            await asyncio.wait([self._replacing])
            result = self._replacing.result()
            if result is None:
                deferrals += 1
                self.log.info("Realtime session renewal deferred: the call spoke while the new session opened")
            elif not result:
                self.log.warning("Realtime session renewal failed; trying again in %g s", RENEW_RETRY_S)
                self._renew_at = loop.time() + RENEW_RETRY_S
            else:
                deferrals = 0

    async def close(self) -> None:
        if self._replacing is not None:
            self._replacing.cancel()
        if self._start_watch is not None:
            self._start_watch.cancel()
        link, self.link = self.link, None  # the call's audio stops going to it (Uplink: no link, no append)
        if link is not None:
            with contextlib.suppress(Exception):
                await link.close()
        # Nobody writes any more (the pump was cancelled with the call's tasks): what was queued is dropped, and
        # nothing queues behind it while the line is hung up (the answer to a BYE to a vanished phone is awaited 4 s).
        while not self.outbox.empty():
            self.outbox.get_nowait()


def _word(value: object, limit: int = 60) -> str:
    """A short text field of a server event: its string (at most ``limit`` characters), else ""."""
    return value[:limit] if isinstance(value, str) else ""


__all__ = ["RealtimeSession", "Responses"]
