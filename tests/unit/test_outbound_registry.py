"""Outbound calls: admission under max_calls and the token bucket (fake clock), the state table, the
history bound, and the asyncio shell running a fake ``place`` (outcomes, dialer errors, cancel)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from sipagent.errors import RtpError, SipagentError
from sipagent.observability.metrics import Metrics
from sipagent.outbound.calls import (
    BadTransition,
    CallProgress,
    CallRefused,
    CallRegistry,
    CallRequest,
    OutboundCalls,
    PlaceResult,
    TokenBucket,
    retry_after_header,
)
from sipagent.outbound.target import TargetError, dial_uri

REQUEST = CallRequest("sip:2002@pbx.example.com", "default", {"name": "Ada"})


def registry(max_calls: int = 2, rate: float = 1.0, history: int = 3) -> CallRegistry:
    counter = itertools.count(1)
    return CallRegistry(max_calls=max_calls, calls_per_second=rate, history=history, now=0.0,
                        new_id=lambda: f"id{next(counter)}")


def test_token_bucket_refills_at_the_rate_and_caps_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert bucket.wait_s(0.25) == pytest.approx(0.25)
    assert bucket.wait_s(0.5) == 0.0
    bucket.take(0.5)
    assert bucket.wait_s(100.0) == 0.0  # a long idle saves up no more than the burst
    bucket.take(100.0)
    bucket.take(100.0)
    assert bucket.wait_s(100.0) > 0


def test_rate_limit_refuses_with_the_wait_and_takes_nothing() -> None:
    calls = registry(max_calls=10, rate=0.5)
    calls.admit(REQUEST, now=0.0, wall=1000.0)
    with pytest.raises(CallRefused) as info:
        calls.admit(REQUEST, now=1.0, wall=1001.0)
    assert info.value.reason == "rate" and info.value.retry_after_s == pytest.approx(1.0)
    assert retry_after_header(info.value.retry_after_s) == "1"
    assert calls.active == 1
    assert calls.admit(REQUEST, now=2.0, wall=1002.0).id == "id2"


def test_max_calls_refuses_until_a_call_ends() -> None:
    calls = registry(max_calls=2, rate=100.0)
    first = calls.admit(REQUEST, now=0.0, wall=0.0)
    calls.admit(REQUEST, now=1.0, wall=0.0)
    with pytest.raises(CallRefused) as info:
        calls.admit(REQUEST, now=2.0, wall=0.0)
    assert info.value.reason == "max_calls"
    calls.move(first, "dialing", 0.0)
    calls.end(first, PlaceResult("busy", "486 Busy Here"), 5.0)
    assert calls.admit(REQUEST, now=3.0, wall=0.0).state == "queued"


def test_states_follow_the_table() -> None:
    calls = registry()
    call = calls.admit(REQUEST, now=0.0, wall=10.0)
    assert calls.move(call, "dialing", 11.0)
    assert calls.move(call, "ringing", 12.0)
    assert not calls.move(call, "ringing", 12.5)  # a second 180: no change
    with pytest.raises(BadTransition):
        calls.move(call, "dialing", 13.0)
    calls.move(call, "answered", 14.0)
    assert call.answered_at == 14.0
    calls.end(call, PlaceResult("answered", "remote hung up"), 20.0)
    assert (call.state, call.outcome, call.ended_at) == ("ended", "answered", 20.0)
    with pytest.raises(BadTransition):
        calls.move(call, "answered", 21.0)
    body = call.to_json()
    assert body["state"] == "ended" and body["answered_at"] == "1970-01-01T00:00:14.000Z"
    assert body["to"] == REQUEST.to and body["end_reason"] == "remote hung up"


def test_history_keeps_the_newest_finished_calls() -> None:
    calls = registry(max_calls=10, rate=100.0, history=2)
    made = [calls.admit(REQUEST, now=float(i), wall=0.0) for i in range(3)]
    for call in made:
        calls.end(call, PlaceResult("no-answer"), 1.0)
    assert calls.get("id1") is None
    assert calls.get("id2") is made[1] and calls.get("id3") is made[2]


def test_ids_are_unguessable_by_default() -> None:
    calls = CallRegistry(max_calls=10, calls_per_second=100, history=10, now=0.0)
    ids = {calls.admit(REQUEST, now=float(i), wall=0.0).id for i in range(5)}
    assert len(ids) == 5 and all(len(i) >= 20 for i in ids)


class FakeDialError(SipagentError):
    """Shaped like sip's DialError: an outcome, a status and a reason."""

    def __init__(self, outcome: str, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.outcome, self.status, self.reason = outcome, status, reason


class FakeAgent:
    """A ``place`` that follows a script: ring, answer (or raise), then wait until told or cancelled."""

    def __init__(self) -> None:
        self.hangups: list[str] = []
        self.release = asyncio.Event()
        self.answered = asyncio.Event()
        self.error: Exception | None = None
        self.answer = True

    async def place(self, progress: CallProgress) -> PlaceResult:
        progress.sip_call_id("sip-call-1")
        progress.ringing()
        progress.ringing()  # a second 183: no change
        try:
            if self.error is not None:
                raise self.error
            if not self.answer:
                await asyncio.sleep(3600)
            progress.answered()
            progress.ringing()  # a 180 straggling in after the 200: ignored, not an error
            self.answered.set()
            await self.release.wait()
            return PlaceResult("answered", "remote hung up", "human")
        except asyncio.CancelledError:
            self.hangups.append(progress.call.state)
            raise


def shell(agent: FakeAgent, metrics: Metrics | None = None, max_calls: int = 2) -> OutboundCalls:
    return OutboundCalls(agent.place, max_calls=max_calls, calls_per_second=100, metrics=metrics)


def test_a_call_runs_to_its_outcome_and_is_counted() -> None:
    async def scenario() -> None:
        agent, metrics = FakeAgent(), Metrics()
        calls = shell(agent, metrics)
        call = calls.start(REQUEST)
        await agent.answered.wait()
        assert call.state == "answered" and call.sip_call_id == "sip-call-1" and calls.active == 1
        assert b"sipagent_outbound_active 1.0" in metrics.render()
        agent.release.set()
        done = await calls.wait(call.id)
        assert (done.outcome, done.answering_machine, done.success) == ("answered", "human", True)
        text = metrics.render()
        assert b'sipagent_outbound_calls_total{outcome="answered"} 1.0' in text
        assert b"sipagent_outbound_active 0.0" in text
        assert calls.active == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("outcome", "status", "reason"), [
    ("busy", 486, "Busy Here"), ("no-answer", 0, "ring timeout"), ("rejected", 603, "Decline"),
    ("failed", 503, "Service Unavailable"),
])
def test_dialer_errors_become_outcomes(outcome: str, status: int, reason: str) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        agent.error = FakeDialError(outcome, status, reason)
        calls = shell(agent)
        done = await calls.wait(calls.start(REQUEST).id)
        assert done.outcome == outcome and done.state == "ended" and not done.success
        assert (reason in done.end_reason) and (str(status) in done.end_reason if status else True)

    asyncio.run(scenario())


