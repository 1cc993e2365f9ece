"""Per-frame cost of the audio kernel against named alternatives, called frame by frame from Python.

Chains per 20 ms frame, G.711 and G.722:
  inbound:  RTP payload (160 B) -> 24 kHz PCM16 (960 B)
  outbound: 24 kHz PCM16 (960 B) -> RTP payload (160 B)
Alternatives: audioop (ratecv + lin2ulaw/ulaw2lin; Python 3.11 only), soxr streaming + a NumPy table
codec (G.722 via the `g722` PyPI package), scipy.signal.resample_poly per frame (stateless). Prints
medians, ratios vs ours, calls per core (20 ms / (in + out)), worst added latency from buffering, the
24k->8k stopband rejection of each resampler, and callgrind instruction counts per frame. Then the cost SRTP
adds per 20 ms packet (protect before sending, unprotect on arrival; libsrtp through pylibsrtp, as
sipagent/rtp/srtp.py calls it), per suite, against the kernel's PCMU chain.

Run: PYTHONPATH=. .venv/bin/python bench/kernel.py [--no-callgrind] [--best]   (well under 2 minutes)
--best: the fastest of 15 passes instead of the median of 5. The callgrind rows run under valgrind, which
offers no AVX-512: they count SIMD level 1 (AVX2) on any machine.
"""

from __future__ import annotations

import importlib
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sipagent.media import kernel
from sipagent.rtp.srtp import PROFILES, SrtpContext

FRAME_MS = 20
FRAMES = 500  # 10 s of audio per timing pass
# --best: the fastest of 15 passes rather than the median of 5, for a machine whose speed changes between
# runs (the fastest pass is the one that repeats)
BEST = "--best" in sys.argv
REPEATS = 15 if BEST else 5

Step = Callable[[bytes], bytes]
Chain = tuple[Step, Step]  # (inbound payload -> pcm24k, outbound pcm24k -> payload)


def optional(name: str) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(name)
    except ImportError:
        return None


def speech_like(seconds: float, rate: int = 24000) -> bytes:
    rng = np.random.default_rng(11)
    t = np.arange(int(seconds * rate)) / rate
    env = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    x = env * (7000 * np.sin(2 * np.pi * (140 + 30 * np.sin(t)) * t) + 3000 * np.sin(2 * np.pi * 1250 * t))
    x += 600 * rng.standard_normal(len(t))
    return np.asarray(np.clip(np.round(x), -32768, 32767), dtype="<i2").tobytes()


def ours(codec: str) -> Chain:
    return kernel.Decoder24k(codec).decode, kernel.Encoder24k(codec).encode


LANES = 8  # calls per batch in "ours/x8": one group of the kernel's G.722 lanes


def ours_batched(codec: str) -> Chain:
    """ours, each frame handled together with the same frame of LANES - 1 other calls: outbound coded in an
    EncoderBatch (as the media clock codes the calls of one phase tick), inbound decoded in a DecoderBatch
    (as the clock's ``received`` decodes the frames of one event-loop pass; its FrameDecoders also give each
    frame's level, which Decoder24k does not). One step is a frame for each of LANES calls, so its time is
    divided by LANES below."""
    encoders = [kernel.Encoder24k(codec) for _ in range(LANES)]
    batch = kernel.EncoderBatch()
    decoders = [kernel.FrameDecoder(codec) for _ in range(LANES)]
    received = kernel.DecoderBatch()
    received.schedule = lambda run: None  # run below, as the end of the loop's pass would

    def nowhere(header: bytes, payload: bytes) -> None:
        pass

    def outbound(pcm: bytes) -> bytes:
        for encoder in encoders:
            batch.stage(encoder, pcm)
            batch.send(nowhere, b"")
        batch.run()
        return encoders[0].staged_payload()

    def ignore(mean_square: float) -> None:
        pass

    def inbound(payload: bytes) -> bytes:
        for decoder in decoders:
            received.stage(decoder, payload, ignore)
        received.run()
        return decoders[0].pcm

    return inbound, outbound


