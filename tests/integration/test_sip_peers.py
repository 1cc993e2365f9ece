"""The user agent against real peers: Kamailio (registrar + proxy, digest auth) and baresip (the caller)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

import pytest
from peers import Baresip, Kamailio, free_port, sip_options, wait_until

from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

CODECS = ["PCMU", "PCMA", "G722"]


def ua_settings(kamailio: Kamailio, user: str, **overrides: object) -> UaSettings:
    settings = UaSettings(
        registrar=kamailio.address, transport="udp", username=user, password=f"secret{user}",
        domain="127.0.0.1", listen_host="127.0.0.1", listen_port=0, public_host=None, expires=60,
        max_calls=4, trusted_hosts=[], codecs=CODECS,
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


async def _ignore(call: IncomingCall) -> None:
    return None


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 60)

    asyncio.run(bounded())


def test_register_with_digest_auth_then_options_through_proxy(
    kamailio: Kamailio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sipagent.sip.wire")

    async def scenario() -> None:
        ua = UserAgent(ua_settings(kamailio, "1001"), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(10), ua.registration_state
            assert ua.registration_state == "registered"
            # Kamailio finds our contact and relays an OPTIONS to it: the agent answers 200.
            assert await asyncio.to_thread(kamailio.is_registered, "1001")
        finally:
            await ua.stop()
        assert ua.registration_state == "unregistered"
        assert not await asyncio.to_thread(kamailio.is_registered, "1001"), "stop() must unregister"

    run(scenario())
    trace = caplog.text
    assert "SIP/2.0 401" in trace and "SIP/2.0 200 OK" in trace
    assert trace.index("SIP/2.0 401") < trace.rindex("SIP/2.0 200 OK")
    assert "Authorization: Digest" in trace and "response=" not in trace, "digest secrets leaked to logs"


def test_options_answered_directly(kamailio: Kamailio) -> None:
    async def scenario() -> None:
        ua = UserAgent(ua_settings(kamailio, "1003"), _ignore)
        await ua.start()
        try:
            host, port = ua.local_address
            status = await asyncio.to_thread(sip_options, host, port, f"sip:1003@{host}:{port}", 2.0)
            assert status == 200
        finally:
            await ua.stop()

    run(scenario())


async def _phone(tmp: Path, kamailio: Kamailio, user: str) -> Baresip:
    phone = Baresip(tmp / f"baresip{user}", user, kamailio.address)
    await phone.start()
    return phone


def test_call_answered_then_caller_hangs_up(
    kamailio: Kamailio, tmp_path: Path, baresip_available: None
) -> None:
    async def scenario() -> None:
        calls: list[IncomingCall] = []
        answered = asyncio.Event()

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.answer("127.0.0.1", free_port())
            answered.set()

        ua = UserAgent(ua_settings(kamailio, "1011"), on_call)
        await ua.start()
        phone = await _phone(tmp_path, kamailio, "1012")
        try:
            assert await ua.wait_registered(10)
            await phone.dial(f"sip:1011@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 10), phone.event_types()
            await asyncio.wait_for(answered.wait(), 5)
            call = calls[0]
            assert call.media is not None and call.media.codec in CODECS
            assert call.media.remote_host == "127.0.0.1" and call.media.remote_port > 0
            assert "1012" in call.from_uri and ua.active_calls == 1
            await phone.hangup()
            await asyncio.wait_for(call.ended.wait(), 10)
            assert call.end_reason == "remote-bye"
            assert ua.active_calls == 0
        finally:
            await phone.close()
            await ua.stop()

    run(scenario())


def test_call_answered_then_agent_hangs_up(
    kamailio: Kamailio, tmp_path: Path, baresip_available: None
) -> None:
    async def scenario() -> None:
        calls: list[IncomingCall] = []

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.answer("127.0.0.1", free_port())

        ua = UserAgent(ua_settings(kamailio, "1021"), on_call)
        await ua.start()
        phone = await _phone(tmp_path, kamailio, "1022")
        try:
            assert await ua.wait_registered(10)
            await phone.dial(f"sip:1021@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 10), phone.event_types()
            assert await wait_until(lambda: bool(calls) and calls[0].state == "confirmed", 5)
            await calls[0].hangup()
            assert calls[0].end_reason == "local-bye"
            closed = await phone.wait_event("CALL_CLOSED", 10)
            assert closed is not None, phone.event_types()
        finally:
            await phone.close()
            await ua.stop()

    run(scenario())


def test_cancel_while_ringing(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    async def scenario() -> None:
        calls: list[IncomingCall] = []

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.ended.wait()  # never answers: the caller gives up

        ua = UserAgent(ua_settings(kamailio, "1031"), on_call)
        await ua.start()
        phone = await _phone(tmp_path, kamailio, "1032")
        try:
            assert await ua.wait_registered(10)
            await phone.dial(f"sip:1031@{kamailio.address}")
            assert await phone.wait_event("CALL_RINGING", 10), phone.event_types()
            assert calls and calls[0].state == "ringing"
            await phone.hangup()
            await asyncio.wait_for(calls[0].ended.wait(), 10)
            assert calls[0].end_reason == "cancelled"
            assert "CALL_ESTABLISHED" not in phone.event_types()
            assert ua.active_calls == 0
        finally:
            await phone.close()
            await ua.stop()

    run(scenario())


def test_registrar_restart_then_reregistration(own_kamailio: Kamailio) -> None:
    """Short registrations: 423 raises our 2 s request to the 3 s minimum, refreshes follow, and after a
    restart (all bindings lost) the next refresh, or one of its retransmissions, registers again."""

    async def scenario() -> None:
        ua = UserAgent(ua_settings(own_kamailio, "1041", expires=2), _ignore)
        await ua.start()
        try:
            assert await ua.wait_registered(10), ua.registration_state
            assert await asyncio.to_thread(own_kamailio.is_registered, "1041")
            await asyncio.to_thread(own_kamailio.stop)
            await asyncio.sleep(1.5)  # a refresh falls into the outage
            await asyncio.to_thread(own_kamailio.start)
            for _ in range(20):  # the probe blocks, so it runs in a thread while the agent keeps serving
                if await asyncio.to_thread(own_kamailio.is_registered, "1041"):
                    break
                await asyncio.sleep(0.5)
            else:
                pytest.fail(f"not registered again after the restart ({ua.registration_state})")
            assert ua.registration_state in ("registered", "refreshing")
        finally:
            await ua.stop()

    run(scenario())


def test_tcp_registration_and_call(kamailio: Kamailio, tmp_path: Path, baresip_available: None) -> None:
    """Over TCP: REGISTER on a stream, Kamailio relays the UDP caller's INVITE to our TCP contact."""

    async def scenario() -> None:
        calls: list[IncomingCall] = []

        async def on_call(call: IncomingCall) -> None:
            calls.append(call)
            await call.answer("127.0.0.1", free_port())

        ua = UserAgent(ua_settings(kamailio, "1051", transport="tcp"), on_call)
        await ua.start()
        phone = await _phone(tmp_path, kamailio, "1052")
        try:
            assert await ua.wait_registered(10), ua.registration_state
            await phone.dial(f"sip:1051@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 10), phone.event_types()
            await phone.hangup()
            assert await wait_until(lambda: bool(calls) and calls[0].ended.is_set(), 10)
            assert calls[0].end_reason == "remote-bye"
        finally:
            await phone.close()
            await ua.stop()

    run(scenario())


def test_registrar_down_backs_off_then_registers(own_kamailio: Kamailio) -> None:
    """Over TCP a dead registrar is noticed at once (connection refused): back off, retry, recover."""

    async def scenario() -> None:
        await asyncio.to_thread(own_kamailio.stop)
        ua = UserAgent(ua_settings(own_kamailio, "1061", transport="tcp"), _ignore)
        await ua.start()
        try:
            assert await wait_until(lambda: ua.registration_state == "backing-off", 10), ua.registration_state
            assert not await ua.wait_registered(0.1)
            await asyncio.to_thread(own_kamailio.start)
            assert await ua.wait_registered(15), ua.registration_state
            assert await asyncio.to_thread(own_kamailio.is_registered, "1061")
        finally:
            await ua.stop()

    run(scenario())
