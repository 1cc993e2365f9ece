"""Secrets never reach the logs: the agent runs as operators run it (``sipagent run -c FILE``) at debug
level with SIP message tracing switched on, registers with its password, takes a full call, shuts
down; then its whole log output is searched for the password and the API key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import (
    ORDER_ANSWER,
    agent_settings,
    entries,
    find_transcripts,
    phones,
    read_transcript,
    run,
    wait_until,
    write_prompt,
)
from peers import Kamailio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-acceptance-FAKE-8c1f2e9d7b6a5043"
AGENT_USER = "2401"
PASSWORD = f"secret{AGENT_USER}"  # what the test Kamailio expects for this extension


def test_full_call_logs_neither_password_nor_api_key(kamailio: Kamailio, tmp_path: Path) -> None:
    settings = agent_settings(kamailio, AGENT_USER, tmp_path, logging={"level": "debug", "format": "text"})
    # The secrets come from the environment, as the configuration reference recommends.
    settings["sip"]["password"] = "${SIP_PASSWORD}"
    settings["realtime"]["api_key"] = "${OPENAI_API_KEY}"
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    log_path = tmp_path / "agent.log"
    env = {**os.environ, "SIP_PASSWORD": PASSWORD, "OPENAI_API_KEY": API_KEY,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    recordings = Path(settings["recording"]["dir"])

    def log_text() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")

    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "sipagent.cli", "run", "-c", str(config_path)],
                                   stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    async def scenario() -> None:
        assert await wait_until(lambda: "sipagent ready" in log_text() or process.poll() is not None, 60), log_text()
        assert process.poll() is None, log_text()
        os.kill(process.pid, signal.SIGUSR1)  # switch SIP message tracing on
        assert await wait_until(lambda: "SIP message tracing on" in log_text(), 10), log_text()
        assert await asyncio.to_thread(kamailio.is_registered, AGENT_USER)

        async with phones(tmp_path, kamailio, ["1401"], codecs=["G722"]) as (phone,):
            question = tmp_path / "question.wav"
            write_prompt(question, "where is my order seven seven two one", rate=phone.source_rate)
            await phone.dial(f"sip:{AGENT_USER}@{kamailio.address}")
            assert await phone.wait_event("CALL_ESTABLISHED", 20), phone.event_types()

            def transcript() -> list[dict[str, object]]:
                found = find_transcripts(recordings)
                return read_transcript(found[0]) if found else []

            assert await wait_until(lambda: bool(entries(transcript(), "agent")), 45), transcript()
            await asyncio.sleep(1.0)  # pacing, not an assertion: the greeting's last words play out
            await phone.set_source(question)
            assert await wait_until(
                lambda: any(ORDER_ANSWER in str(e["text"]) for e in entries(transcript(), "agent")), 60
            ), transcript()
            await phone.hangup()
            assert await wait_until(lambda: bool(entries(transcript(), "call", event="end")), 20), transcript()

    try:
        run(scenario(), 150)
        process.send_signal(signal.SIGTERM)  # graceful: unregisters (a traced, authenticated REGISTER)
        assert process.wait(30) == 0, log_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    text = log_text()
    # The log really covers what could leak: debug lines, the traced REGISTER with its digest, the call.
    assert " DEBUG " in text
    assert "INVITE sip:" in text and "REGISTER sip:" in text and "Authorization: Digest" in text, text[-3000:]
    assert "lookup_order" in text or "answered" in text
    assert PASSWORD not in text, "the SIP password is in the log"
    assert API_KEY not in text, "the API key is in the log"
    assert API_KEY[-12:] not in text, "part of the API key is in the log"
