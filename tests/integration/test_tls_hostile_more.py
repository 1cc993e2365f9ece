"""More hostile peers for the TLS server side, on loopback, beyond test_hostile_tls.py: a ClientHello dribbled
a byte at a time, a connection that completes its handshake and then says nothing or dribbles a message,
garbage records after the handshake, a record too large for a message, resets mid-handshake, strangers from
many addresses filling the total cap, and a shutdown with handshakes in flight. Each is cut off on time,
nothing is raised into the loop, and every slot is given back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from loop_order import run_on
from test_hostile_tls import (
    LOOPS,
    caller_context,
    options,
    serving,
    tls_connect,
)

from sipagent.sip.tls import TlsSettings, client_context, server_context
from sipagent.sip.transport import Peer, TcpTransport, TransportLimits

pytestmark = pytest.mark.timeout(120)

# Idle connections are cut after 1.5 s here (test_hostile_tls keeps them a minute).
LIMITS = TransportLimits(max_message_bytes=4096, tcp_connections=4, tcp_connections_per_source=3,
                         tcp_idle_s=1.5, tcp_message_s=1.0)


async def served(port: int, pem: dict[str, Path], n: int) -> None:
    """A normal caller gets its 200 and hangs up."""
    reader, writer = await tls_connect(port, pem)
    writer.write(options(n))
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"SIP/2.0 200 OK")
    writer.close()


async def all_released(transport: TcpTransport, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while transport.accepted_connections or transport._per_source:
        assert time.monotonic() < deadline, (transport.accepted_connections, transport._per_source)
        await asyncio.sleep(0.05)


def client_hello(pem: dict[str, Path]) -> bytes:
    """The first flight of a real TLS client, taken from an in-memory handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = caller_context(pem).wrap_bio(incoming, outgoing, server_hostname="agent.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def raw_tls(port: int, pem: dict[str, Path]) -> ssl.SSLSocket:
    """A finished handshake on a blocking socket whose file descriptor we may also write raw bytes to."""
    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        return caller_context(pem).wrap_socket(sock, server_hostname="agent.test")
    return await asyncio.to_thread(connect)


async def eof_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    def wait() -> bool:
        sock.settimeout(seconds)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except (ssl.SSLError, OSError):
            return True
        return True
    return await asyncio.to_thread(wait)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_hello_dribbled_byte_by_byte_is_cut_at_the_handshake_deadline(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, shed):
            port = transport.local_address[1]
            hello = client_hello(pem)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            closed_after = None
            for byte in hello:  # one byte every 50 ms: always busy, never done
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    break
                if reader.at_eof() or time.monotonic() - started > LIMITS.tcp_message_s + 3:
                    break
                await asyncio.sleep(0.05)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 5)
            closed_after = time.monotonic() - started
            assert closed_after <= LIMITS.tcp_message_s + 1.5
            assert shed == ["tls-handshake"]
            await all_released(transport)
            await served(port, pem, 1)
            writer.close()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_silence_or_a_dribbled_message_after_the_handshake_is_cut(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, shed):
            port = transport.local_address[1]
            silent = await raw_tls(port, pem)
            # From the silent one's handshake: its idle time runs from there, not from the dribbler's (a
            # handshake a loaded machine can make take a good part of a second).
            started = time.monotonic()
            dribbler = await raw_tls(port, pem)

            async def dribble() -> None:
                for byte in options(2)[:-4]:  # never completes
                    if time.monotonic() - started > LIMITS.tcp_idle_s + 2:
                        return
                    try:
                        await asyncio.to_thread(dribbler.send, bytes([byte]))
                    except OSError:
                        return
                    await asyncio.sleep(0.1)

            dribbling = asyncio.create_task(dribble())
            assert await eof_within(silent, LIMITS.tcp_idle_s + 2)
            assert time.monotonic() - started >= LIMITS.tcp_idle_s - 0.3
            await dribbling
            assert sorted(shed) == ["tcp-idle", "tcp-slow-message"]
            await all_released(transport)
            await served(port, pem, 3)
            for sock in (silent, dribbler):
                sock.close()

    run_on(loop, main())


@pytest.mark.parametrize("garbage", [
    b"\x17\x03\x03\x00\x20" + bytes(32),  # an application-data record that does not decrypt
    b"\x17\x03\x03\x40\x00" + bytes(100),  # a record header claiming 16 KiB, then too little
    b"\xff" * 64,  # not a record at all
    b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n\r\n",  # plain SIP on the established TLS connection
])
@pytest.mark.parametrize("loop", LOOPS)
def test_garbage_records_after_the_handshake_close_the_connection(loop: str, garbage: bytes,
                                                                  pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, _shed):
            port = transport.local_address[1]
            hostile = await raw_tls(port, pem)
            await asyncio.to_thread(os.write, hostile.fileno(), garbage)  # under TLS, on the raw TCP stream
            if garbage[:5] == b"\x17\x03\x03\x40\x00":
                assert not await eof_within(hostile, 0.3)  # still waiting for the rest of the record...
                assert await eof_within(hostile, LIMITS.tcp_idle_s + 2)  # ...not for longer than idle
            else:
                assert await eof_within(hostile, 3)
            hostile.close()
            await all_released(transport)
            await served(port, pem, 4)

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_record_larger_than_any_message_is_answered_and_closed(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, shed):
            port = transport.local_address[1]
            reader, writer = await tls_connect(port, pem)
            head = options(5).split(b"Content-Length")[0]
            writer.write(head + b"X-Fill: " + b"a" * 16000 + b"\r\n")  # one full TLS record, no end of header
            reply = await asyncio.wait_for(reader.read(), 5)
            assert reply.startswith(b"SIP/2.0 513") or reply == b""
            assert "too-large" in shed
            writer.close()
            await all_released(transport)

    run_on(loop, main())


