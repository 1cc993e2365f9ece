"""Per-call context end to end: SIPp plays a PBX that passes the caller on (P-Asserted-Identity, Diversion,
X- headers) into a running `sipagent run`, whose Realtime backend is a small real WebSocket server here that
records what it is sent and asks for one webhook tool, answered by a real HTTP receiver on 127.0.0.1.

What must arrive: the caller's number and the headers' values in the session.update instructions and the
greeting, the context in the tool's request body and X-Sipagent-* headers, in the transcript's start record
and in the log line of the answer."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import pytest
from agent_helpers import running_agent, websocket_backend
from peers import require
from sipp import sipp_scenario
from websockets.sync.server import ServerConnection

pytestmark = pytest.mark.timeout(120)

CALLER, NAME, DIALED, DIVERTED = "+4930123456", "Ada Lovelace", "+18005550100", "+4930999000"
CUSTOMER, QUEUE = "C-4711", "sales-{now}"  # a value from the wire that looks like a template stays as it is
INSTRUCTIONS = ("You answer for Northwind. Caller {caller_number} dialed {dialed} (forwarded by {redirected_from}), "
                "customer {header.X-Customer-Id}, queue {header.X-Queue}, on {weekday}; call {call_id}.")
GREETING = "Hello {caller_name}, {{this}} is Northwind."


class Backend:
    """Enough of the Realtime API: keeps every event but the audio appends (counted) and answers the
    session.update with one call of the webhook tool."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.appends = 0
        self.lock = threading.Lock()

    def handler(self, ws: ServerConnection) -> None:
        for message in ws:
            event = json.loads(message)
            with self.lock:
                if event.get("type") == "input_audio_buffer.append":
                    self.appends += 1
                    continue
                self.events.append(event)
            if event.get("type") == "session.update":
                ws.send(json.dumps({"type": "response.function_call_arguments.done", "name": "lookup_order",
                                    "call_id": "fc_1", "arguments": json.dumps({"order_id": "7721"})}))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [event for event in self.events if event.get("type") == kind]


@contextlib.contextmanager
def backend() -> Iterator[tuple[Backend, str]]:
    recorder = Backend()
    with websocket_backend(recorder.handler) as url:
        yield recorder, url


class Receiver(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []  # a fresh list per receiver()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).requests.append((self.path, dict(self.headers.items()), body))
        answer = b'{"status": "shipped"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiver() -> Iterator[tuple[type[Receiver], str]]:
    handler = type("CallReceiver", (Receiver,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/orders"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_pbx_callers_context_reaches_the_prompt_the_tools_and_the_transcript(tmp_path: Path) -> None:
    require("sipp")
    with backend() as (recorder, ws_url), receiver() as (service, http_url), running_agent(
        tmp_path, sip={"aliases": [DIALED]},
        sections={
            "realtime": {"url": ws_url, "instructions": INSTRUCTIONS},
            "agent": {"greeting": GREETING, "tools": [
                {"name": "lookup_order", "url": http_url, "parameters": {
                    "type": "object", "properties": {"order_id": {"type": "string"}}}}]},
            "context": {"headers": ["X-Customer-Id", "X-Queue"], "timezone": "Europe/Berlin"},
        },
    ) as agent:
        keys = {"dialed": DIALED, "caller": CALLER, "caller_name": NAME, "diverted": DIVERTED, "customer": CUSTOMER,
                "queue": QUEUE}
        with sipp_scenario("uac_call_context.xml", agent.target, tmp_path / "sipp", keys=keys, pause_ms=3000,
                           timeout_s=30) as run:
            result = run.wait(40)
        assert result.returncode == 0, result.failed()
        agent.wait_metric('sipagent_calls_total{outcome="remote-hangup"}', lambda v: v == 1, 10)
        log = agent.log.read_text()

    updates = recorder.of_type("session.update")
    assert updates, log[-3000:]
    instructions = updates[0]["session"]["instructions"]
    assert instructions.startswith(f"You answer for Northwind. Caller {CALLER} dialed {DIALED} (forwarded by "
                                   f"{DIVERTED}), customer {CUSTOMER}, queue {QUEUE}, on "), instructions
    assert "{" not in instructions.replace(QUEUE, "")  # every variable was filled in, the call id too
    greeting = recorder.of_type("response.create")[0]["response"]["instructions"]
    assert f'"Hello {NAME}, {{this}} is Northwind."' in greeting

    # The tool's request: the model's arguments and the context; the headers say the same, percent-encoded.
    assert len(service.requests) == 1, log[-3000:]
    path, headers, body = service.requests[0]
    assert path == "/orders"
    sent = json.loads(body)
    assert sent["order_id"] == "7721"
    context = sent["context"]
    assert {k: context[k] for k in ("caller_number", "caller_name", "dialed", "redirected_from", "headers")} == {
        "caller_number": CALLER, "caller_name": NAME, "dialed": DIALED, "redirected_from": DIVERTED,
        "headers": {"X-Customer-Id": CUSTOMER, "X-Queue": QUEUE}}
    assert context["started_at"][-6:] in ("+01:00", "+02:00")  # Europe/Berlin
    assert headers["X-Sipagent-Caller"] == CALLER and headers["X-Sipagent-Dialed"] == DIALED
    assert headers["X-Sipagent-Redirected-From"] == DIVERTED
    assert headers["X-Sipagent-Caller-Name"] == "Ada%20Lovelace"
    assert headers["X-Sipagent-Header-X-Customer-Id"] == CUSTOMER
    assert unquote(headers["X-Sipagent-Header-X-Queue"]) == QUEUE
    assert headers["X-Sipagent-Call-Id"] == context["call_id"]
    assert "X-Sipagent-Header-X-Not-Listed" not in headers
    # The tool's answer went back to the model.
    outputs = recorder.of_type("conversation.item.create")
    assert any(item["item"].get("call_id") == "fc_1" for item in outputs)

    # The transcript's start record, and one log line with the numbers (no names or header values).
    transcripts = list((tmp_path / "rec").glob("*.jsonl"))
    assert len(transcripts) == 1
    start = json.loads(transcripts[0].read_text().splitlines()[0])
    assert start["event"] == "start" and start["context"]["caller_number"] == CALLER
    assert start["context"]["headers"] == {"X-Customer-Id": CUSTOMER, "X-Queue": QUEUE}
    answered = [line for line in log.splitlines() if "answered sip:anonymous@anonymous.invalid" in line]
    assert len(answered) == 1, log[-3000:]
    assert (f"caller {CALLER}, dialed {DIALED}, redirected from {DIVERTED}, headers X-Customer-Id, X-Queue"
            in answered[0])
    assert CUSTOMER not in log and NAME not in log
