"""Several extensions from one process: two accounts register on a real Kamailio, and each call lands on
its account's profile.

The agent runs in process (offline backend) with ``sip.accounts`` only (no ``sip.username``); a baresip
phone, registered on the same Kamailio, dials each extension through the proxy (digest auth on both
sides). The second account authenticates with an ``auth_user`` of its own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import bridge_config
from peers import Baresip, Kamailio, wait_until

from sipagent.agent import Agent
from sipagent.bridge.call import CallOutcome

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

SALES = "Thank you for calling the sales line."
SUPPORT = "You have reached technical support."


def entries(outcome: CallOutcome, kind: str) -> list[dict[str, Any]]:
    assert outcome.transcript_path is not None
    lines = outcome.transcript_path.read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def test_two_accounts_register_and_each_call_lands_on_its_profile(
    kamailio: Kamailio, tmp_path: Path, baresip_available: None
) -> None:
    asyncio.run(asyncio.wait_for(_two_accounts(kamailio, tmp_path), 100))


async def _two_accounts(kamailio: Kamailio, tmp_path: Path) -> None:
    config = bridge_config(
        tmp_path,
        sip={"registrar": kamailio.address, "domain": "127.0.0.1", "username": "", "expires": 60,
             "accounts": [{"username": "7101", "password": "secret7101", "agent": "sales"},
                          {"name": "support", "username": "7102", "password": "secret7102",
                           "auth_user": "a7102", "agent": "support"}]},  # type: ignore[dict-item]
        agent={"greeting": "Hello, this is the main desk."},
        agents={"sales": {"greeting": SALES, "instructions": "You sell outdoor gear."},
                "support": {"greeting": SUPPORT, "instructions": "You fix broken gear."}},
    )
    outcomes: dict[str, CallOutcome] = {}
    agent = Agent(config, on_call_end=lambda call_id, outcome: outcomes.__setitem__(call_id, outcome))
    await agent.start()
    phone = Baresip(tmp_path / "phone", "7190", kamailio.address, codecs=["PCMU"])
    try:
        assert agent.ua is not None
        assert await agent.ua.wait_registered(15), agent.ua.registration_states
        assert agent.ua.registration_states == {"7101": "registered", "support": "registered"}
        for user in ("7101", "7102"):
            assert await asyncio.to_thread(kamailio.is_registered, user), user
        await phone.start()
        # The agent's once-a-second watch puts each account's state into the metrics.
        await wait_until(lambda: 'account="support",state="registered"} 1.0' in agent.metrics.render().decode(), 5)
        body = agent.metrics.render().decode()
        assert 'sipagent_registration_state{account="7101",state="registered"} 1.0' in body, body
        assert 'sipagent_registration_state{account="support",state="registered"} 1.0' in body, body
        for number in ("7101", "7102"):
            calls, ended = phone.count_events("CALL_CLOSED"), len(outcomes) + 1
            await phone.dial(f"sip:{number}@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 10), phone.event_types()
            # The greeting is written to the transcript once it has been played out: then hang up.
            assert await wait_until(lambda: any(
                bridge.transcript is not None and any(e.get("greeting") for e in bridge.transcript.entries)
                for bridge in agent.bridges.values()), 30), f"no greeting on {number}"
            await phone.hangup()
            assert await phone.wait_count("CALL_CLOSED", calls + 1, 10)
            assert await wait_until(lambda n=ended: len(outcomes) >= n, 10), f"the call to {number} did not end"
    finally:
        await phone.close()
        await agent.stop()
    first, second = outcomes.values()
    for outcome, (profile, route, greeting) in ((first, ("sales", "account 7101", SALES)),
                                                (second, ("support", "account support", SUPPORT))):
        start = entries(outcome, "call")[0]
        assert (start["event"], start["profile"], start["route"]) == ("start", profile, route), start
        said = [e["text"] for e in entries(outcome, "agent") if e.get("greeting")]
        assert said == [greeting], said
    body = agent.metrics.render().decode()
    assert 'sipagent_profile_calls_total{account="7101",profile="sales"} 1.0' in body
    assert 'sipagent_profile_calls_total{account="support",profile="support"} 1.0' in body
    # stop() unregistered both.
    for user in ("7101", "7102"):
        assert not await asyncio.to_thread(kamailio.is_registered, user), user
