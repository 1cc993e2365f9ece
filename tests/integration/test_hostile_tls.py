"""SIP over TLS, the server side (sip.tls.cert_file set), against hostile peers on loopback: a connection that
never completes its handshake, one that speaks plain SIP to the TLS port, more connections than a source may
hold. The caps apply before the handshake, so what is over them costs no cryptography; a normal TLS caller is
served all along. With both the standard loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from loop_order import run_on

from sipagent.sip.message import SipRequest, SipResponse, build_response
from sipagent.sip.tls import TlsSettings, client_context, server_context
from sipagent.sip.transport import Peer, TcpTransport, TransportLimits

pytestmark = pytest.mark.timeout(120)

LIMITS = TransportLimits(max_message_bytes=4096, tcp_connections=5, tcp_connections_per_source=3,
                         tcp_idle_s=60.0, tcp_message_s=1.0)
LOOPS = ["asyncio", "uvloop"]


def options(n: int) -> bytes:
    return (
        f"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls{n}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=t{n}\r\nTo: <sip:agent@127.0.0.1>\r\nCall-ID: tls-{n}\r\n"
        f"CSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def serving(pem: dict[str, Path], limits: TransportLimits = LIMITS,
                  ) -> AsyncIterator[tuple[TcpTransport, list[str]]]:
    """The agent's TLS transport on 127.0.0.1 answering OPTIONS with 200, and the shed reasons it reported; on
    the way out, that nothing reached the loop's exception handler."""
    shed: list[str] = []
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    transport: TcpTransport

    def on_message(message: SipRequest | SipResponse, peer: Peer) -> None:
        if isinstance(message, SipRequest):
            transport.send(build_response(message, 200).to_bytes(), peer)

    settings = TlsSettings(ca_file=str(pem["ca"]), cert_file=str(pem["cert"]), key_file=str(pem["key"]))
    transport = TcpTransport("127.0.0.1", 0, on_message, limits=limits, on_shed=shed.append,
                             ssl_server=server_context(settings), ssl_client=client_context(settings))
    await transport.start()
    try:
        yield transport, shed
    finally:
        await transport.close()
    assert errors == [], errors


def caller_context(pem: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pem["ca"]))


async def tls_connect(port: int, pem: dict[str, Path], local: str = "127.0.0.1",
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=caller_context(pem), server_hostname="agent.test", local_addr=(local, 0)), 5)


async def read_response(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tls_caller_is_served(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem) as (transport, shed):
            reader, writer = await tls_connect(transport.local_address[1], pem)
            writer.write(options(1))
            assert (await read_response(reader)).startswith(b"SIP/2.0 200 OK")
            assert transport.accepted_connections == 1 and shed == []
            writer.close()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handshake_that_never_comes_is_cut_off(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem) as (transport, shed):
            port = transport.local_address[1]
            silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)  # TCP, then nothing
            started = time.monotonic()  # its handshake's time runs from its accept, not from the next connect
            plain_reader, plain = await asyncio.open_connection("127.0.0.1", port)
            plain.write(options(2))  # plain SIP on the TLS port
            assert await asyncio.wait_for(plain_reader.read(), 5) == b""  # closed, nothing answered
            assert await asyncio.wait_for(silent_reader.read(), LIMITS.tcp_message_s + 3) == b""
            assert LIMITS.tcp_message_s - 0.2 <= time.monotonic() - started <= LIMITS.tcp_message_s + 3
            assert shed == ["tls-handshake", "tls-handshake"]
            assert transport.accepted_connections == 0
            # A real caller is served after all that.
            reader, writer = await tls_connect(port, pem)
            writer.write(options(3))
            assert (await read_response(reader)).startswith(b"SIP/2.0 200 OK")
            for w in (silent, plain, writer):
                w.close()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_over_the_per_source_cap_are_closed_before_the_handshake(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem) as (transport, shed):
            port = transport.local_address[1]
            # Handshakes in progress count: three silent TCP connections fill the cap of three.
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.tcp_connections_per_source)]
            await asyncio.sleep(0.1)
            assert transport.accepted_connections == LIMITS.tcp_connections_per_source
            with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError)):
                await tls_connect(port, pem)  # closed before any TLS: the handshake fails
            assert "tcp-connections-per-source" in shed
            for _, w in held:
                w.close()
            # Once their handshakes time out, the source may connect again.
            await asyncio.sleep(LIMITS.tcp_message_s + 0.5)
            reader, writer = await tls_connect(port, pem)
            writer.write(options(4))
            assert (await read_response(reader)).startswith(b"SIP/2.0 200 OK")
            writer.close()

    run_on(loop, main())
