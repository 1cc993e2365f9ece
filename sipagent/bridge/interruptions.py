"""The caller cutting the agent off: the barge-in policy's decisions (sipagent.bridge.bargein) carried out.

At the caller's onset the agent is turned down (duck) or paused, reversibly; once the speech is confirmed
(locally, by the server's speech_started, or by a key during a keypad entry) its audio is flushed, the item
truncated at the milliseconds the caller heard (deleted when none was heard) and the response cancelled
unless the server did so. A goodbye silences the agent the same way (``stop_agent``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sipagent.bridge.bargein import BargeIn, BargeInPolicy, Duck, Pause, Resume, Trigger, Unduck
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.legs import MediaLeg
from sipagent.bridge.records import CallRecords
from sipagent.bridge.session import RealtimeSession, Responses
from sipagent.bridge.state import CallState
from sipagent.bridge.uplink import Uplink
from sipagent.media.gain import duck_gain
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev

CANCEL_WAIT_S = 2.0  # how long a goodbye waits for the response it cancelled to end before it asks for its own


class Interruptions:
    def __init__(self, policy: BargeInPolicy, duck_db: float, media: MediaLeg, uplink: Uplink, downlink: Downlink,
                 session: RealtimeSession, responses: Responses, state: CallState, records: CallRecords,
                 log: logging.LoggerAdapter[logging.Logger], spawn: Callable[[Awaitable[Any]], object],
                 metrics: Metrics | None = None) -> None:
        self.policy = policy
        self._duck_gain = duck_gain(duck_db)
        self.media = media
        self.uplink = uplink
        self.downlink = downlink
        self.session = session
        self.responses = responses
        self.state = state
        self.records = records
        self.log = log
        self._spawn = spawn
        self.metrics = metrics
        self.times: list[float] = []  # when each barge-in was decided (CallOutcome.barge_ins)
        self._onset_at = 0.0  # the caller's first loud frame of the speech the agent is paused (ducked) on
        self._stage1_played_ms = 0  # what the caller had heard at full level when the first stage began

    def caller_sound(self, speech: bool) -> None:
        """A caller frame with sound in it (or one while the agent is paused or ducked): the barge-in policy's
        turn. The onset is the VAD's onset run (echo margin learned from the line), confirmation its speech."""
        if self.state.held:
            return  # music on hold: neither speech nor an interruption
        now = time.monotonic()
        if speech:
            self.state.active(now)
        vad = self.uplink.vad
        onset_ms = vad.onset_ms
        decision = self.policy.caller_frame(now, onset_ms, speech, self.downlink.playing(), vad.faint)
        if isinstance(decision, Duck):
            # Stage 1, at the onset: turned down from the next tick on, still playing, the model not told.
            self.media.duck_audio(self._duck_gain)
            self._onset_at = now - (onset_ms - vad.settings.frame_ms) / 1000
            self._stage1_played_ms = self.media.played_ms
            self.records.record("barge_in_duck", played_ms=self._stage1_played_ms)
        elif isinstance(decision, Unduck):
            self.media.unduck_audio()
            self.log.info("barge-in duck ended after %.0f ms (not speech)", decision.ducked_s * 1000)
            self.records.record("barge_in_unduck", ducked_ms=round(decision.ducked_s * 1000))
            if self.metrics:
                self.metrics.barge_in_pause_ended("resumed", decision.ducked_s)
        elif isinstance(decision, Pause):
            # Stage 1, at the onset: silence from the next tick on, the model not told (it may be a cough).
            self.media.pause_audio()
            self._onset_at = now - (onset_ms - vad.settings.frame_ms) / 1000
            self._stage1_played_ms = self.media.played_ms
            self.records.record("barge_in_pause", played_ms=self._stage1_played_ms)
        elif isinstance(decision, Resume):
            self.media.resume_audio()
            self.log.info("barge-in pause resumed after %.0f ms (not speech)", decision.paused_s * 1000)
            self.records.record("barge_in_resume", paused_ms=round(decision.paused_s * 1000))
            if self.metrics:
                self.metrics.barge_in_pause_ended("resumed", decision.paused_s)
        elif decision is not None:
            self.media.pause_audio()  # quiet from the next tick even if the task below runs after it
            self._spawn(self.barge_in(decision, server_cancelled=False))

    async def server_speech(self) -> None:
        """The server heard the caller start (input_audio_buffer.speech_started)."""
        now = time.monotonic()
        self.state.active(now)
        decision = self.policy.server_speech_started(now, self.downlink.playing(),
                                                     caller_speaking=self.uplink.vad.recent_speech_ms >= 60)
        if decision:
            await self.barge_in(decision, server_cancelled=True)

    def key_pressed(self, now: float) -> None:
        """A key pressed while the agent asks for the entry stops it at once, as speech would: the caller
        knows what to type. Unlike speech it needs no confirmation (a key is never echo or a cough), and is
        not subject to the greeting's protection (no entry runs during the greeting)."""
        if self.media.buffered_ms <= 0 and not self.responses.active:
            return
        self.media.pause_audio()  # quiet from the next tick even if the task below runs after it
        self.policy.flushed()
        self._spawn(self.barge_in(BargeIn(Trigger.DTMF, now), server_cancelled=False))

    async def barge_in(self, decision: BargeIn, server_cancelled: bool) -> None:
        played = self.media.played_ms  # exact when paused: what the caller heard up to the pause
        # After a duck the frames since its start went out turned down, under the caller's voice: what the
        # caller heard ends where the duck began.
        heard = self._stage1_played_ms if decision.paused_at is not None else played
        self.media.flush_audio()  # also ends a duck
        self.downlink.drained.set()
        cut = self.downlink.cut_to_truncate(played, heard)
        self.times.append(decision.at)
        vad = self.uplink.vad
        if self.metrics and decision.paused_at is not None:
            # The agent went quiet at the pause; confirming it later changed nothing the caller heard.
            self.metrics.observe_barge_in_latency(decision.paused_at - self._onset_at)
            self.metrics.barge_in_pause_ended("barge-in", decision.at - decision.paused_at)
        elif self.metrics and vad.recent_speech_ms and decision.trigger is not Trigger.DTMF:
            # From the first loud caller frame to the moment the agent went quiet on the wire.
            self.metrics.observe_barge_in_latency(vad.recent_speech_ms / 1000 + time.monotonic() - decision.at)
        self.log.info("barge-in (%s)", decision.trigger.value)
        if cut is not None:
            item_id, heard_ms = cut
            paused_ms = None if decision.paused_at is None else round((decision.at - decision.paused_at) * 1000)
            self.records.record("barge_in", trigger=decision.trigger.value, item_id=item_id, heard_ms=heard_ms,
                                paused_ms=paused_ms)
            if heard_ms > 0:
                self.session.send(ev.item_truncate(item_id, heard_ms))
            else:
                self.session.send(ev.item_delete(item_id))
        self.responses.cut()  # its deltas still in flight are not played, whoever cancels it
        if self.responses.active and not server_cancelled:
            self.session.send(ev.response_cancel())

    async def stop_agent(self) -> None:
        """Silence the agent at once: its audio is cut where the caller is, its response cancelled (and that
        response's end awaited, since a new response.create while one is active is refused)."""
        played = self.media.played_ms
        self.downlink.flush()
        self.downlink.cut(played)  # deltas of the cut item still in flight are dropped
        self.responses.cut()  # ... and of any later item of its response
        if self.responses.active:
            self.responses.expect_done()
            self.session.send(ev.response_cancel())
            await self.responses.wait_done(CANCEL_WAIT_S)


__all__ = ["CANCEL_WAIT_S", "Interruptions"]
