"""What real registrars (Asterisk chan_pjsip, FreeSWITCH sofia, Kamailio) and hostile ones send to a REGISTER,
against the sans-I/O registration and digest cores with a fake clock (``now`` is just a number here)."""

from __future__ import annotations

import hashlib

import pytest

from sipagent.errors import SipParseError
from sipagent.sip.auth import DigestAuthenticator, DigestChallenge, DigestCredentials, choose_challenge
from sipagent.sip.message import SipRequest, SipResponse, build_response, parse_message
from sipagent.sip.registration import Registration, RegistrationConfig

CONTACT = "<sip:1001@192.0.2.1:5070;transport=udp>"
REGISTRAR = "sip:pbx.example.com"
CREDS = DigestCredentials("1001", "secret1001")
# What Asterisk 20 (chan_pjsip) sends: lower-case algorithm, opaque, qop auth, a new nonce each time.
ASTERISK = 'Digest realm="asterisk",nonce="{nonce}",opaque="4c0ffee1",algorithm=md5,qop="auth"'
# What FreeSWITCH (sofia) sends: the domain as realm, a UUID nonce, qop auth.
FREESWITCH = 'Digest realm="192.0.2.9", nonce="{nonce}", algorithm=MD5, qop="auth"'


def make(expires: int = 300, **config: object) -> Registration:
    return Registration(RegistrationConfig(
        registrar_uri=REGISTRAR, aor="sip:1001@pbx.example.com", contact=CONTACT,
        via_sent_by="192.0.2.1:5070", credentials=CREDS, expires=expires, **config,  # type: ignore[arg-type]
    ))


def wire(req: SipRequest) -> SipRequest:
    again = parse_message(req.to_bytes())  # everything we send must parse
    assert isinstance(again, SipRequest)
    return again


def reply(req: SipRequest, status: int, *headers: tuple[str, str]) -> SipResponse:
    resp = build_response(wire(req), status, to_tag="reg")
    for name, value in headers:
        resp.headers.add(name, value)
    parsed = parse_message(resp.to_bytes())
    assert isinstance(parsed, SipResponse)
    return parsed


def www(template: str = ASTERISK, nonce: str = "n1", **extra: str) -> tuple[str, str]:
    value = template.format(nonce=nonce) + "".join(f", {k}={v}" for k, v in extra.items())
    return ("WWW-Authenticate", value)


def auth_fields(req: SipRequest, header: str = "Authorization") -> dict[str, str]:
    value = req.headers.get(header) or ""
    assert value.startswith("Digest "), value
    out = {}
    for part in value[7:].split(", "):
        k, _, v = part.partition("=")
        out[k] = v.strip('"')
    return out


def expected_response(f: dict[str, str], password: str = "secret1001", method: str = "REGISTER") -> str:
    """What a registrar computes from the Authorization it got (RFC 7616 3.4.1), independently of auth.py."""
    alg = f.get("algorithm", "MD5").upper()
    name = "sha256" if alg.startswith("SHA-256") else "md5"

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    ha1 = h(f"{f['username']}:{f['realm']}:{password}")
    if alg.endswith("-SESS"):
        ha1 = h(f"{ha1}:{f['nonce']}:{f['cnonce']}")
    ha2 = h(f"{method}:{f['uri']}")
    if "qop" not in f:
        return h(f"{ha1}:{f['nonce']}:{ha2}")
    return h(f"{ha1}:{f['nonce']}:{f['nc']}:{f['cnonce']}:{f['qop']}:{ha2}")


def registered(reg: Registration, expires: int = 300, now: float = 1.0) -> SipRequest:
    """Through 401 → 200; returns the authenticated REGISTER."""
    first = reg.start(now)
    second = reg.on_response(reply(first, 401, www()), now)
    assert second is not None
    assert reg.on_response(reply(second, 200, ("Contact", f"{CONTACT};expires={expires}")), now) is None
    assert reg.state == "registered"
    return second


# -- digest ------------------------------------------------------------------------------------------------

