"""Registration against registrars played by SIPp: what Asterisk (chan_pjsip) and FreeSWITCH (sofia) answer to
a REGISTER in their corners, and what a misconfigured or hostile one sends. The user agent runs in-process;
SIPp (tests/integration/sipp/reg_*.xml) is the registrar, checks every credential it gets (``verifyauth``)
and fails its run on anything unexpected, including a REGISTER that should not have come. The sans-I/O side
of each case is in tests/unit/test_sip_registration_quirks.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from peers import free_port, require, wait_until
from sipp import SippResult, sipp_scenario
from test_session_timers import sipp_log

from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent

pytestmark = [pytest.mark.timeout(90)]

USER, PASSWORD = "1001", "secret1001"


def settings(registrar_port: int, expires: int = 60) -> UaSettings:
    return UaSettings(
        registrar=f"127.0.0.1:{registrar_port}", transport="udp", username=USER, password=PASSWORD,
        domain="127.0.0.1", listen_host="127.0.0.1", listen_port=0, public_host=None, expires=expires,
        max_calls=2, trusted_hosts=[], codecs=["PCMU"],
    )


async def _ignore(call: IncomingCall) -> None:
    return None


def registers(result: SippResult) -> list[tuple[float, str]]:
    """Each REGISTER SIPp received, with the time it logged it."""
    return [(at, message) for at, way, message in sipp_log(result.messages)
            if way == "received" and message.startswith("REGISTER ")]


def header(message: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(.*?)\s*$", message, re.MULTILINE | re.IGNORECASE)
    return match.group(1) if match else ""


def play(scenario: str, tmp_path: Path, body: Callable[[UserAgent], Awaitable[None]], *, expires: int = 60,
         keys: dict[str, str] | None = None) -> SippResult:
    """Run ``scenario`` as the registrar while ``body`` drives a user agent registering on it; stop it after."""
    require("sipp")
    with sipp_scenario(scenario, ("127.0.0.1", 9), tmp_path / "sipp", timeout_s=40,
                       keys={"user": USER, "password": PASSWORD, **(keys or {})}) as run:
        async def main() -> None:
            ua = UserAgent(settings(run.port, expires), _ignore)
            await ua.start()
            try:
                await asyncio.wait_for(body(ua), 40)
            finally:
                await ua.stop()

        asyncio.run(main())
        result = run.wait(20)
    return result


def test_asterisk_stale_nonce_short_grant_refresh_restart_and_unregister(tmp_path: Path) -> None:
    async def body(ua: UserAgent) -> None:
        assert await ua.wait_registered(10), (ua.registration_state, ua.registration_problem)
        assert ua.registration_problem is None
        # Granted 10 s: the refresh comes before they run out, meets a restarted Asterisk, registers again.
        await asyncio.sleep(8.0)
        assert await wait_until(lambda: ua.registration_state == "registered", 3), ua.registration_problem

    result = play("reg_asterisk.xml", tmp_path, body)
    assert result.returncode == 0, result.failed()
    seen = registers(result)
    assert len(seen) == 6, [header(m, "CSeq") for _, m in seen]
    assert len({header(m, "Call-ID") for _, m in seen}) == 1  # one registration, one Call-ID (RFC 3261 10.2.4)
    cseqs = [int(header(m, "CSeq").split()[0]) for _, m in seen]
    assert cseqs == list(range(cseqs[0], cseqs[0] + 6)), cseqs
    # The refresh (the 4th) came within the 10 s granted, at about half of them.
    elapsed = seen[3][0] - seen[2][0]
    assert 4.0 <= elapsed < 9.0, elapsed
    assert header(seen[5][1], "Expires") == "0"


def test_asterisk_wrong_password_sends_the_secret_once(tmp_path: Path) -> None:
    """Asterisk answers a wrong password with a 401 and a new nonce: no second try, a clear problem."""
    async def body(ua: UserAgent) -> None:
        assert await wait_until(lambda: ua.registration_state == "failed", 5), ua.registration_state
        assert ua.registration_problem is not None and "wrong password" in ua.registration_problem
        await asyncio.sleep(4.0)  # SIPp fails its run on any REGISTER meanwhile
        assert ua.registration_state == "failed"
        assert list(ua.registration_failures.values()) == [Counter({"401": 1})]  # the challenge answered: none

    # SIPp's password differs from the agent's: its verifyauth must find the credentials wrong.
    result = play("reg_asterisk_wrong_password.xml", tmp_path, body, keys={"password": "the-pbx-password"})
    assert result.returncode == 0, result.failed()
    assert len(registers(result)) == 2


def test_freeswitch_forbidden_is_not_hammered(tmp_path: Path) -> None:
    """FreeSWITCH answers a wrong password with 403 Forbidden: say so, retry only after the long delay."""
    async def body(ua: UserAgent) -> None:
        assert await wait_until(lambda: ua.registration_state == "failed", 5), ua.registration_state
        assert ua.registration_problem is not None and "403 Forbidden" in ua.registration_problem
        await asyncio.sleep(5.0)  # the old 2 s back-off would have sent a REGISTER by now
        assert ua.registration_state == "failed"

    result = play("reg_freeswitch_forbidden.xml", tmp_path, body, keys={"password": "the-pbx-password"})
    assert result.returncode == 0, result.failed()
    assert len(registers(result)) == 2


def test_the_agents_metrics_count_a_refused_registration_by_the_registrars_status(tmp_path: Path) -> None:
    """The whole agent against FreeSWITCH refusing the password: registration_failures_total counts the 403
    under the account (it counted nothing: only a fall from registered, by the state's name, was counted)."""
    from bridge_helpers import bridge_config

    from sipagent.agent import Agent

    require("sipp")
    with sipp_scenario("reg_freeswitch_forbidden.xml", ("127.0.0.1", 9), tmp_path / "sipp", timeout_s=40,
                       keys={"user": USER, "password": "the-pbx-password"}) as run:
        async def main() -> None:
            config = bridge_config(tmp_path, sip={"registrar": f"127.0.0.1:{run.port}", "username": USER,
                                                  "password": PASSWORD, "domain": "127.0.0.1"})
            agent = Agent(config)
            await agent.start()
            try:
                metric = f'sipagent_registration_failures_total{{account="{USER}",reason="403"}} 1.0'
                assert await wait_until(lambda: metric in agent.metrics.render().decode(), 8), \
                    agent.metrics.render().decode()
                assert "registration_failures_total{" not in agent.metrics.render().decode().replace(metric, "")
            finally:
                await agent.stop()

        asyncio.run(main())
        result = run.wait(20)
    assert result.returncode == 0, result.failed()


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """A 302 naming another host: the REGISTER (and the digest the next one would carry) never goes there."""
    elsewhere = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = free_port()
    elsewhere.bind(("127.0.0.1", port))
    elsewhere.setblocking(False)

    async def body(ua: UserAgent) -> None:
        assert await wait_until(lambda: ua.registration_state == "failed", 5), ua.registration_state
        assert ua.registration_problem is not None and "redirect" in ua.registration_problem
        await asyncio.sleep(4.0)
        assert list(ua.registration_failures.values()) == [Counter({"302": 1})]

    try:
        result = play("reg_redirect.xml", tmp_path, body, keys={"elsewhere": str(port)})
        with pytest.raises(BlockingIOError):
            elsewhere.recvfrom(65535)
    finally:
        elsewhere.close()
    assert result.returncode == 0, result.failed()
    assert len(registers(result)) == 1


def test_freeswitch_423_then_503_retry_after_then_registered(tmp_path: Path) -> None:
    async def body(ua: UserAgent) -> None:
        assert await ua.wait_registered(15), (ua.registration_state, ua.registration_problem)

    result = play("reg_freeswitch_423_503.xml", tmp_path, body)
    assert result.returncode == 0, result.failed()
    seen = registers(result)
    assert [header(m, "Expires") for _, m in seen] == ["60", "3600", "3600", "3600", "0"]
    waited = seen[2][0] - seen[1][0]
    assert waited >= 2.0, waited  # Retry-After: 2 respected
