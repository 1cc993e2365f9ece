"""SIP over TLS against real peers: Kamailio with its TLS module as the registrar, a throwaway CA and
certificates made at test time (trustme), baresip calling through Kamailio onto the agent's TLS leg.

Also, with an in-process TLS "registrar" (Python's ssl, the same throwaway CA): an expired certificate is
named as such, and a registrar that stops answering keep-alive pings is left for a new connection.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import ssl
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from peers import Baresip, Kamailio, KamailioTls, free_port, wait_until
from tls_helpers import NAMES, Pki, require_kamailio_tls

from sipagent.sip.message import SipRequest, StreamFramer, build_response, parse_message
from sipagent.sip.tls import TlsSettings
from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

CODECS = ["PCMU", "PCMA"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def kamailio_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """Kamailio listening on UDP, TCP and TLS; it reaches TLS contacts over the REGISTER's connection."""
    require_kamailio_tls()
    server = Kamailio(tmp_path_factory.mktemp("kamailio-tls"), tls=KamailioTls(pki.server_cert, pki.server_key))
    server.start()
    yield server
    server.stop()


def settings(registrar: str, user: str, tls: TlsSettings, **overrides: object) -> UaSettings:
    ua = UaSettings(
        registrar=registrar, transport="tls", username=user, password=f"secret{user}", domain="127.0.0.1",
        listen_host="127.0.0.1", listen_port=0, public_host=None, expires=60, max_calls=4, trusted_hosts=[],
        codecs=CODECS, tls=tls,
    )
    for name, value in overrides.items():
        setattr(ua, name, value)
    return ua


async def _ignore(call: IncomingCall) -> None:
    return None


def run(coro: Awaitable[None], timeout: float = 90) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


async def _answer_then_wait_bye(ua: UserAgent, kamailio: Kamailio, tmp: Path, callee: str, caller: str,
                                calls: list[IncomingCall], answered: asyncio.Event) -> None:
    phone = Baresip(tmp / f"baresip{caller}", caller, kamailio.address)
    await phone.start()
    try:
        await phone.dial(f"sip:{callee}@{kamailio.address}")
        assert await phone.wait_event("CALL_ESTABLISHED", 15), phone.event_types()
        await asyncio.wait_for(answered.wait(), 5)
        call = calls[0]
        assert call.media is not None and call.media.codec in CODECS
        assert call.transport == "TLS"
        await phone.hangup()
        await asyncio.wait_for(call.ended.wait(), 10)
        assert call.end_reason == "remote-bye"
    finally:
        await phone.close()


