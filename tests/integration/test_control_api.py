"""The control API over a real loopback socket, driving OutboundCalls with a fake ``place`` (the dialer is
the agent's; here it rings, answers and waits, or fails as told)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sipagent.errors import SipagentError
from sipagent.observability.metrics import Metrics
from sipagent.outbound.calls import CallProgress, OutboundCalls, PlaceResult
from sipagent.outbound.control import REFUSED_LOG_S, ControlApi, ControlServer, start_control_server

TOKEN = "test-token-0123456789abcdef"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"

Reply = tuple[int, dict[str, str], Any]


async def exchange(port: int, raw: bytes) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # the server closes: read to EOF
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    assert int(headers["content-length"]) == len(body) and headers["connection"] == "close"
    decoded = json.loads(body) if headers["content-type"] == "application/json" else body
    return int(status_line.split()[1]), headers, decoded


async def request(port: int, method: str, path: str, body: Any = None, auth: str = AUTH,
                  extra: str = "") -> Reply:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    length = f"Content-Length: {len(data)}\r\n" if data else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{length}{extra}\r\n"
    return await exchange(port, head.encode("latin-1") + data)


class Dialer:
    """The fake ``place``: to "busy" is busy, anything else rings and is answered, then holds until the
    call is cancelled (recording what it hung up) or released."""

    def __init__(self) -> None:
        self.placed: list[tuple[str, str, dict[str, str]]] = []
        self.hung_up: list[str] = []
        self.answered = asyncio.Event()

    async def place(self, progress: CallProgress) -> PlaceResult:
        request = progress.request
        self.placed.append((request.to, request.profile, dict(request.variables)))
        progress.ringing()
        if request.to.startswith("sip:busy@"):
            raise BusyError()
        progress.answered()
        self.answered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.hung_up.append(request.to)
            raise
        return PlaceResult("answered")


class BusyError(SipagentError):
    outcome, status, reason = "busy", 486, "Busy Here"


def run(scenario: Callable[[ControlServer, Dialer, Metrics], Awaitable[None]], max_calls: int = 2,
        calls_per_second: float = 50.0) -> None:
    async def main() -> None:
        dialer, metrics = Dialer(), Metrics()
        calls = OutboundCalls(dialer.place, max_calls=max_calls, calls_per_second=calls_per_second, metrics=metrics)
        api = ControlApi(calls, TOKEN, profiles=["default", "sales"], default_profile="default",
                         domain="pbx.example.com", max_body_bytes=2048)
        server = await start_control_server("127.0.0.1", 0, api)
        try:
            await scenario(server, dialer, metrics)
        finally:
            server.close()
            await server.wait_closed()
            await calls.close()

    asyncio.run(main())


def test_place_watch_and_hang_up_a_call() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        status, headers, body = await request(server.port, "POST", "/v1/calls", {
            "to": "2002", "profile": "sales", "variables": {"first_name": "Ada"}})
        assert status == 201, body
        call_id = body["id"]
        assert headers["location"] == f"/v1/calls/{call_id}" and len(call_id) >= 20
        await asyncio.wait_for(dialer.answered.wait(), 5)
        assert dialer.placed == [("sip:2002@pbx.example.com", "sales", {"first_name": "Ada"})]
        status, _, body = await request(server.port, "GET", f"/v1/calls/{call_id}")
        assert status == 200
        assert {k: body[k] for k in ("id", "to", "profile", "state", "outcome")} == {
            "id": call_id, "to": "sip:2002@pbx.example.com", "profile": "sales", "state": "answered",
            "outcome": None}
        assert body["started_at"] and body["answered_at"] and body["ended_at"] is None
        status, _, body = await request(server.port, "DELETE", f"/v1/calls/{call_id}")
        assert status == 202
        await server.api.calls.wait(call_id)
        assert dialer.hung_up == ["sip:2002@pbx.example.com"]
        status, _, body = await request(server.port, "GET", f"/v1/calls/{call_id}")
        assert (body["state"], body["outcome"]) == ("ended", "answered")
        assert body["end_reason"] == "hung up: cancelled by request" and body["ended_at"]
        assert b'sipagent_outbound_calls_total{outcome="answered"} 1.0' in metrics.render()

    run(scenario)


def test_outcomes_of_failed_dials_are_reported() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        status, _, body = await request(server.port, "POST", "/v1/calls", {"to": "sip:busy@pbx.example.com"})
        assert status == 201 and body["profile"] == "default"
        await server.api.calls.wait(body["id"])
        _, _, body = await request(server.port, "GET", f"/v1/calls/{body['id']}")
        assert (body["state"], body["outcome"], body["end_reason"]) == ("ended", "busy", "486 Busy Here")

    run(scenario)


def test_every_request_needs_the_token() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        for auth in ("", "Authorization: Bearer wrong-token-0123456789abc\r\n", f"Authorization: Basic {TOKEN}\r\n",
                     f"Authorization: Bearer {TOKEN[:-1]}\r\n"):
            for method, path in (("POST", "/v1/calls"), ("GET", "/v1/calls/abc"), ("DELETE", "/v1/calls/abc"),
                                 ("GET", "/nothing")):
                status, headers, body = await request(server.port, method, path, {"to": "2002"}, auth=auth)
                assert status == 401, (auth, method, path)
                assert headers["www-authenticate"] == 'Bearer realm="sipagent"'
                assert TOKEN not in json.dumps(body)
        assert dialer.placed == []
        # the scheme is case-blind, as RFC 9110 has it
        status, _, _ = await request(server.port, "GET", "/v1/calls/abc", auth=f"Authorization: bearer {TOKEN}\r\n")
        assert status == 404

    run(scenario)


def test_refused_requests_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Someone trying tokens gets 401 each time, but the log gets one line per interval, counting the rest."""

    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        with caplog.at_level(logging.WARNING, logger="sipagent.outbound.control"):
            for _ in range(30):
                assert (await request(server.port, "GET", "/v1/calls/abc", auth=""))[0] == 401
            server._refused_logged_at -= REFUSED_LOG_S  # the interval has passed
            assert (await request(server.port, "GET", "/v1/calls/abc", auth=""))[0] == 401
        lines = [r.getMessage() for r in caplog.records if "refused from" in r.getMessage()]
        assert len(lines) == 2 and lines[1].endswith("(and 29 more since the last such line)"), lines

    run(scenario)


