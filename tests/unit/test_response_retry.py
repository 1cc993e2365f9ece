"""A failed Realtime response asked for again (sipagent.bridge.response_retry), driven by hand with a fake
clock: which failures, when, how many times in a row, what stops it, and what is sent (our own request again,
or a plain response.create for a response the server began on its own)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from sipagent.bridge.call import BridgeSettings, CallBridge, RealtimeLink
from sipagent.bridge.response_retry import (
    TAG,
    Line,
    NoRetry,
    ResponseRetries,
    Retry,
    Take,
    failure_code,
)
from sipagent.bridge.settings import AgentConfig, RecordingConfig
from sipagent.observability.metrics import Metrics
from sipagent.realtime import events as ev
from sipagent.testing.call_leg import StubCallLeg
from sipagent.testing.media_leg import QueueMediaLeg

GREETING = ev.say_exactly("Hello, how can I help?")
PLAIN = {"type": "response.create"}
LIVE = Line()


def failed(code: str | None = "rate_limit_exceeded", rid: str = "r1", **error: Any) -> dict[str, Any]:
    if code is not None:
        error["code"] = code
    return {"id": rid, "status": "failed", "status_details": {"type": "failed", "error": error}}


def completed(rid: str = "r9") -> dict[str, Any]:
    return {"id": rid, "status": "completed", "status_details": None}


def tag_of(event: dict[str, Any]) -> str:
    tag = event["response"]["metadata"][TAG]
    assert isinstance(tag, str)
    return tag


def server_turn(retries: ResponseRetries, rid: str = "r1", item: str = "caller_1") -> None:
    """The caller spoke and the server began its answer on its own (server VAD)."""
    retries.caller_spoke(item)
    retries.created({"id": rid})


def retry_of(verdict: Retry | NoRetry | None) -> Retry:
    assert isinstance(verdict, Retry), verdict
    return verdict


# --- which failures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("response", [
    failed("rate_limit_exceeded", type="tokens"),
    failed("server_error"),
    failed(None, type="server_error"),  # no code: the type names it
    failed(None),  # an error with nothing in it
    {"id": "r1", "status": "failed", "status_details": None},  # no details at all
    {"id": "r1", "status": "failed"},
])
def test_passing_failures_are_retried(response: dict[str, Any]) -> None:
    retries = ResponseRetries()
    server_turn(retries)
    retry = retry_of(retries.done(response, 10.0, LIVE))
    assert retry.code in ("rate_limit_exceeded", "server_error", "")
    assert retries.pending is retry


@pytest.mark.parametrize("code", ["invalid_request_error", "insufficient_quota", "content_policy_violation",
                                  "invalid_value"])
def test_other_failures_are_not(code: str) -> None:
    retries = ResponseRetries()
    server_turn(retries)
    verdict = retries.done(failed(code), 10.0, LIVE)
    assert isinstance(verdict, NoRetry) and not verdict.gave_up and code in verdict.reason
    assert retries.pending is None


@pytest.mark.parametrize("response", [
    completed(),
    {"id": "r1", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"}},
    {"id": "r1", "status": "incomplete", "status_details": {"type": "incomplete", "reason": "content_filter"}},
    {"id": "r1"},
])
def test_responses_that_did_not_fail_are_not_retried(response: dict[str, Any]) -> None:
    retries = ResponseRetries()
    server_turn(retries)
    assert retries.done(response, 10.0, LIVE) is None
    assert retries.pending is None


def test_a_response_the_caller_heard_part_of_is_not_retried() -> None:
    """Said again, the caller would hear its beginning twice."""
    retries = ResponseRetries()
    server_turn(retries)
    retries.audio()
    verdict = retries.done(failed(), 10.0, LIVE)
    assert isinstance(verdict, NoRetry) and "heard" in verdict.reason


def test_audio_counts_for_its_own_response_only() -> None:
    retries = ResponseRetries()
    server_turn(retries, "r1")
    retries.audio()
    assert retries.done(completed("r1"), 1.0, LIVE) is None
    server_turn(retries, "r2", "caller_2")
    assert isinstance(retries.done(failed(rid="r2"), 2.0, LIVE), Retry)


def test_a_failure_of_a_response_not_under_way_is_not_retried() -> None:
    retries = ResponseRetries()
    verdict = retries.done(failed(), 10.0, LIVE)  # no response.created came for it
    assert isinstance(verdict, NoRetry)
    server_turn(retries, "r1")
    assert isinstance(retries.done(failed(rid="other"), 10.0, LIVE), NoRetry)


def test_the_failure_code_is_the_servers_word_on_one_line() -> None:
    assert failure_code(failed("rate_limit_exceeded", type="tokens")) == "rate_limit_exceeded"
    assert failure_code(failed(None, type="server_error")) == "server_error"
    assert failure_code({"status_details": {"reason": "x\ny"}}) == "x\\ny"
    assert len(failure_code(failed("c" * 500))) == 60
    assert failure_code({"status_details": "odd"}) == failure_code({}) == ""


# --- when, and how many times ------------------------------------------------------------------------------


def test_one_second_then_two_then_it_gives_up() -> None:
    retries = ResponseRetries()
    server_turn(retries)
    first = retry_of(retries.done(failed(), 100.0, LIVE))
    assert (first.attempt, first.delay_s, first.due) == (1, 1.0, 101.0)
    assert retries.take(first, 100.9, LIVE) is Take.WAIT  # a timer that woke early: not yet
    assert retries.pending is first
    assert retries.take(first, 101.0, LIVE) is Take.SEND
    assert retries.pending is None and retries.streak == 1

    retries.created({"id": "r2"})  # the retry's response (its request: see the tests of requests below)
    second = retry_of(retries.done(failed(rid="r2"), 101.5, LIVE))
    assert (second.attempt, second.delay_s, second.due) == (2, 2.0, 103.5)
    assert retries.take(second, 103.5, LIVE) is Take.SEND

    retries.created({"id": "r3"})
    verdict = retries.done(failed(rid="r3"), 104.0, LIVE)
    assert isinstance(verdict, NoRetry) and verdict.gave_up
    assert retries.pending is None

    server_turn(retries, "r4", "caller_2")  # the caller asks again: still no retry until a response completes
    assert isinstance(retries.done(failed(rid="r4"), 110.0, LIVE), NoRetry)


def test_a_completed_response_ends_the_streak() -> None:
    retries = ResponseRetries()
    server_turn(retries)
    retries.take(retry_of(retries.done(failed(), 0.0, LIVE)), 1.0, LIVE)
    retries.created({"id": "r2"})
    retries.take(retry_of(retries.done(failed(rid="r2"), 1.5, LIVE)), 3.5, LIVE)
    assert retries.streak == 2
    retries.created({"id": "r3"})
    assert retries.done(completed("r3"), 4.0, LIVE) is None
    assert retries.streak == 0
    server_turn(retries, "r4", "caller_2")
    assert retry_of(retries.done(failed(rid="r4"), 9.0, LIVE)).delay_s == 1.0


def test_cancelled_and_incomplete_responses_do_not_end_the_streak() -> None:
    retries = ResponseRetries()
    server_turn(retries)
    retries.take(retry_of(retries.done(failed(), 0.0, LIVE)), 1.0, LIVE)
    retries.created({"id": "r2"})
    assert retries.done({"id": "r2", "status": "cancelled"}, 1.2, LIVE) is None
    assert retries.streak == 1


def test_a_dropped_retry_is_not_counted_in_the_streak() -> None:
    retries = ResponseRetries()
    server_turn(retries)
    retry = retry_of(retries.done(failed(), 0.0, LIVE))
    assert retries.take(retry, 1.0, Line(caller_speaking=True)) is Take.DROP
    assert retries.streak == 0


# --- what stops it -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "why"), [
    (Line(live=False), "no longer live"),
    (Line(held=True), "on hold"),
    (Line(live=False, held=True), "on hold"),
    (Line(connected=False), "reconnected"),
    (Line(responding=True), "another response"),
    (Line(caller_speaking=True), "caller is speaking"),
])
def test_nothing_is_retried_once_the_call_has_moved_on(line: Line, why: str) -> None:
    # When the delay is over...
    retries = ResponseRetries()
    server_turn(retries)
    retry = retry_of(retries.done(failed(), 0.0, LIVE))
    assert retries.take(retry, 1.0, line) is Take.DROP
    assert why in retries.why_not and retries.pending is None
    assert retries.take(retry, 5.0, LIVE) is Take.DROP  # for good
    # ... and when the failure comes.
    retries = ResponseRetries()
    server_turn(retries)
    verdict = retries.done(failed(), 0.0, line)
    assert isinstance(verdict, NoRetry) and why in verdict.reason and not verdict.gave_up


@pytest.mark.parametrize(("event", "why"), [
    (lambda r: r.caller_spoke("caller_2"), "caller spoke"),
    (lambda r: r.caller_spoke(), "caller spoke"),
    (lambda r: r.caller_said("caller_2"), "something new"),
    (lambda r: r.caller_said(None), "something new"),
    (lambda r: r.created({"id": "r2"}), "another response"),
    (lambda r: r.new_session(), "session was replaced"),
])
def test_what_happens_during_the_delay_drops_the_retry(event: Any, why: str) -> None:
    retries = ResponseRetries()
    server_turn(retries, "r1", "caller_1")
    retry = retry_of(retries.done(failed(), 0.0, LIVE))
    event(retries)
    assert retries.pending is None and why in retries.why_not
    assert retries.take(retry, 1.0, LIVE) is Take.DROP


def test_the_late_transcript_of_the_turn_it_answered_is_nothing_new() -> None:
    """The server's transcript of the caller's turn may come after the response to it failed."""
    retries = ResponseRetries()
    server_turn(retries, "r1", "caller_1")
    retry = retry_of(retries.done(failed(), 0.0, LIVE))
    retries.caller_said("caller_1")
    assert retries.take(retry, 1.0, LIVE) is Take.SEND


# --- what is sent: ours again, or a plain response.create ---------------------------------------------------


def test_a_request_leaves_tagged_and_the_original_is_kept() -> None:
    retries = ResponseRetries()
    original = ev.say_exactly("Hello.")
    copy = {**original, "response": dict(original["response"])}
    sent = retries.asked(original)
    assert original == copy  # not changed in place: a retry (or a dead session's resend) sends it afresh
    assert sent["response"]["instructions"] == original["response"]["instructions"]
    assert sent["response"]["tool_choice"] == "none"
    assert tag_of(sent) != tag_of(retries.asked(original))
    assert tag_of(retries.asked(ev.response_create())) and "instructions" not in retries.asked(PLAIN)["response"]
    kept = retries.asked({"type": "response.create", "response": {"metadata": {"topic": "x"}}})
    assert kept["response"]["metadata"]["topic"] == "x"


def test_ours_by_order_when_the_server_echoes_no_tag() -> None:
    """The local backend: no metadata in response.created; requests are answered in order."""
    retries = ResponseRetries()
    retries.asked(GREETING)
    retries.created({"id": "r1"})
    retry = retry_of(retries.done(failed(), 0.0, LIVE))
    assert retry.ours and retry.event == GREETING
    assert retries.take(retry, 1.0, LIVE) is Take.SEND
    retries.asked(retry.event)  # the retry leaves: it is ours again
    retries.created({"id": "r2"})
    again = retry_of(retries.done(failed(rid="r2"), 1.1, LIVE))
    assert again.ours and again.event == GREETING and again.delay_s == 2.0


def test_the_servers_own_response_is_asked_for_plainly() -> None:
    retries = ResponseRetries()
    retries.asked(GREETING)
    retries.created({"id": "r1"})
    assert retries.done(completed("r1"), 0.0, LIVE) is None
    server_turn(retries, "r2")
    retry = retry_of(retries.done(failed(rid="r2"), 5.0, LIVE))
    assert not retry.ours and retry.event == PLAIN


def test_ours_by_the_echoed_tag() -> None:
    """OpenAI echoes response.metadata: a response without our tag is the server's, even while a request of ours
    is on its way (it will be refused, or answered next)."""
    retries = ResponseRetries()
    prompt = ev.say_exactly("Are you still there?")
    greeting = retries.asked(GREETING)
    retries.created({"id": "r1", "metadata": greeting["response"]["metadata"]})
    retries.done(completed("r1"), 0.0, LIVE)
    sent = retries.asked(prompt)
    retries.created({"id": "r2", "metadata": None})  # the server's own (the caller spoke), before our prompt
    retry = retry_of(retries.done(failed(rid="r2"), 1.0, LIVE))
    assert not retry.ours and retry.event == PLAIN
    retries.created({"id": "r3", "metadata": sent["response"]["metadata"]})  # our prompt's
    assert retries.pending is None  # dropped: another response began
    retry = retry_of(retries.done(failed(rid="r3"), 1.5, LIVE))
    assert retry.ours and retry.event == prompt


def test_an_echoed_tag_skips_requests_that_were_refused() -> None:
    retries = ResponseRetries()
    first, second = ev.say_exactly("One."), ev.say_exactly("Two.")
    retries.asked(first)
    tagged = retries.asked(second)
    retries.created({"id": "r2", "metadata": tagged["response"]["metadata"]})
    assert retry_of(retries.done(failed(rid="r2"), 0.0, LIVE)).event == second
    retries.created({"id": "r3"})  # nothing of ours left to pair with, and the server echoes: its own
    assert retry_of(retries.done(failed(rid="r3"), 1.0, LIVE)).event == PLAIN


def test_a_refusal_undoes_a_wrong_pairing_by_order() -> None:
    """No echo: the server began its own response while our idle prompt was on its way; the order paired the
    two, and the prompt's refusal (conversation_already_has_active_response) tells it was not ours."""
    retries = ResponseRetries()
    retries.asked(ev.say_exactly("Are you still there?"))
    retries.created({"id": "r1"})  # the server's own, taken as the prompt's
    retries.refused()  # ... and the prompt refused
    retry = retry_of(retries.done(failed(rid="r1"), 0.0, LIVE))
    assert not retry.ours and retry.event == PLAIN


