"""The agent's audio to the caller: the model's deltas decoded to 24 kHz PCM into the playout queue (which
encodes each frame for the call's codec as it leaves), stopped where the caller is (a flush, an item cut at
the milliseconds heard), and the waits for it to be heard.

The queue drains only as the media clock sends its frames, and the bridge is told of each one
(``frame_sent``): that is what wakes the waits here (``wait_playout``, ``until_sent``), along with a
flush and the call's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from sipagent.bridge.bargein import BargeInPolicy
from sipagent.bridge.conversation import Conversation
from sipagent.bridge.legs import CallLeg, MediaLeg
from sipagent.bridge.records import CallRecords
from sipagent.bridge.session import Responses
from sipagent.bridge.state import CallState
from sipagent.bridge.waiting import first_of
from sipagent.media.kernel import Base64Decoder, Resampler, alaw_decode, ulaw_decode
from sipagent.media.pcm_playout import PCM_FRAME_BYTES
from sipagent.observability.metrics import Metrics

PCM24_BYTES_PER_MS = PCM_FRAME_BYTES // 20
MAX_QUEUED_MS = 180_000  # agent audio queued for the caller at most: 8.6 MB of PCM
# The model's audio ran out mid-item (a server streaming slower than it plays): the next audio is gathered
# to this much before it plays on, or until the response ends. Played as it comes, such a stream is chopped
# into 20 ms gaps every few frames; gathered, its unavoidable silence comes as a few longer pauses.
REBUFFER_MS = 100


class Downlink:
    def __init__(self, audio_format: str, media: MediaLeg, call: CallLeg, state: CallState,
                 conversation: Conversation, responses: Responses, policy: BargeInPolicy, records: CallRecords,
                 echo: Callable[[bytes, float], None], metrics: Metrics | None = None) -> None:
        self.media = media
        self.call = call
        self.state = state
        self.conversation = conversation
        self.responses = responses
        self.policy = policy
        self.records = records
        self.echo = echo  # each frame sent (its PCM and mean square): the echo reference
        self.metrics = metrics
        self._down_decode = wire_decoder(audio_format)
        self._base64 = Base64Decoder()  # the deltas' base64 in C: ~2.6 us instead of ~7.9 per 40 ms
        self._bad_deltas = 0  # deltas dropped as unreadable
        self._queued_bytes = 0  # of the conversation's audio ever queued
        self._overflowed: str | None = None  # the item whose audio went over MAX_QUEUED_MS: the rest goes too
        self._response_id = ""  # the response of the delta being queued
        self._item_response = ""  # ... and of the item playing (conversation.current)
        self._holding = False  # the item ran dry while its response streams: its audio is gathered in _held
        self._held = bytearray()
        self.underruns = 0  # times the agent's audio ran out mid-item
        responses.on_done(self.release)
        self.turn_latencies: list[float] = []
        self._turn_ended_at: float | None = None
        # Set while no whole frame of agent audio is queued (a new call's queue is empty). Only a hint that
        # wakes waits: each one looks at the queue itself before it waits.
        self.drained = asyncio.Event()
        self.drained.set()
        self._frame_left = asyncio.Event()  # set as a frame leaves while ``until_sent`` waits
        self._watchers = 0
        # Set during a warm transfer's briefing: the model's audio goes there (the human's call), not to the
        # caller, who hears hold audio meanwhile (sipagent.bridge.warm).
        self.divert: Callable[[bytes], None] | None = None

    def wire_format(self, audio_format: str) -> None:
        """The format the deltas really come in (the server may not send what was asked)."""
        self._down_decode = wire_decoder(audio_format)

    # ---------------------------------------------------------------- audio in

    def caller_turn_ended(self) -> None:
        """The server heard the caller stop: the next audio's delay is a turn's latency."""
        self._turn_ended_at = time.monotonic()

    def delta(self, event: dict[str, Any]) -> None:
        """A response.output_audio.delta: its audio queued for the caller."""
        if self._turn_ended_at is not None:
            self.turn_latencies.append(time.monotonic() - self._turn_ended_at)
            if self.metrics:
                self.metrics.observe_turn_latency(self.turn_latencies[-1])
            self._turn_ended_at = None
        delta = event.get("delta")
        try:
            pcm = self._base64.decode(delta) if isinstance(delta, str) else None
        except ValueError:  # binascii.Error: not base64 (what the stdlib's lenient decoder refuses)
            pcm = None
        if pcm is None:
            self._bad_deltas += 1
            if self._bad_deltas == 1:  # once per call: a server sending garbage would otherwise flood the log
                self.records.log.warning("audio delta dropped: its audio is not base64 text")
            return
        if self._down_decode is not None:  # None: 24 kHz PCM16 already
            pcm = self._down_decode(pcm)
        response_id = event.get("response_id")
        cut_id = self.responses.cut_id
        if cut_id and response_id == cut_id:
            # The caller cut this response off: what the server sent before it took the cancel is dropped,
            # of an item that had not begun playing too (a key pressed before its first delta came).
            return
        self._response_id = response_id if isinstance(response_id, str) else ""
        self.queue(event.get("item_id", ""), pcm)

    def queue(self, item_id: str, pcm24k: bytes) -> None:
        if self.state.done.is_set() or item_id == self.conversation.cut_item:
            return  # deltas of an interrupted item still arrive until the cancel takes effect: drop them
        if self.divert is not None:
            self.divert(pcm24k)
            return
        if item_id == self._overflowed:
            # The rest of an item cut short here is dropped even once there is room: played, it would follow a
            # hole, and the item's milliseconds queued (what a truncation is placed by) would no longer be its own.
            return
        if self.media.buffered_ms + len(pcm24k) // PCM24_BYTES_PER_MS > MAX_QUEUED_MS:
            # The API streams a reply faster than it plays, but minutes ahead is a server gone wrong: its audio
            # would grow the call's memory without bound (48 kB per second). Dropped, and not counted as queued.
            self._overflowed = item_id
            self.records.log.warning("agent audio more than %d s ahead of playout: the rest of item %s is dropped",
                                     MAX_QUEUED_MS // 1000, str(item_id)[:40])
            self.records.record("event", event="agent-audio-dropped", item_id=item_id,
                                buffered_ms=self.media.buffered_ms)
            return
        current = self.conversation.current
        new_item = current is None or current.item_id != item_id
        if new_item and self._holding:
            self.release()
        if new_item:
            # A new item starts where the playout really is. Audio of no item (hold audio, flushed when a warm
            # transfer comes back) moves that place without the conversation's count knowing: counted from
            # there, the milliseconds heard of this item, and so its truncation, would run ahead of the caller.
            at = self.media.played_ms + self.media.buffered_ms
            if at > self.conversation.queued_ms:
                self.conversation.queued_ms = at
            self._item_response = self._response_id
        if self._holding:
            self._held += pcm24k
            if len(self._held) >= REBUFFER_MS * PCM24_BYTES_PER_MS:
                self.release()
        else:
            self._push(pcm24k)
        # Milliseconds from the running byte count, so deltas of any length add up exactly (truncating each
        # one would lose up to 1 ms per delta and misplace the truncation of a long reply).
        before, self._queued_bytes = self._queued_bytes, self._queued_bytes + len(pcm24k)
        self.conversation.agent_audio(item_id, self._queued_bytes // PCM24_BYTES_PER_MS - before // PCM24_BYTES_PER_MS)

    def play_pcm24(self, pcm24k: bytes) -> None:
        """Audio of no conversation item (the fail-over's apology)."""
        self._push(pcm24k)

    def release(self) -> None:
        """Audio gathered after an underrun plays now (enough came, the response ended, or another item began)."""
        self._holding = False
        if self._held:
            held = bytes(self._held)
            self._held.clear()
            self._push(held)

    def _push(self, pcm24k: bytes) -> None:
        self.media.push_audio(pcm24k)
        if self.media.buffered_ms > 0:
            self.drained.clear()

    # ---------------------------------------------------------------- stopping it

    def flush(self) -> None:
        """Drop what the caller has not heard yet; also ends a pause or a duck (what comes next is new audio,
        not the paused speech)."""
        self.media.flush_audio()
        self._drop_held()
        self.policy.flushed()
        self.drained.set()

    def _drop_held(self) -> None:
        self._holding = False
        self._held.clear()

    def cut(self, played_ms: int, heard_ms: int | None = None) -> tuple[str, int] | None:
        """The item playing stops at ``played_ms`` (the caller heard it up to ``heard_ms``, by default the
        same): (its id, ms of it heard), None when none was playing."""
        heard_ms = played_ms if heard_ms is None else min(heard_ms, played_ms)
        self._drop_held()  # gathered audio of the item being cut: never to be heard
        current = self.conversation.current
        if current is not None and current is self.conversation.first:
            self.records.greeting_over(heard_ms, interrupted=True)
        cut = self.conversation.interrupted(played_ms)
        if cut is None or current is None:
            return cut
        heard = current.heard_ms(heard_ms)
        self.conversation.heard_only(cut[0], heard, current.queued_ms)
        return cut[0], heard

    def cut_to_truncate(self, played_ms: int, heard_ms: int) -> tuple[str, int] | None:
        """:meth:`cut`, for a barge-in: the item and the milliseconds of it to truncate the server's copy at,
        or None when there is nothing to take back: none was playing, or the last one had all come and had
        all been heard (an item of an earlier response, while the one cut off has sent no audio yet)."""
        current, responses = self.conversation.current, self.responses
        complete = not responses.active or (self._item_response != "" and self._item_response != responses.current_id)
        whole = (current is not None and complete
                 and current.heard_ms(min(heard_ms, played_ms)) >= current.queued_ms)
        cut = self.cut(played_ms, heard_ms)
        return None if whole else cut

    def playing(self) -> bool:
        """Agent audio is queued, or (while it is turned down at an onset) its response is still coming: the
        model's audio arrives in real time, and the queue may run dry between two deltas."""
        return (self.media.buffered_ms > 0 or (self.policy.paused and self.responses.active)
                or self._holding)  # mid-item, waiting for the rest of it

    # ---------------------------------------------------------------- audio out, and waiting for it

    def frame_sent(self, payload: bytes | None, is_audio: bool) -> None:
        """The media clock just sent this frame to the caller (audio or silence)."""
        self.echo(*self.media.sent_audio)  # silence too: zeros, mean square 0
        if not self.drained.is_set() and self.media.buffered_ms <= 0:
            self.drained.set()
        if (not is_audio and not self._holding and self._item_response and self.responses.active
                and self._item_response == self.responses.current_id and self.media.buffered_ms <= 0
                and self.conversation.current is not None):
            # The item playing ran dry while its response still streams: gather before playing on.
            self._holding = True
            self.underruns += 1
        if self._watchers:
            self._frame_left.set()

    async def wait_playout(self) -> None:
        """Until the caller has heard all the agent's audio queued so far, or the call ends."""
        while self.media.buffered_ms > 0 and not self.call.ended.is_set():
            self.drained.clear()
            await first_of(self.drained, self.call.ended)

    async def wait_quiet(self) -> None:
        """Until the agent is silent: nothing queued and no response under way (both at once)."""
        while True:
            if self.media.buffered_ms > 0:
                self.drained.clear()
                await self.drained.wait()
            elif self.responses.active:
                await self.responses.idle.wait()
            else:
                return

    async def until_sent(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Until ``condition()`` holds, looked at as each frame leaves for the caller (what the clock sends in
        place of audio, such as keys, is over when audio or silence goes again), at most ``timeout``
        seconds or until the call ends. Returns ``condition()``."""
        self._watchers += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while not condition() and not self.call.ended.is_set():
                        self._frame_left.clear()
                        await first_of(self._frame_left, self.call.ended)
        finally:
            self._watchers -= 1
        return condition()


def wire_decoder(audio_format: str) -> Callable[[bytes], bytes] | None:
    """Output deltas → 24 kHz PCM16, whatever format the server really sends; None for pcm16 (as it is)."""
    if audio_format == "pcm16":
        return None
    to_24k = Resampler(8000, 24000)
    decode = ulaw_decode if audio_format == "g711_ulaw" else alaw_decode
    return lambda data: to_24k.process(decode(data))


__all__ = ["Downlink", "wire_decoder"]