def test_bad_requests_are_refused_with_the_reason() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        port = server.port
        bad_bodies: list[tuple[Any, str]] = [
            (b"{not json", "JSON"), (b"\xff\xfe", "JSON"), ([1, 2], "JSON object"), ({"profile": "sales"}, "to:"),
            ({"to": "sip:2002@pbx\r\nX-Evil: 1"}, "to:"), ({"to": "sip:2002@pbx?Subject=x"}, "URI headers"),
            ({"to": "2002", "profile": "nope"}, "profile"), ({"to": "2002", "profile": 5}, "profile"),
            ({"to": "2002", "variables": {"a": {"b": "c"}}}, "variables.a"),
            ({"to": "2002", "variables": ["a"]}, "variables"),
            ({"to": "2002", "variables": {f"v{i}": "x" for i in range(40)}}, "at most 32"),
            ({"to": "2002", "caller_id": "+1555"}, "unknown field"), (b"[" * 1020 + b"]" * 1020, "JSON"),
        ]
        for body, problem in bad_bodies:
            status, _, reply = await request(port, "POST", "/v1/calls", body)
            assert status == 400 and problem in reply["error"], (body, reply)
        assert dialer.placed == []
        status, _, _ = await request(port, "POST", "/v1/calls", {"to": "2002", "variables": {"x": "y" * 3000}})
        assert status == 413
        status, _, _ = await request(port, "POST", "/v1/calls", {"to": "2002"}, extra="Content-Type: text/plain\r\n")
        assert status == 415
        status, headers, _ = await request(port, "GET", "/v1/calls")
        assert status == 405 and headers["allow"] == "POST"
        status, headers, _ = await request(port, "PUT", "/v1/calls/abc")
        assert status == 405 and headers["allow"] == "GET, DELETE"
        assert (await request(port, "GET", "/v1/calls/unknown-id"))[0] == 404
        assert (await request(port, "GET", "/v1/calls/../../etc/passwd"))[0] == 404
        assert (await request(port, "DELETE", "/v1/calls/unknown-id"))[0] == 404
        # the framing: a chunked body, a second Content-Length, an oversized head, garbage
        assert (await request(port, "POST", "/v1/calls", extra="Transfer-Encoding: chunked\r\n"))[0] == 501
        assert (await request(port, "POST", "/v1/calls", {"to": "2002"}, extra="Content-Length: 3\r\n"))[0] == 400
        huge = f"GET /v1/calls/x HTTP/1.1\r\n{AUTH}X-Pad: {'a' * 20000}\r\n\r\n".encode()
        assert (await exchange(port, huge))[0] == 431
        assert (await exchange(port, b"\x00\xff garbage\r\n\r\n"))[0] == 400
        assert dialer.placed == []

    run(scenario)