def test_a_refused_request_is_not_paired_with_a_later_response() -> None:
    retries = ResponseRetries()
    retries.asked(ev.say_exactly("Are you still there?"))
    retries.refused()
    server_turn(retries, "r2")
    assert retry_of(retries.done(failed(rid="r2"), 0.0, LIVE)).event == PLAIN


def test_a_new_session_forgets_what_was_asked_of_the_old_one() -> None:
    retries = ResponseRetries()
    retries.asked(GREETING)
    retries.new_session()
    server_turn(retries, "r1")
    assert retry_of(retries.done(failed(), 0.0, LIVE)).event == PLAIN


def test_requests_never_answered_are_not_kept_for_good() -> None:
    retries = ResponseRetries()
    for n in range(100):
        retries.asked(ev.say_exactly(f"{n}"))
    assert len(retries._asks) <= 16


# --- the bridge's side: what it tells the policy, and what it does with a retry ------------------------------


class _Link:
    async def send(self, event: dict[str, Any] | str) -> None:
        """Nothing leaves in these tests."""


def _live_bridge() -> CallBridge:
    async def no_backend() -> RealtimeLink:
        raise OSError("not in these tests")

    settings = BridgeSettings(agent=AgentConfig(), recording=RecordingConfig(transcripts=False),
                              session=ev.SessionSettings(), metrics=Metrics())
    bridge = CallBridge(StubCallLeg("retry"), QueueMediaLeg(), no_backend, settings)  # type: ignore[arg-type]
    bridge.realtime.link = _Link()  # type: ignore[assignment]
    bridge.call_state.set("live")
    return bridge


