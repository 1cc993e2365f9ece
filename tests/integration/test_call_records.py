"""What operators see of every call (sipagent_calls_total/_active, the transcript's end, call.ended, the `call
ended` line) on the paths off the beaten track: a call cancelled twice as it hangs up, a call refused for want
of an RTP port, a call placed by the agent that is hung up on while it listens for a machine, cancelled while
it rings, or never dialed for want of a port.

Real calls over loopback: our SipCaller dials the agent; for calls the agent places, a second agent in this
process answers them (or a few lines of raw SIP that only ring)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import bridge_config, call_rig

from sipagent.agent import MESSAGE_LEFT, Agent
from sipagent.bridge.call_events import CallEvent
from sipagent.outbound.calls import CallRequest, OutboundCall
from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import CallFailed

pytestmark = pytest.mark.timeout(60)


class Events:
    """Stands in for the process's EventSender: keeps what the agent emits."""

    def __init__(self) -> None:
        self.sent: list[CallEvent] = []

    def emit(self, event: CallEvent) -> None:
        self.sent.append(event)

    async def stop(self) -> None:
        return None

    def of(self, kind: str) -> list[CallEvent]:
        return [event for event in self.sent if event.type == kind]


def counted(agent: Agent, outcome: str) -> float:
    return agent.metrics.registry.get_sample_value("sipagent_calls_total", {"outcome": outcome}) or 0.0


def active(agent: Agent) -> float | None:
    return agent.metrics.registry.get_sample_value("sipagent_calls_active")


def transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def ends_well(entries: list[dict[str, Any]], reason: str) -> None:
    """The transcript starts with the call's start and ends with usage, media and the call's end."""
    assert entries[0]["type"] == "call" and entries[0]["event"] == "start", entries[:2]
    assert [e["type"] for e in entries[-3:]] == ["usage", "media", "call"], entries[-3:]
    assert entries[-1] == {**entries[-1], "event": "end", "reason": reason}
    assert "packets_received" in entries[-2]


def test_a_second_cancellation_while_the_call_hangs_up_still_counts_and_reports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A shutdown (or a DELETE) cancels the call's task; a second one (a repeated DELETE, a shutdown after a
    DELETE) lands while the bridge hangs up. The call is still counted once, leaves calls_active, sends its
    call.ended and logs its line."""
    caplog.set_level(logging.INFO, logger="sipagent.agent")

    async def main() -> None:
        async with call_rig(bridge_config(tmp_path), dial=False) as rig:
            events = Events()
            rig.agent.events = events  # type: ignore[assignment]
            await rig.caller.dial()
            await rig.agent_turn(timeout=15)
            assert active(rig.agent) == 1
            (task,) = rig.agent._calls
            state = rig.bridge.call_state
            finish = state.finish

            again = [True]

            def finish_and_cancel_again(outcome: str) -> None:
                finish(outcome)
                if asyncio.current_task() is task and again:  # the first cancellation is being handled: a second
                    again.clear()
                    task.cancel()

            state.finish = finish_and_cancel_again  # type: ignore[method-assign]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            assert active(rig.agent) == 0
            assert counted(rig.agent, "agent-hangup") == 1
            outcome = await rig.wait_outcome()
            assert outcome.reason == "agent-hangup" and outcome.transcript_path is not None
            ends_well(transcript(outcome.transcript_path), "agent-hangup")
            assert [e.type for e in events.sent] == ["call.started", "call.ended"]
            assert events.sent[1].data["outcome"] == "agent-hangup"

    asyncio.run(main())
    assert "call ended: agent-hangup" in caplog.text


def test_no_free_rtp_port_refuses_the_call_with_503_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sipagent.agent")

    async def main() -> None:
        async with call_rig(bridge_config(tmp_path), dial=False) as rig:
            with contextlib.suppress(Exception):
                while True:
                    rig.agent.ports.reserve()  # another program, or warm transfers, hold every port
            with pytest.raises(CallFailed, match="503"):
                await rig.caller.dial(timeout=5)
            assert counted(rig.agent, "error") == 1 and active(rig.agent) == 0
            rig.caller.answered_at = None  # nothing to wait for at the rig's end

    asyncio.run(main())
    assert "media.rtp_ports" in caplog.text and "Traceback" not in caplog.text


def test_a_message_left_is_counted_as_such(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bridge's end after a message left on a machine ("message-left") is an outcome of its own, not an
    error. Driven here on an inbound call told to end after its greeting, as an outbound call leaving its
    message is."""
    caplog.set_level(logging.WARNING, logger="sipagent.observability.metrics")

    async def main() -> None:
        async with call_rig(bridge_config(tmp_path), dial=False) as rig:
            settings = rig.agent._bridge_settings

            def ending_after_greeting(*args: Any, **kwargs: Any) -> Any:
                return dataclasses.replace(settings(*args, **kwargs), end_after_greeting=MESSAGE_LEFT)

            rig.agent._bridge_settings = ending_after_greeting  # type: ignore[method-assign]
            await rig.caller.dial()
            outcome = await rig.wait_outcome(timeout=15)
            assert outcome.reason == MESSAGE_LEFT
            assert counted(rig.agent, MESSAGE_LEFT) == 1 and counted(rig.agent, "error") == 0
            assert active(rig.agent) == 0

    asyncio.run(main())
    assert "unknown call outcome" not in caplog.text


