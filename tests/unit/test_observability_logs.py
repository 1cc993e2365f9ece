"""Logging: text and JSON lines, Call-ID tagging per task, secret redaction, the SIGUSR1 trace toggle."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
from collections.abc import Iterator

import pytest

from sipagent.observability.logs import (
    Redactor,
    call_context,
    call_logger,
    configure_logging,
    install_trace_toggle,
    remove_trace_toggle,
    set_call_id,
    set_trace,
    trace_enabled,
    trace_logger,
)

PASSWORD = 'pa"ss\\w0rd-1001'          # quotes and backslashes: escaped differently in JSON and repr
API_KEY = "sk-test-abcdef0123456789"
log = logging.getLogger("sipagent.test.observability")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    set_trace(False)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format_carries_level_logger_and_call_id() -> None:
    out = io.StringIO()
    configure_logging("info", "text", [], stream=out)
    log.info("outside %s", "any call")
    with call_context("abc@host"):
        log.warning("inside a call")
    log.debug("not shown at info")
    first, second = lines(out)
    assert first.split(" ", 4)[2:] == ["INFO", "sipagent.test.observability", "outside any call"]
    assert second.split(" ", 5)[2:] == ["WARNING", "sipagent.test.observability", "[abc@host]",
                                        "inside a call"]


def test_json_lines_parse_and_carry_call_id_and_extras() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", [], stream=out)

    async def call(call_id: str) -> None:
        set_call_id(call_id)
        await asyncio.sleep(0)
        log.info("answered", extra={"codec": "PCMU"})

        async def child() -> None:
            log.debug("child task line")

        await asyncio.create_task(child())   # tasks created inside a call inherit its Call-ID

    async def main() -> None:
        await asyncio.gather(call("call-1"), call("call-2"))
        log.info("after the calls")
        call_logger(log, "call-9").info("tagged by adapter")

    asyncio.run(main())
    entries = [json.loads(line) for line in lines(out)]
    assert all(set(e) >= {"ts", "level", "logger", "call_id", "msg"} for e in entries)
    by_msg: dict[str, list[str]] = {}
    for e in entries:
        by_msg.setdefault(e["msg"], []).append(e["call_id"] if e["call_id"] is not None else "<null>")
    assert sorted(by_msg["answered"]) == ["call-1", "call-2"]
    assert sorted(by_msg["child task line"]) == ["call-1", "call-2"]
    assert by_msg["after the calls"] == ["<null>"]
    assert by_msg["tagged by adapter"] == ["call-9"]
    answered = next(e for e in entries if e["msg"] == "answered")
    assert answered["codec"] == "PCMU" and answered["level"] == "INFO"
    assert answered["ts"].endswith("Z") and "T" in answered["ts"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_including_tracebacks(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, [PASSWORD, API_KEY, "", "ab"], stream=out)
    log.info("config password=%s key=%s", PASSWORD, API_KEY)
    log.info("settings %r", {"password": PASSWORD})
    log.info("sent\r\nAuthorization: Digest username=\"1001\", realm=\"x\", nonce=\"n\", "
             "response=\"6629fae49393a05397450978507c4ef1\"\r\n"
             "Proxy-Authorization: Digest response=deadbeef99")
    log.info("headers {'Authorization': 'Bearer eyJhbGciOi.secret-token'}")
    log.info("ab stays readable", extra={"token": API_KEY})
    try:
        raise RuntimeError(f"login failed with {PASSWORD!r} and {API_KEY}")
    except RuntimeError:
        log.exception("registration crashed")
    text = out.getvalue()
    for leak in (PASSWORD, API_KEY, repr(PASSWORD)[1:-1], json.dumps(PASSWORD)[1:-1],
                 "6629fae49393a05397450978507c4ef1", "deadbeef99", "secret-token", "sk-test"):
        assert leak not in text, leak
    assert "***" in text
    assert "ab stays readable" in text
    assert "RuntimeError" in text and "Traceback" in text
    if fmt == "json":
        entries = [json.loads(line) for line in lines(out)]
        assert len(entries) == 6
        assert "Traceback" in entries[-1]["exc"]
        assert 'response="***"' in entries[2]["msg"]


def test_redactor_details() -> None:
    r = Redactor(["hunter22", "hunter2222", "x"])
    assert r.redact("a hunter2222 b hunter22 x") == "a *** b *** x"
    assert r.redact("digest response ok") == "digest response ok"
    assert r.redact("api-key: abc123def") == "api-key: ***"
    assert Redactor().redact("plain text") == "plain text"


def test_sigusr1_toggles_sip_tracing() -> None:
    out = io.StringIO()
    configure_logging("debug", "text", [], stream=out)
    assert not trace_enabled()
    trace_logger.debug("> REGISTER while off")
    states: list[bool] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert install_trace_toggle(loop)
        try:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGUSR1)
                for _ in range(100):                       # bounded wait for the handler to run
                    await asyncio.sleep(0.01)
                    if trace_enabled() != (states[-1] if states else False):
                        break
                states.append(trace_enabled())
                trace_logger.debug("> REGISTER while %s", "on" if trace_enabled() else "off")
                logging.getLogger("sipagent.sip.wire").debug("< 200 OK while %s", trace_enabled())
        finally:
            remove_trace_toggle(loop)

    asyncio.run(main())
    assert states == [True, False]
    text = out.getvalue()
    assert "> REGISTER while on" in text and "< 200 OK while True" in text
    assert "while off" not in text and "< 200 OK while False" not in text
    assert "SIP message tracing on" in text and "SIP message tracing off" in text


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("loud", "text", [])
    with pytest.raises(ValueError):
        configure_logging("info", "xml", [])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_sdes_keys_in_a_traced_sdp_are_redacted(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("debug", fmt, [], stream=out)
    key = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
    gcm = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw=="
    set_trace(True)
    try:
        trace_logger.debug(
            "< UDP 127.0.0.1:5060 (300 bytes)\nINVITE sip:2001@x SIP/2.0\r\n\r\nm=audio 4000 RTP/SAVP 0\r\n"
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:%s|2^31|1:4\r\na=crypto:2 AEAD_AES_128_GCM INLINE:%s\r\n", key,
            gcm)
    finally:
        set_trace(False)
    text = out.getvalue()
    assert key not in text and gcm not in text and gcm.rstrip("=") not in text
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:***|2^31|1:4" in text.replace("\\r\\n", "\r\n")
