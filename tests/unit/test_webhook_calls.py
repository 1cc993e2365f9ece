"""Webhook tools against real HTTP services on 127.0.0.1: answers, errors, caps, TLS, and hostile
services that answer slowly, which must never outlive the tool's deadline or hold a thread."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import pytest
import uvloop

from sipagent.bridge import webhook
from sipagent.bridge.context import CallContext
from sipagent.bridge.settings import ToolConfig
from sipagent.bridge.tools import run_webhook

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop,
}

Answer = Callable[["Request", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(main)


class Request:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ")
        self.headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        self.body = body


class Service:
    """An HTTP/1.1 service on 127.0.0.1 whose every answer is scripted by ``answer``; it records each
    request and sets ``closed`` when a connection's client goes away."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.requests: list[Request] = []
        self.connections = 0
        self.closed = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Service:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = "/orders", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request = Request(head[:-4], b"")
            request.body = await reader.readexactly(int(request.headers.get("Content-Length", "0")))
            self.requests.append(request)
            await self.answer(request, reader, writer)
            writer.close()  # after all of the answer is written (abort would drop what is still buffered)
            await writer.wait_closed()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.transport.abort()
            self._handlers.discard(task)


def reply(status: str, body: bytes, *headers: str) -> Answer:
    async def answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = "".join(f"{h}\r\n" for h in (f"HTTP/1.1 {status}", *headers))
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    return answer


async def echo(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"method": request.method, "target": request.target, "headers": request.headers,
                       "body": request.body.decode()}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()


async def never_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client goes away


