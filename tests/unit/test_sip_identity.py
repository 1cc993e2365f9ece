"""Who is calling, what they dialed and who sent them, as an INVITE from Asterisk or FreeSWITCH says it."""

from __future__ import annotations

from sipagent.sip.identity import MAX_VALUE_CHARS, CallIdentity, clean, identify
from sipagent.sip.message import SipRequest, parse_message


def invite(*headers: str, uri: str = "sip:agent@192.0.2.10:5070",
           sender: str = '"Front Desk" <sip:100@pbx>') -> SipRequest:
    lines = [f"INVITE {uri} SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", f"From: {sender};tag=a",
             "To: <sip:2001@pbx>", "Call-ID: c1", "CSeq: 1 INVITE", "Max-Forwards: 70", *headers,
             "Content-Length: 0", "", ""]
    request = parse_message("\r\n".join(lines).encode())
    assert isinstance(request, SipRequest)
    return request


def test_from_names_the_caller_when_nothing_else_does() -> None:
    assert identify(invite()) == CallIdentity(caller_number="100", caller_name="Front Desk", dialed="agent")


def test_p_asserted_identity_comes_before_remote_party_id_and_from() -> None:
    asserted = invite('P-Asserted-Identity: "Ada Lovelace" <sip:+15551230001@pbx>, <tel:+15551230001>',
                      'Remote-Party-ID: "Spoofable" <sip:999@pbx>;party=calling;privacy=off')
    assert (identify(asserted).caller_number, identify(asserted).caller_name) == ("+15551230001", "Ada Lovelace")
    remote = invite('Remote-Party-ID: "Bob" <sip:5550002@pbx>;party=calling;screen=yes',
                    'Remote-Party-ID: "Called" <sip:2001@pbx>;party=called')
    assert (identify(remote).caller_number, identify(remote).caller_name) == ("5550002", "Bob")


def test_a_name_missing_from_the_asserted_identity_is_taken_from_the_next_source() -> None:
    asserted = identify(invite("P-Asserted-Identity: <tel:+15551230001;phone-context=example.com>"))
    assert (asserted.caller_number, asserted.caller_name) == ("+15551230001", "Front Desk")


def test_dialed_is_the_request_uri_user_then_the_to_user() -> None:
    assert identify(invite(uri="sip:%2B15557770000;npdi@192.0.2.10")).dialed == "+15557770000"
    assert identify(invite(uri="sip:192.0.2.10:5070")).dialed == "2001"


def test_redirecting_number_from_diversion_then_history_info() -> None:
    diverted = invite("Diversion: <sip:5551000@pbx>;reason=unconditional;counter=1, <sip:5552000@pbx>;reason=busy")
    assert identify(diverted).redirected_from == "5551000"
    history = invite("History-Info: <sip:5551000@pbx?Reason=SIP%3Bcause%3D302>;index=1, <sip:agent@host>;index=1.1")
    assert identify(history).redirected_from == "5551000"
    assert identify(invite("History-Info: <sip:agent@host>;index=1")).redirected_from == ""


def test_configured_headers_are_kept_under_their_configured_names() -> None:
    call = identify(invite("X-Customer-Id: C-4711", "x-queue: support"), ["X-Customer-Id", "X-Queue", "X-Missing"])
    assert call.headers == {"X-Customer-Id": "C-4711", "X-Queue": "support"}


def test_hostile_values_are_cleaned_and_bounded() -> None:
    long = "9" * 5000
    call = identify(invite(f"X-Note: a\x1b[31mred\u202eevil {long}",
                           'P-Asserted-Identity: "\u200fEve\\"" <sip:%0d%0aInjected%00@pbx>',
                           sender=f"<sip:{long}@pbx>"), ["X-Note"])
    assert call.caller_number == "Injected" and call.caller_name == 'Eve"'
    assert call.headers["X-Note"].startswith("a[31mredevil 999") and len(call.headers["X-Note"]) == MAX_VALUE_CHARS
    assert clean("\x00\r\n") == ""


def test_headers_that_do_not_parse_are_passed_over() -> None:
    call = identify(invite("P-Asserted-Identity: <sip:broken", "Diversion: not a uri at all"))
    assert call.caller_number == "100" and call.redirected_from == ""
