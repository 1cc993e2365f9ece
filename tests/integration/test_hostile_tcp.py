"""SIP over TCP against hostile peers, on loopback: a slow-loris, idle and surplus connections, oversized
and unframeable messages; the transport on short limits, then a running agent with sip.limits set. Each
attack is answered by closing what it holds while a normal caller is still served. (The UDP size limit
is tested in test_sip_transport.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from loop_order import run_on

from sipagent.sip.message import SipRequest, SipResponse, build_response
from sipagent.sip.transport import Peer, TcpTransport, TransportLimits

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = TransportLimits(max_message_bytes=4096, tcp_connections=5, tcp_connections_per_source=3,
                         tcp_idle_s=1.0, tcp_message_s=1.0)
LONG_IDLE = replace(LIMITS, tcp_idle_s=60.0)  # for tests where idling out would add a shed event
LOOPS = ["asyncio", "uvloop"]


def options(n: int, body: bytes = b"", extra: str = "", transport: str = "TCP") -> bytes:
    return (
        f"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bKhostile{n}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=h{n}\r\nTo: <sip:agent@127.0.0.1>\r\nCall-ID: hostile-{n}\r\n"
        f"CSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), timeout)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it does not within timeout)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def still_open(reader: asyncio.StreamReader, wait: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), wait)
    except TimeoutError:
        return True
    return False


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


@contextlib.asynccontextmanager
async def serving(limits: TransportLimits = LIMITS) -> AsyncIterator[tuple[TcpTransport, list[str]]]:
    """A TCP transport on 127.0.0.1 answering OPTIONS with 200, and the shed reasons it reported."""
    shed: list[str] = []
    transport: TcpTransport

    def on_message(message: SipRequest | SipResponse, peer: Peer) -> None:
        if isinstance(message, SipRequest):
            transport.send(build_response(message, 200).to_bytes(), peer)

    transport = TcpTransport("127.0.0.1", 0, on_message, limits=limits, on_shed=shed.append)
    await transport.start()
    try:
        yield transport, shed
    finally:
        await transport.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_loris_is_closed_on_time_while_a_normal_caller_is_served(loop: str) -> None:
    async def main() -> None:
        async with serving() as (transport, shed):
            port = transport.local_address[1]
            loris_reader, loris = await connect(port)
            started = time.monotonic()

            async def trickle() -> None:
                for byte in options(1):  # one byte every 50 ms: the message would take 12 s
                    loris.write(bytes([byte]))
                    await asyncio.sleep(0.05)

            trickling = asyncio.create_task(trickle())
            loris_closed = asyncio.create_task(closed_by_server(loris_reader, LIMITS.tcp_message_s + 3))
            reader, writer = await connect(port)
            try:
                n = 2
                while not loris_closed.done():  # a caller busy on its own connection all along
                    writer.write(options(n))
                    assert b"Call-ID: hostile-%d\r\n" % n in await read_response(reader)
                    n += 1
                    await asyncio.sleep(0.1)
                assert await loris_closed == b""
                assert n > 5 and not trickling.done()  # served while the loris was connected
                elapsed = time.monotonic() - started
                assert LIMITS.tcp_message_s - 0.1 <= elapsed <= LIMITS.tcp_message_s + 3
                assert shed == ["tcp-slow-message"]
                # The caller's connection was busy, not slow: it stays until it has been idle long enough.
                writer.write(options(n))
                assert b"Call-ID: hostile-%d\r\n" % n in await read_response(reader)
                assert await closed_by_server(reader, LIMITS.tcp_idle_s + 3) == b""
                assert shed == ["tcp-slow-message", "tcp-idle"]
            finally:
                trickling.cancel()
                loris.close()
                writer.close()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_accepted_connection_is_closed_and_our_own_is_kept(loop: str) -> None:
    async def main() -> None:
        connected, closed = asyncio.Event(), asyncio.Event()

        async def registrar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            await reader.read()  # holds the connection until the agent closes it
            closed.set()
            writer.close()

        server = await asyncio.start_server(registrar, "127.0.0.1", 0)
        registrar_port = server.sockets[0].getsockname()[1]
        async with serving() as (transport, shed):
            started = time.monotonic()  # before the connect: its idle time runs from the accept
            reader, writer = await connect(transport.local_address[1])
            transport.send(options(1), Peer("TCP", "127.0.0.1", registrar_port))  # a connection of ours
            assert await closed_by_server(reader, LIMITS.tcp_idle_s + 3) == b""
            assert time.monotonic() - started >= LIMITS.tcp_idle_s - 0.1
            assert shed == ["tcp-idle"]
            assert transport.accepted_connections == 0
            await asyncio.sleep(LIMITS.tcp_idle_s + 0.5)
            assert connected.is_set() and not closed.is_set()
            writer.close()
        server.close()
        await server.wait_closed()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_over_the_caps_are_closed_at_once(loop: str) -> None:
    async def main() -> None:
        async with serving(LONG_IDLE) as (transport, shed):
            transport.trusts = lambda host: host == "127.0.0.1"  # the PBX; the others are strangers
            port = transport.local_address[1]
            held = [await connect(port) for _ in range(LIMITS.tcp_connections_per_source)]
            extra_reader, extra = await connect(port)
            assert await closed_by_server(extra_reader, 2) == b""
            assert shed == ["tcp-connections-per-source"]
            # Other sources (127.0.0.0/8 is all loopback) fill the total; the one after that is closed.
            held += [await connect(port, "127.0.0.2") for _ in range(2)]
            over_reader, over = await connect(port, "127.0.0.3")
            assert await closed_by_server(over_reader, 2) == b""
            assert shed == ["tcp-connections-per-source", "tcp-connections"]
            assert transport.accepted_connections == LIMITS.tcp_connections
            # The held ones are served, and closing one makes room for its source again.
            reader, writer = held[0]
            writer.write(options(1))
            assert b"Call-ID: hostile-1\r\n" in await read_response(reader)
            writer.close()
            await asyncio.sleep(0.2)
            again_reader, again = await connect(port)
            again.write(options(2))
            assert b"Call-ID: hostile-2\r\n" in await read_response(again_reader)
            for _, w in [*held[1:], (again_reader, again)]:
                w.close()
            extra.close()
            over.close()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_strangers_filling_the_total_cap_do_not_lock_out_a_trusted_source(loop: str) -> None:
    async def main() -> None:
        async with serving(LONG_IDLE) as (transport, shed):
            transport.trusts = lambda host: host == "127.0.0.1"  # the UA's policy: 127.0.0.1 is the PBX
            port = transport.local_address[1]
            strangers = [await connect(port, f"127.0.0.{2 + i // 3}") for i in range(LIMITS.tcp_connections)]
            refused_reader, refused = await connect(port, "127.0.0.9")
            assert await closed_by_server(refused_reader, 2) == b""
            assert shed == ["tcp-connections"]
            pbx_reader, pbx = await connect(port)  # over the total, but trusted: its own cap applies
            pbx.write(options(1))
            assert b"Call-ID: hostile-1\r\n" in await read_response(pbx_reader)
            for _, w in [*strangers, (refused_reader, refused), (pbx_reader, pbx)]:
                w.close()

    run_on(loop, main())


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        (options(1, body=b"v" * 5000), b"SIP/2.0 513 Message Too Large\r\n"),  # body over the limit
        (options(1, extra="X-Pad: " + "p" * 5000 + "\r\n"), b"SIP/2.0 513 Message Too Large\r\n"),  # head
        (b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\nX-Pad: " + b"p" * 5000, b""),  # head unusable: no answer
        (options(1).replace(b"Content-Length: 0", b"Content-Length: lots"),
         b"SIP/2.0 400 bad Content-Length header\r\n"),
    ],
    ids=["body", "head", "unusable-head", "bad-content-length"],
)
def test_an_oversized_or_unframeable_message_is_answered_and_the_connection_closed(
    message: bytes, answer: bytes
) -> None:
    async def main() -> None:
        async with serving(LONG_IDLE) as (transport, shed):
            reader, writer = await connect(transport.local_address[1])
            writer.write(options(7) + message)  # a good message first: it is still answered
            assert b"Call-ID: hostile-7\r\n" in await read_response(reader)
            rest = await closed_by_server(reader, 5)
            assert rest.startswith(answer)
            if answer:
                assert b"Call-ID: hostile-1\r\n" in rest and b"branch=z9hG4bKhostile1" in rest
            assert shed == ["unframeable" if b"400" in answer else "too-large"]
            writer.close()

    asyncio.run(main())


# -- the same attacks on a running agent, with limits set in its configuration --------------------------

AGENT_LIMITS = TransportLimits(tcp_connections_per_source=4, tcp_message_s=2.0)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agent_over_tcp(tmp_path: Path) -> Iterator[int]:
    """``sipagent run`` on the demo configuration with ``sip.transport: tcp``; yields its SIP port."""
    port = free_tcp_port()
    rtp_low = 43000 + (os.getpid() % 200) * 10
    text = (
        (ROOT / "sipagent" / "data" / "demo.yaml").read_text()
        .replace('listen: "127.0.0.1:${SIPAGENT_DEMO_PORT:-5080}"',
                 f'listen: "127.0.0.1:{port}"\n  transport: tcp\n'
                 f'  limits: {{tcp_connections_per_source: {AGENT_LIMITS.tcp_connections_per_source}, '
                 f'tcp_message_s: {AGENT_LIMITS.tcp_message_s}}}')
        .replace('rtp_ports: "41000-41099"', f'rtp_ports: "{rtp_low}-{rtp_low + 9}"')
        .replace('dir: "${SIPAGENT_DEMO_DIR:-recordings}"', f'dir: "{tmp_path / "rec"}"')
    )
    assert "transport: tcp" in text
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "sipagent.cli", "run", "-c", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while "sipagent ready" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield port
        assert process.poll() is None, log_path.read_text()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def test_a_running_agent_over_tcp_sheds_a_slow_loris_surplus_connections_and_an_oversized_message(
    agent_over_tcp: int,
) -> None:
    limits = AGENT_LIMITS  # what the agent runs with: sip.limits in its file

    async def main() -> None:
        port = agent_over_tcp
        loris_reader, loris = await connect(port)
        started = time.monotonic()  # before the write: the agent's clock for the message starts at its first byte
        loris.write(options(1)[:40])  # and never the rest
        held = [await connect(port) for _ in range(limits.tcp_connections_per_source - 1)]
        extra_reader, extra = await connect(port)
        assert await closed_by_server(extra_reader, 5) == b""  # one over the cap from one address
        reader, writer = held[0]
        writer.write(options(2))
        answer = await read_response(reader)
        assert answer.startswith(b"SIP/2.0 200 OK\r\n") and b"Call-ID: hostile-2\r\n" in answer
        big_reader, big = held[1]
        big.write(options(3, body=b"x" * limits.max_message_bytes))
        assert (await closed_by_server(big_reader, 5)).startswith(b"SIP/2.0 513 Message Too Large\r\n")
        if time.monotonic() - started < limits.tcp_message_s - 0.5:  # (a stalled test may be past it already)
            assert await still_open(loris_reader, 0.1)  # in the middle of its message, not yet late
        assert await closed_by_server(loris_reader, limits.tcp_message_s + 5) == b""
        assert time.monotonic() - started >= limits.tcp_message_s - 0.1
        writer.write(options(4))  # and the normal caller is still served
        assert b"Call-ID: hostile-4\r\n" in await read_response(reader)
        for w in (loris, extra, *(w for _, w in held)):
            w.close()

    asyncio.run(main())
