"""Load benchmark: N simultaneous calls into ONE agent process, N stepped up until quality breaks.

The agent runs in its own OS process as ``sipagent run`` does (bench/_common.py: AgentProcess), direct mode on
127.0.0.1. The model runs elsewhere, as with OpenAI: by default the local backend is its own OS process
(``sipagent local-realtime --listen 127.0.0.1:PORT``) and the agent's ``realtime.url`` points at it
(``--backend inprocess`` puts it back inside the agent). This process is the load generator: N SipCallers on
their own media clock. ``--pin`` gives the agent a core to itself (``taskset``) and puts the callers and the
backend on a second core (or on one each, when there are three), so the agent's figures are not those of a
process fighting its own load generator for the CPU. The harness costs about as much per call as the agent: a
step that breaks while a harness core is saturated, or while the hypervisor takes the agent's CPU (steal), is
marked ``BREAKS*``: it says nothing of the agent.

Load applied per call: SIP INVITE/ACK/BYE, G.711 (PCMU) RTP both ways every 20 ms, the agent's whole inbound
path for every frame (jitter buffer, decode, echo-aware VAD, ``input_audio_buffer.append`` to the backend,
whose server VAD runs on it), and the agent speaking a ~30 s greeting (TTS cached after the first call; the
backend streams it in 40 ms deltas in real time) during the whole measurement window.
Callers send silence frames (they never speak, so no ASR runs).

Measured inside the agent process, over a ``--seconds`` window after all N calls are up:
- send deviation: for every packet of every call, send time minus its 20 ms deadline (the MediaClock
  probe), p50/p99/max;
- underruns: the playout queue of a call ran dry between two audio frames of the greeting (the listener
  hears a gap), as events and 20 ms frames;
- CPU% of the agent process (utime+stime from /proc/PID/stat over the window) and RSS, both also per call
  (RSS per call = (RSS with N calls - RSS idle before the step) / N; a fresh agent per step); the backend's
  and the load generator's CPU% for context;
- steal%: the share of the agent's CPU (of all CPUs, unpinned) the hypervisor gave to something else over the
  window (/proc/stat), for a virtual machine whose speed changes under the run.

The window opens once every caller hears its greeting, with a reset of the agent's counters that computes
nothing (the report at its end takes tens of milliseconds of the agent's loop).

Verdict per step against the named goal: p99 <= 2 ms and no underrun (``BREAKS*``: and a harness core was
saturated, or the agent's CPU stolen). Stops at the first failing step.

``--codec G722`` has the callers offer G.722 only (HD voice: the agent's 16 kHz path and the G.722 kernel);
``--codec both`` runs every step with PCMU and again with G.722, so the two are compared in one run.

``--srtp`` runs every step twice, plain RTP then SRTP (media.srtp: required, AES_CM_128_HMAC_SHA1_80 keyed by
SDES, the callers protecting and checking every packet too), so that the two are compared in one run.

Usage: python bench/load.py [--counts 10,50,100,200,300] [--seconds 8] [--budget 300] [--pin]
                            [--backend process|inprocess] [--srtp] [--codec PCMU|G722|both] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    AgentProcess,
    BackendProcess,
    QuietCaller,
    agent_config,
    cpu_times,
    free_tcp_port,
    free_udp_port,
    pin,
    steal_pct,
    taskset,
    write_config,
)
from sipagent.agent import run_loop
from sipagent.media.clock import MediaClock
from sipagent.rtp.ports import PortAllocator

GOAL_P99_MS = 2.0
GOAL_CALLS = 300  # issue 19: per core, pinned, at the default backend lead
GOAL_HD_SHARE = 0.9  # issue 19: G.722 calls held, as a share of PCMU calls held in the same run
# Past this much of a core, the callers or the backend fall behind themselves (late packets, late deltas), so
# a step that breaks then may be the harness's failure rather than the agent's.
HARNESS_BUSY_PCT = 85.0
# A virtual CPU that lost this much of the window to the hypervisor measured a slower machine than the others.
STOLEN_PCT = 5.0


@dataclass(frozen=True)
class Layout:
    """Which CPU each process of a pinned run gets: the agent one to itself; the backend and the callers one
    each when the machine has three, else one between them (together they cost about as much per call as
    the agent, so on two CPUs the harness's core saturates with the agent's)."""

    agent: str
    backend: str
    callers: str

    @property
    def shared(self) -> bool:
        return self.backend == self.callers

    @staticmethod
    def of(cpus: list[int]) -> Layout:
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs: the agent's, and the harness's")
        harness = cpus[1:3] if len(cpus) >= 3 else cpus[1:2] * 2
        return Layout(str(cpus[0]), str(harness[0]), str(harness[1]))

    def describe(self) -> str:
        if self.shared:
            return f"agent pinned to CPU {self.agent}, callers+backend to CPU {self.backend}"
        return f"agent pinned to CPU {self.agent}, backend to CPU {self.backend}, callers to CPU {self.callers}"


@dataclass
class Step:
    n: int
    answered: int
    p50: float
    p99: float
    worst: float
    underruns: int
    underrun_frames: int
    cpu_pct: float
    rss_mb: float
    rss_idle_mb: float
    setup_s: float
    backend_cpu_pct: float
    bench_cpu_pct: float
    steal_pct: float  # of the agent's CPU (of all CPUs unpinned) over the window: the hypervisor's share
    harness_steal_pct: tuple[float, float]  # of the backend's CPU, of the callers' (pinned)
    srtp: bool = False
    codec: str = "PCMU"
    layout: Layout | None = None  # pinned

    @property
    def harness_bound(self) -> bool:
        """Pinned, and a core of the harness (callers, backend) was busy enough to fail by itself."""
        if self.layout is None:
            return False
        # What the hypervisor took from a harness core is as lost to the harness as its own work.
        backend_steal, callers_steal = self.harness_steal_pct
        if self.layout.shared:
            return self.backend_cpu_pct + self.bench_cpu_pct + backend_steal >= HARNESS_BUSY_PCT
        return max(self.backend_cpu_pct + backend_steal, self.bench_cpu_pct + callers_steal) >= HARNESS_BUSY_PCT

    @property
    def inconclusive(self) -> bool:
        """A break here may not be the agent's: its harness was saturated, or its own CPU was stolen."""
        return self.harness_bound or self.steal_pct >= STOLEN_PCT

    @property
    def broke_unsure(self) -> bool:
        """Broke, but inconclusively (``BREAKS*``)."""
        return not self.ok and self.inconclusive

    @property
    def verdict(self) -> str:
        if self.ok:
            return "holds"
        return "BREAKS*" if self.inconclusive else "BREAKS"

    @property
    def media(self) -> str:
        return f"{self.codec}{'+srtp' if self.srtp else ''}"

    @property
    def ok(self) -> bool:
        return self.answered == self.n and self.p99 <= GOAL_P99_MS and self.underruns == 0