def audioop_chain(codec: str, audioop: Any) -> Chain | None:
    if codec == "G722":
        return None
    dec = audioop.ulaw2lin if codec == "PCMU" else audioop.alaw2lin
    enc = audioop.lin2ulaw if codec == "PCMU" else audioop.lin2alaw
    state: dict[str, Any] = {"in": None, "out": None}

    def inbound(payload: bytes) -> bytes:
        out, state["in"] = audioop.ratecv(dec(payload, 2), 2, 1, 8000, 24000, state["in"])
        return bytes(out)

    def outbound(pcm: bytes) -> bytes:
        out, state["out"] = audioop.ratecv(pcm, 2, 1, 24000, 8000, state["out"])
        return bytes(enc(out, 2))

    return inbound, outbound


def table_codec(codec: str) -> tuple[Step, Step, int]:
    """NumPy lookup-table G.711 (tables built once from a full sweep), or the g722 package."""
    if codec == "G722":
        g722 = optional("G722")
        if g722 is None:
            raise ImportError("G722")
        enc_state, dec_state = g722.G722(16000, 64000), g722.G722(16000, 64000)

        def g_dec(payload: bytes) -> bytes:
            return bytes(np.asarray(dec_state.decode(payload), dtype="<i2").tobytes())

        def g_enc(pcm: bytes) -> bytes:
            return bytes(enc_state.encode(np.frombuffer(pcm, dtype="<i2")))

        return g_dec, g_enc, 16000
    sweep = np.arange(-32768, 32768, dtype="<i2").tobytes()
    encode, decode = kernel.ulaw_encode, kernel.ulaw_decode
    if codec == "PCMA":
        encode, decode = kernel.alaw_encode, kernel.alaw_decode
    enc_table = np.roll(np.frombuffer(encode(sweep), dtype=np.uint8), -32768)  # index = uint16 view
    dec_table = np.frombuffer(decode(bytes(range(256))), dtype="<i2")

    def t_dec(payload: bytes) -> bytes:
        return bytes(dec_table[np.frombuffer(payload, dtype=np.uint8)].tobytes())

    def t_enc(pcm: bytes) -> bytes:
        return bytes(enc_table[np.frombuffer(pcm, dtype="<u2")].tobytes())

    return t_dec, t_enc, 8000


def soxr_chain(codec: str, soxr: Any) -> Chain | None:
    try:
        dec, enc, rate = table_codec(codec)
    except ImportError:
        return None
    up = soxr.ResampleStream(rate, 24000, 1, dtype="int16", quality="HQ")
    down = soxr.ResampleStream(24000, rate, 1, dtype="int16", quality="HQ")

    def inbound(payload: bytes) -> bytes:
        return bytes(up.resample_chunk(np.frombuffer(dec(payload), dtype="<i2")).tobytes())

    def outbound(pcm: bytes) -> bytes:
        return enc(down.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes())

    return inbound, outbound


def scipy_chain(codec: str, signal: Any) -> Chain | None:
    try:
        dec, enc, rate = table_codec(codec)
    except ImportError:
        return None
    up, down = (3, 1) if rate == 8000 else (3, 2)

    def inbound(payload: bytes) -> bytes:
        y = signal.resample_poly(np.frombuffer(dec(payload), dtype="<i2").astype(np.float32), up, down)
        return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())

    def outbound(pcm: bytes) -> bytes:
        y = signal.resample_poly(np.frombuffer(pcm, dtype="<i2").astype(np.float32), down, up)
        return enc(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())

    return inbound, outbound


def make_chain(name: str, codec: str, audioop: Any, soxr: Any, signal: Any) -> Chain | None:
    if name == "ours/x8":
        return ours_batched(codec)
    if name.startswith("ours"):
        return ours(codec)
    if name == "audioop":
        return audioop_chain(codec, audioop)
    if name == "soxr+np":
        return soxr_chain(codec, soxr)
    return scipy_chain(codec, signal)