def test_asterisk_wrong_password_new_nonce_stops_after_one_attempt() -> None:
    """Asterisk answers a wrong password with a 401 carrying a NEW nonce and no stale: that is a refusal.
    Sending the secret a second time only feeds the PBX's fail2ban."""
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, www(nonce="n1")), 0.1)
    assert r2 is not None
    assert reg.on_response(reply(r2, 401, www(nonce="n2")), 0.2) is None
    assert reg.state == "failed" and reg.next_deadline == 0.2 + reg.config.backoff_max
    assert reg.problem is not None and "wrong password" in reg.problem and "'1001'" in reg.problem
    assert "secret1001" not in reg.problem


def test_stale_true_after_fresh_credentials_retries_with_new_nonce() -> None:
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, www(nonce="n1")), 0.1)
    assert r2 is not None
    r3 = reg.on_response(reply(r2, 401, www(nonce="n2", stale="true")), 0.2)
    assert r3 is not None and reg.state == "registering"
    f = auth_fields(r3)
    assert f["nonce"] == "n2" and f["nc"] == "00000001" and f["response"] == expected_response(f)
    assert reg.on_response(reply(r3, 200, ("Expires", "300")), 0.3) is None
    assert reg.state == "registered"


def test_a_stale_loop_and_a_new_nonce_loop_both_end() -> None:
    reg = make()
    req = reg.start(0.0)
    sent = 0
    for i in range(10):  # a hostile registrar: a fresh stale nonce forever
        nxt = reg.on_response(reply(req, 401, www(nonce=f"s{i}", stale="true")), float(i))
        if nxt is None:
            break
        req, sent = nxt, sent + 1
    assert sent <= 2 and reg.state == "failed"


def test_refresh_with_cached_nonce_challenged_without_stale_retries_once() -> None:
    """The registrar restarted or expired the nonce without saying stale (Asterisk, Kamailio): the credentials
    we reused were for an old nonce, so one more try with the new one is right, with the same Call-ID."""
    reg = make()
    auth1 = registered(reg, expires=300)
    refresh = reg.timeout(reg.next_deadline or 0)
    assert refresh is not None and reg.state == "refreshing"
    f = auth_fields(refresh)
    assert f["nonce"] == "n1" and f["nc"] == "00000002" and f["response"] == expected_response(f)
    assert refresh.call_id == auth1.call_id and refresh.cseq.seq == auth1.cseq.seq + 1
    retry = reg.on_response(reply(refresh, 401, www(nonce="n9")), 250.0)
    assert retry is not None and retry.cseq.seq == refresh.cseq.seq + 1 and retry.call_id == auth1.call_id
    f = auth_fields(retry)
    assert f["nonce"] == "n9" and f["nc"] == "00000001"
    assert reg.on_response(reply(retry, 200, ("Expires", "300")), 250.1) is None and reg.state == "registered"


def test_asterisk_22_offers_sha256_then_md5_topmost_is_used() -> None:
    """RFC 8760 2.4: several WWW-Authenticate headers, the UAC uses the topmost one it supports."""
    reg = make()
    r1 = reg.start(0.0)
    sha = 'Digest realm="asterisk",nonce="ns",opaque="op",algorithm=SHA-256,qop="auth"'
    md5 = 'Digest realm="asterisk",nonce="nm",opaque="op",algorithm=MD5,qop="auth"'
    r2 = reg.on_response(reply(r1, 401, ("WWW-Authenticate", sha), ("WWW-Authenticate", md5)), 0.1)
    assert r2 is not None
    f = auth_fields(r2)
    assert f["algorithm"] == "SHA-256" and f["nonce"] == "ns" and f["response"] == expected_response(f)
    assert len(f["response"]) == 64 and f["opaque"] == "op"
    chosen = choose_challenge([md5, sha])
    assert chosen is not None and chosen.algorithm == "MD5"  # the registrar's order, not ours


@pytest.mark.parametrize("challenge", [
    'Digest realm="pbx", nonce="a1", qop="auth,auth-int", opaque="xyz"',
    'Digest realm="pbx", nonce="a1", qop="auth-int,auth", algorithm=MD5-sess, opaque="xyz"',
    'Digest realm="pbx", nonce="a1", qop="auth", algorithm=SHA-256-sess',
    'Digest realm="pbx", nonce="a1", algorithm="MD5"',  # RFC 2069 form, no qop; a quoted algorithm
])
def test_qop_and_algorithm_variants_verify_like_a_registrar(challenge: str) -> None:
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 401, ("WWW-Authenticate", challenge)), 0.1)
    assert r2 is not None
    f = auth_fields(r2)
    assert f["response"] == expected_response(f) and f["uri"] == REGISTRAR
    assert ("qop" in f) == ("qop=" in challenge)
    if "qop" in f:
        assert f["qop"] == "auth" and f["nc"] == "00000001"
    if "opaque" in challenge:
        assert f["opaque"] == "xyz"