def test_resets_mid_handshake_and_strangers_from_many_addresses_give_every_slot_back(pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, shed):
            port = transport.local_address[1]
            hello = client_hello(pem)
            for _ in range(10):  # half a ClientHello, then RST
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(hello[: len(hello) // 2])
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            await asyncio.sleep(0.3)
            await all_released(transport)
            # Silent strangers from five loopback addresses: the total cap of four holds, the fifth is shed.
            transport.trusts = lambda host: host == "127.0.0.1"  # as the UA's policy would: the PBX only
            held = []
            for n in range(2, 7):
                sock = socket.socket()
                sock.bind((f"127.0.0.{n}", 0))
                sock.connect(("127.0.0.1", port))
                held.append(sock)
                await asyncio.sleep(0.05)
            # The fifth is accepted and shed a few turns of the loop after its connect: waited for (a loop
            # that stalled through the sleep above would not have got there yet), then the cap checked.
            async with asyncio.timeout(5):
                while "tcp-connections" not in shed:
                    await asyncio.sleep(0.02)
            assert transport.accepted_connections == LIMITS.tcp_connections
            assert "tcp-connections" in shed
            for sock in held:
                sock.close()
            await asyncio.sleep(LIMITS.tcp_message_s + 0.3)
            await all_released(transport)
            await served(port, pem, 6)

    run_on("asyncio", main())


@pytest.mark.parametrize("loop", LOOPS)
def test_closing_with_handshakes_in_flight_closes_their_sockets(loop: str, pem: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, _shed):
            port = transport.local_address[1]
            stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            half = await asyncio.open_connection("127.0.0.1", port)
            half[1].write(client_hello(pem)[:20])
            await asyncio.sleep(0.2)
            assert transport.accepted_connections == 3
            await transport.close()
            for reader, writer in [*stalled, half]:
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(reader.read(), 2) == b""
                writer.close()

    run_on(loop, main())


def test_a_client_asking_to_renegotiate_is_refused(pem: dict[str, Path]) -> None:
    """Each TLS 1.2 renegotiation costs the server a signature for a few bytes of the client's: refused
    (OP_NO_RENEGOTIATION, whatever OpenSSL's default), here against openssl s_client's "R" command."""
    settings = TlsSettings(ca_file=str(pem["ca"]), cert_file=str(pem["cert"]), key_file=str(pem["key"]))
    assert server_context(settings).options & ssl.OP_NO_RENEGOTIATION
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")

    async def main() -> None:
        async with serving(pem, LIMITS) as (transport, _shed):
            proc = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{transport.local_address[1]}", "-tls1_2",
                "-CAfile", str(pem["ca"]), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                await asyncio.wait_for(proc.stdout.readuntil(b"Verify return code: 0"), 5)
                proc.stdin.write(b"R\n")
                await proc.stdin.drain()
                out = await asyncio.wait_for(proc.stdout.read(), 5)  # the server ends the connection
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            assert b"RENEGOTIATING" in out and b"no renegotiation" in out
            await all_released(transport)
            await served(transport.local_address[1], pem, 7)

    run_on("asyncio", main())


def test_dialing_a_hostile_server_fails_in_plain_words_and_on_time(pem: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The client side: a server that accepts and never answers the ClientHello, one that answers in plain
    SIP, one that completes the handshake and then streams a header that never ends. Each is reported to
    on_error (the first two as a TlsHandshakeError in words), the queued messages are let go, and nothing
    is left behind."""
    monkeypatch.setattr("sipagent.sip.transport._CONNECT_TIMEOUT", 1.0)
    settings = TlsSettings(ca_file=str(pem["ca"]), cert_file=str(pem["cert"]), key_file=str(pem["key"]),
                           server_name="agent.test")

    async def main() -> None:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        failures: list[str] = []
        shed: list[str] = []

        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            await asyncio.sleep(5)
            writer.close()

        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            writer.write(b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
            await writer.drain()
            writer.close()

        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"SIP/2.0 200 OK\r\n")
            with contextlib.suppress(ConnectionError):
                for _ in range(200):
                    writer.write(b"X-Fill: " + b"a" * 1000 + b"\r\n")
                    await writer.drain()
            writer.close()

        servers = [await asyncio.start_server(stall, "127.0.0.1", 0),
                   await asyncio.start_server(plain, "127.0.0.1", 0),
                   await asyncio.start_server(endless, "127.0.0.1", 0, ssl=server_context(settings))]
        transport = TcpTransport("127.0.0.1", 0, lambda m, p: None, limits=LIMITS, on_shed=shed.append,
                                 on_error=lambda peer, exc: failures.append(str(exc)),
                                 ssl_client=client_context(settings))
        await transport.start()
        try:
            started = time.monotonic()
            for server in servers:
                port = server.sockets[0].getsockname()[1]
                transport.server_names[("127.0.0.1", port)] = "agent.test"
                transport.send(options(8), Peer("TLS", "127.0.0.1", port))
            deadline = time.monotonic() + 5
            while (len(failures) < 2 or transport._connecting or transport._connections) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert time.monotonic() - started < 3
            assert any("within the time allowed" in f for f in failures), failures
            assert any("does not speak TLS" in f for f in failures), failures
            assert "too-large" in shed
            assert not transport._connecting and not transport._connections
        finally:
            await transport.close()
            for server in servers:
                server.close()
        assert errors == [], errors

    run_on("asyncio", main())
