"""Registration state machine: 401 → 200, 423, refresh, back-off, unregister."""

from __future__ import annotations

import logging

import pytest

from sipagent.sip.auth import DigestChallenge, DigestCredentials, digest_response
from sipagent.sip.message import SipRequest, SipResponse, build_response, parse_message
from sipagent.sip.registration import RECONNECT_SPREAD_S, Registration, RegistrationConfig, refresh_delay

CONTACT = "<sip:1001@192.0.2.1:5070;transport=udp>"


def make(expires: int = 300) -> Registration:
    return Registration(RegistrationConfig(
        registrar_uri="sip:pbx.example.com", aor="sip:1001@pbx.example.com", contact=CONTACT,
        via_sent_by="192.0.2.1:5070", credentials=DigestCredentials("1001", "secret1001"), expires=expires,
    ))


def wire(req: SipRequest) -> SipRequest:
    again = parse_message(req.to_bytes())  # everything we send must parse
    assert isinstance(again, SipRequest)
    return again


def reply(req: SipRequest, status: int, **headers: str) -> SipResponse:
    resp = build_response(wire(req), status, to_tag="reg")
    for name, value in headers.items():
        resp.headers.add(name.replace("_", "-"), value)
    parsed = parse_message(resp.to_bytes())
    assert isinstance(parsed, SipResponse)
    return parsed


CHALLENGE = 'Digest realm="pbx.example.com", nonce="n1", qop="auth", algorithm=MD5'


def test_401_then_200_and_refresh() -> None:
    reg = make()
    first = reg.start(0.0)
    assert reg.state == "registering" and first.headers.get("Authorization") is None
    assert first.headers.get("Expires") == "300" and first.headers.get("Contact") == CONTACT
    second = reg.on_response(reply(first, 401, WWW_Authenticate=CHALLENGE), 0.1)
    assert second is not None and second.cseq.seq == first.cseq.seq + 1
    assert second.call_id == first.call_id and second.branch != first.branch
    auth = second.headers.get("Authorization") or ""
    fields = dict(p.split("=", 1) for p in auth[7:].split(", "))
    expected = digest_response(
        DigestChallenge.parse(CHALLENGE), "REGISTER", "sip:pbx.example.com",
        DigestCredentials("1001", "secret1001"), 1, fields["cnonce"].strip('"'))
    assert fields["response"].strip('"') == expected
    ok = reply(second, 200, Contact=f"{CONTACT};expires=120")
    assert reg.on_response(ok, 0.2) is None
    assert reg.state == "registered" and reg.granted == 120
    assert reg.next_deadline == 0.2 + 90  # min(96, 90)
    assert reg.timeout(50.0) is None  # too early
    refresh = reg.timeout(90.2)
    assert refresh is not None and reg.state == "refreshing"
    assert "nc=00000002" in (refresh.headers.get("Authorization") or "")  # nonce reused
    assert reg.on_response(reply(refresh, 200, Expires="300"), 90.3) is None
    assert reg.state == "registered" and reg.granted == 300


def test_wrong_password_fails_then_retries_late() -> None:
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, WWW_Authenticate=CHALLENGE), 0.1)
    assert r2 is not None
    assert reg.on_response(reply(r2, 401, WWW_Authenticate=CHALLENGE), 0.2) is None
    assert reg.state == "failed" and reg.next_deadline == 0.2 + reg.config.backoff_max
    assert reg.timeout(reg.next_deadline) is not None and reg.state == "registering"


def test_stale_nonce_retry() -> None:
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, WWW_Authenticate=CHALLENGE), 0.1)
    assert r2 is not None
    reg.on_response(reply(r2, 200), 0.2)
    r3 = reg.timeout(reg.next_deadline or 0)
    assert r3 is not None
    stale = 'Digest realm="pbx.example.com", nonce="n2", qop="auth", stale=true'
    r4 = reg.on_response(reply(r3, 401, WWW_Authenticate=stale), 300.0)
    assert r4 is not None and 'nonce="n2"' in (r4.headers.get("Authorization") or "")


