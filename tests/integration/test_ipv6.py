"""The agent over IPv6 and dual-stack, as a call center runs it: `sipagent run` listening on "[::1]" or "[::]",
called by SIPp over IPv6 and IPv4 (its media of either family), registering on Kamailio over IPv6 and IPv4,
refusing hostile IPv6 literals. Everything on loopback (::1 and 127.0.0.1); skipped where ::1 cannot be bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import RunningAgent, running_agent
from peers import _stop_with_children, find_binary, free_port, kamailio_module_path, require, running_kamailio
from sipp import SippResult, SippRun, sipp_scenario

from sipagent.media.clock import MediaClock
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import RtpPacket
from sipagent.rtp.ports import PortAllocator


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="IPv6 loopback (::1) is not available here")


# -- SIPp over either family ---------------------------------------------------------------------------

@contextlib.contextmanager
def sipp(scenario: str, agent_port: int, workdir: Path, *, local_ip: str, media_ip: str, target: str | None = None,
         transport: str = "u1", keys: dict[str, str] | None = None, pause_ms: int = 1500,
         timeout_s: float = 30.0) -> Iterator[SippRun]:
    """SIPp on ``local_ip`` (its SIP) and ``media_ip`` (its RTP, which it echoes back to whoever sends it some:
    media flows both ways), calling the agent at ``target`` (default: ``local_ip``)."""
    if shutil.which("sipp") is None:
        pytest.skip("needs sipp (Debian package sip-tester; scripts/setup --test)")
    host = target or (f"[{local_ip}]" if ":" in local_ip else local_ip)
    with sipp_scenario(scenario, (host, agent_port), workdir, keys={"user": "agent", **(keys or {})},
                       pause_ms=pause_ms, timeout_s=timeout_s, local_ip=local_ip, media_ip=media_ip,
                       transport=transport, rtp_echo=True) as run:
        yield run


def _message(result: SippResult, first_line: str) -> str:
    """The first message in SIPp's log that starts with ``first_line`` (a status or a method)."""
    for block in result.messages.split("-----------------------------------------------"):
        body = block.split("\n\n", 1)[-1].lstrip()
        if body.startswith(first_line):
            return body
    raise AssertionError(f"no {first_line!r} in SIPp's log:\n{result.messages[-4000:]}")


def _rtp_counts(agent: RunningAgent) -> tuple[int, int]:
    """(packets in, packets out) of the call that ended, from the agent's log line."""
    deadline = time.monotonic() + 10
    while (match := re.search(r"RTP in (\d+) packets .*?, out (\d+)", agent.log.read_text())) is None:
        assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
        time.sleep(0.1)
    return int(match.group(1)), int(match.group(2))


def _no_traceback(agent: RunningAgent) -> None:
    log = agent.log.read_text()
    assert "Traceback" not in log and "Task exception" not in log, log[-4000:]


# -- calls over IPv6 -----------------------------------------------------------------------------------

def test_ipv6_call_with_rport_and_record_route(tmp_path: Path) -> None:
    """A call over ::1 from a PBX whose Via names another address (rport asked): IPv6 everywhere in the
    answer, received/rport of the real source, the Record-Route echoed, RTP over IPv6 both ways, BYE."""
    require("sipp")
    with running_agent(tmp_path, listen_host="[::1]") as agent, \
            sipp("v6_uac_call.xml", agent.sip_port, tmp_path / "sipp", local_ip="::1", media_ip="::1",
                 keys={"via_host": "[2001:db8::7]"}) as run:
        result = run.wait()
        assert result.returncode == 0, result.failed()
        ok = _message(result, "SIP/2.0 200 OK")
        assert f"Via: SIP/2.0/UDP [2001:db8::7]:{run.port};branch=" in ok
        assert f";rport={run.port};received=::1" in ok or f";received=::1;rport={run.port}" in ok, ok
        assert f"Contact: <sip:agent@[::1]:{agent.sip_port}>" in ok
        assert f"Record-Route: <sip:[::1]:{run.port};lr>" in ok
        assert re.search(r"^o=\S+ \d+ \d+ IN IP6 ::1$", ok, re.MULTILINE), ok
        assert "c=IN IP6 ::1" in ok
        assert f"To: <sip:agent@[::1]:{agent.sip_port}>;tag=" in ok
        received, sent = _rtp_counts(agent)
        assert received > 20 and sent > 20  # SIPp echoes what it gets: our packets came back over ::1
        assert _message(result, "SIP/2.0 200 OK\nVia: SIP/2.0/UDP [::1]")  # the BYE's answer
    _no_traceback(agent)


