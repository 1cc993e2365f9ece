"""SIP transports on real loopback sockets: TCP framing, stream errors, send errors, trace redaction."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from loop_order import run_on

from sipagent.observability import metrics
from sipagent.sip.message import SipRequest, SipResponse, build_response
from sipagent.sip.transport import (
    SHED_REASONS,
    Peer,
    TcpTransport,
    TransportLimits,
    UdpTransport,
    create_transport,
    redact,
)

pytestmark = pytest.mark.timeout(30)


def options(port: int, n: int) -> bytes:
    return (
        "OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bKtcp{n}\r\n"
        f"From: <sip:t@127.0.0.1>;tag=t{n}\r\nTo: <sip:agent@127.0.0.1>\r\nCall-ID: tcp{n}\r\n"
        f"CSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class UdpClient(asyncio.DatagramProtocol):
    """A plain UDP socket on 127.0.0.1 that queues what it receives."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.replies.put_nowait(data)


async def udp_client() -> UdpClient:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    client.transport = transport
    return client


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_tcp_frames_split_and_pipelined_messages_and_answers_on_the_same_connection() -> None:
    async def main() -> None:
        received: list[tuple[SipRequest | SipResponse, Peer]] = []
        transport: TcpTransport

        def on_message(message: SipRequest | SipResponse, peer: Peer) -> None:
            received.append((message, peer))
            assert isinstance(message, SipRequest)
            reply = f"SIP/2.0 200 OK\r\nCall-ID: {message.call_id}\r\nContent-Length: 0\r\n\r\n"
            transport.send(reply.encode(), peer)

        transport = TcpTransport("127.0.0.1", 0, on_message)
        await transport.start()
        reader, writer = await asyncio.open_connection(*transport.local_address)
        try:
            port = writer.get_extra_info("sockname")[1]
            first, second, third = options(port, 1), options(port, 2), options(port, 3)
            writer.write(b"\r\n\r\n" + first[:30])  # keep-alive CRLFs, then half a message
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(first[30:] + second + third)
            await writer.drain()
            replies = [await asyncio.wait_for(_read_message(reader), 5) for _ in range(3)]
            assert [r.split(b"Call-ID: ")[1][:4] for r in replies] == [b"tcp1", b"tcp2", b"tcp3"]
            assert all(peer.port == port and peer.transport == "TCP" for _, peer in received)
            # A stream that cannot be framed any more is closed.
            writer.write(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: many\r\n\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await transport.close()

    asyncio.run(main())


def test_udp_handler_errors_do_not_stop_the_transport() -> None:
    async def main() -> None:
        seen: list[str] = []

        def on_message(message: SipRequest | SipResponse, peer: Peer) -> None:
            assert isinstance(message, SipRequest)
            seen.append(message.call_id)
            raise RuntimeError("handler bug")

        transport = UdpTransport("127.0.0.1", 0, on_message)
        await transport.start()
        loop = asyncio.get_running_loop()
        client, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            for n in (1, 2):
                client.sendto(options(5060, n).replace(b"TCP", b"UDP"), transport.local_address)
            for _ in range(100):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.02)
            assert seen == ["tcp1", "tcp2"]
        finally:
            client.close()
            await transport.close()

    asyncio.run(main())


def test_trace_redacts_digest_credentials() -> None:
    message = (b'REGISTER sip:pbx SIP/2.0\r\nAuthorization: Digest username="1001", realm="pbx", '
               b'nonce="abc", response="0123456789abcdef"\r\n'
               b'proxy-authorization: Digest username="1001", response="fedcba"\r\nCall-ID: x\r\n\r\n')
    out = redact(message)
    assert b"0123456789abcdef" not in out and b"fedcba" not in out
    assert b'Authorization: Digest username="1001", <redacted>' in out
    assert b"Call-ID: x" in out


