"""The model as an attacker: a caller's words steer it (and a backend may misbehave), so every tool call is
hostile. These tests drive a call's bridge (sipagent.bridge.call, fake line and media, no backend) with the
tool calls such a model could make, and check what reaches the line, the webhook, the transcript and the
model: arguments that are not JSON numbers or text, floods, tools during a transfer, repeated transfers,
too many keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipagent.bridge import webhook
from sipagent.bridge.call import BridgeSettings, CallBridge, RealtimeLink
from sipagent.bridge.settings import AgentConfig, DtmfConfig, RecordingConfig, ToolConfig
from sipagent.bridge.tool_runner import MAX_KEYS_SENT, MAX_TOOL_CALLS, MAX_TOOLS_IN_FLIGHT, MAX_TRANSFERS
from sipagent.bridge.tools import parse_arguments, run_webhook
from sipagent.bridge.webhook import Response
from sipagent.realtime.events import SessionSettings
from sipagent.testing.call_leg import StubCallLeg

DESK = "sip:600@127.0.0.1"
SERVICE = ToolConfig("lookup_order", url="http://127.0.0.1:9/orders",
                     parameters={"type": "object", "properties": {"order_id": {"type": "string"}}})


class FakeMedia:
    """The call's media leg, reduced to what tools use."""

    codec = "PCMU"
    played_ms = 0
    buffered_ms = 0
    packets_received = 0
    dtmf_method = "rfc4733"

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.dtmf_sending = False

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self.keys.append(digit)

    def push_audio(self, payload: bytes) -> None: ...
    def flush_audio(self) -> int: return 0
    def pause_audio(self) -> None: ...
    def resume_audio(self) -> None: ...
    def duck_audio(self, gain: float) -> None: ...
    def unduck_audio(self) -> None: ...
    def media_report(self) -> dict[str, int | float | None]: return {}


class FakeCall(StubCallLeg):
    """The caller's SIP call; ``transfer`` waits for ``refer_answer`` (the PBX's NOTIFY) when it is given;
    hanging up changes nothing (these tests look at what the model is sent, not at the call's end)."""

    def __init__(self) -> None:
        super().__init__("abuse-test")
        self.refers: list[str] = []
        self.refer_answer: asyncio.Future[bool] | None = None

    async def hangup(self) -> None: ...

    async def transfer(self, target: str, timeout: float = 30) -> bool:
        self.refers.append(target)
        return await self.refer_answer if self.refer_answer is not None else False


class Bridge:
    """A call's bridge with the events it sends the model kept in ``sent``."""

    def __init__(self, tools: list[ToolConfig], tmp_path: Path | None = None) -> None:
        async def no_backend() -> RealtimeLink:
            raise OSError("not in these tests")

        agent = AgentConfig(tools=tools, transfer_target=DESK, dtmf=DtmfConfig(tone_ms=40))
        recording = RecordingConfig(dir=str(tmp_path), transcripts=True) if tmp_path else RecordingConfig(
            transcripts=False)
        self.call = FakeCall()
        self.media = FakeMedia()
        self.bridge = CallBridge(self.call, self.media, no_backend,  # type: ignore[arg-type]
                                 BridgeSettings(agent=agent, recording=recording, session=SessionSettings()))
        self.tools = self.bridge.tools
        self.sent: list[dict[str, Any]] = []
        self.tools.session.send = self.sent.append  # type: ignore[method-assign,assignment]

    async def call_tool(self, name: str, arguments: Any, call_id: str = "c1") -> None:
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        await self.tools.run(name, call_id, raw)

    def outputs(self) -> list[dict[str, Any]]:
        return [json.loads(e["item"]["output"]) for e in self.sent if e["type"] == "conversation.item.create"]

    def responses_created(self) -> int:
        return sum(e["type"] == "response.create" for e in self.sent)


