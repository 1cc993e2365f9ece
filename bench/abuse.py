"""Abuse benchmark: normal calls through a bounded hostile flood, measured against the same calls without it.

One agent process as ``sipagent run`` (bench/_common.py: AgentProcess), direct mode on 127.0.0.1 over UDP, with
``sip.trusted_hosts: [127.0.0.1]`` (so 127.0.0.2 is a stranger) and the offline backend in its own process, as
bench/load.py runs them. ``--calls`` normal calls (QuietCaller: PCMU both ways, the agent speaking a long
greeting throughout) are held through two windows of ``--seconds``: first without the flood, then with it.
Every ``--probe-every`` seconds of each window one more call is placed, held two seconds and hung up, so the
figures also say whether a new call is answered and hears the agent during the flood.

The flood runs in its own process (``abuse.py flood``), at a fixed rate, and stops by itself after the window:
- SIP over UDP, ``--rate`` datagrams/s in a fixed mix: OPTIONS from 127.0.0.1 whose Via names a host
  (``*.invalid``: never to be resolved); requests from 127.0.0.1 whose Via names a third party, a UDP listener
  on 127.0.0.3 (INVITE to a number that is not ours, INVITE with bad SDP, OPTIONS, a BYE for no dialog);
  INVITEs from the stranger 127.0.0.2; oversized and garbage datagrams.
- Foreign RTP, ``--rtp-rate`` packets/s from 127.0.0.2: a valid-looking stream per port (own SSRC, consecutive
  sequence numbers and timestamps, PCMU) at every RTP port of the agent's range, the ports of the calls
  included. Anything that comes back to that socket is our audio sent to an attacker.
- Half-open TCP against a second agent process (``sip.transport: tcp``, idle, ``tcp_message_s``/``tcp_idle_s``
  set short): ``--tcp-conns`` connections from ``--tcp-sources`` addresses (127.0.0.10…), three quarters of
  them sending part of a request head and stalling, a quarter sending nothing; whatever the agent closes is
  re-opened (at most ``--tcp-new-per-s``). Meanwhile, in both windows, a client on 127.0.0.1 sends an OPTIONS
  over a fresh TCP connection once a second and times the answer.

Measured per window: inside the UDP agent, as bench/load.py does, the send deviation of every RTP packet
(p50/p99/max) and playout underruns; the agent's CPU% and RSS (/proc), datagrams the kernel dropped at its SIP and
RTP sockets, its log volume, and its own counters from /metrics (``sipagent_sip_shed_total`` by reason,
``sipagent_sip_server_transactions``, ``sipagent_rtp_foreign_packets_total``). For the TCP agent: the OPTIONS
answer times, CPU%, RSS, sockets, its shed counters, and how many stalled or idle connections it still held
``tcp_message_s``/``tcp_idle_s`` (+1.5 s) after they were opened.

Must be zero: datagrams received by the third party the forged Vias name (responses sent anywhere but to a
request's source), and packets received by the foreign RTP socket.

Usage: python bench/abuse.py [--calls 20] [--seconds 60] [--rate 2000] [--rtp-rate 1000] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import json
import math
import os
import queue
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    LONG_GREETING,
    REPO,
    AgentProcess,
    BackendProcess,
    ProcStats,
    QuietCaller,
    agent_config,
    child_env,
    free_tcp_port,
    free_udp_port,
    percentiles_ms,
    pin,
    read_json_line,
    scrape_metrics,
    taskset,
    write_config,
)
from sipagent.agent import run_loop
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import ulaw_encode
from sipagent.rtp.ports import PortAllocator

TRUSTED = "127.0.0.1"
STRANGER = "127.0.0.2"
THIRD_PARTY = "127.0.0.3"
TCP_SOURCE_BASE = 10  # half-open TCP comes from 127.0.0.10, .11, …
OFFER = ("v=0\r\no=caller 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
         "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
# The SIP flood's mix, one entry per datagram, cycled: 3 hostname Vias, 4 forged Vias, 2 strangers, 1 garbage.
SIP_MIX = ("hostname-via", "forged-via", "stranger-invite", "hostname-via", "forged-via", "garbage",
           "hostname-via", "forged-via", "stranger-invite", "forged-via")
SHED_PREFIX = "sipagent_sip_shed_total{reason="


def sip_request(method: str, target: tuple[str, int], *, via: str, seq: int, user: str = "agent", body: str = "",
                pad: int = 0, rport: bool = False, to_tag: str = "", transport: str = "UDP") -> bytes:
    """A hand-written request whose Via says ``via`` (the attacker's choice, not where it is sent from)."""
    host, port = target
    padding = f"X-Pad: {'a' * pad}\r\n" if pad else ""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    to = f"<sip:{user}@{host}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:{user}@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via};branch=z9hG4bKabuse{seq:x}{';rport' if rport else ''}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:attacker@example.invalid>;tag=a{seq:x}\r\nTo: {to}\r\n"
        f"Call-ID: abuse-{seq:x}-{os.getpid()}\r\nCSeq: 1 {method}\r\n"
        f"{padding}{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


# ============================================================================ the flood (its own process)


@dataclass
class FloodPlan:
    """What the flood process attacks, how hard and for how long (passed to it as JSON)."""

    sip: tuple[str, int]
    rtp_ports: tuple[int, int]
    tcp: tuple[str, int]
    seconds: float
    rate: int
    rtp_rate: int
    tcp_conns: int
    tcp_sources: int
    tcp_new_per_s: int
    tcp_message_s: float
    tcp_idle_s: float


def _udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # drained between sends: keep every answer
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@dataclass
class _Conn:
    sock: socket.socket
    kind: str  # "stalled" (part of a request head, then nothing) or "idle" (nothing at all)
    started: float
    initial: bool  # opened at the flood's start: the cohort the timeout checks follow
    connected_at: float = 0.0


class TcpLoris:
    """Slow-loris connections kept at a target count: what the agent closes is re-opened, at a bounded rate.
    Non-blocking connects, so a full accept queue never stalls the rest of the flood."""

    def __init__(self, plan: FloodPlan) -> None:
        self.plan = plan
        idle = plan.tcp_conns // 4
        self.targets = {"stalled": plan.tcp_conns - idle, "idle": idle}
        self.conns: dict[int, _Conn] = {}
        self.poller = select.poll()
        self.counts: collections.Counter[str] = collections.Counter()
        self.lifetimes: dict[str, list[float]] = {"stalled": [], "idle": []}
        self.held_after: dict[str, int | None] = {"stalled": None, "idle": None}
        self.initial = dict(self.targets)
        self.started = 0.0
        self._next_source = 0
        self._budget = 0.0
        self._last = 0.0

    def start(self, now: float) -> None:
        self.started = self._last = now
        for kind, count in self.targets.items():
            for _ in range(count):
                self._open(kind, now, initial=True)

    def _open(self, kind: str, now: float, initial: bool = False) -> None:
        source = f"127.0.0.{TCP_SOURCE_BASE + self._next_source % self.plan.tcp_sources}"
        self._next_source += 1
        sock = socket.socket()
        try:
            sock.bind((source, 0))
            sock.setblocking(False)
            code = sock.connect_ex(self.plan.tcp)
        except OSError:
            sock.close()
            self.counts[f"{kind}-connect-failed"] += 1
            return
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.counts[f"{kind}-connect-failed"] += 1
            return
        self.conns[sock.fileno()] = _Conn(sock, kind, now, initial)
        self.poller.register(sock, select.POLLOUT)
        self.counts[f"{kind}-opened"] += 1

    def _connected(self, conn: _Conn, now: float) -> None:
        conn.connected_at = now
        if conn.kind == "stalled":
            port = conn.sock.getsockname()[1]
            head = sip_request("OPTIONS", self.plan.tcp, via=f"{conn.sock.getsockname()[0]}:{port}", seq=port,
                               transport="TCP")
            with contextlib.suppress(OSError):
                conn.sock.send(head[: head.index(b"\r\nTo:")])  # a head cut short: no blank line, ever
        self.poller.modify(conn.sock, select.POLLIN)

    def _drop(self, fd: int, outcome: str, now: float) -> None:
        conn = self.conns.pop(fd)
        self.poller.unregister(fd)
        conn.sock.close()
        self.counts[f"{conn.kind}-{outcome}"] += 1
        if outcome == "closed-by-agent":
            self.lifetimes[conn.kind].append(now - conn.connected_at)

    def tick(self, now: float) -> None:
        for fd, _ in self.poller.poll(0):
            conn = self.conns[fd]
            if not conn.connected_at:
                if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._drop(fd, "connect-failed", now)
                else:
                    self._connected(conn, now)
                continue
            try:
                data = conn.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:  # reset by the agent
                self._drop(fd, "closed-by-agent", now)
                continue
            if not data:
                self._drop(fd, "closed-by-agent", now)
            else:
                self.counts[f"{conn.kind}-answered"] += 1  # e.g. a 408/400 before the agent closes
        for fd, conn in list(self.conns.items()):
            if not conn.connected_at and now - conn.started > 3.0:
                self._drop(fd, "connect-failed", now)  # no SYN-ACK: the agent's accept queue is full
        for kind, check_s in (("stalled", self.plan.tcp_message_s), ("idle", self.plan.tcp_idle_s)):
            if self.held_after[kind] is None and now - self.started >= check_s + 1.5:
                self.held_after[kind] = sum(c.initial and c.kind == kind for c in self.conns.values())
        # Top up what the agent closed, at most tcp_new_per_s: a bounded attacker.
        self._budget = min(self._budget + (now - self._last) * self.plan.tcp_new_per_s, self.plan.tcp_new_per_s)
        self._last = now
        for kind, target in self.targets.items():
            while self._budget >= 1 and sum(c.kind == kind for c in self.conns.values()) < target:
                self._budget -= 1
                self._open(kind, now)

    def close(self) -> dict[str, Any]:
        """Leave: close every connection, and say what the agent did to them."""
        open_now = collections.Counter(c.kind for c in self.conns.values() if c.connected_at)
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        out: dict[str, Any] = {}
        for kind in self.targets:
            lifetimes = self.lifetimes[kind]
            out[kind] = {
                "target": self.targets[kind], "opened": self.counts[f"{kind}-opened"],
                "connect_failed": self.counts[f"{kind}-connect-failed"],
                "closed_by_agent": self.counts[f"{kind}-closed-by-agent"],
                "answered": self.counts[f"{kind}-answered"],
                "closed_after_p50_s": float(np.median(lifetimes)) if lifetimes else None,
                "closed_after_max_s": max(lifetimes) if lifetimes else None,
                "initial": self.initial[kind], "initial_held_after_check": self.held_after[kind],
                "open_at_end": open_now[kind],
            }
        return out


class Flood:
    """The UDP attackers, the third party a forged Via names, and the TCP slow-loris, on one poll loop."""

    def __init__(self, plan: FloodPlan) -> None:
        self.plan = plan
        self.trusted = _udp(TRUSTED)  # a compromised or spoofed host inside the trusted range
        self.stranger = _udp(STRANGER)
        self.third_party = _udp(THIRD_PARTY)
        self.rtp = _udp(STRANGER)
        self.tcp = TcpLoris(plan)
        self.victim = "{}:{}".format(*self.third_party.getsockname())
        self.rtp_targets = list(range(plan.rtp_ports[0] + plan.rtp_ports[0] % 2, plan.rtp_ports[1] + 1, 2))
        # Per port: its own SSRC, sequence and timestamp, so each looks like a real stream.
        self.rtp_state = [[0x5EED0000 + i, i * 1000, i * 160_000] for i in range(len(self.rtp_targets))]
        tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(160) / 8000)).astype("<i2").tobytes()
        self.rtp_payload = ulaw_encode(tone)
        self.sent: collections.Counter[str] = collections.Counter()
        self.received: collections.Counter[str] = collections.Counter()
        self.first_reflection = ""
        self.first_rtp_back = ""
        self.poller = select.poll()
        self.listening = {sock.fileno(): (name, sock) for name, sock in (
            ("answers-to-127.0.0.1", self.trusted), ("answers-to-stranger", self.stranger),
            ("third-party", self.third_party), ("rtp-back", self.rtp))}
        for _, sock in self.listening.values():
            self.poller.register(sock, select.POLLIN)

    def _sip_datagram(self, n: int) -> tuple[str, socket.socket, bytes]:
        kind = SIP_MIX[n % len(SIP_MIX)]
        target = self.plan.sip
        rport = n % 2 == 0
        if kind == "hostname-via":
            return kind, self.trusted, sip_request("OPTIONS", target, via=f"host-{n}.invalid:5060", seq=n, rport=rport)
        if kind == "forged-via":
            variant = (n // len(SIP_MIX)) % 4
            via = self.victim
            if variant == 0:
                data = sip_request("INVITE", target, via=via, seq=n, user="9999-premium", body=OFFER, rport=rport)
            elif variant == 1:
                data = sip_request("INVITE", target, via=via, seq=n, body="v=0\r\nnot sdp\r\n", rport=rport)
            elif variant == 2:
                data = sip_request("OPTIONS", target, via=via, seq=n, rport=rport)
            else:
                data = sip_request("BYE", target, via=via, seq=n, to_tag="nodialog", rport=rport)
            return kind, self.trusted, data
        if kind == "stranger-invite":
            via = "{}:{}".format(*self.stranger.getsockname())
            return kind, self.stranger, sip_request("INVITE", target, via=via, seq=n, body=OFFER)
        variant = (n // len(SIP_MIX)) % 4
        if variant == 0:
            data = sip_request("OPTIONS", target, via=f"{TRUSTED}:5060", seq=n, pad=40000)  # > max_message_bytes
        elif variant == 1:
            data = b"X" * 60000
        elif variant == 2:
            data = b"\x16\x03\x01\x00\xc8" + os.urandom(200)  # a TLS ClientHello on the UDP port
        else:
            data = b"INVITE sip:agent@" + b"\x00\xff" * 400
        return "garbage", self.trusted, data

    def _send_due(self, elapsed: float) -> None:
        for kind, rate in (("sip", self.plan.rate), ("rtp", self.plan.rtp_rate)):
            due = int(elapsed * rate) - self.sent[f"{kind}-slots"]
            # A fixed rate: after a stall, at most 50 ms of backlog is sent, the rest is skipped (and counted).
            skip = max(0, due - max(1, rate // 20))
            self.sent[f"{kind}-slots"] += skip
            self.sent[f"{kind}-skipped"] += skip
            for _ in range(due - skip):
                n = self.sent[f"{kind}-slots"]
                self.sent[f"{kind}-slots"] += 1
                try:
                    if kind == "sip":
                        name, sock, data = self._sip_datagram(n)
                        sock.sendto(data, self.plan.sip)
                    else:
                        name = "foreign-rtp"
                        self._send_rtp(n)
                except OSError:  # a full send buffer: the datagram is lost, as on a real network
                    self.sent["send-errors"] += 1
                    continue
                self.sent[name] += 1

    def _send_rtp(self, n: int) -> None:
        index = n % len(self.rtp_targets)
        state = self.rtp_state[index]
        ssrc, seq, ts = state
        packet = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + self.rtp_payload
        state[1], state[2] = seq + 1, ts + 160
        self.rtp.sendto(packet, (self.plan.sip[0], self.rtp_targets[index]))

    def _receive(self, timeout_ms: int) -> None:
        for fd, _ in self.poller.poll(timeout_ms):
            name, sock = self.listening[fd]
            while True:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:  # an ICMP error reported on the socket: nothing was received
                    self.received["icmp"] += 1
                    continue
                self.received[name] += 1
                self.received[name + "-bytes"] += len(data)
                if name == "third-party" and not self.first_reflection:
                    self.first_reflection = f"from {addr[0]}:{addr[1]}: {data[:80]!r}"
                if name == "rtp-back" and not self.first_rtp_back:
                    self.first_rtp_back = f"from {addr[0]}:{addr[1]}, {len(data)} bytes"

    def serve(self, commands: queue.Queue[str]) -> None:
        """Listen until "go", flood for plan.seconds (then report), keep listening until "stop"."""
        started = end = next_tcp = 0.0
        flooding = False
        hard_stop = time.monotonic() + 3 * self.plan.seconds + 600  # never outlive a bench that went away
        while time.monotonic() < hard_stop:
            with contextlib.suppress(queue.Empty):
                command = commands.get_nowait()
                if command == "go" and not flooding and not started:
                    started = time.monotonic()
                    end, flooding = started + self.plan.seconds, True
                    self.tcp.start(started)
                elif command == "stop":
                    break
            now = time.monotonic()
            if flooding and now >= end:
                flooding = False
                summary = {"sent": dict(self.sent), "seconds": now - started, "tcp": self.tcp.close()}
                print(json.dumps({"flood": summary}), flush=True)
            elif flooding:
                self._send_due(now - started)
                if now >= next_tcp:
                    self.tcp.tick(now)
                    next_tcp = now + 0.1
            self._receive(2 if flooding else 50)
        print(json.dumps({"final": {"received": dict(self.received), "first_reflection": self.first_reflection,
                                    "first_rtp_back": self.first_rtp_back}}), flush=True)


def flood_main(plan_json: str) -> int:
    data = json.loads(plan_json)
    plan = FloodPlan(**{**data, "sip": tuple(data["sip"]), "rtp_ports": tuple(data["rtp_ports"]),
                        "tcp": tuple(data["tcp"])})
    flood = Flood(plan)
    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("stop")  # the bench went away

    threading.Thread(target=read_commands, daemon=True).start()
    print(json.dumps({"ready": True, "third_party": flood.victim}), flush=True)
    flood.serve(commands)
    return 0


# ============================================================================ the bench (this process)


class FloodProcess:
    """``abuse.py flood PLAN`` as a child: "go" starts the flood, "stop" ends the listening and returns counts."""

    def __init__(self, plan: FloodPlan, cpus: str | None) -> None:
        self.plan = plan
        self.cpus = cpus
        self.proc: subprocess.Popen[str] | None = None
        self.stats: ProcStats | None = None
        self.third_party = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*taskset(self.cpus), sys.executable, str(Path(__file__).resolve()), "flood",
             json.dumps(asdict(self.plan))],
            cwd=REPO, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.stats = ProcStats(self.proc.pid)
        self.third_party = read_json_line(self.proc, 30)["third_party"]

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_flood(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        summary: dict[str, Any] = read_json_line(self.proc, timeout)["flood"]
        return summary

    def stop(self) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            return {}
        try:
            self.command("stop")
            final: dict[str, Any] = read_json_line(self.proc, 10)["final"]
            return final
        finally:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class OptionsProber(threading.Thread):
    """Once a second, an OPTIONS over a fresh TCP connection from 127.0.0.1, timed from connect to answer."""

    def __init__(self, target: tuple[str, int], every: float = 1.0, timeout: float = 3.0) -> None:
        super().__init__(daemon=True)
        self.target, self.every, self.timeout = target, every, timeout
        self.samples: list[tuple[float, float | None]] = []  # (when, seconds to a 200, or None)
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(self.every):
            n += 1
            started = time.monotonic()
            self.samples.append((started, self._probe(n, started)))

    def _probe(self, n: int, started: float) -> float | None:
        try:
            with socket.create_connection(self.target, self.timeout, source_address=(TRUSTED, 0)) as sock:
                via = "{}:{}".format(*sock.getsockname())
                sock.sendall(sip_request("OPTIONS", self.target, via=via, seq=n, transport="TCP"))
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return None
                    answer += chunk
                return time.monotonic() - started if answer.startswith(b"SIP/2.0 200") else None
        except OSError:
            return None

    def window(self, t0: float, t1: float) -> dict[str, float]:
        inside = [s for when, s in self.samples if t0 <= when < t1]
        figures = percentiles_ms([s for s in inside if s is not None], (50, 99))
        figures["failed"] = sum(s is None for s in inside)
        figures["n"] = len(inside)
        return figures


@dataclass
class Probe:
    setup_ms: float | None  # None: not answered
    heard: bool


async def probe_calls(target: str, clock: MediaClock, ports: PortAllocator, every: float, until: float,
                      results: list[Probe]) -> None:
    """A fresh call every ``every`` s: answered? how fast? does it hear the agent within two seconds?"""
    n = 0
    while time.monotonic() + every <= until:
        await asyncio.sleep(every - 2.5)
        n += 1
        caller = QuietCaller(clock, ports, target, codec="PCMU", user=f"probe{n}")
        started = time.monotonic()
        try:
            await caller.dial(timeout=5.0)
        except Exception:
            results.append(Probe(None, False))
            await caller.hangup()
            await asyncio.sleep(2.5)
            continue
        setup = time.monotonic() - started
        await asyncio.sleep(2.0)
        results.append(Probe(setup * 1e3, caller.heard.audio_frames > 0))
        await caller.hangup()
        await asyncio.sleep(0.5)


@dataclass
class Window:
    name: str
    inside: dict[str, Any]  # the agent's own report (deviation, underruns, audio frames)
    cpu_pct: float
    rss_mb: float  # peak over the window's once-a-second samples, as tcp_rss_mb and tcp_sockets
    sip_drops: int
    rtp_drops: int
    metrics: dict[str, float]
    shed: dict[str, float]  # counted during the window, by reason
    probes: list[Probe]
    log_lines: list[str]
    options: dict[str, float]
    tcp_cpu_pct: float
    tcp_rss_mb: float
    tcp_sockets: int
    tcp_shed: dict[str, float]
    context_cpu: dict[str, float] = field(default_factory=dict)  # backend, flood, this process


@dataclass
class Rig:
    """Everything the windows measure."""

    agent: AgentProcess
    agent_metrics: int
    sip_port: int
    rtp: tuple[int, int]
    tcp_agent: AgentProcess
    tcp_metrics: int
    backend: BackendProcess
    flood: FloodProcess
    prober: OptionsProber
    clock: MediaClock
    ports: PortAllocator
    log_path: Path
    probe_every: float


def shed_counts(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len(SHED_PREFIX) + 1 : -2]: v for k, v in metrics.items() if k.startswith(SHED_PREFIX)}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


async def measure(rig: Rig, name: str, seconds: float, flood: bool) -> Window:
    agent, tcp_agent = rig.agent.stats, rig.tcp_agent.stats
    assert agent is not None and tcp_agent is not None
    others = {k: s for k, s in (("backend", rig.backend.stats), ("flood", rig.flood.stats)) if s is not None}
    before = scrape_metrics(rig.agent_metrics)
    tcp_before = scrape_metrics(rig.tcp_metrics)
    log_at = rig.log_path.stat().st_size
    drops0 = agent.udp_drops(rig.sip_port, rig.sip_port), agent.udp_drops(*rig.rtp)
    await asyncio.to_thread(rig.agent.request, "reset")  # the window starts now (computing nothing)
    t0 = time.monotonic()
    cpu0, tcp_cpu0, bench0 = agent.cpu_seconds(), tcp_agent.cpu_seconds(), time.process_time()
    other0 = {k: s.cpu_seconds() for k, s in others.items()}
    if flood:
        rig.flood.command("go")
    peaks: collections.Counter[str] = collections.Counter()
    sampler = asyncio.create_task(sample_peaks({"udp": agent, "tcp": tcp_agent}, peaks))
    probes: list[Probe] = []
    await probe_calls(f"sip:agent@127.0.0.1:{rig.sip_port}", rig.clock, rig.ports, rig.probe_every, t0 + seconds,
                      probes)
    await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
    inside = await asyncio.to_thread(rig.agent.request, "report")
    wall = time.monotonic() - t0
    sampler.cancel()
    cpu, tcp_cpu = agent.cpu_seconds() - cpu0, tcp_agent.cpu_seconds() - tcp_cpu0
    context = {k: 100 * (others[k].cpu_seconds() - v) / wall for k, v in other0.items()}
    context["callers"] = 100 * (time.process_time() - bench0) / wall
    after, tcp_after = scrape_metrics(rig.agent_metrics), scrape_metrics(rig.tcp_metrics)
    with rig.log_path.open("rb") as log:
        log.seek(log_at)
        lines = log.read().decode(errors="replace").splitlines()
    return Window(
        name, inside, 100 * cpu / wall, peaks["udp-rss-kb"] / 1024,
        agent.udp_drops(rig.sip_port, rig.sip_port) - drops0[0], agent.udp_drops(*rig.rtp) - drops0[1],
        after, delta(shed_counts(after), shed_counts(before)), probes, lines, rig.prober.window(t0, t0 + wall),
        100 * tcp_cpu / wall, peaks["tcp-rss-kb"] / 1024, peaks["tcp-sockets"],
        delta(shed_counts(tcp_after), shed_counts(tcp_before)), context)


async def sample_peaks(processes: dict[str, ProcStats], peaks: collections.Counter[str]) -> None:
    """Once a second until cancelled: the highest RSS and socket count of each process (the flood's
    connections are gone by the end of its window, so an end-of-window sample would miss them)."""
    while True:
        for name, stats in processes.items():
            sample = stats.sample()
            peaks[f"{name}-rss-kb"] = max(peaks[f"{name}-rss-kb"], sample.rss_kb)
            peaks[f"{name}-sockets"] = max(peaks[f"{name}-sockets"], sample.sockets)
        await asyncio.sleep(1.0)


async def dial_all(target: str, n: int, clock: MediaClock, ports: PortAllocator) -> list[QuietCaller]:
    gate = asyncio.Semaphore(10)
    callers = [QuietCaller(clock, ports, target, codec="PCMU", user=f"held{i}") for i in range(n)]

    async def dial(caller: QuietCaller) -> None:
        async with gate:
            await caller.dial(timeout=15.0)

    results = await asyncio.gather(*(dial(c) for c in callers), return_exceptions=True)
    return [c for c, r in zip(callers, results, strict=True) if not isinstance(r, BaseException)]


def agent_configs(args: argparse.Namespace, workdir: Path, backend_url: str) -> tuple[Path, Path, dict[str, Any]]:
    """The UDP agent under test and the idle TCP agent; both trust 127.0.0.1 only and serve /metrics."""
    ports: dict[str, Any] = {"sip": free_udp_port(), "metrics": free_tcp_port(), "tcp": free_tcp_port(),
                             "tcp_metrics": free_tcp_port()}
    rtp_lo = 46000 + (os.getpid() % 50) * 200
    ports["rtp"] = (rtp_lo, rtp_lo + 2 * (args.calls + 10) - 1)  # small, so the RTP flood reaches every port
    greeting = " ".join([LONG_GREETING] * math.ceil((2 * args.seconds + args.settle + 30) / 30))
    udp = agent_config(ports["sip"], rtp_ports="{}-{}".format(*ports["rtp"]), greeting=greeting,
                       realtime_url=backend_url)
    udp["sip"]["trusted_hosts"] = [TRUSTED]
    udp["metrics"]["listen"] = f"127.0.0.1:{ports['metrics']}"
    udp["logging"]["level"] = "info"  # as deployed (the example configuration): the log volume is a figure
    tcp = agent_config(ports["tcp"], rtp_ports=f"{ports['rtp'][1] + 1}-{ports['rtp'][1] + 20}",
                       realtime_url=backend_url)
    tcp["sip"].update({"transport": "tcp", "trusted_hosts": [TRUSTED],
                       "limits": {"tcp_message_s": args.tcp_message_s, "tcp_idle_s": args.tcp_idle_s}})
    tcp["metrics"]["listen"] = f"127.0.0.1:{ports['tcp_metrics']}"
    tcp["logging"]["level"] = "info"
    return (write_config(workdir / "abuse-udp.yaml", udp), write_config(workdir / "abuse-tcp.yaml", tcp), ports)


async def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    harness = "1" if args.pin else None
    backend = BackendProcess(workdir / "abuse-udp.yaml", free_tcp_port(), cpus=harness, lead_ms=args.backend_lead_ms)
    udp_path, tcp_path, ports = agent_configs(args, workdir, backend.url)
    log_path = workdir / "agent.log"
    agent = AgentProcess(udp_path, log_path=log_path, cpus="0" if args.pin else None)
    tcp_agent = AgentProcess(tcp_path, log_path=workdir / "tcp-agent.log", cpus=harness)
    plan = FloodPlan(sip=("127.0.0.1", ports["sip"]), rtp_ports=ports["rtp"], tcp=("127.0.0.1", ports["tcp"]),
                     seconds=args.seconds, rate=args.rate, rtp_rate=args.rtp_rate, tcp_conns=args.tcp_conns,
                     tcp_sources=args.tcp_sources, tcp_new_per_s=args.tcp_new_per_s,
                     tcp_message_s=args.tcp_message_s, tcp_idle_s=args.tcp_idle_s)
    flood = FloodProcess(plan, harness)
    prober = OptionsProber(("127.0.0.1", ports["tcp"]))
    clock = MediaClock()
    callers: list[QuietCaller] = []
    result: dict[str, Any] = {"plan": plan}
    try:
        backend.start()
        agent.start()
        tcp_agent.start()
        flood.start()
        result["third_party"] = flood.third_party
        clock.start()
        prober.start()
        await asyncio.sleep(0.5)
        assert agent.stats is not None and tcp_agent.stats is not None
        result["idle_rss_mb"] = agent.stats.sample().rss_kb / 1024
        result["tcp_idle_rss_mb"] = tcp_agent.stats.sample().rss_kb / 1024
        caller_ports = PortAllocator(30000, 39999)
        callers = await dial_all(f"sip:agent@127.0.0.1:{ports['sip']}", args.calls, clock, caller_ports)
        result["held"] = len(callers)
        deadline = time.monotonic() + 15.0  # the windows open once every caller hears its greeting
        while time.monotonic() < deadline and any(c.heard.audio_frames == 0 for c in callers):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        rig = Rig(agent, ports["metrics"], ports["sip"], ports["rtp"], tcp_agent, ports["tcp_metrics"], backend,
                  flood, prober, clock, caller_ports, log_path, args.probe_every)
        print(f"measuring: {len(callers)} calls up; {args.seconds:g} s without the flood, then {args.seconds:g} s "
              "with it", flush=True)
        quiet = await measure(rig, "no flood", args.seconds, flood=False)
        loud = await measure(rig, "flood", args.seconds, flood=True)
        result["windows"] = [quiet, loud]
        result["flood"] = await asyncio.to_thread(flood.wait_flood, 30)
        await asyncio.sleep(args.settle)  # late answers (retransmissions) still reach the listeners
        result["settled"] = {"rss_mb": agent.stats.sample().rss_kb / 1024,
                             "metrics": scrape_metrics(ports["metrics"])}
        result["still_up"] = sum(not c.ended.is_set() for c in callers)
        await asyncio.gather(*(c.hangup() for c in callers), return_exceptions=True)
        callers = []
        await asyncio.sleep(1.0)  # foreign RTP is counted into the metrics when each call ends
        result["after_hangup"] = scrape_metrics(ports["metrics"])
    finally:
        await asyncio.gather(*(c.hangup() for c in callers), return_exceptions=True)
        prober.stopping.set()
        clock.stop()
        result["final"] = flood.stop()
        agent.stop()
        tcp_agent.stop()
        backend.stop()
    return result


# ============================================================================ report


def log_patterns(lines: list[str], top: int = 3) -> list[tuple[int, str]]:
    """The most repeated log lines, numbers, hex ids and host names blanked out."""
    def pattern(line: str) -> str:
        line = re.sub(r"^\S+ \S+ ", "", line)  # timestamp
        line = re.sub(r"[0-9a-f]{8,}\S*", "…", line)
        return re.sub(r"\d+", "#", line)[:110]

    counts = collections.Counter(pattern(line) for line in lines)
    return [(n, text) for text, n in counts.most_common(top)]


def print_report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    quiet, loud = result["windows"]
    plan: FloodPlan = result["plan"]

    def row(label: str, a: str, b: str, ratio: str = "") -> None:
        print(f"  {label:<44} {a:>14} {b:>14} {ratio:>10}")

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}x" if a > 0 else "-"

    def probes(w: Window) -> str:
        answered = [p for p in w.probes if p.setup_ms is not None]
        return f"{len(answered)}/{len(w.probes)} {sum(p.heard for p in w.probes)}"

    def latched(w: Window) -> int:  # the endpoint logs each latch to a source other than the signalled one
        return sum(f": latched to {STRANGER}:" in line for line in w.log_lines)

    def setup(w: Window) -> str:
        times = [p.setup_ms for p in w.probes if p.setup_ms is not None]
        return f"{np.median(times):.0f} / {max(times):.0f}" if times else "-"

    print(f"\nheld calls answered: {result['held']}/{args.calls}; UDP agent idle RSS {result['idle_rss_mb']:.1f} MB")
    print(f"UDP agent, {result['held']} calls held{'':<20} {'no flood':>14} {'flood':>14} {'flood/no':>10}")
    qd, ld = quiet.inside["dev"], loud.inside["dev"]
    row("RTP send deviation p50 ms", f"{qd['p50']:.3f}", f"{ld['p50']:.3f}")
    row("RTP send deviation p99 ms", f"{qd['p99']:.3f}", f"{ld['p99']:.3f}", ratio(qd["p99"], ld["p99"]))
    row("RTP send deviation max ms", f"{qd['max']:.2f}", f"{ld['max']:.2f}")
    row("underruns (events/frames)", f"{quiet.inside['underruns']}/{quiet.inside['underrun_frames']}",
        f"{loud.inside['underruns']}/{loud.inside['underrun_frames']}")
    row("agent audio frames played", str(quiet.inside["audio_frames"]), str(loud.inside["audio_frames"]))
    row("agent CPU %", f"{quiet.cpu_pct:.1f}", f"{loud.cpu_pct:.1f}", ratio(quiet.cpu_pct, loud.cpu_pct))
    row("agent RSS MB (peak)", f"{quiet.rss_mb:.1f}", f"{loud.rss_mb:.1f}", ratio(quiet.rss_mb, loud.rss_mb))
    row("new calls answered/placed, heard agent", probes(quiet), probes(loud))
    row("new call setup p50 / max ms", setup(quiet), setup(loud))
    row("kernel drops at SIP / RTP sockets", f"{quiet.sip_drops} / {quiet.rtp_drops}",
        f"{loud.sip_drops} / {loud.rtp_drops}")
    row("SIP server transactions (end)", f"{quiet.metrics.get('sipagent_sip_server_transactions', 0):.0f}",
        f"{loud.metrics.get('sipagent_sip_server_transactions', 0):.0f}")
    for reason in sorted(set(quiet.shed) | set(loud.shed)):
        row(f"shed: {reason}", f"{quiet.shed.get(reason, 0):.0f}", f"{loud.shed.get(reason, 0):.0f}")
    row("agent log lines", str(len(quiet.log_lines)), str(len(loud.log_lines)))
    row("RTP latched to the foreign source (log)", str(latched(quiet)), str(latched(loud)))
    row("CPU % backend / flood / callers",
        " / ".join(f"{quiet.context_cpu.get(k, 0):.0f}" for k in ("backend", "flood", "callers")),
        " / ".join(f"{loud.context_cpu.get(k, 0):.0f}" for k in ("backend", "flood", "callers")))

    print(f"\nTCP agent, idle (tcp_message_s {args.tcp_message_s:g}, tcp_idle_s {args.tcp_idle_s:g}; idle RSS "
          f"{result['tcp_idle_rss_mb']:.1f} MB)")
    qo, lo = quiet.options, loud.options
    row("OPTIONS answer p50 ms (connect + answer)", f"{qo['p50']:.2f}", f"{lo['p50']:.2f}")
    row("OPTIONS answer p99 ms", f"{qo['p99']:.2f}", f"{lo['p99']:.2f}", ratio(qo["p99"], lo["p99"]))
    row("OPTIONS unanswered (3 s) / sent", f"{qo['failed']:.0f}/{qo['n']:.0f}", f"{lo['failed']:.0f}/{lo['n']:.0f}")
    row("agent CPU %", f"{quiet.tcp_cpu_pct:.1f}", f"{loud.tcp_cpu_pct:.1f}")
    row("agent RSS MB (peak)", f"{quiet.tcp_rss_mb:.1f}", f"{loud.tcp_rss_mb:.1f}")
    row("agent sockets (peak)", str(quiet.tcp_sockets), str(loud.tcp_sockets))
    for reason in sorted(set(quiet.tcp_shed) | set(loud.tcp_shed)):
        row(f"shed: {reason}", f"{quiet.tcp_shed.get(reason, 0):.0f}", f"{loud.tcp_shed.get(reason, 0):.0f}")

    flood = result["flood"]
    sent = flood["sent"]
    final = result.get("final", {})
    received = final.get("received", {})
    secs = flood["seconds"]
    kinds = ("hostname-via", "forged-via", "stranger-invite", "garbage", "foreign-rtp")
    print(f"\nflood, {secs:.1f} s: " + ", ".join(f"{k} {sent.get(k, 0)}" for k in kinds)
          + f" ({(sum(sent.get(k, 0) for k in kinds[:4])) / secs:.0f} SIP/s, {sent.get('foreign-rtp', 0) / secs:.0f}"
          f" RTP/s at {(plan.rtp_ports[1] - plan.rtp_ports[0] + 1) // 2} ports; skipped {sent.get('sip-skipped', 0)}"
          f" + {sent.get('rtp-skipped', 0)}, send errors {sent.get('send-errors', 0)})")
    print(f"  answers to the sources: 127.0.0.1 {received.get('answers-to-127.0.0.1', 0)}, stranger "
          f"{received.get('answers-to-stranger', 0)}")
    for kind, t in flood["tcp"].items():
        check = args.tcp_message_s if kind == "stalled" else args.tcp_idle_s
        held = t["initial_held_after_check"]
        closed = (f"closed after p50 {t['closed_after_p50_s']:.1f} s, max {t['closed_after_max_s']:.1f} s"
                  if t["closed_after_p50_s"] is not None else "none closed")
        print(f"  TCP {kind}: {t['target']} kept up from {plan.tcp_sources} addresses; of the first {t['initial']}, "
              f"{'n/a' if held is None else held} still open {check + 1.5:g} s later; opened {t['opened']}, "
              f"closed by the agent {t['closed_by_agent']} ({closed}), answered {t['answered']}, connect failed "
              f"{t['connect_failed']}, open at the end {t['open_at_end']}")
    for n, text in log_patterns(loud.log_lines):
        print(f"  agent log during the flood: {n} x {text}")
    settled = result["settled"]
    print(f"  {args.settle:g} s after the flood: agent RSS {settled['rss_mb']:.1f} MB, SIP server transactions "
          f"{settled['metrics'].get('sipagent_sip_server_transactions', 0):.0f}; held calls still up "
          f"{result['still_up']}/{result['held']}")
    foreign = result["after_hangup"].get("sipagent_rtp_foreign_packets_total", 0)
    print(f"  foreign RTP packets the agent dropped (counted at hang-up): {foreign:.0f}")

    reflected = received.get("third-party", 0)
    back = received.get("rtp-back", 0)
    print("\nmust be zero:")
    first = f" first {final['first_reflection']}" if reflected else ""
    print(f"  responses to third parties: {reflected} (datagrams at {result['third_party']}, "
          f"{received.get('third-party-bytes', 0)} bytes, the whole run){first}")
    print(f"  packets back to the foreign RTP source: {back}"
          f"{' (' + final['first_rtp_back'] + ', our audio sent to an attacker)' if back else ''}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "flood":
        return flood_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="normal calls held through both windows")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each window (and of the flood)")
    parser.add_argument("--rate", type=int, default=2000, help="SIP datagrams per second in the flood")
    parser.add_argument("--rtp-rate", type=int, default=1000, help="foreign RTP packets per second")
    parser.add_argument("--tcp-conns", type=int, default=200, help="half-open TCP connections kept up")
    parser.add_argument("--tcp-sources", type=int, default=8, help="addresses they come from (127.0.0.10…)")
    parser.add_argument("--tcp-new-per-s", type=int, default=100, help="at most this many re-opened per second")
    parser.add_argument("--tcp-message-s", type=float, default=2.0, help="the TCP agent's sip.limits.tcp_message_s")
    parser.add_argument("--tcp-idle-s", type=float, default=5.0, help="the TCP agent's sip.limits.tcp_idle_s")
    parser.add_argument("--probe-every", type=float, default=5.0, help="a new call every this many seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to listen on after the flood")
    parser.add_argument("--pin", action="store_true",
                        help="the UDP agent on CPU 0 alone; callers, backend, flood and TCP agent on CPU 1")
    parser.add_argument("--backend-lead-ms", type=int, default=100, metavar="MS",
                        help="how far ahead of real time the backend streams the greeting (as bench/load.py)")
    args = parser.parse_args()
    if args.probe_every < 3:
        parser.error("--probe-every must be at least 3 s (a probe call is held 2 s)")
    if args.pin:
        pin("1")  # before any thread: the callers' loop and the prober inherit it
    print(f"abuse: {args.calls} calls held through two {args.seconds:g} s windows (no flood, then flood), a new call "
          f"every {args.probe_every:g} s; flood: SIP {args.rate}/s, foreign RTP {args.rtp_rate}/s, "
          f"{args.tcp_conns} half-open TCP connections against a second agent; "
          f"{'UDP agent pinned to CPU 0, the rest to CPU 1' if args.pin else 'no CPU pinning'}; "
          f"backend lead {args.backend_lead_ms} ms; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="sipagent-abuse-") as tmp:
        result = run_loop(run_bench(args, Path(tmp)))
    print_report(args, result)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
