"""Call events without I/O: their schema, the signature, what an answer means, the retry schedule and the
outbox's bound, all with a fake clock."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json

import pytest

from sipagent.bridge.call_events import (
    MAX_CONTEXT_VALUE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallEvent,
    CallEvents,
    CallSummary,
    Outbox,
    RetryPolicy,
    ToolUse,
    clean_context,
    iso_timestamp,
    retry_after_s,
    sign,
    signed_headers,
    verdict,
    verify,
)

SECRET = "0123456789abcdef0123"
WALL = 1_780_000_000.25  # a fixed wall clock (2026-05-28)


def _events() -> CallEvents:
    ids = (f"{n:032x}" for n in itertools.count(1))
    return CallEvents("abc@pbx", {"caller_uri": "sip:100@pbx", "dialed_uri": "sip:agent@pbx"}, "default",
                      lambda: next(ids))


def test_event_schema_is_the_same_envelope_for_every_type() -> None:
    events = _events()
    started = events.started(WALL, "PCMU")
    transferred = events.transferred(WALL + 5, "sales", "sip:601@pbx")
    ended = events.ended(WALL + 6, CallSummary(
        "transferred", 6.0004, [ToolUse("lookup_order", True), ToolUse("check_stock", False)], "sales",
        "sip:601@pbx", {"input_tokens": 120, "output_tokens": 80}, "/rec/a.jsonl", None,
        {"packets_received": 300, "loss_pct": 0.0, "remote_lost": None}))
    for sequence, event in enumerate((started, transferred, ended), start=1):
        body = json.loads(event.body())
        assert list(body) == ["version", "type", "id", "timestamp", "call_id", "sequence", "data"]
        assert body["version"] == 1 and body["call_id"] == "abc@pbx" and body["sequence"] == sequence
        assert body["data"]["profile"] == "default"
        assert body["data"]["context"] == {"caller_uri": "sip:100@pbx", "dialed_uri": "sip:agent@pbx"}
    assert len({started.id, transferred.id, ended.id}) == 3 and started.id.startswith("evt_")
    assert started.timestamp == "2026-05-28T20:26:40.250Z" == iso_timestamp(WALL)
    assert json.loads(started.body())["data"] == {"profile": "default", "direction": "inbound", "codec": "PCMU",
                                                  "context": started.data["context"]}
    assert transferred.data["target"] == "sales" and transferred.data["uri"] == "sip:601@pbx"
    data = json.loads(ended.body())["data"]
    assert data == {
        "profile": "default", "direction": "inbound", "context": data["context"], "outcome": "transferred",
        "duration_s": 6.0,
        "tool_calls": [{"name": "lookup_order", "ok": True}, {"name": "check_stock", "ok": False}],
        "tool_calls_total": 2, "transfer": {"target": "sales", "uri": "sip:601@pbx"},
        "usage": {"input_tokens": 120, "output_tokens": 80},
        "media": {"packets_received": 300, "loss_pct": 0.0, "remote_lost": None}, "transcript_path": "/rec/a.jsonl",
        "recording_path": None,
    }


def test_ended_without_transfer_or_usage_says_null() -> None:
    data = _events().ended(WALL, CallSummary("remote-hangup", 3.0)).data
    assert data["transfer"] is None and data["usage"] is None and data["media"] is None and data["tool_calls"] == []


def test_outbound_events_say_so_and_report_the_dial_outcome() -> None:
    ids = (f"{n:032x}" for n in itertools.count(1))
    events = CallEvents("out@pbx", {"dialed": "sip:2002@pbx", "variables": {"name": "Ada"}}, "sales",
                        lambda: next(ids), direction="outbound", outbound_id="Xy_12")
    started = events.started(WALL, "PCMU").data
    assert (started["direction"], started["outbound_id"]) == ("outbound", "Xy_12")
    assert started["context"]["variables"] == {"name": "Ada"}
    ended = events.ended(WALL + 9, CallSummary("machine", 9.0, answering_machine="machine", message_left=True)).data
    assert (ended["outcome"], ended["answering_machine"], ended["message_left"]) == ("machine", "machine", True)
    busy = events.ended(WALL, CallSummary("busy", 0.0)).data
    assert busy["answering_machine"] is None and busy["message_left"] is False
    inbound = _events().ended(WALL, CallSummary("remote-hangup", 3.0)).data
    assert "answering_machine" not in inbound and "outbound_id" not in inbound


def test_body_is_stable_bytes() -> None:
    event = _events().started(WALL, "G722")
    assert event.body() == event.body()
    assert b" " not in event.body()  # compact: what is signed is exactly what is sent


def test_context_from_the_wire_is_bounded() -> None:
    hostile = {f"k{i}": "x" * 5000 for i in range(100)}
    hostile["headers"] = {"X-Customer-Id": "\r\n<script>" + "y" * 1000, "nested": {"deep": 1}}
    cleaned = clean_context({"headers": hostile["headers"], **hostile, "n": float("nan"), "obj": object()})
    assert len(cleaned) == 32
    assert all(len(v) <= MAX_CONTEXT_VALUE for v in cleaned.values() if isinstance(v, str))
    assert len(cleaned["headers"]["X-Customer-Id"]) == MAX_CONTEXT_VALUE
    assert isinstance(cleaned["headers"]["nested"], str)  # one level of nesting, then text
    # JSON escapes what is left: the body stays one line of valid JSON.
    event = CallEvent("call.started", "evt_1", "t", "c", 1, {"context": cleaned})
    assert b"\r\n" not in event.body() and json.loads(event.body())["data"]["context"] == cleaned


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"type":"call.started"}'
    expected = hmac.new(SECRET.encode(), b"1780000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1780000000, body) == f"sha256={expected}"
    event = _events().started(WALL, "PCMU")
    headers = signed_headers(SECRET, event, event.body(), WALL)
    assert headers[TIMESTAMP_HEADER] == "1780000000"
    assert headers[SIGNATURE_HEADER] == sign(SECRET, 1780000000, event.body())
    assert headers["X-Sipagent-Event"] == "call.started" and headers["X-Sipagent-Event-Id"] == event.id


def test_verify_refuses_tampering_other_keys_and_replays() -> None:
    body = _events().started(WALL, "PCMU").body()
    signature = sign(SECRET, 1780000000, body)
    assert verify(SECRET, "1780000000", signature, body, now=1780000010)
    assert not verify(SECRET, "1780000000", signature, body + b" ", now=1780000010)
    assert not verify("another-secret-of-16+", "1780000000", signature, body, now=1780000010)
    assert not verify(SECRET, "1780000001", signature, body, now=1780000010)  # the timestamp is signed too
    assert not verify(SECRET, "1780000000", signature, body, now=1780000000 + 301)  # a replay, too late
    assert not verify(SECRET, "-5", signature, body, now=0) and not verify(SECRET, "", signature, body, now=0)


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (202, "delivered"), (204, "delivered"),
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"),
    (301, "rejected"), (400, "rejected"), (401, "rejected"), (404, "rejected"), (410, "rejected"),
])
def test_verdict(status: int, expected: str) -> None:
    assert verdict(status) == expected


def test_retry_after() -> None:
    assert retry_after_s("7") == 7.0 and retry_after_s(" 0 ") == 0.0
    assert retry_after_s(None) is None and retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(retries=10, backoff_s=1.0, window_s=1000)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(1, retry_after=10) == 10  # the receiver asked for more
    assert policy.delay(3, retry_after=1) == 4  # never less than the back-off
    assert policy.delay(1, retry_after=3600) == 60  # never beyond the cap
    assert RetryPolicy(backoff_s=0.5).delay(100) == 60  # no overflow on a long run


def test_outbox_schedule_with_a_fake_clock() -> None:
    box = Outbox(10, RetryPolicy(retries=2, backoff_s=1.0, window_s=100))
    event = _events().started(WALL, "PCMU")
    assert box.push(event, now=0.0) is not None and box.next_due() == 0.0
    first = box.take(0.0)
    assert first is not None and first.attempts == 1 and first.body == event.body()
    assert box.take(0.0) is None and box.next_due() is None  # being sent: not offered twice
    assert box.failed(first, now=0.5)  # retry 1 after 1 s
    assert box.next_due() == 1.5 and box.take(1.4) is None
    second = box.take(1.5)
    assert second is first and second.attempts == 2
    assert box.failed(second, now=2.0) and box.next_due() == 4.0  # retry 2 after 2 s
    third = box.take(4.0)
    assert third is not None and third.attempts == 3
    assert not box.failed(third, now=4.1)  # 1 + 2 retries used: given up
    assert len(box) == 0 and box.next_due() is None


def test_outbox_gives_up_when_the_window_is_used() -> None:
    box = Outbox(10, RetryPolicy(retries=10, backoff_s=4.0, window_s=10))
    assert box.push(_events().started(WALL, "PCMU"), now=0.0)
    delivery = box.take(0.0)
    assert delivery is not None and box.failed(delivery, now=1.0)  # due at 5
    delivery = box.take(5.0)
    assert delivery is not None and not box.failed(delivery, now=6.0)  # 6 + 8 > 0 + 10
    assert len(box) == 0


def test_outbox_is_bounded_and_done_frees_a_place() -> None:
    box = Outbox(3, RetryPolicy())
    events = _events()
    held = [box.push(events.started(WALL, "PCMU"), now=0.0) for _ in range(3)]
    assert all(held) and len(box) == 3
    assert box.push(events.started(WALL, "PCMU"), now=0.0) is None  # full: refused
    taken = box.take(0.0)
    assert taken is not None and box.push(events.started(WALL, "PCMU"), now=0.0) is None  # in flight counts
    box.done(taken)
    assert box.push(events.started(WALL, "PCMU"), now=0.0) is not None and len(box) == 3


def test_outbox_takes_the_earliest_due_and_hurries_on_shutdown() -> None:
    box = Outbox(10, RetryPolicy(retries=5, backoff_s=30.0))
    events = _events()
    a = box.push(events.started(WALL, "PCMU"), now=0.0)
    b = box.push(events.started(WALL, "PCMU"), now=1.0)
    assert a is not None and b is not None
    assert box.take(1.0) is a
    box.failed(a, now=1.0)  # due at 31
    assert box.take(2.0) is b
    box.failed(b, now=2.0)  # due at 32
    assert box.take(20.0) is None
    box.hurry(20.0)
    assert box.take(20.0) is a and box.take(20.0) is b
    assert [d.event.sequence for d in box.drain()] == [1, 2] and len(box) == 0
