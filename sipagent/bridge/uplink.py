"""The caller's audio to the model, every 20 ms, heard against the echo of what the agent sent.

Each caller frame is decoded once by the kernel, which also gives its level for the echo-aware VAD and
writes the ``input_audio_buffer.append`` JSON text; the VAD's reference is each agent frame the clock puts
on the wire, as the PCM it was encoded from and its level (``agent_sent``). Frames with sound in them (or
any while the agent is paused or ducked) go to the barge-in shell through ``on_sound``. Nothing here
waits: both entry points run in the media clock's tick or as a packet arrives. On a line that negotiated no
telephone-event the caller's keys come as tones in the audio: ``listen_for_keys`` has each frame looked at
for them too (sipagent.media.dtmf_detect), and a key heard goes to ``on_key``. With a ``DecoderBatch``
(the media clock's ``received``), a G.722 frame is decoded with the other calls' frames that arrived in
the same pass of the event loop, and handled (``_heard``) when that batch runs: at the end of the pass or
of the clock's next phase tick at the latest.
"""

from __future__ import annotations

from collections.abc import Callable

from sipagent.bridge.bargein import BargeInPolicy
from sipagent.bridge.session import RealtimeSession
from sipagent.bridge.state import CallState
from sipagent.bridge.transcript import StereoRecorder
from sipagent.media.dtmf_detect import ToneDetector
from sipagent.media.kernel import (
    CODEC_SILENCE,
    FRAME_PAYLOAD_BYTES,
    DecoderBatch,
    FrameDecoder,
    Resampler,
    alaw_encode,
    ulaw_encode,
)
from sipagent.media.vad import EchoAwareVad, VadSettings, mean_square_db
from sipagent.realtime import events as ev