def per_frame_us(step: Step, frames: list[bytes]) -> float:
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter_ns()
        for f in frames:
            step(f)
        runs.append((time.perf_counter_ns() - t0) / len(frames) / 1000)
    return min(runs) if BEST else statistics.median(runs)


def added_latency_ms(step: Step, frames: list[bytes], out_bytes_per_ms: float) -> float:
    """Worst shortfall of output against input so far (buffering inside the resampler), in ms."""
    expected = produced = 0.0
    worst = 0.0
    for f in frames:
        produced += len(step(f))
        expected += FRAME_MS * out_bytes_per_ms
        worst = max(worst, (expected - produced) / out_bytes_per_ms)
    return worst


STOP_TONES = np.linspace(4400.0, 11900.0, 40)  # the stopband the filters are designed for (as the tests)
TRANSITION_TONES = np.linspace(4050.0, 4350.0, 4)  # between the new Nyquist and that stopband
FLOOR_DB = 10 * np.log10(16384**2 / 2 / (1 / 12))  # output that rounds to silence: 92.1 dB


def rejection_db(resample: Step, tone_hz: float) -> float:
    """24k -> 8k, tone at -6 dBFS fed in 20 ms frames: tone power over the int16 output's power (DC
    removed, first quarter skipped). Output rounded to silence is counted as 1/12 LSB^2 (FLOOR_DB)."""
    t = np.arange(24000) / 24000
    x = np.round(16384 * np.sin(2 * np.pi * tone_hz * t)).astype("<i2").tobytes()
    y = np.frombuffer(b"".join(resample(x[i : i + 960]) for i in range(0, len(x), 960)), dtype="<i2")
    y = y[len(y) // 4 :].astype(float)
    p = max(float(np.mean((y - y.mean()) ** 2)), 1 / 12)
    return float(10 * np.log10(16384**2 / 2 / p))


def worst_rejection_db(make: Callable[[], Step], tones: np.ndarray) -> float:
    return min(rejection_db(make(), float(f)) for f in tones)


def resamplers_24_to_8(audioop: Any, soxr: Any, signal: Any) -> dict[str, Callable[[], Step]]:
    """Factories: every tone gets a fresh streaming state."""
    out: dict[str, Callable[[], Step]] = {"ours": lambda: kernel.Resampler(24000, 8000).process}
    if audioop is not None:

        def rc() -> Step:
            st: list[Any] = [None]

            def step(pcm: bytes) -> bytes:
                y, st[0] = audioop.ratecv(pcm, 2, 1, 24000, 8000, st[0])
                return bytes(y)

            return step

        out["audioop"] = rc
    if soxr is not None:

        def sx() -> Step:  # as in the soxr path: int16 out, which soxr dithers (TPDF)
            s = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality="HQ")
            return lambda pcm: bytes(s.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes())

        def sxf() -> Step:  # float out, rounded like ours: soxr's filter without its dither
            s = soxr.ResampleStream(24000, 8000, 1, dtype="float32", quality="HQ")

            def step(pcm: bytes) -> bytes:
                y = s.resample_chunk(np.frombuffer(pcm, dtype="<i2").astype(np.float32))
                return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())

            return step

        out["soxr"] = sx
        out["soxr/f32"] = sxf
    if signal is not None:
        out["scipy"] = lambda: lambda pcm: bytes(
            np.round(signal.resample_poly(np.frombuffer(pcm, dtype="<i2").astype(float), 1, 3))
            .astype("<i2")
            .tobytes()
        )
    return out