def _delta(rid: str, item: str) -> dict[str, Any]:
    audio = base64.b64encode(bytes(960)).decode()
    return {"type": "response.output_audio.delta", "response_id": rid, "item_id": item, "delta": audio}


def test_the_bridge_retries_a_failure_the_caller_heard_nothing_of() -> None:
    async def body() -> None:
        bridge = _live_bridge()
        bridge._handle({"type": "response.created", "response": {"id": "r1"}})
        bridge._handle({"type": "response.done", "response": failed(rid="r1")})
        retry = bridge.retries.pending
        assert retry is not None and retry.event == PLAIN and retry.delay_s == 1.0
        assert bridge._busy()  # no idle prompt while a retry waits
        # What waits for the agent to finish (the greeting's end, an end_call) waits for the retry.
        assert [getattr(task.get_coro(), "__qualname__", "") for task in bridge._tasks] == ["CallBridge._retry"]
        metrics = bridge.metrics
        assert metrics is not None
        assert b'sipagent_realtime_response_retries_total{code="rate_limit_exceeded"} 1.0' in metrics.render()
        started = bridge._handle({"type": "input_audio_buffer.speech_started", "item_id": "caller_2"})
        assert started is not None
        await started
        assert bridge.retries.pending is None and "caller spoke" in bridge.retries.why_not

    asyncio.run(body())


