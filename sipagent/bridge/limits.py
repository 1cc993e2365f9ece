"""Every call ends by itself: the limits of one call, each a timer of its own, never work per frame.

- agent.idle_timeout_s of silence: a prompt, then (the same silence again) the goodbye. A deadline that
  the caller's sound, a key or the end of the agent's reply moves (``CallState.last_activity``).
- agent.max_call_s: the agent says max_call_message, then hangs up ("time-limit"). One deadline.
- media.rtp_timeout_s without RTP (not on hold, not transferring): hang up ("media-timeout"). A watchdog
  over the endpoint's packet count, read a few times per timeout: stamping each packet's arrival
  would cost on every packet of every call, and the call may end up to one interval late, no more.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from sipagent.bridge.legs import MediaLeg
from sipagent.bridge.records import CallRecords
from sipagent.bridge.settings import AgentConfig
from sipagent.bridge.state import CallState


class CallLimits:
    def __init__(self, agent: AgentConfig, rtp_timeout_s: float, origin: float, media: MediaLeg, state: CallState,
                 records: CallRecords, log: logging.LoggerAdapter[logging.Logger], busy: Callable[[], bool],
                 held: Callable[[], bool], prompt: Callable[[], None],
                 goodbye: Callable[[str, str], Awaitable[None]]) -> None:
        self.agent = agent
        self.rtp_timeout_s = rtp_timeout_s
        self.origin = origin  # when the call was answered (time.monotonic)
        self.media = media
        self.state = state
        self.records = records
        self.log = log
        self.busy = busy  # someone is talking or something is under way: silence is not idleness now
        self.held = held  # the far end holds the call (CallBridge.on_hold)
        self.prompt = prompt
        self.goodbye = goodbye  # (message, outcome)
        self.idle_prompts = 0

    async def watch_idle(self) -> None:
        """Re-prompt a silent caller once, then say goodbye and hang up. Sleeps until the silence would be
        long enough; the caller's sound, a digit or the end of the agent's reply moves that moment."""
        timeout = self.agent.idle_timeout_s
        if not 0 < timeout < math.inf:  # "not": NaN too, which no "<=" catches
            return  # no prompt; a dead line still ends by media.rtp_timeout_s or agent.max_call_s
        state = self.state
        while state.closing is None:
            wait = state.last_activity + timeout - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            busy = self.busy()
            state.active()  # if busy, counted again from now (a reply's end moves it)
            if busy:
                # Sleep here, not on the next turn: with a timeout shorter than one turn of this loop the
                # wait would never be positive, and the loop would spin without ever yielding.
                await asyncio.sleep(timeout)
                continue
            self.idle_prompts += 1
            if self.idle_prompts == 1:
                self.records.record("event", event="idle-prompt")
                self.prompt()
            else:
                self.records.record("event", event="idle-hangup")
                await self.goodbye(self.agent.goodbye, "agent-hangup")
                return

    async def watch_call_length(self) -> None:
        """agent.max_call_s: the agent says max_call_message, then hangs up (outcome "time-limit")."""
        limit = self.agent.max_call_s
        if limit <= 0:
            return
        deadline = self.origin + limit
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(left)  # uvloop's millisecond timers may wake a little before it
        if self.state.closing is not None:
            return  # already saying goodbye
        self.log.info("the call reached agent.max_call_s (%.0f s): the agent says goodbye", limit)
        self.records.record("event", event="time-limit", max_call_s=limit)
        await self.goodbye(self.agent.max_call_message, "time-limit")

    async def watch_media(self) -> None:
        """media.rtp_timeout_s: hang up (outcome "media-timeout") when no RTP came for that long, except on
        hold or during a transfer, where the far end may rightly send none. The call ends between
        rtp_timeout_s and rtp_timeout_s + one interval after the last packet."""
        timeout = self.rtp_timeout_s
        if timeout <= 0:
            return
        interval = min(5.0, timeout / 6)
        count, heard_at = self.media.packets_received, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now, received = time.monotonic(), self.media.packets_received
            if received != count or self.held() or self.state.name == "transferring":
                count, heard_at = received, now
            elif now - heard_at >= timeout:
                break
        if count == 0:
            self.log.warning(
                "no RTP has arrived since the call was answered (media.rtp_timeout_s %.0f s): hanging up. The "
                "caller's audio does not reach this host: check NAT and firewalls (UDP to media.rtp_ports), "
                "sip.public_address behind NAT, and that the PBX does not send media straight from the phone "
                "(Asterisk direct_media=no, FreeSWITCH bypass_media=false)", timeout)
        else:
            self.log.warning(
                "no RTP for %.0f s (media.rtp_timeout_s): hanging up. The far end stopped sending without a "
                "BYE, or its media stopped reaching this host: check NAT bindings and firewall timeouts for UDP "
                "to media.rtp_ports, and direct media on the PBX (Asterisk direct_media=no, FreeSWITCH "
                "bypass_media=false)", timeout)
        self.records.record("event", event="media-timeout", rtp_timeout_s=timeout, media_seen=count > 0)
        self.state.finish("media-timeout")


__all__ = ["CallLimits"]
