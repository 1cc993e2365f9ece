"""The Realtime session over a whole call, as the real API behaves: a session that expires (an error, then
maybe a close), close codes, a server that stops answering pings or never says session.created, responses
that fail or end incomplete, errors that end nothing, a truncation the server refuses.

The server and the call are realtime_fake's: a real WebSocket server on 127.0.0.1 speaking the GA protocol
as OpenAI does, scripted per connection, and the real bridge over a fake call whose playout a 20 ms task
drains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from realtime_fake import (
    SILENT,
    TALKING,
    Conn,
    Running,
    Server,
    bridged,
    greeted,
    realtime_server,
    run,
    system_items,
)

from sipagent.bridge import session as session_module

pytestmark = pytest.mark.timeout(60)


# --- the session's maximum duration -----------------------------------------------------------------------


EXPIRED = {"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired",
                                      "message": "Your session hit the maximum duration of 60 minutes.",
                                      "param": None, "event_id": None}}


@pytest.mark.parametrize("then_close", [False, True])
def test_an_expired_session_is_replaced_at_once_with_the_conversation(tmp_path: Path, then_close: bool) -> None:
    """OpenAI ends a session at its maximum duration with an ``error`` session_expired; some sessions then stay
    open and answer nothing, others close. Before: the error was logged and the call went on with a dead
    session (the agent never spoke again), or, after the close, reconnected as after a fault (a warning, a
    reconnect counted). Now a new session is opened at once, the conversation replayed, and it is counted
    as a renewal."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            first = server.conns[0]
            await first.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
                              "transcript": "I would like to return my boots."})
            await first.send(EXPIRED)
            if then_close:
                await first.ws.close(1000, "session expired")
            await call.until(lambda: len(server.conns) >= 2 and call.bridge.realtime.link is not None
                             and call.bridge.state == "live", 5, "a new session")
            second = server.conns[1]
            await call.until(lambda: second.appends > 0, 3, "the caller's audio on the new session")
            assert second.types()[:2] == ["session.update", "conversation.item.create"], second.types()
            [context] = system_items(second)
            assert "return my boots" in context and "You: Sure." in context, context
            # The new session answers (server VAD heard the caller), and the caller hears it.
            before = call.media.audio_frames()
            await second.respond(ms=400)
            await call.until(lambda: call.media.audio_frames() >= before + 15, 3, "the answer on the new session")
            assert call.bridge.reconnects == 0 and call.metric("sipagent_realtime_reconnects_total") == 0
            assert call.bridge.realtime.renewals == 1 and len(call.events("session-renewal")) == 1
            assert not call.events("reconnect") and not call.events("failure")
            assert call.metric('sipagent_realtime_errors_total{code="session_expired"}') == 1

    run(main())


def test_renewal_before_the_limit_opens_the_new_session_before_closing_the_old(tmp_path: Path) -> None:
    """Before: the old session was closed first and a new one connected after (the caller's words in between
    went nowhere), counted as a lost connection. Now make-before-break: the new session is configured and
    seeded while the old one still takes the caller's audio."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path, max_session_s=1.5) as call:
            await greeted(call, server)
            await call.until(lambda: len(server.conns) >= 2 and server.conns[0].closed_at is not None, 5,
                             "the renewal")
            old, new = server.conns
            assert old.closed_at is not None
            seeded = [e for e in new.received if e["type"] == "conversation.item.create"]
            assert seeded, new.types()
            # The old session was closed only once the new one was configured and seeded.
            assert old.closed_at >= new.opened_at
            assert new.types()[:2] == ["session.update", "conversation.item.create"], new.types()
            await call.until(lambda: new.appends > 0, 2, "audio on the new session")
            assert call.bridge.reconnects == 0 and call.bridge.realtime.renewals >= 1
            assert call.metric("sipagent_realtime_reconnects_total") == 0
            assert call.metric("sipagent_realtime_renewals_total") == call.bridge.realtime.renewals
            assert call.bridge.state == "live"

    run(main())


def test_renewal_waits_for_the_caller_to_finish_speaking(tmp_path: Path) -> None:
    """Before: the renewal came as soon as the agent was silent, so a caller speaking then had the start of
    the utterance in the old session's buffer and the rest in the new one (which heard it from the middle).
    Now it waits until the caller has been quiet for a second."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path, max_session_s=1.5) as call:
            await greeted(call, server)
            call.media.caller = TALKING  # the caller speaks across the session's limit
            await asyncio.sleep(2.5)
            assert len(server.conns) == 1, "renewed while the caller was speaking"
            call.media.caller = SILENT
            stopped = time.monotonic()
            await call.until(lambda: len(server.conns) >= 2, 5, "the renewal")
            assert server.conns[1].opened_at - stopped >= 0.9
            await call.until(lambda: call.bridge.realtime.renewals >= 1, 5, "the new session in use")
            assert call.bridge.state == "live"

    run(main())