CALLGRIND_CHILD = """
import sys
from sipagent.media import kernel
from sipagent.rtp.srtp import PROFILES, SrtpContext
codec, frames, lanes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dec, enc = kernel.Decoder24k(codec), kernel.Encoder24k(codec)
pcm = bytes(range(256)) * 4
payload = enc.encode(pcm[:960])
encoders = [kernel.Encoder24k(codec) for _ in range(lanes)]
decoders = [kernel.FrameDecoder(codec) for _ in range(lanes)]
batch, received = kernel.EncoderBatch(), kernel.DecoderBatch()
received.schedule = lambda run: None
for _ in range(frames):
    if lanes == 1:
        dec.decode(payload)
        enc.encode(pcm[:960])
        continue
    for e in encoders:
        batch.stage(e, pcm[:960])
        batch.send(lambda header, payload: None, b"")
    batch.run()
    for d in decoders:
        received.stage(d, payload, lambda mean_square: None)
    received.run()
"""

# The C entry points each direction's instructions are counted in: one call's own path, and the batched one
# ("ours/x8": staging and the finish that codes the lanes, divided by the calls)
CALLGRIND_ENTRIES = {
    1: (("sk_dec24k_run",), ("sk_enc24k_run",)),
    LANES: (("sk_frame_stage", "sk_frame_finish"), ("sk_enc24k_stage", "sk_enc24k_finish")),
}


def callgrind_instructions(codec: str, lanes: int = 1, frames: int = 200) -> tuple[float, float]:
    """Instructions per call's frame inside the C entry points (inclusive), inbound and outbound, counted by
    callgrind: with lanes > 1, frames of that many calls handled together."""
    result: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, entries in enumerate(CALLGRIND_ENTRIES[lanes]):
            out = os.path.join(tmp, f"cg.{i}")
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   *(f"--toggle-collect={fn}" for fn in entries),
                   sys.executable, "-c", CALLGRIND_CHILD, codec, str(frames), str(lanes)]
            # run where this process's sipagent lies: the child's sys.path starts with its cwd
            subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=Path(kernel.__file__).parents[2])
            with open(out, encoding="utf-8") as fh:
                totals = [ln for ln in fh if ln.startswith(("totals:", "summary:"))]
            warm_up = 1 if lanes == 1 and i == 1 else 0  # the encode that made the payload
            result.append(int(totals[0].split()[1]) / (frames * lanes + warm_up))
    return result[0], result[1]


def srtp_per_packet_us(suite: str, payloads: list[bytes]) -> tuple[float, float]:
    """Median µs to protect, and to unprotect, one 20 ms RTP packet; fresh contexts per repeat, since
    libsrtp refuses a sequence number twice (replay protection) on both sides."""
    key_len = 28 if "GCM" in suite else 30
    packets = [struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + p for seq, p in enumerate(payloads)]
    protect_runs, unprotect_runs = [], []
    for _ in range(REPEATS):
        tx, rx = SrtpContext(suite, b"\x01" * key_len, b"\x02" * key_len), SrtpContext(suite, b"\x02" * key_len,
                                                                                      b"\x01" * key_len)
        t0 = time.perf_counter_ns()
        wire = [tx.protect(packet) for packet in packets]
        t1 = time.perf_counter_ns()
        opened = [rx.unprotect(data) for data in wire]
        t2 = time.perf_counter_ns()
        assert opened == packets and rx.dropped == 0
        protect_runs.append((t1 - t0) / len(packets) / 1000)
        unprotect_runs.append((t2 - t1) / len(packets) / 1000)
    return statistics.median(protect_runs), statistics.median(unprotect_runs)


def srtp_table(pcm: bytes, frames24: list[bytes]) -> None:
    coded = kernel.Encoder24k("PCMU").encode(pcm)
    payloads = [coded[i : i + 160] for i in range(0, len(coded), 160)]
    base = per_frame_us(ours("PCMU")[0], payloads) + per_frame_us(ours("PCMU")[1], frames24)
    print(f"\nSRTP per 20 ms packet (PCMU, 172 B of RTP), µs; the kernel's PCMU in+out is {base:.2f} µs:")
    print(f"  {'suite':24} {'protect':>8} {'unprotect':>9} {'both':>8} {'vs kernel':>9} {'packet pairs/core':>17}")
    for suite in sorted(PROFILES):
        protect, unprotect = srtp_per_packet_us(suite, payloads)
        both = protect + unprotect
        print(f"  {suite:24} {protect:8.2f} {unprotect:9.2f} {both:8.2f} {both / base:8.1f}x "
              f"{FRAME_MS * 1000 / both:17.0f}")