# ---------------------------------------------------------------- calls the agent places


@contextlib.asynccontextmanager
async def two_agents(tmp_path: Path, **caller: dict[str, Any]) -> AsyncIterator[tuple[Agent, Agent, Events]]:
    """An agent that places calls (its events kept) and one that answers them, both on loopback."""
    placing = Agent(bridge_config(tmp_path / "placing", **caller))
    answering = Agent(bridge_config(tmp_path / "answering", agent={"greeting": ""}))
    await answering.start()
    await placing.start()
    events = Events()
    placing.events = events  # type: ignore[assignment]
    try:
        yield placing, answering, events
    finally:
        await placing.stop()
        await answering.stop()


async def until(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


def place(agent: Agent, to: str) -> OutboundCall:
    assert agent.outbound is not None
    return agent.outbound.calls.start(CallRequest(to=to, profile="default"))


async def ended(agent: Agent, call: OutboundCall) -> OutboundCall:
    assert agent.outbound is not None
    return await asyncio.wait_for(agent.outbound.calls.wait(call.id), 15)


def hung_up_and_recorded(placing: Agent, events: Events, tmp_path: Path) -> None:
    """The placing agent hung up an answered call and recorded it: counted, its call.ended, its transcript."""
    assert counted(placing, "agent-hangup") == 1 and active(placing) == 0
    (event,) = events.of("call.ended")
    assert event.data["outcome"] == "answered"
    (path,) = (tmp_path / "placing").glob("*.jsonl")
    ends_well(transcript(path), "agent-hangup")


@contextlib.asynccontextmanager
async def listening_call(tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent, Events, OutboundCall]]:
    """A call placed by one agent and answered by the other, silent: the placing agent listens for an
    answering machine (up to 6 s) when this yields."""
    async with two_agents(tmp_path, agent={"answering_machine": {"detect": True, "timeout_s": 6}}) as (
            placing, answering, events):
        call = place(placing, f"sip:agent@127.0.0.1:{answering.sip_address[1]}")
        await until(lambda: call.sip_call_id in answering.bridges, 10, "the callee's answer")
        yield placing, answering, events, call


def test_a_placed_call_hung_up_while_the_agent_listens_for_a_machine_is_recorded(tmp_path: Path) -> None:
    # Detection on, a silent callee: the agent listens for up to 6 s, and the callee hangs up meanwhile.
    async def main() -> None:
        async with listening_call(tmp_path) as (placing, answering, events, call):
            assert call.state == "answered" and not placing.bridges  # still listening
            assert active(placing) == 1
            await answering.bridges[call.sip_call_id].call.hangup()
            done = await ended(placing, call)
            assert done.outcome == "answered"
            assert counted(placing, "remote-hangup") == 1 and active(placing) == 0
            (event,) = events.sent
            assert event.type == "call.ended" and event.call_id == call.sip_call_id
            assert event.data["outcome"] == "answered" and event.data["media"] is not None
            assert event.data["duration_s"] > 0
            (path,) = (tmp_path / "placing").glob("*.jsonl")
            entries = transcript(path)
            ends_well(entries, "remote-hangup")
            assert event.data["transcript_path"] == str(path)
            assert any(e.get("event") == "outbound" for e in entries)

    asyncio.run(main())


def test_a_placed_conversation_counts_from_the_answer_and_its_transcript_starts_with_the_call(
    tmp_path: Path
) -> None:
    """Detection off: a conversation at once. The transcript's first entry is the call's start (the
    detector's entries after it), and the call counts as active from the answer on."""

    async def main() -> None:
        async with two_agents(tmp_path, agent={"answering_machine": {"detect": False}}) as (
                placing, answering, events):
            call = place(placing, f"sip:agent@127.0.0.1:{answering.sip_address[1]}")
            await until(lambda: call.sip_call_id in placing.bridges, 10, "the conversation")
            assert active(placing) == 1
            await answering.bridges[call.sip_call_id].call.hangup()
            done = await ended(placing, call)
            assert done.outcome == "answered"
            assert counted(placing, "remote-hangup") == 1 and active(placing) == 0
            assert [e.type for e in events.sent] == ["call.started", "call.ended"]
            (path,) = (tmp_path / "placing").glob("*.jsonl")
            entries = transcript(path)
            ends_well(entries, "remote-hangup")
            assert entries[1]["event"] == "outbound"

    asyncio.run(main())