def test_the_bridge_does_not_retry_a_response_whose_audio_was_queued() -> None:
    async def body() -> None:
        bridge = _live_bridge()
        bridge._handle({"type": "response.created", "response": {"id": "r1"}})
        bridge._handle(_delta("r1", "item_1"))
        assert bridge.media.buffered_ms > 0
        bridge._handle({"type": "response.done", "response": failed(rid="r1")})
        assert bridge.retries.pending is None
        # Audio that was not queued for the caller (a response the caller cut off) does not count.
        bridge.responses.cut_id = "r2"
        bridge._handle({"type": "response.created", "response": {"id": "r2"}})
        bridge._handle(_delta("r2", "item_2"))
        bridge._handle({"type": "response.done", "response": failed(rid="r2")})
        assert bridge.retries.pending is not None

    asyncio.run(body())


def test_the_bridge_does_not_retry_once_the_call_is_on_its_way_out() -> None:
    async def body() -> None:
        for leave in ("closing", "transferring", "held"):
            bridge = _live_bridge()
            if leave == "closing":
                bridge.call_state.closing = "agent-hangup"
            elif leave == "transferring":
                bridge.tools.transferring = True
            else:
                bridge.set_hold(True, "sendonly")
            bridge._handle({"type": "response.created", "response": {"id": "r1"}})
            bridge._handle({"type": "response.done", "response": failed(rid="r1")})
            assert bridge.retries.pending is None, leave

    asyncio.run(body())


