"""The address we advertise (Via, Contact, SDP o= and c=) is one decision, and never a wildcard.

With `sip.listen: "0.0.0.0:PORT"` (the example configuration) and no `public_address`, the answer used to
say `c=IN IP4 0.0.0.0`: a PBX reads that as hold and, across a network, sends the caller's audio nowhere
(on loopback the kernel delivers 0.0.0.0 locally, which is why no call test saw it). These tests read the
SDP text itself.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from agent_helpers import OFFER, Udp, request, running_agent

from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent

pytestmark = pytest.mark.timeout(60)


def answer_of(responses: list[bytes]) -> str:
    ok = next(r for r in responses if r.startswith(b"SIP/2.0 200 "))
    return ok.decode()


def test_an_agent_bound_to_every_interface_advertises_the_address_towards_the_caller(tmp_path: Path) -> None:
    with running_agent(tmp_path, listen_host="0.0.0.0") as agent:
        caller = Udp()
        try:
            invite = request("INVITE", agent.target, via=f"127.0.0.1:{caller.port}", body=OFFER.format(port=4000))
            caller.send(invite, agent.target)
            responses = caller.collect(3.0)
        finally:
            caller.close()
    ok = answer_of(responses)
    assert "c=IN IP4 127.0.0.1\r\n" in ok, ok
    assert re.search(r"\r\no=\S+ \d+ \d+ IN IP4 127\.0\.0\.1\r\n", ok), ok
    assert re.search(r"\r\nContact: <sip:agent@127\.0\.0\.1:\d+>", ok), ok
    assert "0.0.0.0" not in ok, ok


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_the_same_way() -> None:
    """Bound to "::", a call from ::1 is answered with IP6 ::1 in o=, c= and Contact."""

    async def on_call(call: IncomingCall) -> None:
        await call.answer(call.local_host, 41010)
        await call.ended.wait()

    async def main() -> None:
        settings = UaSettings(registrar=None, transport="udp", username="agent", password="", domain="::1",
                              listen_host="::", listen_port=0, public_host=None, expires=300, max_calls=2,
                              trusted_hosts=[], codecs=["PCMU"])
        ua = UserAgent(settings, on_call)
        await ua.start()
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Inbox(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Inbox, local_addr=("::1", 0))
        port = transport.get_extra_info("sockname")[1]
        offer = OFFER.format(port=4000).replace("IN IP4 127.0.0.1", "IN IP6 ::1")
        invite = (f"INVITE sip:agent@[::1]:{ua.local_address[1]} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP [::1]:{port};branch=z9hG4bKv6;rport\r\n"
                  "From: <sip:caller@[::1]>;tag=v6\r\nTo: <sip:agent@[::1]>\r\nCall-ID: v6@test\r\n"
                  f"CSeq: 1 INVITE\r\nContact: <sip:caller@[::1]:{port}>\r\nMax-Forwards: 70\r\n"
                  f"Content-Type: application/sdp\r\nContent-Length: {len(offer)}\r\n\r\n{offer}")
        transport.sendto(invite.encode(), ("::1", ua.local_address[1]))
        try:
            while not (data := await asyncio.wait_for(received.get(), 5)).startswith(b"SIP/2.0 200 "):
                pass
        finally:
            transport.close()
            await ua.stop()
        ok = data.decode()
        assert "c=IN IP6 ::1\r\n" in ok and re.search(r"\r\no=\S+ \d+ \d+ IN IP6 ::1\r\n", ok), ok
        assert "Contact: <sip:agent@[::1]:" in ok, ok

    asyncio.run(main())


def test_public_address_wins_everywhere(tmp_path: Path) -> None:
    with running_agent(tmp_path, {"public_address": "203.0.113.10"}, listen_host="0.0.0.0") as agent:
        caller = Udp()
        try:
            caller.send(request("INVITE", agent.target, via=f"127.0.0.1:{caller.port}",
                                body=OFFER.format(port=4000)), agent.target)
            ok = answer_of(caller.collect(3.0))
        finally:
            caller.close()
    assert "c=IN IP4 203.0.113.10\r\n" in ok and "IN IP4 203.0.113.10\r\nt=" in ok
    assert "Contact: <sip:agent@203.0.113.10:" in ok
