"""Session timers (RFC 4028), UPDATE (RFC 3311) and reliable provisional responses (RFC 3262) on the wire.

Two halves. The user agent in-process against a scripted UDP peer, with intervals of a few seconds (the
UA takes what UaSettings says; the RFC's 90 s floor is the configuration's to enforce) for what needs
exact control: glare, 422/491/481 answers to our refreshes, PRACK matching. Then SIPp playing what
Asterisk and FreeSWITCH send against a running agent with honest RFC values: all scenarios run at once
against one agent, so the file costs about as long as its longest call (≈80 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import pytest
from agent_helpers import running_agent
from peers import require
from sipp import SippResult, sipp_scenario
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


async def call_up(peer: ScriptedPeer, calls: list[IncomingCall], extra: str = "", body: str | None = None,
                  answered: list[float] | None = None) -> bytes:
    """INVITE, 200, ACK: the agent's 200 OK. The loop time its arrival was seen is appended to ``answered``
    (the session timer starts as the 200 goes out: the ACK and the call's confirmation come later)."""
    peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv") if body is None else body, extra=extra)
    ok = await peer.status(200, "INVITE")
    if answered is not None:
        answered.append(asyncio.get_running_loop().time())
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
        peer.call_id = "unreadable"
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"), extra=TIMER + "Session-Expires: soon\r\n")
        assert b"400 bad Session-Expires" in await peer.status(400, "INVITE")
        peer.call_id = "retried"
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
        # 6 s: the session ends 4 s after each refresh, so each refresh below comes 2.8 s before that end
        # (with 3 s, 0.8 s: a stalled test could refresh too late).
        ok = await call_up(peer, calls, extra=TIMER + "Session-Expires: 6;refresher=uac\r\n")
        answered = loop.time()
        # A refresh by re-INVITE (with the same SDP) and one by UPDATE each restart the interval.
        await asyncio.sleep(1.2)
        peer.request("INVITE", 2, to_tag=to_tag(ok), body=OFFER.format(direction="sendrecv"),
                     extra=TIMER + "Session-Expires: 6;refresher=uac\r\n")
        assert header(await peer.status(200, "INVITE"), "Session-Expires") == "6;refresher=uac"
        peer.ack(2, to_tag(ok))
        await asyncio.sleep(1.2)
        peer.request("UPDATE", 3, to_tag=to_tag(ok), extra=TIMER + "Session-Expires: 6;refresher=uac\r\n")
        refreshed = await peer.status(200, "UPDATE")
        updated = loop.time()
        assert header(refreshed, "Session-Expires") == "6;refresher=uac" and header(refreshed, "Require") == "timer"
        bye = await peer.expect(requests(peer, "BYE"), timeout=6)
        # 6 s - min(32, 6/3) after the last refresh: 4 s (not the whole 6 s), where without refreshes it was
        # 4 s after the answer (the refreshes came 2.4 s and more after it).
        assert 3.6 < loop.time() - updated < 4.9 and loop.time() - answered > 5.2
        reply(peer, bye, 200, "OK")
        await asyncio.wait_for(calls[0].ended.wait(), 1)
        assert calls[0].end_reason == "session-expired"

    run(scenario, answering(calls), min_se=2)


# -- we refresh --------------------------------------------------------------------------------------

def test_we_refresh_by_update_when_allowed_and_fall_back_to_reinvite_on_405() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        loop = asyncio.get_running_loop()
        # 8 s: the refresh at 4 s, the session's end at 5.33 s. The 405, the re-INVITE and its 200 must all
        # fit between the two (with 4 s, in 0.67 s: too tight for a stalled test).
        answered: list[float] = []
        ok = await call_up(peer, calls, extra=TIMER + ALLOWS_UPDATE + "Session-Expires: 8;refresher=uas\r\n",
                           answered=answered)
        assert header(ok, "Session-Expires") == "8;refresher=uas" and header(ok, "Require") == "timer"
        update = await peer.expect(requests(peer, "UPDATE"), timeout=7)
        assert 3.7 < loop.time() - answered[0] < 4.9  # half the interval (the end would be 5.33 s)
        assert header(update, "Session-Expires") == "8;refresher=uac" and "timer" in header(update, "Supported")
        assert b"Content-Length: 0" in update and header(update, "Contact")
        reply(peer, update, 405, "Method Not Allowed", extra="Allow: INVITE, ACK, BYE\r\n")
        reinvite = await peer.expect(requests(peer, "INVITE"), timeout=2)
        assert cseq(reinvite) == cseq(update) + 1 and b"m=audio 41010 " in reinvite
        # Our SDP unchanged: the o= line of our 200 OK, version and all (RFC 3264 8).
        assert re.search(rb"o=.*\r", reinvite).group(0) == re.search(rb"o=.*\r", ok).group(0)  # type: ignore[union-attr]
        answer = OFFER.format(direction="sendrecv")
        reply(peer, reinvite, 200, "OK", extra=TIMER + "Session-Expires: 8;refresher=uac\r\n", body=answer)
        ack = await peer.expect(requests(peer, "ACK"), timeout=2)
        assert cseq(ack) == cseq(reinvite) and header(ack, "CSeq").endswith("ACK")
        reply(peer, reinvite, 200, "OK", extra=TIMER + "Session-Expires: 8;refresher=uac\r\n", body=answer)
        assert cseq(await peer.expect(requests(peer, "ACK"), timeout=2)) == cseq(reinvite)  # a 2xx again: ACK again
        second = await peer.expect(requests(peer, "INVITE"), timeout=7)  # the peer has shown it has no UPDATE
        reply(peer, second, 200, "OK", extra="Session-Expires: 8;refresher=uac\r\n", body=answer)
        await peer.expect(requests(peer, "ACK"), timeout=2)
        assert calls[0].state == "confirmed"

    run(scenario, answering(calls), session_expires=8, min_se=2)


def test_a_caller_without_timers_gets_our_timer_refreshed_by_reinvite() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        # 8 s: each re-INVITE at 4 s, 1.33 s before the session would end unanswered (with 4 s, 0.67 s).
        ok = await call_up(peer, calls)  # no Supported: timer, no Session-Expires, no UPDATE in Allow
        assert header(ok, "Session-Expires") == "8;refresher=uas" and not header(ok, "Require")
        reinvite = await peer.expect(requests(peer, "INVITE"), timeout=7)
        assert header(reinvite, "Session-Expires") == "8;refresher=uac"
        reply(peer, reinvite, 200, "OK", body=OFFER.format(direction="sendrecv"))  # says nothing of timers
        await peer.expect(requests(peer, "ACK"), timeout=2)
        again = await peer.expect(requests(peer, "INVITE"), timeout=7)  # our keep-alive goes on
        assert cseq(again) > cseq(reinvite)
        reply(peer, again, 200, "OK", body=OFFER.format(direction="sendrecv"))
        await peer.expect(requests(peer, "ACK"), timeout=2)

    run(scenario, answering(calls), session_expires=8, min_se=2)


def test_our_refresh_retries_422_with_its_min_se_and_491_after_a_random_delay() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        loop = asyncio.get_running_loop()
        await call_up(peer, calls, extra=TIMER + ALLOWS_UPDATE + "Session-Expires: 24;refresher=uas\r\n")
        # Refresh at 12 s, end at 16 s: the 491 retry comes by 14 s whatever the random delay.
        update = await peer.expect(requests(peer, "UPDATE"), timeout=14)
        reply(peer, update, 422, "Session Interval Too Small", extra="Min-SE: 30\r\n")
        retry = await peer.expect(requests(peer, "UPDATE"), timeout=2)
        assert header(retry, "Session-Expires") == "30;refresher=uac" and header(retry, "Min-SE") == "30"
        reply(peer, retry, 491, "Request Pending")
        refused = loop.time()
        glare = await peer.expect(requests(peer, "UPDATE"), timeout=3)
        assert loop.time() - refused <= 2.2 and cseq(glare) > cseq(retry)
        reply(peer, glare, 200, "OK", extra=TIMER + "Session-Expires: 30;refresher=uac\r\n")
        await asyncio.sleep(0.2)
        assert calls[0].core.timer.interval == 30 and calls[0].state == "confirmed"

    run(scenario, answering(calls), session_expires=24, min_se=2)


@pytest.mark.parametrize("answer", [481, 408, None])
def test_a_refresh_answered_481_or_408_or_not_at_all_ends_the_call(answer: int | None) -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        # 8 s: the refresh at 4 s, the session's end at 5.33 s; the answer to the refresh must come before
        # that end to be the reason (with 4 s, within 0.67 s).
        await call_up(peer, calls, extra=TIMER + ALLOWS_UPDATE + "Session-Expires: 8;refresher=uas\r\n")
        update = await peer.expect(requests(peer, "UPDATE"), timeout=7)
        if answer is not None:
            reply(peer, update, answer, "Gone")
        bye = await peer.expect(requests(peer, "BYE"), timeout=4)
        reply(peer, bye, 200, "OK")
        await asyncio.wait_for(calls[0].ended.wait(), 2)
        # Unanswered, the refresh outlives the session (timer F is 32 s): the session's end comes first.
        assert calls[0].end_reason == ("refresh-failed" if answer else "session-expired")

    run(scenario, answering(calls), session_expires=8, min_se=2)


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
        # 8 s: our re-INVITE at 4 s; theirs, its 491 and the 200 to ours come before the session's end at
        # 5.33 s (with 4 s, within 0.67 s).
        ok = await call_up(peer, calls)  # no UPDATE in Allow: we refresh by re-INVITE
        ours = await peer.expect(requests(peer, "INVITE"), timeout=7)
        peer.request("INVITE", 2, to_tag=to_tag(ok), body=OFFER.format(direction="sendrecv"))
        await peer.status(491, "INVITE")
        peer.ack(2, to_tag(ok))
        reply(peer, ours, 200, "OK", body=OFFER.format(direction="sendrecv"))
        await peer.expect(requests(peer, "ACK"), timeout=2)

    run(scenario, answering(calls), session_expires=8, min_se=2)


# -- 100rel ------------------------------------------------------------------------------------------

def test_require_100rel_gets_a_reliable_180_and_the_200_waits_for_its_prack() -> None:
    calls: list[IncomingCall] = []

    async def scenario(ua: UserAgent, peer: ScriptedPeer) -> None:
        peer.request("INVITE", 1, body=OFFER.format(direction="sendrecv"),
                     extra="Require: 100rel\r\nSupported: 100rel, timer\r\n")
        ringing = await peer.status(180, "INVITE")
        assert header(ringing, "Require") == "100rel" and header(ringing, "RSeq").isdigit()
        again = await peer.status(180, "INVITE", timeout=3)  # re-sent until PRACKed (T1: 0.5 s)
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


# -- SIPp as Asterisk and FreeSWITCH, against a running agent --------------------------------------------

@dataclass
class Played:
    """A scenario's run: SIPp's result and the messages of its log with their times."""

    result: SippResult
    log: list[tuple[float, str, str]]  # (seconds since the epoch, "sent" or "received", message)

    def first(self, direction: str, start: str) -> tuple[float, str]:
        """The first message SIPp sent or received whose first line starts with ``start``."""
        for at, way, message in self.log:
            if way == direction and message.startswith(start):
                return at, message
        raise AssertionError(f"no {direction} {start!r} in\n{self.result.messages[-4000:]}")

    def count(self, direction: str, start: str) -> int:
        return sum(1 for _, way, message in self.log if way == direction and message.startswith(start))


def sipp_log(text: str) -> list[tuple[float, str, str]]:
    """SIPp's -trace_msg file: entries that start with a dashed line and a timestamp."""
    entries = []
    for block in re.split(r"^-{20,} ", text, flags=re.MULTILINE)[1:]:
        stamp, _, rest = block.partition("\n")
        way, _, message = rest.partition("\n\n")
        at = datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        entries.append((at, "sent" if " sent " in way else "received", message.replace("\r\n", "\n").strip()))
    return entries


# Scenario → the agent it calls: "main" (sip.session_expires 90, the RFC floor for min_se) or "strict"
# (sip.min_se 120, for the 422).
SCENARIOS = {
    "timer_asterisk_reinvite.xml": "main", "timer_freeswitch_update.xml": "main", "timer_no_refresh.xml": "main",
    "timer_uas_refresher_reinvite.xml": "main", "timer_uas_refresher_update.xml": "main",
    "prack_100rel.xml": "main", "timer_too_small.xml": "strict",
}
# The first test to ask for the scenarios' results waits for all of them (about 80 s).
SIPP_TIMEOUT = pytest.mark.timeout(200)
# No idle prompt, no media watchdog: the calls last as long as their session timers say, without audio.
QUIET = {"agent": {"idle_timeout_s": 0}, "media": {"rtp_timeout_s": 0}}


@dataclass
class Results:
    """Every scenario's run, and what each agent logged and counted by the end."""

    runs: dict[str, Played]
    logs: dict[str, str]
    metrics: dict[str, dict[str, float]]

    def run(self, name: str) -> Played:
        run = self.runs[name]
        assert run.result.returncode == 0, run.result.failed()
        return run


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every scenario at once (each its own SIPp) against two running agents."""
    require("sipp")
    root = tmp_path_factory.mktemp("timers")
    for label in ("main", "strict"):
        (root / label).mkdir()
    results = Results({}, {}, {})
    with running_agent(root / "main", sip={"session_expires": 90, "min_se": 90, "max_calls": 8},
                       sections=QUIET) as main, \
            running_agent(root / "strict", sip={"session_expires": 1800, "min_se": 120},
                          sections={**QUIET, "media": {"rtp_timeout_s": 0, "rtp_ports": "44900-44919"}}) as strict, \
            contextlib.ExitStack() as stack:
        agents = {"main": main, "strict": strict}
        runs = {name: stack.enter_context(sipp_scenario(name, agents[agent].target, root / name,
                                                        keys={"user": "agent"}, timeout_s=110))
                for name, agent in SCENARIOS.items()}
        for name, run in runs.items():
            result = run.wait(120)
            results.runs[name] = Played(result, sipp_log(result.messages))
        for label, agent in agents.items():
            agent.wait_metric("sipagent_calls_active", lambda value: value == 0, 10)
            results.logs[label] = agent.log.read_text()
            results.metrics[label] = agent.metrics()
    return results


@SIPP_TIMEOUT
def test_asterisk_refreshing_by_reinvite_keeps_the_call_up(played: Results) -> None:
    run = played.run("timer_asterisk_reinvite.xml")
    answered, ok = run.first("received", "SIP/2.0 200 OK")
    assert "Session-Expires: 90;refresher=uac" in ok and "Require: timer" in ok
    assert run.count("received", "SIP/2.0 200 OK") >= 3  # the INVITE, the refresh re-INVITE, the BYE
    hung_up, _ = run.first("sent", "BYE ")
    assert hung_up - answered > 70  # past the 60 s an unrefreshed session lasts
    assert run.count("received", "BYE ") == 0


@SIPP_TIMEOUT
def test_freeswitch_refreshing_by_update_gets_200_and_keeps_the_call_up(played: Results) -> None:
    run = played.run("timer_freeswitch_update.xml")
    answered, ok = run.first("received", "SIP/2.0 200 OK")
    assert "Session-Expires: 90;refresher=uac" in ok and "UPDATE" in re.search(r"Allow: (.*)", ok).group(1)  # type: ignore[union-attr]
    update_ok = [m for _, way, m in run.log if way == "received" and "CSeq: 2 UPDATE" in m]
    assert update_ok and update_ok[0].startswith("SIP/2.0 200 OK")
    assert "Session-Expires: 90;refresher=uac" in update_ok[0] and "Require: timer" in update_ok[0]
    hung_up, _ = run.first("sent", "BYE ")
    assert hung_up - answered > 70 and run.count("received", "BYE ") == 0


@SIPP_TIMEOUT
def test_a_pbx_that_stops_refreshing_gets_a_bye_at_expiry(played: Results) -> None:
    run = played.run("timer_no_refresh.xml")
    answered, _ = run.first("received", "SIP/2.0 200 OK")
    hung_up, bye = run.first("received", "BYE ")
    assert 58 < hung_up - answered < 63, hung_up - answered  # 90 - min(32, 90/3)
    call_id = re.search(r"Call-ID: (.*)", bye).group(1).strip()  # type: ignore[union-attr]
    assert f"call {call_id}: no session refresh in time (session interval 90 s), hanging up" in played.logs["main"]
    assert f"call {call_id} ended: session-expired" in played.logs["main"]


@SIPP_TIMEOUT
def test_an_interval_below_min_se_gets_422_and_the_retry_is_answered(played: Results) -> None:
    run = played.run("timer_too_small.xml")
    _, too_small = run.first("received", "SIP/2.0 422 ")
    assert "Min-SE: 120" in too_small
    _, ok = run.first("received", "SIP/2.0 200 OK")
    assert "Session-Expires: 120;refresher=uac" in ok
    assert "answered 422" in played.logs["strict"]


@SIPP_TIMEOUT
def test_the_agent_refreshes_a_timerless_pbx_by_reinvite_within_half_the_interval(
        played: Results) -> None:
    run = played.run("timer_uas_refresher_reinvite.xml")
    answered, ok = run.first("received", "SIP/2.0 200 OK")
    assert "Session-Expires: 90;refresher=uas" in ok and "Require:" not in ok
    refreshed, reinvite = run.first("received", "INVITE ")
    assert 44 < refreshed - answered < 47, refreshed - answered
    origin = re.compile(r"^o=.*$", re.MULTILINE)
    assert origin.search(reinvite).group(0) == origin.search(ok).group(0)  # type: ignore[union-attr]
    assert run.count("received", "ACK ") == 1


@SIPP_TIMEOUT
def test_the_agent_refreshes_by_update_when_asked_to(played: Results) -> None:
    run = played.run("timer_uas_refresher_update.xml")
    answered, ok = run.first("received", "SIP/2.0 200 OK")
    assert "Session-Expires: 90;refresher=uas" in ok and "Require: timer" in ok
    refreshed, update = run.first("received", "UPDATE ")
    assert 44 < refreshed - answered < 47 and "Content-Length: 0" in update
    assert "Session-Expires: 90;refresher=uac" in update and "Min-SE: 90" in update


@SIPP_TIMEOUT
def test_a_100rel_invite_is_answered_with_a_prack_acknowledged_180(played: Results) -> None:
    run = played.run("prack_100rel.xml")
    _, ringing = run.first("received", "SIP/2.0 180 ")
    assert "Require: 100rel" in ringing and re.search(r"RSeq: \d+", ringing)
    order = [(m.split()[0], re.search(r"CSeq: (.*)", m).group(1))  # type: ignore[union-attr]
             for _, _, m in run.log if m.startswith(("SIP/2.0 200", "PRACK "))]
    assert order[:3] == [("PRACK", "2 PRACK"), ("SIP/2.0", "2 PRACK"), ("SIP/2.0", "1 INVITE")], order


@SIPP_TIMEOUT
def test_every_call_ended_cleanly(played: Results) -> None:
    for log in played.logs.values():
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    answered = sum(value for name, value in played.metrics["main"].items() if name.startswith("sipagent_calls_total"))
    assert answered == 6 and played.metrics["strict"]['sipagent_calls_total{outcome="remote-hangup"}'] == 1
    assert played.metrics["main"]['sipagent_calls_total{outcome="session-expired"}'] == 1  # the unrefreshed one
    assert played.metrics["strict"]['sipagent_calls_total{outcome="error"}'] == 0  # a 422 refuses no call
