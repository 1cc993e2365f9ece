"""Soak benchmark: ``--calls`` concurrent calls with churn for ``--minutes``, watching for growth.

The agent runs in its own OS process as ``sipagent run`` does (bench/_common.py: AgentProcess), local backend
in-process. This process keeps ``--calls`` caller slots busy: each dials, stays on the line a random
``--hold`` seconds while the agent speaks its greeting (callers send silence), hangs up, and dials again, so
calls start and end all the time and anything a call fails to release accumulates.

Every ``--every`` seconds it samples the agent process: RSS, open fds, sockets, threads (/proc), UDP
sockets bound in the RTP range (/proc/net/udp matched against the process's socket inodes), and from inside
the agent: asyncio tasks, active bridges, media clock streams, RTP port pairs allocated, and the p99 send
deviation and underruns since the previous sample (each sample resets the agent's counters, so the bench's
own per-packet deviation record does not grow with the run). For each it prints
first/last/slope per minute over the run (least squares over the samples after the first minute), and the
idle figures before the first call and after the last one hung up, the named alternative: no leak means
idle-after equals idle-before for fds, tasks, sockets and ports.

``--vanish P``: that share of calls end with the caller gone instead of hanging up (no BYE, no more RTP, its
socket closed, as when a PBX restarts or a NAT binding expires): the agent ends them by ``media.rtp_timeout_s``
(5 s here) and lets go of them 4 s after its BYE (the hang-up's wait for an answer); the unanswered BYE's
transaction goes on for 32 s (timer F).

Usage: python bench/soak.py [--calls 50] [--minutes 3] [--hold 5,15] [--every 5] [--vanish 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import AgentProcess, QuietCaller, agent_config, free_udp_port, write_config
from sipagent.media.clock import MediaClock
from sipagent.rtp.ports import PortAllocator

RTP_LO, RTP_HI = 20000, 29999
GREETING = "Thanks for calling Northwind Outfitters. How can I help you today?"
METRICS = ("rss_mb", "fds", "sockets", "threads", "rtp_udp", "tasks", "bridges", "streams", "ports_in_use")


def sample(agent: AgentProcess, started: float) -> dict[str, Any]:
    assert agent.stats is not None
    proc = agent.stats.sample()
    inside = agent.request("report")  # resets the probe's record: it must not grow with the soak
    return {
        "t": time.monotonic() - started, "rss_mb": proc.rss_kb / 1024, "fds": proc.fds, "sockets": proc.sockets,
        "threads": proc.threads, "rtp_udp": agent.stats.udp_ports_in(RTP_LO, RTP_HI), "tasks": inside["tasks"],
        "bridges": inside["bridges"], "streams": inside["streams"], "ports_in_use": inside["ports_in_use"],
        "calls_total": inside["calls_total"], "underruns": inside["underruns"], "cpu_s": proc.cpu_s,
        "late": inside["late_ticks"], "outcomes": inside["outcomes"], "p99_ms": inside["dev"]["p99"],
    }


async def slot(index: int, target: str, clock: MediaClock, ports: PortAllocator, hold: tuple[float, float],
               until: float, counts: dict[str, int], vanish_share: float = 0.0) -> None:
    rng = random.Random(index)
    await asyncio.sleep(rng.uniform(0, hold[0]))  # stagger the first calls
    while time.monotonic() < until:
        caller = QuietCaller(clock, ports, target, codec=rng.choice(("PCMU", "PCMA", "G722")), user=f"soak{index}")
        try:
            await caller.dial(timeout=10.0)
            counts["calls"] += 1
            await asyncio.sleep(min(rng.uniform(*hold), max(0.0, until - time.monotonic())))
            if rng.random() < vanish_share:
                counts["vanished"] += 1
                await caller.vanish()
        except Exception as exc:  # a failed call is a figure, not a reason to stop the soak
            counts["failed"] += 1
            counts["last_error"] = 0
            print(f"  slot {index}: {exc!r}", flush=True)
        finally:
            await caller.hangup()
        await asyncio.sleep(rng.uniform(0.1, 0.5))


def slope_per_min(rows: list[dict[str, Any]], key: str) -> float:
    pts = [(r["t"], r[key]) for r in rows if r["t"] >= 60] or [(r["t"], r[key]) for r in rows]
    if len(pts) < 2:
        return 0.0
    t, v = np.array(pts, dtype=np.float64).T
    return float(np.polyfit(t / 60, v, 1)[0])


async def run(args: argparse.Namespace, workdir: Path) -> None:
    sip_port = free_udp_port()
    data = agent_config(sip_port, greeting=GREETING, codecs=("G722", "PCMU", "PCMA"))
    if args.vanish:
        data["media"]["rtp_timeout_s"] = 5  # the agent notices a vanished caller 5-6 s after its last packet
    config = write_config(workdir / "soak.yaml", data)
    agent = AgentProcess(config, log_path=workdir / "agent.log")
    agent.start()
    clock = MediaClock()
    clock.start()
    ports = PortAllocator(30000, 39999)
    hold = tuple(float(x) for x in args.hold.split(","))
    assert len(hold) == 2
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(1.0)
        idle_before = sample(agent, started)
        until = started + args.minutes * 60
        counts: dict[str, int] = {"calls": 0, "failed": 0, "vanished": 0}
        slots = [asyncio.create_task(slot(i, f"sip:agent@127.0.0.1:{sip_port}", clock, ports,
                                          (hold[0], hold[1]), until, counts, args.vanish))
                 for i in range(args.calls)]
        print(f"{'t s':>6} {'calls':>6} " + " ".join(f"{m:>12}" for m in METRICS) + "  p99 ms  underruns",
              flush=True)
        while time.monotonic() < until:
            await asyncio.sleep(min(args.every, max(0.1, until - time.monotonic())))
            row = await asyncio.to_thread(sample, agent, started)
            rows.append(row)
            print(f"{row['t']:>6.0f} {row['calls_total']:>6} "
                  + " ".join(f"{row[m]:>12.1f}" if m == "rss_mb" else f"{row[m]:>12}" for m in METRICS)
                  + f"  {row['p99_ms']:>6.2f}  {row['underruns']:>8}", flush=True)
        await asyncio.gather(*slots, return_exceptions=True)
        # The agent tears down the last calls (a vanished caller's BYE transaction lasts 32 s: its task with it).
        await asyncio.sleep(40.0 if args.vanish else 2.0)
        idle_after = sample(agent, started)
    finally:
        clock.stop()
        agent.stop()
    cpu = (idle_after["cpu_s"] - idle_before["cpu_s"]) / max(1e-9, idle_after["t"] - idle_before["t"]) * 100
    underruns = sum(r["underruns"] for r in rows) + idle_after["underruns"]
    worst_p99 = max((r["p99_ms"] for r in rows), default=float("nan"))
    print(f"\n{args.calls} concurrent calls, {args.minutes:g} min, {counts['calls']} calls placed, "
          f"{counts['failed']} failed, {counts['vanished']} vanished; agent CPU {cpu:.1f}% average; "
          f"underruns {underruns}; worst p99 send "
          f"deviation per sample {worst_p99:.2f} ms; outcomes {idle_after['outcomes']}")
    print(f"{'metric':<13} {'idle before':>11} {'first':>9} {'last':>9} {'slope/min':>10} {'idle after':>10}  "
          "after-before")
    for m in METRICS:
        first, last = rows[0][m] if rows else float("nan"), rows[-1][m] if rows else float("nan")
        delta = idle_after[m] - idle_before[m]
        print(f"{m:<13} {idle_before[m]:>11.1f} {first:>9.1f} {last:>9.1f} {slope_per_min(rows, m):>10.3f} "
              f"{idle_after[m]:>10.1f}  {delta:+.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--hold", default="5,15", help="seconds each call stays up: MIN,MAX")
    parser.add_argument("--every", type=float, default=5.0, help="sampling period, seconds")
    parser.add_argument("--vanish", type=float, default=0.0,
                        help="share of calls whose caller vanishes (no BYE) instead of hanging up, 0..1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipagent-soak-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
