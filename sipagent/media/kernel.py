"""Typed Python surface of the native audio kernel (the only importer of ``sipagent._kernel``).

PCM is 16-bit little-endian mono in ``bytes``. Codecs: G.711 μ-law (Sun/audioop lineage) and A-law,
G.722 at 64 kbit/s. ``Resampler`` and the fused ``Decoder24k``/``Encoder24k`` are streaming: their
state lives in a C struct allocated once, each call is a single FFI crossing into a reused output
buffer, and feeding a signal in pieces gives exactly the bytes of feeding it at once.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any, Final

from sipagent._kernel import ffi, lib
from sipagent.errors import KernelError

log = logging.getLogger(__name__)

__all__ = [
    "CODECS",
    "CODEC_SILENCE",
    "RATES",
    "Base64Decoder",
    "Decoder24k",
    "DecoderBatch",
    "Encoder24k",
    "EncoderBatch",
    "FrameDecoder",
    "G722Decoder",
    "G722Encoder",
    "Resampler",
    "alaw_decode",
    "alaw_encode",
    "base64_encode",
    "mean_square",
    "simd_level",
    "transcode",
    "ulaw_decode",
    "ulaw_encode",
]

ABI_VERSION: Final = 7
if lib.sk_abi_version() != ABI_VERSION:  # a stale build in the package dir would misbehave silently
    raise ImportError(f"sipagent._kernel ABI {lib.sk_abi_version()} != {ABI_VERSION}: rebuild the package")

RATES: Final = (8000, 16000, 24000)
CODECS: Final = {"PCMU": lib.SK_CODEC_PCMU, "PCMA": lib.SK_CODEC_PCMA, "G722": lib.SK_CODEC_G722}
FRAME_PAYLOAD_BYTES: Final = 160  # 20 ms at 8000 payload bytes/s, for all three codecs


def simd_level(request: int = -1) -> int:
    """Kernel SIMD path: -1 = best the CPU has (the default), 0 = baseline SSE2/NEON, 1 = AVX2 + FMA, 2 = the
    same with AVX-512 VL and BW (32 registers; G.722's ADPCM lanes in 16 bits; identical output to 1).

    The coders' output is identical at every level; the resampler's may differ from the baseline by 1 LSB
    on a few samples (FMA rounding). This exists for tests and benchmarks. Returns the level in use.
    """
    return int(lib.sk_simd_level(request))


def _even(pcm: bytes) -> int:
    n = len(pcm)
    if n & 1:
        raise KernelError(f"PCM16 input has an odd length ({n} bytes)")
    return n >> 1


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16 → G.711 μ-law, one byte per sample."""
    n = _even(pcm)
    out = ffi.new("char[]", n)
    lib.sk_ulaw_encode(pcm, n, out)
    return ffi.unpack(out, n)  # type: ignore[no-any-return]


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law → PCM16."""
    out = ffi.new("char[]", 2 * len(data))
    lib.sk_ulaw_decode(data, len(data), out)
    return ffi.unpack(out, 2 * len(data))  # type: ignore[no-any-return]


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16 → G.711 A-law, one byte per sample."""
    n = _even(pcm)
    out = ffi.new("char[]", n)
    lib.sk_alaw_encode(pcm, n, out)
    return ffi.unpack(out, n)  # type: ignore[no-any-return]


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law → PCM16."""
    out = ffi.new("char[]", 2 * len(data))
    lib.sk_alaw_decode(data, len(data), out)
    return ffi.unpack(out, 2 * len(data))  # type: ignore[no-any-return]


_mean_square: Any = lib.sk_mean_square


def base64_encode(data: bytes) -> bytes:
    """Standard base64 with padding (what ``base64.b64encode`` gives); the FrameDecoder's text encoder."""
    out = ffi.new("char[]", 4 * ((len(data) + 2) // 3))
    return ffi.unpack(out, lib.sk_base64(data, len(data), out))  # type: ignore[no-any-return]


def mean_square(pcm: bytes) -> float:
    """Mean of the squared PCM16 samples (exact sum in C; 0.0 for less than one sample).

    A trailing odd byte is ignored. Used for per-frame levels, where NumPy's set-up cost per call is
    larger than the arithmetic.
    """
    return float(_mean_square(pcm, len(pcm) >> 1))


_b64_decode: Any = lib.sk_b64_decode


class Base64Decoder:
    """Base64 text → bytes, in C for canonical input (what the API and our own encoder send), and
    through the standard library's decoders otherwise, so that every input decodes (or fails) exactly
    as it did with them: ``base64.b64decode`` (lenient), or ``binascii.a2b_base64(strict_mode=True)``
    with ``strict=True``.

    A 40 ms delta (2 560 characters) costs about a third of ``base64.b64decode``'s time.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = _Buffer(2560, 0.75, 3)  # 40 ms of 24 kHz PCM16, grown on demand

    def decode(self, text: str | bytes, *, strict: bool = False) -> bytes:
        try:
            data = text.encode("ascii") if isinstance(text, str) else text
        except UnicodeEncodeError:
            return _stdlib_b64decode(text, strict)
        buf = self._buf
        n = len(data)
        if n > buf.cap_in:
            buf.grow(n)
        k = _b64_decode(data, n, buf.mem)
        if k < 0:
            return _stdlib_b64decode(data, strict)
        return buf.view[:k]  # type: ignore[no-any-return]


def _stdlib_b64decode(text: str | bytes, strict: bool) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True) if strict else base64.b64decode(text)


class _Buffer:
    """A reusable output buffer that grows to the largest input seen (no allocation per frame)."""

    __slots__ = ("_slack", "cap_in", "mem", "per_in", "view")

    def __init__(self, cap_in: int, per_in: float, slack: int) -> None:
        self.per_in = per_in
        self.cap_in = 0
        self.mem: Any = None
        self.view: Any = None
        self._slack = slack
        self.grow(cap_in)

    def grow(self, n_in: int) -> None:
        self.cap_in = max(n_in, 2 * self.cap_in)
        self.mem = ffi.new("char[]", int(self.cap_in * self.per_in) + self._slack)
        # Slicing a cached ffi.buffer copies straight into a new immutable bytes: measured 78 ns for
        # 960 bytes against 106 ns for ffi.unpack and 207 ns for bytes(ffi.buffer(mem, k)).
        self.view = ffi.buffer(self.mem)


class Resampler:
    """Streaming polyphase FIR resampler between any two of 8000, 16000 and 24000 Hz.

    Any input length is accepted, odd byte counts included (the dangling byte waits for the next
    call). Output is delayed by ``delay_ms`` (linear phase; about 1.7 ms for every pair).
    """

    __slots__ = ("_buf", "_state", "from_rate", "to_rate")

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._state = ffi.new("sk_resampler *")
        if lib.sk_resampler_init(self._state, from_rate, to_rate) != 0:
            raise KernelError(f"unsupported resampling {from_rate} -> {to_rate} Hz (rates: {RATES})")
        # Bound from sk_resampler_max_out: ((n+1)/2 + 1) * L/M + 2 samples.
        self._buf = _Buffer(3840, to_rate / from_rate, 16)

    @property
    def delay_ms(self) -> float:
        """Group delay of the filter in milliseconds."""
        return float(lib.sk_resampler_delay(self._state)) * 1000.0 / self.from_rate

    def process(self, pcm: bytes) -> bytes:
        buf = self._buf
        n = len(pcm)
        if n > buf.cap_in:
            buf.grow(n)
        k = lib.sk_resampler_process(self._state, pcm, n, buf.mem)
        return buf.view[:k]  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Forget history (e.g. after a discontinuity) without reallocating."""
        lib.sk_resampler_reset(self._state)


class G722Encoder:
    """G.722 64 kbit/s encoder: 16 kHz PCM16 → one byte per two samples; leftovers carry over."""

    __slots__ = ("_buf", "_state")

    def __init__(self) -> None:
        self._state = ffi.new("sk_g722_encoder *")
        lib.sk_g722_encoder_init(self._state)
        self._buf = _Buffer(640, 0.25, 4)

    def encode(self, pcm16k: bytes) -> bytes:
        buf = self._buf
        n = len(pcm16k)
        if n > buf.cap_in:
            buf.grow(n)
        k = lib.sk_g722_encode(self._state, pcm16k, n, buf.mem)
        return buf.view[:k]  # type: ignore[no-any-return]


class G722Decoder:
    """G.722 64 kbit/s decoder: each byte → two 16 kHz PCM16 samples."""

    __slots__ = ("_buf", "_state")

    def __init__(self) -> None:
        self._state = ffi.new("sk_g722_decoder *")
        lib.sk_g722_decoder_init(self._state)
        self._buf = _Buffer(160, 4, 0)

    def decode(self, data: bytes) -> bytes:
        buf = self._buf
        n = len(data)
        if n > buf.cap_in:
            buf.grow(n)
        k = lib.sk_g722_decode(self._state, data, n, buf.mem)
        return buf.view[:k]  # type: ignore[no-any-return]


def _codec_id(codec: str) -> int:
    try:
        return int(CODECS[codec.upper()])
    except KeyError:
        raise KernelError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})") from None


# Bound once: the per-frame methods skip the `lib` attribute lookup. The *_push entry points take three
# arguments (the output buffer lives in the C state): cffi passes more than one argument as a tuple,
# whose cost grows with the count.
_dec24k_push: Any = lib.sk_dec24k_push
_enc24k_push: Any = lib.sk_enc24k_push
_enc24k_stage: Any = lib.sk_enc24k_stage
_enc24k_finish: Any = lib.sk_enc24k_finish
LANES: Final = int(lib.SK_ENC_LANES)  # G.722 frames the kernel codes side by side
BATCH_MAX: Final = int(lib.SK_BATCH_MAX)  # staged frames the kernel lists in one batch (more run it first)


class Decoder24k:
    """RTP payload (PCMU, PCMA or G722) → 24 kHz PCM16, 6 output bytes per payload byte, one FFI call."""

    __slots__ = ("_buf", "_cap", "_state", "_view", "codec")

    def __init__(self, codec: str) -> None:
        self.codec = codec.upper()
        self._state = ffi.new("sk_dec24k *")
        lib.sk_dec24k_init(self._state, _codec_id(codec))
        self._buf = _Buffer(FRAME_PAYLOAD_BYTES, 6, 0)
        self._attach()

    def _attach(self) -> None:
        self._state.out = self._buf.mem
        self._cap, self._view = self._buf.cap_in, self._buf.view

    def decode(self, payload: bytes) -> bytes:
        n = len(payload)
        if n > self._cap:  # rare: a longer payload than any before
            self._buf.grow(n)
            self._attach()
        return self._view[: _dec24k_push(self._state, payload, n)]  # type: ignore[no-any-return]


class Encoder24k:
    """24 kHz PCM16 of any length → RTP payload bytes (8000 per second); remainders carry over.

    ``encode`` codes a frame at once; ``stage`` leaves a G.722 frame's coding to an :class:`EncoderBatch`
    run (``staged_payload`` afterwards), which codes the frames of several calls side by side.
    """

    __slots__ = ("_buf", "_cap", "_staged", "_state", "_view", "codec")

    def __init__(self, codec: str) -> None:
        self.codec = codec.upper()
        self._state = ffi.new("sk_enc24k *")
        lib.sk_enc24k_init(self._state, _codec_id(codec))
        self._buf = _Buffer(960, 1 / 6, 4)
        self._staged = 0
        self._attach()

    def _attach(self) -> None:
        self._state.out = self._buf.mem
        self._cap, self._view = self._buf.cap_in, self._buf.view

    def encode(self, pcm24k: bytes) -> bytes:
        n = len(pcm24k)
        if n > self._cap:
            self._grow(n)
        return self._view[: _enc24k_push(self._state, pcm24k, n)]  # type: ignore[no-any-return]

    def _grow(self, n: int) -> None:
        self._buf.grow(n)
        self._attach()

    def staged_payload(self) -> bytes:
        """The payload of the frame last staged by an :class:`EncoderBatch`, once that batch has run."""
        return self._view[: self._staged]  # type: ignore[no-any-return]

    @property
    def mean_square(self) -> float:
        """The mean square of the PCM of the last ``encode`` (that of :func:`mean_square`, to the bit): the
        level of what was sent, from the same kernel call."""
        return float(self._state.in_mean_square)


def _make_room(batch: EncoderBatch | DecoderBatch, refused: int, member: object) -> None:
    """After the kernel refused to stage ``member`` in ``batch``: the batch runs (the member's earlier frame
    waits there, or the batch is full), unless another batch lists the member, which is an error."""
    if refused == lib.SK_BATCH_ELSEWHERE:
        raise KernelError(f"{member!r} has a frame staged in another {type(batch).__name__}, which has not run")
    batch.run()


class EncoderBatch:
    """Frames of several calls coded together: each ``stage``d and ``send`` told where its payload goes;
    ``run`` codes every staged G.722 frame in one kernel call, eight calls side by side (sk_enc24k_finish:
    the same codes as ``encode``, 8.9 -> 3.8 µs per frame), then hands each payload on in staging order.
    It runs by itself as soon as a full group of the kernel's lanes waits, so no frame waits for more than
    seven others. The kernel keeps the list of staged states; an encoder is staged in one batch at a time.

    The media clock keeps one open through each phase tick, so the calls due at that instant share it."""

    __slots__ = ("_batch", "_encoders", "_sends", "after_each", "frames", "staged")

    def __init__(self) -> None:
        self.staged = 0  # frames staged so far
        self.frames = 0  # frames coded by runs so far
        self.after_each: Callable[[], None] | None = None  # runs after each delivery
        self._batch: Any = ffi.new("sk_enc24k_batch *")  # the kernel's list of the staged states
        self._encoders: list[Encoder24k] = []  # the same, keeping them alive until the run
        self._sends: list[tuple[Callable[[bytes, bytes], None], bytes] | None] = []

    def __del__(self) -> None:
        # Dropped with frames staged: code them (sent nowhere), so the kernel lists their states nowhere.
        if self._encoders:
            _enc24k_finish(self._batch)

    def __len__(self) -> int:
        """Frames staged and not yet coded."""
        return len(self._encoders)

    def stage(self, encoder: Encoder24k, pcm24k: bytes) -> None:
        """Stage ``encoder``'s next frame, whose destination ``send`` names next: ``encoder.encode``, except
        that a G.722 frame stops before its ADPCM coding (G.711, or more than 1500 bytes, is coded at once).
        The encoder's ``mean_square`` is that frame's at once."""
        # Encoder24k's part inlined: this runs for every frame of every G.722 call.
        n = len(pcm24k)
        if n > encoder._cap:  # rare: a longer frame than any before
            if encoder._state.batch != ffi.NULL:  # a payload coded at its staging is in the buffer to replace
                self.run()
            encoder._grow(n)
        staged = _enc24k_stage(self._batch, encoder._state, pcm24k, n)
        if staged < 0:  # its earlier frame is still here (or the batch is full): code those first, in order
            _make_room(self, staged, encoder)
            staged = _enc24k_stage(self._batch, encoder._state, pcm24k, n)
        encoder._staged = staged
        self._encoders.append(encoder)  # not held in a local: a run starts new lists
        # No destination until ``send`` names one: if its stream fails first, the frame is coded all the
        # same (its encoder stays in step) and sent nowhere.
        self._sends.append(None)
        self.staged += 1

    def send(self, deliver: Callable[[bytes, bytes], None], header: bytes) -> None:
        """Once coded, the frame staged last goes to ``deliver(header, payload)``."""
        sends = self._sends
        if not sends or sends[-1] is not None:
            raise KernelError("EncoderBatch.send: no staged frame waits for a destination")
        sends[-1] = (deliver, header)
        if len(sends) >= LANES:
            self.run()

    def run(self) -> None:
        """Code what is staged and deliver each payload. A delivery that raises is logged; the others
        still go out."""
        encoders, sends = self._encoders, self._sends
        if not encoders:
            return
        self._encoders, self._sends = [], []
        _enc24k_finish(self._batch)
        self.frames += len(encoders)
        after_each = self.after_each
        for encoder, to in zip(encoders, sends, strict=True):
            if to is None:
                continue
            try:
                to[0](to[1], encoder._view[: encoder._staged])  # its staged_payload()
            except Exception:
                log.exception("delivering a coded frame failed")
            if after_each is not None:
                after_each()


_frame_push: Any = lib.sk_frame_push
_frame_stage: Any = lib.sk_frame_stage
_frame_finish: Any = lib.sk_frame_finish
TEXT_OF: Final = {None: lib.SK_TEXT_NONE, "pcm": lib.SK_TEXT_PCM, "payload": lib.SK_TEXT_PAYLOAD}


class FrameDecoder:
    """A received payload → its 24 kHz PCM16 (``pcm``), that PCM's mean square (returned by ``push``)
    and, when asked, ``text``: ``head`` + base64 of the PCM or of the payload + ``tail``, in one FFI call.

    Decoding is that of :class:`Decoder24k` and the level that of :func:`mean_square`, to the bit. The
    bridge forwards each caller frame to the model as JSON with the audio in base64: with the JSON's
    fixed head and tail given here, the event's text comes out of the same call that decodes the frame.
    ``pcm`` and ``text`` are copied out only when read.
    """

    __slots__ = ("_cap", "_pcm", "_pview", "_state", "_text", "_tview", "codec")

    def __init__(self, codec: str, text_of: str | None = None, head: bytes = b"", tail: bytes = b"") -> None:
        self.codec = codec.upper()
        if text_of not in TEXT_OF:
            raise KernelError(f"unknown text source {text_of!r} (known: pcm, payload, None)")
        self._state = ffi.new("sk_frame_decoder *")
        self._pcm = _Buffer(FRAME_PAYLOAD_BYTES, 6, 0)
        # base64 of the PCM is 8 bytes per payload byte; of the payload, 4 per 3 plus padding
        self._text = _Buffer(FRAME_PAYLOAD_BYTES, 8 if text_of else 0, len(head) + len(tail) + 4)
        if lib.sk_frame_decoder_init(self._state, _codec_id(codec), TEXT_OF[text_of], head, len(head), tail,
                                     len(tail)) != 0:
            raise KernelError(f"text head/tail too long ({len(head)}/{len(tail)} bytes, "
                              f"at most {lib.SK_TEXT_MAX_HEAD}/{lib.SK_TEXT_MAX_TAIL})")
        self._attach()

    def _attach(self) -> None:
        self._state.dec.out = self._pcm.mem
        self._state.text = self._text.mem
        self._pview, self._tview = self._pcm.view, self._text.view
        self._cap = self._pcm.cap_in

    def _grow(self, n: int) -> None:
        self._pcm.grow(n)
        self._text.grow(n)
        self._attach()

    def push(self, payload: bytes) -> float:
        """Decodes one payload; returns the mean square of its 24 kHz PCM16."""
        n = len(payload)
        if n > self._cap:  # rare: a longer payload than any before
            self._grow(n)
        return _frame_push(self._state, payload, n)  # type: ignore[no-any-return]

    @property
    def pending(self) -> bool:
        """A frame of this decoder waits in a :class:`DecoderBatch` (its ``pcm`` and ``text`` are not its yet)."""
        return self._state.batch != ffi.NULL  # type: ignore[no-any-return]

    @property
    def mean_square(self) -> float:
        """The mean square of the last decoded payload's PCM (what ``push`` returns)."""
        return self._state.mean_square  # type: ignore[no-any-return]

    @property
    def payload_len(self) -> int:
        """The length of the last decoded payload."""
        return self._state.pcm_len // 6  # type: ignore[no-any-return]

    @property
    def pcm(self) -> bytes:
        """The last payload's 24 kHz PCM16 (6 bytes per payload byte)."""
        return self._pview[: self._state.pcm_len]  # type: ignore[no-any-return]

    @property
    def text(self) -> bytes:
        """The last payload's text (b"" when decoding without text)."""
        return self._tview[: self._state.text_len]  # type: ignore[no-any-return]


class DecoderBatch:
    """Received frames of several calls decoded together: each ``stage``d with what to do once it is
    decoded (``then(mean_square)``, the decoder's ``pcm`` and ``text`` then hold it); ``run`` decodes every
    staged G.722 frame in one kernel call, eight calls' ADPCM side by side (sk_frame_finish: the outputs of
    :meth:`FrameDecoder.push`, to the bit), then calls each ``then`` in staging order. A frame decoded at
    once (G.711, or with no ``schedule``) has its ``then`` called within ``stage``.

    ``schedule(run)`` is called when a first frame is staged into an empty batch: the media clock (the
    asyncio shell) runs the batch at the end of the event loop's pass, so the frames that arrived in one pass
    share it, and at the end of each of its phase ticks. It also runs by itself once a full group of the
    kernel's lanes waits, and before a decoder is staged twice."""

    __slots__ = ("_batch", "_decoders", "_mean_squares", "_thens", "frames", "runs", "schedule")

    def __init__(self) -> None:
        self.frames = 0  # frames decoded by runs so far
        self.runs = 0  # runs that decoded at least one frame
        self.schedule: Callable[[Callable[[], None]], object] | None = None
        # Never more than LANES frames wait: the one that fills the lanes runs the batch.
        self._batch: Any = ffi.new("sk_frame_batch *")  # the kernel's list of the staged states
        self._mean_squares: Any = ffi.new("double[]", BATCH_MAX)
        self._decoders: list[FrameDecoder] = []  # the same, keeping them alive until the run
        self._thens: list[Callable[[float], None]] = []

    def __del__(self) -> None:
        # Dropped with frames staged: decode them (handled nowhere), so the kernel lists their states nowhere.
        if self._decoders:
            _frame_finish(self._batch, self._mean_squares)

    def __len__(self) -> int:
        """Frames staged and not yet decoded."""
        return len(self._decoders)

    def stage(self, decoder: FrameDecoder, payload: bytes, then: Callable[[float], None]) -> None:
        schedule = self.schedule
        if schedule is None:
            then(decoder.push(payload))
            return
        # ``push``, except that a G.722 payload of at most 256 bytes (32 ms) waits in the decoder for the
        # run; any other is decoded at once. Inlined: this runs for every frame of every G.722 call.
        n = len(payload)
        if n > decoder._cap:
            decoder._grow(n)
        waiting = _frame_stage(self._batch, decoder._state, payload, n)
        if waiting < 0:  # its earlier frame is still here: that one first, in order
            _make_room(self, waiting, decoder)
            waiting = _frame_stage(self._batch, decoder._state, payload, n)
        if waiting == 0:  # decoded at once
            then(decoder._state.mean_square)
            return
        self._decoders.append(decoder)
        self._thens.append(then)
        if waiting == 1:  # after the appends: if scheduling fails, the frame still waits for a later run
            schedule(self.run)
        if waiting == LANES:
            self.run()

    def run(self) -> None:
        """Decode what is staged and call each ``then``; one that raises is logged, the others still run."""
        decoders, thens = self._decoders, self._thens
        n = len(decoders)
        if n == 0:
            return
        self._decoders, self._thens = [], []
        _frame_finish(self._batch, self._mean_squares)
        self.frames += n
        self.runs += 1
        for then, mean_sq in zip(thens, ffi.unpack(self._mean_squares, n), strict=True):
            try:
                then(mean_sq)
            except Exception:
                log.exception("handling a decoded frame failed")


# One 20 ms payload of silence per codec. G.722 has no single silence code: 0xFF (smallest lower-band
# step, smallest higher-band step) keeps any decoder's output within a few LSB of zero once it settles;
# repeating what an idle encoder emits first (0xFA) would let the predictor drift to a DC offset.
CODEC_SILENCE: Final[dict[str, bytes]] = {
    "PCMU": b"\xff" * FRAME_PAYLOAD_BYTES,
    "PCMA": b"\xd5" * FRAME_PAYLOAD_BYTES,
    "G722": b"\xff" * FRAME_PAYLOAD_BYTES,
}


def transcode(payload: bytes, from_codec: str, to_codec: str) -> bytes:
    """RTP payload bytes of one codec → the same audio in another, of the same length (every codec here
    carries 8000 bytes a second): what a call's playout queue still holds when a re-INVITE changes its
    codec. G.711 to G.711 goes sample for sample; to or from G.722 through 24 kHz, with fresh codec and
    filter state (a few milliseconds of settling at the start of the stretch)."""
    source, target = from_codec.upper(), to_codec.upper()
    if source == target:
        return payload
    if "G722" not in (source, target):
        pcm = ulaw_decode(payload) if source == "PCMU" else alaw_decode(payload)
        return ulaw_encode(pcm) if target == "PCMU" else alaw_encode(pcm)
    return Encoder24k(target).encode(Decoder24k(source).decode(payload))
