"""Session timers (RFC 4028), UPDATE (RFC 3311) and reliable provisional responses (RFC 3262) on the wire.

Two halves. The user agent in-process against a scripted UDP peer, with intervals of a few seconds (the
UA takes what UaSettings says; the RFC's 90 s floor is the configuration's to enforce) for what needs
exact control: glare, 422/491/481 answers to our refreshes, PRACK matching. Then SIPp playing what
Asterisk and FreeSWITCH send against a running agent with honest RFC values: all scenarios run at once
against one agent, so the file costs about as long as its longest call (≈80 s).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import pytest
from test_sip_direct import OFFER, ScriptedPeer, to_tag

from sipagent.sdp import NegotiatedMedia
from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent

pytestmark = pytest.mark.timeout(60)

TIMER = "Supported: timer\r\n"
ALLOWS_UPDATE = "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK\r\n"


def settings(**overrides: object) -> UaSettings:
    s = UaSettings(registrar=None, transport="udp", username="agent", password="", domain="127.0.0.1",
                   listen_host="127.0.0.1", listen_port=0, public_host=None, expires=300, max_calls=2,
                   trusted_hosts=[], codecs=["PCMU"], session_expires=1800, min_se=90)
    for name, value in overrides.items():
        setattr(s, name, value)
    return s


def run(scenario: Callable[[UserAgent, ScriptedPeer], Awaitable[None]],
        on_call: Callable[[IncomingCall], Awaitable[None]], refused: list[int] | None = None,
        **overrides: object) -> None:
    async def main() -> None:
        ua = UserAgent(settings(**overrides), on_call, on_refused=(refused if refused is not None else []).append)
        await ua.start()
        peer = await ScriptedPeer.open(ua.local_address)
        try:
            await asyncio.wait_for(scenario(ua, peer), 40)
        finally:
            peer.close()
            await ua.stop()

    asyncio.run(main())


def answering(calls: list[IncomingCall], changes: list[NegotiatedMedia] | None = None) -> Callable[
        [IncomingCall], Awaitable[None]]:
    async def on_call(call: IncomingCall) -> None:
        calls.append(call)
        if changes is not None:
            call.on_media_change = changes.append
        await call.answer("127.0.0.1", 41010)
        await call.ended.wait()

    return on_call


def header(message: bytes, name: str) -> str:
    match = re.search(rb"^" + name.encode() + rb": *(.*?)\r$", message, re.MULTILINE | re.IGNORECASE)
    return match.group(1).decode() if match else ""


def cseq(message: bytes) -> int:
    return int(header(message, "CSeq").split()[0])


def reply(peer: ScriptedPeer, request: bytes, status: int, reason: str, extra: str = "", body: str = "") -> None:
    """Our scripted peer answers one of the agent's requests (RFC 3261 8.2.6.2 headers copied)."""
    lines = request.decode().split("\r\n")
    keep = [line for line in lines if line.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    peer.send((f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(keep)
               + f"\r\nContact: <sip:caller@127.0.0.1:{peer.port}>\r\n"
               f"{extra}{ctype}Content-Length: {len(body)}\r\n\r\n{body}").encode())


async def call_up(peer: ScriptedPeer, calls: list[IncomingCall], extra: str = "", body: str | None = None) -> bytes:
    """INVITE, 200, ACK: the agent's 200 OK."""
    peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv") if body is None else body, extra=extra)
    ok = await peer.status(200, "INVITE")
    peer.ack(1, to_tag(ok))
    while not (calls and calls[0].state == "confirmed"):
        await asyncio.sleep(0.02)
    return ok


def requests(peer: ScriptedPeer, method: str) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(f"{method} sip:".encode())


# -- negotiation ------------------------------------------------------------------------------------

def test_options_and_answers_allow_update_and_support_timer_and_100rel() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("OPTIONS", 1)
        options = await peer.status(200, "OPTIONS")
        assert "UPDATE" in header(options, "Allow") and "PRACK" in header(options, "Allow")
        assert header(options, "Supported") == "timer, 100rel"
        ok = await call_up(peer, calls, extra=TIMER + "Session-Expires: 1800\r\nMin-SE: 90\r\n")
        # Asterisk's INVITE: it supports timers and leaves the refresher open, so it refreshes.
        assert header(ok, "Session-Expires") == "1800;refresher=uac" and header(ok, "Require") == "timer"
        assert "UPDATE" in header(ok, "Allow") and header(ok, "Supported") == "timer, 100rel"

    run(scenario, answering(calls))


def test_an_interval_below_min_se_gets_a_stateless_422_and_the_retry_is_answered() -> None:
    calls: list[IncomingCall] = []
    refused: list[int] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        branch = peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"),
                              extra=TIMER + "Session-Expires: 90\r\nMin-SE: 90\r\n")
        too_small = await peer.status(422, "INVITE")
        assert header(too_small, "Min-SE") == "600" and not calls and ua.server_transactions == 0
        peer.ack(1, to_tag(too_small), branch=branch)
        assert refused == []  # no call was refused: the PBX asks again at once
        ok = await call_up(peer, calls, extra=TIMER + "Session-Expires: 600\r\nMin-SE: 600\r\n")
        assert header(ok, "Session-Expires") == "600;refresher=uac"
        # A refresh below the minimum is refused in the dialog, and the call goes on.
        peer.request("UPDATE", 2, to_tag=to_tag(ok), extra=TIMER + "Session-Expires: 300\r\n")
        assert header(await peer.status(422, "UPDATE"), "Min-SE") == "600"
        assert calls[0].state == "confirmed"

    run(scenario, answering(calls), refused, min_se=600)