def test_limits_answer_429_with_retry_after() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        port = server.port
        first = await request(port, "POST", "/v1/calls", {"to": "2002"})
        assert first[0] == 201
        status, headers, body = await request(port, "POST", "/v1/calls", {"to": "2003"})
        assert status == 429 and body["reason"] == "rate" and int(headers["retry-after"]) >= 1

    run(scenario, calls_per_second=0.2)

    async def full(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        port = server.port
        assert (await request(port, "POST", "/v1/calls", {"to": "2002"}))[0] == 201
        status, headers, body = await request(port, "POST", "/v1/calls", {"to": "2003"})
        assert status == 429 and body["reason"] == "max_calls" and headers["retry-after"] == "1"
        assert len(dialer.placed) == 1

    run(full, max_calls=1)


def test_a_silent_client_does_not_hold_the_listener() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        _, idle = await asyncio.open_connection("127.0.0.1", server.port)  # says nothing
        try:
            status, _, _ = await request(server.port, "GET", "/v1/calls/abc")
            assert status == 404  # served while the other connection waits
        finally:
            idle.close()

    run(scenario)


async def held_open(server: ControlServer, count: int) -> None:
    """Until the server holds ``count`` connections: it takes and lets go of them a few turns of the loop after
    the clients' connect and close (a sleep instead would be too short for a loop that stalls through it)."""
    async with asyncio.timeout(5):
        while len(server._writers) != count:
            await asyncio.sleep(0.01)


def test_stalled_connections_past_the_limit_are_turned_away_and_the_listener_recovers() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        server.max_connections = 3
        idle = [(await asyncio.open_connection("127.0.0.1", server.port))[1] for _ in range(3)]
        try:
            await held_open(server, 3)  # the server has taken all three
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                data = await asyncio.wait_for(reader.read(), 5)  # closed at once, without reading a request
            finally:
                writer.close()
            assert data.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in data
        finally:
            for writer in idle:
                writer.close()
        await held_open(server, 0)  # the server has seen them go
        status, _, _ = await request(server.port, "GET", "/v1/calls/abc")
        assert status == 404

    run(scenario)


def test_a_shutting_down_agent_answers_503_and_keeps_its_calls() -> None:
    async def scenario(server: ControlServer, dialer: Dialer, metrics: Metrics) -> None:
        status, _, call = await request(server.port, "POST", "/v1/calls", {"to": "2002"})
        assert status == 201
        await dialer.answered.wait()
        server.api.calls.stop_admitting()  # what Agent.stop does first, before the grace period
        status, headers, body = await request(server.port, "POST", "/v1/calls", {"to": "2003"})
        assert status == 503 and body["reason"] == "shutdown" and headers["retry-after"] == "10"
        assert [to for to, _, _ in dialer.placed] == ["sip:2002@pbx.example.com"]
        status, _, going = await request(server.port, "GET", f"/v1/calls/{call['id']}")
        assert status == 200 and going["state"] == "answered"

    run(scenario)