def test_trace_redacts_sdes_media_keys() -> None:
    key = b"WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    out = redact(b"INVITE sip:a SIP/2.0\r\n\r\nm=audio 4000 RTP/SAVP 0\r\n"
                 b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + key + b"|2^20\r\n")
    assert key not in out and b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<redacted>|2^20" in out
    assert key not in redact(b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 INLINE:" + key + b"\r\n")  # any case


LOOPS = ["asyncio", "uvloop"]


# A Via naming a host, an impossible port or a NUL must never make send raise or close the socket.
BAD_PEERS = [("no-such-host.invalid", 5060), ("127.0.0.1", 70000), ("127.0.0.1", 0), ("a\x00b", 5060),
             ("127.0.0.1", -1)]


@pytest.mark.parametrize("loop", LOOPS)
def test_udp_send_errors_are_reported_and_the_socket_keeps_working(loop: str) -> None:
    async def main() -> None:
        failed: list[Peer] = []
        transport: UdpTransport

        def on_message(message: SipRequest | SipResponse, peer: Peer) -> None:
            assert isinstance(message, SipRequest)
            for host, port in BAD_PEERS:
                transport.send(b"SIP/2.0 200 OK\r\n\r\n", Peer("UDP", host, port))
            transport.send(build_response(message, 200).to_bytes(), peer)

        transport = UdpTransport("127.0.0.1", 0, on_message, lambda peer, exc: failed.append(peer))
        await transport.start()
        client = await udp_client()
        try:
            for n in (1, 2):  # the second request proves the first round of bad sends left the socket open
                client.transport.sendto(options(5060, n).replace(b"TCP", b"UDP"), transport.local_address)
                reply = await asyncio.wait_for(client.replies.get(), 5)
                assert reply.startswith(b"SIP/2.0 200 OK\r\n") and f"Call-ID: tcp{n}".encode() in reply
            assert [(p.host, p.port) for p in failed] == BAD_PEERS * 2
        finally:
            client.transport.close()
            await transport.close()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_tcp_send_errors_are_reported_and_nothing_waits_for_them(loop: str) -> None:
    async def main() -> None:
        failed: list[Peer] = []
        transport = TcpTransport("127.0.0.1", 0, lambda m, p: None, lambda peer, exc: failed.append(peer))
        await transport.start()
        try:
            for host, port in BAD_PEERS:
                transport.send(b"OPTIONS", Peer("TCP", host, port))
            for _ in range(250):
                if len(failed) == len(BAD_PEERS):
                    break
                await asyncio.sleep(0.02)
            assert sorted((p.host, p.port) for p in failed) == sorted(BAD_PEERS)
            assert transport._connecting == {}  # no message is left queued for a connect that never ran
        finally:
            await transport.close()

    run_on(loop, main())


def test_tcp_answers_a_double_crlf_ping_with_a_crlf_pong() -> None:
    async def main() -> None:
        transport = TcpTransport("127.0.0.1", 0, lambda m, p: None)
        await transport.start()
        reader, writer = await asyncio.open_connection(*transport.local_address)
        try:
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
            writer.write(b"\r\n\r")  # one ping in two reads: one pong
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"\n")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        finally:
            writer.close()
            await transport.close()

    asyncio.run(main())


def test_transport_limits_defaults_and_validation() -> None:
    assert TransportLimits() == TransportLimits(
        max_message_bytes=32768, tcp_connections=256, tcp_connections_per_source=16, tcp_idle_s=300.0,
        tcp_message_s=10.0,
    )
    assert SHED_REASONS == ("untrusted", "too-large", "tcp-connections", "tcp-connections-per-source", "tcp-idle",
                            "tcp-slow-message", "unframeable", "tls-handshake")
    assert set(SHED_REASONS) <= set(metrics.SHED_REASONS)  # every reason has its series from the start
    with pytest.raises(ValueError, match="tcp_idle_s"):
        TransportLimits(tcp_idle_s=0)
    with pytest.raises(ValueError, match="at most 65535"):  # the parser's own bound
        TransportLimits(max_message_bytes=65536)
    limits = TransportLimits(max_message_bytes=1000)
    for name in ("udp", "tcp", "tls"):
        assert create_transport(name, "127.0.0.1", 0, lambda m, p: None, limits=limits).limits is limits


@pytest.mark.parametrize("loop", LOOPS)
def test_a_udp_datagram_over_the_limit_gets_513_from_its_head_alone(loop: str) -> None:
    async def main() -> None:
        shed: list[str] = []
        dispatched: list[str] = []

        def on_message(message: SipRequest | SipResponse, peer: Peer) -> None:
            dispatched.append(message.call_id)

        limits = TransportLimits(max_message_bytes=4096)
        transport = UdpTransport("127.0.0.1", 0, on_message, limits=limits, on_shed=shed.append)
        await transport.start()
        client = await udp_client()

        def request(n: int, *, body: bytes = b"", pad: int = 0) -> bytes:
            head = options(5060, n).replace(b"TCP", b"UDP")
            extra = (b"X-Pad: " + b"p" * pad + b"\r\n") if pad else b""
            return head.replace(b"Content-Length: 0", extra + b"Content-Length: %d" % len(body)) + body

        try:
            client.transport.sendto(request(1, body=b"b" * 6000), transport.local_address)
            reply = await asyncio.wait_for(client.replies.get(), 5)
            assert reply.startswith(b"SIP/2.0 513 Message Too Large\r\n") and b"Call-ID: tcp1\r\n" in reply
            # A head that does not end within the limit cannot be answered: dropped, counted all the same.
            client.transport.sendto(request(2, pad=5000), transport.local_address)
            client.transport.sendto(request(3, body=b"b" * 3000), transport.local_address)  # within the limit
            for _ in range(100):
                if dispatched:
                    break
                await asyncio.sleep(0.02)
            assert dispatched == ["tcp3"]
            assert client.replies.empty()
            assert shed == ["too-large", "too-large"]
        finally:
            client.transport.close()
            await transport.close()

    run_on(loop, main())