def test_a_renewal_during_which_the_caller_spoke_is_dropped_and_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller was quiet when the renewal began, and spoke while the new session opened (0.5-2 s on the real
    API): that session's replay lacks what was said, and switching to it would split the utterance. It is
    closed unused, and the renewal is made again at the next quiet moment."""
    opening = session_module.RealtimeSession._new_link
    running: list[tuple[Server, Running]] = []

    async def slow_open(self: session_module.RealtimeSession, replay: str | None) -> Any:
        link = await opening(self, replay)
        server, call = running[0]
        if len(server.conns) == 2:  # the first renewal's session: the caller speaks while it opens
            call.media.caller = TALKING
            await asyncio.sleep(0.6)
            call.media.caller = SILENT
        return link

    monkeypatch.setattr(session_module.RealtimeSession, "_new_link", slow_open)

    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path, max_session_s=1.5) as call:
            running.append((server, call))
            await greeted(call, server)
            await call.until(lambda: call.bridge.realtime.renewals >= 1, 12, "the renewal")
            assert len(server.conns) >= 3, [c.n for c in server.conns]
            dropped = server.conns[1]
            assert dropped.closed_at is not None and dropped.appends == 0, "the dropped session was used"
            assert server.conns[2].closed_at is None and call.bridge.realtime.renewals == 1
            assert len(call.events("session-renewal")) == 1 and call.bridge.reconnects == 0

    run(main())


# --- close codes, pings, a silent server ------------------------------------------------------------------


@pytest.mark.parametrize(("code", "planned"), [(1000, True), (1001, False), (1008, False), (1011, False),
                                               (4000, False)])
def test_a_close_by_the_server_carries_the_call_on(tmp_path: Path, code: int, planned: bool) -> None:
    """Every close is followed by a new session with the conversation; a normal closure (1000: the server
    ended the session) is a renewal, the others (going away, policy, internal error, application codes) a
    lost connection, counted. Before, 1000 counted as a fault too."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            await server.conns[0].ws.close(code, "bye")
            await call.until(lambda: len(server.conns) >= 2 and call.bridge.realtime.link is not None, 5,
                             "a new session")
            await call.until(lambda: server.conns[1].appends > 0, 3, "audio on the new session")
            assert call.bridge.reconnects == (0 if planned else 1)
            assert getattr(call.bridge.realtime, "renewals", 0) == (1 if planned else 0)
            assert call.metric("sipagent_realtime_reconnects_total") == (0 if planned else 1)
            assert call.metric("sipagent_realtime_renewals_total") == (1 if planned else 0)
            assert call.bridge.state == "live" and not call.events("failure")

    run(main())


def test_a_server_that_stops_answering_pings_is_left_within_seconds(tmp_path: Path) -> None:
    """A hung server (TCP up, nothing read: no pong) was found by websockets' defaults only after 40-50 s of
    dead air; now within about 12 s, and the call goes on on a new session."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            hung_at = time.monotonic()
            server.conns[0].ws.transport.pause_reading()  # no more reading: our pings go unanswered
            await call.until(lambda: len(server.conns) >= 2 and call.bridge.realtime.link is not None, 20,
                             "a new session")
            assert time.monotonic() - hung_at < 14
            assert call.bridge.reconnects == 1
            server.conns[0].ws.transport.resume_reading()  # the hung side may close at once on the way out

    run(main())


def test_a_server_that_never_says_session_created_is_not_a_session(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the greeting was asked of a server that had accepted the WebSocket and then said nothing, and
    the caller heard silence for the whole call. Now a session that has sent no event at all within
    SESSION_START_TIMEOUT_S is given up on (not waited for before the greeting: no latency for live ones),
    and the greeting is asked again of a new session."""
    monkeypatch.setattr(session_module, "SESSION_START_TIMEOUT_S", 1.0, raising=False)

    async def main() -> None:
        async with realtime_server() as server:
            server.silent.add(1)
            async with bridged(server, tmp_path) as call:
                await call.until(lambda: call.media.audio_frames() >= 5, 8, "the greeting")
                assert len(server.conns) == 2 and server.conns[1].responses == 1
                assert "response.create" in server.conns[0].types()  # asked of the silent one first
                assert call.bridge.state == "live" and call.bridge.reconnects == 1

    run(main())


