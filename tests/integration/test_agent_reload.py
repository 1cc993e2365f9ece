"""SIGHUP on `sipagent run`: new profiles and routes for new calls; a bad file is refused, the old config stays.

The agent runs in its own process (demo configuration, direct mode, offline backend); the test rewrites its
file and sends SIGHUP as `systemctl reload` does, then dials and reads the profile from the call's
transcript start record.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_helpers import RunningAgent, running_agent
from peers import free_port

from sipagent.media.clock import MediaClock
from sipagent.rtp.ports import PortAllocator
from sipagent.testing.caller import SipCaller

pytestmark = [pytest.mark.timeout(120)]


def profile_of_a_call(agent: RunningAgent, rec: Path) -> str:
    """Dials 2001, hangs up after a second, and returns the profile of the call's transcript."""
    before = set(rec.glob("*.jsonl")) if rec.exists() else set()

    async def call() -> None:
        clock = MediaClock()
        clock.start()
        low = free_port(span=10)
        caller = SipCaller(clock, PortAllocator(low, low + 9), f"sip:2001@127.0.0.1:{agent.sip_port}")
        try:
            await caller.dial()
            await asyncio.sleep(1.0)
        finally:
            await caller.hangup()
            clock.stop()

    asyncio.run(call())
    deadline = time.monotonic() + 10
    while True:
        new = set(rec.glob("*.jsonl")) - before
        records = [json.loads(line) for path in new for line in path.read_text().splitlines() if line]
        ends = [r for r in records if r["type"] == "call" and r["event"] == "end"]
        if ends:
            return str(next(r for r in records if r["type"] == "call" and r["event"] == "start")["profile"])
        assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
        time.sleep(0.1)


def reload(agent: RunningAgent, path: Path, change: dict[str, Any], expect: str) -> None:
    """Rewrites the agent's file with ``change``, sends SIGHUP and waits for the log line ``expect``."""
    config = yaml.safe_load(path.read_text())
    config.update(change)
    path.write_text(yaml.safe_dump(config))
    seen = agent.log.read_text().count(expect)
    agent.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while agent.log.read_text().count(expect) == seen:
        assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
        time.sleep(0.1)


def test_sighup_reloads_profiles_and_routes_and_refuses_a_bad_file(tmp_path: Path) -> None:
    profiles = {"agents": {"sales": {"greeting": "Sales, hello."}}}
    with running_agent(tmp_path, {"aliases": ["2001"]}, sections=profiles) as agent:
        path, rec = tmp_path / "agent.yaml", tmp_path / "rec"
        assert profile_of_a_call(agent, rec) == "default"  # no routes yet
        reload(agent, path, {"routes": [{"dialed": "2001", "agent": "sales"}]}, "configuration reloaded")
        assert profile_of_a_call(agent, rec) == "sales"
        reload(agent, path, {"routes": [{"dialed": "2001", "agent": "nosuch"}]}, "reload refused")
        log = agent.log.read_text()
        assert 'routes[0].agent: unknown profile "nosuch"' in log
        assert profile_of_a_call(agent, rec) == "sales"  # the running configuration stayed
        assert agent.process.poll() is None
