"""Pacing benchmark: N simultaneous RTP streams in one process, sent on the shared MediaClock.

For each N, each variant runs ~``--seconds`` on loopback and prints CPU per call (process CPU time / wall /
N), the p50/p99/max deviation of each packet's send time from its 20 ms deadline, late ticks (> 2 ms) and
what a sink in a separate process received (``sent``/``rcvd`` include the 0.5 s warm-up; the
other columns do not). Variants, all in the same run:

- ``clock``: the real path: RtpEndpoint + PlayoutQueue + MediaClock with 10 phases (streams spread over
  the period).
- ``clock-1phase``: the same clock with every stream due at the same instant.
- ``sleep-loop``: the named alternative: one asyncio task per stream doing ``await asyncio.sleep(0.02)``
  then a send; its deviation is measured against the ideal schedule start + k * 20 ms, so drift shows.

Usage: python bench/pacing.py [--counts 1,50,100,200,300] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import multiprocessing.connection as mpc
import socket
import statistics
import time
from dataclasses import dataclass

from sipagent.media.clock import MediaClock
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.packet import build_header
from sipagent.rtp.ports import PortAllocator

WARMUP = 0.5


def sink(conn: mpc.Connection, port_out: mpc.Connection) -> None:
    """Child process: count datagrams on one socket until told to report."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    port_out.send(sock.getsockname()[1])
    count = 0
    while True:
        try:
            sock.recv(2048)
            count += 1
        except TimeoutError:
            pass
        if conn.poll():
            cmd = conn.recv()
            if cmd == "stop":
                return
            conn.send(count)
            count = 0


@dataclass
class Result:
    variant: str
    n: int
    cpu_per_call: float
    p50: float
    p99: float
    worst: float
    late: int
    ticks: int
    sent: int


async def run_clock(n: int, seconds: float, sink_port: int, phases: int) -> Result:
    devs: list[float] = []
    record = False

    def probe(dev: float) -> None:
        if record:
            devs.append(dev)

    clock = MediaClock(phases=phases, probe=probe)
    ports = PortAllocator(30000, 31999)
    eps = [RtpEndpoint(clock, ports, bind_host="127.0.0.1") for _ in range(n)]
    audio = b"\x55" * 160 * int((seconds + WARMUP + 1) * 50)
    for ep in eps:
        ep.set_remote("127.0.0.1", sink_port, 0)
        ep.playout.push(audio)
    clock.start()
    await asyncio.sleep(WARMUP)
    record = True
    late0, ticks0 = clock.late_ticks, clock.ticks
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    record = False
    clock.stop()
    sent = sum(e.packets_sent for e in eps)  # including the warm-up, to compare with the sink
    for ep in eps:
        ep.close()
    late, ticks = clock.late_ticks - late0, clock.ticks - ticks0
    return summarize(f"clock-{phases}ph", n, cpu, wall, devs, late, ticks, sent)


async def run_sleep_loop(n: int, seconds: float, sink_port: int) -> Result:
    devs: list[float] = []
    loop = asyncio.get_running_loop()
    stop = False
    record_from = loop.time() + WARMUP
    sent = 0
    socks = []

    async def stream() -> None:
        nonlocal sent
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        socks.append(sock)
        start = loop.time()
        k, seq, ts = 0, 0, 0
        while not stop:
            await asyncio.sleep(0.02)
            k += 1
            seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
            sock.sendto(build_header(False, 0, seq, ts, 1) + b"\x55" * 160, ("127.0.0.1", sink_port))
            now = loop.time()
            sent += 1
            if now >= record_from:
                devs.append(now - (start + k * 0.02))

    tasks = [asyncio.create_task(stream()) for _ in range(n)]
    await asyncio.sleep(WARMUP)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stop = True
    await asyncio.gather(*tasks)
    for s in socks:
        s.close()
    late = sum(d > 0.002 for d in devs)
    return summarize("sleep-loop", n, cpu, wall, devs, late, len(devs), sent)


def summarize(variant: str, n: int, cpu: float, wall: float, devs: list[float], late: int, ticks: int,
              sent: int) -> Result:
    devs.sort()
    if not devs:
        devs = [0.0]
    p99 = devs[min(len(devs) - 1, int(len(devs) * 0.99))]
    return Result(variant, n, cpu / wall / n, statistics.median(devs) * 1e3, p99 * 1e3, devs[-1] * 1e3,
                  late, ticks, sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,50,100,200,300")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--variants", default="clock,clock-1phase,sleep-loop")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    variants = args.variants.split(",")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    port_rx, port_tx = ctx.Pipe()
    proc = ctx.Process(target=sink, args=(child, port_tx), daemon=True)
    proc.start()
    sink_port = int(port_rx.recv())

    print(f"{'variant':<12} {'N':>4} {'CPU/call':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'late':>6} {'ticks':>7} {'sent':>7} {'rcvd':>7}")
    try:
        for n in counts:
            for variant in variants:
                parent.send("count")
                parent.recv()  # reset the sink's counter
                if variant == "clock":
                    res = asyncio.run(run_clock(n, args.seconds, sink_port, phases=10))
                elif variant == "clock-1phase":
                    res = asyncio.run(run_clock(n, args.seconds, sink_port, phases=1))
                else:
                    res = asyncio.run(run_sleep_loop(n, args.seconds, sink_port))
                time.sleep(0.1)
                parent.send("count")
                rcvd = int(parent.recv())
                print(f"{res.variant:<12} {res.n:>4} {res.cpu_per_call * 100:>8.3f}% {res.p50:>7.3f} "
                      f"{res.p99:>7.3f} {res.worst:>7.3f} {res.late:>6} {res.ticks:>7} {res.sent:>7} "
                      f"{rcvd:>7}", flush=True)
    finally:
        parent.send("stop")
        proc.join(2)


if __name__ == "__main__":
    main()