def test_agent_bye_goes_to_the_ipv6_record_route(tmp_path: Path) -> None:
    """The agent ends the call (at shutdown): its BYE goes to the IPv6 route the proxy recorded, with the
    caller's IPv6 Contact as its Request-URI and our own bracketed sent-by."""
    require("sipp")
    with running_agent(tmp_path, listen_host="[::1]") as agent, \
            sipp("v6_uac_agent_bye.xml", agent.sip_port, tmp_path / "sipp", local_ip="::1", media_ip="::1") as run:
        deadline = time.monotonic() + 15
        while "answered sip:pbx@[::1]" not in agent.log.read_text():
            assert time.monotonic() < deadline and run.process.poll() is None, agent.log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)  # the ACK is in
        agent.process.terminate()  # a BYE for every call, then stop
        result = run.wait()
        assert result.returncode == 0, result.failed()
    bye = _message(result, "BYE ")
    assert bye.startswith(f"BYE sip:pbx@[::1]:{run.port} SIP/2.0"), bye
    assert f"Route: <sip:[::1]:{run.port};lr>" in bye
    assert f"Via: SIP/2.0/UDP [::1]:{agent.sip_port};branch=z9hG4bK" in bye
    _no_traceback(agent)


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_dual_stack_agent_answers_an_ipv4_caller_as_ipv4(tmp_path: Path, transport: str) -> None:
    """Listening on "[::]", an IPv4 call. Before: over UDP the Via said received=::ffff:127.0.0.1 (an IPv4
    phone told it sits behind an IPv6 NAT), and over TCP the connection was refused (asyncio makes an IPv6
    listener IPv6-only)."""
    require("sipp")
    sip = {"transport": "tcp"} if transport == "t1" else {}
    with running_agent(tmp_path, listen_host="[::]", sip=sip) as agent, \
            sipp("v6_uac_call.xml", agent.sip_port, tmp_path / "sipp", local_ip="127.0.0.1", media_ip="127.0.0.1",
                 transport=transport, keys={"via_host": "192.0.2.7"}) as run:
        result = run.wait()
        assert result.returncode == 0, f"{result.failed()}\n{agent.log.read_text()[-2000:]}"
        ok = _message(result, "SIP/2.0 200 OK")
        assert "::ffff:" not in result.messages
        assert "received=127.0.0.1" in ok, ok
        if transport == "u1":
            assert f"rport={run.port}" in ok
        assert f"Contact: <sip:agent@127.0.0.1:{agent.sip_port}" in ok
        assert "c=IN IP4 127.0.0.1" in ok
        received, sent = _rtp_counts(agent)
        assert received > 20 and sent > 20
    _no_traceback(agent)


@pytest.mark.parametrize("local_ip, media_ip", [("::1", "127.0.0.1"), ("127.0.0.1", "::1")])
def test_dual_stack_agent_sends_rtp_to_the_family_of_the_offer(tmp_path: Path, local_ip: str, media_ip: str) -> None:
    """Signalling over one family, media offered in the other (an SBC with an IPv6 signalling side and an IPv4
    media relay): RTP goes to the offer's address, both ways, and our answer names our address of the offer's
    family. Before: the answer's c= was of the signalling's family, which an IPv4-only relay cannot send to."""
    require("sipp")
    via = f"[{local_ip}]" if ":" in local_ip else local_ip
    with running_agent(tmp_path, listen_host="[::]") as agent, \
            sipp("v6_uac_call.xml", agent.sip_port, tmp_path / "sipp", local_ip=local_ip, media_ip=media_ip,
                 keys={"via_host": via}) as run:
        result = run.wait()
        assert result.returncode == 0, result.failed()
        assert f"remote RTP {media_ip}:{run.media_port}" in agent.log.read_text()
        ok = _message(result, "SIP/2.0 200 OK")
        # Contact in the signalling's family; the answer's media address in the offer's (before: the
        # signalling's, which an IPv4-only media relay behind an IPv6 SBC cannot send to).
        assert f"Contact: <sip:agent@{via}:{agent.sip_port}>" in ok
        assert f"c=IN IP{6 if ':' in media_ip else 4} {media_ip}" in ok, ok
        received, sent = _rtp_counts(agent)
        assert received > 20 and sent > 20
    _no_traceback(agent)


