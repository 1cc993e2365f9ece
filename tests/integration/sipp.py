"""SIPp (Debian's sip-tester) as a scripted far end: it plays what Asterisk or FreeSWITCH send, which cannot
run here. Scenarios are XML files in tests/integration/sipp/; each run gets its own directory and ports on
127.0.0.1, and SIPp's message log (every message sent and received) for the test to read.

    with sipp_scenario("reinvite_hold.xml", agent_address, tmp_path, keys={"user": "agent"}) as run:
        ...                         # the test acts while SIPp plays its part
    result = run.result             # exit status, message log, errors; failed() tells why
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from peers import free_port

SCENARIOS = Path(__file__).resolve().parent / "sipp"


@dataclass
class SippResult:
    returncode: int  # 0: every call of the scenario succeeded; 1: at least one failed; 97/99: SIPp trouble
    messages: str  # the -trace_msg log: every SIP message SIPp sent and received, in order
    errors: str  # the -trace_err log: unexpected messages
    output: str  # SIPp's own stdout/stderr

    def failed(self) -> str:
        """Why the run failed, for an assertion message ('' when it passed)."""
        if self.returncode == 0:
            return ""
        return f"SIPp exit {self.returncode}\n--- errors\n{self.errors[-3000:]}\n--- output\n{self.output[-2000:]}" \
               f"\n--- messages\n{self.messages[-6000:]}"


class SippRun:
    """A running scenario; ``wait()`` ends it (bounded) and collects its logs into ``result``."""

    def __init__(self, process: subprocess.Popen[str], workdir: Path, port: int, media_port: int) -> None:
        self.process = process
        self.workdir = workdir
        self.port = port  # SIPp's SIP port on 127.0.0.1
        self.media_port = media_port  # its RTP port (the one its SDP names)
        self.result: SippResult | None = None

    def wait(self, timeout: float = 60.0) -> SippResult:
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # SIPp's own clean stop: it still writes its logs
            try:
                output, _ = self.process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                output, _ = self.process.communicate()
        self.result = SippResult(self.process.returncode, _read(self.workdir, "messages.log"),
                                 _read(self.workdir, "errors.log"), output or "")
        return self.result


def _read(workdir: Path, name: str) -> str:
    path = workdir / name
    return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def sipp_scenario(scenario: str, target: tuple[str, int], workdir: Path, *, keys: dict[str, str] | None = None,
                  calls: int = 1, pause_ms: int = 1000, timeout_s: float = 60.0, local_ip: str = "127.0.0.1",
                  media_ip: str | None = None, transport: str | None = None,
                  rtp_echo: bool = False) -> Iterator[SippRun]:
    """Run ``scenario`` (a file in tests/integration/sipp/) against ``target``, ``calls`` times one after the
    other. ``keys`` are the scenario's [name] substitutions in message text (``-key name value``); a bare
    ``<pause/>`` lasts ``pause_ms`` (``-d``: attributes take no keys). The run is waited for when
    the block ends; SIPp is stopped by its PID if it outlives ``timeout_s``. SIPp's SIP is on ``local_ip``,
    its RTP on ``media_ip`` (default: the same), echoed back with ``rtp_echo``; ``transport`` is SIPp's ``-t``
    (default: UDP, one socket)."""
    binary = shutil.which("sipp")
    if binary is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester; scripts/setup --test)")
    workdir.mkdir(parents=True, exist_ok=True)
    port, media_port = free_port(), free_port()
    command = [
        binary, f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / scenario), "-i", local_ip,
        "-p", str(port), "-mp", str(media_port), "-m", str(calls), "-l", "1", "-d", str(pause_ms), "-nostdin",
        "-timeout", f"{int(timeout_s)}s", "-timeout_error",
        "-trace_msg", "-message_file", str(workdir / "messages.log"),
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        *(["-mi", media_ip] if media_ip else []), *(["-t", transport] if transport else []),
        *(["-rtp_echo"] if rtp_echo else []),
    ]
    for name, value in (keys or {}).items():
        command += ["-key", name, value]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True)
    run = SippRun(process, workdir, port, media_port)
    try:
        yield run
    finally:
        if run.result is None:
            run.wait(timeout_s + 5)
