"""The user agent in direct mode (no registrar), driven by a scripted UDP peer on 127.0.0.1.

Covers what the phone peers cannot script: malformed datagrams, trust and capacity limits, INFO DTMF,
re-INVITE hold, and REFER with NOTIFY tracking.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from sipagent.errors import CallAbandoned, SdpError
from sipagent.sdp import NegotiatedMedia
from sipagent.sip.ua import DialError, IncomingCall, UaSettings, UserAgent

pytestmark = pytest.mark.timeout(60)

OFFER = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na={direction}\r\n"
)


def settings(**overrides: object) -> UaSettings:
    s = UaSettings(registrar=None, transport="udp", username="agent", password="", domain="127.0.0.1",
                   listen_host="127.0.0.1", listen_port=0, public_host=None, expires=300, max_calls=2,
                   trusted_hosts=[], codecs=["PCMA", "PCMU"])
    for name, value in overrides.items():
        setattr(s, name, value)
    return s


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.queue.put_nowait(data)


@dataclass
class ScriptedPeer:
    """A minimal caller: writes requests by hand, reads whatever the agent sends back."""

    target: tuple[str, int]
    transport: asyncio.DatagramTransport
    inbox: _Inbox
    port: int
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tag: str = "peer1"
    seen: list[bytes] = field(default_factory=list)

    @classmethod
    async def open(cls, target: tuple[str, int], host: str = "127.0.0.1") -> ScriptedPeer:
        loop = asyncio.get_running_loop()
        transport, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=(host, 0))
        return cls(target, transport, inbox, transport.get_extra_info("sockname")[1])

    def request(self, method: str, cseq: int, *, to_tag: str = "", body: str = "", branch: str = "",
                extra: str = "", content_type: str = "application/sdp") -> str:
        branch = branch or "z9hG4bK" + uuid.uuid4().hex[:12]
        to = "<sip:agent@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
        ctype = f"Content-Type: {content_type}\r\n" if body else ""
        text = (
            f"{method} sip:agent@{self.target[0]}:{self.target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport\r\n"
            f"From: <sip:caller@127.0.0.1>;tag={self.tag}\r\nTo: {to}\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
            f"{extra}{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"
        )
        self.send(text.encode())
        return branch

    def send(self, data: bytes) -> None:
        self.transport.sendto(data, self.target)

    async def expect(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for data in self.seen:
                if predicate(data):
                    self.seen.remove(data)
                    return data
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"nothing matched; got {[d[:40] for d in self.seen]}")
            try:
                self.seen.append(await asyncio.wait_for(self.inbox.queue.get(), remaining))
            except TimeoutError:
                continue

    async def status(self, code: int, method: str, timeout: float = 5.0) -> bytes:
        return await self.expect(
            lambda d: d.startswith(f"SIP/2.0 {code} ".encode()) and f" {method}\r\n".encode() in d, timeout
        )

    def ack(self, cseq: int, to_tag: str, branch: str = "", body: str = "") -> None:
        self.request("ACK", cseq, to_tag=to_tag, branch=branch, body=body)

    def close(self) -> None:
        self.transport.close()


def to_tag(response: bytes) -> str:
    for line in response.decode().split("\r\n"):
        if line.lower().startswith("to:"):
            return line.split("tag=")[1].split(";")[0].strip()
    raise AssertionError("no To tag")


def run(scenario: Callable[[UserAgent, ScriptedPeer], Awaitable[None]], on_call: Callable[[IncomingCall],
        Awaitable[None]], limit_s: float = 30, **overrides: object) -> None:
    async def main() -> None:
        ua = UserAgent(settings(**overrides), on_call, on_refused=REFUSED.append)
        await ua.start()
        peer = await ScriptedPeer.open(ua.local_address)
        try:
            await asyncio.wait_for(scenario(ua, peer), limit_s)
        finally:
            peer.close()
            await ua.stop()

    asyncio.run(main())


REFUSED: list[int] = []  # statuses the UA reported through on_refused, in order


async def _never(call: IncomingCall) -> None:
    await call.ended.wait()


def test_malformed_datagrams_get_400_or_are_dropped_and_the_agent_keeps_serving() -> None:
    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.send(b"\x00\xff garbage that is not SIP at all \r\n\r\n")
        via = b"Via: SIP/2.0/UDP 127.0.0.1:" + str(peer.port).encode()
        peer.send(b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\n" + via
                  + b";branch=z9hG4bKbad1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\n"
                  b"Call-ID: bad1\r\nCSeq: 1 INVITE\r\nMax-Forwards: lots\r\nContent-Length: 0\r\n\r\n")
        bad = await peer.expect(lambda d: d.startswith(b"SIP/2.0 400 "))
        assert b"Call-ID: bad1" in bad
        peer.request("OPTIONS", 1)
        ok = await peer.status(200, "OPTIONS")
        assert b"Allow: " in ok and b"INVITE" in ok and b"Accept: " in ok and b"application/sdp" in ok
        assert not [d for d in peer.seen if d.startswith(b"SIP/2.0 400")], "garbage must be dropped silently"

    run(scenario, _never)


def test_invite_from_untrusted_host_is_forbidden() -> None:
    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        final = await peer.status(403, "INVITE")
        peer.ack(1, to_tag(final))
        assert ua.active_calls == 0
        assert REFUSED[-1] == 403

    run(scenario, _never, trusted_hosts=["192.0.2.7"])


def test_max_calls_reached_gives_486() -> None:
    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        await peer.status(180, "INVITE")
        peer.call_id = "second-call"
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        await peer.status(486, "INVITE")
        assert ua.active_calls == 1
        assert REFUSED[-1] == 486

    run(scenario, _never, max_calls=1)


def test_answer_info_dtmf_hold_and_remote_bye() -> None:
    calls: list[IncomingCall] = []
    digits: list[tuple[str, int]] = []
    changes: list[NegotiatedMedia] = []

    async def on_call(call: IncomingCall) -> None:
        calls.append(call)
        call.on_dtmf = lambda digit, ms: digits.append((digit, ms))
        call.on_media_change = changes.append
        await call.answer("127.0.0.1", 41000)

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        await peer.status(100, "INVITE")
        await peer.status(180, "INVITE")
        ok = await peer.status(200, "INVITE")
        assert b"m=audio 41000 RTP/AVP 8 101" in ok, ok  # our preference (PCMA) wins
        tag = to_tag(ok)
        await peer.status(200, "INVITE", timeout=2.0)  # retransmitted until ACK
        peer.ack(1, tag)
        for _ in range(50):
            if calls and calls[0].state == "confirmed":
                break
            await asyncio.sleep(0.05)
        call = calls[0]
        assert call.media is not None and call.media.codec == "PCMA" and call.media.dtmf_payload_type == 101
        peer.request("INFO", 2, to_tag=tag, body="Signal=5\r\nDuration=160\r\n",
                     content_type="application/dtmf-relay")
        await peer.status(200, "INFO")
        assert digits == [("5", 160)]
        peer.request("INVITE", 3, to_tag=tag, body=OFFER.format(direction="sendonly"))
        reinvite_ok = await peer.status(200, "INVITE")
        assert b"a=recvonly" in reinvite_ok
        peer.ack(3, tag)
        assert changes and changes[-1].on_hold
        peer.request("BYE", 4, to_tag=tag)
        await peer.status(200, "BYE")
        await asyncio.wait_for(call.ended.wait(), 2)
        assert call.end_reason == "remote-bye" and ua.active_calls == 0

    run(scenario, on_call)


@pytest.mark.parametrize("outcome_after_s", [0.0, 31.0])
def test_blind_transfer_with_refer_and_notify(outcome_after_s: float) -> None:
    """31 s: Asterisk accepts the REFER, says 100, and sends its 200 only once audio reaches the caller (from
    a queue with no music, when a person answers). With its default wait the agent waits for it (the caller
    has left our leg meanwhile): it gave up at 30 s and the model was told the transfer failed."""
    calls: list[IncomingCall] = []

    async def on_call(call: IncomingCall) -> None:
        calls.append(call)
        await call.answer("127.0.0.1", 41002)

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        tag = to_tag(await peer.status(200, "INVITE"))
        peer.ack(1, tag)
        while not (calls and calls[0].state == "confirmed"):
            await asyncio.sleep(0.05)
        result = asyncio.create_task(calls[0].transfer("sip:1000@127.0.0.1"))  # the default wait
        refer = await peer.expect(lambda d: d.startswith(b"REFER "))
        assert b"Refer-To: <sip:1000@127.0.0.1>" in refer
        peer.send(_answer(refer, 202, "Accepted"))
        refer_cseq = int(refer.split(b"CSeq: ")[1].split(b" ")[0])
        # The agent's dialog identifiers: its tag is in From of its REFER.
        for cseq, frag, state in ((10, "SIP/2.0 100 Trying", "active"), (11, "SIP/2.0 200 OK", "terminated")):
            if cseq == 11 and outcome_after_s:
                await asyncio.sleep(outcome_after_s)  # nobody answers the queue for a while
                assert not result.done()
            peer.request("NOTIFY", cseq, to_tag=tag, body=frag + "\r\n", content_type="message/sipfrag",
                         extra=f"Event: refer\r\nSubscription-State: {state}\r\n")
            await peer.status(200, "NOTIFY")
        bye = await peer.expect(lambda d: d.startswith(b"BYE "))  # the transferor leaves the call
        assert int(bye.split(b"CSeq: ")[1].split(b" ")[0]) > refer_cseq
        peer.send(_answer(bye, 200, "OK"))
        assert await result is True
        assert calls[0].end_reason == "transferred"

    run(scenario, on_call, limit_s=45)


def answering(port: int, kind: type[Exception], caught: list[BaseException],
              after_end: bool = False) -> Callable[[IncomingCall], Awaitable[None]]:
    """An ``on_call`` that answers (once the call has ended, with ``after_end``) and keeps the ``kind`` of
    error the answer raised."""

    async def on_call(call: IncomingCall) -> None:
        if after_end:
            await call.ended.wait()
        try:
            await call.answer("127.0.0.1", port)
        except kind as exc:
            caught.append(exc)

    return on_call


async def until(condition: Callable[[], object], limit: float = 2.5) -> None:
    for _ in range(int(limit / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


def test_cancel_before_answer_gives_487_and_answering_it_raises_call_abandoned() -> None:
    """A CANCEL before the answer, or a BYE before the ACK: ordinary caller behaviour, told apart from a fault
    by its type (the agent counts it as cancelled, without an error in the log)."""
    raised: list[BaseException] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        branch = peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        await peer.status(180, "INVITE")
        peer.request("CANCEL", 1, branch=branch)
        await peer.status(200, "CANCEL")
        final = await peer.status(487, "INVITE")
        peer.ack(1, to_tag(final), branch=branch)
        await until(lambda: raised)
        assert [str(e) for e in raised] == ["the caller ended the call before it was answered (cancelled)"]

    run(scenario, answering(41010, CallAbandoned, raised, after_end=True))


def test_a_bye_before_the_ack_is_call_abandoned() -> None:
    raised: list[BaseException] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        ok = await peer.status(200, "INVITE")
        peer.request("BYE", 2, to_tag=to_tag(ok))  # the caller gave up as we answered: no ACK first
        await peer.status(200, "BYE")
        await until(lambda: raised)
        assert [str(e) for e in raised] == ["the caller ended the call before its ACK (remote-bye)"]

    run(scenario, answering(41012, CallAbandoned, raised))


def test_late_offer_invite_without_sdp_gets_our_offer_and_the_ack_carries_the_answer() -> None:
    calls: list[IncomingCall] = []
    answered: list[NegotiatedMedia] = []

    async def on_call(call: IncomingCall) -> None:
        calls.append(call)
        answered.append(await call.answer("127.0.0.1", 41004))
        await call.ended.wait()

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1)  # no body: some PBXs and SBCs leave the offer to the callee
        ok = await peer.status(200, "INVITE")
        assert b"m=audio 41004 RTP/AVP 8 0 101" in ok, ok  # every codec we carry, our order
        assert b"a=rtpmap:101 telephone-event/8000" in ok
        assert calls[0].offer is None and not answered  # the answer is not known before the ACK
        # The caller keeps PCMU only and sends its media to port 40010.
        answer = OFFER.format(direction="sendrecv").replace("40000 RTP/AVP 0 8 101", "40010 RTP/AVP 0 101")
        peer.ack(1, to_tag(ok), body=answer.replace("a=rtpmap:8 PCMA/8000\r\n", ""))
        for _ in range(50):
            if answered:
                break
            await asyncio.sleep(0.05)
        media = answered[0]
        assert (media.codec, media.payload_type, media.remote_port, media.dtmf_payload_type) == ("PCMU", 0, 40010,
                                                                                               101)
        assert calls[0].state == "confirmed" and calls[0].media == media
        peer.request("BYE", 2, to_tag=to_tag(ok))
        await peer.status(200, "BYE")

    run(scenario, on_call)


def test_late_offer_with_an_ack_without_answer_is_hung_up() -> None:
    outcome: list[BaseException] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1)
        ok = await peer.status(200, "INVITE")
        peer.ack(1, to_tag(ok))  # no SDP: the session has no media description from the caller
        bye = await peer.expect(lambda d: d.startswith(b"BYE "))
        peer.send(_answer(bye, 200, "OK"))
        await until(lambda: outcome and ua.active_calls == 0)
        assert outcome and ua.active_calls == 0

    run(scenario, answering(41006, SdpError, outcome))


def test_invite_with_a_body_that_is_not_sdp_gets_488() -> None:
    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body="this is not SDP\r\n")
        final = await peer.status(488, "INVITE")
        peer.ack(1, to_tag(final))
        assert REFUSED[-1] == 488 and ua.active_calls == 0

    run(scenario, _never)


def _answer(request: bytes, status: int, reason: str) -> bytes:
    """A response to one of the agent's requests, copying the headers RFC 3261 8.2.6.2 names."""
    lines = request.decode().split("\r\n")
    keep = [line for line in lines if line.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    return (f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_stranger_is_heard_only_inside_a_dialog_it_knows() -> None:
    """With the PBX (127.0.0.1) trusted, 127.0.0.2 is a stranger: its OPTIONS and garbage get nothing, and a
    BYE with a guessed tag nothing either; a request carrying the dialog's Call-ID and both tags (a phone
    the PBX put in touch with us directly) is taken from it."""
    calls: list[IncomingCall] = []

    async def on_call(call: IncomingCall) -> None:
        calls.append(call)
        await call.answer("127.0.0.1", 41004)

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        tag = to_tag(await peer.status(200, "INVITE"))
        peer.ack(1, tag)
        while not (calls and calls[0].state == "confirmed"):
            await asyncio.sleep(0.05)
        phone = await ScriptedPeer.open(ua.local_address, host="127.0.0.2")
        phone.call_id, phone.tag = peer.call_id, peer.tag
        try:
            phone.request("OPTIONS", 1)
            phone.send(b"\x00\xff garbage \r\n\r\n")
            phone.request("BYE", 2, to_tag="guessed")
            with pytest.raises(AssertionError, match="nothing matched"):
                await phone.expect(lambda d: True, timeout=1.0)
            assert calls[0].state == "confirmed"
            phone.request("BYE", 3, to_tag=tag)
            await phone.status(200, "BYE")
            await asyncio.wait_for(calls[0].ended.wait(), 2)
            assert calls[0].end_reason == "remote-bye"
        finally:
            phone.close()

    run(scenario, on_call, trusted_hosts=["127.0.0.1"])


def test_who_may_call_in_direct_mode() -> None:
    """Without trusted_hosts only loopback may call; allow_any_caller opens the door to everyone; a listed
    network or name counts every address in it."""

    async def policy(**overrides: object) -> UserAgent:
        ua = UserAgent(settings(**overrides), _never)
        await ua.start()
        await ua.stop()
        return ua

    async def main() -> None:
        default = await policy()
        assert default.policy.trusts("127.0.0.1") and default.policy.trusts("::1")
        assert not default.policy.trusts("192.0.2.9") and not default.policy.trusts("10.0.0.1")
        anyone = await policy(trusted_hosts=["192.0.2.7"], allow_any_caller=True)
        assert anyone.policy.trusts("203.0.113.50")
        listed = await policy(trusted_hosts=["192.0.2.0/28", "localhost"])
        assert listed.policy.trusts("192.0.2.14") and listed.policy.trusts("127.0.0.1")
        assert not listed.policy.trusts("192.0.2.16") and not listed.policy.trusts("127.0.0.2")

    asyncio.run(main())


def test_a_reinvite_without_sdp_takes_the_answer_from_the_ack() -> None:
    """A PBX that holds with a re-INVITE without SDP: our 200 carries the offer, its ACK the answer
    (sendonly), which must reach the media like any other hold."""
    calls: list[IncomingCall] = []
    changes: list[NegotiatedMedia] = []

    async def on_call(call: IncomingCall) -> None:
        calls.append(call)
        call.on_media_change = changes.append
        await call.answer("127.0.0.1", 41006)

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        tag = to_tag(await peer.status(200, "INVITE"))
        peer.ack(1, tag)
        while not (calls and calls[0].state == "confirmed"):
            await asyncio.sleep(0.05)
        peer.request("INVITE", 2, to_tag=tag)  # no body: we offer
        ok = await peer.status(200, "INVITE")
        assert b"m=audio 41006 " in ok
        peer.ack(2, tag, body=OFFER.format(direction="sendonly"))
        for _ in range(40):
            if changes:
                break
            await asyncio.sleep(0.05)
        assert changes and changes[-1].on_hold, changes

    run(scenario, on_call)


def _response_to(invite: bytes, status: int, reason: str, branch: str | None = None, tag: str = "callee1") -> bytes:
    """A response to ``invite`` (its Via, From, To, Call-ID and CSeq), with the top Via branch replaced when
    ``branch`` is given: what a third party that learnt the Call-ID could forge."""
    lines = invite.decode().split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    keep = [line for line in lines if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")]
    if branch is not None:
        keep = [line.replace(line.split("branch=")[1].split(";")[0], branch) if line.lower().startswith("via")
                else line for line in keep]
    to = next(line for line in lines if line.lower().startswith("to:"))
    head = [f"SIP/2.0 {status} {reason}", *keep, f"{to};tag={tag}", "Content-Length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def test_a_forged_response_to_our_invite_neither_ends_nor_answers_the_call() -> None:
    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        dialing = asyncio.ensure_future(ua.dial(f"sip:callee@127.0.0.1:{peer.port}", rtp_port=40100,
                                                ring_timeout=20))
        invite = await peer.expect(lambda d: d.startswith(b"INVITE "))
        peer.send(_response_to(invite, 180, "Ringing"))
        for status, reason in ((486, "Busy Here"), (603, "Decline")):
            peer.send(_response_to(invite, status, reason, branch="z9hG4bKforged"))
        await asyncio.sleep(0.3)
        assert not dialing.done()  # still ringing: the forgeries had no transaction of ours
        peer.send(_response_to(invite, 486, "Busy Here"))
        with pytest.raises(DialError) as refused:
            await dialing
        assert refused.value.outcome == "busy" and refused.value.status == 486

    run(scenario, _never)