# -- the peer refreshes ------------------------------------------------------------------------------

def test_without_refreshes_the_agent_ends_the_call_before_the_interval_runs_out() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        loop = asyncio.get_running_loop()
        ok = await call_up(peer, calls, extra=TIMER + "Session-Expires: 3;refresher=uac\r\n")
        answered = loop.time()
        # A refresh by re-INVITE (with the same SDP) and one by UPDATE each restart the interval.
        await asyncio.sleep(1.2)
        peer.request("INVITE", 2, to_tag=to_tag(ok), body=OFFER.format(direction="sendrecv"),
                     extra=TIMER + "Session-Expires: 3;refresher=uac\r\n")
        assert header(await peer.status(200, "INVITE"), "Session-Expires") == "3;refresher=uac"
        peer.ack(2, to_tag(ok))
        await asyncio.sleep(1.2)
        peer.request("UPDATE", 3, to_tag=to_tag(ok), extra=TIMER + "Session-Expires: 3;refresher=uac\r\n")
        refreshed = await peer.status(200, "UPDATE")
        updated = loop.time()
        assert header(refreshed, "Session-Expires") == "3;refresher=uac" and header(refreshed, "Require") == "timer"
        bye = await peer.expect(requests(peer, "BYE"), timeout=4)
        # 3 s - min(32, 3/3) after the last refresh: 2 s, where without refreshes it was 2 s after the answer.
        assert 1.8 < loop.time() - updated < 2.5 and loop.time() - answered > 3.5
        reply(peer, bye, 200, "OK")
        await asyncio.wait_for(calls[0].ended.wait(), 1)
        assert calls[0].end_reason == "session-expired"

    run(scenario, answering(calls), min_se=2)


# -- we refresh --------------------------------------------------------------------------------------

def test_we_refresh_by_update_when_allowed_and_fall_back_to_reinvite_on_405() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        loop = asyncio.get_running_loop()
        ok = await call_up(peer, calls, extra=TIMER + ALLOWS_UPDATE + "Session-Expires: 4;refresher=uas\r\n")
        assert header(ok, "Session-Expires") == "4;refresher=uas" and header(ok, "Require") == "timer"
        answered = loop.time()
        update = await peer.expect(requests(peer, "UPDATE"), timeout=4)
        assert 1.8 < loop.time() - answered < 2.5  # half the interval
        assert header(update, "Session-Expires") == "4;refresher=uac" and "timer" in header(update, "Supported")
        assert b"Content-Length: 0" in update and header(update, "Contact")
        reply(peer, update, 405, "Method Not Allowed", extra="Allow: INVITE, ACK, BYE\r\n")
        reinvite = await peer.expect(requests(peer, "INVITE"), timeout=2)
        assert cseq(reinvite) == cseq(update) + 1 and b"m=audio 41010 " in reinvite
        # Our SDP unchanged: the o= line of our 200 OK, version and all (RFC 3264 8).
        assert re.search(rb"o=.*\r", reinvite).group(0) == re.search(rb"o=.*\r", ok).group(0)  # type: ignore[union-attr]
        answer = OFFER.format(direction="sendrecv")
        reply(peer, reinvite, 200, "OK", extra=TIMER + "Session-Expires: 4;refresher=uac\r\n", body=answer)
        ack = await peer.expect(requests(peer, "ACK"), timeout=2)
        assert cseq(ack) == cseq(reinvite) and header(ack, "CSeq").endswith("ACK")
        reply(peer, reinvite, 200, "OK", extra=TIMER + "Session-Expires: 4;refresher=uac\r\n", body=answer)
        assert cseq(await peer.expect(requests(peer, "ACK"), timeout=2)) == cseq(reinvite)  # a 2xx again: ACK again
        second = await peer.expect(requests(peer, "INVITE"), timeout=4)  # the peer has shown it has no UPDATE
        reply(peer, second, 200, "OK", extra="Session-Expires: 4;refresher=uac\r\n", body=answer)
        await peer.expect(requests(peer, "ACK"), timeout=2)
        assert calls[0].state == "confirmed"

    run(scenario, answering(calls), session_expires=4, min_se=2)


