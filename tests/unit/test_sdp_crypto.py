"""SDES (RFC 4568 a=crypto): parsing hostile attributes, formatting ours, negotiation per media.srtp."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.errors import SdpError, SrtpRefused
from sipagent.sdp import (
    LocalSession,
    SessionDescription,
    SrtpParams,
    SrtpPolicy,
    accept_answer,
    make_offer,
    negotiate,
    offer_crypto,
)
from sipagent.sdp.crypto import MAX_LINE, CryptoAttribute, choose, crypto_lines, parse_crypto

KEY30 = bytes(range(30))
KEY28 = bytes(range(100, 128))
B64_30 = base64.b64encode(KEY30).decode()
B64_28 = base64.b64encode(KEY28).decode()


def sdp(*lines: str) -> SessionDescription:
    return SessionDescription.parse(("\r\n".join(lines) + "\r\n").encode())


def counter_keys() -> SrtpPolicy:
    """A policy whose keys are predictable: each key is n bytes of one counter value (1, 2, 3...)."""
    counter = itertools.count(1)
    return SrtpPolicy(mode="optional", keys_allowed=True, random_bytes=lambda n: bytes([next(counter)]) * n)


HEAD = ("v=0", "o=- 1 1 IN IP4 192.0.2.20", "s=-", "c=IN IP4 192.0.2.20", "t=0 0")
# What baresip's srtp module (mediaenc=srtp-mand) offers: several suites, one key each.
SAVP_OFFER = (*HEAD, "m=audio 30000 RTP/SAVP 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
              f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{B64_30}",
              f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}", "a=sendrecv")
PLAIN_OFFER = (*HEAD, "m=audio 30000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000")


# ------------------------------------------------------------------------------------- parsing


def test_parse_the_rfc_4568_example() -> None:
    crypto = parse_crypto("1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^31")
    assert crypto.tag == 1 and crypto.suite == "AES_CM_128_HMAC_SHA1_80" and len(crypto.key) == 30
    assert "PS1uQ" not in repr(crypto)  # a key is never in a repr, so never in a log line


def test_format_round_trip() -> None:
    crypto = CryptoAttribute(7, "AEAD_AES_128_GCM", KEY28)
    assert crypto.to_value() == f"7 AEAD_AES_128_GCM inline:{B64_28}"
    assert parse_crypto(crypto.to_value()) == crypto


@pytest.mark.parametrize("value", [
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^48",
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|{2**31}",
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30} WSH=64",
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30} KDR=0",
    f"999999999 AES_CM_128_HMAC_SHA1_32 inline:{B64_30}",
    f"1 AEAD_AES_128_GCM inline:{B64_28}",
])
def test_accepted_attributes(value: str) -> None:
    parse_crypto(value)


@pytest.mark.parametrize(("value", "reason"), [
    ("", "malformed"),
    ("1 AES_CM_128_HMAC_SHA1_80", "malformed"),
    (f"x AES_CM_128_HMAC_SHA1_80 inline:{B64_30}", "malformed"),
    (f"1234567890 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}", "malformed"),  # a tag of 10 digits
    (f"1 F8_128_HMAC_SHA1_80 inline:{B64_30}", "unsupported crypto suite"),
    (f"1 AES_256_CM_HMAC_SHA1_80 inline:{B64_30}", "unsupported crypto suite"),
    (f"1 AES_CM_128_HMAC_SHA1_80 uri:{B64_30}", "not inline"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_28}", "28 bytes"),  # GCM's length for a CM suite
    (f"1 AEAD_AES_128_GCM inline:{B64_30}", "30 bytes"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30[:-1]}", "not base64"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30[:-2]}!!", "not base64"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^20", "lifetime below"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|1000", "lifetime below"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^31|1:4", "MKI"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|1:4", "MKI"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|x", "lifetime or MKI"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^31|1:4|5", "malformed crypto key parameters"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30};inline:{B64_30}", "several master keys"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30} UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30} UNAUTHENTICATED_SRTP", "UNAUTHENTICATED_SRTP"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30} KDR=24", "KDR"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30} FEC_ORDER=SRTP_FEC", "FEC_ORDER"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * (MAX_LINE + 1), "longer than"),
])
def test_refused_attributes_say_why_and_never_show_the_key(value: str, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_crypto(value)
    assert reason in str(info.value)
    assert B64_30[:12] not in str(info.value) and B64_28[:12] not in str(info.value)


def test_non_canonical_base64_is_refused() -> None:
    # A 28-byte GCM key ends in "X==", whose character carries 4 stray bits: other text, the same bytes.
    assert B64_28.endswith("==")
    tampered = B64_28[:-3] + chr(ord(B64_28[-3]) + 1) + "=="
    assert base64.b64decode(tampered) == KEY28
    with pytest.raises(SdpError, match="canonical"):
        parse_crypto(f"1 AEAD_AES_128_GCM inline:{tampered}")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=700))
def test_fuzz_parse_raises_only_sdp_error(value: str) -> None:
    try:
        parse_crypto(value)
    except SdpError:
        pass


def test_only_the_first_sixteen_lines_are_read() -> None:
    attributes: list[tuple[str, str | None]] = [("crypto", "junk")] * 40
    assert len(crypto_lines(attributes)) == 16


def test_choose_follows_our_suite_order() -> None:
    offered = crypto_lines([("crypto", f"1 AES_CM_128_HMAC_SHA1_32 inline:{B64_30}"),
                            ("crypto", f"2 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}"),
                            ("crypto", f"3 AEAD_AES_128_GCM inline:{B64_28}")])
    assert choose(offered, ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80")).tag == 3
    assert choose(offered, ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")).tag == 2
    with pytest.raises(SdpError, match=r"not in media\.srtp_suites"):
        choose(offered[:1], ("AES_CM_128_HMAC_SHA1_80",))


# ---------------------------------------------------------------------------------- negotiation


def test_optional_answers_savp_with_our_own_fresh_key() -> None:
    answer, media = negotiate(sdp(*SAVP_OFFER), ["PCMU"], "192.0.2.1", 40000, srtp=counter_keys())
    assert media.srtp == SrtpParams("AES_CM_128_HMAC_SHA1_80", 2, bytes([1]) * 30, KEY30)
    text = answer.to_bytes().decode()
    assert "m=audio 40000 RTP/SAVP 0 101\r\n" in text
    ours = base64.b64encode(bytes([1]) * 30).decode()
    assert text.count("a=crypto:") == 1 and f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{ours}\r\n" in text
    assert B64_30 not in text  # the peer's key is never echoed
    assert "inline" not in repr(media) and ours not in repr(media)


def test_gcm_is_taken_where_the_peer_offers_it() -> None:
    offer = sdp(*SAVP_OFFER[:-1], f"a=crypto:3 AEAD_AES_128_GCM inline:{B64_28}")
    answer, media = negotiate(offer, ["PCMU"], "192.0.2.1", 40000, srtp=counter_keys())
    assert media.srtp is not None and media.srtp.suite == "AEAD_AES_128_GCM" and len(media.srtp.local_key) == 28
    assert "a=crypto:3 AEAD_AES_128_GCM inline:" in answer.to_bytes().decode()


def test_optional_answers_plain_offers_plain() -> None:
    answer, media = negotiate(sdp(*PLAIN_OFFER), ["PCMU"], "192.0.2.1", 40000, srtp=counter_keys())
    assert media.srtp is None and "RTP/AVP" in answer.to_bytes().decode() and b"crypto" not in answer.to_bytes()


@pytest.mark.parametrize(("policy", "offer", "reason"), [
    (SrtpPolicy(), SAVP_OFFER, "media.srtp is off"),  # today's behaviour: 488
    (SrtpPolicy(mode="required", keys_allowed=True), PLAIN_OFFER, "media.srtp is required"),
    (SrtpPolicy(mode="optional"), SAVP_OFFER, "srtp_over_insecure_signalling"),
    (SrtpPolicy(mode="required"), SAVP_OFFER, "srtp_over_insecure_signalling"),
    (SrtpPolicy(mode="optional", keys_allowed=True), (*SAVP_OFFER[:-3], "a=sendrecv"), "without a crypto"),
    (SrtpPolicy(mode="optional", keys_allowed=True),
     (*SAVP_OFFER[:-3], f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|1:4"), "MKI"),
    (SrtpPolicy(mode="optional", keys_allowed=True, suites=("AEAD_AES_128_GCM",)), SAVP_OFFER, "not in media.srtp"),
])
def test_refusals(policy: SrtpPolicy, offer: tuple[str, ...], reason: str) -> None:
    with pytest.raises(SrtpRefused, match=reason) as info:
        negotiate(sdp(*offer), ["PCMU"], "192.0.2.1", 40000, srtp=policy)
    assert B64_30[:12] not in str(info.value)


def test_a_codec_mismatch_is_not_an_srtp_refusal() -> None:
    with pytest.raises(SdpError) as info:
        negotiate(sdp(*SAVP_OFFER), ["G722"], "192.0.2.1", 40000, srtp=counter_keys())
    assert not isinstance(info.value, SrtpRefused) and "no common audio codec" in str(info.value)


def test_required_takes_the_savp_stream_of_a_best_effort_offer() -> None:
    offer = sdp(*HEAD, "m=audio 30000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", *SAVP_OFFER[5:])
    policy = SrtpPolicy(mode="required", keys_allowed=True)
    answer, media = negotiate(offer, ["PCMU"], "192.0.2.1", 40000, srtp=policy)
    assert media.srtp is not None
    assert [(m.port, m.proto) for m in answer.media] == [(0, "RTP/AVP"), (40000, "RTP/SAVP")]


def test_reinvite_with_the_same_key_keeps_ours_and_a_new_key_renews_ours() -> None:
    policy = counter_keys()
    session = LocalSession()
    _, first = negotiate(sdp(*SAVP_OFFER), ["PCMU"], "192.0.2.1", 40000, session, policy)
    assert first.srtp is not None
    # A hold with the same crypto line: the same keys on both sides, the same SrtpParams.
    hold = sdp(*SAVP_OFFER[:-1], "a=sendonly")
    _, held = negotiate(hold, ["PCMU"], "192.0.2.1", 40000, session, policy, current=first.srtp)
    assert held.srtp == first.srtp and held.direction == "recvonly"
    # The peer's new key: ours is renewed too, so no old key meets a new one.
    rekey = sdp(*SAVP_OFFER[:-2], f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(KEY30[::-1]).decode()}")
    _, renewed = negotiate(rekey, ["PCMU"], "192.0.2.1", 40000, session, policy, current=first.srtp)
    assert renewed.srtp is not None and renewed.srtp.remote_key == KEY30[::-1]
    assert renewed.srtp.local_key != first.srtp.local_key
    # Each call (no current SRTP) gets a fresh key.
    _, other_call = negotiate(sdp(*SAVP_OFFER), ["PCMU"], "192.0.2.1", 40000, srtp=policy)
    assert other_call.srtp is not None and other_call.srtp.local_key not in (first.srtp.local_key,
                                                                             renewed.srtp.local_key)


def test_default_keys_are_random_and_sized_for_the_suite() -> None:
    policy = SrtpPolicy(mode="optional", keys_allowed=True)
    keys = {negotiate(sdp(*SAVP_OFFER), ["PCMU"], "192.0.2.1", 40000, srtp=policy)[1].srtp.local_key  # type: ignore[union-attr]
            for _ in range(20)}
    assert len(keys) == 20 and {len(k) for k in keys} == {30}


def test_our_own_srtp_offer_and_its_answer() -> None:
    policy = SrtpPolicy(mode="required", keys_allowed=True, random_bytes=lambda n: b"\x07" * n)
    assert policy.offers_srtp and not SrtpPolicy(mode="required").offers_srtp
    crypto = offer_crypto(policy)
    offer = make_offer(["PCMU"], "192.0.2.1", 40000, LocalSession(), crypto=crypto)
    text = offer.to_bytes().decode()
    assert "m=audio 40000 RTP/SAVP 0 101\r\n" in text and text.count("a=crypto:") == 3
    # The peer answers it (as negotiate would), taking one of our lines with its own key.
    peer = SrtpPolicy(mode="required", keys_allowed=True, suites=("AES_CM_128_HMAC_SHA1_80",),
                      random_bytes=lambda n: b"\x09" * n)
    answer, theirs = negotiate(SessionDescription.parse(offer.to_bytes()), ["PCMU"], "192.0.2.2", 30000, srtp=peer)
    media = accept_answer(answer, offer)
    assert media.srtp == SrtpParams("AES_CM_128_HMAC_SHA1_80", 2, b"\x07" * 30, b"\x09" * 30)
    assert theirs.srtp is not None and theirs.srtp.remote_key == media.srtp.local_key
    # An answer that is plain to our SRTP offer, or SRTP to a plain one, is refused.
    with pytest.raises(SdpError, match="offer of SRTP"):
        accept_answer(sdp(*PLAIN_OFFER), offer)
    with pytest.raises(SdpError, match="to a plain offer"):
        accept_answer(answer, make_offer(["PCMU"], "192.0.2.1", 40000, LocalSession()))
    # An answer with a tag we did not offer.
    bad = SessionDescription.parse(answer.to_bytes().replace(b"a=crypto:2 ", b"a=crypto:9 "))
    with pytest.raises(SdpError, match="none of the crypto"):
        accept_answer(bad, offer)


@pytest.mark.parametrize(("transport", "allow", "keys_allowed"), [
    ("TLS", False, True), ("UDP", False, False), ("TCP", False, False), ("UDP", True, True),
])
def test_the_ua_takes_keys_only_from_offers_over_tls_unless_allowed(transport: str, allow: bool,
                                                                    keys_allowed: bool) -> None:
    from types import SimpleNamespace

    from sipagent.sip.ua import srtp_policy

    # Only what the policy reads: the UA's settings and the transport the INVITE came over.
    settings = SimpleNamespace(srtp="optional", srtp_suites=["AES_CM_128_HMAC_SHA1_80"],
                               srtp_over_insecure_signalling=allow)
    policy = srtp_policy(settings, transport)  # type: ignore[arg-type]
    assert policy.keys_allowed is keys_allowed
    assert policy.mode == "optional" and policy.suites == ("AES_CM_128_HMAC_SHA1_80",)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    "v=0", "o=x 1 1 IN IP4 h", "c=IN IP4 1.2.3.4", "m=audio 1 RTP/SAVP 0 101", "m=audio 2 RTP/AVP 0",
    "m=audio 3 RTP/SAVPF 0", "a=rtpmap:101 telephone-event/8000", "a=sendonly", "t=0 0",
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}", f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{B64_30}|2^31",
    f"a=crypto:3 AEAD_AES_128_GCM inline:{B64_28}", f"a=crypto:4 AEAD_AES_128_GCM inline:{B64_30}",
    "a=crypto", "a=crypto:", "a=crypto:1", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:", "a=crypto:x y z",
    f"a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|1:4 UNENCRYPTED_SRTP",
    "a=crypto:6 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 600, "a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:²",
]), max_size=14), st.sampled_from(["off", "optional", "required"]), st.booleans())
def test_fuzz_negotiate_with_crypto_raises_only_sdp_error(lines: list[str], mode: str, allowed: bool) -> None:
    policy = SrtpPolicy(mode=mode, keys_allowed=allowed)
    try:
        offer = SessionDescription.parse(("\r\n".join(lines)).encode())
        answer, media = negotiate(offer, ["PCMU"], "192.0.2.1", 40000, srtp=policy)
    except SdpError as exc:
        assert B64_30 not in str(exc) and B64_28 not in str(exc)
        return
    (accepted,) = [m for m in answer.media if m.port]
    assert (media.srtp is not None) == (accepted.proto in ("RTP/SAVP", "RTP/SAVPF"))
    assert media.srtp is None or (mode != "off" and allowed)
    assert mode != "required" or media.srtp is not None
