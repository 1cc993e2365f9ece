"""One call's RTP endpoint: UDP socket pair, symmetric RTP, jitter buffer, DTMF, RTCP, on the shared clock.

The asyncio shell around the pure cores of this package. Sockets are plain non-blocking sockets watched
with ``loop.add_reader`` and written with ``sendto``: one system call per packet, no transport objects.

Every 20 ms the shared ``MediaClock`` calls ``on_tick``, which (1) pulls one frame from the jitter
buffer for ``on_frame``, (2) sends one packet: a DTMF event packet when a digit is being sent (or, on a
line without telephone-event, a frame of the key's tones, sipagent.media.dtmf_tones), otherwise the next
frame of ``playout`` (or silence), and (3) every ~5 s sends an RTCP SR (or RR while we have not
sent anything) to the peer. While the peer holds the call (``set_remote(..., send=False)``) step 2 is
skipped: no RTP leaves, the playout queue keeps everything, the timestamp keeps time.

The first frame of a talkspurt need not wait for the next tick: ``start_talkspurt`` (called when audio has
just been queued) asks the clock to run this stream's next tick at once (``MediaClock.send_now``) when no
audio went out for ``talkspurt_idle_ticks`` ticks (a pause, not an underrun in the middle of a reply). The
packet carries the marker bit and the next timestamp (one frame on, as every tick: our silence packets kept
the timeline, so there is no jump and no overlap, RFC 3550 5.1 / RFC 3551 4.1), and the stream stays on
that new phase for the rest of the talkspurt. Once idle again (silence sent, nothing queued) it
goes back to its home phase (``MediaClock.rejoin_home``).

The endpoint knows payload types, not codecs: ``set_codec`` gives it a codec's 20 ms frame and silence
(for the jitter buffer's concealment and the playout queue), at the answer and again when a re-INVITE
changes the codec.

Where media comes from and goes to is decided by ``SourceLatch`` (``latch.py``): the SDP's address, or
with symmetric RTP (NAT) another address that sends a valid run of packets once the current source has
been silent for a second. Packets from any other address are dropped before they reach the jitter buffer,
the statistics or DTMF (counted in ``foreign_packets``, logged once per latch), and nothing is sent to
them: neither our audio nor our RTCP. RTCP is taken only from the current source's host and about its
SSRC, and our RTCP follows the media source.

With SRTP (``set_crypto``), every packet we send is protected just before ``sendto`` and every packet we
receive is authenticated and decrypted first, before the latch, the statistics or the jitter buffer see
it: a packet that fails is dropped and counted (``srtp_dropped``), so a forged packet can neither be
played nor move the latch. The endpoint takes the context from the layer that agreed the keys and knows
nothing of how (SDES in SDP, say).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipagent.errors import RtpError
from sipagent.media.clock import MediaClock
from sipagent.media.dtmf_tones import ToneSender
from sipagent.media.playout import PlayoutQueue
from sipagent.rtp.dtmf import DtmfReceiver, DtmfSender
from sipagent.rtp.jitter import FrameKind, JitterBuffer
from sipagent.rtp.latch import SourceLatch
from sipagent.rtp.packet import HEADER, parse_media
from sipagent.rtp.ports import BoundPair, PortAllocator
from sipagent.rtp.reframe import Reframer
from sipagent.rtp.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    build_rr,
    build_sr,
    ntp_from_unix,
    ntp_middle,
    parse_compound,
)
from sipagent.rtp.srtp import SrtpContext
from sipagent.rtp.stats import ReceiveStats

log = logging.getLogger(__name__)

SAMPLES_PER_TICK = 160  # 20 ms at the 8000 Hz RTP clock of PCMU, PCMA and (by RFC 3551's quirk) G.722
# Datagrams a tick reads from its socket before concealing (a 600 ms stall's frames and their RTCP):
# bounded, so that a flooded port cannot hold up the clock.
LATE_TICK_READS = 32
Address = tuple[str, int]
_pack_header = HEADER.pack  # (0x80, marker | payload type, sequence, timestamp, ssrc), as build_header


@dataclass(frozen=True, slots=True)
class EndpointStats:
    packets_received: int
    lost: int
    jitter_ms: float
    late: int
    duplicates: int
    concealed: int
    packets_sent: int
    foreign_packets: int
    malformed: int
    send_errors: int
    remote_lost: int | None  # as the peer reports it in RTCP, None before its first report
    remote_jitter_ms: float | None
    srtp_dropped: int = 0  # packets that failed SRTP/SRTCP authentication or replay checks (never played)

    def summary(self) -> dict[str, int | float | None]:
        """The call's media figures as its transcript's ``media`` record and ``call.ended`` give them."""
        received, lost = self.packets_received, self.lost
        remote_jitter = self.remote_jitter_ms
        return {
            "packets_received": received, "packets_lost": lost,
            "loss_pct": round(100.0 * lost / (received + lost), 2) if received + lost else 0.0,
            "jitter_ms": round(self.jitter_ms, 1), "late": self.late, "duplicates": self.duplicates,
            "concealed_frames": self.concealed, "packets_sent": self.packets_sent, "send_errors": self.send_errors,
            "remote_lost": self.remote_lost,
            "remote_jitter_ms": None if remote_jitter is None else round(remote_jitter, 1),
            "foreign_packets": self.foreign_packets, "malformed": self.malformed, "srtp_dropped": self.srtp_dropped,
        }


def _reaches(sock: socket.socket, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``sock`` can send to ``address``: an IPv4 socket to IPv4 (plain or mapped), an IPv6 one bound
    to a specific address to IPv6 only, a dual-stack ``::`` to both."""
    v4 = address.version == 4 or (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None)
    if sock.family == socket.AF_INET:
        return v4
    return not v4 or str(sock.getsockname()[0]) == "::"


