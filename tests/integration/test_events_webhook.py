"""Call events over real HTTP: a receiver on 127.0.0.1 (an asyncio server in the test) gets the signed events
of real calls placed against the agent (SIP, RTP, the offline backend over its WebSocket); a dead or
silent receiver costs the call nothing, and its failures are counted once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml
from agent_helpers import running_agent
from bridge_helpers import bridge_config, call_rig
from peers import free_port, require
from sipp import sipp_scenario

from sipagent.bridge.call_events import CallEvents, CallSummary, verify
from sipagent.bridge.event_sender import EventSender
from sipagent.bridge.settings import EventWebhookConfig
from sipagent.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(90)
needs_speech = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                  reason="needs espeak-ng and sox")

SECRET = "test-secret-0123456789abcdef"
ROTATED = "rotated-secret-fedcba9876543210"
SENDER_LOGGER = "sipagent.bridge.event_sender"


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def signed(self, secret: str = SECRET) -> bool:
        return verify(secret, self.headers.get("x-sipagent-timestamp", ""),
                      self.headers.get("x-sipagent-signature", ""), self.body, now=time.time())


@dataclass
class Receiver:
    """An HTTP/1.1 receiver: answers each request with the next of ``statuses`` (the last one repeats);
    "hang" reads the request and never answers."""

    statuses: list[int | str] = field(default_factory=lambda: [200])
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _answers: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(time.monotonic(), lines[0].split(" ")[1], headers, body))
            status = self.statuses[min(self._answers, len(self.statuses) - 1)]
            self._answers += 1
            if status == "hang":
                await reader.read()  # until the client gives up and aborts the connection
                return
            extra = "Retry-After: 0\r\n" if status in (429, 503) else ""
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{extra}\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Each event once (a retried event arrives more than once with the same id)."""
        seen: dict[str, dict[str, Any]] = {}
        for request in self.requests:
            event = request.event
            seen.setdefault(event["id"], event)
        return [e for e in seen.values() if kind is None or e["type"] == kind]


@contextlib.asynccontextmanager
async def receiver(*statuses: int | str) -> AsyncIterator[Receiver]:
    rx = Receiver(list(statuses) or [200])
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    rx.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hooks/sipagent?tenant=7"
    try:
        yield rx
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


