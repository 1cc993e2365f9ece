"""RealtimeSession's reader: events taken as they arrive (RealtimeLink.deliver_to) keep the order and the
waits that the reader's own loop gives them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from sipagent.bridge.session import RealtimeSession
from sipagent.bridge.state import CallState
from sipagent.realtime import events as ev

Event = dict[str, Any]


class Link:
    """What RealtimeClient does with a message: offered to ``take`` while nothing waits for ``recv``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.take: Callable[[Event], bool] | None = None
        self.through_recv: list[str] = []

    def deliver_to(self, take: Callable[[Event], bool] | None) -> None:
        self.take = take

    def arrive(self, event: Event) -> None:
        if self.queue.empty() and self.take is not None and self.take(event):
            return
        self.queue.put_nowait(event)

    async def recv(self) -> Event:
        event = await self.queue.get()
        self.through_recv.append(event["type"])
        return event


def session_on(link: Link) -> tuple[RealtimeSession, CallState]:
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    state = CallState(log)
    call = SimpleNamespace(ended=asyncio.Event())
    session = RealtimeSession(lambda: None, ev.SessionSettings(), "ga", (), 60.0, call,  # type: ignore[arg-type]
                              state, None, None, log)  # type: ignore[arg-type]
    session.link = link  # type: ignore[assignment]
    return session, state


async def never(why: str) -> None:
    raise AssertionError(why)


def test_events_are_handled_as_they_arrive_while_the_reader_waits() -> None:
    async def run() -> None:
        link = Link()
        session, state = session_on(link)
        handled: list[str] = []
        reader = asyncio.create_task(session.read(lambda e: handled.append(e["type"]), lambda: None, never))
        await asyncio.sleep(0)
        link.arrive({"type": "a"})
        assert handled == ["a"]  # in the data callback itself: no task switch
        link.arrive({"type": "b"})
        assert handled == ["a", "b"] and link.through_recv == []
        state.done.set()
        link.arrive({"type": "c"})  # the call is over: left to the reader, which is gone
        assert handled == ["a", "b"]
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert link.take is None  # the reader took its hook back

    asyncio.run(run())


def test_the_next_event_waits_for_what_the_one_before_it_started() -> None:
    async def run() -> None:
        link = Link()
        session, _ = session_on(link)
        handled: list[str] = []
        gate = asyncio.Event()

        async def slow() -> None:
            await gate.wait()
            handled.append("slow done")

        def handle(event: Event) -> Awaitable[None] | None:
            handled.append(event["type"])
            return slow() if event["type"] == "slow" else None

        reader = asyncio.create_task(session.read(handle, lambda: None, never))
        await asyncio.sleep(0)
        link.arrive({"type": "slow"})  # taken: its wait runs on as a task
        link.arrive({"type": "next"})  # not taken while that runs: the reader gets it, and waits first
        link.arrive({"type": "last"})  # behind "next" in the reader's queue
        for _ in range(5):
            await asyncio.sleep(0)
        assert handled == ["slow"]
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert handled == ["slow", "slow done", "next", "last"]
        assert link.through_recv == ["next", "last"]
        link.arrive({"type": "again"})  # the reader waits again, nothing is running: taken at once
        assert handled[-1] == "again" and link.through_recv == ["next", "last"]
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    asyncio.run(run())


def test_nothing_is_taken_while_the_reader_waits_for_a_handler() -> None:
    async def run() -> None:
        link = Link()
        session, _ = session_on(link)
        handled: list[str] = []
        gate = asyncio.Event()

        async def slow() -> None:
            await gate.wait()

        def handle(event: Event) -> Awaitable[None] | None:
            handled.append(event["type"])
            return slow() if event["type"] == "slow" else None

        link.queue.put_nowait({"type": "slow"})  # already waiting for the reader when it starts
        reader = asyncio.create_task(session.read(handle, lambda: None, never))
        await asyncio.sleep(0)
        assert handled == ["slow"]
        link.arrive({"type": "after"})
        assert handled == ["slow"]  # the reader is busy with "slow": "after" waits its turn
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert handled == ["slow", "after"] and link.through_recv == ["slow", "after"]
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    asyncio.run(run())


def test_a_failing_handler_does_not_stop_the_events() -> None:
    async def run() -> None:
        link = Link()
        session, _ = session_on(link)
        handled: list[str] = []

        def handle(event: Event) -> None:
            if event["type"] == "bad":
                raise ValueError("bad event")
            handled.append(event["type"])

        reader = asyncio.create_task(session.read(handle, lambda: None, never))
        await asyncio.sleep(0)
        link.arrive({"type": "bad"})
        link.arrive({"type": "good"})
        assert handled == ["good"]
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    asyncio.run(run())
