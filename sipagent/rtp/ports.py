"""RTP port allocation: even ports from a configured range, RTCP on port + 1, never leaked.

``PortAllocator.bind_pair`` reserves a port and binds both sockets; a port some other process holds is
skipped. A call binds its pair before it answers (the SDP answer names the port) and hands it to the
RtpEndpoint it builds for the negotiated codec, or gives it back with ``close_pair`` if it never does.
Allocation rotates through the range so a port just released is not handed out again at once (late
packets of the old call would land in the new one).
"""

from __future__ import annotations

import logging
import socket

from sipagent.errors import RtpError

log = logging.getLogger(__name__)

BoundPair = tuple[int, socket.socket, socket.socket]  # (RTP port, RTP socket, RTCP socket on port + 1)


class PortAllocator:
    def __init__(self, lo: int, hi: int) -> None:
        lo += lo % 2
        if not 0 < lo < hi <= 65535 or hi - lo < 1:
            raise RtpError(f"RTP port range {lo}-{hi} holds no even/odd port pair")
        self.lo, self.hi = lo, hi
        self._ports = list(range(lo, hi, 2))  # hi itself may be the last RTCP port
        self._next = 0
        self._used: set[int] = set()

    @classmethod
    def parse(cls, spec: str) -> PortAllocator:
        """From the ``media.rtp_ports`` form "40000-40999"."""
        lo, _, hi = spec.partition("-")
        try:
            return cls(int(lo), int(hi))
        except ValueError:
            raise RtpError(f'bad RTP port range "{spec}", expected like "40000-40999"') from None

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def capacity(self) -> int:
        return len(self._ports)

    def reserve(self) -> int:
        """An even port not handed out yet (not bound: ``bind_pair`` does that)."""
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port not in self._used:
                self._used.add(port)
                return port
        raise RtpError(f"no free RTP port in {self.lo}-{self.hi} ({self.in_use} in use)")

    def release(self, port: int) -> None:
        self._used.discard(port)

    def bind_pair(self, host: str) -> BoundPair:
        """Reserve a port and bind non-blocking UDP sockets on it and on port + 1."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        dual_stack = host.strip("[]") == "::"
        for _ in range(len(self._ports)):
            port = self.reserve()
            socks: list[socket.socket] = []
            try:
                for p in (port, port + 1):
                    s = socket.socket(family, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.setblocking(False)
                    if dual_stack:  # "::" takes IPv4 media too, whatever net.ipv6.bindv6only says
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    s.bind((host.strip("[]"), p))
            except OSError as exc:
                log.debug("RTP port %s unavailable: %s", port, exc)
                for s in socks:
                    s.close()
                self.release(port)
                continue
            return port, socks[0], socks[1]
        raise RtpError(f"no bindable RTP port pair in {self.lo}-{self.hi} on {host}")

    def close_pair(self, pair: BoundPair) -> None:
        """Close a pair from ``bind_pair`` that no endpoint took, and give its port back."""
        port, rtp_sock, rtcp_sock = pair
        rtp_sock.close()
        rtcp_sock.close()
        self.release(port)