SRTP_SUITES = ("AES_CM_128_HMAC_SHA1_80",)  # what Asterisk and FreeSWITCH offer first


async def dial_all(target: str, n: int, clock: MediaClock, ports: PortAllocator,
                   concurrency: int, srtp: bool = False, codec: str = "PCMU") -> list[QuietCaller]:
    gate = asyncio.Semaphore(concurrency)
    callers = [QuietCaller(clock, ports, target, codec=codec, user=f"load{i}", srtp=SRTP_SUITES if srtp else ())
               for i in range(n)]

    async def dial(caller: QuietCaller) -> None:
        async with gate:
            await caller.dial(timeout=15.0)

    results = await asyncio.gather(*(dial(c) for c in callers), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"  {len(failed)} of {n} calls failed to connect: {failed[0]!r}", flush=True)
    return [c for c, r in zip(callers, results, strict=True) if not isinstance(r, BaseException)]


async def run_step(n: int, seconds: float, workdir: Path, concurrency: int, external: bool,
                   layout: Layout | None, audio_format: str, profile: str = "", verbose: bool = False,
                   lead_ms: int = 100, srtp: bool = False, codec: str = "PCMU") -> Step:
    sip_port = free_udp_port()
    backend = BackendProcess(workdir / f"load-{n}.yaml", free_tcp_port(), cpus=layout.backend if layout else None,
                             lead_ms=lead_ms)
    config = write_config(workdir / f"load-{n}.yaml",
                          agent_config(sip_port, realtime_url=backend.url if external else "",
                                       audio_format=audio_format, srtp=srtp, codecs=(codec,)))
    agent = AgentProcess(config, log_path=workdir / f"agent-{n}.log", cpus=layout.agent if layout else None)
    if external:
        backend.start()
    agent.start()
    assert agent.stats is not None
    clock = MediaClock()
    clock.start()
    ports = PortAllocator(30000, 39999)
    callers: list[QuietCaller] = []
    try:
        await asyncio.sleep(0.5)
        idle = agent.stats.sample()
        t0 = time.monotonic()
        callers = await dial_all(f"sip:agent@127.0.0.1:{sip_port}", n, clock, ports, concurrency, srtp, codec)
        setup = time.monotonic() - t0
        # The window opens once every caller hears its greeting (the first synthesis is behind us).
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and any(c.heard.audio_frames == 0 for c in callers):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        agent.request("reset")  # the agent's counters: the window starts now
        cpu0, wall0 = agent.stats.cpu_seconds(), time.monotonic()
        split0 = agent.stats.cpu_split()
        backend_cpu0 = backend.stats.cpu_seconds() if backend.stats else 0.0
        bench_cpu0 = time.process_time()
        cpus = (layout.agent, layout.backend, layout.callers) if layout else (None,)
        steal0 = [cpu_times(cpu) for cpu in cpus]
        spies = []
        if profile:
            assert agent.proc is not None and backend.proc is not None
            for name, pid in (("agent", agent.proc.pid), ("backend", backend.proc.pid), ("gen", os.getpid())):
                spies.append(py_spy(pid, seconds, f"{profile}-{n}-{name}.txt", layout.callers if layout else None))
        await asyncio.sleep(seconds)
        for spy in spies:
            await asyncio.to_thread(spy.wait, 30)
        figures = await asyncio.to_thread(agent.request, "report")
        cpu, wall = agent.stats.cpu_seconds() - cpu0, time.monotonic() - wall0
        split1 = agent.stats.cpu_split()
        backend_cpu = (backend.stats.cpu_seconds() if backend.stats else 0.0) - backend_cpu0
        bench_cpu = time.process_time() - bench_cpu0
        busy = agent.stats.sample()
        steal = [steal_pct(before, cpu_times(cpu)) for before, cpu in zip(steal0, cpus, strict=True)]
    finally:
        await asyncio.gather(*(c.hangup() for c in callers), return_exceptions=True)
        clock.stop()
        agent.stop()
        backend.stop()
    if verbose:
        user, system = (b - a for a, b in zip(split0, split1, strict=True))
        stolen = f"; steal on the backend's and the callers' CPUs {steal[1]:.1f} %, {steal[2]:.1f} %" if layout else ""
        print(f"  agent: user {100 * user / wall:.1f} % sys {100 * system / wall:.1f} %{stolen}; "
              f"{json.dumps(figures)}", flush=True)
    dev = figures["dev"]
    return Step(n, len(callers), dev["p50"], dev["p99"], dev["max"], figures["underruns"],
                figures["underrun_frames"], 100 * cpu / wall, busy.rss_kb / 1024, idle.rss_kb / 1024, setup,
                100 * backend_cpu / wall, 100 * bench_cpu / wall, steal[0],
                (steal[1], steal[2]) if layout else (0.0, 0.0), srtp, codec, layout)


