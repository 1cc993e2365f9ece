"""Several agents in one process: routes send each call to its profile, and the caller hears that profile.

In process: the agent (direct mode, offline backend) answers two numbers; two routes send them to two
profiles with different greetings, instructions and transfer targets. Each caller's audio is run through the
offline recogniser: the caller must hear its own line's greeting, and never the other's. A route on a header
the PBX sets wins over a later dialed-number route. Then a SIGHUP-style reload swaps the routes for new calls
while a call in progress keeps its profile.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import RecordingLink, Rig, bridge_config

from sipagent.agent import Agent
from sipagent.bridge.call import CallOutcome, RealtimeLink
from sipagent.bridge.routing import Route
from sipagent.config import Config
from sipagent.media.clock import MediaClock
from sipagent.media.vad import level_db
from sipagent.realtime.local.asr import GrammarRecognizer
from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import SipCaller

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]

SALES = "Thank you for calling the sales line. Which product would you like to buy today?"
SUPPORT = "You have reached technical support. Please tell me what is broken."
MAIN = "Hello, this is the main desk."  # the default profile's: a call routed nowhere would hear it
GREETINGS = [SALES, SUPPORT, MAIN]
LOUD_DB = -45.0


def two_line_config(tmp_path: Path) -> Config:
    return bridge_config(
        tmp_path,
        sip={"aliases": ["2001", "2002"]},
        agent={"greeting": MAIN, "transfer_targets": {"reception": "100"},
               "barge_in": {"protect_greeting_ms": 5000}},
        agents={"sales": {"greeting": SALES, "instructions": "You sell outdoor gear.",
                          "transfer_targets": {"orders": "300"}},
                "support": {"greeting": SUPPORT, "instructions": "You fix broken gear.",
                            "transfer_targets": {"repairs": "400"}}},
        routes=[{"dialed": "2001", "agent": "sales"}, {"dialed": "2002", "agent": "support"}],  # type: ignore[dict-item]
    )


class HeaderCaller(SipCaller):
    """Our caller, with headers of a PBX's own on its INVITE (X-Queue, as Asterisk's PJSIP_HEADER adds)."""


class Lines:
    """One agent, and callers that dial it by number; every session's events are kept per call."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.outcomes: list[CallOutcome] = []
        self.agent = Agent(config, on_call_end=lambda _id, outcome: self.outcomes.append(outcome))
        self.clock = MediaClock()
        self.sent: list[list[dict[str, Any]]] = []  # client events of each session, in connection order
        _, high = config.media.rtp_port_range
        self.ports = PortAllocator(high + 1, high + 20)

    async def start(self) -> None:
        await self.agent.start()
        self.clock.start()
        connect = self.agent._connect

        async def recording_connect() -> RealtimeLink:
            sent: list[dict[str, Any]] = []
            self.sent.append(sent)
            return RecordingLink(await connect(), sent, [])

        self.agent._connect = recording_connect  # type: ignore[method-assign]

    async def dial(self, number: str, headers: tuple[tuple[str, str], ...] = ()) -> Rig:
        caller = HeaderCaller(self.clock, self.ports, f"sip:{number}@127.0.0.1:{self.agent.sip_address[1]}",
                              codec="G722", host="127.0.0.1")
        caller.extra_headers = headers
        await caller.dial()
        return Rig(self.agent, caller, self.clock, self.outcomes)

    async def stop(self, *rigs: Rig) -> None:
        for rig in rigs:
            await rig.caller.hangup()
        await self.agent.stop()
        self.clock.stop()


def recognised(pcm24k: bytes) -> list[str]:
    """The recogniser's reading of each stretch of speech the caller heard (split at 0.5 s pauses)."""
    levels = [level_db(pcm24k[i:i + 960]) >= LOUD_DB for i in range(0, len(pcm24k) - 959, 960)]
    recognizer = GrammarRecognizer(GREETINGS)
    out: list[str] = []
    start: int | None = None
    quiet = 0
    for index, loud in enumerate([*levels, *[False] * 25]):
        if loud:
            start, quiet = (index if start is None else start), 0
        elif start is not None:
            quiet += 1
            if quiet == 25:
                out.append(recognizer.recognize(pcm24k[max(0, start - 20) * 960:index * 960]))
                start = None
    return out


async def greeting_heard(rig: Rig) -> list[str]:
    """Waits until the caller has heard the whole greeting; what the recogniser made of it."""
    await rig.agent_turn(timeout=30, quiet_s=1.0)
    return recognised(bytes(rig.caller.heard.pcm))


def start_record(rig: Rig) -> dict[str, Any]:
    return next(e for e in rig.entries("call") if e.get("event") == "start")


