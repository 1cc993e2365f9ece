"""Webhook tools over real sockets (a service on 127.0.0.1) with a hostile model: a flood of tool calls opens
at most MAX_TOOLS_IN_FLIGHT connections from one call, and arguments cannot reach the request line, the
headers or the host (no SSRF or header injection by argument)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from test_dtmf_tools import FakeMedia

from sipagent.bridge.call import BridgeSettings, CallBridge, RealtimeLink
from sipagent.bridge.settings import AgentConfig, RecordingConfig, ToolConfig
from sipagent.bridge.tool_runner import MAX_TOOLS_IN_FLIGHT
from sipagent.realtime.events import SessionSettings
from sipagent.testing.call_leg import StubCallLeg


class Service:
    """An HTTP service that records each request (line, headers, body) and holds its answer until ``gate``
    opens; ``most`` is the largest number of connections it had open at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.open = 0
        self.most = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Service:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            line, *fields = head.split("\r\n")
            headers = dict(f.split(": ", 1) for f in fields if f)
            body = await reader.readexactly(int(headers.get("Content-Length", "0")))
            self.requests.append((line, headers, body))
            await asyncio.wait_for(self.gate.wait(), 10)
            answer = b'{"status": "shipped"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(answer), answer))
            await writer.drain()
        finally:
            self.open -= 1
            writer.close()


def bridge(tools: list[ToolConfig], sent: list[dict[str, Any]], tmp_path: Path) -> CallBridge:
    async def no_backend() -> RealtimeLink:
        raise OSError("not in these tests")

    settings = BridgeSettings(agent=AgentConfig(tools=tools), session=SessionSettings(),
                              recording=RecordingConfig(dir=str(tmp_path), transcripts=True))
    call_bridge = CallBridge(StubCallLeg("dtmf-test"), FakeMedia(dtmf_pt=False), no_backend, settings)
    call_bridge.tools.session.send = sent.append  # type: ignore[method-assign,assignment]
    return call_bridge


def outputs(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(e["item"]["output"]) for e in sent if e["type"] == "conversation.item.create"]


def test_a_flood_of_tool_calls_opens_a_bounded_number_of_connections(tmp_path: Path) -> None:
    """Before: 40 tool calls in one response opened 40 connections to the service at once (each held up to
    the tool's timeout_s, from every call of the process at the same time)."""

    async def main() -> None:
        sent: list[dict[str, Any]] = []
        async with Service() as service:
            runner = bridge([ToolConfig("lookup_order", url=service.url("/orders"), timeout_s=10)], sent,
                            tmp_path).tools
            calls = [asyncio.ensure_future(runner.run("lookup_order", f"c{i}", json.dumps({"order_id": str(i)})))
                     for i in range(40)]
            async with asyncio.timeout(5):
                while len(service.requests) < MAX_TOOLS_IN_FLIGHT or len(outputs(sent)) < 40 - MAX_TOOLS_IN_FLIGHT:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # nothing more arrives
            assert service.most == MAX_TOOLS_IN_FLIGHT and len(service.requests) == MAX_TOOLS_IN_FLIGHT
            service.gate.set()
            await asyncio.wait_for(asyncio.gather(*calls), 5)
        answers = outputs(sent)
        assert answers.count({"status": "shipped"}) == MAX_TOOLS_IN_FLIGHT and len(answers) == 40

    asyncio.run(main())


HOSTILE = {"../../admin": "x", "a&b=c": "d", "q": "1#frag?x=/..", "crlf": "a\r\nX-Evil: 1\r\n\r\nGET /x",
           "host": "evil.example.com", "Zoë": "Ünal", "n": {"nested": [1, None, True]}}


def test_arguments_reach_neither_the_path_the_headers_nor_another_host(tmp_path: Path) -> None:
    """A tool that declares no properties sends what the model gives: names and values are encoded in the
    query (GET) or the JSON body (POST), never in the request line or a header."""

    async def main() -> None:
        sent: list[dict[str, Any]] = []
        async with Service() as service:
            service.gate.set()
            tools = [ToolConfig("lookup_get", url=service.url("/orders?tenant=acme"), method="GET"),
                     ToolConfig("lookup_post", url=service.url("/orders"))]
            runner = bridge(tools, sent, tmp_path).tools
            for name in ("lookup_get", "lookup_post"):
                await asyncio.wait_for(runner.run(name, name, json.dumps(HOSTILE)), 5)
            (get_line, get_headers, _), (post_line, post_headers, post_body) = service.requests
        path, _, query = get_line.removeprefix("GET ").removesuffix(" HTTP/1.1").partition("?")
        assert path == "/orders" and query.startswith("tenant=acme&") and "#" not in query, get_line
        assert all(c.isalnum() or c in "%&=+._-" for c in query), query
        assert post_line == "POST /orders HTTP/1.1"
        posted = json.loads(post_body)
        assert posted.pop("context")["call_id"] == "dtmf-test" and posted == HOSTILE
        for headers in (get_headers, post_headers):
            assert "X-Evil" not in headers and headers["Host"].startswith("127.0.0.1:"), headers
        assert outputs(sent) == [{"status": "shipped"}] * 2

    asyncio.run(main())
