"""The model's server is a peer too: every event the bridge handles, with its fields in any JSON shape, is
taken without an exception out of the handler, and a ``response.done`` of any shape ends the response (else
the call would wait for it: no end_call, no idle prompt, until its time limit). Labels a peer names (tool
names, error codes) are bounded in /metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dtmf_tools import FakeMedia, fake_bridge

from sipagent.observability.metrics import MAX_LABEL_VALUES, Metrics

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def shaped(*keys: str) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings with some of ``keys`` (the fields a handler reads), each of any shape."""
    return st.dictionaries(st.sampled_from(keys), JSON, max_size=len(keys))


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "response.output_audio.delta": shaped("delta", "item_id"),
    "response.done": st.fixed_dictionaries({"response": JSON | shaped("usage", "output", "status")}),
    "conversation.item.input_audio_transcription.completed": shaped("transcript", "item_id"),
    "response.output_audio_transcript.done": shaped("transcript", "item_id"),
    "session.updated": st.fixed_dictionaries({"session": JSON | shaped("audio", "output_audio_format", "type")}),
    "error": st.fixed_dictionaries({"error": JSON | shaped("code", "type", "message")}),
    "response.function_call_arguments.done": shaped("name", "call_id", "arguments"),
    "rate_limits.updated": shaped("rate_limits"),
}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(FIELDS)).flatmap(lambda kind: st.tuples(st.just(kind), FIELDS[kind])))
def test_any_shape_of_a_handled_event_is_taken_without_an_exception(event: tuple[str, dict[str, Any]]) -> None:
    kind, fields = event

    async def body() -> None:
        bridge = fake_bridge(FakeMedia())
        bridge.responses.created()
        bridge._handle({"type": kind, **fields})
        await asyncio.sleep(0)  # what the handler spawned runs its first step
        if kind == "response.done":
            assert not bridge.responses.active

    asyncio.run(body())


def test_an_unreadable_delta_is_dropped_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        media = FakeMedia()
        bridge = fake_bridge(media)
        with caplog.at_level(logging.WARNING):
            for delta in ("x", None, {"a": 1}, "x"):
                bridge._handle({"type": "response.output_audio.delta", "item_id": "i1", "delta": delta})
        assert [r.getMessage() for r in caplog.records if "delta" in r.getMessage()] == [
            "audio delta dropped: its audio is not base64 text"]

    asyncio.run(body())


def test_a_server_error_text_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        bridge = fake_bridge(FakeMedia())
        with caplog.at_level(logging.WARNING):
            bridge._handle({"type": "error", "error": {"code": "x\nINFO forged", "message": "a\r\nWARNING forged"}})
            bridge._handle({"type": "error", "error": "plain text"})
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Realtime error")]
        assert lines == ["Realtime error x\\nINFO forged: a\\r\\nWARNING forged", "Realtime error : plain text"]

    asyncio.run(body())


def test_labels_a_peer_names_are_bounded() -> None:
    metrics = Metrics()
    for n in range(MAX_LABEL_VALUES + 50):
        metrics.tool_called(f"made_up_{n}", "error")
        metrics.realtime_error(f"code_{n}")
    series = [line for line in metrics.render().decode().splitlines() if "_total{" in line]
    assert sum("made_up_" in line for line in series) == MAX_LABEL_VALUES
    assert sum('code="code_' in line for line in series) == MAX_LABEL_VALUES
    assert any('outcome="error",tool="other"} 50.0' in line for line in series)
    assert any('code="other"} 50.0' in line for line in series)
    metrics.tool_called("made_up_0", "ok")  # one already seen keeps its own series
    assert 'outcome="ok",tool="made_up_0"} 1.0' in metrics.render().decode()


def test_a_caller_who_hangs_up_while_the_session_connects_is_no_backend_failure() -> None:
    """The BYE came while the Realtime connection was being opened: the outcome is the caller's hang-up, not
    a fail-over (which would apologise to nobody and raise a backend alarm)."""

    async def body() -> str:
        bridge = fake_bridge(FakeMedia())

        async def connect() -> Any:
            bridge.call.ended.set()  # the caller's BYE, while we connect
            raise OSError("connection refused")

        bridge.realtime._connect = connect
        outcome = await asyncio.wait_for(bridge.run(), 10)
        return outcome.reason

    assert asyncio.run(body()) == "remote-hangup"


def test_one_key_both_signalled_and_heard_in_the_audio_is_one_press() -> None:
    async def body() -> list[str]:
        bridge = fake_bridge(FakeMedia())
        bridge.on_dtmf("5", 100)  # SIP INFO
        bridge._key_in_audio("5", 100)  # ... and its tones, left in the audio by the PBX
        bridge._key_in_audio("6", 100)
        bridge._key_in_audio("6", 100)  # pressed twice: both heard the same way
        bridge.on_dtmf("7", 100)
        return [digit for digit, _ in bridge.tools.typed]  # the keys on their way to the model

    assert asyncio.run(body()) == ["5", "6", "6", "7"]
