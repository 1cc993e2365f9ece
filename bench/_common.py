"""Shared pieces of the load, latency and soak benchmarks.

- ``write_config``: a direct-mode agent configuration on loopback with the local backend in-process, or at
  ``realtime_url`` (a backend in another process, as a real deployment's model runs elsewhere).
- ``BackendProcess``: ``sipagent local-realtime --listen 127.0.0.1:PORT -c CONFIG`` as its own OS process.
- ``pin``/``taskset``: CPU pinning (``taskset -c``), so the agent can have a core to itself.
- ``AgentProcess``: runs the agent in its own OS process exactly as ``sipagent run -c FILE`` does
  (``sipagent.agent.run_agent``), with two observers installed before it starts: the media clock's
  ``probe`` (send time minus the 20 ms deadline, for every packet of every call, measured inside the agent)
  and a playout observer counting underruns (the playout queue ran dry between two audio frames of one
  utterance). The bench talks to it over stdin/stdout, one JSON line per request.
- ``ProcStats``: CPU, RSS, threads, fds, sockets of a pid from /proc, and kernel drops at its UDP sockets.
- ``scrape_metrics``: the agent's Prometheus counters (``metrics.listen``) as a dict.
- ``read_json_line``: one JSON line from a child's stdout, with a timeout (the benches' control channel).
- ``QuietCaller``: the project's SipCaller with a cheap receive path (counts frames, keeps no audio), so one
  bench process can hold hundreds of calls.

Run as ``python -m bench._common agent CONFIG`` (what AgentProcess does).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sipagent.media.kernel import CODEC_SILENCE, DecoderBatch, EncoderBatch, FrameDecoder
from sipagent.media.pcm_playout import PcmPlayout
from sipagent.media.playout import PlayoutQueue
from sipagent.testing.caller import SipCaller

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

LONG_GREETING = (
    "Thanks for calling Northwind Outfitters. All of our colleagues are helping other customers right now, "
    "so please stay on the line. While you wait, you can ask me about the status of an order, about "
    "returns and refunds, or about our opening hours. Orders placed before noon ship the same day, and "
    "returns are free within thirty days of delivery. If you would rather talk to a person, just say so "
    "and I will put you through to the next available colleague as soon as one is free. "
    "Thank you for your patience, and thank you for shopping with Northwind."
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_config(
    sip_port: int,
    *,
    rtp_ports: str = "20000-29999",
    max_calls: int = 1000,
    greeting: str = LONG_GREETING,
    barge_in: dict[str, Any] | None = None,
    silence_ms: int = 500,
    response_delay_ms: int = 200,
    fallback: str = "Sorry, I can help with orders and returns.",
    codecs: tuple[str, ...] = ("PCMU",),
    jitter_ms: int = 60,
    realtime_url: str = "",
    audio_format: str = "pcm16",
    srtp: bool = False,
) -> dict[str, Any]:
    """A direct-mode agent on 127.0.0.1 with the local backend in-process, or at ``realtime_url`` (a
    ``sipagent local-realtime`` in another process); nothing written to disk. ``srtp``: SRTP required, its
    SDES keys taken over the benchmark's plain UDP signalling (loopback)."""
    secure = {"srtp": "required", "srtp_over_insecure_signalling": True} if srtp else {}
    return {
        "sip": {"registrar": "", "username": "agent", "listen": f"127.0.0.1:{sip_port}",
                "max_calls": max_calls},
        "media": {"rtp_ports": rtp_ports, "codecs": list(codecs), "jitter_ms": jitter_ms, **secure},
        "realtime": {
            "provider": "local", "url": realtime_url, "audio_format": audio_format, "instructions": "bench",
            "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms},
            "local": {
                "response_delay_ms": response_delay_ms,
                "vad": {"threshold_db": -40, "min_speech_ms": 200, "silence_ms": silence_ms},
                "intents": [],
                "fallback": fallback,
            },
        },
        "agent": {
            "greeting": greeting,
            "barge_in": barge_in or {"mode": "server", "min_speech_ms": 200, "protect_greeting_ms": 1000},
            "idle_timeout_s": 0,  # no idle prompts: the only agent audio is what the bench provokes
            "shutdown_grace_s": 0,
            "tools": [],
        },
        "recording": {"dir": "/tmp", "transcripts": False, "audio": False},
        "metrics": {"listen": ""},
        "logging": {"level": "warning", "format": "text"},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def percentiles_ms(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {**{f"p{q:g}": float("nan") for q in qs}, "max": float("nan"), "n": 0}
    out: dict[str, float] = {f"p{q:g}": float(np.percentile(arr, q)) * 1e3 for q in qs}
    out["max"] = float(arr.max()) * 1e3
    out["n"] = float(arr.size)
    return out


# ------------------------------------------------------------------------------------- /proc readers


@dataclass
class ProcSample:
    cpu_s: float
    rss_kb: int
    threads: int
    fds: int
    sockets: int


class ProcStats:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all threads), from /proc/PID/stat."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the process, from /proc/PID/stat."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def sample(self) -> ProcSample:
        status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        values = dict(line.split(":", 1) for line in status if ":" in line)
        fd_dir = f"/proc/{self.pid}/fd"
        links = []
        for name in os.listdir(fd_dir):
            try:
                links.append(os.readlink(f"{fd_dir}/{name}"))
            except OSError:
                continue
        return ProcSample(
            cpu_s=self.cpu_seconds(),
            rss_kb=int(values["VmRSS"].split()[0]),
            threads=int(values["Threads"]),
            fds=len(links),
            sockets=sum(link.startswith("socket:") for link in links),
        )

    def udp_ports_in(self, lo: int, hi: int) -> int:
        """UDP sockets bound on 127.0.0.1 ports lo..hi owned by this process (RTP and RTCP)."""
        inodes = self._socket_inodes()
        count = 0
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            parts = line.split()
            port = int(parts[1].split(":")[1], 16)
            if lo <= port <= hi and parts[9] in inodes:
                count += 1
        return count

    def udp_drops(self, lo: int, hi: int) -> int:
        """Datagrams the kernel dropped (receive buffer full) at this process's UDP sockets on ports lo..hi:
        what arrived faster than the process read it."""
        inodes = self._socket_inodes()
        drops = 0
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            parts = line.split()
            if lo <= int(parts[1].split(":")[1], 16) <= hi and parts[9] in inodes:
                drops += int(parts[12])
        return drops

    def _socket_inodes(self) -> set[str]:
        inodes = set()
        fd_dir = f"/proc/{self.pid}/fd"
        for name in os.listdir(fd_dir):
            try:
                link = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        return inodes


def cpu_times(cpu: str | None = None) -> tuple[int, int]:
    """(steal, total) clock ticks of one CPU ("0") or of all (None) since boot, from /proc/stat. Steal is the
    time the hypervisor ran something else while this virtual CPU had work: a window with much of it measured
    a slower machine."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            ticks = [int(f) for f in fields[1:9]]  # user nice system idle iowait irq softirq steal
            return ticks[7], sum(ticks)
    return 0, 0


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Steal between two ``cpu_times`` readings, as a share of that CPU's time (of all CPUs' for None)."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


# ------------------------------------------------------------------------------------- pinning, processes


def taskset(cpus: str | None) -> list[str]:
    """Command prefix pinning a child (and every thread it starts) to ``cpus`` ("0", "1-3"); [] = no pin."""
    return ["taskset", "-c", cpus] if cpus else []


def pin(cpus: str | None) -> None:
    """Pin this process; call before any thread starts (threads inherit the mask of their creator)."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


class BackendProcess:
    """The offline Realtime backend as its own OS process, as ``sipagent local-realtime`` runs it."""

    def __init__(self, config_path: Path, port: int, cpus: str | None = None, lead_ms: int = 100,
                 max_sessions: int = 1000) -> None:
        self.config_path = config_path
        self.port = port
        self.cpus = cpus
        self.lead_ms = lead_ms
        self.max_sessions = max_sessions  # above the load steps' call counts (the command's default is 64)
        self.proc: subprocess.Popen[str] | None = None
        self.stats: ProcStats | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def start(self, timeout: float = 30.0) -> None:
        command = [*taskset(self.cpus), sys.executable, "-m", "sipagent.cli", "local-realtime",
                   "--listen", f"127.0.0.1:{self.port}", "-c", str(self.config_path),
                   "--lead-ms", str(self.lead_ms), "--max-sessions", str(self.max_sessions)]
        self.proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.stats = ProcStats(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ready once the port accepts a TCP connection
            if self.proc.poll() is not None:
                raise RuntimeError(f"local-realtime exited with {self.proc.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("local-realtime did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # its clean exit path
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line a child writes on its stdout, waiting at most ``timeout`` seconds (a reader thread:
    a blocked readline cannot time out by itself)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        raise RuntimeError(f"child process gave no answer within {timeout:.0f} s (exit {proc.poll()})")
    data: dict[str, Any] = json.loads(result[0])
    return data


def scrape_metrics(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The agent's /metrics on 127.0.0.1:``port`` as {series: value}, series named as exposed
    (``sipagent_sip_shed_total{reason="untrusted"}``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ------------------------------------------------------------------------------------- the agent process


class AgentProcess:
    """``sipagent run`` in a child process, observed (see the module docstring)."""

    def __init__(self, config_path: Path, log_path: Path | None = None, cpus: str | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.cpus = cpus
        self.proc: subprocess.Popen[str] | None = None
        self.stats: ProcStats | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = child_env()
        stderr = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        if os.environ.get("SIPAGENT_BENCH_LOG_DIR") and self.log_path:
            stderr = open(Path(os.environ["SIPAGENT_BENCH_LOG_DIR"]) / self.log_path.name, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*taskset(self.cpus), sys.executable, "-m", "bench._common", "agent", str(self.config_path)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        self.stats = ProcStats(self.proc.pid)
        ready = self._read_line(timeout)
        if not ready.get("ready"):
            raise RuntimeError(f"agent did not start: {ready}")

    def _read_line(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        return read_json_line(self.proc, timeout)

    def request(self, command: str, timeout: float = 20.0) -> dict[str, Any]:
        """``report`` (figures since the last reset, then reset) or ``peek`` (figures, no reset)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read_line(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def __enter__(self) -> AgentProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TimedDecoderBatch(DecoderBatch):
    """The media clock's ``received`` batch, noting how long the first frame of each run waited in it: what
    decoding caller frames together adds to their handling (at most, for that run's frames). Only with
    SIPAGENT_BENCH_DECODE_WAIT set (``load.py --verbose``)."""

    __slots__ = ("_first", "_state")

    def __init__(self, state: _Observed) -> None:
        super().__init__()
        self._state = state
        self._first = 0.0

    def stage(self, decoder: FrameDecoder, payload: bytes, then: Callable[[float], None]) -> None:
        if not self._decoders:
            self._first = time.monotonic()
        super().stage(decoder, payload, then)

    def run(self) -> None:
        if self._decoders:
            self._state.decode_waits.append(time.monotonic() - self._first)
        super().run()


class _Observed:
    """State shared by the probe (on the agent's loop) and the control thread."""

    def __init__(self) -> None:
        self.devs: list[float] = []
        self.decode_waits: list[float] = []  # see TimedDecoderBatch
        self.underruns = 0
        self.underrun_frames = 0
        self.audio_frames = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.agent: Any = None
        self.profiler: Any = None
        self.late_at: list[float] = []  # diagnosis: when packets were more than 5 ms late
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, ms) of collections over 1 ms
        self._gc_started = 0.0

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif (ms := (time.perf_counter() - self._gc_started) * 1e3) > 1.0:
            self.gc_pauses.append((int(info["generation"]), round(ms, 1)))

    def deviation(self, seconds: float) -> None:
        """The clock's probe with SIPAGENT_BENCH_LATE set (see ``probe``)."""
        self.devs.append(seconds)
        if seconds > 0.005:
            self.late_at.append(round(time.monotonic(), 2))

    def probe(self) -> Callable[[float], None]:
        """What the clock calls after each stream's tick: the list's own append (no Python frame per packet,
        this is measured inside the agent), or ``deviation`` when diagnosing late packets."""
        return self.deviation if os.environ.get("SIPAGENT_BENCH_LATE") else self.devs.append

    async def reset(self) -> dict[str, Any]:
        """A new window starts: forget what was recorded, computing nothing. (A ``report`` on the agent's loop
        takes some 20 ms at 200 calls, its percentiles and object count: at the start of a window, that
        stall's late packets would be counted in it.)"""
        self.devs.clear()  # in place: the clock holds its append
        self.decode_waits = []
        self.gc_pauses = []
        self.late_at = []
        self.underruns = self.underrun_frames = self.audio_frames = 0
        self._profile_window()
        return {"reset": True}

    async def report(self, reset: bool) -> dict[str, Any]:
        devs, waits = self.devs[:], self.decode_waits
        agent = self.agent
        figures: dict[str, Any] = {
            "dev": percentiles_ms(devs, (50, 90, 99, 99.9)),
            "underruns": self.underruns, "underrun_frames": self.underrun_frames,
            "audio_frames": self.audio_frames,
            "tasks": len(asyncio.all_tasks()),
            "bridges": len(agent.bridges), "streams": agent.clock.streams,
            "late_ticks": agent.clock.late_ticks, "skipped_ticks": agent.clock.skipped_ticks,
            # G.722 caller frames decoded together, and in how many runs (mean frames per run)
            "decoded_together": [agent.clock.received.frames, agent.clock.received.runs],
            "decode_wait": percentiles_ms(waits, (50, 99, 99.9)),
            "ports_in_use": agent.ports.in_use, "calls_total": agent.stats.calls_total,
            "outcomes": dict(agent.stats.outcomes),
            "gc_collections": [g["collections"] for g in gc.get_stats()],
            "gc_pauses_over_1ms": self.gc_pauses[-20:], "gc_objects": len(gc.get_objects()),
        }
        if self.late_at:
            t0 = self.late_at[0]
            figures["late_ms_at"] = sorted(collections.Counter(int((t - t0) * 10) for t in self.late_at).items())
        if reset:  # the packets this report's stall makes late go out after it, into the next window: a
            await self.reset()  # window that must not hold them opens with ``reset`` instead (load.py does)
        return figures

    def _profile_window(self) -> None:
        """Diagnosis only (SIPAGENT_BENCH_PROFILE=FILE): cProfile the event loop thread from one ``report`` to
        the next (the measurement window), then write the stats to FILE."""
        path = os.environ.get("SIPAGENT_BENCH_PROFILE")
        if not path:
            return
        import cProfile

        if self.profiler is None:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        else:
            self.profiler.disable()
            self.profiler.dump_stats(path)
            self.profiler = None


def _control(state: _Observed) -> None:
    for line in sys.stdin:
        command = line.strip()
        if state.loop is None:
            print(json.dumps({"error": "not started"}), flush=True)
            continue
        action = state.reset() if command == "reset" else state.report(reset=command == "report")
        future = asyncio.run_coroutine_threadsafe(action, state.loop)
        print(json.dumps(future.result(30)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the bench went away: shut down like `sipagent run` does


def _agent_main(config_path: str) -> int:
    import sipagent.agent as agent_mod
    from sipagent.config import load_config

    state = _Observed()

    class ProbedPlayout(PcmPlayout):
        """Counts underruns: the queue was empty (not merely holding a partial tail) between two audio
        frames. A padded tail ends an utterance, so the silence after it is not counted. (Measured inside
        the agent, so kept to one method layer: PcmPlayout.pop_frame called directly, not via super().)"""

        gap = -1  # silent pops since the last audio frame; -1 outside an utterance

        def pop_frame(self) -> tuple[bytes, bool]:
            partial = 0 < len(self._buf) < self.frame_bytes
            frame, is_audio = PcmPlayout.pop_frame(self)
            self._count(partial, is_audio)
            return frame, is_audio

        def pop_frame_staged(self, batch: EncoderBatch) -> tuple[bytes | None, bool]:
            # What the clock calls during its phase ticks: a G.722 frame is staged there, not popped
            # through pop_frame (G.711 is, and counted there).
            if not self._batched:
                return self.pop_frame()
            partial = 0 < len(self._buf) < self.frame_bytes
            frame, is_audio = PcmPlayout.pop_frame_staged(self, batch)
            self._count(partial, is_audio)
            return frame, is_audio

        def _count(self, partial: bool, is_audio: bool) -> None:
            if is_audio:
                state.audio_frames += 1
                if self.gap > 0:
                    state.underruns += 1
                    state.underrun_frames += self.gap
                self.gap = -1 if partial else 0
            elif self.gap >= 0 and not partial:
                self.gap += 1

        def flush(self) -> int:
            self.gap = -1  # barge-in: the utterance was cut on purpose
            return int(super().flush())

    class ProbedAgent(agent_mod.Agent):
        playout_class = ProbedPlayout

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.clock.probe = state.probe()
            # Timing the decode batch costs a Python frame per G.722 frame (not PCMU's): only when asked.
            if os.environ.get("SIPAGENT_BENCH_DECODE_WAIT"):
                self.clock.received = TimedDecoderBatch(state)
            state.agent = self

        async def start(self) -> None:
            await super().start()
            state.loop = asyncio.get_running_loop()
            import gc

            gc.callbacks.append(state.gc_callback)
            if os.environ.get("SIPAGENT_BENCH_GC") == "off":  # diagnosis only: are the stalls the GC's?
                import gc

                gc.disable()
            if os.environ.get("SIPAGENT_BENCH_SLOW"):  # diagnosis only: log callbacks slower than this
                import logging

                logging.getLogger("asyncio").setLevel(logging.WARNING)
                state.loop.set_debug(True)
                state.loop.slow_callback_duration = float(os.environ["SIPAGENT_BENCH_SLOW"])
            host, port = self.sip_address
            print(json.dumps({"ready": True, "sip": f"{host}:{port}"}), flush=True)

    agent_mod.Agent = ProbedAgent  # type: ignore[misc]
    threading.Thread(target=_control, args=(state,), daemon=True).start()
    return int(agent_mod.run_agent(load_config(config_path)))


# ------------------------------------------------------------------------------------- callers


class QuietCaller(SipCaller):
    """A SipCaller that only counts what it hears (no decoding, no stored audio) and, since it never speaks,
    sends its silence from a plain playout queue (no per-frame level and time kept for ``sent``)."""

    async def dial(self, timeout: float = 10.0) -> None:
        await super().dial(timeout)
        assert self._endpoint is not None
        self._endpoint.playout = PlayoutQueue(frame_bytes=len(CODEC_SILENCE[self.codec]),
                                              silence=CODEC_SILENCE[self.codec])

        # Frames as they arrive, not through the jitter buffer's delay: nothing here listens, and the
        # harness's core (these callers and the backend) must keep up with the agent's.
        self._endpoint.eager = True

    def _on_frame(self, payload: bytes) -> None:
        if payload != CODEC_SILENCE[self.codec]:
            self.heard.audio_frames += 1
            self.heard.last_audio_at = time.monotonic()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        sys.exit(_agent_main(sys.argv[2]))
    print("usage: python -m bench._common agent CONFIG", file=sys.stderr)
    sys.exit(2)
