"""The outbound flow around the dialer: ``dial`` against a fake UA shaped like UserAgent.dial, hanging up
on cancel, the answering-machine decision, ``sipagent call`` (its checks, its exit codes) and the
service the agent starts."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sipagent.bridge.settings import AnsweringMachineConfig
from sipagent.cli import main, parse_vars
from sipagent.config import Config, load_config_text
from sipagent.errors import SipagentError
from sipagent.outbound.answer import OutboundAnswer
from sipagent.outbound.calls import CallProgress, CallRequest, OutboundCalls, PlaceResult
from sipagent.outbound.control import start_outbound
from sipagent.outbound.dialing import dial, hold_until_end
from sipagent.outbound.one_call import EXIT_CODES, build_request, call_once, exit_code

CONFIG = """\
realtime: {provider: local}
sip: {listen: "127.0.0.1:5999", domain: pbx.example.com}
agent:
  answering_machine: {on_machine: leave_message, message: "Hi {var.name}, this is Northwind. Call us back."}
agents:
  sales: {}
"""


class DialError(SipagentError):
    def __init__(self, outcome: str, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.outcome, self.status, self.reason = outcome, status, reason


class FakeOutgoingCall:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.hangups = 0

    async def hangup(self) -> None:
        self.hangups += 1
        self.end_reason = "local hangup"
        self.ended.set()


class FakeUa:
    """Follows UserAgent.dial's contract: progress callbacks, DialError when not answered, CancelledError
    (the UA then sends CANCEL) when the awaiting task is cancelled."""

    def __init__(self, script: list[int], fail: DialError | None = None, ring_forever: bool = False) -> None:
        self.script = script
        self.fail = fail
        self.ring_forever = ring_forever
        self.dialed: list[dict[str, Any]] = []
        self.cancelled = False
        self.call = FakeOutgoingCall("abc@agent")

    async def dial(self, target: str, *, rtp_port: int, codecs: list[str] | None = None,
                   account: str | None = None, ring_timeout: float = 30.0,
                   headers: list[tuple[str, str]] | None = None,
                   on_progress: Callable[[int, Any], None] | None = None) -> FakeOutgoingCall:
        self.dialed.append({"target": target, "rtp_port": rtp_port, "account": account, "ring": ring_timeout})
        for status in self.script:
            assert on_progress is not None
            on_progress(status, None)
            await asyncio.sleep(0)
        try:
            if self.ring_forever:
                await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail is not None:
            raise self.fail
        return self.call


def placer(ua: FakeUa, seen: list[int]) -> Callable[[CallProgress], Any]:
    async def place(progress: CallProgress) -> PlaceResult:
        call = await dial(ua, progress, rtp_port=40000, account="sales-line", ring_timeout=20.0,
                          on_progress=lambda status, media: seen.append(status))
        reason = await hold_until_end(call)
        return PlaceResult("answered", reason)

    return place


REQUEST = CallRequest("sip:2002@pbx.example.com", "default")


def test_dial_reports_ringing_then_answered_and_the_call_id() -> None:
    async def scenario() -> None:
        ua, seen = FakeUa([100, 180, 183]), []
        calls = OutboundCalls(placer(ua, seen), max_calls=1, calls_per_second=10)
        call = calls.start(REQUEST)
        await asyncio.sleep(0.05)
        assert call.state == "answered" and call.sip_call_id == "abc@agent" and seen == [100, 180, 183]
        assert ua.dialed == [{"target": REQUEST.to, "rtp_port": 40000, "account": "sales-line", "ring": 20.0}]
        ua.call.end_reason = "remote hangup"
        ua.call.ended.set()
        done = await calls.wait(call.id)
        assert (done.outcome, done.end_reason) == ("answered", "remote hangup") and ua.call.hangups == 0

    asyncio.run(scenario())


def test_a_dial_error_is_the_outcome() -> None:
    async def scenario() -> None:
        ua = FakeUa([180], fail=DialError("no-answer", 487, "Request Terminated"))
        calls = OutboundCalls(placer(ua, []), max_calls=1, calls_per_second=10)
        done = await calls.wait(calls.start(REQUEST).id)
        assert (done.outcome, done.end_reason) == ("no-answer", "487 Request Terminated")

    asyncio.run(scenario())


def test_cancel_while_ringing_cancels_the_dial_and_after_the_answer_hangs_up() -> None:
    async def scenario() -> None:
        ringing = FakeUa([180], ring_forever=True)
        calls = OutboundCalls(placer(ringing, []), max_calls=1, calls_per_second=10)
        call = calls.start(REQUEST)
        await asyncio.sleep(0.02)
        calls.cancel(call.id)
        assert (await calls.wait(call.id)).outcome == "cancelled" and ringing.cancelled

        answered = FakeUa([180])
        calls = OutboundCalls(placer(answered, []), max_calls=1, calls_per_second=10)
        call = calls.start(REQUEST)
        await asyncio.sleep(0.02)
        calls.cancel(call.id)
        done = await calls.wait(call.id)
        assert done.outcome == "answered" and answered.call.hangups == 1

    asyncio.run(scenario())


def frames(audio: np.ndarray) -> list[bytes]:
    pcm = np.clip(audio, -32768, 32767).astype("<i2").tobytes()
    return [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]


def feed_all(answer: OutboundAnswer, audio: np.ndarray) -> Any:
    for i, frame in enumerate(frames(audio)):
        decision = answer.feed(frame, (i + 1) * 0.02)
        if decision is not None:
            return decision
    return None


def voice(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 8000)) / 8000
    out: np.ndarray = sum(np.sin(2 * np.pi * k * 140 * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t)) * t) / k
                          for k in range(1, 20)) * 3000 + rng.standard_normal(t.size) * 800
    return out


SILENCE = np.zeros(8000 * 3)


def test_detection_off_converses_at_once() -> None:
    answer = OutboundAnswer(AnsweringMachineConfig(detect=False), {})
    assert answer.decision is not None and answer.decision.action == "converse"
    assert answer.feed(b"\x00" * 320, 0.02) is None


def test_a_person_gets_the_conversation() -> None:
    decision = feed_all(OutboundAnswer(AnsweringMachineConfig(), {}), np.concatenate([voice(0.6), SILENCE]))
    assert (decision.action, decision.verdict) == ("converse", "human")


def test_a_machine_is_hung_up_on_or_gets_the_message_after_the_beep() -> None:
    greeting = np.concatenate([voice(5.0), SILENCE])
    decision = feed_all(OutboundAnswer(AnsweringMachineConfig(on_machine="hang_up"), {}), greeting)
    assert (decision.action, decision.verdict) == ("hang_up", "machine") and decision.at == pytest.approx(3.5, abs=0.05)

    beep = 8000 * np.sin(2 * np.pi * 1000 * np.arange(3200) / 8000)
    config = AnsweringMachineConfig(on_machine="leave_message", message="Hi {var.name}, call us back.")
    answer = OutboundAnswer(config, {"var.name": "Ada"})
    decision = feed_all(answer, np.concatenate([voice(2.0), np.zeros(4000), beep, SILENCE]))
    assert (decision.action, decision.verdict) == ("leave_message", "machine")
    assert decision.at == pytest.approx(2.9, abs=0.03)  # the beep's end
    assert decision.message == "Hi Ada, call us back."
    assert [event.kind for event in answer.events] == ["machine", "beep", "message"]


def config() -> Config:
    return load_config_text(CONFIG, "agent.yaml", {})


def test_requests_are_checked_like_the_api_does() -> None:
    request = build_request(config(), "2002", None, {"name": "Ada"})
    assert (request.to, request.profile, dict(request.variables)) == ("sip:2002@pbx.example.com", "default",
                                                                      {"name": "Ada"})
    assert build_request(config(), "sip:7@x.example", "sales", {}).profile == "sales"
    for target, profile, variables, problem in (
        ("sip:2002@pbx\r\nX: 1", None, {}, "to:"), ("2002", "nope", {}, "unknown profile"),
        ("2002", None, {"9": "x"}, "a name is letters"),
    ):
        with pytest.raises(ValueError, match=problem):
            build_request(config(), target, profile, variables)
    assert parse_vars(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    for bad in (["a"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_vars(bad)


def test_exit_codes_are_distinct_per_outcome() -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES) and EXIT_CODES["answered"] == 0
    assert not {1, 2} & set(EXIT_CODES.values())


class FakeAgent:
    def __init__(self, result: PlaceResult) -> None:
        self.result = result
        self.events: list[str] = []
        self.requests: list[CallRequest] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self, grace_s: float = 0.0) -> None:
        self.events.append("stop")

    async def place_outbound(self, progress: CallProgress) -> PlaceResult:
        self.requests.append(progress.request)
        progress.ringing()
        progress.answered()
        return self.result


@pytest.mark.parametrize(("result", "code"), [
    (PlaceResult("answered", "remote hangup", "human"), 0),
    (PlaceResult("machine", "message left", "machine", message_left=True), 0),
    (PlaceResult("machine", "hung up on a machine", "machine"), 15),
    (PlaceResult("busy", "486 Busy Here"), 10),
])
def test_call_once_starts_places_and_stops(result: PlaceResult, code: int) -> None:
    agent = FakeAgent(result)
    request = build_request(config(), "2002", "sales", {"name": "Ada"})
    call = asyncio.run(call_once(config(), request, lambda _: agent))
    assert agent.events == ["start", "stop"] and agent.requests == [request]
    assert call.outcome == result.outcome and exit_code(call) == code


def test_the_cli_refuses_bad_input_before_starting_anything(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG)
    assert main(["call", "-c", str(path), "sip:2002@pbx?Subject=x"]) == 2
    assert "URI headers" in capsys.readouterr().err
    assert main(["call", "-c", str(path), "2002", "--var", "novalue"]) == 2
    assert main(["call", "-c", str(path), "2002", "--profile", "nope"]) == 2
    assert main(["call", "-c", str(tmp_path / "missing.yaml"), "2002"]) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_start_outbound_listens_only_when_configured() -> None:
    async def scenario() -> None:
        agent = FakeAgent(PlaceResult("answered"))
        service = await start_outbound(config(), agent.place_outbound)
        assert service.server is None and service.calls.registry.max_calls == 4
        await service.close()
        port = free_port()
        text = CONFIG + f"control: {{listen: '{port}', token: tok-0123456789abcdef}}\noutbound: {{max_calls: 2}}\n"
        service = await start_outbound(load_config_text(text, "agent.yaml", {}), agent.place_outbound)
        try:
            assert service.server is not None and service.server.host == "127.0.0.1"
            assert service.calls.registry.max_calls == 2
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = json.dumps({"to": "2002", "profile": "sales"}).encode()
            writer.write(b"POST /v1/calls HTTP/1.1\r\nAuthorization: Bearer tok-0123456789abcdef\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert reply.startswith(b"HTTP/1.1 201 ")
            assert agent.requests[-1].to == "sip:2002@pbx.example.com"
            new = text.replace("sales: {}", "support: {}").replace("max_calls: 2", "max_calls: 3, calls_per_second: 5")
            service.reload(load_config_text(new, "agent.yaml", {}))
            assert service.calls.registry.max_calls == 3 and service.calls.registry.bucket.rate == 5
            assert service.server.api.profiles == {"default", "support"}
        finally:
            await service.close()

    asyncio.run(scenario())