def test_an_unexpected_error_fails_the_call_without_leaking_it() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        agent.error = RuntimeError("secret detail")
        calls = shell(agent)
        done = await calls.wait(calls.start(REQUEST).id)
        assert done.outcome == "failed" and "secret detail" not in done.end_reason

    asyncio.run(scenario())


def test_cancel_before_the_answer_is_cancelled_and_after_it_hangs_up() -> None:
    async def scenario() -> None:
        ringing = FakeAgent()
        ringing.answer = False
        calls = shell(ringing)
        call = calls.start(REQUEST)
        await asyncio.sleep(0.01)
        assert call.state == "ringing"
        calls.cancel(call.id)
        done = await calls.wait(call.id)
        assert done.outcome == "cancelled" and ringing.hangups == ["ringing"]

        talking = FakeAgent()
        calls = shell(talking)
        call = calls.start(REQUEST)
        await talking.answered.wait()
        calls.cancel(call.id)
        done = await calls.wait(call.id)
        assert (done.outcome, done.end_reason) == ("answered", "hung up: cancelled by request")
        assert talking.hangups == ["answered"]
        assert calls.cancel(call.id) is done  # a finished call stays as it was
        assert calls.cancel("nope") is None

    asyncio.run(scenario())


def test_a_call_cancelled_before_its_task_ran_is_settled() -> None:
    async def scenario() -> None:
        agent, metrics = FakeAgent(), Metrics()
        calls = shell(agent, metrics, max_calls=1)
        call = calls.start(REQUEST)
        calls.cancel(call.id)  # before the task's first step: place never runs
        done = await asyncio.wait_for(calls.wait(call.id), 2)
        assert (done.state, done.outcome) == ("ended", "cancelled") and calls.active == 0
        assert b'sipagent_outbound_calls_total{outcome="cancelled"} 1.0' in metrics.render()
        assert calls.start(REQUEST).state == "queued"  # the slot is free again
        await calls.close()

    asyncio.run(scenario())


