"""`sipagent run` and `sipagent check --connect` as an operator meets them: real processes, real ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from peers import free_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, *, realtime_url: str = "", metrics: str = "") -> Path:
    demo = (ROOT / "sipagent" / "data" / "demo.yaml").read_text()
    sip_port = free_port()
    rtp_low = 42000 + (os.getpid() % 200) * 20
    text = (
        demo.replace('listen: "127.0.0.1:${SIPAGENT_DEMO_PORT:-5080}"', f'listen: "127.0.0.1:{sip_port}"')
        .replace('rtp_ports: "41000-41099"', f'rtp_ports: "{rtp_low}-{rtp_low + 19}"')
        .replace('dir: "${SIPAGENT_DEMO_DIR:-recordings}"', f'dir: "{tmp_path / "rec"}"')
        .replace('  url: ""                       # empty: run the local backend in-process',
                 f'  url: "{realtime_url}"')
    )
    if metrics:
        text += f'\nmetrics:\n  listen: "{metrics}"\n'
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def sipagent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipagent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_check_connect_passes_on_a_working_setup(tmp_path: Path) -> None:
    result = sipagent("check", "-c", str(write_config(tmp_path)), "--connect")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    SIP listen (direct mode)" in result.stdout
    assert "ok    RTP ports" in result.stdout
    assert "ok    Realtime session" in result.stdout
    assert "all checks passed" in result.stdout


def test_check_connect_names_the_failing_step(tmp_path: Path) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    result = sipagent("check", "-c", str(write_config(tmp_path, realtime_url=dead)), "--connect")
    assert result.returncode == 1
    assert "FAIL  Realtime session" in result.stdout, result.stdout
    assert "ok    SIP listen" in result.stdout, result.stdout


def test_run_serves_metrics_and_health_reloads_and_stops_cleanly(tmp_path: Path) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, metrics=f"127.0.0.1:{metrics_port}")
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "sipagent.cli", "run", "-c", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while "sipagent ready" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        base = f"http://127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200
            assert b'"status": "ok"' in response.read().replace(b'":"', b'": "')
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "sipagent_calls_active 0.0" in body
        assert 'sipagent_registration_state{account="",state="unregistered"}' in body
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
        assert "stopped" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("args", [["--version"], ["check", "-c", "config/demo.yaml"]])
def test_cli_basics(args: list[str]) -> None:
    result = sipagent(*args)
    assert result.returncode == 0, result.stderr