async def settle(until: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not until():
            await asyncio.sleep(0.005)


def fake_service(monkeypatch: pytest.MonkeyPatch, body: bytes = b'{"status": "shipped"}',
                 gate: asyncio.Event | None = None) -> list[str]:
    """The webhook client replaced: each request is recorded, held until ``gate`` opens, answered ``body``."""
    requests: list[str] = []

    async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        requests.append(url)
        if gate is not None:
            await gate.wait()
        return Response(200, "OK", [("Content-Type", "application/json")], body)

    monkeypatch.setattr(webhook, "request", request)
    return requests


# ---------------------------------------------------------------- arguments that are not JSON values


@pytest.mark.parametrize("raw", [
    '{"order_id": NaN}', '{"order_id": Infinity}', '{"order_id": -Infinity}', '{"order_id": 1e400}',
    '{"order_id": "\\ud800"}', '{"\\udc00": "7721"}', '{"order_id": ["\\ud83d"]}',
    '{"target": "sales", "target": "billing"}', '{"a": {"b": 1, "b": 2}}',
])
def test_arguments_that_are_no_json_numbers_no_text_or_name_a_key_twice_are_refused(raw: str) -> None:
    """NaN and 1e400 would be written as NaN/Infinity into a webhook's body (not JSON); a lone surrogate
    cannot be written as UTF-8 (the transcript); a repeated key is read as its last value by us, maybe as
    its first by whoever reads the raw arguments."""
    with pytest.raises(ValueError):
        parse_arguments(raw)


def test_numbers_and_characters_that_are_json_values_pass() -> None:
    assert parse_arguments('{"n": 1.5e300, "m": -0.0, "s": "\\ud83d\\ude00 Zo\\u00eb"}') == {
        "n": 1.5e300, "m": -0.0, "s": "\U0001f600 Zoë"}


def test_a_lone_surrogate_in_arguments_is_answered_and_the_transcript_stays_utf8(tmp_path: Path) -> None:
    """Before: writing the tool_call entry raised UnicodeEncodeError, the tool call went unanswered (the
    model waited) and the task died with an exception nobody read."""

    async def body() -> None:
        rig = Bridge([ToolConfig("lookup_order", url="builtin:demo-orders")], tmp_path)
        await rig.call_tool("lookup_order", '{"order_id": "\\ud800"}')
        assert rig.outputs() and rig.outputs()[0]["error"].startswith("bad arguments"), rig.sent
        rig.tools.records.transcript.close()  # type: ignore[union-attr]

    asyncio.run(body())
    (path,) = tmp_path.glob("*.jsonl")
    entries = [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]
    assert [e["type"] for e in entries] == ["tool_result"], entries


def test_a_service_answer_with_a_lone_surrogate_reaches_the_model(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that cuts a string in the middle of a surrogate pair (JavaScript's slice) answers valid
    JSON with no character in it: it is mended (U+FFFD) instead of failing the transcript and the call's
    answer to the model."""
    fake_service(monkeypatch, b'{"name": "Zo\\ud83d", "items": ["\\udc00x"]}')

    async def body() -> None:
        result = await run_webhook(SERVICE, {"order_id": "7721"}, "call-1")
        assert result.ok and result.output == {"name": "Zo\ufffd\ufffd\ufffd", "items": ["\ufffd\ufffd\ufffdx"]}
        rig = Bridge([SERVICE], tmp_path)
        await rig.call_tool("lookup_order", {"order_id": "7721"})
        assert rig.outputs() == [result.output] and rig.responses_created() == 1, rig.sent
        rig.tools.records.transcript.close()  # type: ignore[union-attr]

    asyncio.run(body())
    (path,) = tmp_path.glob("*.jsonl")
    types = [json.loads(line)["type"] for line in path.read_bytes().decode("utf-8").splitlines()]
    assert types == ["tool_call", "tool_result"], types


def test_a_made_up_tool_name_is_echoed_bounded() -> None:
    async def body() -> None:
        rig = Bridge([SERVICE])
        await rig.call_tool("x" * 100_000, {})
        assert rig.outputs() == [{"error": "unknown tool " + "x" * 64}]

    asyncio.run(body())


# ---------------------------------------------------------------- floods


def test_webhook_tools_running_at_once_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every tool call started its request at once (50 connections to the service from one call,
    each held up to the tool's timeout_s); now MAX_TOOLS_IN_FLIGHT do, the others are told to wait."""
    gate = asyncio.Event()
    requests = fake_service(monkeypatch, gate=gate)

    async def body() -> None:
        rig = Bridge([SERVICE])
        calls = [asyncio.ensure_future(rig.call_tool("lookup_order", {"order_id": str(i)}, f"c{i}"))
                 for i in range(50)]
        await settle(lambda: len(rig.outputs()) == 50 - MAX_TOOLS_IN_FLIGHT)
        assert len(requests) == MAX_TOOLS_IN_FLIGHT
        assert all("running already" in output["error"] for output in rig.outputs())
        gate.set()
        await asyncio.gather(*calls)
        assert len(requests) == MAX_TOOLS_IN_FLIGHT and rig.tools.in_flight == 0
        await rig.call_tool("lookup_order", {"order_id": "7721"})  # room again
        assert len(requests) == MAX_TOOLS_IN_FLIGHT + 1 and rig.outputs()[-1] == {"status": "shipped"}

    asyncio.run(body())


def test_tool_calls_per_call_are_bounded_and_the_last_start_no_response() -> None:
    """A model in a loop (each result starts a response, which calls the tool again) is stopped: past
    MAX_TOOL_CALLS each call gets an error, no new response and no transcript line."""

    async def body() -> None:
        rig = Bridge([ToolConfig("lookup_order", url="builtin:demo-orders")])
        for i in range(MAX_TOOL_CALLS):
            await rig.call_tool("lookup_order", {"order_id": "7721"}, f"c{i}")
        assert rig.responses_created() == MAX_TOOL_CALLS and rig.outputs()[-1]["status"] == "shipped"
        for i in range(50):
            await rig.call_tool("lookup_order", {"order_id": "7721"}, f"more{i}")
        assert rig.responses_created() == MAX_TOOL_CALLS
        assert rig.outputs()[-1] == {"error": f"no more tools in this call (at most {MAX_TOOL_CALLS})"}
        assert len(rig.tools.uses) == MAX_TOOL_CALLS

    asyncio.run(body())


# ---------------------------------------------------------------- transfers


def test_no_tool_acts_while_the_caller_is_being_transferred() -> None:
    """While the REFER is under way, the model's tool calls (another transfer, end_call, a webhook) are
    refused without a new response, and the call stays "transferring" (before: any tool call set it back to
    "live", so the idle prompt could speak to a caller on hold, and a second transfer sent a second REFER)."""

    async def body() -> None:
        rig = Bridge([ToolConfig("transfer_call"), ToolConfig("end_call"),
                      ToolConfig("lookup_order", url="builtin:demo-orders")])
        rig.call.refer_answer = asyncio.get_running_loop().create_future()
        await rig.call_tool("transfer_call", {"reason": "wants a human"}, "t1")
        await settle(lambda: rig.call.refers == [DESK])
        assert rig.bridge.state == "transferring"
        for name, args in (("transfer_call", {}), ("end_call", {}), ("lookup_order", {"order_id": "7721"})):
            await rig.call_tool(name, args, f"during-{name}")
            await asyncio.sleep(0.02)  # a pending built-in would have run by now
        rig.tools.on_dtmf("#", 100)  # a caller's key is not passed on either (it would start a response)
        await asyncio.sleep(0.02)
        assert rig.call.refers == [DESK] and rig.bridge.state == "transferring"
        assert rig.tools.pending is None and not rig.bridge.call_state.done.is_set()
        assert rig.responses_created() == 0, rig.sent
        assert all("being transferred" in output["error"] for output in rig.outputs())
        rig.call.refer_answer.set_result(False)  # the PBX refused it: the caller is the agent's again
        await settle(lambda: rig.responses_created() == 1)
        assert rig.bridge.state == "live" and rig.outputs()[-1] == {"error": "the transfer to default failed"}

    asyncio.run(body())


def test_a_webhook_that_answers_during_a_transfer_starts_no_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its result goes into the conversation, but a response now would talk over the hold (or, in a warm
    transfer, to the person being briefed)."""
    gate = asyncio.Event()
    fake_service(monkeypatch, gate=gate)

    async def body() -> None:
        rig = Bridge([ToolConfig("transfer_call"), SERVICE])
        rig.call.refer_answer = asyncio.get_running_loop().create_future()
        lookup = asyncio.ensure_future(rig.call_tool("lookup_order", {"order_id": "7721"}, "w1"))
        await rig.call_tool("transfer_call", {}, "t1")
        await settle(lambda: rig.call.refers == [DESK])
        gate.set()
        await lookup
        assert rig.outputs() == [{"status": "shipped"}] and rig.responses_created() == 0, rig.sent
        rig.call.refer_answer.set_result(True)
        await settle(lambda: rig.bridge.call_state.done.is_set())

    asyncio.run(body())


def test_transfer_attempts_per_call_are_bounded() -> None:
    """Each failed attempt rang a desk; a caller could have the model try again and again."""

    async def body() -> None:
        rig = Bridge([ToolConfig("transfer_call")])
        for attempt in range(1, MAX_TRANSFERS + 1):
            await rig.call_tool("transfer_call", {}, f"t{attempt}")
            await settle(lambda n=attempt: len(rig.outputs()) == n)  # type: ignore[misc]
        assert rig.call.refers == [DESK] * MAX_TRANSFERS
        await rig.call_tool("transfer_call", {}, "one-more")
        await asyncio.sleep(0.02)
        assert rig.call.refers == [DESK] * MAX_TRANSFERS
        assert rig.outputs()[-1]["error"].startswith(f"{MAX_TRANSFERS} transfers were tried")

    asyncio.run(body())


# ---------------------------------------------------------------- keys


def test_keys_sent_per_call_are_bounded() -> None:
    """32 keys a tool call, one call at a time, and MAX_KEYS_SENT a call: a caller cannot have the agent try
    PIN after PIN on an IVR for the whole call."""

    async def body() -> None:
        rig = Bridge([ToolConfig("send_dtmf")])
        for _ in range(MAX_KEYS_SENT // 32):
            assert (await rig.tools.send_dtmf({"digits": "1234567890" * 3 + "##"})).ok
        assert len(rig.media.keys) == MAX_KEYS_SENT
        refused = await rig.tools.send_dtmf({"digits": "1"})
        assert not refused.ok and f"at most {MAX_KEYS_SENT} keys" in refused.output["error"]
        assert len(rig.media.keys) == MAX_KEYS_SENT

    asyncio.run(body())
