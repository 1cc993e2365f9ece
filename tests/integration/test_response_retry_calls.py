"""A failed response asked for again, over a real WebSocket: the fake Realtime server of
realtime_fake fails a response (response.done, status failed) the way OpenAI does at its rate
limit, then answers normally; the bridge is the real one, its playout drained by a 20 ms task.

Before: the failure was logged and counted, and the caller heard nothing until the idle prompt."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from realtime_fake import Conn, Running, Server, bridged, realtime_server, run

pytestmark = pytest.mark.timeout(30)


async def fail(conn: Conn, code: str, kind: str, metadata: object = None) -> None:
    """A response that fails at once, with no output (as at a rate limit)."""
    conn.responses += 1
    rid = f"resp_{conn.n}_{conn.responses}"
    await conn.send({"type": "response.created",
                     "response": {"id": rid, "status": "in_progress", "output": [], "metadata": metadata}})
    await conn.send({"type": "response.done", "response": {
        "id": rid, "status": "failed", "output": [], "metadata": metadata,
        "status_details": {"type": "failed", "error": {"type": kind, "code": code,
                                                       "message": "Rate limit reached. Try again in 0.9s."}},
        "usage": {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0}}})


def creates(conn: Conn) -> list[dict[str, Any]]:
    return [e for e in conn.received if e["type"] == "response.create"]


async def caller_turn(call: Running, conn: Conn, item: str, code: str) -> None:
    """The caller speaks; the server (VAD) begins its answer on its own, which fails; the caller's transcript
    comes after the failure, as OpenAI's often does."""
    await conn.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": item})
    await conn.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2000, "item_id": item})
    await conn.send({"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": item})
    await fail(conn, code, "server_error" if code == "server_error" else "tokens")
    await conn.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                     "content_index": 0, "transcript": "What are your opening hours?"})


def test_a_failed_response_is_asked_for_again_and_heard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The greeting (our response.create) fails at the rate limit: 1 s later the same request goes again and
    the caller hears it. Then the caller's turn, answered by the server on its own, fails too: a plain
    response.create, and the caller hears the answer. The server here echoes response.metadata, as OpenAI
    does, for the greeting; the caller's turn is told apart by its missing tag."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            asked_at: list[float] = []

            async def script(conn: Conn, event: dict[str, Any]) -> None:
                if event["type"] == "response.create":
                    asked_at.append(time.monotonic())
                if event["type"] == "response.create" and len(creates(conn)) == 1:
                    await fail(conn, "rate_limit_exceeded", "tokens", event["response"].get("metadata"))
                else:
                    await Server.default(server, conn, event)

            server.script = script
            await call.until(lambda: server.conns and creates(server.conns[0]), 5, "the greeting asked for")
            conn = server.conns[0]
            await call.until(lambda: len(creates(conn)) == 2, 3, "the greeting asked for again")
            assert 0.95 <= asked_at[1] - asked_at[0] < 3, asked_at  # after 1 s (the schedule: the unit tests)
            first, again = creates(conn)
            assert again["response"]["instructions"] == first["response"]["instructions"]  # the greeting again
            assert again["response"]["metadata"] != first["response"]["metadata"]  # a request of its own
            await call.until(lambda: call.media.audio_frames() >= 10 and call.media.buffered_ms == 0, 3,
                             "the greeting heard")

            before = call.media.audio_frames()
            await caller_turn(call, conn, "caller_1", "server_error")
            await call.until(lambda: len(creates(conn)) == 3, 3, "the caller's answer asked for")
            assert "instructions" not in creates(conn)[2]["response"]  # a plain response.create
            await call.until(lambda: call.media.audio_frames() >= before + 10, 3, "the answer heard")

            retries = call.events("response-retry")
            assert [(e["code"], e["attempt"], e["request"]) for e in retries] == [
                ("rate_limit_exceeded", 1, "ours"), ("server_error", 1, "server")]
            assert call.metric('sipagent_realtime_response_retries_total{code="rate_limit_exceeded"}') == 1
            assert call.metric('sipagent_realtime_response_retries_total{code="server_error"}') == 1
            lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert "retrying the failed response in 1 s (rate_limit_exceeded)" in lines
            assert call.bridge.state == "live"

    with caplog.at_level(logging.INFO, logger="sipagent"):
        run(main())


def test_a_failure_that_does_not_pass_is_not_asked_for_again(tmp_path: Path) -> None:
    """The greeting fails for a cause that a retry would not cure (a bad request): no second response.create.
    A later failure that passes (the caller's turn, at the rate limit) is still asked for again, and the
    server that answers it echoes no tag (as the local backend)."""
    async def main() -> None:
        async with realtime_server() as server, bridged(server, tmp_path) as call:
            async def script(conn: Conn, event: dict[str, Any]) -> None:
                if event["type"] == "response.create" and len(creates(conn)) == 1:
                    await fail(conn, "invalid_request_error", "invalid_request_error")
                else:
                    await Server.default(server, conn, event)

            server.script = script
            await call.until(lambda: server.conns and server.conns[0].responses, 5, "the greeting's failure")
            conn = server.conns[0]
            await asyncio.sleep(1.3)  # longer than the first retry's delay
            assert len(creates(conn)) == 1 and not call.events("response-retry")

            await caller_turn(call, conn, "caller_1", "rate_limit_exceeded")
            await call.until(lambda: len(creates(conn)) == 2, 3, "the caller's answer asked for")
            await call.until(lambda: call.media.audio_frames() >= 10, 3, "the answer heard")
            assert [e["request"] for e in call.events("response-retry")] == ["server"]

    run(main())
