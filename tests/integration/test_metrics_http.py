"""The /metrics + /healthz endpoint over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipagent.observability.health import HealthServer, HealthState, start_health_server
from sipagent.observability.metrics import Metrics

Response = tuple[int, dict[str, str], bytes]


async def exchange(port: int, raw: bytes) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)   # the server closes: read to EOF
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status_line.split()[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> Response:
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def run(scenario: Callable[[HealthServer, Metrics, HealthState], Awaitable[None]]) -> None:
    async def main() -> None:
        metrics, health = Metrics(), HealthState()
        server = await start_health_server("127.0.0.1", 0, metrics, health)
        try:
            await scenario(server, metrics, health)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_metrics_endpoint_serves_prometheus_text() -> None:
    async def scenario(server: HealthServer, metrics: Metrics, health: HealthState) -> None:
        assert server.port > 0
        metrics.call_counted("rejected-busy")
        metrics.set_registration_state("registered")
        status, headers, body = await get(server.port, "/metrics?debug=1")
        assert status == 200
        assert headers["content-type"].startswith("text/plain") and "version=" in headers["content-type"]
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(body.decode()) for s in f.samples}
        assert values[("sipagent_calls_total", (("outcome", "rejected-busy"),))] == 1
        assert values[("sipagent_registration_state", (("account", ""), ("state", "registered")))] == 1

    run(scenario)


def test_healthz_turns_unhealthy_when_registration_is_lost() -> None:
    async def scenario(server: HealthServer, metrics: Metrics, health: HealthState) -> None:
        status, headers, body = await get(server.port, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["status"] == "ok"
        health.registration_lost = True
        status, _, body = await get(server.port, "/healthz")
        report = json.loads(body)
        assert status == 503
        assert report["status"] == "unhealthy" and report["problems"] == ["registration lost"]
        health.registration_lost = False
        assert (await get(server.port, "/healthz"))[0] == 200

    run(scenario)


def test_unknown_paths_other_methods_and_garbage() -> None:
    async def scenario(server: HealthServer, metrics: Metrics, health: HealthState) -> None:
        assert (await get(server.port, "/"))[0] == 404
        assert (await get(server.port, "/metrics/../etc/passwd"))[0] == 404
        status, headers, _ = await get(server.port, "/metrics", method="POST")
        assert status == 405 and headers["allow"] == "GET"
        assert (await get(server.port, "/healthz", method="DELETE"))[0] == 405
        assert (await exchange(server.port, b"\x00\xff garbage\r\n\r\n"))[0] == 400
        assert (await exchange(server.port, b"GET /healthz\r\n\r\n"))[0] == 400
        huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await exchange(server.port, huge))[0] == 431
        # A client that connects and leaves without a word, and one that sends half a request.
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.close()
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hea")
        await writer.drain()
        writer.close()
        # Still serving.
        assert (await get(server.port, "/healthz"))[0] == 200
        assert (await get(server.port, "/metrics"))[0] == 200

    run(scenario)


def test_close_stops_listening() -> None:
    async def main() -> bool:
        server = await start_health_server("127.0.0.1", 0, Metrics(), HealthState())
        port = server.port
        # An idle connection must not keep close() from finishing.
        _, idle = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        idle.close()
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        return False

    assert asyncio.run(main())


def test_an_ipv6_listener_logs_a_url_that_works(caplog: pytest.LogCaptureFixture) -> None:
    """The logged address is one a browser or curl takes: the IPv6 host in brackets, not ``http://::1:9090``."""
    async def main() -> tuple[str, int]:
        server = await start_health_server("::1", 0, Metrics(), HealthState())
        try:
            reader, writer = await asyncio.open_connection("::1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\n\r\n")
            status = int((await asyncio.wait_for(reader.read(), 5)).split()[1])
            writer.close()
            return server.base_url, status
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.INFO, logger="sipagent"):
        url, status = asyncio.run(main())
    assert status == 200
    assert url.startswith("http://[::1]:")
    assert f"metrics and health on {url}/metrics" in caplog.text