async def dribble(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One byte every 0.3 s of a response that would take a minute: no socket read ever waits long."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 150\r\n\r\n" + b"x" * 150
    for byte in data[:200]:
        writer.write(bytes([byte]))
        try:
            if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                return  # the client closed its end
        except TimeoutError:
            pass


def tool(url: str, **fields: Any) -> ToolConfig:
    return ToolConfig(name="lookup_order", url=url, **fields)


# --- ordinary exchanges --------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_post_and_get_reach_the_service(loop: str) -> None:
    async def main() -> None:
        async with Service(echo) as service:
            posted = await run_webhook(tool(service.url(), headers={"Authorization": "Bearer k"}),
                                       {"order_id": "7721"}, "call-1@pbx")
            assert posted.ok
            assert posted.output["method"] == "POST" and posted.output["target"] == "/orders"
            assert json.loads(posted.output["body"]) == {"order_id": "7721"}
            headers = posted.output["headers"]
            assert headers["X-Sipagent-Call-Id"] == "call-1@pbx" and headers["Authorization"] == "Bearer k"
            assert headers["Content-Type"] == "application/json"
            got = await run_webhook(tool(service.url("/orders?src=ivr"), method="GET"), {"order_id": 7721}, "c")
            assert got.ok and got.output["target"] == "/orders?src=ivr&order_id=7721"
            # the service's host name is looked up too (on the webhook's own threads)
            named = await run_webhook(tool(service.url(host="localhost")), {}, "c")
            assert named.ok and named.output["headers"]["Host"] == f"localhost:{service.port}"

    run(main(), loop)


def test_the_model_cannot_change_what_the_configured_url_fixes_nor_add_undeclared_arguments() -> None:
    """A GET's configured query keeps its values (a service taking the last of a repeated name would take the
    model's), a fragment does not swallow the arguments, and only the arguments the schema declares are sent."""
    declared = {"type": "object", "properties": {"order_id": {"type": "string"}, "tenant": {"type": "string"}}}

    async def main() -> None:
        async with Service(echo) as service:
            url = service.url("/orders?tenant=acme&scope=read#top")
            got = await run_webhook(tool(url, method="GET", parameters=declared),
                                    {"order_id": "1", "tenant": "other", "scope": "admin"}, "c")
            assert got.ok and got.output["target"] == "/orders?tenant=acme&scope=read&order_id=1", got.output
            posted = await run_webhook(tool(service.url(), parameters=declared),
                                       {"order_id": "1", "admin": True}, "c")
            assert posted.ok and json.loads(posted.output["body"]) == {"order_id": "1"}

    run(main())


def test_the_calls_context_travels_in_the_body_and_in_x_sipagent_headers() -> None:
    context = CallContext("call-1@pbx", datetime(2026, 12, 5, 7, 56, 12, tzinfo=ZoneInfo("Europe/Berlin")),
                          caller_number="+4930123456", caller_name="Zoë \"Boss\"", dialed="800",
                          headers={"X-Customer-Id": "4711"})

    async def main() -> None:
        async with Service(echo) as service:
            # The model's own "context" argument cannot pass for the phone network's: ours replaces it.
            posted = await run_webhook(tool(service.url()), {"order_id": "7721", "context": {"caller_number": "1"}},
                                       "call-1@pbx", context)
            assert posted.ok
            assert json.loads(posted.output["body"]) == {"order_id": "7721", "context": {
                "call_id": "call-1@pbx", "caller_number": "+4930123456", "caller_name": 'Zoë "Boss"',
                "dialed": "800", "redirected_from": "", "headers": {"X-Customer-Id": "4711"},
                "started_at": "2026-12-05T07:56:12+01:00"}}
            headers = posted.output["headers"]
            assert headers["X-Sipagent-Caller"] == "+4930123456" and headers["X-Sipagent-Dialed"] == "800"
            assert headers["X-Sipagent-Caller-Name"] == "Zo%C3%AB%20%22Boss%22"  # ASCII, one header value
            assert unquote(headers["X-Sipagent-Caller-Name"]) == 'Zoë "Boss"'
            assert headers["X-Sipagent-Header-X-Customer-Id"] == "4711"
            assert "X-Sipagent-Redirected-From" not in headers  # absent values are left out
            # A GET: the query is the model's arguments only; the context is in the headers.
            got = await run_webhook(tool(service.url(), method="GET"), {"order_id": 7721}, "call-1@pbx", context)
            assert got.ok and got.output["target"] == "/orders?order_id=7721" and got.output["body"] == ""
            assert got.output["headers"]["X-Sipagent-Caller"] == "+4930123456"

    run(main())


def test_error_status_redirect_and_non_json_answers() -> None:
    async def main() -> None:
        async with Service(reply("500 Internal Server Error", b"", "Content-Length: 0")) as service:
            failed = await run_webhook(tool(service.url()), {}, "c")
            assert not failed.ok and "HTTP 500" in failed.output["error"]
        async with Service(reply("302 Found", b"", "Location: /elsewhere", "Content-Length: 0")) as service:
            moved = await run_webhook(tool(service.url()), {}, "c")
            assert not moved.ok and "HTTP 302" in moved.output["error"] and "not followed" in moved.output["error"]
            assert [r.target for r in service.requests] == ["/orders"]
        async with Service(reply("200 OK", b"shipped", "Content-Length: 7")) as service:
            text = await run_webhook(tool(service.url()), {}, "c")
            assert text.ok and text.output == {"result": "shipped"}
        deep = b"[" * 5000 + b"]" * 5000
        async with Service(reply("200 OK", deep, f"Content-Length: {len(deep)}")) as service:
            nested = await run_webhook(tool(service.url()), {}, "c")
            assert nested.ok and nested.output["result"].startswith("[[[")  # passed on as text

    run(main())


def test_chunked_and_read_to_close_answers() -> None:
    chunked = b"7\r\n{\"statu\r\n9\r\ns\": \"ok\"}\r\n0\r\n\r\n"
    async def main() -> None:
        async with Service(reply("200 OK", chunked, "Transfer-Encoding: chunked")) as service:
            result = await run_webhook(tool(service.url()), {}, "c")
            assert result.ok and result.output == {"status": "ok"}
        async with Service(reply("200 OK", b'{"status": "closed"}')) as service:  # no length: read to close
            result = await run_webhook(tool(service.url()), {}, "c")
            assert result.ok and result.output == {"status": "closed"}

    run(main())


def test_an_oversized_answer_is_an_error() -> None:
    big = b"x" * (webhook.MAX_BODY_BYTES + 1)
    async def main() -> None:
        async with Service(reply("200 OK", big, f"Content-Length: {len(big)}")) as service:
            result = await run_webhook(tool(service.url()), {}, "c")
            assert not result.ok and "unusable answer" in result.output["error"]
        async with Service(reply("200 OK", big)) as service:  # read to close: stopped at the cap
            result = await run_webhook(tool(service.url()), {}, "c")
            assert not result.ok and "over 1048576 bytes" in result.output["error"]
        pad = [f"X-Pad-{i}: {'p' * 1000}" for i in range(80)]
        async with Service(reply("200 OK", b"{}", *pad)) as service:  # the head alone is over its cap
            result = await run_webhook(tool(service.url()), {}, "c")
            assert not result.ok and "headers" in result.output["error"]

    run(main())


def test_unreachable_service_and_unsafe_header_values() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        gone = await run_webhook(tool(f"http://127.0.0.1:{closed_port}/x", timeout_s=2), {}, "c")
        assert not gone.ok and "unreachable" in gone.output["error"]
        async with Service(echo) as service:
            injected = tool(service.url(), headers={"X-Token": "k\r\nX-Admin: yes"})
            refused = await run_webhook(injected, {}, "c")
            assert not refused.ok and "not sent" in refused.output["error"]
            from_sip = await run_webhook(tool(service.url()), {}, "abc\r\nX-Admin: yes")
            assert not from_sip.ok and "not sent" in from_sip.output["error"]
            assert service.connections == 0  # refused before connecting: nothing was written

    run(main())


# --- hostile services: the deadline ends everything -----------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_dribbling_service_ends_at_the_deadline_and_holds_no_thread(loop: str) -> None:
    async def main() -> None:
        loop_ = asyncio.get_running_loop()
        loop_.set_default_executor(ThreadPoolExecutor(1))  # the loop's one worker: must stay free
        async with Service(dribble) as service:
            threads = threading.active_count()
            result = await run_webhook(tool(service.url(), timeout_s=1.0), {}, "c")
            assert not result.ok and "did not answer in time" in result.output["error"]
            # The connection was aborted at the deadline: the service sees its client gone long before
            # its minute of dribbling is over.
            await asyncio.wait_for(service.closed.wait(), 5)
            assert threading.active_count() == threads
            assert await asyncio.wait_for(loop_.run_in_executor(None, lambda: "free"), 5) == "free"

    run(main(), loop)


def test_dns_for_other_calls_is_prompt_while_eight_webhooks_hang() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A small default executor, as on a host with few cores: the one loop.getaddrinfo also uses.
        loop.set_default_executor(ThreadPoolExecutor(2))
        async with Service(never_answer) as service:
            slow = tool(service.url(host="localhost"), timeout_s=4)
            hung = [asyncio.create_task(run_webhook(slow, {"n": i}, f"c{i}")) for i in range(8)]
            async with asyncio.timeout(10):
                while len(service.requests) < 2:
                    await asyncio.sleep(0.05)
            assert not any(task.done() for task in hung)
            infos = await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 3)  # generous, not a figure
            assert infos
            results = await asyncio.gather(*hung)
            assert all("did not answer in time" in r.output["error"] for r in results)
            assert len(service.requests) == 8

    run(main())