def test_register_over_tls_and_take_a_call(
    kamailio_tls: Kamailio, pki: Pki, tmp_path: Path, baresip_available: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Verified TLS to the registrar; the call comes in over that same connection (the agent does not
    listen); answer, then the caller's BYE, all over TLS."""
    caplog.set_level(logging.DEBUG, logger="sipagent.sip.wire")

    async def scenario() -> None:
        calls: list[IncomingCall] = []
        answered = asyncio.Event()

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.answer("127.0.0.1", free_port())
            answered.set()

        ua = UserAgent(settings(kamailio_tls.tls_address, "3001", TlsSettings(ca_file=str(pki.ca_file))), on_call)
        await ua.start()
        try:
            assert await ua.wait_registered(10), (ua.registration_state, ua.registration_problem,
                                                  kamailio_tls.log_tail())
            assert ua.registration_problem is None
            await _answer_then_wait_bye(ua, kamailio_tls, tmp_path, "3001", "3002", calls, answered)
        finally:
            await ua.stop()

    run(scenario())
    trace = caplog.text
    assert ";transport=tls>" in trace  # our Contact
    assert "< TLS" in trace and "INVITE sip:3001@" in trace and "BYE sip:" in trace
    assert "> UDP" not in trace and "> TCP" not in trace


def test_agent_hangs_up_over_the_registrar_connection(
    kamailio_tls: Kamailio, pki: Pki, tmp_path: Path, baresip_available: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's own BYE follows the call's route (Kamailio's TLS address) over the connection it already has
    there: no second connection is opened (RFC 3261 18: reuse the connection)."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="sipagent.sip.wire")

    async def scenario() -> None:
        calls: list[IncomingCall] = []
        answered = asyncio.Event()

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.answer("127.0.0.1", free_port())
            answered.set()

        ua = UserAgent(settings(kamailio_tls.tls_address, "3091", TlsSettings(ca_file=str(pki.ca_file))), on_call)
        await ua.start()
        phone = Baresip(tmp_path / "phone", "3092", kamailio_tls.address)
        try:
            assert await ua.wait_registered(10)
            await phone.start()
            await phone.dial(f"sip:3091@{kamailio_tls.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 15), phone.event_types()
            await asyncio.wait_for(answered.wait(), 5)
            await calls[0].hangup()
            assert calls[0].end_reason == "local-bye"
            assert await phone.wait_event("CALL_CLOSED", 10), phone.event_types()
            transport = ua._transport
            assert transport is not None
            assert len(getattr(transport, "_connections", {})) == 1  # the registrar's, and nothing else
        finally:
            await phone.close()
            await ua.stop()

    run(scenario())
    assert "> TLS" in caplog.text and "BYE sip:3092" in caplog.text
    assert "BYE answered 200" in caplog.text


def test_sips_contact(kamailio_tls: Kamailio, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sipagent.sip.wire")

    async def scenario() -> None:
        tls = TlsSettings(ca_file=str(pki.ca_file), server_name="pbx.test", sips=True)
        ua = UserAgent(settings(kamailio_tls.tls_address, "3005", tls), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(10), (ua.registration_state, ua.registration_problem)
        finally:
            await ua.stop()

    run(scenario())
    assert "REGISTER sips:127.0.0.1" in caplog.text and "Contact: <sips:3005@127.0.0.1:" in caplog.text


@pytest.mark.parametrize(("tls_kwargs", "words"), [
    ({"ca_file": "other"}, "unknown CA"),
    ({"ca_file": "ours", "server_name": "wrong.example"}, "wrong name"),
    ({"ca_file": "", }, "unknown CA"),  # the system store does not know our throwaway CA either
], ids=["wrong-ca", "wrong-name", "system-store"])
def test_certificate_problems_fail_registration_with_their_name(
    kamailio_tls: Kamailio, pki: Pki, tls_kwargs: dict[str, str], words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ca = {"other": str(pki.other_ca_file), "ours": str(pki.ca_file), "": ""}[tls_kwargs["ca_file"]]
    tls = TlsSettings(ca_file=ca, server_name=tls_kwargs.get("server_name", ""))

    async def scenario() -> None:
        ua = UserAgent(settings(kamailio_tls.tls_address, "3003", tls), _ignore)
        await ua.start()
        try:
            assert not await ua.wait_registered(3)
            assert ua.registration_state == "backing-off"
            assert ua.registration_problem is not None and words in ua.registration_problem, ua.registration_problem
        finally:
            await ua.stop()

    run(scenario())
    assert words in caplog.text  # the log says it too, once
    assert "CERTIFICATE_VERIFY_FAILED" not in caplog.text


def test_a_registrar_asking_for_a_client_certificate_gets_ours(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mutual TLS: Kamailio refuses a client without a certificate from our CA, and the log says what that
    looks like; with sip.tls.cert_file the agent presents its own and registers."""
    caplog.set_level(logging.WARNING)
    require_kamailio_tls()
    kamailio = Kamailio(tmp_path / "kamailio", tls=KamailioTls(pki.server_cert, pki.server_key, client_ca=pki.ca_file))
    kamailio.start()

    async def register(tls: TlsSettings, user: str) -> tuple[bool, str | None]:
        ua = UserAgent(settings(kamailio.tls_address, user, tls), _ignore)
        await ua.start()
        try:
            registered = await ua.wait_registered(4)
            return registered and await asyncio.to_thread(kamailio.is_registered, user), ua.registration_problem
        finally:
            await ua.stop()

    async def scenario() -> None:
        registered, problem = await register(TlsSettings(ca_file=str(pki.ca_file)), "3021")
        assert not registered and problem
        assert caplog.text.count("requires a client certificate does this (set sip.tls.cert_file") == 1  # once a minute
        caplog.clear()
        registered, problem = await register(TlsSettings(ca_file=str(pki.ca_file), cert_file=str(pki.agent_cert),
                                                         key_file=str(pki.agent_key)), "3022")
        assert registered, problem
        assert "client certificate" not in caplog.text

    try:
        run(scenario())
    finally:
        kamailio.stop()


def test_reregisters_after_the_registrar_restarts(pki: Pki, tmp_path: Path) -> None:
    """The registrar goes away with our connection: a new connection, and a fresh REGISTER on it."""
    require_kamailio_tls()
    kamailio = Kamailio(tmp_path / "kamailio", tls=KamailioTls(pki.server_cert, pki.server_key))
    kamailio.start()

    async def scenario() -> None:
        ua = UserAgent(settings(kamailio.tls_address, "3011", TlsSettings(ca_file=str(pki.ca_file))), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(10)
            assert await asyncio.to_thread(kamailio.is_registered, "3011")
            await asyncio.to_thread(kamailio.restart)  # forgets every registration (no database)
            assert await wait_until(lambda: ua.reconnects >= 1, 10)
            assert await ua.wait_registered(15), (ua.registration_state, ua.registration_problem)
            assert await wait_until(lambda: ua.registration_state == "registered", 15)
            # Kamailio reaches us again, over the new connection.
            assert await asyncio.to_thread(kamailio.is_registered, "3011")
        finally:
            await ua.stop()

    try:
        run(scenario())
    finally:
        kamailio.stop()


def test_crlf_keepalive_answered_by_kamailio(kamailio_tls: Kamailio, pki: Pki) -> None:
    async def scenario() -> None:
        ua = UserAgent(settings(kamailio_tls.tls_address, "3021", TlsSettings(ca_file=str(pki.ca_file)),
                                keepalive_s=0.5, keepalive_timeout_s=2.0), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(10)
            transport = ua._transport
            assert transport is not None
            assert await wait_until(lambda: getattr(transport, "keepalive_pongs", 0) >= 3, 10)
            assert getattr(transport, "keepalive_failures", None) == 0
            assert ua.reconnects == 0 and ua.registration_state == "registered"
        finally:
            await ua.stop()

    run(scenario())


def test_agent_listens_for_tls_when_the_registrar_connects_to_the_contact(
    pki: Pki, tmp_path: Path, baresip_available: None
) -> None:
    """Kamailio opens its own TLS connection to our Contact: the agent presents its certificate."""
    require_kamailio_tls()
    kamailio = Kamailio(tmp_path / "kamailio", tls=KamailioTls(pki.server_cert, pki.server_key, reuse=False))
    kamailio.start()

    async def scenario() -> None:
        calls: list[IncomingCall] = []
        answered = asyncio.Event()

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.answer("127.0.0.1", free_port())
            answered.set()

        tls = TlsSettings(ca_file=str(pki.ca_file), cert_file=str(pki.agent_cert), key_file=str(pki.agent_key))
        ua = UserAgent(settings(kamailio.tls_address, "3031", tls), on_call)
        await ua.start()
        try:
            assert await ua.wait_registered(10), (ua.registration_problem, kamailio.log_tail())
            transport = ua._transport
            assert transport is not None
            await _answer_then_wait_bye(ua, kamailio, tmp_path, "3031", "3032", calls, answered)
            assert getattr(transport, "accepted_connections", 0) >= 1  # Kamailio's own connection to us
        finally:
            await ua.stop()

    try:
        run(scenario())
    finally:
        kamailio.stop()


# -- an in-process TLS registrar: an expired certificate, and pings that go unanswered ---------------


class FakeRegistrar:
    """Answers every REGISTER with 200 over TLS, and the first ``pongs`` keep-alive pings of each connection
    (then it goes silent, as an unplugged one would); counts connections."""

    def __init__(self, cert: Path, key: Path, pongs: int = 0, drop_first: bool = False,
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.pongs = pongs
        self.drop_first = drop_first  # close the first connection right after its first 200 OK
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        self.connections = 0
        self.registers = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.context)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                messages = framer.feed(data)
                while framer.pings and self.pongs > 0:
                    framer.pings -= 1
                    self.pongs -= 1
                    writer.write(b"\r\n")
                for raw in messages:
                    request = parse_message(raw)
                    if isinstance(request, SipRequest) and request.method == "REGISTER":
                        self.registers += 1
                        response = build_response(request, 200, to_tag="fake")
                        response.headers.add("Contact", f"{request.headers.get('Contact')};expires=60")
                        writer.write(response.to_bytes())
                        if self.drop_first and self.connections == 1:
                            self.drop_first = False
                            await writer.drain()
                            await asyncio.sleep(0.5)  # registered by then: this drops a live registration
                            return
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_expired_certificate_is_named(pki: Pki) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    cert, key = pki.issue("expired", *NAMES, not_before=past - datetime.timedelta(days=60), not_after=past)

    async def scenario() -> None:
        registrar = FakeRegistrar(cert, key)
        await registrar.start()
        ua = UserAgent(settings(f"127.0.0.1:{registrar.port}", "3041", TlsSettings(ca_file=str(pki.ca_file))),
                       _ignore)
        await ua.start()
        try:
            assert not await ua.wait_registered(2)
            assert ua.registration_problem is not None and "has expired" in ua.registration_problem
            assert registrar.registers == 0
        finally:
            await ua.stop()
            await registrar.stop()

    run(scenario())


@pytest.mark.parametrize("issued_for", ["::1", "127.0.0.1"])
def test_tls_over_ipv6_checks_the_certificate_against_the_ipv6_address(pki: Pki, issued_for: str) -> None:
    """A registrar at [::1] over TLS: its certificate must name ::1 (an IP address SAN, matched as an address,
    not as the bracketed text of the URI); one issued for another address is refused, and said so."""
    cert, key = pki.issue(f"v6-{issued_for}", issued_for)

    async def scenario() -> None:
        registrar = FakeRegistrar(cert, key, host="::1")
        await registrar.start()
        ua = UserAgent(settings(f"[::1]:{registrar.port}", "3081", TlsSettings(ca_file=str(pki.ca_file)),
                                listen_host="::1", domain="::1"), _ignore)
        await ua.start()
        try:
            if issued_for == "::1":
                assert await ua.wait_registered(5), ua.registration_problem
                assert registrar.registers >= 1
            else:
                assert not await ua.wait_registered(2)
                assert registrar.registers == 0
                problem = ua.registration_problem or ""
                assert f'certificate of [::1]:{registrar.port} was not issued for "::1"' in problem, problem
        finally:
            await ua.stop()
            await registrar.stop()

    run(scenario())


def test_unanswered_pings_close_the_connection_and_register_again(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        registrar = FakeRegistrar(pki.server_cert, pki.server_key, pongs=2)
        await registrar.start()
        ua = UserAgent(settings(f"127.0.0.1:{registrar.port}", "3051", TlsSettings(ca_file=str(pki.ca_file)),
                                keepalive_s=0.5, keepalive_timeout_s=1.0), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(5), ua.registration_problem
            assert await wait_until(lambda: registrar.connections >= 2 and registrar.registers >= 2, 10)
            assert ua.reconnects >= 1
            assert await wait_until(lambda: ua.registration_state == "registered", 5)
        finally:
            await ua.stop()
            await registrar.stop()

    run(scenario())
    assert "no answer to a keep-alive ping" in caplog.text
    assert "connection to the registrar 127.0.0.1" in caplog.text


def test_a_registrar_that_never_pongs_is_not_pinged_to_death(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """Pongs are the registrar's option (RFC 5626): one that never answered any keeps its connection."""
    caplog.set_level(logging.INFO, logger="sipagent.sip.transport")

    async def scenario() -> None:
        registrar = FakeRegistrar(pki.server_cert, pki.server_key, pongs=0)
        await registrar.start()
        ua = UserAgent(settings(f"127.0.0.1:{registrar.port}", "3071", TlsSettings(ca_file=str(pki.ca_file)),
                                keepalive_s=0.5, keepalive_timeout_s=1.0), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(5), ua.registration_problem
            await asyncio.sleep(3.0)
            assert registrar.connections == 1 and ua.reconnects == 0
        finally:
            await ua.stop()
            await registrar.stop()

    run(scenario())
    assert "does not answer keep-alive pings" in caplog.text


def test_check_connect_names_the_certificate_problem(kamailio_tls: Kamailio, pki: Pki) -> None:
    """``sipagent check --connect``'s SIP step, from a config file's text, against the TLS registrar."""
    from sipagent.config import load_config_text
    from sipagent.doctor import StepFailed, _check_sip

    def config(ca_file: Path) -> str:
        return ("realtime: {provider: local}\n"
                f"sip:\n  transport: tls\n  registrar: {kamailio_tls.tls_address}\n  username: '3061'\n"
                f"  password: secret3061\n  listen: 127.0.0.1:{free_port()}\n  tls: {{ca_file: {ca_file}}}\n")

    async def scenario() -> None:
        good = load_config_text(config(pki.ca_file), "agent.yaml", {})
        assert "over TLS" in await _check_sip(good)
        bad = load_config_text(config(pki.other_ca_file), "agent.yaml", {})
        with pytest.raises(StepFailed) as info:
            await _check_sip(bad)
        assert "unknown CA" in str(info.value) and "sip.tls" in str(info.value)

    run(scenario())


# -- a spoken turn: the whole agent, registered over TLS, called by baresip over TLS -----------------


def _write_wav(path: Path, pcm24k: bytes, rate: int) -> None:
    """24 kHz speech into a WAV at ``rate`` for baresip's aufile source, with a silent lead and tail."""
    import wave

    from sipagent.media.kernel import Resampler

    pcm = Resampler(24000, rate).process(pcm24k)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(rate) + pcm + bytes(rate * 20))


GREETING = "Hello, this is the outdoor store. How can I help you?"
QUESTION = "i would like a refund"  # of the demo's phrases, the one its recogniser gets in narrowband too


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_spoken_turn_over_tls_end_to_end(kamailio_tls: Kamailio, pki: Pki, tmp_path: Path,
                                         baresip_available: None) -> None:
    """`Agent` on the demo configuration (offline backend) registered over TLS; baresip registered over TLS
    calls it through Kamailio: the caller hears the greeting, the agent hears and answers the question, and
    the caller's BYE ends the call. Every SIP hop is TLS (the agent has no other transport)."""
    from bridge_helpers import bridge_config, tts

    from sipagent.agent import Agent

    user = "3081"
    config = bridge_config(
        tmp_path, sip={"registrar": kamailio_tls.tls_address, "transport": "tls", "username": user,
                       "password": f"secret{user}", "domain": "127.0.0.1", "expires": 60,
                       "tls": {"ca_file": str(pki.ca_file)}},
        agent={"greeting": GREETING, "barge_in": {"protect_greeting_ms": 0}},
        realtime={"local": {"vad": {"prefix_ms": 600}}})

    async def scenario() -> None:
        said: list[tuple[str, str]] = []
        agent = Agent(config, on_transcript=lambda _id, role, text: said.append((role, text)))
        await agent.start()
        phone = Baresip(tmp_path / "phone", "3082", kamailio_tls.tls_address, codecs=["PCMU"], transport="tls",
                        ca_file=pki.ca_file)
        question = tmp_path / "question.wav"
        _write_wav(question, await asyncio.to_thread(tts().synthesize, QUESTION), phone.source_rate)
        try:
            assert agent.ua is not None and await agent.ua.wait_registered(20), agent.ua.registration_problem
            assert agent.ua.transport_name == "TLS"
            await phone.start(timeout=30)
            await phone.dial(f"sip:{user}@{kamailio_tls.tls_address};transport=tls")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), (phone.event_types(), phone.log_tail())
            assert await wait_until(lambda: bool(agent.bridges), 10)
            bridge = next(iter(agent.bridges.values()))
            assert await wait_until(lambda: said[:1] == [("agent", GREETING)], 30), said
            assert await wait_until(lambda: bridge.media.buffered_ms == 0, 30)
            await phone.set_source(question)
            assert await wait_until(lambda: any(role == "caller" for role, _ in said), 30), said
            assert await wait_until(lambda: [role for role, _ in said][-1:] == ["agent"] and len(said) >= 3, 30), said
            await phone.hangup()
            assert await wait_until(lambda: not agent.bridges, 15)
        finally:
            await phone.close()
            await agent.stop()
        assert next(text for role, text in said if role == "caller") == QUESTION, said

    run(scenario(), timeout=110)


def test_agent_counts_a_lost_registrar_connection(pki: Pki, tmp_path: Path) -> None:
    """The whole agent: the registrar closes the connection after registering it; the agent registers again
    over a new one, and the metrics count it under the account it cut (registration_failures{account="3101",
    reason="connection-lost"}; it was counted under account="" whatever the account)."""
    from bridge_helpers import bridge_config

    from sipagent.agent import Agent

    async def scenario() -> None:
        registrar = FakeRegistrar(pki.server_cert, pki.server_key, drop_first=True)
        await registrar.start()
        config = bridge_config(tmp_path, sip={"registrar": f"127.0.0.1:{registrar.port}", "transport": "tls",
                                              "username": "3101", "password": "secret3101", "domain": "127.0.0.1",
                                              "tls": {"ca_file": str(pki.ca_file)}})
        agent = Agent(config)
        await agent.start()
        try:
            assert agent.ua is not None
            assert await wait_until(lambda: registrar.connections >= 2 and registrar.registers >= 2, 10)
            assert await agent.ua.wait_registered(5)
            metric = 'sipagent_registration_failures_total{account="3101",reason="connection-lost"} 1.0'
            assert await wait_until(lambda: metric in agent.metrics.render().decode(), 5), \
                agent.metrics.render().decode()
        finally:
            await agent.stop()
            await registrar.stop()

    run(scenario())


def test_kamailio_with_an_expired_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    require_kamailio_tls()
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert, key = pki.issue("kamailio-expired", *NAMES, not_before=past - datetime.timedelta(days=90), not_after=past)
    kamailio = Kamailio(tmp_path / "kamailio", tls=KamailioTls(cert, key))
    kamailio.start()

    async def scenario() -> None:
        ua = UserAgent(settings(kamailio.tls_address, "3111", TlsSettings(ca_file=str(pki.ca_file))), _ignore)
        await ua.start()
        try:
            assert not await ua.wait_registered(3)
            assert ua.registration_problem is not None
            assert "the certificate of 127.0.0.1" in ua.registration_problem
            assert "has expired" in ua.registration_problem
        finally:
            await ua.stop()

    try:
        run(scenario())
    finally:
        kamailio.stop()