def test_423_raises_expires() -> None:
    reg = make(expires=60)
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 423, Min_Expires="3600"), 0.1)
    assert r2 is not None and r2.headers.get("Expires") == "3600" and reg.expires == 3600
    # A 423 that does not raise the minimum cannot be satisfied: back off instead of looping.
    assert reg.on_response(reply(r2, 423, Min_Expires="60"), 0.2) is None
    assert reg.state == "backing-off"


def test_timeouts_back_off_exponentially_with_cap_then_recover() -> None:
    reg = make()
    req = reg.start(0.0)
    now = 0.0
    delays = []
    for _ in range(9):
        reg.on_timeout(now)
        assert reg.state == "backing-off" and reg.next_deadline is not None
        delays.append(reg.next_deadline - now)
        now = reg.next_deadline
        req = reg.timeout(now) or req
        assert reg.state == "registering"
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0] and max(delays) == 120.0
    reg.on_response(reply(req, 200), now)
    assert reg.state == "registered" and reg.failures == 0


def test_503_retry_after_and_stray_responses_ignored() -> None:
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, WWW_Authenticate=CHALLENGE), 0.1)
    assert r2 is not None
    assert reg.on_response(reply(r1, 200), 0.2) is None and reg.state == "registering"  # old CSeq
    assert reg.on_response(reply(r2, 503, Retry_After="30"), 0.3) is None
    assert reg.next_deadline == 30.3


def test_unregister() -> None:
    reg = make()
    assert reg.stop(0.0) is None and reg.state == "unregistered"
    r1 = reg.start(0.0)
    reg.on_response(reply(r1, 200), 0.1)
    bye = reg.stop(1.0)
    assert bye is not None and bye.headers.get("Expires") == "0" and reg.state == "unregistering"
    again = reg.on_response(reply(bye, 401, WWW_Authenticate=CHALLENGE), 1.1)
    assert again is not None and again.headers.get("Expires") == "0"
    reg.on_response(reply(again, 200), 1.2)
    assert reg.state == "unregistered" and reg.next_deadline is None


def test_refresh_delay() -> None:
    assert refresh_delay(3600) == 2880
    assert refresh_delay(300) == 240
    assert refresh_delay(60) == 30
    assert refresh_delay(20) == 10
    assert refresh_delay(2) == 5.0


def test_each_line_of_an_accounts_registration_names_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sipagent.sip.registration")
    reg = Registration(RegistrationConfig(
        registrar_uri="sip:pbx.example.com", aor="sip:1001@pbx.example.com", contact=CONTACT,
        via_sent_by="192.0.2.1:5070", credentials=DigestCredentials("auth1001", "secret1001"), account="sales",
    ))
    first = reg.start(0.0)
    reg.on_response(reply(first, 200, Expires="300"), 1.0)
    assert reg.state == "registered"
    messages = [record.getMessage() for record in caplog.records]
    assert "account sales: registration unregistered -> registering" in messages
    assert "account sales: registered for 300 s" in messages
    assert all(getattr(record, "account", "") == "sales" for record in caplog.records)
    assert "secret1001" not in caplog.text


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999])
def test_connection_lost_registers_again_within_the_spread(draw: float) -> None:
    """At once, give or take a random part of RECONNECT_SPREAD_S: a PBX restart does not bring every agent's
    connection and REGISTER back in the same instant."""
    reg = Registration(make().config, rand=lambda: draw)
    first = reg.start(0.0)
    assert reg.on_response(reply(first, 200, Expires="300"), 0.1) is None
    assert reg.state == "registered"
    reg.connection_lost(5.0)
    assert reg.state == "backing-off" and reg.failures == 0
    assert reg.next_deadline == pytest.approx(5.0 + draw * RECONNECT_SPREAD_S) and RECONNECT_SPREAD_S <= 1.0
    if draw:
        assert reg.timeout(5.0) is None
    again = reg.timeout(5.0 + RECONNECT_SPREAD_S)
    assert again is not None and reg.state == "registering" and again.call_id == first.call_id
    assert reg.on_response(reply(again, 200, Expires="300"), 5.1) is None and reg.state == "registered"


