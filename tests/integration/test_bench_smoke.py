"""Each benchmark script runs end to end in a tiny configuration and prints its figures (so they cannot rot).

Speed is not asserted; only that the run completes, the calls connect and the figures are numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def run_bench(script: str, *args: str, timeout: float = 100) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_load_two_calls() -> None:
    out = run_bench("load.py", "--counts", "2", "--seconds", "2", "--keep-going")
    row = next(line for line in out.splitlines() if re.match(r"\s+2\s+\d+\s", line))
    fields = row.split()
    assert fields[1] == "2", out  # both calls connected
    assert float(fields[3]) >= 0 and fields[-1] in ("holds", "BREAKS", "BREAKS*")  # *: the CPU was stolen
    assert "largest N holding" in out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs two CPUs")
def test_load_two_calls_pinned_twice() -> None:
    out = run_bench("load.py", "--counts", "2", "--seconds", "2", "--keep-going", "--pin", "--repeat", "2")
    cpus = sorted(os.sched_getaffinity(0))
    assert f"agent pinned to CPU {cpus[0]}," in out, out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+2\s+\d+\s", line)]
    assert len(rows) == 2 and all(row[1] == "2" and row[-1] in ("holds", "BREAKS", "BREAKS*") for row in rows), out
    assert 0 <= float(rows[0][-3]) <= 100, out  # steal%
    assert re.search(r"2\s+PCMU: held [0-2] of 2 runs \([0-2] inconclusive\): (holds|breaks)", out), out


def test_load_two_calls_with_and_without_srtp() -> None:
    out = run_bench("load.py", "--counts", "2", "--seconds", "2", "--keep-going", "--srtp")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+2\s+\d+\s", line)]
    assert [(row[1], row[-2]) for row in rows] == [("2", "PCMU"), ("2", "PCMU+srtp")], out  # both connected


def test_load_two_calls_pcmu_then_g722() -> None:
    out = run_bench("load.py", "--counts", "2", "--seconds", "2", "--keep-going", "--codec", "both", "--verbose")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+2\s+\d+\s", line)]
    assert [(row[1], row[-2]) for row in rows] == [("2", "PCMU"), ("2", "G722")], out
    assert re.search(r"per media: PCMU (2|none), G722 (2|none)", out), out
    # The underrun count watches the agent's greeting frame by frame, whichever way the clock takes them
    # (G.722 frames are staged in its batch, not popped one by one): two calls, 2 s of greeting each.
    heard = [int(n) for n in re.findall(r'"audio_frames": (\d+)', out)]
    assert len(heard) == 2 and all(n >= 2 * 50 for n in heard), out


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_latency_two_turns() -> None:
    out = run_bench("latency.py", "--turns", "2", "--barge-variants", "local:60")
    overhead = re.search(r"bridge overhead = inbound \+ outbound\s+([\d.]+)\s+([\d.]+)", out)
    assert overhead, out
    assert float(overhead.group(1)) > 0
    barge = re.search(r"barge-in local\s+min_speech\s+60 ms\s+n=(\d+)", out)
    assert barge and int(barge.group(1)) >= 1, out


def test_soak_returns_to_idle() -> None:
    out = run_bench("soak.py", "--calls", "2", "--minutes", "0.15", "--hold", "1,2", "--every", "2")
    assert re.search(r"\d+ calls placed, 0 failed", out), out
    # The one growth check that holds even in a tiny run: every call's RTP ports and tasks are released.
    for metric in ("ports_in_use", "rtp_udp", "bridges"):
        row = next(line for line in out.splitlines() if line.startswith(metric))
        assert row.split()[-1] == "+0.0", row


def test_abuse_short_flood() -> None:
    out = run_bench("abuse.py", "--calls", "2", "--seconds", "4", "--rate", "300", "--rtp-rate", "200",
                    "--tcp-conns", "20", "--tcp-message-s", "1", "--tcp-idle-s", "2", "--probe-every", "3",
                    "--settle", "1")
    assert "held calls answered: 2/2" in out, out
    answered = re.search(r"new calls answered/placed, heard agent\s+(\d+)/(\d+) \d+\s+(\d+)/(\d+) \d+", out)
    assert answered and answered.group(1) == answered.group(2) and answered.group(3) == answered.group(4), out
    assert int(answered.group(4)) >= 1, out  # a call placed during the flood was answered
    assert "responses to third parties: 0 " in out, out