def test_407_on_register_and_a_realm_other_than_the_domain() -> None:
    reg = make()
    r1 = reg.start(0.0)
    r2 = reg.on_response(reply(r1, 407, ("Proxy-Authenticate", 'Digest realm="sbc.example.net", nonce="p1"')), 0.1)
    assert r2 is not None and r2.headers.get("Authorization") is None
    f = auth_fields(r2, "Proxy-Authorization")
    assert f["realm"] == "sbc.example.net" and f["response"] == expected_response(f)
    # Behind the proxy the registrar challenges too: both credentials go on the next REGISTER.
    r3 = reg.on_response(reply(r2, 401, www(FREESWITCH, nonce="f1")), 0.2)
    assert r3 is not None
    assert auth_fields(r3)["realm"] == "192.0.2.9" and auth_fields(r3, "Proxy-Authorization")["nonce"] == "p1"


def test_a_challenge_without_a_usable_scheme_fails_clearly() -> None:
    reg = make()
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 401, ("WWW-Authenticate", 'Basic realm="x"'),
                                 ("WWW-Authenticate", 'Digest realm="x", nonce="n", qop="auth-int"')), 0.1) is None
    assert reg.state == "failed"


def test_each_authentication_failure_says_why() -> None:
    """``problem`` is what ``sipagent check --connect`` and the UA's ``registration_problem`` show."""
    loop = make()
    req = loop.start(0.0)
    for i in range(4):
        req = loop.on_response(reply(req, 401, www(nonce=f"s{i}", stale="true")), 0.0) or req
    assert loop.problem is not None and "loop" in loop.problem
    basic = make()
    r1 = basic.start(0.0)
    basic.on_response(reply(r1, 401, ("WWW-Authenticate", 'Basic realm="x"')), 0.0)
    assert basic.problem is not None and "no usable digest challenge" in basic.problem
    assert "authentication failed (401)" in basic.problem
    fine = make()
    registered(fine)
    assert fine.problem is None


@pytest.mark.parametrize("challenge", [
    'Digest realm="a\\\r\nX-Evil: 1", nonce="n"',  # a quoted-pair carrying CR LF
    'Digest realm="pbx", nonce="n\\\x00"',
    'Digest realm="pbx", nonce="n", opaque="o\\\nInjected: yes"',
])
def test_control_characters_in_a_challenge_are_refused_not_echoed(challenge: str) -> None:
    with pytest.raises(SipParseError):
        DigestChallenge.parse(challenge)
    auth = DigestAuthenticator(CREDS)
    assert not auth.handle_challenge(401, [challenge]) and auth.headers_for("REGISTER", REGISTRAR) == []


def test_a_huge_nonce_is_not_echoed() -> None:
    """A 30 kB nonce fits a datagram under sip.limits; each of our REGISTERs would carry it back for ever."""
    reg = make()
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 401, www(nonce="x" * 30000)), 0.1) is None
    assert reg.state == "failed" and reg.problem is not None and "no usable digest challenge" in reg.problem
    ok = 'Digest realm="r", nonce="' + "n" * 200 + '", opaque="' + "o" * 200 + '"'
    assert DigestChallenge.parse(ok).nonce == "n" * 200  # long-ish real nonces still work


# -- expiry ------------------------------------------------------------------------------------------------

def test_423_huge_min_expires_is_bounded() -> None:
    reg = make(expires=300)
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 423, ("Min-Expires", "999999999")), 0.1) is None
    assert reg.state == "failed" and reg.expires == 300
    assert reg.problem is not None and "999999999" in reg.problem
    # A sane one is obeyed, once.
    r2 = reg.timeout(reg.next_deadline or 0)
    assert r2 is not None
    r3 = reg.on_response(reply(r2, 423, ("Min-Expires", "3600")), 200.0)
    assert r3 is not None and r3.headers.get("Expires") == "3600" and r3.call_id == r1.call_id


