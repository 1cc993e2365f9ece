"""A small SIP caller: dials a SIP URI over UDP, speaks a PCM clip over RTP, records what it hears.

Used by ``sipagent demo`` (the call into the offline agent) and by the load and latency benchmarks as a
load generator. It is a plain UAC on loopback-grade networks: INVITE with Timer A retransmissions,
ACK, BYE (either side), RFC 4733 DTMF, blind transfer by REFER (accepted or refused on request, reported
with NOTIFY sipfrag like a phone that completed or failed it); no authentication, no re-INVITEs. Media goes
through the same RTP endpoint and shared media clock as the agent's own calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sipagent.errors import SdpError, SipagentError
from sipagent.media.clock import MediaClock
from sipagent.media.kernel import CODEC_SILENCE, Decoder24k, Encoder24k
from sipagent.media.playout import PlayoutQueue
from sipagent.media.vad import level_db
from sipagent.rtp.endpoint import RtpEndpoint
from sipagent.rtp.ports import PortAllocator
from sipagent.rtp.srtp import SrtpContext
from sipagent.sdp import (
    LocalSession,
    NegotiatedMedia,
    SessionDescription,
    SrtpPolicy,
    accept_answer,
    make_offer,
    offer_crypto,
)
from sipagent.sip.headers import new_branch, new_call_id, new_tag
from sipagent.sip.message import Headers, SipRequest, SipResponse, build_response, parse_message

log = logging.getLogger(__name__)

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
    cseq: str
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


class _SipSocket(asyncio.DatagramProtocol):
    def __init__(self, on_message: Callable[[SipRequest | SipResponse, tuple[str, int]], None]) -> None:
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except SipagentError:
            return
        self.on_message(message, addr)


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
        self.call_id = new_call_id(host)
        self.from_tag = new_tag()
        self.to_header = f"<{target}>"
        self.remote_target = target
        self.cseq = 0
        self.heard = HeardAudio()
        self.dtmf_heard: list[tuple[str, int]] = []  # keys the far end sent us (RFC 4733), with their length
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._sip: _SipSocket | None = None
        self._local_port = 0
        self._peer: tuple[str, int] = ("", 0)
        self._pending: dict[tuple[int, str], asyncio.Queue[SipResponse]] = {}
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
        # How to answer a REFER: its final response, then the sipfrag status reported by NOTIFY.
        self.refer_status = 202
        self.transfer_result = 200
        self._background: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- SIP

    async def dial(self, timeout: float = 10.0) -> None:
        host, port = _uri_host_port(self.target)
        self._peer = (host, port)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _SipSocket(self._on_message), local_addr=(self.host, 0)
        )
        self._sip = protocol
        self._local_port = transport.get_extra_info("sockname")[1]
        self._endpoint = RtpEndpoint(self.clock, self.ports, bind_host=self.host, jitter_ms=40,
                                     silence=CODEC_SILENCE[self.codec], on_frame=self._on_frame,
                                     on_dtmf=lambda digit, ms: self.dtmf_heard.append((digit, ms)))
        self._endpoint.playout = _ObservedPlayout(CODEC_SILENCE[self.codec], Decoder24k(self.codec), self.sent)
        offer = self._offer(self._endpoint.local_port)
        offer_sdp = SessionDescription.parse(offer)
        response = await self._request("INVITE", self.target, offer, content_type="application/sdp",
                                       timeout=timeout, final=True)
        if response.status >= 300:
            await self._close_media()
            raise CallFailed(f"{self.target} answered {response.status} {response.reason}")
        self.to_header = response.headers.get("To") or self.to_header
        contact = response.headers.get("Contact")
        if contact:
            self.remote_target = contact.strip().lstrip("<").split(">")[0]
        self._send_ack()
        try:
            media = accept_answer(SessionDescription.parse(response.body), offer_sdp)
        except SdpError as exc:
            await self.hangup()
            raise CallFailed(f"unusable SDP answer: {exc}") from exc
        self.media = media
        if media.srtp is not None:
            self._endpoint.set_crypto(SrtpContext(media.srtp.suite, media.srtp.local_key, media.srtp.remote_key))
        self._endpoint.set_remote(media.remote_host, media.remote_port, media.payload_type,
                                  media.dtmf_payload_type)
        self.answered_at = time.monotonic()

    def _offer(self, rtp_port: int) -> bytes:
        crypto = offer_crypto(SrtpPolicy(mode="required", suites=self.srtp)) if self.srtp else None
        offer = make_offer([self.codec], self.host, rtp_port, LocalSession("caller"), dtmf_payload_type=DTMF_PT,
                           crypto=crypto)
        return offer.to_bytes()

    def _headers(self, method: str, cseq: int, branch: str) -> Headers:
        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP {self.host}:{self._local_port};branch={branch};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f'"{self.display}" <sip:{self.user}@{self.host}:{self._local_port}>;tag={self.from_tag}')
        headers.add("To", self.to_header)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        headers.add("Contact", f"<sip:{self.user}@{self.host}:{self._local_port}>")
        headers.add("User-Agent", "sipagent-caller")
        return headers

    async def _request(self, method: str, uri: str, body: bytes = b"", *, content_type: str = "",
                       timeout: float = 8.0, final: bool = True,
                       extra: tuple[tuple[str, str], ...] = ()) -> SipResponse:
        self.cseq += 1
        request = SipRequest(method, uri, self._headers(method, self.cseq, new_branch()), body)
        if content_type:
            request.headers.add("Content-Type", content_type)
        for name, value in extra:
            request.headers.add(name, value)
        queue: asyncio.Queue[SipResponse] = asyncio.Queue()
        key = (self.cseq, method)
        self._pending[key] = queue
        data = request.to_bytes()
        deadline = time.monotonic() + timeout
        interval, provisional = 0.5, False
        try:
            self._send(data)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallFailed(f"no final response to {method} within {timeout:.0f} s")
                try:
                    response = await asyncio.wait_for(queue.get(), min(interval, remaining))
                except TimeoutError:
                    if not provisional:  # Timer A/E: retransmit until something comes back
                        self._send(data)
                        interval = min(interval * 2, 4.0)
                    continue
                if response.status < 200:
                    provisional = True
                    continue
                return response
        finally:
            self._pending.pop(key, None)

    def _send_ack(self) -> None:
        request = SipRequest("ACK", self.remote_target, self._headers("ACK", self.cseq, new_branch()))
        self._send(request.to_bytes())

    def _send(self, data: bytes) -> None:
        assert self._sip is not None and self._sip.transport is not None
        self._sip.transport.sendto(data, self._peer)

    def _on_message(self, message: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        if isinstance(message, SipResponse):
            cseq = message.cseq
            queue = self._pending.get((cseq.seq, cseq.method))
            if queue is not None:
                queue.put_nowait(message)
            elif cseq.method == "INVITE" and message.status == 200:
                self._send_ack()  # a retransmitted 2xx: our ACK was lost
            return
        if message.method == "BYE":
            self._reply(message, 200, addr)
            self._end("remote-bye")
        elif message.method in ("OPTIONS", "INFO", "NOTIFY"):
            self._reply(message, 200, addr)
        elif message.method == "REFER":
            self._on_refer(message, addr)
        elif message.method != "ACK":
            self._reply(message, 501, addr)

    def _on_refer(self, request: SipRequest, addr: tuple[str, int]) -> None:
        """RFC 3515: accept (202) and report the transfer's outcome by NOTIFY, or refuse outright."""
        refer_to = request.headers.get("Refer-To")
        if not refer_to:
            self._reply(request, 400, addr)
            return
        cseq = request.headers.get("CSeq") or ""
        earlier = next((r for r in self.refers if r.cseq == cseq), None)
        if earlier is not None:
            self._reply(request, earlier.answered, addr)  # a retransmission: same answer, no new NOTIFY
            return
        referred_by = request.headers.get("Referred-By") or ""
        self.refers.append(Refer(refer_to.strip(), referred_by.strip(), cseq, self.refer_status))
        self._reply(request, self.refer_status, addr)
        if self.refer_status < 300:
            task = asyncio.ensure_future(self._report_transfer())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _report_transfer(self) -> None:
        """The implicit subscription: "trying" at once, then the final status of the (pretend) new call."""
        frags = ((100, "Trying", "active;expires=60"), (self.transfer_result, _REASONS.get(
            self.transfer_result, "Error"), "terminated;reason=noresource"))
        for status, reason, state in frags:
            with contextlib.suppress(CallFailed):
                await self._request("NOTIFY", self.remote_target, f"SIP/2.0 {status} {reason}\r\n".encode(),
                                    content_type="message/sipfrag;version=2.0", timeout=4.0,
                                    extra=(("Event", "refer"), ("Subscription-State", state)))

    def _reply(self, request: SipRequest, status: int, addr: tuple[str, int]) -> None:
        assert self._sip is not None and self._sip.transport is not None
        self._sip.transport.sendto(build_response(request, status).to_bytes(), addr)

    async def hangup(self) -> None:
        if not self.ended.is_set() and self.answered_at:
            with contextlib.suppress(CallFailed):
                await self._request("BYE", self.remote_target, timeout=4.0)
            self._end("local-bye")
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
        if self._sip is not None and self._sip.transport is not None:
            self._sip.transport.close()

    # ---------------------------------------------------------------- media

    def _on_frame(self, payload: bytes) -> None:
        pcm = self._decoder.decode(payload)
        self.heard.pcm += pcm
        self.heard.frame_times.append(time.monotonic())
        if payload != CODEC_SILENCE[self.codec]:
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
        scaled = (np.frombuffer(late, dtype="<i2").astype(np.float32) * gain).astype("<i2").tobytes()
        self._endpoint.playout.push(self._echo_encoder.encode(scaled))

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


_REASONS = {200: "OK", 202: "Accepted", 486: "Busy Here", 480: "Temporarily Unavailable", 603: "Decline"}


def _uri_host_port(uri: str) -> tuple[str, int]:
    from sipagent.sip.uri import SipUri

    parsed = SipUri.parse(uri)
    host, port = parsed.host_port
    return host, port or 5060