def holds(runs: list[Step]) -> bool:
    """A media holds N when it held in most of its conclusive runs there (a hold is always conclusive)."""
    held = sum(step.ok for step in runs)
    conclusive = len(runs) - sum(step.broke_unsure for step in runs)
    return held > 0 and 2 * held > conclusive


def py_spy(pid: int, seconds: float, path: str, cpus: str | None) -> subprocess.Popen[bytes]:
    """Diagnosis only (``--profile``): sample a process with py-spy over the window, collapsed stacks to
    ``path``. Non-blocking sampling (the process is never paused), on the load generator's core when pinned
    (which then has less left for the callers and the backend)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([*taskset(cpus), spy, "record", "--pid", str(pid), "--duration",
                             str(max(1, int(seconds))), "--rate", "250", "--nonblocking", "--format", "raw",
                             "--output", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(step: Step, external: bool) -> None:
    if external and step.backend_cpu_pct == 0:
        print("  WARNING: the backend used no CPU: is the agent connected to it? (SIPAGENT_BENCH_LOG_DIR)")
    per_call_mb = (step.rss_mb - step.rss_idle_mb) / max(1, step.answered)
    print(f"{step.n:>5} {step.answered:>5} {step.p50:>7.3f} {step.p99:>7.3f} "
          f"{step.worst:>7.2f} {step.p99 / GOAL_P99_MS:>7.2f}x {step.underruns:>3}/{step.underrun_frames:<4} "
          f"{step.cpu_pct:>6.1f} {step.cpu_pct / max(1, step.answered):>9.3f} {step.rss_mb:>7.1f} "
          f"{per_call_mb:>7.3f} {step.setup_s:>7.1f} {step.backend_cpu_pct:>7.1f} "
          f"{step.bench_cpu_pct:>8.1f} {step.steal_pct:>6.1f} {step.media:>9}  {step.verdict}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10,50,100,200,300,400")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per step")
    parser.add_argument("--budget", type=float, default=300.0, help="skip steps that would end after this")
    parser.add_argument("--concurrency", type=int, default=20, help="INVITEs in flight at once")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    parser.add_argument("--backend", choices=("process", "inprocess"), default="process",
                        help="the local backend as its own process (default, like a remote model) or inside the agent")
    parser.add_argument("--pin", action="store_true",
                        help="agent on a CPU of its own (taskset); the backend and the callers on a second "
                             "CPU, or on one each when there are three")
    parser.add_argument("--audio-format", choices=("pcm16", "g711_ulaw"), default="pcm16",
                        help="realtime.audio_format: g711_ulaw passes the callers' PCMU through untouched")
    parser.add_argument("--profile", default="", metavar="PREFIX",
                        help="py-spy the agent, backend and this process over each window (PREFIX-N-WHO.txt)")
    parser.add_argument("--srtp", action="store_true",
                        help="run each step with plain RTP and again with SRTP (SDES), and compare")
    parser.add_argument("--codec", choices=("PCMU", "G722", "both"), default="PCMU",
                        help="what the callers offer (the agent accepts only that); both: each step with PCMU "
                             "and again with G722 (HD voice: 16 kHz, the G.722 kernel), compared in one run")
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="run each step R times (media alternating); a media holds N when it held in most of "
                             "its conclusive runs (for a machine whose speed changes under the run)")
    parser.add_argument("--verbose", action="store_true", help="print the agent's own figures per step")
    parser.add_argument("--backend-lead-ms", type=int, default=100, metavar="MS",
                        help="how far ahead of real time the backend streams the greeting (local-realtime "
                             "--lead-ms); the real API sends audio faster than it plays")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    codecs = ("PCMU", "G722") if args.codec == "both" else (args.codec,)
    if args.audio_format == "g711_ulaw" and "G722" in codecs:
        parser.error("--audio-format g711_ulaw passes PCMU through; it cannot carry G.722 calls")
    if args.verbose:
        os.environ["SIPAGENT_BENCH_DECODE_WAIT"] = "1"  # the agents started below time their decode batch
    layout = Layout.of(sorted(os.sched_getaffinity(0))) if args.pin else None
    if layout is not None:
        pin(layout.callers)  # before any thread: the callers' event loop and its executor threads inherit it

    print(f"goal: p99 send deviation <= {GOAL_P99_MS} ms and no underrun "
          f"(deviation measured in the agent process; {args.seconds:g} s window per step); backend "
          f"{'in its own process' if args.backend == 'process' else 'inside the agent'}; "
          f"{layout.describe() if layout else 'no CPU pinning'}; "
          f"realtime.audio_format {args.audio_format}; backend lead {args.backend_lead_ms} ms; "
          f"{os.cpu_count()} CPUs")
    print(f"{'N':>5} {'up':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p99/goal':>8} {'underrun':>8} "
          f"{'CPU%':>6} {'CPU%/call':>9} {'RSS MB':>7} {'MB/call':>7} {'setup s':>7} {'bk CPU%':>7} "
          f"{'gen CPU%':>8} {'steal%':>6} {'media':>9}  verdict", flush=True)
    best = 0
    best_of: dict[str, int] = {}  # per media (PCMU, G722, +srtp): the largest N it held
    runs: dict[tuple[str, int], list[Step]] = {}  # (media, N) -> its runs
    inconclusive = False  # a step broke while the harness's core was saturated, or the agent's CPU stolen
    started = time.monotonic()
    last_step_s = 0.0
    with tempfile.TemporaryDirectory(prefix="sipagent-load-") as tmp:
        for n in counts:
            if time.monotonic() - started + last_step_s * 1.5 > args.budget:
                print(f"(stopping before N={n}: the --budget of {args.budget:g} s would be exceeded)")
                break
            t = time.monotonic()
            steps = [run_loop(run_step(n, args.seconds, Path(tmp), args.concurrency,
                                       args.backend == "process", layout, args.audio_format,
                                       args.profile, args.verbose, args.backend_lead_ms, srtp, codec))
                     for _ in range(args.repeat) for codec in codecs
                     for srtp in ((False, True) if args.srtp else (False,))]
            last_step_s = time.monotonic() - t
            for step in steps:
                report(step, args.backend == "process")
                inconclusive |= step.broke_unsure
                runs.setdefault((step.media, n), []).append(step)
            verdicts = {media: holds(of_n) for (media, m), of_n in runs.items() if m == n}
            for media, ok in verdicts.items():
                best_of[media] = max(best_of.get(media, 0), n if ok else 0)
            if all(verdicts.values()):
                best = max(best, n)
            elif not args.keep_going:
                break
    if inconclusive:
        busy = ("bk CPU% + gen CPU% + the hypervisor's steal, on one core" if layout and layout.shared
                else "bk CPU% or gen CPU%, with the hypervisor's steal")
        print(f"* inconclusive: the harness's core was >= {HARNESS_BUSY_PCT:g} % busy ({busy}), or the hypervisor "
              f"took >= {STOLEN_PCT:g} % of the agent's CPU (steal%): that step's failure may not be the agent's")
    if args.repeat > 1:
        for (media, n), of_n in runs.items():
            held = sum(step.ok for step in of_n)
            unsure = sum(step.broke_unsure for step in of_n)
            print(f"{n:>5} {media:>9}: held {held} of {len(of_n)} runs ({unsure} inconclusive): "
                  f"{'holds' if holds(of_n) else 'breaks'}")
    print(f"largest N holding p99 <= {GOAL_P99_MS} ms with no underrun: {best or 'none'} "
          f"(issue goal: >= {GOAL_CALLS} calls per core pinned, ratio {best / GOAL_CALLS:.2f}x)")
    if len(best_of) > 1:
        print("per media: " + ", ".join(f"{media} {held or 'none'}" for media, held in best_of.items()))
    if best_of.get("PCMU") and "G722" in best_of:  # --codec both
        share = best_of["G722"] / best_of["PCMU"]
        # Without --keep-going the steps stop where either codec fails: the other's figure is capped there.
        bound = "" if args.keep_going else " at least (PCMU capped where G.722 broke: use --keep-going)"
        print(f"G.722 holds {share:.2f}x the PCMU calls{bound} (issue goal: >= {GOAL_HD_SHARE:.2f}x)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
