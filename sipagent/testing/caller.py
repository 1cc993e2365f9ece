"""A small SIP caller for the demo, the benchmarks and the tests: it dials a SIP URI, speaks a PCM clip over
RTP and records what it hears.

Its signalling is the product's own: a ``UserAgent`` in direct mode that places one call with ``dial`` (the
same call core in the UAC role as outbound calls), so there is one SIP stack. It answers a REFER with 202 and
reports the pretend transfer with NOTIFY sipfrag (or refuses it: ``refer_status``, ``transfer_result``), and
sends RFC 4733 DTMF. Media goes through the same RTP endpoint and shared media clock as the agent's calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sipagent.errors import SipagentError
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import CODEC_SILENCE, Decoder24k, Encoder24k
from sipagent.media.playout import PlayoutQueue
from sipagent.media.vad import level_db
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.ports import PortAllocator
from sipagent.rtp.srtp import SrtpContext
from sipagent.sdp import LocalSession, NegotiatedMedia, SessionDescription
from sipagent.sdp.crypto import DEFAULT_SUITES
from sipagent.sip.front import IncomingCall
from sipagent.sip.outgoing import DialError, OutgoingCall
from sipagent.sip.ua import UaSettings, UserAgent

CODECS = ("PCMU", "PCMA", "G722")
FRAME_24K = 960  # bytes in 20 ms of 24 kHz PCM16
DTMF_PT = 101


class CallFailed(SipagentError):
    """The far end rejected the call or never answered."""


@dataclass
class HeardAudio:
    """What the caller heard, 24 kHz PCM16, with the arrival time of each 20 ms frame."""

    pcm: bytearray = field(default_factory=bytearray)
    frame_times: list[float] = field(default_factory=list)
    audio_frames: int = 0
    last_audio_at: float = 0.0


@dataclass
class SentAudio:
    """What the caller put on the wire: send time and level (dBFS) of every 20 ms frame, audio or not."""

    frame_times: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)

    def first_loud_after(self, since: float, threshold_db: float = -40.0) -> float | None:
        """Send time of the first frame at or after ``since`` louder than ``threshold_db``."""
        for at, level in zip(self.frame_times, self.levels, strict=True):
            if at >= since and level >= threshold_db:
                return at
        return None


@dataclass
class Refer:
    """A REFER the far end sent us (a blind transfer request)."""

    refer_to: str
    referred_by: str
    answered: int


class _ObservedPlayout(PlayoutQueue):
    """The caller's playout queue, noting each frame as the media clock sends it."""

    def __init__(self, silence: bytes, decoder: Decoder24k, sent: SentAudio) -> None:
        super().__init__(frame_bytes=len(silence), silence=silence)
        self._decoder, self._sent = decoder, sent

    def pop_frame(self) -> tuple[bytes, bool]:
        frame, is_audio = super().pop_frame()
        self._sent.frame_times.append(time.monotonic())
        self._sent.levels.append(level_db(self._decoder.decode(frame)) if is_audio else -96.0)
        return frame, is_audio


async def _refuse(call: IncomingCall) -> None:
    await call.reject(603)


