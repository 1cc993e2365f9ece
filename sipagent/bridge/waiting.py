"""Waiting on whichever of several things happens first: the bridge's waits are woken by what changes
(a key, the queue running dry, a response's end, the call's end), never by looking again and again."""

from __future__ import annotations

import asyncio


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Until one of ``events`` is set, or ``timeout`` seconds (None: no limit) have passed."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


__all__ = ["first_of"]