def test_an_oversize_message_from_the_server_costs_a_reconnect_not_the_call(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sipagent.realtime.client as client_module

    monkeypatch.setattr(client_module, "MAX_MESSAGE_BYTES", 200_000)

    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            await server.conns[0].send({"type": "response.output_audio.delta", "delta": "A" * 300_000})
            await call.until(lambda: len(server.conns) >= 2 and call.bridge.realtime.link is not None, 5,
                             "a new session")
            assert call.bridge.reconnects == 1 and call.bridge.state == "live"

    run(main())


# --- responses that do not complete, errors that end nothing ----------------------------------------------


@pytest.mark.parametrize(("status", "details", "logged"), [
    ("failed", {"type": "failed", "error": {"type": "server_error", "code": "server_error", "message": "oops"}},
     "Realtime response failed (server_error): oops"),
    ("failed", {"type": "failed", "error": {"type": "requests", "code": "rate_limit_exceeded",
                                            "message": "Rate limit reached. Please try again in 1.5s."}},
     "Realtime response failed (rate_limit_exceeded): Rate limit reached. Please try again in 1.5s."),
    ("incomplete", {"type": "incomplete", "reason": "max_output_tokens"},
     "Realtime response incomplete (max_output_tokens)"),
    ("incomplete", {"type": "incomplete", "reason": "content_filter"}, "Realtime response incomplete (content_filter)"),
    ("cancelled", {"type": "cancelled", "reason": "turn_detected"}, None),
])
def test_a_response_that_does_not_complete(tmp_path: Path, caplog: pytest.LogCaptureFixture, status: str,
                                           details: dict[str, Any], logged: str | None) -> None:
    """What came of it plays, nothing stays 'active', the next response plays; a failed or incomplete one is
    said in the log (once per cause: the server may repeat it every turn) and a failed one counted. Before:
    not a word of it anywhere, and a caller left without an answer was a mystery."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            conn = server.conns[0]
            for _ in range(3):
                before = call.media.audio_frames()
                await conn.respond(ms=120, status=status, details=details)
                await call.until(lambda: not call.bridge.responses.active, 2, "the response's end")
                await call.until(lambda b=before: call.media.audio_frames() >= b + 6, 2, "what came of it")
            await conn.respond(ms=200)
            await call.until(lambda: call.media.buffered_ms == 0 and not call.bridge.responses.active, 3, "the end")
            assert call.bridge.state == "live"
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Realtime response")]
            if logged is None:
                assert not [r for r in caplog.records if r.levelno >= logging.INFO
                            and r.getMessage().startswith("Realtime response")]
            elif status == "failed":
                warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                          and r.getMessage().startswith("Realtime response")]
                assert warned == [logged], lines
                code = details["error"]["code"]
                assert call.metric(f'sipagent_realtime_errors_total{{code="{code}"}}') == 3
                assert len(call.events("response-failed")) == 3
            else:
                assert logged in lines
                assert len(call.events("response-incomplete")) == 3

    with caplog.at_level(logging.DEBUG, logger="sipagent"):
        run(main())


@pytest.mark.parametrize("code", ["input_audio_buffer_commit_empty", "conversation_already_has_active_response",
                                  "rate_limit_exceeded"])
def test_errors_that_end_nothing_are_logged_once_and_all_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 code: str) -> None:
    """OpenAI sends some errors turn after turn (input_audio_buffer_commit_empty after each response is a
    known one). Before: a WARNING line each time. Now one, then DEBUG; the metric counts each, and the call
    goes on."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            conn = server.conns[0]
            for _ in range(30):
                await conn.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                            "message": "Expected at least 100ms of audio, but "
                                                                       "buffer only has 0.00ms of audio."}})
            before = call.media.audio_frames()
            await conn.respond(ms=200)
            await call.until(lambda: call.media.audio_frames() >= before + 8, 3, "the next answer")
            assert call.metric(f'sipagent_realtime_errors_total{{code="{code}"}}') == 30
            warnings = [r for r in caplog.records
                        if r.levelno >= logging.WARNING and "Realtime error" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            assert call.bridge.state == "live" and call.bridge.reconnects == 0

    with caplog.at_level(logging.DEBUG, logger="sipagent"):
        run(main())


# --- barge-in truncation against the server -----------------------------------------------------------------


def test_a_refused_truncate_costs_nothing_but_a_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The caller interrupts: the item is truncated at the milliseconds heard (never more than was played),
    and the response cancelled. A server that refuses the truncate (an error event) does not end the call; the
    next answer plays."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path, greeting="") as call:
            await call.until(lambda: server.conns and call.bridge.state == "live", 5, "the session")
            conn = server.conns[0]

            async def refuse(conn: Conn, event: dict[str, Any]) -> None:
                if event["type"] == "conversation.item.truncate":
                    await conn.send({"type": "error", "error": {
                        "type": "invalid_request_error", "code": "invalid_value", "param": "audio_end_ms",
                        "message": "Audio content of 880ms is already shorter than 1000ms"}})
                else:
                    await server.default(conn, event)

            server.script = refuse
            await conn.send({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}})
            for _ in range(25):  # 2 s of audio, sent faster than it plays
                await conn.delta("r1", "i1", 80)
            await call.until(lambda: call.media.played_ms >= 600, 3, "some of it heard")
            call.bridge.interruptions.key_pressed(time.monotonic())  # as a key during an entry: no VAD to wait for
            await call.until(lambda: "conversation.item.truncate" in conn.types(), 2, "the truncate")
            truncate = next(e for e in conn.received if e["type"] == "conversation.item.truncate")
            played = call.media.played_ms
            assert truncate["item_id"] == "i1" and 500 <= truncate["audio_end_ms"] <= played, (truncate, played)
            await conn.delta("r1", "i1", 80)  # in flight before the server took the cancel: not played
            await conn.done("r1", "i1", "cancelled", details={"type": "cancelled", "reason": "client_cancelled"})
            await asyncio.sleep(0.2)
            assert call.media.buffered_ms == 0
            before = call.media.audio_frames()
            await conn.respond(ms=200)
            await call.until(lambda: call.media.audio_frames() >= before + 8, 3, "the next answer")
            assert call.bridge.state == "live"

    with caplog.at_level(logging.DEBUG, logger="sipagent"):
        run(main())