def test_a_caller_without_timers_gets_our_timer_refreshed_by_reinvite() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        ok = await call_up(peer, calls)  # no Supported: timer, no Session-Expires, no UPDATE in Allow
        assert header(ok, "Session-Expires") == "4;refresher=uas" and not header(ok, "Require")
        reinvite = await peer.expect(requests(peer, "INVITE"), timeout=4)
        assert header(reinvite, "Session-Expires") == "4;refresher=uac"
        reply(peer, reinvite, 200, "OK", body=OFFER.format(direction="sendrecv"))  # says nothing of timers
        await peer.expect(requests(peer, "ACK"), timeout=2)
        again = await peer.expect(requests(peer, "INVITE"), timeout=4)  # our keep-alive goes on
        assert cseq(again) > cseq(reinvite)
        reply(peer, again, 200, "OK", body=OFFER.format(direction="sendrecv"))
        await peer.expect(requests(peer, "ACK"), timeout=2)

    run(scenario, answering(calls), session_expires=4, min_se=2)


def test_our_refresh_retries_422_with_its_min_se_and_491_after_a_random_delay() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        loop = asyncio.get_running_loop()
        await call_up(peer, calls, extra=TIMER + ALLOWS_UPDATE + "Session-Expires: 12;refresher=uas\r\n")
        update = await peer.expect(requests(peer, "UPDATE"), timeout=8)
        reply(peer, update, 422, "Session Interval Too Small", extra="Min-SE: 20\r\n")
        retry = await peer.expect(requests(peer, "UPDATE"), timeout=2)
        assert header(retry, "Session-Expires") == "20;refresher=uac" and header(retry, "Min-SE") == "20"
        reply(peer, retry, 491, "Request Pending")
        refused = loop.time()
        glare = await peer.expect(requests(peer, "UPDATE"), timeout=3)
        assert loop.time() - refused <= 2.2 and cseq(glare) > cseq(retry)
        reply(peer, glare, 200, "OK", extra=TIMER + "Session-Expires: 20;refresher=uac\r\n")
        await asyncio.sleep(0.2)
        assert calls[0]._timer.interval == 20 and calls[0].state == "confirmed"

    run(scenario, answering(calls), session_expires=12, min_se=2)


@pytest.mark.parametrize("answer", [481, 408, None])
def test_a_refresh_answered_481_or_408_or_not_at_all_ends_the_call(answer: int | None) -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        await call_up(peer, calls, extra=TIMER + ALLOWS_UPDATE + "Session-Expires: 4;refresher=uas\r\n")
        update = await peer.expect(requests(peer, "UPDATE"), timeout=4)
        if answer is not None:
            reply(peer, update, answer, "Gone")
        bye = await peer.expect(requests(peer, "BYE"), timeout=2)
        reply(peer, bye, 200, "OK")
        await asyncio.wait_for(calls[0].ended.wait(), 2)
        # Unanswered, the refresh outlives the session (timer F is 32 s): the session's end comes first.
        assert calls[0].end_reason == ("refresh-failed" if answer else "session-expired")

    run(scenario, answering(calls), session_expires=4, min_se=2)


# -- UPDATE ------------------------------------------------------------------------------------------

def test_update_with_an_offer_is_negotiated_like_a_reinvite() -> None:
    calls: list[IncomingCall] = []
    changes: list[NegotiatedMedia] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        ok = await call_up(peer, calls, extra=TIMER + "Session-Expires: 1800\r\n")
        peer.request("UPDATE", 2, to_tag=to_tag(ok), body=OFFER.format(direction="sendonly"),
                     extra=TIMER + "Session-Expires: 1800\r\n")
        answered = await peer.status(200, "UPDATE")
        assert b"a=recvonly" in answered and header(answered, "Content-Type") == "application/sdp"
        assert header(answered, "Session-Expires") == "1800;refresher=uac"
        assert changes and changes[-1].on_hold
        peer.request("UPDATE", 3, to_tag=to_tag(ok), body="v=0\r\nnot sdp\r\n")
        await peer.status(488, "UPDATE")

    run(scenario, answering(calls, changes))