def main() -> None:
    audioop, soxr = optional("audioop"), optional("soxr")
    signal = optional("scipy.signal")
    pcm = speech_like(FRAMES * FRAME_MS / 1000)
    frames24 = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    print(f"SIMD level {kernel.simd_level()} (0 = SSE2/NEON baseline, 1 = AVX2 + FMA, 2 = with AVX-512 VL/BW); ",
          end="")
    print(f"python {sys.version.split()[0]}, "
          f"{FRAMES} frames x {REPEATS} repeats, {'fastest' if BEST else 'medians'}, µs per 20 ms frame")
    print(f"{'codec':6} {'method':8} {'in µs':>8} {'out µs':>8} {'in+out':>8} {'ours ×':>8} "
          f"{'calls/core':>10} {'latency ms in/out':>18}")
    for codec in ("PCMU", "PCMA", "G722"):
        coded = kernel.Encoder24k(codec).encode(pcm)
        payloads = [coded[i : i + 160] for i in range(0, len(coded), 160)]
        chains: dict[str, Chain | None] = {"ours": ours(codec), "ours/sse2": ours(codec)}
        if codec == "G722":
            chains["ours/x8"] = ours_batched(codec)
        if audioop is not None:
            chains["audioop"] = audioop_chain(codec, audioop)
        if soxr is not None:
            chains["soxr+np"] = soxr_chain(codec, soxr)
        if signal is not None:
            chains["scipy"] = scipy_chain(codec, signal)
        base = 0.0
        for name, chain in chains.items():
            if chain is None:
                continue
            kernel.simd_level(0 if name == "ours/sse2" else -1)  # baseline build vs runtime-dispatched AVX2
            t_in, t_out = per_frame_us(chain[0], payloads), per_frame_us(chain[1], frames24)
            if name == "ours/x8":
                t_in /= LANES
                t_out /= LANES
            kernel.simd_level()
            if name == "ours":
                base = t_in + t_out
            fresh = make_chain(name, codec, audioop, soxr, signal)
            assert fresh is not None
            lat_in = added_latency_ms(fresh[0], payloads, 48.0)
            lat_out = added_latency_ms(fresh[1], frames24, 8.0)
            total = t_in + t_out
            print(f"{codec:6} {name:8} {t_in:8.2f} {t_out:8.2f} {total:8.2f} {total / base:8.1f} "
                  f"{FRAME_MS * 1000 / total:10.0f} {lat_in:8.1f}/{lat_out:<8.1f}")
    print(f"\n24k -> 8k rejection, worst over tones (-6 dBFS, 20 ms frames, int16 out; {FLOOR_DB:.1f} dB ="
          " output rounds to silence):")
    print(f"  {'method':9} {'4.4-11.9 kHz':>13} {'4.05-4.35 kHz':>14}")
    for name, make in resamplers_24_to_8(audioop, soxr, signal).items():
        stop, trans = worst_rejection_db(make, STOP_TONES), worst_rejection_db(make, TRANSITION_TONES)
        print(f"  {name:9} {stop:10.1f} dB {trans:11.1f} dB")
    srtp_table(pcm, frames24)
    if "--no-callgrind" not in sys.argv and shutil.which("valgrind"):
        print("\ncallgrind instructions per 20 ms frame (C entry point, inclusive):")
        for codec, lanes in (("PCMU", 1), ("G722", 1), ("G722", LANES)):
            inb, outb = callgrind_instructions(codec, lanes)
            name = codec if lanes == 1 else f"{codec}/x{lanes}"
            print(f"  {name:8} inbound {inb:9.0f}   outbound {outb:9.0f}")


if __name__ == "__main__":
    main()
