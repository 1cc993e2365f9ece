"""The bridge's bookkeeping of what the caller heard, against the Realtime API's rules: a truncation is
placed by what that item really played (audio of no item before it, such as hold audio, does not count), an
item that came whole and was heard whole is never truncated (nor another in its place), and what is still in
flight of a response the caller cut off is not played. Server errors and response ends of any shape are taken
without an exception. No sockets: events go in through the bridge's handler table, events out are read
from the session's outbox, and the playout queue is drained by hand."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipagent.bridge.call import BridgeSettings, CallBridge, RealtimeLink
from sipagent.bridge.settings import AgentConfig, RecordingConfig
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev
from sipagent.testing.call_leg import StubCallLeg
from sipagent.testing.media_leg import FRAME, QueueMediaLeg

TONE = b"\x00\x20" * (FRAME // 2)


def new_bridge(metrics: Metrics | None = None) -> tuple[CallBridge, QueueMediaLeg]:
    async def no_backend() -> RealtimeLink:
        raise OSError("not in these tests")

    media = QueueMediaLeg()
    settings = BridgeSettings(agent=AgentConfig(greeting=""), recording=RecordingConfig(transcripts=False),
                              session=ev.SessionSettings(), metrics=metrics)
    return CallBridge(StubCallLeg("quirks"), media, no_backend, settings), media


def play(bridge: CallBridge, media: QueueMediaLeg, ms: int) -> None:
    """The media clock sends ``ms`` of frames."""
    for _ in range(ms // 20):
        payload, audio = media.queue.pop_frame()
        bridge.on_outbound_frame(payload, audio)


def response(bridge: CallBridge, rid: str, item: str, ms: int, done: bool = True) -> None:
    bridge._handle({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
    for _ in range(ms // 100):
        bridge._handle({"type": "response.output_audio.delta", "response_id": rid, "item_id": item,
                        "delta": base64.b64encode(TONE * 5).decode()})
    if done:
        bridge._handle({"type": "response.done", "response": {"id": rid, "status": "completed", "output": []}})


def sent(bridge: CallBridge) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not bridge.realtime.outbox.empty():
        event = bridge.realtime.outbox.get_nowait()
        if isinstance(event, dict):
            out.append(event)
    return out


def test_a_truncation_after_hold_audio_is_placed_by_what_the_item_itself_played() -> None:
    """A warm transfer that came back: its hold audio played (and was flushed), then the agent speaks again
    and the caller cuts in after 200 ms of it. Before, the item's start was counted from the conversation's
    own audio only, so the hold audio counted as heard of the item: audio_end_ms 800 of 200 heard (the model
    then believes the caller heard what they never did)."""
    async def main() -> None:
        bridge, media = new_bridge()
        bridge.downlink.play_pcm24(TONE * 50)  # one second of hold audio
        play(bridge, media, 600)
        bridge.downlink.flush()  # the human did not answer: the hold ends
        response(bridge, "r2", "b", 1000, done=False)
        play(bridge, media, 200)
        bridge.interruptions.key_pressed(time.monotonic())
        await asyncio.sleep(0)
        events = sent(bridge)
        truncate = [e for e in events if e["type"] == "conversation.item.truncate"]
        assert truncate == [ev.item_truncate("b", 200)], events
        assert {"type": "response.cancel"} in events

    asyncio.run(main())


def test_an_item_heard_whole_is_not_truncated_and_the_cut_response_is_not_played() -> None:
    """The caller heard the whole of item a; the next response (after a tool call, say) has begun but sent
    no audio yet when a key stops the agent. Before: item a was 'truncated' at its full length (an item of
    another response than the one cut off), and the new response's deltas still in flight, of an item not
    yet begun, were played after the caller had cut the agent off."""
    async def main() -> None:
        bridge, media = new_bridge()
        response(bridge, "r1", "a", 400)
        play(bridge, media, 600)
        assert media.buffered_ms == 0 and media.played_ms == 400
        bridge._handle({"type": "response.created", "response": {"id": "r2", "status": "in_progress"}})
        bridge.interruptions.key_pressed(time.monotonic())
        await asyncio.sleep(0)
        events = sent(bridge)
        assert [e["type"] for e in events] == ["response.cancel"], events
        for _ in range(3):  # sent before the server took the cancel
            bridge._handle({"type": "response.output_audio.delta", "response_id": "r2", "item_id": "b",
                            "delta": base64.b64encode(TONE * 5).decode()})
        assert media.buffered_ms == 0
        bridge._handle({"type": "response.done", "response": {"id": "r2", "status": "cancelled"}})
        response(bridge, "r3", "c", 200)  # the next response plays
        assert media.buffered_ms == 200

    asyncio.run(main())


def test_the_item_playing_is_truncated_at_what_was_played_never_more() -> None:
    async def main() -> None:
        bridge, media = new_bridge()
        response(bridge, "r1", "a", 1000)  # all of it came (faster than it plays)
        play(bridge, media, 340)
        bridge.interruptions.key_pressed(time.monotonic())
        await asyncio.sleep(0)
        assert [e for e in sent(bridge) if e["type"] == "conversation.item.truncate"] == [ev.item_truncate("a", 340)]
        # Nothing of the next item was heard when the caller cuts in: it is deleted, not truncated.
        response(bridge, "r2", "b", 500, done=False)
        bridge.interruptions.key_pressed(time.monotonic())
        await asyncio.sleep(0)
        events = sent(bridge)
        assert ev.item_delete("b") in events and not [e for e in events if e["type"] == "conversation.item.truncate"]

    asyncio.run(main())


def test_server_errors_log_once_per_code_and_an_expiry_is_not_a_warning() -> None:
    bridge, _ = new_bridge()
    session = bridge.realtime
    assert session.server_error("input_audio_buffer_commit_empty") == logging.WARNING
    assert session.server_error("input_audio_buffer_commit_empty") == logging.DEBUG
    assert session.server_error("response_cancel_not_active") == logging.DEBUG
    for n in range(100):  # codes are the server's words: the set of those seen stays bounded
        session.server_error(f"code-{n}")
    assert len(session._error_codes) <= 32
    assert session.server_error("session_expired") == logging.INFO  # no link yet: nothing to replace


ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                   lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                   max_leaves=8)
ERROR = ANY | st.fixed_dictionaries({}, optional={"code": ANY, "type": ANY, "message": ANY})
DETAILS = ANY | st.fixed_dictionaries({}, optional={"reason": ANY, "type": ANY, "error": ERROR})
RESPONSE = st.fixed_dictionaries({}, optional={
    "id": ANY, "status": st.sampled_from(["completed", "failed", "incomplete", "cancelled", "x"]) | ANY,
    "status_details": DETAILS})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(RESPONSE)
def test_response_created_and_done_of_any_shape_leave_no_response_active(response_obj: dict[str, Any]) -> None:
    async def main() -> None:
        bridge, _ = new_bridge(Metrics())
        bridge._handle({"type": "response.created", "response": response_obj})
        assert bridge.responses.active
        bridge._handle({"type": "response.done", "response": response_obj})
        await asyncio.sleep(0)
        assert not bridge.responses.active

    asyncio.run(main())
