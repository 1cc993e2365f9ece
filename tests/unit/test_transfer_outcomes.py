"""What becomes of our REFER as real PBXs answer it (RFC 3515, RFC 5589), on the sans-I/O call core and the
front over it: the outcome the layer above learns, and when.

- A PBX that accepts the REFER (202) and drops our leg with a BYE before any final NOTIFY (Asterisk when the
  agent's channel is hung up during a blind transfer, or 60 s on; its NOTIFYs may come after the BYE): the
  caller went where they were transferred.
- A NOTIFY that ends the subscription with a provisional status ("100 Trying", terminated) is the last word:
  the transfer failed, now, not after a timeout with the caller in silence.
- The Event id names the REFER a NOTIFY reports on: a late NOTIFY of an earlier REFER decides nothing of this
  one; and no second REFER leaves while the first is undecided (the caller could be transferred twice).
- The call ending mid-transfer wakes whoever waits for the outcome at once.
"""

from __future__ import annotations

import asyncio

import pytest
from test_sip_call_core import UAC_CONFIG, WireDriver, dial, in_dialog, responses
from test_sip_call_states import answer_of, sent, up

from sipagent.sip.call import REFER_UNDECIDED_S, CallAction, CallConfig, CallCore, Ended, SendRequest, TransferProgress
from sipagent.sip.outgoing import OutgoingCall
from sipagent.sip.transport import Peer


def notify(call: CallCore, seq: int, frag: str, state: str, event: str = "refer") -> list[CallAction]:
    return call.receive_request(in_dialog(call, "NOTIFY", seq, body=frag + "\r\n" if frag else "", extra=(
        f"Event: {event}\r\nSubscription-State: {state}\r\n"
        + ("Content-Type: message/sipfrag;version=2.0\r\n" if frag else ""))), 2.0)


def progress(actions: list[CallAction]) -> list[TransferProgress]:
    return [a for a in actions if isinstance(a, TransferProgress)]


def ends(actions: list[CallAction]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Ended)]


def accepted(call: CallCore) -> int:
    """Our REFER, answered 202; its CSeq number (the Event id of its NOTIFYs)."""
    refer = sent(call.transfer("<sip:3003@pbx>", 1.0), "REFER")
    assert call.receive_response(answer_of(refer, 202), 1.1) == [TransferProgress("refer", 202)]
    return refer.cseq.seq


def test_a_bye_right_after_the_202_is_asterisks_blind_transfer_done() -> None:
    call = up()
    accepted(call)
    bye = call.receive_request(in_dialog(call, "BYE", 8), 1.2)
    assert responses(bye) == [200]
    assert progress(bye) == [TransferProgress("ended", 200)] and ends(bye) == ["transferred"]
    assert call.end_reason == "transferred"
    # Its NOTIFYs may still come, in a dialog that is over for us.
    assert responses(notify(call, 9, "SIP/2.0 200 OK", "terminated;reason=noresource")) == [481]


def test_a_bye_after_the_transfer_was_reported_failed_is_a_hang_up() -> None:
    call = up()
    accepted(call)
    assert progress(notify(call, 8, "SIP/2.0 486 Busy Here", "active;expires=60")) == [
        TransferProgress("notify", 486)]
    bye = call.receive_request(in_dialog(call, "BYE", 9), 1.3)
    assert progress(bye) == [] and ends(bye) == ["remote-bye"]


def test_the_call_ending_before_the_202_fails_the_transfer_at_once() -> None:
    call = up()
    refer = sent(call.transfer("<sip:3003@pbx>", 1.0), "REFER")
    bye = call.receive_request(in_dialog(call, "BYE", 8), 1.1)
    assert progress(bye) == [TransferProgress("ended", 487)] and ends(bye) == ["remote-bye"]
    # The REFER's late answer changes nothing.
    assert ends(call.receive_response(answer_of(refer, 481), 1.2)) == []
    assert call.end_reason == "remote-bye"


def test_our_own_hang_up_mid_transfer_fails_it() -> None:
    call = up()
    accepted(call)
    actions = call.hangup(1.5)
    assert progress(actions) == [TransferProgress("ended", 487)] and ends(actions) == ["local-bye"]


def test_a_subscription_terminated_on_a_provisional_status_is_a_failed_transfer() -> None:
    call = up()
    accepted(call)
    over = notify(call, 8, "SIP/2.0 100 Trying", "terminated;reason=noresource")
    assert responses(over) == [200] and progress(over) == [TransferProgress("notify", 500)]
    assert call.state == "confirmed"


