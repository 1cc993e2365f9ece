"""Call states a real Asterisk or FreeSWITCH drives, played by SIPp against `sipagent run` in its own process.

Each scenario (tests/integration/sipp/pbx_*.xml) sends what those PBXs send in the corners of a call: in-dialog
keep-alives, INFO bodies the agent cannot read, requests with a wrong tag or an old CSeq, re-INVITEs that remove
or bring back the audio, a T.38 offer, crossing re-INVITEs, a CANCEL crossing the 200 OK, and a BYE in the
early dialog. SIPp fails a run on any unexpected status; the tests read its message log for the details. All
scenarios run at once against one agent (about 10 s). The sans-I/O side of each case is in
tests/unit/test_sip_call_states.py.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_helpers import running_agent
from peers import require
from sipp import sipp_scenario
from test_session_timers import Played, sipp_log

pytestmark = pytest.mark.timeout(120)

SCENARIOS = ("pbx_in_dialog_asterisk.xml", "pbx_cancel_crossing_200.xml", "pbx_early_dialog_100rel.xml")
QUIET = {"agent": {"idle_timeout_s": 0}, "media": {"rtp_timeout_s": 0}}


@dataclass
class Results:
    runs: dict[str, Played]
    log: str
    metrics: dict[str, float]

    def run(self, name: str) -> Played:
        run = self.runs[name]
        assert run.result.returncode == 0, run.result.failed()
        return run


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Results:
    require("sipp")
    root = tmp_path_factory.mktemp("pbx_states")
    (root / "agent").mkdir()
    with running_agent(root / "agent", sip={"max_calls": 8}, sections=QUIET) as agent, \
            contextlib.ExitStack() as stack:
        runs = {name: stack.enter_context(sipp_scenario(name, agent.target, root / Path(name).stem,
                                                        keys={"user": "agent"}, timeout_s=40))
                for name in SCENARIOS}
        results = {}
        for name, run in runs.items():
            result = run.wait(50)
            results[name] = Played(result, sipp_log(result.messages))
        with contextlib.suppress(AssertionError):  # test_every_call_ended_cleanly tells
            agent.wait_metric("sipagent_calls_active", lambda value: value == 0, 10)
        return Results(results, agent.log.read_text(), agent.metrics())


def response_to(run: Played, cseq: str) -> str:
    """The agent's final response to the request of SIPp with this CSeq ("5 INVITE")."""
    found = [m for _, way, m in run.log if way == "received" and m.startswith("SIP/2.0 ")
             and re.search(rf"^CSeq: *{cseq}$", m, re.MULTILINE) and not m.startswith(("SIP/2.0 1",))]
    assert found, f"no final response to {cseq} in\n{run.result.messages[-4000:]}"
    return found[0]


def status(message: str) -> int:
    return int(message.split()[1])


def body(message: str) -> str:
    return message.partition("\n\n")[2]


def test_audio_and_video_get_video_rejected_in_place(played: Results) -> None:
    ok = response_to(played.run("pbx_in_dialog_asterisk.xml"), "1 INVITE")
    m_lines = re.findall(r"^m=(\w+) (\d+) ", body(ok), re.MULTILINE)
    assert [kind for kind, _ in m_lines] == ["audio", "video"] and m_lines[1][1] == "0" and m_lines[0][1] != "0"


def test_options_keepalives_in_the_dialog_are_answered_even_with_max_forwards_0(played: Results) -> None:
    run = played.run("pbx_in_dialog_asterisk.xml")
    for cseq in ("2 OPTIONS", "10 OPTIONS"):
        ok = response_to(run, cseq)
        assert status(ok) == 200 and "Allow: INVITE" in ok, ok


def test_an_info_the_agent_cannot_read_gets_415_with_accept(played: Results) -> None:
    refused = response_to(played.run("pbx_in_dialog_asterisk.xml"), "3 INFO")
    assert status(refused) == 415 and re.search(r"^Accept: application/dtmf-relay$", refused, re.MULTILINE)


def test_a_bye_with_another_to_tag_gets_481_and_cseqs_not_above_the_last_get_500(played: Results) -> None:
    run = played.run("pbx_in_dialog_asterisk.xml")
    assert status(response_to(run, "3 INVITE")) == 500  # the INFO had CSeq 3
    assert status(response_to(run, "4 BYE")) == 481
    assert status(response_to(run, "10 BYE")) == 500  # the OPTIONS had CSeq 10
    assert status(response_to(run, "30 BYE")) == 200  # the call lived through all of it


def test_a_reinvite_removing_the_audio_is_answered_with_port_0_and_the_next_brings_it_back(played: Results) -> None:
    run = played.run("pbx_in_dialog_asterisk.xml")
    removed = response_to(run, "5 INVITE")
    assert status(removed) == 200, removed
    assert re.findall(r"^m=(\w+) (\d+) ", body(removed), re.MULTILINE) == [("audio", "0"), ("video", "0")]
    back = response_to(run, "6 INVITE")
    assert status(back) == 200 and re.search(r"^m=audio [1-9]\d* RTP/AVP 8 101$", body(back), re.MULTILINE), back
    assert "a=sendrecv" in back and "rtcp-mux" not in back and "a=ptime:20" in back


def test_a_t38_reinvite_gets_488(played: Results) -> None:
    assert status(response_to(played.run("pbx_in_dialog_asterisk.xml"), "7 INVITE")) == 488


def test_a_reinvite_crossing_the_unacked_one_gets_500_with_retry_after(played: Results) -> None:
    run = played.run("pbx_in_dialog_asterisk.xml")
    assert status(response_to(run, "8 INVITE")) == 200
    pending = response_to(run, "9 INVITE")
    retry_after = re.search(r"^Retry-After: (\d+)$", pending, re.MULTILINE)
    assert status(pending) == 500 and retry_after and 0 <= int(retry_after.group(1)) <= 10, pending


def test_notify_and_refer_outside_the_dialog_get_481(played: Results) -> None:
    run = played.run("pbx_in_dialog_asterisk.xml")
    assert status(response_to(run, "20 NOTIFY")) == 481 and status(response_to(run, "21 REFER")) == 481


def test_a_cancel_crossing_the_200_changes_nothing(played: Results) -> None:
    run = played.run("pbx_cancel_crossing_200.xml")
    assert status(response_to(run, "10 INVITE")) == 200 and status(response_to(run, "10 CANCEL")) == 481
    assert status(response_to(run, "11 BYE")) == 200
    assert run.count("received", "BYE ") == 0


def test_the_early_dialog_gets_500_retry_after_and_a_bye_there_ends_the_invite_with_487(played: Results) -> None:
    run = played.run("pbx_early_dialog_100rel.xml")
    for cseq in ("2 INVITE", "3 UPDATE"):
        pending = response_to(run, cseq)
        assert status(pending) == 500 and re.search(r"^Retry-After: \d+$", pending, re.MULTILINE), pending
    assert status(response_to(run, "4 BYE")) == 200
    assert status(response_to(run, "1 INVITE")) == 487


def test_every_call_ended_cleanly(played: Results) -> None:
    assert "Traceback" not in played.log and " ERROR " not in played.log, played.log[-3000:]
    assert played.metrics["sipagent_calls_active"] == 0