def test_close_ends_every_call_and_frees_the_slots() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        calls = shell(agent, max_calls=3)
        started = [calls.start(REQUEST) for _ in range(3)]
        await agent.answered.wait()
        with pytest.raises(CallRefused):
            calls.start(REQUEST)
        await calls.close()
        assert calls.active == 0 and all(call.finished for call in started)

    asyncio.run(scenario())


@pytest.mark.parametrize(("target", "uri"), [
    ("2002", "sip:2002@pbx.example.com"), ("+4930123456", "sip:+4930123456@pbx.example.com"),
    ("sip:2002@pbx.example.com", "sip:2002@pbx.example.com"), ("sip:2002@pbx;user=phone", "sip:2002@pbx;user=phone"),
])
def test_targets_are_extensions_or_sip_uris(target: str, uri: str) -> None:
    assert dial_uri(target, "pbx.example.com") == uri


def test_a_sips_target_needs_sip_over_tls() -> None:
    with pytest.raises(TargetError, match="sips"):
        dial_uri("sips:alice@example.org", "pbx.example.com")
    assert dial_uri("sips:alice@example.org", "pbx.example.com", tls=True) == "sips:alice@example.org"


@pytest.mark.parametrize("target", [
    "", "   ", 42, None, "sip:2002@pbx\r\nX-Evil: 1", "sip:2002@pbx?Subject=hi", "sip:a b@pbx", "<sip:2002@pbx>",
    'sip:"x"@pbx', "http://pbx/2002", "tel:+4930", "sip:" + "9" * 300 + "@pbx", "2002\n", "sip:2002@pbx\x00",
    "sip:2002@pbx;maddr=203.0.113.9", "sip:2002@pbx;METHOD=REGISTER", "sip:2002@pbx;lr", "sip:2002:secret@pbx",
])
def test_hostile_targets_are_refused(target: object) -> None:
    with pytest.raises(TargetError):
        dial_uri(target, "pbx.example.com")


def test_a_call_over_the_shared_sip_budget_is_refused_up_front() -> None:
    async def scenario() -> None:
        room = [False]
        calls = OutboundCalls(FakeAgent().place, max_calls=2, calls_per_second=100, sip_room=lambda: room[0])
        with pytest.raises(CallRefused) as refused:
            calls.start(REQUEST)
        assert refused.value.reason == "sip_max_calls" and "sip.max_calls" in str(refused.value)
        assert calls.active == 0  # nothing admitted, no token taken
        room[0] = True
        call = calls.start(REQUEST)
        calls.cancel(call.id)
        await calls.wait(call.id)

    asyncio.run(scenario())


def test_no_rtp_port_fails_the_call_with_words_the_operator_can_act_on() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        agent.error = RtpError("no bindable RTP port pair in 10000-10002 on 127.0.0.1")
        calls = shell(agent)
        done = await calls.wait(calls.start(REQUEST).id)
        assert done.outcome == "failed" and "no bindable RTP port pair in 10000-10002" in done.end_reason

    asyncio.run(scenario())
