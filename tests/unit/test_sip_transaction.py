"""Transactions driven with byte messages and a fake clock."""

from __future__ import annotations

from sipagent.sip.message import SipRequest, build_response, parse_message
from sipagent.sip.transaction import (
    INVITE_GUARD,
    NON_INVITE_GUARD,
    T1,
    T2,
    ClientTransaction,
    ResponseEvent,
    Send,
    ServerTransaction,
    Terminated,
    TimeoutEvent,
    Uas2xxRetransmitter,
    cancel_target_key,
    client_key,
    server_key,
)


def request(method: str, branch: str = "z9hG4bKtx1") -> SipRequest:
    raw = (
        f"{method} sip:1001@192.0.2.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.9:5060;branch={branch}\r\n"
        "From: <sip:caller@192.0.2.9>;tag=f1\r\nTo: <sip:1001@192.0.2.1>\r\n"
        f"Call-ID: tx@192.0.2.9\r\nCSeq: 10 {method}\r\nRoute: <sip:proxy.example;lr>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    return msg


Timed = ClientTransaction | ServerTransaction | Uas2xxRetransmitter


def run_until(tx: Timed, end: float) -> list[tuple[float, object]]:
    """Advance the fake clock from deadline to deadline, collecting (time, action)."""
    out: list[tuple[float, object]] = []
    for _ in range(1000):
        due = tx.next_deadline
        if due is None or due > end:
            break
        out += [(due, a) for a in tx.timeout(due)]
    return out


def sends(events: list[tuple[float, object]]) -> list[float]:
    return [round(t, 3) for t, a in events if isinstance(a, Send)]


def test_non_invite_client_timer_e_backoff_and_timer_f() -> None:
    tx = ClientTransaction(request("REGISTER"), reliable=False)
    assert tx.start(0.0) == [Send(tx.request.to_bytes())]
    events = run_until(tx, 100.0)
    # E: 0.5, then intervals 1, 2, 4, 4, 4... until F at 64*T1 = 32 s.
    assert sends(events)[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(b - a <= T2 + 1e-9 for a, b in zip(sends(events), sends(events)[1:], strict=False))
    assert [a for _, a in events if not isinstance(a, Send)] == [TimeoutEvent("F"), Terminated()]
    assert events[-1][0] == 64 * T1 and tx.terminated


def test_non_invite_client_reliable_no_retransmit_and_timer_k() -> None:
    tx = ClientTransaction(request("OPTIONS"), reliable=True)
    tx.start(0.0)
    assert tx.next_deadline == 64 * T1
    resp = build_response(tx.request, 200)
    assert tx.receive(resp, 1.0) == [ResponseEvent(resp)]
    assert tx.state == "completed" and tx.next_deadline == 1.0  # K = 0 over reliable transports
    assert tx.timeout(1.0) == [Terminated()]


def test_non_invite_client_proceeding_uses_t2_and_absorbs_retransmitted_final() -> None:
    tx = ClientTransaction(request("BYE"), reliable=False)
    tx.start(0.0)
    trying = build_response(tx.request, 100)
    assert tx.receive(trying, 0.1) == [ResponseEvent(trying)] and tx.state == "proceeding"
    assert tx.next_deadline == 0.1 + T2
    ok = build_response(tx.request, 200)
    assert tx.receive(ok, 1.0) == [ResponseEvent(ok)]
    assert tx.receive(ok, 1.1) == []  # retransmission absorbed
    assert run_until(tx, 100.0) == [(6.0, Terminated())]  # K = T4


def test_invite_client_timer_a_b() -> None:
    tx = ClientTransaction(request("INVITE"), reliable=False)
    tx.start(0.0)
    events = run_until(tx, 100.0)
    assert sends(events) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [a for _, a in events][-2:] == [TimeoutEvent("B"), Terminated()]


def test_invite_client_non2xx_acks_and_timer_d() -> None:
    tx = ClientTransaction(request("INVITE"), reliable=False)
    tx.start(0.0)
    ringing = build_response(tx.request, 180, to_tag="t9")
    assert tx.receive(ringing, 0.2) == [ResponseEvent(ringing)]
    assert tx.next_deadline is None  # proceeding: A and B stop, the TU decides
    busy = build_response(tx.request, 486, to_tag="t9")
    actions = tx.receive(busy, 1.0)
    ack = parse_message(actions[0].data) if isinstance(actions[0], Send) else None
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.cseq.seq == 10 and ack.to_addr.tag == "t9" and ack.branch == "z9hG4bKtx1"
    assert ack.headers.get("Route") == "<sip:proxy.example;lr>"
    assert actions[1] == ResponseEvent(busy)
    assert tx.receive(busy, 2.0) == [actions[0]]  # retransmitted 486 → ACK again
    assert run_until(tx, 100.0) == [(33.0, Terminated())]


def test_invite_client_2xx_terminates() -> None:
    tx = ClientTransaction(request("INVITE"), reliable=False)
    tx.start(0.0)
    ok = build_response(tx.request, 200, to_tag="x")
    assert tx.receive(ok, 0.3) == [ResponseEvent(ok), Terminated()]


def test_server_invite_sends_100_within_200ms_unless_answered() -> None:
    inv = request("INVITE")
    tx = ServerTransaction(inv, reliable=False, now=0.0)
    assert tx.next_deadline is not None and tx.next_deadline <= 0.2
    (trying,) = tx.timeout(0.2)
    assert isinstance(trying, Send) and trying.data.startswith(b"SIP/2.0 100 Trying")
    assert tx.receive(inv, 0.5) == [trying]  # retransmitted INVITE → last provisional
    quick = ServerTransaction(inv, reliable=False, now=0.0)
    ringing = build_response(inv, 180, to_tag="a")
    assert quick.respond(ringing, 0.05) == [Send(ringing.to_bytes())]
    assert quick.next_deadline == INVITE_GUARD  # only the guard against a TU that never answers


def test_server_invite_non2xx_timer_g_h_and_ack() -> None:
    inv = request("INVITE")
    tx = ServerTransaction(inv, reliable=False, now=0.0)
    final = build_response(inv, 486, to_tag="a")
    tx.respond(final, 0.1)
    events = run_until(tx, 100.0)
    assert sends(events)[:5] == [0.6, 1.6, 3.6, 7.6, 11.6]
    assert [a for _, a in events][-2:] == [TimeoutEvent("H"), Terminated()]
    # With an ACK: confirmed, then timer I.
    tx = ServerTransaction(inv, reliable=False, now=0.0)
    tx.respond(final, 0.1)
    assert tx.receive(inv, 0.3) == [Send(final.to_bytes())]
    ack = request("ACK")
    assert server_key(ack) == server_key(inv)
    assert tx.receive(ack, 0.4) == [] and tx.state == "confirmed"
    assert run_until(tx, 100.0) == [(5.4, Terminated())]


def test_server_invite_2xx_terminates_and_reliable_has_no_g() -> None:
    inv = request("INVITE")
    tx = ServerTransaction(inv, reliable=True, now=0.0)
    assert tx.respond(build_response(inv, 200, to_tag="a"), 0.1)[-1] == Terminated()
    tx = ServerTransaction(inv, reliable=True, now=0.0)
    tx.respond(build_response(inv, 603, to_tag="a"), 0.1)
    assert tx.next_deadline == 0.1 + 64 * T1  # only H


def test_server_non_invite_timer_j_and_retransmissions() -> None:
    bye = request("BYE")
    tx = ServerTransaction(bye, reliable=False, now=0.0)
    # trying: nothing to resend yet; only the guard against a TU that never answers is armed
    assert tx.next_deadline == NON_INVITE_GUARD and tx.receive(bye, 0.1) == []
    ok = build_response(bye, 200)
    tx.respond(ok, 0.2)
    assert tx.receive(bye, 1.0) == [Send(ok.to_bytes())]
    assert run_until(tx, 100.0) == [(0.2 + 64 * T1, Terminated())]
    assert tx.respond(ok, 50.0) == []


def test_transport_error_and_keys() -> None:
    tx = ClientTransaction(request("OPTIONS"), reliable=True)
    tx.start(0.0)
    assert tx.transport_error() == [TimeoutEvent("transport"), Terminated()]
    assert tx.transport_error() == []
    resp = build_response(request("OPTIONS"), 200)
    assert client_key(resp) == ("z9hG4bKtx1", "OPTIONS") == tx.key
    cancel = request("CANCEL")
    assert cancel_target_key(cancel) == server_key(request("INVITE")) != server_key(cancel)


def test_uas_2xx_retransmitter() -> None:
    rt = Uas2xxRetransmitter(b"200", reliable=False, now=0.0)
    events = run_until(rt, 100.0)
    times = sends(events)
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert [a for _, a in events][-2:] == [TimeoutEvent("2xx"), Terminated()]
    assert events[-1][0] == 32.0 and rt.next_deadline is None
    acked = Uas2xxRetransmitter(b"200", reliable=False, now=0.0)
    acked.timeout(0.5)
    acked.ack_received()
    assert acked.next_deadline is None and acked.timeout(10.0) == []
    reliable = Uas2xxRetransmitter(b"200", reliable=True, now=0.0)
    assert reliable.next_deadline == 32.0
    assert reliable.timeout(1.0) == []



def test_a_server_transaction_the_tu_never_answers_still_ends() -> None:
    """A request our TU dropped (or a handler that failed before answering) must not pin the transaction
    and its request in memory: the guard ends it, and a final response cancels the guard."""
    bye = request("BYE")
    forgotten = ServerTransaction(bye, reliable=False, now=0.0)
    assert forgotten.timeout(NON_INVITE_GUARD - 0.1) == []
    assert forgotten.timeout(NON_INVITE_GUARD) == [TimeoutEvent("guard"), Terminated()]
    assert forgotten.terminated and forgotten.next_deadline is None
    invite = ServerTransaction(request("INVITE"), reliable=True, now=0.0)
    invite.timeout(0.2)  # 100 Trying
    assert invite.timeout(INVITE_GUARD) == [TimeoutEvent("guard"), Terminated()]
    answered = ServerTransaction(bye, reliable=True, now=0.0)
    answered.respond(build_response(bye, 200), 1.0)
    assert answered.timeout(NON_INVITE_GUARD) == [Terminated()]  # timer J (0 on a reliable transport), no guard
