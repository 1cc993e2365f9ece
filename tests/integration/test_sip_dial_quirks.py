"""Placing calls against what real PBXs answer (SIPp plays Asterisk, FreeSWITCH, a forking proxy or a broken
gateway on 127.0.0.1): early media from one branch and the answer from another, a redirect (not followed), a
reliable 183 we never allowed, Asterisk requiring 100rel (421, then PRACKs), a 200 without SDP, a 503 with
Retry-After, and a far end that never answers the INVITE our CANCEL ended. The user agent dials directly (no
registrar): the scenario is the far end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from peers import free_port
from sipp import SippResult, sipp_scenario

from sipagent.sdp import NegotiatedMedia
from sipagent.sip.transaction import T1
from sipagent.sip.ua import DialError, IncomingCall, UaSettings, UserAgent

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]


def settings() -> UaSettings:
    return UaSettings(
        registrar=None, transport="udp", username="agent", password="", domain="127.0.0.1",
        listen_host="127.0.0.1", listen_port=0, public_host=None, expires=60, max_calls=4, trusted_hosts=[],
        codecs=["PCMU"],
    )


async def _ignore(call: IncomingCall) -> None:
    return None


def against(scenario: str, tmp_path: Path, test: Callable[[UserAgent, str, int], Awaitable[None]]) -> SippResult:
    """Run ``test(ua, target, sipp_media_port)`` against the SIPp ``scenario``; SIPp's result."""
    async def run(target: str, media_port: int) -> None:
        ua = UserAgent(settings(), _ignore)
        await ua.start()
        try:
            await asyncio.sleep(0.5)  # SIPp listening
            await test(ua, target, media_port)
        finally:
            await ua.stop()

    with sipp_scenario(scenario, ("127.0.0.1", 9), tmp_path / "pbx", timeout_s=30) as pbx:
        asyncio.run(asyncio.wait_for(run(f"sip:2002@127.0.0.1:{pbx.port}", pbx.media_port), 40))
        return pbx.wait(15)


def invites(result: SippResult) -> int:
    return result.messages.count("\nINVITE sip:")


def test_early_media_from_one_branch_and_the_answer_from_another(tmp_path: Path) -> None:
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        progress: list[tuple[int, NegotiatedMedia | None]] = []
        call = await ua.dial(target, rtp_port=free_port(), ring_timeout=10,
                             on_progress=lambda status, media: progress.append((status, media)))
        assert [status for status, _ in progress] == [180, 180, 183]
        early = progress[-1][1]
        assert early is not None and early.remote_port == 6000
        assert call.core.dialog is not None and call.core.dialog.remote_tag == "b1"
        assert call.media is not None and call.media.remote_port == media_port  # b's answer, not a's
        await call.hangup()
        assert call.end_reason == "local-bye"

    result = against("uas_quirk_forked_early_media.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()


def test_a_redirect_is_acked_and_not_followed(tmp_path: Path) -> None:
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        with pytest.raises(DialError) as refused:
            await ua.dial(target, rtp_port=free_port(), ring_timeout=10)
        assert (refused.value.outcome, refused.value.status) == ("rejected", 302)
        assert "redirected to <sip:+4930123456@192.0.2.99:5060>" in refused.value.reason
        await asyncio.sleep(1.0)  # time for a second INVITE, were one to go

    result = against("uas_quirk_redirect.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()
    assert invites(result) == 1, result.messages[-3000:]


def test_a_reliable_183_we_did_not_allow_cancels_the_call(tmp_path: Path) -> None:
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        with pytest.raises(DialError) as failed:
            await ua.dial(target, rtp_port=free_port(), ring_timeout=10)
        assert (failed.value.outcome, failed.value.status) == ("failed", 0)
        assert "requires 100rel" in failed.value.reason

    result = against("uas_quirk_100rel.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()
    assert "\nPRACK " not in result.messages


def test_asterisk_requiring_100rel_is_called_again_with_it_and_every_reliable_18x_pracked(tmp_path: Path) -> None:
    """100rel=required on the agent's endpoint: 421, then the INVITE offering 100rel, a PRACK for each reliable
    18x (SIPp checks the RAck), the 183's SDP as the answer (the 200 carries none), and a BYE after the PRACKs."""
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        progress: list[int] = []
        call = await ua.dial(target, rtp_port=free_port(), ring_timeout=10,
                             on_progress=lambda status, media: progress.append(status))
        assert progress == [180, 183]
        assert call.media is not None and call.media.remote_port == media_port
        await call.hangup()
        assert call.end_reason == "local-bye"

    result = against("uas_asterisk_100rel_required.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()
    assert invites(result) == 2 and result.messages.count("\nPRACK sip:") == 2, result.messages[-3000:]


def test_a_200_without_sdp_is_acked_then_byed(tmp_path: Path) -> None:
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        with pytest.raises(DialError) as failed:
            await ua.dial(target, rtp_port=free_port(), ring_timeout=10)
        assert (failed.value.outcome, failed.value.status) == ("failed", 200)
        assert "without an SDP answer" in failed.value.reason
        await asyncio.sleep(0.5)  # the BYE's 200

    result = against("uas_quirk_200_without_sdp.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()


def test_a_503_with_retry_after_fails_the_call_once(tmp_path: Path) -> None:
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        with pytest.raises(DialError) as failed:
            await ua.dial(target, rtp_port=free_port(), ring_timeout=10)
        assert (failed.value.outcome, failed.value.status) == ("failed", 503)
        assert "Retry-After 30 s" in failed.value.reason
        await asyncio.sleep(1.0)

    result = against("uas_quirk_503_retry_after.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()
    assert invites(result) == 1, result.messages[-3000:]


def test_an_invite_without_a_487_after_our_cancel_leaves_no_transaction_behind(tmp_path: Path) -> None:
    """The far end rings, takes our CANCEL (200) and never sends the INVITE's final response. The call gives
    the INVITE up 64*T1 after the CANCEL (its clock is advanced here); once the call is forgotten, its INVITE
    transaction (in "proceeding": no timer of its own) and the task awaiting it are gone too. Before, both
    stayed for the life of the process, one per such call."""
    async def test(ua: UserAgent, target: str, media_port: int) -> None:
        dialing = asyncio.create_task(ua.dial(target, rtp_port=free_port(), ring_timeout=1))
        for _ in range(100):  # the ring timeout, then our CANCEL
            await asyncio.sleep(0.05)
            calls = list(ua._calls.values())
            if calls and calls[0].core.state == "cancelling":
                break
        await asyncio.sleep(0.5)  # the CANCEL's 200; no 487 follows
        [call] = list(ua._calls.values())
        assert call.core.state == "cancelling"
        ua.drive(call, call.core.timeout(ua.now() + 64 * T1))  # no 487 in time
        with pytest.raises(DialError) as unanswered:
            await dialing
        assert unanswered.value.outcome == "no-answer"
        assert [key for key in ua._client if key[1] == "INVITE"], "the INVITE transaction is still waiting"
        ua._forget_call(call)
        await asyncio.sleep(0)
        assert not [key for key in ua._client if key[1] == "INVITE"]
        assert not [t for t in ua._tasks if not t.done()]

    result = against("uas_quirk_no_487.xml", tmp_path, test)
    assert result.returncode == 0, result.failed()
