"""Health of the agent process and the small HTTP server exposing it with the metrics.

``HealthState`` collects the reasons the process is unhealthy (registration lost, event loop stalled,
anything the agent adds); ``LoopStallDetector`` measures event-loop lag; ``start_health_server`` serves
``GET /metrics`` and ``GET /healthz`` with plain ``asyncio.start_server`` and the small HTTP helper of
sipagent.observability.http (no web framework needed for two read-only paths). Every response closes the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from sipagent.observability.http import HttpServer, RequestHead, Response, read_head
from sipagent.observability.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)



class HealthState:
    """Why the process is unhealthy, if it is. Times are monotonic seconds (``clock`` for tests)."""

    def __init__(self, *, stall_threshold_s: float = 2.0, stall_memory_s: float = 30.0,
                 registration_grace_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_threshold_s = stall_threshold_s
        # A stall stays reported this long, so a probe polling every few seconds still sees it.
        self.stall_memory_s = stall_memory_s
        self.registration_grace_s = registration_grace_s
        self._clock = clock
        self._registration_lost = False
        self._unregistered_since: dict[str, float] = {}  # account name ("": the only one) -> since when
        self._problems: dict[str, str] = {}
        self.last_lag_s = 0.0
        self._last_stall: tuple[float, float] | None = None  # (when, lag)

    # -- registration ---------------------------------------------------------------------------------
    @property
    def registration_lost(self) -> bool:
        """Set directly by the agent, or derived from ``note_registration`` after the grace period."""
        return self._registration_lost or bool(self.accounts_lost())

    @registration_lost.setter
    def registration_lost(self, value: bool) -> None:
        self._registration_lost = value

    def accounts_lost(self) -> list[str]:
        """The accounts unregistered for longer than the grace period ("" for an unnamed one)."""
        now = self._clock()
        return [account for account, since in self._unregistered_since.items()
                if now - since > self.registration_grace_s]

    def note_registration(self, registered: bool, account: str = "") -> None:
        """Call on every registration state change when registration is required (not direct mode); each
        account has its own grace period, and any one lost makes the process unhealthy."""
        if registered:
            self._unregistered_since.pop(account, None)
        else:
            self._unregistered_since.setdefault(account, self._clock())

    # -- event loop -----------------------------------------------------------------------------------
    def note_lag(self, lag_s: float) -> None:
        self.last_lag_s = lag_s
        if lag_s > self.stall_threshold_s:
            self._last_stall = (self._clock(), lag_s)

    # -- anything else ----------------------------------------------------------------------------------
    def set_problem(self, name: str, reason: str) -> None:
        """E.g. ``set_problem("shutdown", "shutting down")``; cleared with ``clear_problem``."""
        self._problems[name] = reason

    def clear_problem(self, name: str) -> None:
        self._problems.pop(name, None)

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.registration_lost:
            named = [account for account in self.accounts_lost() if account]
            found.append("registration lost" + (f" (accounts {', '.join(named)})" if named else ""))
        if self._last_stall is not None:
            when, lag = self._last_stall
            ago = self._clock() - when
            if ago <= self.stall_memory_s:
                found.append(f"event loop stalled for {lag:.1f} s, {ago:.0f} s ago")
        found.extend(self._problems.values())
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems()

    def report(self) -> dict[str, Any]:
        problems = self.problems()
        report: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "registration_lost": self.registration_lost,
            "loop_lag_s": round(self.last_lag_s, 4),
        }
        named = [account for account in self.accounts_lost() if account]
        if named:  # several accounts register: which of them
            report["accounts_lost"] = named
        return report


class LoopStallDetector:
    """Sleeps ``interval_s`` in a loop; any extra time before it wakes is event-loop lag."""

    def __init__(self, health: HealthState, metrics: Metrics | None = None, interval_s: float = 0.5) -> None:
        self.health = health
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-stall-detector")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, loop.time() - started - self.interval_s)
            self.health.note_lag(lag)
            if self.metrics is not None:
                self.metrics.set_loop_lag(lag)
            if lag > self.health.stall_threshold_s:
                log.warning("event loop stalled: woke %.2f s late", lag)


class HealthServer(HttpServer):
    """The running /metrics and /healthz listener."""

    name = "health endpoint"

    def __init__(self, metrics: Metrics, health: HealthState) -> None:
        super().__init__()
        self.metrics = metrics
        self.health = health

    async def respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
        return self._respond(await read_head(reader))

    def _respond(self, head: RequestHead) -> Response:
        if head.path not in ("/metrics", "/healthz"):
            return Response.text(HTTPStatus.NOT_FOUND)
        if head.method != "GET":
            return Response.text(HTTPStatus.METHOD_NOT_ALLOWED, (("Allow", "GET"),))
        if head.path == "/metrics":
            return Response(HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE)
        report = self.health.report()
        status = HTTPStatus.OK if report["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return Response.json(status, report)


async def start_health_server(host: str, port: int, metrics: Metrics, health: HealthState) -> HealthServer:
    """Listen on ``host:port`` (port 0 picks a free one) for /metrics and /healthz."""
    server = HealthServer(metrics, health)
    await server.listen(host, port)
    log.info("metrics and health on %s/metrics and /healthz", server.base_url)
    return server
