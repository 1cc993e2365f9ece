"""Digest authentication: RFC 2617 / RFC 7616 vectors and the retry policy."""

from __future__ import annotations

import pytest

from sipagent.errors import SipParseError
from sipagent.sip.auth import (
    DigestAuthenticator,
    DigestChallenge,
    DigestCredentials,
    UnsupportedChallenge,
    authorization_header,
    choose_challenge,
    digest_response,
)


def _fields(header: str) -> dict[str, str]:
    assert header.startswith("Digest ")
    out = {}
    for part in header[7:].split(", "):
        k, _, v = part.partition("=")
        out[k] = v.strip('"')
    return out


def test_rfc2617_md5_vector() -> None:
    challenge = DigestChallenge.parse(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.qop == ["auth", "auth-int"] and challenge.algorithm == "MD5"
    creds = DigestCredentials("Mufasa", "Circle Of Life")
    header = authorization_header(challenge, "GET", "/dir/index.html", creds, 1, "0a4f113b")
    f = _fields(header)
    assert f["response"] == "6629fae49393a05397450978507c4ef1"
    assert f["nc"] == "00000001" and f["qop"] == "auth" and f["cnonce"] == "0a4f113b"
    assert f["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41" and f["username"] == "Mufasa"


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    challenge = DigestChallenge.parse(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    creds = DigestCredentials("Mufasa", "Circle of Life")
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    assert digest_response(challenge, "GET", "/dir/index.html", creds, 1, cnonce) == expected


def test_sess_and_no_qop_forms_by_hand() -> None:
    import hashlib

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    creds = DigestCredentials("1001", "pw")
    plain = DigestChallenge(realm="pbx", nonce="n1")
    ha1, ha2 = md5("1001:pbx:pw"), md5("REGISTER:sip:pbx")
    assert digest_response(plain, "REGISTER", "sip:pbx", creds, 1, "c") == md5(f"{ha1}:n1:{ha2}")
    assert "qop" not in authorization_header(plain, "REGISTER", "sip:pbx", creds, 1, "c")
    sess = DigestChallenge(realm="pbx", nonce="n1", algorithm="MD5-sess", qop=["auth"])
    sess_ha1 = md5(f"{ha1}:n1:c")
    assert digest_response(sess, "REGISTER", "sip:pbx", creds, 2, "c") == md5(
        f"{sess_ha1}:n1:00000002:c:auth:{ha2}")


def test_stale_and_unsupported() -> None:
    c = DigestChallenge.parse('Digest realm="r", nonce="n", stale=TRUE')
    assert c.stale
    with pytest.raises(UnsupportedChallenge):
        DigestChallenge.parse('Basic realm="r"')
    with pytest.raises(SipParseError):
        DigestChallenge.parse('Digest realm="r"')
    weird = DigestChallenge(realm="r", nonce="n", algorithm="SHA-1")
    with pytest.raises(UnsupportedChallenge):
        digest_response(weird, "REGISTER", "sip:r", DigestCredentials("u", "p"), 1, "c")
    only_int = DigestChallenge(realm="r", nonce="n", qop=["auth-int"])
    assert not only_int.supported


def test_choose_challenge_prefers_first_supported() -> None:
    chosen = choose_challenge([
        'Digest realm="r", nonce="a", algorithm=SHA-1', 'Bearer x',
        'Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth"', 'Digest realm="r", nonce="c"',
    ])
    assert chosen is not None and chosen.nonce == "b"
    assert choose_challenge(["Basic realm=x"]) is None


def test_authenticator_once_per_nonce_and_stale_retry() -> None:
    auth = DigestAuthenticator(DigestCredentials("1001", "pw"))
    assert auth.headers_for("REGISTER", "sip:pbx") == []
    assert auth.handle_challenge(401, ['Digest realm="pbx", nonce="n1", qop="auth"'])
    (name, value), = auth.headers_for("REGISTER", "sip:pbx", cnonce="c1")
    assert name == "Authorization" and 'nonce="n1"' in value and "nc=00000001" in value
    auth.succeeded()
    # Reusing the nonce increments nc.
    (_, value), = auth.headers_for("REGISTER", "sip:pbx", cnonce="c2")
    assert "nc=00000002" in value
    # The same nonce challenged again without stale: the password is wrong.
    assert not auth.handle_challenge(401, ['Digest realm="pbx", nonce="n1", qop="auth"'])
    # stale=true with a fresh nonce earns a retry.
    auth.succeeded()
    assert auth.handle_challenge(401, ['Digest realm="pbx", nonce="n2", qop="auth", stale=true'])
    (_, value), = auth.headers_for("REGISTER", "sip:pbx")
    assert 'nonce="n2"' in value and "nc=00000001" in value


def test_authenticator_gives_up_on_endless_fresh_nonces_and_handles_407() -> None:
    auth = DigestAuthenticator(DigestCredentials("1001", "pw"))
    assert auth.handle_challenge(407, ['Digest realm="proxy", nonce="p1"'])
    assert auth.headers_for("INVITE", "sip:x")[0][0] == "Proxy-Authorization"
    assert auth.handle_challenge(401, ['Digest realm="pbx", nonce="a1"'])
    names = [n for n, _ in auth.headers_for("INVITE", "sip:x")]
    assert sorted(names) == ["Authorization", "Proxy-Authorization"]
    assert not auth.handle_challenge(401, ['Digest realm="pbx", nonce="a2"'])
    assert "pw" not in repr(auth.credentials)
