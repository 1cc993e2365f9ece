"""UAS dialogs: route set, remote target, tags and CSeq ordering."""

from __future__ import annotations

import pytest

from sipagent.errors import SipParseError
from sipagent.sip.dialog import Dialog
from sipagent.sip.message import SipRequest, build_response, parse_message

INVITE = (
    "INVITE sip:1001@192.0.2.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKp1\r\n"
    "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKc1\r\n"
    "Record-Route: <sip:192.0.2.50;lr;ftag=f1>\r\nRecord-Route: <sip:192.0.2.51;lr>\r\n"
    "From: \"Caller\" <sip:2000@pbx.example.com>;tag=f1\r\nTo: <sip:1001@pbx.example.com>\r\n"
    "Call-ID: dlg@192.0.2.9\r\nCSeq: 100 INVITE\r\nContact: <sip:2000@192.0.2.9:5060>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def req(raw: str) -> SipRequest:
    msg = parse_message(raw.encode())
    assert isinstance(msg, SipRequest)
    return msg


def in_dialog(method: str, seq: int, contact: str = "") -> SipRequest:
    extra = f"Contact: {contact}\r\n" if contact else ""
    return req(
        f"{method} sip:1001@192.0.2.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bK{seq}\r\n"
        "From: <sip:2000@pbx.example.com>;tag=f1\r\nTo: <sip:1001@pbx.example.com>;tag=mine\r\n"
        f"Call-ID: dlg@192.0.2.9\r\nCSeq: {seq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )


def test_dialog_from_invite_and_2xx() -> None:
    invite = req(INVITE)
    dialog = Dialog.from_invite(invite, "<sip:1001@192.0.2.1:5070>", local_tag="mine")
    assert dialog.key == ("dlg@192.0.2.9", "mine", "f1")
    assert dialog.route_set == ["<sip:192.0.2.50;lr;ftag=f1>", "<sip:192.0.2.51;lr>"]
    assert str(dialog.remote_target) == "sip:2000@192.0.2.9:5060"
    ok = dialog.response(invite, 200, body=b"v=0\r\n", content_type="application/sdp")
    assert ok.to_addr.tag == "mine" and ok.headers.get("Contact") == "<sip:1001@192.0.2.1:5070>"
    assert ok.headers.get_all("Record-Route") == dialog.route_set
    assert parse_message(ok.to_bytes()).body == b"v=0\r\n"
    assert dialog.state == "early"
    dialog.confirm()
    assert dialog.state == "confirmed"


def test_bye_follows_route_set() -> None:
    dialog = Dialog.from_invite(req(INVITE), "<sip:1001@192.0.2.1:5070>", local_tag="mine")
    bye = dialog.create_request("BYE", "192.0.2.1:5070")
    wire = parse_message(bye.to_bytes())
    assert isinstance(wire, SipRequest)
    assert wire.uri == "sip:2000@192.0.2.9:5060"
    assert wire.headers.get_all("Route") == dialog.route_set
    assert wire.from_addr.tag == "mine" and wire.to_addr.tag == "f1"
    assert wire.cseq.seq == 1 and wire.headers.get("Contact") is None
    refer = dialog.create_request("REFER", "192.0.2.1:5070", extra=[("Refer-To", "<sip:1000@pbx>")])
    assert refer.cseq.seq == 2 and refer.headers.get("Contact") and refer.headers.get("Refer-To")
    assert dialog.next_hop().host == "192.0.2.50"


def test_strict_router() -> None:
    raw = INVITE.replace("<sip:192.0.2.50;lr;ftag=f1>", "<sip:192.0.2.50>")
    dialog = Dialog.from_invite(req(raw), "<sip:me@h>", local_tag="mine")
    bye = dialog.create_request("BYE", "h:5060")
    assert bye.uri == "sip:192.0.2.50"
    assert bye.headers.get_all("Route")[-1] == "<sip:2000@192.0.2.9:5060>"


def test_cseq_ordering_and_target_refresh() -> None:
    dialog = Dialog.from_invite(req(INVITE), "<sip:me@h>", local_tag="mine")
    reinvite = in_dialog("INVITE", 101, "<sip:2000@198.51.100.7:5062>")
    assert dialog.matches(reinvite)
    assert dialog.check_request(reinvite) is None
    assert str(dialog.remote_target) == "sip:2000@198.51.100.7:5062"
    assert dialog.check_request(in_dialog("INFO", 101)) == 500  # replayed number
    assert dialog.check_request(in_dialog("ACK", 101)) is None  # ACK reuses the INVITE's CSeq
    assert dialog.check_request(in_dialog("BYE", 150)) is None and dialog.remote_seq == 150


def test_matches_and_bad_invites() -> None:
    dialog = Dialog.from_invite(req(INVITE), "<sip:me@h>", local_tag="mine")
    other = in_dialog("BYE", 200)
    other.headers.set("To", "<sip:1001@pbx.example.com>;tag=other")
    assert not dialog.matches(other)
    with pytest.raises(SipParseError):
        Dialog.from_invite(req(INVITE.replace("Contact: <sip:2000@192.0.2.9:5060>\r\n", "")), "<sip:me@h>")
    with pytest.raises(SipParseError):
        Dialog.from_invite(req(INVITE.replace(";tag=f1", "")), "<sip:me@h>")


def test_our_reinvite_its_2xx_moves_the_target_and_the_ack_reuses_its_cseq() -> None:
    dialog = Dialog.from_invite(req(INVITE), "<sip:1001@192.0.2.1:5070>", local_tag="mine")
    reinvite = dialog.create_request("INVITE", "192.0.2.1:5070", body=b"v=0\r\n", content_type="application/sdp")
    ok = build_response(req(reinvite.to_bytes().decode()), 200, to_tag="f1")
    ok.headers.add("Contact", "<sip:2000@192.0.2.77:5090>")
    dialog.target_refreshed(ok)
    assert str(dialog.remote_target) == "sip:2000@192.0.2.77:5090"
    ack = req(dialog.create_ack(reinvite, "192.0.2.1:5070").to_bytes().decode())
    assert ack.method == "ACK" and ack.cseq.seq == reinvite.cseq.seq == 1 and ack.branch != reinvite.branch
    assert ack.headers.get_all("Route") == dialog.route_set and ack.to_addr.tag == "f1"
    assert dialog.create_request("BYE", "192.0.2.1:5070").cseq.seq == 2  # the ACK took no number
    refused = build_response(req(reinvite.to_bytes().decode()), 491, to_tag="f1")
    refused.headers.add("Contact", "<sip:elsewhere@192.0.2.99>")
    dialog.target_refreshed(refused)
    assert str(dialog.remote_target) == "sip:2000@192.0.2.77:5090"
