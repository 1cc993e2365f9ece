"""`sipagent demo` end to end, and `sipagent check --connect` registering on a real registrar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peers import Kamailio, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_places_a_real_call_and_saves_its_records(tmp_path: Path) -> None:
    """The caller asks for its order, keys in 1234 (not the default) when asked, and hears that order."""
    out = tmp_path / "demo"
    env_port = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "sipagent.cli", "demo", "--out", str(out), "--order", "1234"],
        capture_output=True, text=True, timeout=150, cwd=ROOT,
        env={**os.environ, "SIPAGENT_DEMO_PORT": env_port},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = result.stdout
    assert "caller says: where is my order" in printed
    assert "agent: Please key in your order number" in printed
    assert "caller keys: 1234#" in printed
    assert "agent: Order 1234 is being prepared" in printed  # the order keyed in, looked up and read back
    assert "7721" not in printed
    transcript = next(out.glob("*.jsonl"))
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    kinds = [e["type"] for e in entries]
    assert "caller" in kinds and "agent" in kinds
    # The keys came as RFC 4733 events (each once), through the collect_digits tool, into the lookup.
    assert [e["digit"] for e in entries if e["type"] == "dtmf"] == list("1234#")
    collected = [e["output"] for e in entries if e["type"] == "tool_result" and e["name"] == "collect_digits"]
    assert collected == [{"digits": "1234", "ended_by": "terminator", "count": 4}]
    assert [e["arguments"] for e in entries if e["type"] == "tool_call" and e["name"] == "lookup_order"] == [
        {"order_id": "1234"}]
    assert str(transcript) in printed
    assert (out / "caller-heard.wav").stat().st_size > 24000 * 2 * 3  # several seconds of what the caller heard
    assert next(out.glob("*.wav")).exists()


def test_check_connect_registers_and_unregisters(kamailio: Kamailio, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
sip:
  registrar: "{kamailio.address}"
  username: "2051"
  password: "${{SIP_PASSWORD}}"
  listen: "127.0.0.1:{free_port()}"
  expires: 60
media:
  rtp_ports: "43000-43019"
realtime:
  provider: local
"""
    )
    env = {**os.environ, "SIP_PASSWORD": "secret2051"}
    result = subprocess.run([sys.executable, "-m", "sipagent.cli", "check", "-c", str(config), "--connect"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok    SIP registration: registered 2051@127.0.0.1 via {kamailio.address}" in result.stdout
    assert "secret2051" not in result.stdout + result.stderr
    assert not kamailio.is_registered("2051")  # unregistered again on the way out

    env["SIP_PASSWORD"] = "wrong"
    result = subprocess.run([sys.executable, "-m", "sipagent.cli", "check", "-c", str(config), "--connect"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 1
    assert "FAIL  SIP registration" in result.stdout