@pytest.mark.parametrize("listen, phone", [("[::1]", "::1"), ("[::]", "::1"), ("[::]", "127.0.0.1")])
def test_places_a_call_to_a_phone_of_either_family(tmp_path: Path, listen: str, phone: str) -> None:
    """A call placed through the control API (on [::1]) to an IPv6 or IPv4 phone, hung up the same way. Before,
    from "[::]" to an IPv4 phone: the INVITE could not be sent under uvloop ("socket family mismatch")."""
    require("sipp")
    control_port, token = free_port(), "t" * 24
    ref = f"[{phone}]" if ":" in phone else phone
    with running_agent(tmp_path, listen_host=listen,
                       sections={"control": {"listen": f"[::1]:{control_port}", "token": token}}) as agent, \
            sipp("uas_human.xml", agent.sip_port, tmp_path / "sipp", local_ip=phone, media_ip=phone) as run:
        time.sleep(0.3)  # SIPp listening

        def call_api(method: str, path: str, body: dict[str, str] | None = None) -> dict[str, object]:
            request = urllib.request.Request(
                f"http://[::1]:{control_port}{path}", method=method, data=json.dumps(body).encode() if body else None,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                reply: dict[str, object] = json.loads(response.read() or b"{}")
                return reply

        call_id = call_api("POST", "/v1/calls", {"to": f"sip:human@{ref}:{run.port}"})["id"]
        deadline = time.monotonic() + 10
        while "answered by sip:human@" not in agent.log.read_text():
            assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)
        call_api("DELETE", f"/v1/calls/{call_id}")
        result = run.wait()
        assert result.returncode == 0, f"{result.failed()}\n{agent.log.read_text()[-2000:]}"
    invite = _message(result, "INVITE ")
    family = "IP6" if ":" in phone else "IP4"
    assert f"Contact: <sip:agent@{ref}:{agent.sip_port}>" in invite
    assert f"c=IN {family} {phone}" in invite
    assert _message(result, "BYE ").startswith(f"BYE sip:human@{ref}:{run.port} SIP/2.0")
    _no_traceback(agent)


