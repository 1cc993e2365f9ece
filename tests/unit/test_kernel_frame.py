"""FrameDecoder (one FFI call per received frame) against the separate primitives, to the byte."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from sipagent.errors import KernelError
from sipagent.media import kernel

HEAD, TAIL = b'{"type":"input_audio_buffer.append","audio":"', b'"}'


def test_base64_is_the_standard_encoding_for_every_tail_length() -> None:
    rng = np.random.default_rng(3)
    for n in [*range(0, 40), 159, 160, 161, 960, 4001]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert kernel.base64_encode(data) == base64.b64encode(data)
    every_byte = bytes(range(256)) * 3  # every 12-bit pair value appears
    assert kernel.base64_encode(every_byte) == base64.b64encode(every_byte)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
@pytest.mark.parametrize("text_of", ["pcm", "payload", None])
def test_frame_decoder_equals_decoder24k_mean_square_and_base64(codec: str, text_of: str | None) -> None:
    rng = np.random.default_rng(11)
    frames = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(30)]
    # then other lengths: a longer payload than any before (the buffers grow), odd ones, an empty one
    frames += [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (161, 400, 1, 2, 0, 160, 239)]
    fused, reference = kernel.FrameDecoder(codec, text_of, HEAD, TAIL), kernel.Decoder24k(codec)
    for payload in frames:
        ms = fused.push(payload)
        pcm = reference.decode(payload)
        assert fused.pcm == pcm
        assert ms == kernel.mean_square(pcm)
        carried = {"pcm": pcm, "payload": payload, None: None}[text_of]
        assert fused.text == (b"" if carried is None else HEAD + base64.b64encode(carried) + TAIL)


def test_frame_decoder_level_of_silence_and_of_a_full_scale_square() -> None:
    dec = kernel.FrameDecoder("PCMA")
    assert dec.push(b"\xd5" * 160) == kernel.mean_square(kernel.Decoder24k("PCMA").decode(b"\xd5" * 160))
    assert dec.push(b"") == 0.0 and dec.pcm == b""


def test_frame_decoder_rejects_what_it_cannot_do() -> None:
    with pytest.raises(KernelError, match="unknown codec"):
        kernel.FrameDecoder("OPUS")
    with pytest.raises(KernelError, match="unknown text source"):
        kernel.FrameDecoder("PCMU", "json")
    with pytest.raises(KernelError, match="too long"):
        kernel.FrameDecoder("PCMU", "pcm", b"x" * 65, TAIL)
    with pytest.raises(KernelError, match="too long"):
        kernel.FrameDecoder("PCMU", "pcm", HEAD, b"x" * 17)
    assert kernel.FrameDecoder("pcmu").codec == "PCMU"