class SipCaller:
    """One outgoing call. ``await dial()``, then ``play()``/``send_dtmf()``, then ``hangup()``."""

    def __init__(self, clock: MediaClock, ports: PortAllocator, target: str, *, codec: str = "PCMU",
                 host: str = "127.0.0.1", user: str = "caller", display: str = "sipagent caller",
                 srtp: tuple[str, ...] = ()) -> None:
        """``srtp``: offer RTP/SAVP with SDES keys for these suites (in this order) instead of plain RTP."""
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}")
        self.clock, self.ports, self.target, self.codec, self.host = clock, ports, target, codec, host
        self.user, self.display = user, display
        self.srtp = srtp
        self.heard = HeardAudio()
        self.dtmf_heard: list[tuple[str, int]] = []  # keys the far end sent us (RFC 4733), with their length
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._ua: UserAgent | None = None
        self._call: OutgoingCall | None = None
        self._endpoint: RtpEndpoint | None = None
        self._decoder = Decoder24k(codec)
        self._encoder = Encoder24k(codec)
        self.answered_at = 0.0
        self.media: NegotiatedMedia | None = None
        self._echo: tuple[float, deque[bytes]] | None = None
        self._echo_encoder = Encoder24k(codec)
        self._speaking_until = 0.0
        self.sent = SentAudio()
        self.refers: list[Refer] = []
        # How to answer a REFER: its final response, then the sipfrag status reported by NOTIFY (0: none ever,
        # as a phone that accepts and does nothing), that long after it; with transfer_leaves_media the RTP
        # stops at the 202, as when a PBX takes the caller's channel away from the transferor.
        self.refer_status = 202
        self.transfer_result = 200
        self.transfer_after_s = 0.0
        self.transfer_leaves_media = False
        self.extra_headers: tuple[tuple[str, str], ...] = ()  # headers of a PBX's own for the INVITE (X-Queue...)
        self._background: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- the dialog, for tests that forge in it

    @property
    def call_id(self) -> str:
        return self._call.call_id if self._call is not None else ""

    @property
    def from_tag(self) -> str:
        dialog = self._call.core.dialog if self._call is not None else None
        return dialog.local_tag if dialog is not None else ""

    @property
    def to_header(self) -> str:
        dialog = self._call.core.dialog if self._call is not None else None
        return dialog.remote_uri if dialog is not None else f"<{self.target}>"

    @property
    def remote_target(self) -> str:
        dialog = self._call.core.dialog if self._call is not None else None
        return str(dialog.remote_target) if dialog is not None else self.target

    @property
    def cseq(self) -> int:
        """Our last CSeq number in the dialog; raising it makes our next request come after forged ones."""
        dialog = self._call.core.dialog if self._call is not None else None
        return dialog.local_seq if dialog is not None else 0

    @cseq.setter
    def cseq(self, value: int) -> None:
        dialog = self._call.core.dialog if self._call is not None else None
        if dialog is not None:
            dialog.local_seq = value

    @property
    def local_sdp(self) -> SessionDescription | None:
        """The SDP we sent last (our offer, or the answer to one of the far end)."""
        return self._call.core.sdp.local if self._call is not None else None

    @property
    def sdp_session(self) -> LocalSession:
        """The call's o= line: a new offer of ours made with it goes on the same session (RFC 3264 8)."""
        assert self._call is not None, "not dialled"
        return self._call.core.sdp.session

    async def reoffer(self, offer: SessionDescription) -> tuple[int, bytes]:
        """A re-INVITE with ``offer`` (hold, resume, another codec or key): its final status and SDP answer.
        The media endpoint is the caller's to update."""
        assert self._call is not None, "not dialled"
        return await self._call.reoffer(offer)

    # ---------------------------------------------------------------- SIP

    async def dial(self, timeout: float = 10.0) -> None:
        """Call the target; CallFailed when it refuses or does not answer within ``timeout`` seconds."""
        settings = UaSettings(
            registrar=None, transport="udp", username=self.user, password="", domain="", listen_host=self.host,
            listen_port=0, public_host=None, expires=0, max_calls=1, trusted_hosts=[], codecs=[self.codec],
            user_agent="sipagent-caller", srtp="required" if self.srtp else "off",
            srtp_suites=list(self.srtp or DEFAULT_SUITES), srtp_over_insecure_signalling=bool(self.srtp),
        )
        self._ua = UserAgent(settings, _refuse)
        await self._ua.start()
        self._endpoint = RtpEndpoint(self.clock, self.ports, bind_host=self.host, jitter_ms=40,
                                     silence=CODEC_SILENCE[self.codec], on_frame=self._on_frame,
                                     on_dtmf=lambda digit, ms: self.dtmf_heard.append((digit, ms)))
        self._endpoint.on_gap = self._on_gap
        self._endpoint.playout = _ObservedPlayout(CODEC_SILENCE[self.codec], Decoder24k(self.codec), self.sent)
        try:
            call = await asyncio.wait_for(
                self._ua.dial(self.target, rtp_port=self._endpoint.local_port, ring_timeout=timeout,
                              headers=list(self.extra_headers)), timeout + 2.0)
        except DialError as exc:
            await self._close_media()
            raise CallFailed(f"{self.target}: {exc}") from exc
        except TimeoutError as exc:
            await self._close_media()
            raise CallFailed(f"no final response to INVITE within {timeout:.0f} s") from exc
        self._call = call
        call.on_refer = self._on_refer
        media = call.media
        assert media is not None
        self.media = media
        if media.srtp is not None:
            self._endpoint.set_crypto(SrtpContext(media.srtp.suite, media.srtp.local_key, media.srtp.remote_key))
        self._endpoint.set_remote(media.remote_host, media.remote_port, media.payload_type,
                                  media.dtmf_payload_type, rtcp=media.remote_rtcp)
        self.answered_at = time.monotonic()
        self._spawn(self._watch(call))

    async def _watch(self, call: OutgoingCall) -> None:
        await call.ended.wait()
        self._end(call.end_reason)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_refer(self, refer_to: str, referred_by: str | None) -> int:
        """RFC 3515: accept (202) and report the transfer's outcome by NOTIFY, or refuse outright."""
        self.refers.append(Refer(refer_to.strip(), (referred_by or "").strip(), self.refer_status))
        if self.refer_status < 300:
            call, result = self._call, self.transfer_result
            assert call is not None
            loop = asyncio.get_running_loop()
            if self.transfer_leaves_media and self._endpoint is not None:
                loop.call_soon(self._endpoint.close)
            if result:
                # After the 202 and the NOTIFY "100 Trying" the call core sends with it: the pretend outcome.
                loop.call_later(self.transfer_after_s, call.notify_transfer, result)
        return self.refer_status

    async def hangup(self) -> None:
        call = self._call
        if call is not None and not self.ended.is_set() and self.answered_at:
            with contextlib.suppress(TimeoutError):  # a far end that is gone does not hold us for timer F
                await asyncio.wait_for(call.hangup(), 4.0)
            self._end("local-bye")
        await self._close_media()

    async def vanish(self) -> None:
        """The phone is gone without a word (a PBX restart, an expired NAT binding): no BYE, neither now nor
        from its UA's stop(); its RTP stops and its sockets close. The far end finds out by its own timers."""
        self.answered_at = 0.0
        if self._ua is not None:
            self._ua.forget_calls()
        await self._close_media()

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def _close_media(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        if self._ua is not None:
            ua, self._ua = self._ua, None
            with contextlib.suppress(Exception):
                await ua.stop()

    # ---------------------------------------------------------------- media

    def _on_frame(self, payload: bytes) -> None:
        self._hear(self._decoder.decode(payload), payload != CODEC_SILENCE[self.codec])

    def _on_gap(self, payload: bytes) -> None:
        # The jitter buffer's concealment. A phone's G.722 loss concealment does not decode a payload the far
        # end never coded (that sets a stateful decoder apart from the encoder: bursts louder than what was
        # sent, which the echo would carry back): silence stands in. G.711 plays the repeat. The decoder then
        # carries on as a plain phone's does (the agent's uplink starts afresh after a gap).
        if self.codec == "G722":
            self._hear(bytes(FRAME_24K), False)
        else:
            self._on_frame(payload)

    def _hear(self, pcm: bytes, audio: bool) -> None:
        self.heard.pcm += pcm
        self.heard.frame_times.append(time.monotonic())
        if audio:
            self.heard.audio_frames += 1
            self.heard.last_audio_at = time.monotonic()
        if self._echo is not None:
            self._return_echo(pcm)

    def set_echo(self, gain_db: float, delay_ms: int) -> None:
        """Make the line return what the caller hears, ``gain_db`` down and ``delay_ms`` late, like a
        telephone hybrid or a speakerphone does (while the caller itself is not talking)."""
        self._echo = (10 ** (gain_db / 20), deque([bytes(FRAME_24K)] * max(0, delay_ms // 20)))

    def _return_echo(self, pcm: bytes) -> None:
        assert self._echo is not None and self._endpoint is not None
        gain, delay = self._echo
        delay.append(pcm)
        late = delay.popleft()
        if self.speaking:
            return
        playout = self._endpoint.playout
        if playout.frame_ready:
            # A line returns its echo a fixed time late. After a stall the clock pulls the frames it missed in
            # one tick but sends one packet: echo queued behind it would come later and later (past the
            # agent's echo window), so the frame that could only go out late is dropped, as a line drops it.
            return
        scaled = (np.frombuffer(late, dtype="<i2").astype(np.float32) * gain).astype("<i2").tobytes()
        playout.push(self._echo_encoder.encode(scaled))

    def play(self, pcm24k: bytes) -> float:
        """Queues 24 kHz PCM16 to be spoken; returns its duration in seconds."""
        assert self._endpoint is not None
        duration = len(pcm24k) / 48000
        start = max(time.monotonic(), self._speaking_until)
        self._speaking_until = start + duration
        self._endpoint.playout.push(self._encoder.encode(pcm24k))
        return duration

    @property
    def speaking(self) -> bool:
        return self._speaking_until > time.monotonic()

    def send_dtmf(self, digit: str, duration_ms: int = 120) -> None:
        assert self._endpoint is not None
        self._endpoint.send_dtmf(digit, duration_ms)
