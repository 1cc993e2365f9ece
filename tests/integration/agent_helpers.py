"""A running agent for tests that talk to it as the network does: `sipagent run` in its own process on the
demo configuration (direct mode, offline backend), with metrics, on free ports; raw SIP over UDP to it."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from demo_config import demo_data, spoken_order_lookup
from peers import free_port
from websockets.sync.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parents[2]
OFFER = ("v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    sip_port: int
    metrics_port: int
    log: Path

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.sip_port)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) / 1024

    def wait_metric(self, name: str, predicate: Any, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics().get(name, float("nan"))
            if predicate(value):
                return value
            assert time.monotonic() < deadline, f"{name} = {value}\n{self.log.read_text()[-3000:]}"
            time.sleep(0.5)


@contextlib.contextmanager
def running_agent(tmp_path: Path, sip: dict[str, Any] | None = None, listen_host: str = "127.0.0.1",
                  sections: dict[str, dict[str, Any]] | None = None) -> Iterator[RunningAgent]:
    """`sipagent run` on the demo configuration (direct mode, offline backend), metrics on, on free ports;
    ``sip`` overrides keys of the ``sip:`` section, ``sections`` keys of any other (applied last)."""
    config = spoken_order_lookup(demo_data())
    sip_port, metrics_port = free_port(), free_port()
    rtp_low = 43000 + (os.getpid() % 100) * 20
    config["sip"].update({"listen": f"{listen_host}:{sip_port}", **(sip or {})})
    config["media"]["rtp_ports"] = f"{rtp_low}-{rtp_low + 19}"
    config["recording"] = {"dir": str(tmp_path / "rec"), "transcripts": True, "audio": False}
    config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    config["agent"]["shutdown_grace_s"] = 0  # a test's calls end with the test: no grace period to sit out
    for section, keys in (sections or {}).items():
        config.setdefault(section, {}).update(keys)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "sipagent.cli", "run", "-c", str(path)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while "sipagent ready" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield RunningAgent(process, sip_port, metrics_port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Udp:
    """A raw SIP socket: send hand-written requests, collect whatever comes back."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes, target: tuple[str, int]) -> None:
        self.sock.sendto(data, target)

    def collect(self, seconds: float) -> list[bytes]:
        """Everything received within ``seconds`` (a bounded wait)."""
        out: list[bytes] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                out.append(self.sock.recv(65535))
            except TimeoutError:
                break
        return out


def request(method: str, target: tuple[str, int], *, via: str, user: str = "agent", body: str = "",
            pad: int = 0, rport: bool = False) -> bytes:
    host, port = target
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    padding = f"X-Pad: {'a' * pad}\r\n" if pad else ""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:{user}@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via};branch={branch}{';rport' if rport else ''}\r\n"
        f"From: <sip:attacker@{via.split(':')[0]}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{user}@{host}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:attacker@{via}>\r\n{padding}{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def statuses(responses: list[bytes]) -> list[int]:
    return [int(r.split(b" ", 2)[1]) for r in responses if r.startswith(b"SIP/2.0 ")]


@contextlib.contextmanager
def websocket_backend(handler: Callable[[ServerConnection], None]) -> Iterator[str]:
    """A scripted Realtime backend: ``handler`` serves each connection on a thread; yields its ws:// URL."""
    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/realtime"
        finally:
            server.shutdown()
            thread.join(10)