@pytest.mark.parametrize("value", ["-60", "", "abc", "12345678901234"])
def test_423_with_a_negative_or_garbled_min_expires_backs_off(value: str) -> None:
    reg = make(expires=300)
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 423, ("Min-Expires", value)), 0.1) is None
    assert reg.state == "backing-off" and reg.expires == 300


def test_contact_expires_param_wins_over_expires_header_and_other_bindings_are_skipped() -> None:
    reg = make(expires=3600)
    r1 = reg.start(0.0)
    ok = reply(r1, 200,
               ("Contact", "<sip:1001@10.0.0.7:5060>;expires=3000"),  # the desk phone on the same extension
               ("Contact", f'{CONTACT};expires="600"'),  # ours, the expiry quoted (seen from old SER forks)
               ("Contact", "<sip:1001@192.0.2.1:5999>;expires=50"),  # our host, another port: not ours
               ("Expires", "3600"))
    assert reg.on_response(ok, 1.0) is None
    assert reg.granted == 600 and reg.registered_until == 601.0


def test_200_without_our_contact_uses_the_expires_header() -> None:
    reg = make(expires=3600)
    r1 = reg.start(0.0)
    rewritten = reply(r1, 200, ("Contact", "<sip:1001@203.0.113.5:40000>;expires=1800"), ("Expires", "1800"))
    assert reg.on_response(rewritten, 1.0) is None
    assert reg.state == "registered" and reg.granted == 1800


def test_a_grant_much_shorter_than_asked_is_refreshed_before_it_ends() -> None:
    reg = make(expires=3600)
    registered(reg, expires=30, now=0.0)
    assert reg.granted == 30 and reg.next_deadline is not None and reg.registered_until is not None
    assert reg.next_deadline < reg.registered_until
    refresh = reg.timeout(reg.next_deadline)
    assert refresh is not None and refresh.headers.get("Expires") == "3600"  # we keep asking for ours


@pytest.mark.parametrize("headers", [
    [("Expires", "0")],
    [("Contact", f"{CONTACT};expires=0"), ("Expires", "300")],
])
def test_200_granting_zero_is_not_registered(headers: list[tuple[str, str]]) -> None:
    reg = make()
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 200, *headers), 1.0) is None
    assert reg.state == "backing-off" and reg.registered_until is None
    assert reg.problem is not None and "not registered" in reg.problem


@pytest.mark.parametrize("headers", [
    [("Contact", f"{CONTACT};expires=4294967295")],
    [("Expires", "9999999999")],
])
def test_a_huge_grant_is_cut_to_what_we_asked(headers: list[tuple[str, str]]) -> None:
    """A registrar may shorten the interval, not lengthen it (RFC 3261 10.3): refresh as if it gave ours."""
    reg = make(expires=300)
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 200, *headers), 1.0) is None
    assert reg.granted == 300 and reg.next_deadline == 241.0


def test_a_200_with_a_garbled_expires_is_not_taken_for_a_grant() -> None:
    """The 200 is read (a request with such an Expires gets 400; a response's is advice), and the registration
    holds for what it asked."""
    reg = make(expires=120)
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 200, ("Expires", "-5")), 0.1) is None
    assert reg.state == "registered" and reg.granted == 120


# -- refusals and back-off ----------------------------------------------------------------------------------

def test_a_redirect_is_not_followed_and_not_hammered() -> None:
    """A 302 naming another host: following it would hand our digest to that host."""
    reg = make()
    r1 = reg.start(0.0)
    moved = reply(r1, 302, ("Contact", "<sip:1001@198.51.100.66:5060>"))
    assert reg.on_response(moved, 1.0) is None
    assert reg.state == "failed" and reg.next_deadline == 1.0 + reg.config.backoff_max
    assert reg.problem is not None and "redirect" in reg.problem
    again = reg.timeout(reg.next_deadline)
    assert again is not None and again.uri == REGISTRAR  # still the configured registrar


@pytest.mark.parametrize("status", [403, 404, 400, 603])
def test_final_refusals_are_retried_rarely(status: int) -> None:
    reg = make()
    req = reg.start(0.0)
    now, attempts = 0.0, 0
    while now < 600.0:  # ten minutes of a registrar that says 403 to everything
        assert reg.on_response(reply(req, status), now) is None
        attempts += 1
        assert reg.state == "failed" and reg.problem is not None and str(status) in reg.problem
        assert reg.next_deadline is not None
        now = reg.next_deadline
        req = reg.timeout(now) or req
    assert attempts <= 6  # one every backoff_max (120 s), not 2, 4, 8… s