def test_codes_of_the_retry_metric_are_bounded() -> None:
    metrics = Metrics()
    metrics.response_retried("")
    metrics.response_retried("something else")
    text = metrics.render().decode()
    assert 'sipagent_realtime_response_retries_total{code="response_failed"} 1.0' in text
    assert 'sipagent_realtime_response_retries_total{code="other"} 1.0' in text
    assert 'sipagent_realtime_response_retries_total{code="server_error"} 0.0' in text


def test_a_server_that_refuses_the_tag_gets_the_request_again_untagged_and_no_more_tags() -> None:
    retries = ResponseRetries()
    greeting = ev.say_exactly("Hello.")
    assert "metadata" in retries.asked(greeting)["response"]
    assert retries.metadata_refused() == greeting  # the one refused, as it was before its tag
    assert retries.asked(greeting) == greeting and not retries.tagging
    assert retries.metadata_refused() == greeting and retries.metadata_refused() is None


def test_the_bridge_sends_a_request_refused_for_its_tag_again_untagged() -> None:
    """A "compatible" backend that takes no response.metadata would refuse every response.create: the greeting
    and every answer after it. Once refused, the request goes again without the tag, and so do later ones."""
    async def body() -> None:
        bridge = _live_bridge()
        greeting = ev.say_exactly("Hello.")
        assert "metadata" in bridge.realtime._outgoing(greeting)["response"]
        bridge._handle({"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                                                   "message": "Unknown parameter: 'response.metadata'.",
                                                   "param": "response.metadata"}})
        assert bridge.realtime.outbox.get_nowait() == greeting
        assert bridge.realtime._outgoing(greeting) == greeting  # no tag from now on
        bridge._handle({"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                                                   "message": "Unknown parameter: 'session.x'."}})
        assert bridge.realtime.outbox.empty()

    asyncio.run(body())


def test_retried_codes_and_their_metric_labels_agree() -> None:
    """metrics.py cannot import the bridge (a leaf layer): the two lists are kept the same by this test."""
    from sipagent.bridge.response_retry import TRANSIENT_CODES
    from sipagent.observability.metrics import RETRIED_CODES

    assert set(RETRIED_CODES) == TRANSIENT_CODES | {"response_failed"}
