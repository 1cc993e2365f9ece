"""Posts call events off the call's path: the asyncio shell around ``call_events.Outbox``.

A call only ever calls :meth:`EventSender.emit`, which never blocks and never raises: the event goes into
the process's bounded outbox (or is dropped and counted when it is full) and a background task posts it
with the tools' HTTP client (``bridge/webhook.py``: one deadline per attempt, nothing left open after
it). A dead, slow or refusing receiver therefore costs a call nothing; it costs the process at most
``queue_size`` events and ``CONCURRENCY`` connections. What went wrong is logged once per call and every
event's fate is counted in ``sipagent_events_total{type,result}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

from sipagent.bridge import webhook
from sipagent.bridge.call_events import (
    CallEvent,
    Delivery,
    Outbox,
    RetryPolicy,
    Verdict,
    retry_after_s,
    signed_headers,
    verdict,
)
from sipagent.bridge.settings import EventWebhookConfig
from sipagent.observability.logs import call_logger
from sipagent.observability.metrics import EventResult, Metrics

log = logging.getLogger(__name__)

CONCURRENCY = 4  # attempts in flight at once: one slow receiver answer does not hold up every other event
REPORTED_CALLS = 1024  # calls remembered as "failure already logged" (older ones may be logged again)
FLUSH_POLL_S = 0.05


def new_event_id() -> str:
    return uuid.uuid4().hex


def _retry_policy(settings: EventWebhookConfig) -> RetryPolicy:
    return RetryPolicy(settings.retries, settings.backoff_s, settings.retry_window_s)


def _receiver(url: str) -> str:
    """How logs name the receiver: host and port only, since a path or query may carry a token."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class EventSender:
    """One per process. ``start`` it on the running loop, ``emit`` from anywhere on it, ``stop`` at shutdown
    (a bounded flush, then whatever is left is dropped and counted)."""

    def __init__(self, settings: EventWebhookConfig, metrics: Metrics | None = None, *,
                 tls: ssl.SSLContext | None = None, wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self.outbox = Outbox(settings.queue_size, _retry_policy(settings))
        self._tls = tls  # None: the system's trust store (tests pass their own CA)
        self._wall = wall
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False
        self._reported: OrderedDict[str, None] = OrderedDict()
        self.receiver = _receiver(settings.url)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def reconfigure(self, settings: EventWebhookConfig) -> None:
        """SIGHUP: the new receiver, secret, headers, event types and bounds apply from the next attempt on,
        to the events already held as well (a rotated secret must stop signing at once); a new URL gets
        them at once, not after the backoff the old receiver earned. An attempt under way finishes as it
        started. A smaller ``queue_size`` refuses new events until the outbox drains."""
        if settings.url != self.settings.url:
            self.outbox.hurry(asyncio.get_running_loop().time())
        self.settings = settings
        self.outbox.capacity = settings.queue_size
        self.outbox.policy = _retry_policy(settings)
        self.receiver = _receiver(settings.url)
        self._wake.set()

    def emit(self, event: CallEvent) -> None:
        """Queue ``event`` for delivery, unless its type is not wanted. Never blocks, never raises."""
        if event.type not in self.settings.events:
            return
        loop_now = asyncio.get_running_loop().time()
        if self._closed or self.outbox.push(event, loop_now) is None:
            why = "the agent is shutting down" if self._closed else (
                f"{self.settings.queue_size} events are already held (events.webhook.queue_size)")
            self._settle(event, "dropped", f"{event.type} dropped: {why}")
            return
        self._held_changed()
        self._wake.set()

    async def stop(self, flush_s: float | None = None) -> None:
        """No more events; what is held gets up to ``flush_s`` (default ``shutdown_flush_s``) to go out:
        events waiting for a retry are tried once more at once. Then the rest is dropped and counted."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.shutdown_flush_s if flush_s is None else flush_s)
        self.outbox.hurry(loop.time())
        self._wake.set()
        while len(self.outbox) and loop.time() < deadline and self._task is not None:
            await asyncio.sleep(FLUSH_POLL_S)
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for delivery in self.outbox.drain():
            self._settle(delivery.event, "dropped", f"{delivery.event.type} not delivered before shutdown "
                                                    f"({delivery.attempts} attempts)")
        self._held_changed()

    # ---------------------------------------------------------------- the background task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            while len(self._sending) < CONCURRENCY:
                delivery = self.outbox.take(loop.time())
                if delivery is None:
                    break
                task = asyncio.ensure_future(self._attempt(delivery))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            due = self.outbox.next_due()
            wait = None if due is None or len(self._sending) >= CONCURRENCY else max(0.0, due - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _attempt(self, delivery: Delivery) -> None:
        settings, event = self.settings, delivery.event
        signed = signed_headers(settings.secret, event, delivery.body, self._wall())
        retry_after = None
        result: Verdict
        try:
            async with asyncio.timeout(settings.timeout_s):
                response = await webhook.request("POST", settings.url, settings.headers, delivery.body,
                                                 call_id=event.call_id, own_headers=signed, tls=self._tls)
        except TimeoutError:  # before OSError: a connect timing out in the kernel is a slow receiver too
            result, why = "retry", f"no answer within {settings.timeout_s:g} s"
        except webhook.RequestRefused as exc:  # the configuration was checked at load time: not expected
            result, why = "rejected", f"the request could not be sent ({exc})"
        except (webhook.WebhookError, OSError) as exc:
            result, why = "retry", str(exc) or type(exc).__name__
        except Exception as exc:  # a bug here must not stop the sender: the event is given up, and said why
            log.exception("call event %s: unexpected failure", event.id)
            result, why = "rejected", type(exc).__name__
        else:
            result, why = verdict(response.status), f"HTTP {response.status}"
            if response.status in (429, 503):
                retry_after = retry_after_s(response.header("Retry-After"))
        now = asyncio.get_running_loop().time()
        if result == "delivered":
            self.outbox.done(delivery)
            self._settle(event, "delivered")
        elif result == "rejected":
            self.outbox.done(delivery)
            self._settle(event, "rejected", f"{event.type} refused by the receiver: {why}")
        elif self.outbox.failed(delivery, now, retry_after):
            log.debug("call event %s attempt %d failed (%s); retrying", event.id, delivery.attempts, why)
        else:
            self._settle(event, "failed", f"{event.type} not delivered after {delivery.attempts} attempts: {why}")
        self._held_changed()
        self._wake.set()  # a slot is free, and an event may be due again

    # ---------------------------------------------------------------- accounting

    def _settle(self, event: CallEvent, result: EventResult, problem: str = "") -> None:
        """An event's fate, counted once; a problem logged once per call (the first), not per event or
        attempt: a dead receiver makes one line per call, not one per retry."""
        if self.metrics is not None:
            self.metrics.event_counted(event.type, result)
        if not problem or event.call_id in self._reported:
            return
        self._reported[event.call_id] = None
        while len(self._reported) > REPORTED_CALLS:
            self._reported.popitem(last=False)
        call_logger(log, event.call_id).warning(
            "call events to %s: %s; further failures of this call are counted "
            "(sipagent_events_total), not logged", self.receiver, problem)

    def _held_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.set_events_held(len(self.outbox))


__all__ = ["EventSender", "new_event_id"]