def test_503_retry_after_is_respected_and_bounded() -> None:
    reg = make()
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 503, ("Retry-After", "90 (maintenance);duration=60")), 1.0) is None
    assert reg.state == "backing-off" and reg.next_deadline == 91.0
    r2 = reg.timeout(91.0)
    assert r2 is not None
    assert reg.on_response(reply(r2, 503, ("Retry-After", "4294967295")), 100.0) is None
    assert reg.next_deadline == 100.0 + reg.config.backoff_max * 10


@pytest.mark.parametrize("status", [500, 408, 480, 504])
def test_transient_refusals_back_off_with_jitter_and_a_cap(status: int) -> None:
    draws = iter([1.0, 0.0, 0.5] + [0.25] * 20)
    reg = Registration(RegistrationConfig(
        registrar_uri=REGISTRAR, aor="sip:1001@pbx.example.com", contact=CONTACT, via_sent_by="192.0.2.1:5070",
        credentials=CREDS, backoff_jitter=0.5), rand=lambda: next(draws))
    req = reg.start(0.0)
    now, delays = 0.0, []
    for _ in range(12):
        assert reg.on_response(reply(req, status), now) is None and reg.state == "backing-off"
        assert reg.next_deadline is not None
        delays.append(reg.next_deadline - now)
        now = reg.next_deadline
        req = reg.timeout(now) or req
    assert delays[:3] == [1.0, 4.0, 6.0]  # 2 s × (1 − 0.5 × 1.0), 4 s × 1, 8 s × 0.75
    assert max(delays) <= reg.config.backoff_max and delays[-1] == 120.0 * 0.875


def test_jitter_spreads_agents_that_failed_together() -> None:
    import random
    rng = random.Random(7)
    deadlines = set()
    for _ in range(20):
        reg = make(backoff_jitter=0.5)
        reg._rand = rng.random
        reg.start(0.0)
        for _ in range(5):
            reg.on_timeout(0.0)
        assert reg.next_deadline is not None and 16.0 <= reg.next_deadline <= 32.0
        deadlines.add(round(reg.next_deadline, 3))
    assert len(deadlines) > 10


# -- unregister, continuity ---------------------------------------------------------------------------------

def test_unregister_same_call_id_next_cseq_expires_zero() -> None:
    reg = make()
    last = registered(reg)
    bye = reg.stop(5.0)
    assert bye is not None and reg.state == "unregistering"
    assert bye.call_id == last.call_id and bye.cseq.seq == last.cseq.seq + 1
    assert bye.headers.get("Expires") == "0" and bye.headers.get("Contact") == CONTACT
    assert auth_fields(bye)["nc"] == "00000002"  # the cached nonce, answered up front
    assert reg.on_response(reply(bye, 200), 5.1) is None
    assert reg.state == "unregistered" and reg.next_deadline is None and reg.registered_until is None


def test_423_to_the_unregister_does_not_register_again() -> None:
    """Expires: 0 cannot be too brief; a registrar saying so must not turn our shutdown into a registration."""
    reg = make()
    registered(reg)
    bye = reg.stop(5.0)
    assert bye is not None
    assert reg.on_response(reply(bye, 423, ("Min-Expires", "3600")), 5.1) is None
    assert reg.state == "unregistered" and reg.next_deadline is None and reg.expires == 300


@pytest.mark.parametrize(("status", "headers"), [
    (403, []), (503, [("Retry-After", "30")]), (401, [www(nonce="n1")]), (302, [("Contact", "<sip:x@h>")]),
])
def test_any_refusal_of_the_unregister_ends_in_unregistered(status: int, headers: list[tuple[str, str]]) -> None:
    reg = make()
    registered(reg)
    bye = reg.stop(5.0)
    assert bye is not None
    assert reg.on_response(reply(bye, status, *headers), 5.1) is None
    assert reg.state == "unregistered" and reg.next_deadline is None