def test_update_offers_that_cross_an_unfinished_offer_answer_get_491_or_500() -> None:
    calls: list[IncomingCall] = []

    async def ring(call: IncomingCall) -> None:
        calls.append(call)
        await call.ended.wait()

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"))
        tag = to_tag(await peer.status(180, "INVITE"))
        # Ringing: their INVITE's offer is not answered yet (RFC 3311 5.2).
        peer.request("UPDATE", 2, to_tag=tag, body=OFFER.format(direction="sendrecv"))
        pending = await peer.status(500, "UPDATE")
        assert 0 <= int(header(pending, "Retry-After")) <= 10
        peer.request("UPDATE", 3, to_tag=tag)  # no offer (a connected-line UPDATE): fine
        await peer.status(200, "UPDATE")
        await calls[0].hangup()

    run(scenario, ring)

    late: list[IncomingCall] = []

    async def answer_late(call: IncomingCall) -> None:
        late.append(call)
        await call.answer("127.0.0.1", 41012)

    async def late_offer(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1)  # no SDP: our 200 carries the offer, their ACK the answer
        tag = to_tag(await peer.status(200, "INVITE"))
        peer.request("UPDATE", 2, to_tag=tag, body=OFFER.format(direction="sendrecv"))
        await peer.status(491, "UPDATE")  # our offer is pending
        peer.ack(1, tag, body=OFFER.format(direction="sendrecv"))

    run(late_offer, answer_late)


def test_their_reinvite_crossing_our_refresh_reinvite_gets_491() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        ok = await call_up(peer, calls)  # no UPDATE in Allow: we refresh by re-INVITE
        ours = await peer.expect(requests(peer, "INVITE"), timeout=4)
        peer.request("INVITE", 2, to_tag=to_tag(ok), body=OFFER.format(direction="sendrecv"))
        await peer.status(491, "INVITE")
        peer.ack(2, to_tag(ok))
        reply(peer, ours, 200, "OK", body=OFFER.format(direction="sendrecv"))
        await peer.expect(requests(peer, "ACK"), timeout=2)

    run(scenario, answering(calls), session_expires=4, min_se=2)


# -- 100rel ------------------------------------------------------------------------------------------

def test_require_100rel_gets_a_reliable_180_and_the_200_waits_for_its_prack() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"),
                     extra="Require: 100rel\r\nSupported: 100rel, timer\r\n")
        ringing = await peer.status(180, "INVITE")
        assert header(ringing, "Require") == "100rel" and header(ringing, "RSeq").isdigit()
        again = await peer.status(180, "INVITE", timeout=1.5)  # re-sent until PRACKed
        assert header(again, "RSeq") == header(ringing, "RSeq")
        tag, rseq = to_tag(ringing), int(header(ringing, "RSeq"))
        assert not [d for d in peer.seen if d.startswith(b"SIP/2.0 200")]  # no 200 before the PRACK
        peer.request("PRACK", 2, to_tag=tag, extra=f"RAck: {rseq + 1} 1 INVITE\r\n")
        await peer.status(481, "PRACK")  # not a response we sent
        peer.request("PRACK", 3, to_tag=tag, extra=f"RAck: {rseq} 1 INVITE\r\n")
        await peer.status(200, "PRACK")
        ok = await peer.status(200, "INVITE")
        assert not header(ok, "RSeq") and "100rel" in header(ok, "Supported")
        peer.ack(1, tag)
        peer.request("PRACK", 4, to_tag=tag, extra=f"RAck: {rseq} 1 INVITE\r\n")
        await peer.status(481, "PRACK")  # acknowledged already
        peer.call_id = "no-such-call"
        peer.request("PRACK", 5, to_tag="nobody", extra=f"RAck: {rseq} 1 INVITE\r\n")
        await peer.status(481, "PRACK")  # outside any dialog: stateless

    run(scenario, answering(calls))


def test_supported_100rel_alone_keeps_the_plain_180() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"), extra="Supported: 100rel, timer\r\n")
        ringing = await peer.status(180, "INVITE")
        assert not header(ringing, "RSeq") and not header(ringing, "Require")
        peer.ack(1, to_tag(await peer.status(200, "INVITE")))

    run(scenario, answering(calls))