def test_stop_while_the_first_register_is_unanswered_unregisters_all_the_same() -> None:
    """The registrar may have bound us already; its 200 would come to nobody. Expires: 0 undoes the binding,
    and one the registrar never made is answered 200 too: no harm either way."""
    reg = make()
    first = reg.start(0.0)
    bye = reg.stop(0.5)
    assert bye is not None and bye.headers.get("Expires") == "0" and reg.state == "unregistering"
    assert bye.cseq.seq > first.cseq.seq and bye.call_id == first.call_id
    assert reg.on_response(reply(first, 200, Expires="300"), 0.6) is None  # the first one's late 200
    assert reg.state == "unregistering"
    assert reg.on_response(reply(bye, 200), 0.7) is None
    assert reg.state == "unregistered" and reg.next_deadline is None


def test_connection_lost_while_not_registered_changes_nothing() -> None:
    reg = make()
    reg.start(0.0)
    reg.connection_lost(1.0)  # the REGISTER in flight fails by itself (transport error) and backs off
    assert reg.state == "registering" and reg.next_deadline is None


def test_failed_counts_every_attempt_that_did_not_register_by_reason() -> None:
    """What sipagent_registration_failures_total{reason} counts: each attempt, also the ones repeated in
    back-off, by the registrar's status or what went wrong; an answered challenge, a 423 obeyed, a refusal
    during unregistration and a stray response are none."""
    reg = make(expires=60)
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, WWW_Authenticate=CHALLENGE), 0.1)  # answered: no failure
    assert r2 is not None
    r3 = reg.on_response(reply(r2, 423, Min_Expires="120"), 0.2)  # obeyed: no failure
    assert r3 is not None and not reg.failed
    assert reg.on_response(reply(r1, 503), 0.25) is None and not reg.failed  # a stray: an older CSeq
    assert reg.on_response(reply(r3, 401, WWW_Authenticate=CHALLENGE), 0.3) is None  # the password refused
    assert reg.state == "failed"
    for at in (1000.0, 2000.0):  # refused again at each late retry, counted each time
        retry = reg.timeout(reg.next_deadline or at)
        assert retry is not None
        reg.on_response(reply(retry, 403), at)
    now = 9000.0
    retry = reg.timeout(reg.next_deadline or now)
    assert retry is not None
    reg.on_timeout(now)
    retry = reg.timeout(reg.next_deadline or now)
    assert retry is not None
    reg.on_response(reply(retry, 503, Retry_After="5"), now + 1)
    retry = reg.timeout(reg.next_deadline or now)
    assert retry is not None
    reg.on_response(reply(retry, 200, Expires="0"), now + 10)  # a 200 that binds nothing
    retry = reg.timeout(reg.next_deadline or now)
    assert retry is not None
    reg.on_response(reply(retry, 200, Expires="120"), now + 20)
    assert reg.state == "registered"
    reg.connection_lost(now + 30)
    reg.connection_lost(now + 30)  # once per binding cut: it is not registered any more
    assert reg.failed == {"401": 1, "403": 2, "timeout": 1, "503": 1, "no-grant": 1, "connection-lost": 1}
    again = reg.timeout(reg.next_deadline or now)
    assert again is not None
    reg.on_response(reply(again, 200, Expires="120"), now + 31)
    bye = reg.stop(now + 40)
    assert bye is not None
    reg.on_response(reply(bye, 500), now + 41)  # refused while unregistering: the binding expires on its own
    assert sum(reg.failed.values()) == 7