# --- a server that streams slower than the audio plays --------------------------------------------------------


def gaps(heard: list[tuple[float, bool]], since: float, until: float) -> int:
    """Runs of silence between two audio frames heard in [since, until]."""
    frames = [audio for at, audio in heard if since <= at <= until]
    first = frames.index(True) if True in frames else len(frames)
    last = len(frames) - 1 - frames[::-1].index(True) if True in frames else -1
    return sum(1 for i in range(first + 1, last + 1) if frames[i] and not frames[i - 1])


def test_audio_streamed_slower_than_it_plays_is_not_chopped_into_frames(tmp_path: Path) -> None:
    """A loaded server sends 60 ms of audio every 80 ms. Played as it came, the caller heard a 20 ms hole
    every three frames (about 35 in three seconds: choppy, robotic speech); now, after the first underrun,
    the item's audio is gathered before it plays on, so the unavoidable silence comes as a few pauses."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            await greeted(call, server)
            conn = server.conns[0]
            await conn.send({"type": "response.created", "response": {"id": "slow", "status": "in_progress"}})
            start = time.monotonic()
            for _ in range(40):
                await conn.delta("slow", "s1", 60)
                await asyncio.sleep(0.08)
            await conn.done("slow", "s1", text="A slow answer.")
            await call.until(lambda: call.media.buffered_ms == 0 and not call.bridge.responses.active, 5, "its end")
            heard = call.media.audio_frames(since=start)
            assert heard >= 115, heard  # all 2.4 s of it was played
            assert gaps(call.media.heard, start, time.monotonic()) <= 8, gaps(call.media.heard, start, time.monotonic())

    run(main())