def test_a_late_notify_of_an_earlier_refer_does_not_decide_this_one() -> None:
    call = up()
    first = accepted(call)
    assert progress(notify(call, 8, "SIP/2.0 503 Service Unavailable", "active;expires=60",
                           f"refer;id={first}")) == [TransferProgress("notify", 503)]
    second = accepted(call)
    assert second != first
    # The first subscription's own end, late: not this REFER's outcome.
    late = notify(call, 9, "SIP/2.0 503 Service Unavailable", "terminated;reason=noresource", f"refer;id={first}")
    assert responses(late) == [481] and progress(late) == []
    done = notify(call, 10, "SIP/2.0 200 OK", "terminated;reason=noresource", f"refer;id={second}")
    assert progress(done) == [TransferProgress("notify", 200)] and call.end_reason == "transferred"


def test_no_second_refer_while_the_first_is_undecided() -> None:
    call = up()
    accepted(call)
    assert progress(notify(call, 8, "SIP/2.0 180 Ringing", "active;expires=60")) == [
        TransferProgress("notify", 180)]
    again = call.transfer("<sip:3004@pbx>", 40.0)
    assert again == [TransferProgress("refer", 491)]
    assert not [a for a in again if isinstance(a, SendRequest)]
    # Once it is decided, the next one may go.
    notify(call, 9, "SIP/2.0 480 Temporarily Unavailable", "terminated;reason=noresource")
    assert sent(call.transfer("<sip:3004@pbx>", 41.0), "REFER").headers.get("Refer-To") == "<sip:3004@pbx>"


def test_an_undecided_refer_blocks_the_next_one_for_a_while_not_for_good() -> None:
    """A far end that accepted a REFER and then says nothing (no NOTIFY, no BYE) may still be putting the caller
    through for a while; past REFER_UNDECIDED_S it is not, and a transfer (another target, on_failure) may go."""
    call = up()
    accepted(call)  # sent at 1.0
    assert call.transfer("<sip:3004@pbx>", 1.0 + REFER_UNDECIDED_S - 1) == [TransferProgress("refer", 491)]
    later = sent(call.transfer("<sip:3004@pbx>", 1.0 + REFER_UNDECIDED_S), "REFER")
    assert later.headers.get("Refer-To") == "<sip:3004@pbx>"


# -- the front: transfer() returns as soon as the outcome is known --------------------------------------------


ACCEPTING = CallConfig(codecs=("PCMU",), local_contact="<sip:pbx@192.0.2.2>", via_sent_by="192.0.2.2:5060",
                       accept_refer=True)


async def _front_transfer(pbx_hangs_up_after_202: bool) -> tuple[bool, str, float]:
    driver = WireDriver()
    link = dial(UAC_CONFIG, uas_config=ACCEPTING)  # the PBX takes REFER (202, then only "100 Trying")
    assert link.uas is not None
    link.run("uas", link.uas.answer("192.0.2.2", 50000, link.now))
    front = OutgoingCall(driver, link.uac, Peer("UDP", "192.0.2.2", 5060), "192.0.2.1")
    driver.links[id(link.uac)] = (link, "uac")
    link.fronts["uac"] = front
    if not pbx_hangs_up_after_202:
        link.hold.add("uas")  # the REFER's 202 never arrives: the caller hangs up meanwhile
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(front.transfer("sip:3003@pbx.example.com", timeout=5))
    await asyncio.sleep(0.05)
    link.run("uas", link.core("uas").hangup(link.now))  # Asterisk's BYE after its 202, or the caller's
    result = await asyncio.wait_for(task, 2)
    return result, front.end_reason, loop.time() - started


def test_the_front_reports_asterisks_bye_after_202_as_transferred() -> None:
    ok, reason, took = asyncio.run(_front_transfer(pbx_hangs_up_after_202=True))
    assert ok and reason == "transferred" and took < 1


def test_the_front_gives_up_at_once_when_the_caller_hangs_up_mid_transfer() -> None:
    ok, reason, took = asyncio.run(_front_transfer(pbx_hangs_up_after_202=False))
    assert not ok and reason == "remote-bye" and took < 1


@pytest.mark.parametrize("event_id", ["\u00b2", "\uff11", "99999999999", "-1", "", "1 2"])
def test_an_event_id_that_is_no_cseq_number_is_not_ours(event_id: str) -> None:
    """Answered 481, never an exception: "²" passes str.isdigit() and fails int()."""
    call = up()
    accepted(call)
    odd = notify(call, 8, "SIP/2.0 200 OK", "terminated;reason=noresource", f"refer;id={event_id}")
    assert responses(odd) == [481] and progress(odd) == [] and call.state == "confirmed"
