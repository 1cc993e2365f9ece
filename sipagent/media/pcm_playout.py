"""The agent's playout queue: 24 kHz PCM16 queued, encoded for the call's codec as each frame leaves.

The queue of sipagent.media.playout, holding the model's audio as PCM rather than as payload, so that:
- a duck scales samples (sipagent.media.gain) in every codec: an adaptive G.722 frame cannot be scaled
  once encoded, and a re-encoded one would leave the far end's decoder out of step with ours;
- a codec change (a re-INVITE) re-encodes nothing: frames simply leave in the new codec (``use_codec``);
- the frame just sent is at hand as PCM with its mean square (``sent_pcm``, ``sent_mean_square``): the
  echo reference barge-in compares the caller with, and the recording's agent side, without decoding
  what was sent back (for G.722 that decode cost as much as the encode);
- during a clock phase tick a G.722 frame is only staged (``pop_frame_staged``), and coded with the other
  calls' frames of that tick (sipagent.media.kernel.EncoderBatch).
"""

from __future__ import annotations

from collections.abc import Callable

from sipagent.media.gain import scale_pcm
from sipagent.media.kernel import CODEC_SILENCE, Encoder24k, EncoderBatch
from sipagent.media.playout import PlayoutQueue

PCM_FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16
_PCM_SILENCE = bytes(PCM_FRAME_BYTES)


class PcmPlayout(PlayoutQueue):
    """A call's playout queue of 24 kHz PCM16 whose frames leave encoded in ``codec``."""

    def __init__(self, codec: str, hold_ticks: int = 2) -> None:
        super().__init__(PCM_FRAME_BYTES, _PCM_SILENCE, hold_ticks)
        self.shaper = scale_pcm
        self.sent_pcm = _PCM_SILENCE  # the last frame popped, as sent (after any gain); silence: zeros
        self.sent_mean_square = 0.0
        self.use_codec(codec)

    def use_codec(self, codec: str) -> None:
        """Frames leave in ``codec`` from the next pop on, from a fresh encoder (as the far end's decoder
        starts afresh); what is queued stays as it is."""
        self.codec = codec
        self.encoder = Encoder24k(codec)
        self._batched = self.encoder.codec == "G722"  # coded with the tick's other calls (G.711 is too cheap to gain)
        self.wire_silence = CODEC_SILENCE[codec]

    def reframe(self, silence: bytes, convert: Callable[[bytes], bytes] | None = None) -> None:
        """The endpoint's codec change: the queued PCM needs no conversion and ``use_codec`` has set the
        encoder, so only what goes out when nothing is queued changes."""
        self.wire_silence = bytes(silence)

    def pop_frame(self) -> tuple[bytes, bool]:
        """``(payload, is_audio)`` in the call's codec: the next 20 ms of audio encoded, or its silence."""
        pcm, is_audio = PlayoutQueue.pop_frame(self)  # not super(): this runs for every frame of every call
        if not is_audio:
            self.sent_pcm = _PCM_SILENCE
            self.sent_mean_square = 0.0
            return self.wire_silence, False
        encoder = self.encoder
        payload = encoder.encode(pcm)
        self.sent_pcm = pcm
        self.sent_mean_square = encoder.mean_square
        return payload, True

    encodes_pcm = True

    def encode_pcm(self, pcm24k: bytes) -> bytes:
        """A frame not from the queue (a key's tone) coded now by the call's encoder, so that a G.722 decoder
        at the far end stays in step; it is the frame just sent (the echo reference, the recording)."""
        encoder = self.encoder
        payload = encoder.encode(pcm24k)
        self.sent_pcm = pcm24k
        self.sent_mean_square = encoder.mean_square
        return payload

    def pop_frame_staged(self, batch: EncoderBatch) -> tuple[bytes | None, bool]:
        """``pop_frame``, with a G.722 frame staged in ``batch`` (payload None) rather than coded here."""
        if not self._batched:
            return self.pop_frame()
        pcm, is_audio = PlayoutQueue.pop_frame(self)
        if not is_audio:
            self.sent_pcm = _PCM_SILENCE
            self.sent_mean_square = 0.0
            return self.wire_silence, False
        encoder = self.encoder
        batch.stage(encoder, pcm)
        self.sent_pcm = pcm
        self.sent_mean_square = encoder.mean_square
        return None, True


__all__ = ["PCM_FRAME_BYTES", "PcmPlayout"]