def _discard_queued(sock: socket.socket) -> None:
    """Read and drop the datagrams waiting on a non-blocking socket (a bounded number: a flood goes on)."""
    for _ in range(256):
        try:
            sock.recvfrom(2048)
        except OSError:  # EAGAIN: none left (or an ICMP error, nothing to read either)
            return


class RtpEndpoint:
    def __init__(
        self,
        clock: MediaClock,
        ports: PortAllocator,
        *,
        bind_host: str = "0.0.0.0",
        jitter_ms: int = 60,
        silence: bytes = b"\xff" * 160,
        on_frame: Callable[[bytes], None] | None = None,
        on_dtmf: Callable[[str, int], None] | None = None,
        on_sent: Callable[[bytes | None, bool], None] | None = None,
        cname: str = "sipagent",
        eager: bool = False,
        rtcp_interval: float = 5.0,
        symmetric: bool = True,
        playout: PlayoutQueue | None = None,
        talkspurt_idle_ticks: int = 5,
        sockets: BoundPair | None = None,
    ) -> None:
        """Bind a port pair from ``ports`` and start ticking on ``clock``; needs a running event loop.
        ``symmetric``: follow a peer whose media comes from another address than its SDP says (NAT), under
        the rules of ``SourceLatch``; without it, media is taken from the signalled address only.
        ``playout``: the queue to send from (a subclass that observes it, say), framed like ``silence``.
        ``talkspurt_idle_ticks``: how many ticks without audio make a pause after which ``start_talkspurt``
        sends the first frame at once (a shorter gap is an underrun: its audio waits for the tick).
        ``sockets``: a pair ``ports.bind_pair`` bound already (the port was needed before the codec was
        known); the endpoint owns it from now on. None: the endpoint binds its own."""
        self._loop = asyncio.get_running_loop()
        self.clock = clock
        self.frame_bytes = len(silence)
        self._reframer = Reframer(silence)  # packets of 10, 30, 50 ms: cut into 20 ms frames
        self.on_frame = on_frame
        # Given the jitter buffer's concealment frames (the last frame again, or silence) instead of on_frame,
        # when set: a consumer with a stateful decoder (G.722) must not decode them as the far end's.
        self.on_gap: Callable[[bytes], None] | None = None
        self.on_dtmf = on_dtmf
        # Told about each frame of ``playout`` put on the wire: (payload, is_audio); the payload is None for
        # a frame staged in the clock's batch, coded (and sent) with other calls' frames of the same tick.
        self.on_sent = on_sent
        self.cname = cname
        self.playout = playout if playout is not None else PlayoutQueue(frame_bytes=self.frame_bytes, silence=silence)
        self.jitter = JitterBuffer.from_ms(silence, jitter_ms)
        # eager: frames go to on_frame as they arrive in order (for a consumer that is not an ear, such as
        # the Realtime API); the clock conceals only frames overdue by the jitter depth. Otherwise one
        # frame per tick after a pre-buffer, for playout to a listener.
        self.eager = eager
        self._overdue_ticks = 0
        self._played_at_gap = -1  # the jitter buffer's played count at the last concealment (eager)
        self.rx_stats = ReceiveStats()
        self._ports = ports
        self.local_port, self._sock, self._rtcp_sock = sockets if sockets is not None else ports.bind_pair(bind_host)
        if sockets is not None:
            # What reached the pair before this endpoint took it came before the negotiation finished (a
            # peer's early RTCP, or its SRTP before our keys were set): not ours to check or count, and
            # ignored as an endpoint with no remote yet ignores it.
            for sock in (self._sock, self._rtcp_sock):
                _discard_queued(sock)
        self._closed = False
        # Outbound stream state.
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._event_ts = 0
        self._was_audio = False
        self._mark_at = 0  # packets_sent when the next packet goes out with the marker bit whatever it holds
        self._ticked = False
        self._away = False  # moved off the home phase by start_talkspurt until idle again
        self.talkspurt_idle_ticks = talkspurt_idle_ticks
        self._idle_ticks = talkspurt_idle_ticks  # ticks since the last audio frame sent
        self._now = 0  # ticks of the clock so far: the latch's time
        self.packets_sent = 0
        self.octets_sent = 0
        self.send_errors = 0
        # Remote side.
        self.payload_type: int | None = None
        self.dtmf_payload_type: int | None = None
        self._send_payload_type: int | None = None  # payload_type, or None while the peer holds the call
        self._unspecified = False  # c=0.0.0.0: the peer wants nothing from us, not even RTCP (RFC 3264 8.4)
        self._family_warned = False  # a media address our socket's family cannot reach was logged
        self._latch = SourceLatch(symmetric=symmetric)
        self._foreign_logged = False
        self._rtcp_dest: Address | None = None
        self._rtcp_signalled: Address | None = None  # a=rtcp, or the signalled RTP port + 1
        self._rtcp_latched = False
        self._rtcp_mux = False
        self._rx_ssrc: int | None = None
        self.foreign_packets = 0
        self.malformed = 0
        self._crypto: SrtpContext | None = None
        self._srtp_dropped_before = 0  # by the contexts that re-keys replaced
        self._dtmf_rx = DtmfReceiver()
        self._dtmf_tx = DtmfSender(SAMPLES_PER_TICK)
        self._tones = ToneSender()  # keys as tones in the audio, where no telephone-event was negotiated
        self._tones_queued = False  # _tones is busy: a plain flag, looked at on every tick
        # RTCP: spread reports of many calls over the interval.
        self._rtcp_ticks = max(1, round(rtcp_interval / 0.02))
        self._rtcp_countdown = 1 + secrets.randbelow(self._rtcp_ticks)
        self._last_sr: tuple[int, float] | None = None  # (LSR, arrival) of the peer's last SR
        self.remote_report: ReportBlock | None = None
        try:
            self._loop.add_reader(self._sock.fileno(), self._on_readable, self._sock)
            self._loop.add_reader(self._rtcp_sock.fileno(), self._on_readable, self._rtcp_sock)
        except Exception:
            self.close()
            raise
        clock.register(self)

    # ----------------------------------------------------------------- control

    def set_remote(
        self, host: str, port: int, payload_type: int, dtmf_payload_type: int | None = None, *, send: bool = True,
        rtcp: tuple[str, int] | None = None,
    ) -> None:
        """Where to send and what to accept; called again on a re-INVITE. A new address starts the latch over
        (the same one again keeps a NAT latch).

        ``send=False``: the peer holds the call (our direction recvonly or inactive), so no RTP goes to it
        from the next tick until a ``send=True``; the playout queue keeps what it holds, the timestamp
        keeps time, RTCP goes on (RFC 3264 8.4). An unspecified address (c=0.0.0.0, older phones' hold)
        is the same and never gets a packet (Linux would deliver it to this host); media is still taken
        from where it came (a PBX plays its music on hold from there), or from nowhere on a first SDP.

        ``rtcp``: where the peer asked for RTCP (SDP ``a=rtcp``, RFC 3605); None is RTP's address, port + 1."""
        address = self._address(host, port)
        if not address.is_unspecified:
            ip = self._as_seen(address)
            if not self._family_warned and not _reaches(self._sock, address):
                self._family_warned = True  # once per call: every packet would fail the same way
                log.warning("rtp %s: media address %s is not of the IP family RTP is bound to (%s, sip.listen): "
                            "nothing can be sent to it", self.local_port, ip, self._sock.getsockname()[0])
            rtcp_to = (ip, port + 1) if rtcp is None else (self._as_seen(self._address(*rtcp)), rtcp[1])
            self._set_signalled((ip, port), rtcp_to)
        elif self._latch.signalled is None:
            self._set_signalled(None, None)
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self._unspecified = address.is_unspecified
        sending = send and not self._unspecified
        if not sending:
            # Whatever comes first after the hold, and the first audio, start a talkspurt: the marker bit
            # tells the peer's jitter buffer that the timestamp jump is a pause, not loss.
            self._mark_at = self.packets_sent
            self._was_audio = False
        self._send_payload_type = payload_type if sending else None
        log.debug("rtp %s: remote %s pt %s dtmf %s%s", self.local_port, self._latch.signalled, payload_type,
                  dtmf_payload_type, "" if sending else " (held: not sending)")

    def _address(self, host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            return ipaddress.ip_address(socket.getaddrinfo(host, port, self._sock.family, socket.SOCK_DGRAM)[0][4][0])

    def _as_seen(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        """``address`` as our socket sends to it and sees it in what it receives."""
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if address.version == 4 and self._sock.family == socket.AF_INET6:
            return f"::ffff:{address}"  # as a dual-stack socket sends to IPv4 and sees it: a mapped address
        if mapped is not None and self._sock.family == socket.AF_INET:
            return str(mapped)  # as an IPv4 socket sees it, or the latch would never match its packets
        return str(address)

    def _set_signalled(self, signalled: Address | None, rtcp: Address | None) -> None:
        moved = self._latch.set_signalled(signalled, self._now)
        if moved:
            self._foreign_logged = False
            self._rtcp_latched = self._rtcp_mux = False
        if moved or (rtcp != self._rtcp_signalled and not self._rtcp_latched):
            self._rtcp_dest = rtcp  # where the peer's own RTCP comes from wins over what it signalled
        self._rtcp_signalled = rtcp

    @property
    def crypto(self) -> SrtpContext | None:
        """The SRTP context in use (None: plain RTP)."""
        return self._crypto

    def set_crypto(self, crypto: SrtpContext | None) -> None:
        """SRTP from the next packet on, with ``crypto`` (None: plain RTP). At the answer, before
        ``set_remote`` (so that no packet leaves in the clear), and again when a re-INVITE changes either
        key: a new context, whose replay window and rollover counters start afresh with the new keys
        (but for its receive half when the peer kept its key: SrtpContext.with_send_key).

        A replaced context also gives our stream a new SSRC: the SSRC is part of the keystream's IV, so
        even a new context under a key we used before (our key repeated in a mid-call offer) never
        encrypts two packets with the same keystream, whatever the rollover counter had reached."""
        if self._crypto is not None:
            self._srtp_dropped_before += self._crypto.dropped
            self.ssrc = secrets.randbits(32)
            self._mark_at = self.packets_sent  # a new source starts with the marker bit
        self._crypto = crypto
        log.debug("rtp %s: %s", self.local_port, f"SRTP {crypto.suite}" if crypto else "plain RTP")

    @property
    def srtp_dropped(self) -> int:
        """Packets dropped because they failed SRTP or SRTCP checks (authentication, replay, framing)."""
        crypto = self._crypto
        return self._srtp_dropped_before + (crypto.dropped if crypto is not None else 0)

    def set_codec(self, silence: bytes, convert: Callable[[bytes], bytes] | None = None) -> None:
        """The call's codec, as a 20 ms frame of its silence; at the answer and on each re-INVITE that
        changes it (the payload type comes with ``set_remote``). The jitter buffer starts over: what it
        holds is in the old codec, and concealing with it would play that through the new decoder. The
        playout queue keeps its audio, turned into the new codec by ``convert`` (a queue of PCM encoded as it
        leaves, sipagent.media.pcm_playout, needs none), and its ``played_ms``."""
        jitter = self.jitter
        self.frame_bytes = len(silence)
        self.jitter = JitterBuffer(silence, depth_frames=jitter.depth)
        self._reframer = Reframer(silence)
        self.jitter.stats = jitter.stats  # the call's counts, not the codec's
        self._overdue_ticks = 0
        self.playout.reframe(silence, convert)

    @property
    def dtmf_method(self) -> str | None:
        """How ``send_dtmf`` sends a key now: "rfc4733" events when the peer negotiated telephone-event, else
        "inband" tones when the playout queue can encode them; None when neither."""
        if self.dtmf_payload_type is not None:
            return "rfc4733"
        return "inband" if self.playout.encodes_pcm else None

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Queue a digit as RFC 4733 events, or as tones in the audio where the peer negotiated no
        telephone-event (as a phone in "auto" DTMF mode does). Either is sent on the clock's ticks in place
        of audio, which waits in the playout queue meanwhile, so none of it is lost."""
        method = self.dtmf_method
        if method == "rfc4733":
            self._dtmf_tx.queue(digit, duration_ms)
        elif method == "inband":
            self._tones.queue(digit, duration_ms)
            self._tones_queued = True
        else:
            raise RtpError("the peer did not negotiate telephone-event and this stream cannot send tones")

    def start_talkspurt(self) -> bool:
        """Audio was just queued: if it starts a talkspurt (no audio sent for ``talkspurt_idle_ticks``
        ticks), send its first frame now rather than at the next tick, when the clock allows it
        (``MediaClock.send_now``). Not after a shorter gap: that is the queue running dry in the middle of
        a reply (the model's audio arriving just in time), and the wait for the tick gives the rest of the
        reply that much slack; restarting at once would leave none, and the next late delta would be one
        more gap. Nothing while held, while a digit is going out or while the queue is paused. Returns
        whether the call moved (its first frame went out, or goes out sooner)."""
        if (self._was_audio or self._idle_ticks < self.talkspurt_idle_ticks or self._send_payload_type is None
                or self._latch.source is None
                or not self.playout.frame_ready or self.dtmf_sending or self._closed):
            return False
        if self.clock.send_now(self):
            self._away = True
            return True
        return False

    @property
    def dtmf_sending(self) -> bool:
        """Digits queued by ``send_dtmf`` are still going out."""
        return self._dtmf_tx.busy or self._tones.busy

    @property
    def remote_address(self) -> Address | None:
        """Where media goes now: the current source (the signalled address until another one latches)."""
        return self._latch.source

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> EndpointStats:
        js, rs, rr = self.jitter.stats, self.rx_stats, self.remote_report
        return EndpointStats(  # packets and loss over the call (every source it had), jitter of the last one
            packets_received=rs.total_packets, lost=rs.total_lost, jitter_ms=rs.jitter_ms, late=js.late,
            duplicates=js.duplicates, concealed=js.concealed, packets_sent=self.packets_sent,
            foreign_packets=self.foreign_packets, malformed=self.malformed, send_errors=self.send_errors,
            remote_lost=rr.cumulative_lost if rr else None,
            remote_jitter_ms=rr.jitter / 8.0 if rr else None, srtp_dropped=self.srtp_dropped,
        )

    def close(self) -> None:
        """Stop ticking, close both sockets and give the port back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.clock.unregister(self)
        for sock in (self._sock, self._rtcp_sock):
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, RuntimeError):
                pass  # the loop is already closed
            sock.close()
        self._ports.release(self.local_port)

    # --------------------------------------------------------------- receiving

    def _on_readable(self, sock: socket.socket) -> None:
        # One datagram per call: the readiness is level-triggered, so a second one waiting brings us back
        # on the next loop iteration. Reading until EAGAIN would cost a failing recvfrom and an exception
        # for every packet, since a call's packets come one per 20 ms; this also keeps one flooded call
        # from starving the clock.
        try:
            data, addr = sock.recvfrom(2048)
        except OSError:  # EAGAIN after a spurious wake-up, or ICMP port unreachable from an earlier send
            return
        # addr[:2]: (host, port) of an IPv6 4-tuple; an IPv4 pair is returned as it is, with no copy.
        if len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223:  # is_rtcp, inlined: every packet
            self._on_rtcp(data, addr[:2], sock)
        elif sock is self._sock:
            self._on_rtp(data, addr[:2])
        self.clock.run_due()  # a tick due now goes out before the rest of this batch of I/O callbacks

    def _on_rtp(self, data: bytes, addr: Address) -> None:
        if self.payload_type is None:
            return  # no remote yet: nothing to latch to
        crypto = self._crypto
        if crypto is not None:
            # Authenticated first: the latch, the statistics and DTMF only ever see packets under the key.
            plain = crypto.unprotect(data)
            if plain is None:
                return
            data = plain
        try:
            pt, sequence, timestamp, ssrc, payload = parse_media(data)
        except RtpError:
            self.malformed += 1
            return
        latch = self._latch
        if pt != self.payload_type and pt != self.dtmf_payload_type:
            if addr != latch.source:
                self._foreign(addr)
            return  # comfort noise or a type we did not negotiate
        if addr == latch.source:
            latch.heard = self._now  # SourceLatch.accept's first rule, inlined: nearly every packet
        elif latch.consider(addr, ssrc, sequence, self._now):
            self._switched(addr)
        else:
            self._foreign(addr)
            return
        if ssrc != self._rx_ssrc:
            if self._rx_ssrc is not None:
                log.info("rtp %s: source changed SSRC %08x -> %08x", self.local_port, self._rx_ssrc, ssrc)
            self._rx_ssrc = ssrc
            self.rx_stats.reset()
            self._dtmf_rx = DtmfReceiver()
            self._reframer.reset()
        self.rx_stats.update(sequence, timestamp, time.monotonic(), len(payload))
        if pt == self.dtmf_payload_type:
            self._on_dtmf_packet(timestamp, payload)
            return
        n = self.frame_bytes
        if len(payload) > n and len(payload) % n == 0:  # ptime 40/60: split into 20 ms frames
            for i in range(len(payload) // n):
                ts = timestamp + i * SAMPLES_PER_TICK
                self.jitter.put(ts & 0xFFFFFFFF, ssrc, payload[i * n : (i + 1) * n])
        elif len(payload) != n and self._reframer.fits(len(payload)):  # ptime 10/30/50: cut on a 20 ms grid
            for ts, frame in self._reframer.feed(timestamp, payload):
                self.jitter.put(ts, ssrc, frame)
        elif self.eager and self.jitter.take_next(timestamp, ssrc, payload):
            # In order with nothing waiting (nearly every packet): straight on, as _deliver_ready would.
            self._overdue_ticks = 0
            if self.on_frame is not None:
                self.on_frame(payload)
            return
        else:
            self.jitter.put(timestamp, ssrc, payload)
        if self.eager:
            self._deliver_ready()

    def _on_dtmf_packet(self, timestamp: int, payload: bytes) -> None:
        try:
            digits = self._dtmf_rx.feed(timestamp, payload)
        except RtpError:
            self.malformed += 1
            return
        for digit, duration in digits:
            log.info("rtp %s: DTMF %s (%s ms)", self.local_port, digit, duration)
            if self.on_dtmf is not None:
                self.on_dtmf(digit, duration)

    def _deliver_ready(self) -> None:
        on_frame = self.on_frame
        while (frame := self.jitter.pop_ready()) is not None:
            self._overdue_ticks = 0
            if on_frame is not None:
                on_frame(frame)

    def _switched(self, addr: Address) -> None:
        """Media now comes from (and goes to) ``addr``; our RTCP follows it until its own RTCP arrives."""
        if addr == self._latch.signalled:
            log.info("rtp %s: media from the signalled %s:%s again, re-latching", self.local_port, *addr)
        else:
            log.info("rtp %s: latched to %s:%s (signalled %s)", self.local_port, addr[0], addr[1],
                     self._latch.signalled)
        self._foreign_logged = False
        if self._rtcp_mux:
            self._rtcp_dest = addr
        elif addr == self._latch.signalled and self._rtcp_signalled is not None:
            self._rtcp_dest = self._rtcp_signalled
        else:
            self._rtcp_dest = (addr[0], addr[1] + 1)
        self._rtcp_latched = False

    def _foreign(self, addr: Address) -> None:
        # Counted always, logged once per latch: a flood must not flood the log.
        self.foreign_packets += 1
        if not self._foreign_logged:
            self._foreign_logged = True
            source = self._latch.source
            log.warning("rtp %s: ignoring packets from %s:%s (media from %s)", self.local_port, addr[0],
                        addr[1], f"{source[0]}:{source[1]}" if source else "no address yet")

    def _on_rtcp(self, data: bytes, addr: Address, sock: socket.socket) -> None:
        if self.payload_type is None:
            return  # no remote yet, as for RTP
        source = self._latch.source
        if source is None or (addr[0] != source[0] and addr != self._rtcp_signalled):
            self._foreign(addr)
            return
        crypto = self._crypto
        if crypto is not None:
            plain = crypto.unprotect_rtcp(data)
            if plain is None:
                return
            data = plain
        try:
            reports = parse_compound(data)
        except RtpError:
            self.malformed += 1
            return
        if self._rx_ssrc is None or all(report.ssrc != self._rx_ssrc for report in reports):
            self._foreign(addr)  # not about the stream we take media from
            return
        if not self._rtcp_latched:
            self._rtcp_latched = True
            self._rtcp_dest = addr  # symmetric RTCP; on the RTP socket when the peer multiplexes
            self._rtcp_mux = sock is self._sock
        for report in reports:
            if isinstance(report, SenderReport):
                self._last_sr = (ntp_middle(report.ntp), time.monotonic())
            for block in report.blocks:
                if block.ssrc == self.ssrc:
                    self.remote_report = block

    # ----------------------------------------------------------------- sending

    def on_tick(self, elapsed: int) -> None:
        """Called by the MediaClock every 20 ms (``elapsed`` > 1 after skipped ticks)."""
        self._now += elapsed
        if self.eager:
            jitter = self.jitter
            if self._overdue_ticks + elapsed <= jitter.depth and jitter.started:
                self._overdue_ticks += elapsed  # the next frame is not overdue yet: nothing to conceal
            else:
                self._tick_eager(elapsed)
        else:
            if elapsed > 1:
                self._read_waiting()  # before the pulls below empty the buffer into concealment
            for _ in range(elapsed):
                frame = self.jitter.pop()
                if frame is not None:
                    self._hand_on(*frame)
        if self._ticked:
            self._ts = (self._ts + SAMPLES_PER_TICK * elapsed) & 0xFFFFFFFF
        self._ticked = True
        dest = self._latch.source
        if dest is None:
            return
        payload_type = self._send_payload_type
        self._idle_ticks += elapsed  # reset below when audio goes out
        if payload_type is not None:  # None while the peer holds the call: no RTP, only RTCP below
            event = self._dtmf_tx.next_packet(elapsed) if self.dtmf_payload_type is not None else None
            payload: bytes | None
            if event is not None:
                if event.first_of_event:
                    self._event_ts = self._ts
                assert self.dtmf_payload_type is not None
                payload = event.payload
                b1 = (0x80 if event.marker else 0) | self.dtmf_payload_type
                timestamp = self._event_ts
                self._was_audio = False  # the audio after an event starts a new talkspurt
            elif self._tones_queued and (tone := self._next_tone(elapsed)) is not None:
                # A key's tone (or the pause after it) in the call's codec, by the playout queue's encoder
                # (send_dtmf queues tones only for a queue that has one: else this sends its silence).
                payload = self.playout.encode_pcm(tone) or self.playout.silence
                if self.on_sent is not None:
                    self.on_sent(payload, True)
                self._idle_ticks = 0
                marker = not self._was_audio or self.packets_sent == self._mark_at
                self._was_audio = True
                b1 = (0x80 if marker else 0) | payload_type
                timestamp = self._ts
            else:
                batch = self.clock.batch  # open while the clock runs a phase tick
                if batch is None:
                    payload, is_audio = self.playout.pop_frame()
                else:  # a G.722 frame may be staged there (None), coded with the other calls of this tick
                    payload, is_audio = self.playout.pop_frame_staged(batch)
                if self.on_sent is not None:
                    self.on_sent(payload, is_audio)
                if is_audio:
                    self._idle_ticks = 0
                elif self._away and not self.playout.is_playing:
                    self._away = False  # idle again: back to the home phase
                    self.clock.rejoin_home(self)
                marker = (is_audio and not self._was_audio) or self.packets_sent == self._mark_at
                self._was_audio = is_audio
                b1 = (0x80 if marker else 0) | payload_type
                timestamp = self._ts
            # The 12-byte header (build_header, inlined: this runs for every packet of every call).
            seq = self._seq
            self._seq = (seq + 1) & 0xFFFF
            header = _pack_header(0x80, b1, seq, timestamp, self.ssrc)
            if payload is None:  # staged: sent once the clock's batch is coded, within this phase tick
                assert batch is not None
                batch.send(self._send_packet, header)
            else:
                self._send_packet(header, payload)
        self._rtcp_countdown -= elapsed
        if self._rtcp_countdown <= 0:
            self._rtcp_countdown = self._rtcp_ticks
            self._send_rtcp()

    def _next_tone(self, elapsed: int) -> bytes | None:
        tone = self._tones.next_frame(elapsed)
        if tone is None:
            self._tones_queued = False
        return tone

    def _send_packet(self, header: bytes, payload: bytes) -> None:
        dest = self._latch.source
        if dest is None or self._closed:
            return
        packet = header + payload
        if self._crypto is not None:
            packet = self._crypto.protect(packet)
        try:
            self._sock.sendto(packet, dest)
        except OSError:  # buffer full, or ICMP unreachable from an earlier packet: drop, never block
            self.send_errors += 1
        else:
            self.packets_sent += 1
            self.octets_sent += len(payload)

    def _tick_eager(self, elapsed: int) -> None:
        """Conceal the next frame once it is ``depth`` ticks overdue, one per tick from then on, so the
        consumer's timeline keeps pace with real time through loss and silence suppression."""
        jitter = self.jitter
        if not jitter.started:
            return
        played = jitter.stats.played
        if elapsed > 1 or played != self._played_at_gap:  # a late tick, or a gap's first: not every silent tick
            self._read_waiting()
            if jitter.stats.played != played:
                # The frames were here, waiting to be read: this tick was late (the loop stalled) or ran
                # before this socket's turn. Taken now, as if they had come just before it: nothing is overdue.
                self._overdue_ticks = 1
                return
        for _ in range(elapsed):
            self._overdue_ticks += 1
            if self._overdue_ticks <= jitter.depth:
                continue
            self._overdue_ticks = jitter.depth
            frame = jitter.pop()
            if frame is not None:
                self._hand_on(*frame)
            self._played_at_gap = jitter.stats.played
            self._deliver_ready()

    def _hand_on(self, payload: bytes, kind: FrameKind) -> None:
        if kind is not FrameKind.AUDIO and self.on_gap is not None:
            self.on_gap(payload)
        elif self.on_frame is not None:
            self.on_frame(payload)

    def _read_waiting(self) -> None:
        """Take the datagrams already waiting on the RTP socket, before a tick conceals frames that came in
        time: after a stall the clock's timer can run before the reads (uvloop runs timers first), and a tick
        that ``_on_readable`` runs goes before the other sockets' reads."""
        sock = self._sock
        for _ in range(LATE_TICK_READS):
            try:
                data, addr = sock.recvfrom(2048)
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from an earlier send: what follows may be waiting still
            except OSError:  # nothing waiting (EAGAIN), or the call closed the socket meanwhile
                return
            try:
                if len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223:  # RTCP: as in _on_readable
                    self._on_rtcp(data, addr[:2], sock)
                else:
                    self._on_rtp(data, addr[:2])
            except Exception:
                # Read by the loop, a datagram's failure is the loop's to log; in a tick it would stop the
                # clock serving this stream.
                log.exception("rtp %s: handling a datagram failed", self.local_port)

    def _send_rtcp(self) -> None:
        dest = self._rtcp_dest
        if dest is None or self._unspecified:
            return
        blocks: list[ReportBlock] = []
        rs = self.rx_stats
        if self._rx_ssrc is not None and rs.packets:
            lsr, dlsr = 0, 0
            if self._last_sr is not None:
                lsr = self._last_sr[0]
                dlsr = int((time.monotonic() - self._last_sr[1]) * 65536) & 0xFFFFFFFF
            blocks.append(ReportBlock(self._rx_ssrc, rs.interval_fraction_lost(), rs.lost,
                                      rs.highest_seq & 0xFFFFFFFF, int(rs.jitter), lsr, dlsr))
        if self.packets_sent:
            data = build_sr(SenderReport(self.ssrc, ntp_from_unix(time.time()), self._ts, self.packets_sent,
                                         self.octets_sent, blocks), self.cname)
        else:
            data = build_rr(ReceiverReport(self.ssrc, blocks), self.cname)
        if self._crypto is not None:
            data = self._crypto.protect_rtcp(data)
        sock = self._sock if self._rtcp_mux else self._rtcp_sock
        try:
            sock.sendto(data, dest)
        except OSError:
            self.send_errors += 1

    def __repr__(self) -> str:
        return f"<RtpEndpoint port={self.local_port} remote={self._latch.source}>"

    def __enter__(self) -> RtpEndpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