class RefusingExecutor(ThreadPoolExecutor):
    """A default executor that fails anything submitted to it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.submitted += 1
        raise RuntimeError("the default executor was used")


def test_webhook_lookups_never_use_the_default_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that hangs for the webhook's host holds the webhook's own threads only; the webhook
    still ends at its deadline."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "stuck.invalid":
            release.wait(10)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def main() -> None:
        refusing = RefusingExecutor()
        asyncio.get_running_loop().set_default_executor(refusing)
        try:
            async with Service(echo) as service:
                named = await run_webhook(tool(service.url(host="localhost")), {}, "c")
                assert named.ok
            stuck = await run_webhook(tool("http://stuck.invalid/x", timeout_s=0.5), {}, "c")
            assert not stuck.ok and "did not answer in time" in stuck.output["error"]
            assert refusing.submitted == 0
        finally:
            release.set()

    run(main())


def test_a_service_that_never_completes_the_tls_handshake_ends_at_the_deadline() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP and the ClientHello, never answers: read until the client leaves
        closed.set()
        writer.close()

    closed = asyncio.Event()

    async def main() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await run_webhook(tool(f"https://127.0.0.1:{port}/x", timeout_s=0.5), {}, "c")
            assert not result.ok and "did not answer in time" in result.output["error"]
            await asyncio.wait_for(closed.wait(), 5)

    run(main())


# --- TLS ------------------------------------------------------------------------------------------------


def make_certificates(directory: Path, san: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for ``san``: (ca.pem, server.pem, server.key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=sipagent test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=webhook")
    (directory / "ext.cnf").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@needs_openssl
def test_https_verifies_the_certificate_and_the_host_name(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path, "IP:127.0.0.1,DNS:localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(ca))

    async def main() -> None:
        async with Service(echo, tls=server_tls) as service:
            # The system's trust store does not know the test CA: refused, never "ok".
            untrusted = await run_webhook(tool(service.url(scheme="https")), {}, "c")
            assert not untrusted.ok and "certificate verify failed" in untrusted.output["error"]
            for host in ("127.0.0.1", "localhost"):
                response = await webhook.request("POST", service.url(host=host, scheme="https"), {}, b"{}",
                                                 call_id="c", tls=trusting)
                assert response.status == 200 and json.loads(response.body)["method"] == "POST"

    run(main())


@needs_openssl
def test_https_refuses_a_certificate_for_another_host(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path, "DNS:orders.example")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(ca))

    async def main() -> None:
        async with Service(echo, tls=server_tls) as service:
            with pytest.raises(ssl.SSLCertVerificationError, match="match"):
                await webhook.request("GET", service.url(scheme="https"), {}, call_id="c", tls=trusting)
            assert not service.requests

    run(main())