class Ringing(asyncio.DatagramProtocol):
    """A phone that rings and never answers: 180 to an INVITE, 200 + 487 to its CANCEL."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.invite: dict[str, str] = {}
        self.cancelled = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        method = text.split(" ", 1)[0]
        headers: dict[str, str] = {}
        for line in text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        if method == "INVITE" and not self.invite:
            self.invite = headers
            self._reply(180, "Ringing", headers, addr)
        elif method == "CANCEL":
            self._reply(200, "OK", headers, addr)
            self._reply(487, "Request Terminated", self.invite, addr)
            self.cancelled.set()

    def _reply(self, status: int, reason: str, headers: dict[str, str], addr: tuple[str, int]) -> None:
        assert self.transport is not None
        to = headers["to"] + ("" if ";tag=" in headers["to"] else ";tag=ring1")
        text = (f"SIP/2.0 {status} {reason}\r\nVia: {headers['via']}\r\nFrom: {headers['from']}\r\nTo: {to}\r\n"
                f"Call-ID: {headers['call-id']}\r\nCSeq: {headers['cseq']}\r\nContent-Length: 0\r\n\r\n")
        self.transport.sendto(text.encode(), addr)


def test_a_placed_call_cancelled_while_it_rings_sends_call_ended(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        phone = Ringing()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: phone, sock=sock)
        try:
            async with two_agents(tmp_path) as (placing, _answering, events):
                call = place(placing, f"sip:phone@127.0.0.1:{sock.getsockname()[1]}")
                await until(lambda: call.state == "ringing", 10, "the phone to ring")
                assert placing.outbound is not None
                placing.outbound.calls.cancel(call.id)
                done = await ended(placing, call)
                assert done.outcome == "cancelled" and phone.cancelled.is_set()
                (event,) = events.sent
                assert event.type == "call.ended" and event.data["outcome"] == "cancelled"
                assert event.data["outbound_id"] == call.id
        finally:
            transport.close()

    asyncio.run(main())


def test_a_placed_call_without_an_rtp_port_sends_call_ended(tmp_path: Path) -> None:
    async def main() -> None:
        async with two_agents(tmp_path) as (placing, answering, events):
            placing.ports = PortAllocator(placing.ports.lo, placing.ports.lo + 1)
            placing.ports.reserve()
            call = place(placing, f"sip:agent@127.0.0.1:{answering.sip_address[1]}")
            done = await ended(placing, call)
            assert done.outcome == "failed" and "RTP port" in done.end_reason
            (event,) = events.sent
            assert event.type == "call.ended" and event.data["outcome"] == "failed"

    asyncio.run(main())


def test_shutdown_during_the_listening_hangs_up_and_records_the_call(tmp_path: Path) -> None:
    async def main() -> None:
        async with listening_call(tmp_path) as (placing, _, events, call):
            await placing.stop()
            assert call.finished and call.outcome == "answered"
            hung_up_and_recorded(placing, events, tmp_path)

    asyncio.run(main())


def test_a_second_delete_while_the_listening_call_hangs_up_still_records_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DELETE cancels the call while the agent listens for a machine; the hang-up's BYE takes a while (a callee
    gone quiet: up to 32 s), and a repeated DELETE cancels again meanwhile. Before: that second cancellation
    skipped the records, calls_active stayed at 1 for good, no count, no call.ended, no transcript."""
    from sipagent.sip.outgoing import OutgoingCall

    hangup = OutgoingCall.hangup

    async def slow_hangup(self: OutgoingCall) -> None:
        await asyncio.sleep(0.5)
        await hangup(self)

    monkeypatch.setattr(OutgoingCall, "hangup", slow_hangup)

    async def main() -> None:
        async with listening_call(tmp_path) as (placing, _, events, call):
            assert placing.outbound is not None
            placing.outbound.calls.cancel(call.id)
            await asyncio.sleep(0.2)  # the hang-up under way
            placing.outbound.calls.cancel(call.id)
            await ended(placing, call)
            hung_up_and_recorded(placing, events, tmp_path)

    asyncio.run(main())


def test_a_call_cancelled_while_it_waits_for_its_ack_is_counted(tmp_path: Path) -> None:
    """The agent answered (200 OK) and waits for the ACK when the call's task is cancelled (what a shutdown
    does to the calls still under way once the UA has stopped): before, it was never counted; now once, as
    cancelled."""
    from agent_helpers import OFFER, Udp, request

    async def main() -> None:
        agent = Agent(bridge_config(tmp_path))
        await agent.start()
        phone = Udp()
        try:
            target = agent.sip_address
            phone.send(request("INVITE", target, via=f"{phone.host}:{phone.port}",
                               body=OFFER.format(port=phone.port + 2)), target)
            await until(lambda: bool(agent._calls), 5, "the call under way")
            loop = asyncio.get_running_loop()
            answers: list[bytes] = []  # 100 Trying, 180, 200: never ACKed
            deadline = loop.time() + 10  # until the 200 (a fixed half second missed a loaded machine's)
            while not any(answer.startswith(b"SIP/2.0 200") for answer in answers) and loop.time() < deadline:
                answers += await loop.run_in_executor(None, phone.collect, 0.2)
            assert any(answer.startswith(b"SIP/2.0 200") for answer in answers), answers
            (task,) = agent._calls
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert counted(agent, "cancelled") == 1 and active(agent) == 0
        finally:
            phone.close()
            await agent.stop()

    asyncio.run(main())
