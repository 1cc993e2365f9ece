"""A warm transfer's briefing that ends early (the human hangs up while it plays, or it runs past its limit):
the model's briefing response is cancelled before the caller's line is the agent's again. Left to run, the
rest of it ("this is the virtual assistant with a caller...") played to the caller, and the response that
should tell them the colleague is gone was refused while it lasted (one response at a time)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from test_warm_transfer_sequence import LOG, URI, Dialer, FakeCaller, FakeDownlink, FakeHuman

from sipagent.bridge.conversation import Conversation
from sipagent.bridge.downlink import Downlink
from sipagent.bridge.session import RealtimeSession, Responses
from sipagent.bridge.settings import TransferConfig
from sipagent.bridge.warm import WarmTransfer


class StreamingSession:
    """A session whose briefing response starts (response.created) and streams until cancelled; the human
    hangs up after its first audio."""

    def __init__(self, downlink: FakeDownlink, responses: Responses, human: FakeHuman) -> None:
        self.link = object()
        self.downlink = downlink
        self.responses = responses
        self.human = human
        self.sent: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        if event["type"] == "response.cancel":
            asyncio.get_running_loop().call_soon(self.responses.done)
            return
        if self.downlink.divert is None:  # the hold message: spoken and done at once
            self.responses.done()
            return
        self.responses.created({"response": {"id": "resp_brief"}})
        self.downlink.divert(b"\x00\x01" * 480)
        self.human.call.ended.set()  # the human hangs up mid-briefing


class LateSession(StreamingSession):
    """The human hangs up before the briefing's response.created, which comes a moment later."""

    def send(self, event: dict[str, Any]) -> None:
        if event["type"] == "response.cancel" or self.downlink.divert is None:
            super().send(event)
            return
        self.sent.append(event)
        self.human.call.ended.set()  # gone at once (an IVR or queue that answers and drops)
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, self.responses.created, {"response": {"id": "resp_brief"}})


@pytest.mark.parametrize("session_type", [StreamingSession, LateSession])
def test_the_briefing_is_cancelled_when_the_human_hangs_up(session_type: type[StreamingSession]) -> None:
    """During it (StreamingSession), or before its response began (LateSession: before, nothing was active
    yet, so nothing was cancelled, the divert went, and the briefing, created a moment later, played to the
    caller)."""
    async def scenario() -> None:
        human = FakeHuman()
        downlink = FakeDownlink()
        responses = Responses(Conversation())
        session = session_type(downlink, responses, human)
        warm = WarmTransfer(TransferConfig(mode="warm", ring_timeout_s=7, briefing_limit_s=5),
                            FakeCaller(replaces=True), Dialer(human), cast(Downlink, downlink),
                            cast(RealtimeSession, session), responses, LOG)
        outcome = await warm.run(URI, "sales", "x")
        assert outcome.result == "unavailable" and "hung up" in outcome.detail
        assert [e for e in session.sent if e["type"] == "response.cancel"] == [
            {"type": "response.cancel", "response_id": "resp_brief"}]
        # Whatever of it is still in flight is dropped, and the agent may speak to the caller again.
        assert responses.cut_id == "resp_brief" and not responses.active
        assert downlink.divert is None and "briefing-cut" in warm.steps

    asyncio.run(asyncio.wait_for(scenario(), 10))