def test_two_numbers_reach_two_profiles_and_each_caller_hears_its_own(tmp_path: Path) -> None:
    asyncio.run(_two_numbers(tmp_path))


async def _two_numbers(tmp_path: Path) -> None:
    lines = Lines(two_line_config(tmp_path))
    await lines.start()
    sales = support = None
    try:
        sales = await lines.dial("2001")
        support = await lines.dial("2002")  # both calls at once: one process, two agents
        heard_sales, heard_support = await asyncio.gather(greeting_heard(sales), greeting_heard(support))
        sales_record, support_record = start_record(sales), start_record(support)
        assert (sales_record["profile"], sales_record["route"]) == ("sales", "route 1"), sales.summary()
        assert (support_record["profile"], support_record["route"]) == ("support", "route 2"), support.summary()
        body = lines.agent.metrics.render().decode()
        assert 'sipagent_profile_calls_total{account="",profile="sales"} 1.0' in body
        assert 'sipagent_profile_calls_total{account="",profile="support"} 1.0' in body
    finally:
        await lines.stop(*(rig for rig in (sales, support) if rig is not None))
    # What each caller heard, recognised: its own line's greeting, never the other's.
    assert any("sales line" in text for text in heard_sales), heard_sales
    assert all("support" not in text for text in heard_sales), heard_sales
    assert any("technical support" in text for text in heard_support), heard_support
    assert all("sales" not in text for text in heard_support), heard_support
    # Each session was given its profile's instructions and offered its profile's transfer targets only.
    updates = [next(e["session"] for e in sent if e["type"] == "session.update") for sent in lines.sent]
    by_instructions = {u["instructions"]: u for u in updates}
    assert set(by_instructions) == {"You sell outdoor gear.", "You fix broken gear."}
    for instructions, target in (("You sell outdoor gear.", "orders"), ("You fix broken gear.", "repairs")):
        tool = next(t for t in by_instructions[instructions]["tools"] if t["name"] == "transfer_call")
        assert tool["parameters"]["properties"]["target"]["enum"] == [target]


def test_a_reload_changes_the_routes_for_new_calls_only(tmp_path: Path) -> None:
    asyncio.run(_reload(tmp_path))


async def _reload(tmp_path: Path) -> None:
    config = two_line_config(tmp_path)
    lines = Lines(config)
    await lines.start()
    first = second = None
    try:
        first = await lines.dial("2001")
        await first.wait_for(lambda: first is not None and first.caller.call_id in lines.agent.bridges, 10,
                             "the first call's bridge")
        # The operator swaps the numbers and sends SIGHUP (run_agent's handler calls reload with the new file).
        swapped = bridge_config(tmp_path, sip={"aliases": ["2001", "2002"]},
                                agents={"sales": {"greeting": SALES}, "support": {"greeting": SUPPORT}},
                                routes=[{"dialed": "2001", "agent": "support"}])  # type: ignore[dict-item]
        lines.agent.reload(swapped)
        second = await lines.dial("2001")
        heard_first, heard_second = await asyncio.gather(greeting_heard(first), greeting_heard(second))
        assert start_record(first)["profile"] == "sales"  # in progress: keeps the profile it began with
        assert start_record(second)["profile"] == "support"
        assert first.bridge.settings.agent.greeting == SALES
    finally:
        await lines.stop(*(rig for rig in (first, second) if rig is not None))
    assert any("sales line" in text for text in heard_first), heard_first
    assert any("technical support" in text for text in heard_second), heard_second


def test_a_header_route_comes_before_the_dialed_number(tmp_path: Path) -> None:
    asyncio.run(_header_route(tmp_path))


async def _header_route(tmp_path: Path) -> None:
    config = two_line_config(tmp_path)
    # The PBX tags its queue with a header; the route that reads it comes first and wins over dialed 2001.
    config.routes.insert(0, Route(agent="support", header="x-queue", value="repair*"))
    lines = Lines(config)
    await lines.start()
    tagged = plain = None
    try:
        tagged = await lines.dial("2001", (("X-Queue", "repairs-2nd-level"),))
        plain = await lines.dial("2001", (("X-Queue", "sales"),))
        await asyncio.gather(greeting_heard(tagged), greeting_heard(plain))
        assert (start_record(tagged)["profile"], start_record(tagged)["route"]) == ("support", "route 1")
        assert (start_record(plain)["profile"], start_record(plain)["route"]) == ("sales", "route 2")
        # The UA kept the header the route reads (in the route's spelling) from each INVITE.
        assert lines.agent.ua is not None and lines.agent.ua.settings.context_headers == ["x-queue"]
    finally:
        await lines.stop(*(rig for rig in (tagged, plain) if rig is not None))