@pytest.mark.parametrize("record_route", ["<sip:[::1;lr>", "<sip:[1::2::3];lr>", "<sip:[fe80::1%eth0];lr>"])
def test_answer_with_a_malformed_ipv6_record_route(tmp_path: Path, record_route: str) -> None:
    """A phone's 200 OK carries a Record-Route that does not parse. Before: the task handling the answer died
    with the SipParseError ("Task exception was never retrieved") and the call was left half-made; now it
    ends as failed, with the reason."""
    require("sipp")
    control_port, token = free_port(), "t" * 24
    with running_agent(tmp_path, listen_host="[::1]",
                       sections={"control": {"listen": f"[::1]:{control_port}", "token": token}}) as agent, \
            sipp("v6_uas_bad_record_route.xml", agent.sip_port, tmp_path / "sipp", local_ip="::1", media_ip="::1",
                 keys={"record_route": record_route}) as run:
        time.sleep(0.3)  # SIPp listening
        request = urllib.request.Request(
            f"http://[::1]:{control_port}/v1/calls", method="POST",
            data=json.dumps({"to": f"sip:human@[::1]:{run.port}"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5):
            pass
        result = run.wait()  # fails by design (the ACK never comes): SIPp counts the timeout as a failure
        assert "SIP/2.0 200 OK" in result.messages and "\nACK " not in result.messages, result.failed()
        deadline = time.monotonic() + 5
        while "ended: failed" not in agent.log.read_text():
            assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
            time.sleep(0.1)
    assert "unusable answer to our INVITE: bad IPv6 reference" in agent.log.read_text()
    _no_traceback(agent)


# -- media the RTP socket cannot reach -------------------------------------------------------------------

def _udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.5)
    return sock


def _invite(sock: socket.socket, agent_port: int, *, via: str | None = None, contact: str | None = None,
            connection: str | None = None, uri_host: str | None = None, extra: str = "") -> tuple[bytes, str]:
    host, port = sock.getsockname()[:2]
    ref = f"[{host}]" if ":" in host else host
    agent = uri_host or ref
    connection = connection or ("IN IP6 ::1" if ":" in host else f"IN IP4 {host}")
    body = (f"v=0\r\no=pbx 1 1 IN IP6 ::1\r\ns=-\r\nc={connection}\r\nt=0 0\r\n"
            "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    call_id = uuid.uuid4().hex
    data = (f"INVITE sip:agent@{agent}:{agent_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via or f'{ref}:{port}'};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            f"From: <sip:pbx@{ref}>;tag=f{call_id[:6]}\r\nTo: <sip:agent@{ref}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: {contact or f'<sip:pbx@{ref}:{port}>'}\r\n{extra}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    return data.encode(), call_id


def _final(sock: socket.socket, call_id: str, seconds: float = 3.0) -> str | None:
    """The first final response for ``call_id`` (None when none came)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535).decode(errors="replace")
        except TimeoutError:
            continue
        if f"Call-ID: {call_id}" in data and not data.startswith("SIP/2.0 1"):
            return data
    return None


def _end(sock: socket.socket, agent: tuple[str, int], response: str, call_id: str) -> None:
    """ACK a final response (and BYE a 200), so no call outlives its case."""
    to = re.search(r"^To: (.*)$", response, re.MULTILINE)
    frm = re.search(r"^From: (.*)$", response, re.MULTILINE)
    assert to is not None and frm is not None
    host, port = sock.getsockname()[:2]
    ref = f"[{host}]" if ":" in host else host
    agent_ref = f"[{agent[0]}]" if ":" in agent[0] else agent[0]
    methods = [("ACK", 1), ("BYE", 2)] if response.startswith("SIP/2.0 200") else [("ACK", 1)]
    for method, cseq in methods:
        sock.sendto((f"{method} sip:agent@{agent_ref}:{agent[1]} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP {ref}:{port};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
                     f"From: {frm.group(1).strip()}\r\nTo: {to.group(1).strip()}\r\nCall-ID: {call_id}\r\n"
                     f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), agent)


@pytest.mark.parametrize("listen, caller, connection", [
    ("[::1]", "::1", "IN IP4 127.0.0.1"),  # an IPv6-only agent offered IPv4 media
    ("[::1]", "::1", "IN IP6 ::ffff:127.0.0.1"),
    ("127.0.0.1", "127.0.0.1", "IN IP6 ::1"),  # an IPv4-only agent offered IPv6 media
])
def test_offer_of_a_family_rtp_cannot_reach_is_refused_with_488(tmp_path: Path, listen: str, caller: str,
                                                                connection: str) -> None:
    """Before: answered 200 OK, and the call had no audio either way (every packet failed on a socket of the
    other family). Now 488 with Warning 301 (RFC 3261: incompatible network address formats)."""
    with running_agent(tmp_path, listen_host=listen) as agent:
        target = (listen.strip("[]"), agent.sip_port)
        with _udp(caller) as sock:
            data, call_id = _invite(sock, agent.sip_port, connection=connection)
            sock.sendto(data, target)
            final = _final(sock, call_id)
            assert final is not None, agent.log.read_text()[-2000:]
            _end(sock, target, final, call_id)
        assert final.startswith("SIP/2.0 488"), final
        assert 'Warning: 301 sipagent "Incompatible network address formats"' in final
        log = agent.log.read_text()
    assert "of another IP family than sip.listen" in log
    _no_traceback(agent)


# -- hostile IPv6 literals --------------------------------------------------------------------------------

HOSTILE: list[tuple[str, dict[str, str], int | None]] = [
    # Before: 100 Trying, then nothing (the dialog could not be made after the 100; the INVITE hung 32 s).
    ("unterminated Contact", {"contact": "<sip:pbx@[::1>"}, 400),
    ("Contact with a zone id", {"contact": "<sip:pbx@[fe80::1%eth0]:5060>"}, 400),
    # Before: answered 200 OK; the agent's BYE to it could never be sent.
    ("Contact with two '::'", {"contact": "<sip:pbx@[1::2::3]:5060>"}, 400),
    ("over-long Contact", {"contact": "<sip:pbx@[" + "a:" * 2000 + "a]>"}, 400),
    ("malformed Record-Route", {"extra": "Record-Route: <sip:[1::2::3];lr>\r\n"}, 400),
    ("unterminated Record-Route", {"extra": "Record-Route: <sip:[::1;lr>\r\n"}, 400),
    ("Request-URI with a zone id", {"uri_host": "[fe80::1%eth0]"}, 400),
    # Before: answered 200 OK, RTP sent out of the interface the caller named (or failing every packet).
    ("c= with a zone id", {"connection": "IN IP6 fe80::1%eth0"}, 488),
    ("c= with a long zone id", {"connection": "IN IP6 fe80::1%" + "e" * 500}, 488),
    ("c= bracketed", {"connection": "IN IP6 [::1]"}, 488),
    ("c= unterminated", {"connection": "IN IP6 [::1"}, 488),
    ("c= over-long", {"connection": "IN IP6 " + "1:" * 3000 + "1"}, 488),
    # A Via that does not parse cannot be answered (the client could not match the response): dropped, as
    # every other unparsable Via; before, "[1::2::3]" and "[...]" were taken and the call answered.
    ("unterminated Via", {"via": "[::1:5060"}, None),
    ("Via with a zone id", {"via": "[fe80::1%eth0]:5060"}, None),
    ("Via with two '::'", {"via": "[1::2::3]:5060"}, None),
    ("Via of dots", {"via": "[...]:5060"}, None),
]


def test_hostile_ipv6_literals_get_400_or_488_never_a_traceback(tmp_path: Path) -> None:
    with running_agent(tmp_path, listen_host="[::1]") as agent:
        target = ("::1", agent.sip_port)
        outcomes: dict[str, str | None] = {}
        for name, fields, _ in HOSTILE:
            with _udp("::1") as sock:
                data, call_id = _invite(sock, agent.sip_port, **fields)
                sock.sendto(data, target)
                final = _final(sock, call_id, 2.0)
                if final is not None:
                    _end(sock, target, final, call_id)
                outcomes[name] = final.split("\r\n", 1)[0] if final else None
        expected = {name: status for name, _, status in HOSTILE}
        got = {name: int(line.split()[1]) if line else None for name, line in outcomes.items()}
        assert got == expected, outcomes
        # Still serving: a plain IPv6 call is answered.
        with _udp("::1") as sock:
            data, call_id = _invite(sock, agent.sip_port)
            sock.sendto(data, target)
            final = _final(sock, call_id)
            assert final is not None and final.startswith("SIP/2.0 200"), final
            _end(sock, target, final, call_id)
        time.sleep(0.5)
    _no_traceback(agent)


# -- public address, trusted hosts, HTTP listeners -------------------------------------------------------

def test_ipv6_public_address_is_advertised_in_contact_and_sdp(tmp_path: Path) -> None:
    with running_agent(tmp_path, listen_host="[::1]", sip={"public_address": "2001:db8::10"}) as agent:
        target = ("::1", agent.sip_port)
        with _udp("::1") as sock:
            data, call_id = _invite(sock, agent.sip_port)
            sock.sendto(data, target)
            final = _final(sock, call_id)
            assert final is not None and final.startswith("SIP/2.0 200"), final
            _end(sock, target, final, call_id)
    assert f"Contact: <sip:agent@[2001:db8::10]:{agent.sip_port}>" in final
    assert "c=IN IP6 2001:db8::10" in final
    assert re.search(r"^o=\S+ \d+ \d+ IN IP6 2001:db8::10\r?$", final, re.MULTILINE), final


@pytest.mark.parametrize("trusted, status", [
    (["::1"], 200), (["[::1]"], 200), (["::1/128"], 200), (["::/0"], 200),
    (["[2001:db8::5]", "fd00::/8"], 403), (["127.0.0.1"], 403),
])
def test_trusted_hosts_with_ipv6_addresses_and_networks(tmp_path: Path, trusted: list[str], status: int) -> None:
    with running_agent(tmp_path, listen_host="[::1]", sip={"trusted_hosts": trusted}) as agent:
        target = ("::1", agent.sip_port)
        with _udp("::1") as sock:
            data, call_id = _invite(sock, agent.sip_port)
            sock.sendto(data, target)
            final = _final(sock, call_id)
            assert final is not None, agent.log.read_text()[-2000:]
            _end(sock, target, final, call_id)
    assert final.startswith(f"SIP/2.0 {status} "), final


def test_metrics_and_control_api_listen_on_ipv6_loopback(tmp_path: Path) -> None:
    metrics_port, control_port, token = free_port(), free_port(), "t" * 24
    sections = {"metrics": {"listen": f"[::1]:{metrics_port}"},
                "control": {"listen": f"[::1]:{control_port}", "token": token}}
    with running_agent(tmp_path, listen_host="[::1]", sections=sections):
        with urllib.request.urlopen(f"http://[::1]:{metrics_port}/healthz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://[::1]:{metrics_port}/metrics", timeout=5) as response:
            assert b"sipagent_" in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://[::1]:{control_port}/v1/calls", timeout=5)
        assert refused.value.code == 401  # listening, and asking for the token


# -- registration ------------------------------------------------------------------------------------------

# A registrar on [::1] only (the shared tests/integration/peers/kamailio.cfg listens on 127.0.0.1): digest
# auth with password "secret" + user, and OPTIONS to a user relayed to its contact, to prove it reachable.
KAMAILIO_V6 = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:[::1]:@PORT@
listen=tcp:[::1]:@PORT@
auto_aliases=no
alias="[::1]:@PORT@"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "sanity.so"
loadmodule "auth.so"
loadmodule "kex.so"
loadmodule "corex.so"
modparam("auth", "nonce_count", 1)
modparam("auth", "qop", "auth")
modparam("registrar", "min_expires", 1)
request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (!sanity_check()) { exit; }
    if (is_method("OPTIONS") && uri == myself && $rU == $null) { sl_send_reply("200", "Keepalive"); exit; }
    if (is_method("REGISTER")) {
        if (!pv_www_authenticate("v6.test", "secret$fU", "0")) { www_challenge("v6.test", "0"); exit; }
        if (!save("location", "0x04")) { sl_reply_error(); }
        exit;
    }
    if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }
    t_relay();
}
"""


def _options_v6(port: int, uri: str, seconds: float = 1.0) -> str | None:
    """One OPTIONS over UDP from ::1 to [::1]:``port``; the final response within ``seconds``, or None."""
    with _udp("::1") as sock:
        local = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        sock.sendto((f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:{local};branch=z9hG4bK{call_id[:12]};rport\r\n"
                     f"From: <sip:probe@[::1]>;tag=p{call_id[:6]}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\n"
                     "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("::1", port))
        return _final(sock, call_id, seconds)


@contextlib.contextmanager
def kamailio_v6(workdir: Path) -> Iterator[int]:
    """Kamailio listening on [::1] (UDP and TCP); yields its port; stopped by PID."""
    require("kamailio")
    binary = find_binary("kamailio")
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(KAMAILIO_V6.replace("@PORT@", str(port)))
    with (workdir / "kamailio.log").open("wb") as log:
        proc = subprocess.Popen([binary, "-f", str(cfg), "-DD", "-E", "-L", kamailio_module_path(), "-w", str(workdir)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while (answer := _options_v6(port, f"sip:[::1]:{port}")) is None or "200 Keepalive" not in answer:
            log_text = (workdir / "kamailio.log").read_text(errors="replace")[-3000:]
            assert proc.poll() is None and time.monotonic() < deadline, f"kamailio on [::1] did not start:\n{log_text}"
        yield port
    finally:
        _stop_with_children(proc)  # its workers outlive a SIGTERM to the main process alone


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_registers_with_kamailio_on_ipv6(tmp_path: Path, transport: str) -> None:
    """Registered on [::1]: Kamailio relays an OPTIONS for the extension to the agent's IPv6 Contact."""
    with kamailio_v6(tmp_path / "kamailio") as port:
        sip = {"registrar": f"[::1]:{port}", "username": "2001", "password": "secret2001", "transport": transport}
        with running_agent(tmp_path, listen_host="[::1]", sip=sip) as agent:
            deadline = time.monotonic() + 10
            while "registered for" not in agent.log.read_text():
                assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
                time.sleep(0.1)
            # Once, relayed by Kamailio to the agent and back (two processes): a second is short on a loaded machine.
            answer = _options_v6(port, f"sip:2001@[::1]:{port}", 5.0)
            assert answer is not None and answer.startswith("SIP/2.0 200 OK"), answer
            assert "Server: sipagent" in answer
            assert f"Contact: <sip:2001@[::1]:{agent.sip_port}" in answer
    _no_traceback(agent)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dual_stack_agent_registers_with_an_ipv4_registrar(tmp_path: Path, transport: str) -> None:
    """Listening on "[::]" (the documented IPv6 form), registering on an IPv4 PBX. Before, over UDP: every
    REGISTER failed under uvloop ("socket family mismatch"), backing off for ever."""
    require("kamailio")
    with running_kamailio(tmp_path / "kamailio") as kamailio:
        sip = {"registrar": kamailio.address, "username": "2001", "password": "secret2001", "transport": transport}
        with running_agent(tmp_path, listen_host="[::]", sip=sip) as agent:

            async def registered() -> bool:
                deadline = time.monotonic() + 10
                while not kamailio.is_registered("2001"):
                    if time.monotonic() > deadline:
                        return False
                    await asyncio.sleep(0.2)
                return True

            assert asyncio.run(registered()), agent.log.read_text()[-3000:]
        log = agent.log.read_text()
    assert "family mismatch" not in log
    assert f"listening on [::]:{agent.sip_port}" in log
    _no_traceback(agent)


# -- the RTP socket's family ---------------------------------------------------------------------------

def test_ipv4_socket_takes_media_from_an_ipv4_mapped_offer() -> None:
    """c=IN IP6 ::ffff:127.0.0.1 to an agent on IPv4: the packets come from 127.0.0.1. Before, the endpoint
    waited for ::ffff:127.0.0.1, which an IPv4 socket never reports: without symmetric RTP nothing was heard."""

    async def body() -> None:
        clock = MediaClock()
        clock.start()
        lo = 24000 + (time.monotonic_ns() // 1000 % 2000) * 2
        ep = RtpEndpoint(clock, PortAllocator(lo, lo + 99), bind_host="127.0.0.1", silence=b"\xff" * 160,
                         eager=True, symmetric=False)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        frames: list[bytes] = []
        ep.on_frame = frames.append
        try:
            ep.set_remote("::ffff:127.0.0.1", peer.getsockname()[1], 0)
            assert ep.remote_address == ("127.0.0.1", peer.getsockname()[1])
            packet = RtpPacket(payload_type=0, sequence=1, ssrc=7, timestamp=160, payload=b"\x02" * 160)
            peer.sendto(packet.serialize(), ("127.0.0.1", ep.local_port))
            for _ in range(100):
                if frames:
                    break
                await asyncio.sleep(0.01)
            assert frames == [b"\x02" * 160]
        finally:
            ep.close()
            peer.close()
            clock.stop()

    asyncio.run(body())


def test_media_moved_to_an_unreachable_family_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A re-INVITE (or the answer to a call we placed) moving the media to the other family than the RTP
    socket's: nothing can be sent there. Before, every packet failed in silence (send_errors only)."""

    async def body() -> None:
        clock = MediaClock()
        lo = 28000 + (time.monotonic_ns() // 1000 % 1000) * 2
        ep = RtpEndpoint(clock, PortAllocator(lo, lo + 99), bind_host="127.0.0.1", silence=b"\xff" * 160)
        try:
            ep.set_remote("127.0.0.1", 40000, 0)
            ep.set_remote("2001:db8::5", 40000, 0)
            ep.set_remote("2001:db8::5", 40002, 0)
        finally:
            ep.close()

    with caplog.at_level("WARNING", logger="sipagent.rtp.endpoint"):
        asyncio.run(body())
    warnings = [r.getMessage() for r in caplog.records if "not of the IP family" in r.getMessage()]
    assert len(warnings) == 1 and "2001:db8::5" in warnings[0] and "127.0.0.1" in warnings[0], warnings


def test_rtp_pair_on_the_ipv6_wildcard_is_dual_stack() -> None:
    lo = 26000 + (time.monotonic_ns() // 1000 % 2000) * 2
    ports = PortAllocator(lo, lo + 99)
    pair = ports.bind_pair("::")
    try:
        for sock in pair[1:]:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        ports.close_pair(pair)