@contextlib.contextmanager
def receiver_thread(*statuses: int | str) -> Iterator[Receiver]:
    """The same receiver on its own event loop in a thread, for tests that drive a separate agent process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    context = receiver(*statuses)
    rx = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(5)
    try:
        yield rx
    finally:
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def counted(metrics: Metrics, kind: str, result: str) -> float:
    return metrics.registry.get_sample_value("sipagent_events_total", {"type": kind, "result": result}) or 0.0


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _hook(url: str, **keys: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, **keys}


def _events(call_id: str = "call-1@test") -> CallEvents:
    counter = itertools.count(1)
    return CallEvents(call_id, {"caller_uri": "sip:100@test"}, "default", lambda: f"{next(counter):08d}")


# --------------------------------------------------------------------------------------------------
# The sender alone, against the receiver


def test_sender_signs_retries_and_counts_each_event_once() -> None:
    asyncio.run(_sender_retries())


async def _sender_retries() -> None:
    async with receiver(503, 500, 200) as rx:
        metrics = Metrics()
        sender = EventSender(EventWebhookConfig(rx.url, SECRET, backoff_s=0.05, headers={"Authorization": "Bearer t"}),
                             metrics)
        sender.start()
        event = _events().started(time.time(), "PCMU")
        sender.emit(event)
        await wait_until(lambda: counted(metrics, "call.started", "delivered") == 1, 5, "the delivery")
        await sender.stop()
    assert len(rx.requests) == 3
    assert {r.event["id"] for r in rx.requests} == {event.id}  # the same event, for the receiver to de-duplicate
    assert all(r.body == event.body() and r.signed() for r in rx.requests)
    first = rx.requests[0]
    assert first.path == "/hooks/sipagent?tenant=7" and first.headers["authorization"] == "Bearer t"
    assert first.headers["x-sipagent-event"] == "call.started" and first.headers["x-sipagent-event-id"] == event.id
    assert first.headers["x-sipagent-call-id"] == "call-1@test"
    assert first.headers["content-type"] == "application/json"
    assert counted(metrics, "call.started", "failed") == 0


def test_a_4xx_is_not_retried_408_and_429_are() -> None:
    asyncio.run(_four_hundreds())


async def _four_hundreds() -> None:
    async with receiver(408, 429, 400) as rx:
        metrics = Metrics()
        sender = EventSender(EventWebhookConfig(rx.url, SECRET, backoff_s=0.05), metrics)
        sender.start()
        sender.emit(_events().started(time.time(), "PCMU"))
        await wait_until(lambda: counted(metrics, "call.started", "rejected") == 1, 5, "the rejection")
        await asyncio.sleep(0.3)  # nothing more comes
        await sender.stop()
    assert len(rx.requests) == 3


def test_reconfigure_moves_held_events_to_the_new_receiver_signed_with_the_new_secret() -> None:
    asyncio.run(_reconfigured())


async def _reconfigured() -> None:
    async with receiver(503) as old, receiver(200) as new:
        metrics = Metrics()
        sender = EventSender(EventWebhookConfig(old.url, SECRET, backoff_s=30.0), metrics)
        sender.start()
        held = _events().started(time.time(), "PCMU")
        sender.emit(held)
        # The 503 is settled: the event waits 30 s for its retry.
        await wait_until(lambda: len(old.requests) == 1 and sender.outbox.next_due() is not None, 5, "the 503")
        sender.reconfigure(EventWebhookConfig(new.url, ROTATED, events=["call.ended"], backoff_s=0.05))
        await wait_until(lambda: counted(metrics, "call.started", "delivered") == 1, 5, "the held event, moved")
        events = _events("call-2@test")
        sender.emit(events.started(time.time(), "PCMU"))  # no longer asked for
        sender.emit(events.ended(time.time(), CallSummary("remote-hangup", 1.0)))
        await wait_until(lambda: counted(metrics, "call.ended", "delivered") == 1, 5, "call.ended")
        await sender.stop()
    assert len(old.requests) == 1 and sender.receiver == new.url.split("/")[2]
    assert [r.event["type"] for r in new.requests] == ["call.started", "call.ended"]
    assert new.requests[0].event["id"] == held.id
    assert all(r.signed(ROTATED) and not r.signed(SECRET) for r in new.requests)


def test_a_full_queue_drops_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_full_queue(caplog))


async def _full_queue(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, SENDER_LOGGER)
    async with receiver("hang") as rx:
        metrics = Metrics()
        sender = EventSender(EventWebhookConfig(rx.url, SECRET, queue_size=2, timeout_s=30), metrics)
        sender.start()
        events = _events()
        started = time.monotonic()
        for _ in range(6):
            sender.emit(events.started(time.time(), "PCMU"))  # never blocks, however dead the receiver
        # emit() is synchronous on this loop, which also runs the receiver: an emit that waited for room
        # would never return, one that posted would sit out the 30 s timeout. Four dropped, not waited for.
        assert time.monotonic() - started < 5
        assert counted(metrics, "call.started", "dropped") == 4
        assert len(sender.outbox) == 2
        await wait_until(lambda: len(rx.requests) == 2, 5, "the two held events to be sent")
        began = time.monotonic()
        await sender.stop(flush_s=0.2)  # bounded: the receiver never answers
        assert time.monotonic() - began < 5  # not the attempts' 30 s timeout
    assert counted(metrics, "call.started", "dropped") == 6  # the two held ones too, at shutdown
    lines = [r for r in caplog.records if r.name == SENDER_LOGGER]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "queue_size" in lines[0].getMessage() and SECRET not in lines[0].getMessage()
    assert "tenant" not in lines[0].getMessage()  # the receiver is named by host and port only


def test_event_types_not_asked_for_are_not_sent() -> None:
    asyncio.run(_filtered())


async def _filtered() -> None:
    async with receiver(200) as rx:
        metrics = Metrics()
        sender = EventSender(EventWebhookConfig(rx.url, SECRET, events=["call.ended"]), metrics)
        sender.start()
        events = _events()
        sender.emit(events.started(time.time(), "PCMU"))
        sender.emit(events.transferred(time.time(), "sales", "sip:601@pbx"))
        await sender.stop()
    assert rx.requests == [] and counted(metrics, "call.started", "dropped") == 0


# --------------------------------------------------------------------------------------------------
# Real calls


@needs_speech
def test_a_call_sends_signed_started_and_ended(tmp_path: Path) -> None:
    asyncio.run(_call_events(tmp_path))


async def _call_events(tmp_path: Path) -> None:
    async with receiver(200) as rx:
        config = bridge_config(tmp_path, events={"webhook": _hook(rx.url)})
        async with call_rig(config) as rig:
            await wait_until(lambda: rx.events("call.started"), 5, "call.started")
            await rig.agent_turn()
            await rig.say("where is my order seven seven two one")
            await rig.wait_entry("agent", 25, lambda e: "shipped" in e["text"])
            await rig.agent_turn(quiet_s=0.3, new=False)
            await rig.caller.hangup()
            outcome = await rig.wait_outcome()
            await wait_until(lambda: rx.events("call.ended"), 5, "call.ended")
            metrics = rig.agent.metrics
    assert all(r.signed() for r in rx.requests)
    started, ended = rx.events()
    call_id = rig.caller.call_id
    assert started["type"] == "call.started" and ended["type"] == "call.ended"
    assert started["call_id"] == ended["call_id"] == call_id
    assert (started["sequence"], ended["sequence"]) == (1, 2) and started["id"] != ended["id"]
    assert started["version"] == 1 and started["timestamp"].endswith("Z")
    context = started["data"]["context"]
    assert context["caller_uri"].startswith("sip:") and context["dialed_uri"].startswith("sip:agent@127.0.0.1")
    assert context == ended["data"]["context"]
    assert started["data"]["profile"] == ended["data"]["profile"] == "default"
    assert started["data"]["codec"] == "G722"
    data = ended["data"]
    assert data["outcome"] == "remote-hangup" == outcome.reason
    assert 2 < data["duration_s"] < 60
    assert data["tool_calls"] == [{"name": "lookup_order", "ok": True}] and data["tool_calls_total"] == 1
    assert data["transfer"] is None
    assert isinstance(data["usage"], dict) and "output_tokens" in data["usage"]
    assert data["transcript_path"] == str(outcome.transcript_path) and Path(data["transcript_path"]).exists()
    assert data["recording_path"] is None
    media = data["media"]  # the call's RTP figures, as its transcript's media record has them
    assert media["packets_received"] > 100 and media["packets_sent"] > 100
    assert media["packets_lost"] == media["srtp_dropped"] == media["malformed"] == 0 and media["loss_pct"] == 0.0
    assert 0 <= media["jitter_ms"] < 50
    records = [json.loads(line) for line in Path(data["transcript_path"]).read_text().splitlines()]
    assert [r for r in records if r["type"] == "media"] == [{"type": "media", "t": ANY, "at": ANY, **media}]
    assert counted(metrics, "call.started", "delivered") == counted(metrics, "call.ended", "delivered") == 1


TRANSFER_INTENTS = [
    {"name": "human", "phrases": ["can i speak to a human"], "reply": "I will put you through.",
     "tool": {"name": "transfer_call", "arguments": {"target": "sales"}}},
]
SALES = "sip:sales@127.0.0.1:5098"


@needs_speech
def test_a_transfer_sends_call_transferred(tmp_path: Path) -> None:
    asyncio.run(_transfer(tmp_path))


async def _transfer(tmp_path: Path) -> None:
    async with receiver(200) as rx:
        config = bridge_config(tmp_path, realtime={"local": {"intents": TRANSFER_INTENTS}},
                               agent={"tools": [{"name": "transfer_call"}], "transfer_targets": {"sales": SALES}},
                               events={"webhook": _hook(rx.url)})
        async with call_rig(config) as rig:
            await rig.agent_turn()
            await rig.say("can i speak to a human")
            await rig.wait_for(rig.caller.ended.is_set, 20, "the agent to leave the call")
            outcome = await rig.wait_outcome()
            await wait_until(lambda: rx.events("call.ended"), 5, "call.ended")
    assert outcome.reason == "transferred"
    # Posted up to four at once (event_sender.CONCURRENCY): they may arrive in any order, and a receiver orders
    # them by their sequence (docs/configuration.md).
    events = sorted(rx.events(), key=lambda event: event["sequence"])
    assert [e["type"] for e in events] == ["call.started", "call.transferred", "call.ended"]
    assert [e["sequence"] for e in events] == [1, 2, 3] and all(r.signed() for r in rx.requests)
    (transferred,) = rx.events("call.transferred")
    assert transferred["data"]["target"] == "sales" and transferred["data"]["uri"] == SALES
    ended = rx.events("call.ended")[0]["data"]
    assert ended["outcome"] == "transferred" and ended["transfer"] == {"target": "sales", "uri": SALES}
    assert ended["tool_calls"] == [{"name": "transfer_call", "ok": True}]


@needs_speech
@pytest.mark.parametrize("dead", ["closed-port", "never-answers"])
def test_a_dead_receiver_costs_the_call_nothing(tmp_path: Path, dead: str, caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_dead_receiver(tmp_path, dead, caplog))


async def _dead_receiver(tmp_path: Path, dead: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, SENDER_LOGGER)
    async with receiver("hang") as rx:
        # Nothing listens on a fresh free port: connection refused.
        url = f"http://127.0.0.1:{free_port()}/events" if dead == "closed-port" else rx.url
        # One retry each; the silent receiver holds each attempt for its whole timeout (10 s), the closed
        # port refuses at once and the retry waits 10 s: a call that waited for its events would take 10 s
        # or more to be answered and to end, against the few seconds asserted below.
        config = bridge_config(tmp_path, agent={"greeting": "Hello.", "idle_timeout_s": 0},
                               events={"webhook": _hook(url, timeout_s=10.0, retries=1, shutdown_flush_s=0.5,
                                                        backoff_s=10.0 if dead == "closed-port" else 0.1)})
        async with call_rig(config, dial=False) as rig:
            began = time.monotonic()
            await rig.caller.dial()
            answer_s = time.monotonic() - began
            await rig.agent_turn()  # the greeting is heard while call.started is still failing
            hangup = time.monotonic()
            await rig.caller.hangup()
            outcome = await rig.wait_outcome()
            teardown_s = time.monotonic() - hangup
            metrics = rig.agent.metrics
            await wait_until(lambda: counted(metrics, "call.ended", "failed") == 1, 40, "call.ended to fail")
    assert outcome.reason == "remote-hangup"
    assert answer_s < 5.0, f"the answer took {answer_s:.2f} s"
    assert teardown_s < 5.0, f"the teardown took {teardown_s:.2f} s"
    # Each event counted once (not per attempt), as failed; one log line for the call.
    for kind in ("call.started", "call.ended"):
        assert counted(metrics, kind, "failed") == 1 and counted(metrics, kind, "delivered") == 0
        assert counted(metrics, kind, "dropped") == 0
    if dead == "never-answers":
        assert len(rx.requests) == 4 and all(r.signed() for r in rx.requests)  # 2 events x 2 attempts
    lines = [r.getMessage() for r in caplog.records if r.name == SENDER_LOGGER]
    assert len(lines) == 1, lines
    assert "call.started not delivered after 2 attempts" in lines[0], lines


@needs_speech
def test_shutdown_flush_is_bounded_by_a_silent_receiver(tmp_path: Path) -> None:
    asyncio.run(_shutdown_flush(tmp_path))


async def _shutdown_flush(tmp_path: Path) -> None:
    async with receiver("hang") as rx:
        config = bridge_config(tmp_path, events={"webhook": _hook(rx.url, timeout_s=30.0, shutdown_flush_s=0.5)})
        async with call_rig(config) as rig:
            await rig.agent_turn()
            await rig.caller.hangup()
            await rig.wait_outcome()
            await wait_until(lambda: len(rx.requests) == 2, 5, "both events to be on their way")
            metrics = rig.agent.metrics
            stopping = time.monotonic()
        stop_s = time.monotonic() - stopping  # the rig stops the agent, and with it the sender
    # At least the flush (0.5 s), and far from the attempts' 30 s timeout.
    assert 0.4 < stop_s < 5.0, f"the shutdown took {stop_s:.2f} s"
    for kind in ("call.started", "call.ended"):
        assert counted(metrics, kind, "dropped") == 1 and counted(metrics, kind, "failed") == 0


def test_sipagent_run_posts_events_and_flushes_a_retry_at_shutdown(tmp_path: Path) -> None:
    """`sipagent run` in its own process, a call from SIPp: call.started is delivered; call.ended gets a 503
    and its retry is 30 s away, so only the shutdown flush (SIGTERM) can deliver it, and does."""
    require("sipp")
    with receiver_thread(200, 503, 200) as rx:
        hook = _hook(rx.url, backoff_s=30.0, shutdown_flush_s=5.0)
        with running_agent(tmp_path, sections={"events": {"webhook": hook}}) as agent:
            with sipp_scenario("uac_call.xml", agent.target, tmp_path / "sipp", keys={"user": "agent"},
                               pause_ms=1500, timeout_s=30) as run:
                result = run.wait(30)
            assert result.returncode == 0, result.failed()
            agent.wait_metric('sipagent_calls_total{outcome="remote-hangup"}', lambda v: v == 1, 10)
            deadline = time.monotonic() + 10
            while len(rx.requests) < 2:
                assert time.monotonic() < deadline, rx.requests
                time.sleep(0.05)
            metrics = agent.metrics()
            assert metrics['sipagent_events_total{result="delivered",type="call.started"}'] == 1
            assert metrics["sipagent_events_held"] == 1  # call.ended, waiting for its retry
            stopping = time.monotonic()
        stop_s = time.monotonic() - stopping  # SIGTERM, the calls' end, the flush, the exit
        log = agent.log.read_text()
    assert stop_s < 10, f"{stop_s:.1f} s\n{log[-2000:]}"
    assert [r.event["type"] for r in rx.requests] == ["call.started", "call.ended", "call.ended"]
    assert all(r.signed() for r in rx.requests)
    assert rx.requests[1].event["id"] == rx.requests[2].event["id"]
    assert rx.events("call.ended")[0]["data"]["outcome"] == "remote-hangup"
    assert SECRET not in log and "tenant" not in log
    # The call's one end line: its outcome and how its audio fared.
    assert re.search(r"call ended: remote-hangup after \d+\.\d s; RTP in \d+ packets \(0\.0 % lost, jitter "
                     r"[\d.]+ ms, 0 frames concealed\), out \d+", log), log[-2000:]


def test_sighup_turns_events_on_rotates_the_secret_and_turns_them_off(tmp_path: Path) -> None:
    """`sipagent run` reloaded as `systemctl reload` does, between SIPp calls: events start with the reload
    that configures them, a rotated secret signs from the next event on, and removing the section stops them
    (a secret rotated without a restart keeps the calls under way)."""
    require("sipp")
    with receiver_thread(200) as rx, running_agent(tmp_path) as agent:
        path, calls = tmp_path / "agent.yaml", 0

        def call() -> None:
            nonlocal calls
            with sipp_scenario("uac_call.xml", agent.target, tmp_path / "sipp", keys={"user": "agent"},
                               pause_ms=500, timeout_s=30) as run:
                result = run.wait(30)
            assert result.returncode == 0, result.failed()
            calls += 1
            agent.wait_metric('sipagent_calls_total{outcome="remote-hangup"}', lambda v: v == calls, 10)

        def reload(webhook: dict[str, Any] | None) -> None:
            config = yaml.safe_load(path.read_text())
            config.pop("events", None)
            if webhook is not None:
                config["events"] = {"webhook": webhook}
            path.write_text(yaml.safe_dump(config))
            seen = agent.log.read_text().count("configuration reloaded")
            agent.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while agent.log.read_text().count("configuration reloaded") == seen:
                assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
                time.sleep(0.05)

        def requests(count: int) -> list[Received]:
            deadline = time.monotonic() + 10
            while len(rx.requests) < count:
                assert time.monotonic() < deadline, rx.requests
                time.sleep(0.05)
            return list(rx.requests)

        call()
        reload(_hook(rx.url))
        call()
        assert [r.event["type"] for r in requests(2)] == ["call.started", "call.ended"]
        reload({**_hook(rx.url), "secret": ROTATED})
        call()
        rotated = requests(4)[2:]
        assert [r.event["type"] for r in rotated] == ["call.started", "call.ended"]
        assert all(r.signed(ROTATED) and not r.signed(SECRET) for r in rotated)
        reload(None)
        call()
        time.sleep(0.5)
        assert len(rx.requests) == 4
        log = agent.log.read_text()
    assert all(r.signed() for r in rx.requests[:2])
    assert SECRET not in log and ROTATED not in log


@needs_speech
def test_a_call_ended_by_shutdown_still_sends_call_ended(tmp_path: Path) -> None:
    asyncio.run(_ended_by_shutdown(tmp_path))


async def _ended_by_shutdown(tmp_path: Path) -> None:
    async with receiver(200) as rx:
        config = bridge_config(tmp_path, agent={"greeting": "Hello.", "goodbye": "Goodbye."},
                               events={"webhook": _hook(rx.url)})
        async with call_rig(config) as rig:
            await rig.agent_turn(timeout=15)  # the call is live
            await asyncio.wait_for(rig.agent.stop(grace_s=0.0), 20)  # says goodbye, hangs up, flushes
            assert rig.caller.end_reason == "remote-bye"
            outcome = await rig.wait_outcome()
    assert outcome.reason == "agent-hangup"
    assert [e["type"] for e in rx.events()] == ["call.started", "call.ended"]
    assert rx.events("call.ended")[0]["data"]["outcome"] == "agent-hangup"


def _check_connect(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    config = yaml.safe_load(resources.files("sipagent").joinpath("data/demo.yaml").read_text(encoding="utf-8"))
    config["sip"]["listen"] = f"127.0.0.1:{free_port()}"
    rtp = free_port(span=40)
    config["media"]["rtp_ports"] = f"{rtp}-{rtp + 19}"
    config["recording"] = {"dir": str(tmp_path / "rec")}
    config["events"] = {"webhook": _hook(url)}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "sipagent.cli", "check", "-c", str(path), "--connect"],
                          capture_output=True, text=True, timeout=60)


def test_check_connect_reaches_the_receiver_without_posting(tmp_path: Path) -> None:
    with receiver_thread(200) as rx:
        result = _check_connect(tmp_path, rx.url)
        assert result.returncode == 0, result.stdout + result.stderr
        port = rx.url.split(":")[2].split("/")[0]
        assert f"ok    call events receiver: http://127.0.0.1:{port} reachable at 127.0.0.1:{port} (no event sent)" \
            in result.stdout, result.stdout
        assert "events:    call.started, call.transferred, call.ended to http://127.0.0.1" in result.stdout
        assert "tenant" not in result.stdout and SECRET not in result.stdout
        time.sleep(0.2)
        assert rx.requests == []
    dead = _check_connect(tmp_path, f"http://127.0.0.1:{free_port()}/events")
    assert dead.returncode == 1
    assert "FAIL  call events receiver: cannot connect" in dead.stdout, dead.stdout