class Uplink:
    decoder: FrameDecoder  # the call's codec's (use_codec)

    def __init__(self, codec: str, audio_format: str, vad: VadSettings, echo_suppression: bool,
                 session: RealtimeSession, state: CallState, policy: BargeInPolicy,
                 on_sound: Callable[[bool], None], recorder: StereoRecorder | None = None,
                 batch: DecoderBatch | None = None) -> None:
        self.session = session
        self.batch = batch
        self.state = state
        self.policy = policy
        self.on_sound = on_sound
        self.recorder = recorder
        self.echo_suppression = echo_suppression  # barge-in is not "off"
        self.vad = EchoAwareVad(vad)
        # False: the caller's audio is heard here (VAD, recording) but not sent to the model, which then has
        # nothing to answer or to interrupt its response for (a message left on a machine).
        self.to_model = True
        self.passthrough = passthrough_codec(audio_format)
        # G.711 to the model from a call in another codec: our 24 kHz audio, down to 8 kHz and encoded.
        self._to_8k = Resampler(24000, 8000) if self.passthrough else None
        self._staging: DecoderBatch | None = None
        self._keys: ToneDetector | None = None  # listening for keys in the audio (listen_for_keys)
        self.on_key: Callable[[str, int], None] | None = None
        self.use_codec(codec)

    def listen_for_keys(self, on: bool) -> None:
        """Look for the caller's keys in the audio (a line with no telephone-event) or stop (one with it)."""
        if on and self._keys is None:
            self._keys = ToneDetector()
        elif not on and self._keys is not None:
            self._keys = None

    def use_codec(self, codec: str) -> None:
        """Everything that depends on the call's codec, with fresh codec state (as the far end has after a
        change): at the answer, and again when a re-INVITE changes the codec."""
        if self._staging is not None and self.decoder.pending:
            self._staging.run()  # the old codec's frame is handled with the decoder that decoded it
        self.codec = codec
        if self._keys is not None:
            self._keys = ToneDetector()  # a key under way in the old codec is not finished in the new one
        # Only G.722 gains from decoding with other calls: G.711 frames are decoded at once.
        self._staging = self.batch if codec == "G722" else None
        # Each caller frame goes to the model as an append of its 24 kHz PCM (pcm16) or of the payload
        # itself (G.711 of the call's own codec): then the kernel writes the append's JSON text as it
        # decodes the frame. G.711 from a call in another codec is re-encoded here (_up_encode).
        self._kernel_text = self.passthrough is None or self.passthrough == codec
        self.decoder = self._new_decoder()
        self._silence_texts: dict[int, bytes] = {}  # payload length -> the append of an echo-only frame

    def _new_decoder(self) -> FrameDecoder:
        text_of = ("payload" if self.passthrough else "pcm") if self._kernel_text else None
        return FrameDecoder(self.codec, text_of, ev.AUDIO_APPEND_HEAD.encode(), ev.AUDIO_APPEND_TAIL.encode())

    def reset_vad(self) -> None:
        """The voice detector starts afresh (after a hold: what it measured was music)."""
        self.vad = EchoAwareVad(self.vad.settings)

    def caller_frame(self, payload: bytes) -> None:
        """One 20 ms payload from the jitter buffer (called every tick while media flows)."""
        # One kernel call: the 24 kHz PCM, its level for the VAD and the append's JSON text.
        staging = self._staging
        if staging is None:
            self._heard(self.decoder.push(payload))
        else:
            staging.stage(self.decoder, payload, self._heard)

    def _heard(self, mean_sq: float) -> None:
        """The caller frame just decoded (``decoder``'s pcm and text) and its PCM's mean square."""
        frame = self.decoder
        vad = self.vad
        keyed = self._keys is not None and self._listen(frame.pcm, mean_sq)
        if keyed:  # a key's tone is not speech: to the voice detector and the model it is silence
            mean_sq = 0.0
        speech = vad.caller_mean_square(mean_sq)
        if self.recorder:
            self.recorder.caller(frame.pcm)
        if speech or vad.onset_ms or self.policy.paused:  # onset_ms >= loud_ms: its threshold is lower
            self.on_sound(speech)
        session = self.session
        link = session.link
        if link is None or self.state.name != "live" or not self.to_model:
            return
        if keyed or (vad.echo_only and self.echo_suppression):
            # Half-duplex echo suppression: while the agent is audible, frames no louder than its echo are
            # sent as silence, so the model's VAD and transcription never hear the agent's own voice.
            text = self._silence_text(frame.payload_len)
        elif self._kernel_text:
            text = frame.text
        else:
            text = ev.audio_append_json(self._up_encode(frame.pcm)).encode()
        # Every 20 ms of every call: JSON text built without json.dumps (it was the bridge's largest cost),
        # written at once when nothing is queued before it (RealtimeLink.send_now), else behind what is.
        outbox = session.outbox
        if not outbox.empty() or not link.send_now(text):
            outbox.put_nowait(text.decode())

    def caller_gap(self, payload: bytes) -> None:
        """The jitter buffer's stand-in for a frame the caller's stream did not bring in time (lost, late, or
        not sent in a silence): ``payload``, the last frame again or the codec's silence, is not used. The gap
        is heard as silence by the recording and the model, and as a gap by the voice detector (silence, but
        no evidence of the echo: EchoAwareVad.caller_gap); the key detector skips it, so a key's tone is not
        cut in two.

        Nothing is decoded: G.722's decoder is stateful, and a payload the far end's encoder never coded,
        decoded, sets the two apart (a repeat came out up to 15 dB above the frames before it, and the voice
        detector took the burst for the caller). The G.722 frames after a gap are decoded from a fresh
        state: carried on from the last frame before a loss, the decoder's adaptation is off by what the
        lost frame would have taught it, and in about one loss in ten the next frames came out louder than
        anything around them (by up to 8 dB); from a fresh state they start quieter and catch up within a
        few frames."""
        if self._staging is not None and self.decoder.pending:
            self._staging.run()  # the frame before the gap is handled before it
        if self.codec == "G722" and self.decoder.payload_len:  # not already fresh (the gap's first frame)
            self.decoder = self._new_decoder()
        self.vad.caller_gap()
        if self.recorder:
            self.recorder.caller(bytes(6 * FRAME_PAYLOAD_BYTES))
        if self.policy.paused:
            self.on_sound(False)  # a quiet frame towards the pause's end, as _heard gives
        link = self.session.link
        if link is None or self.state.name != "live" or not self.to_model:
            return
        text = self._silence_text(FRAME_PAYLOAD_BYTES)
        outbox = self.session.outbox  # as in _heard
        if not outbox.empty() or not link.send_now(text):
            outbox.put_nowait(text.decode())

    def _listen(self, pcm: bytes, mean_sq: float) -> bool:
        """Whether this frame holds a key; a key that ended goes to ``on_key``."""
        assert self._keys is not None
        key = self._keys.push(pcm, mean_sq)
        if key is not None and self.on_key is not None:
            self.on_key(*key)
        return self._keys.in_key

    def agent_sent(self, pcm24k: bytes, mean_sq: float) -> None:
        """The media clock just sent a frame to the caller: the 24 kHz PCM it was encoded from (zeros for
        silence) and that PCM's mean square. The echo reference barge-in compares the caller with, and the
        recording's agent side."""
        self.vad.agent_frame(mean_square_db(mean_sq))
        if self.recorder:
            self.recorder.agent(pcm24k)

    def _silence_text(self, n: int) -> bytes:
        """The append sent instead of an echo-only caller frame of n payload bytes: silence in the model's
        format, the same text every time (cached) unless it goes through the stateful resampler."""
        if not self._kernel_text:
            return ev.audio_append_json(self._up_encode(bytes(6 * n))).encode()
        text = self._silence_texts.get(n)
        if text is None:
            silence = CODEC_SILENCE[self.codec] if self.passthrough else bytes(6 * n)
            text = self._silence_texts[n] = ev.audio_append_json(silence).encode()
        return text

    def _up_encode(self, pcm24k: bytes) -> bytes:
        if self._to_8k is None:
            return pcm24k
        pcm8k = self._to_8k.process(pcm24k)
        return ulaw_encode(pcm8k) if self.passthrough == "PCMU" else alaw_encode(pcm8k)


def passthrough_codec(audio_format: str) -> str | None:
    """The G.711 codec the model takes directly (``realtime.audio_format``), None for PCM16."""
    return {"g711_ulaw": "PCMU", "g711_alaw": "PCMA"}.get(audio_format)


__all__ = ["Uplink", "passthrough_codec"]