def test_call_id_and_cseq_continue_across_refreshes_and_challenges() -> None:
    reg = make(expires=60)
    req = reg.start(0.0)
    call_id, seqs, now = req.call_id, [req.cseq.seq], 0.0
    for nonce in range(1, 6):
        challenged = reg.on_response(reply(req, 401, www(nonce=f"r{nonce}", stale="true")), now)
        assert challenged is not None
        seqs.append(challenged.cseq.seq)
        assert reg.on_response(reply(challenged, 200, ("Expires", "60")), now) is None
        assert reg.next_deadline is not None
        now = reg.next_deadline
        refresh = reg.timeout(now)
        assert refresh is not None
        req = refresh
        seqs.append(req.cseq.seq)
        assert req.call_id == call_id and (req.headers.get("From") or "").endswith(reg.from_tag)
    assert seqs == list(range(1, len(seqs) + 1))


def test_service_route_and_path_in_the_200_are_not_applied() -> None:
    """RFC 3608/3327 are optional: the agent routes by its configuration, so a Service-Route cannot steer the
    next REGISTER (or the calls it places) through a host the registrar names."""
    reg = make()
    r1 = reg.start(0.0)
    ok = reply(r1, 200, ("Expires", "300"), ("Service-Route", "<sip:evil@198.51.100.66;lr>"),
               ("Path", "<sip:edge@198.51.100.67;lr>"))
    assert reg.on_response(ok, 0.0) is None and reg.state == "registered"
    refresh = reg.timeout(reg.next_deadline or 0)
    assert refresh is not None and refresh.uri == REGISTRAR and refresh.headers.get("Route") is None


def test_a_timeout_then_the_late_200_is_ignored_and_the_retry_registers() -> None:
    """A registrar slower than timer F: the transaction has timed out, its 200 comes after; it must not count."""
    reg = make()
    r1 = reg.start(0.0)
    reg.on_timeout(32.0)
    assert reg.state == "backing-off"
    assert reg.on_response(reply(r1, 200, ("Expires", "300")), 33.0) is None and reg.state == "backing-off"
    r2 = reg.timeout(reg.next_deadline or 0)
    assert r2 is not None and r2.cseq.seq == r1.cseq.seq + 1
    assert reg.on_response(reply(r2, 200, ("Expires", "300")), 35.0) is None and reg.state == "registered"


def test_repeated_final_refusals_wait_longer_each_time_then_recover() -> None:
    reg = make()
    req = reg.start(0.0)
    now, delays = 0.0, []
    for _ in range(6):  # a wrong password for an hour: 2, 4, 8, 16, 16, 16 minutes
        r2 = reg.on_response(reply(req, 401, www(nonce=f"w{now}")), now)
        assert r2 is not None
        assert reg.on_response(reply(r2, 401, www(nonce=f"x{now}")), now) is None and reg.state == "failed"
        assert reg.next_deadline is not None
        delays.append(reg.next_deadline - now)
        now = reg.next_deadline
        req = reg.timeout(now) or req
    assert delays == [120.0, 240.0, 480.0, 960.0, 960.0, 960.0]
    # The password fixed on the PBX: the next attempt registers, and a later refusal starts over at 2 min.
    r2 = reg.on_response(reply(req, 401, www(nonce="ok")), now)
    assert r2 is not None and reg.on_response(reply(r2, 200, ("Expires", "300")), now) is None
    assert reg.state == "registered"
    refresh = reg.timeout(reg.next_deadline or 0)
    assert refresh is not None
    assert reg.on_response(reply(refresh, 403), now + 300) is None
    assert reg.next_deadline == now + 300 + 120.0


@pytest.mark.parametrize(("granted", "refresh_at"), [(2, 1.0), (3, 1.5), (8, 4.0), (10, 5.0), (1, 1.0)])
def test_a_grant_of_seconds_is_refreshed_before_it_ends_but_not_flooded(granted: int, refresh_at: float) -> None:
    """A registrar granting 3 s (Kamailio with min_expires 3 in the restart test, or a hostile one): the 5 s
    floor between REGISTERs would refresh after the binding ended; half the grant, at least 1 s, does not."""
    reg = make(expires=60)
    r1 = reg.start(0.0)
    assert reg.on_response(reply(r1, 200, ("Expires", str(granted))), 0.0) is None
    assert reg.next_deadline == refresh_at and reg.registered_until == float(granted)
    assert reg.next_deadline < reg.registered_until or granted == 1  # 1 s: at its end, never sooner than 1 s
