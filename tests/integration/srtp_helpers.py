"""SRTP on the wire, for the integration tests: a tap on the agent's RTP sockets, a spy on the SRTP the
agent's media chain applies, and the check that every packet both ways was SRTP under those keys. Shared by
test_srtp.py and test_tls_srtp.py."""

from __future__ import annotations

import socket
import wave
from pathlib import Path
from typing import Any

import pytest

from sipagent.agent import Agent
from sipagent.call_media import CallMedia
from sipagent.media.kernel import Resampler
from sipagent.rtp.packet import is_rtcp
from sipagent.rtp.srtp import SrtpContext
from sipagent.sdp import NegotiatedMedia, SrtpParams


class TapSocket:
    """A UDP socket that notes every datagram it sends ('>') and receives ('<'), then does as the socket."""

    def __init__(self, sock: socket.socket, wire: list[tuple[str, bytes]]) -> None:
        self._sock = sock
        self._wire = wire

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        data, addr = self._sock.recvfrom(size)
        self._wire.append(("<", data))
        return data, addr

    def sendto(self, data: bytes, addr: Any) -> int:
        self._wire.append((">", data))
        return self._sock.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def tap(agent: Agent) -> list[tuple[str, bytes]]:
    """Every datagram on the RTP socket of the agent's calls from now on, in order."""
    wire: list[tuple[str, bytes]] = []
    bind_pair = agent.ports.bind_pair

    def tapped(host: str) -> tuple[int, Any, Any]:
        port, rtp_sock, rtcp_sock = bind_pair(host)
        return port, TapSocket(rtp_sock, wire), rtcp_sock

    agent.ports.bind_pair = tapped  # type: ignore[method-assign]
    return wire


def negotiated(monkeypatch: pytest.MonkeyPatch) -> list[SrtpParams | None]:
    """The SRTP of every negotiation the agent's media chain applies (at the answer and per re-INVITE)."""
    seen: list[SrtpParams | None] = []
    apply = CallMedia.apply

    def spy(self: CallMedia, media: NegotiatedMedia) -> None:
        seen.append(media.srtp)
        apply(self, media)

    monkeypatch.setattr(CallMedia, "apply", spy)
    return seen


def read_pcm24k(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
    return Resampler(rate, 24000).process(frames)


def check_wire(wire: list[tuple[str, bytes]], keys: list[SrtpParams | None]) -> None:
    """Every RTP datagram both ways authenticates under a negotiated key, and none carries its G.711 in
    the clear."""
    params = list(dict.fromkeys(k for k in keys if k is not None))
    assert params and all(k is not None for k in keys), keys  # SRTP from the answer to the BYE
    # Verifiers: the agent's key checks what it sent, the phone's what it received (fresh replay state each).
    checks = {">": [SrtpContext(p.suite, p.remote_key, p.local_key) for p in params],
              "<": [SrtpContext(p.suite, p.local_key, p.remote_key) for p in params]}
    counts = {">": 0, "<": 0}
    plain_payloads: set[bytes] = set()
    wire_payloads: set[bytes] = set()
    for direction, data in wire:
        if is_rtcp(data):
            continue
        opened = next((p for c in checks[direction] if (p := c.unprotect(data)) is not None), None)
        if opened is None:
            assert direction == "<", "the agent sent an RTP packet that its negotiated keys do not authenticate"
            continue  # one of the forged packets (counted by the endpoint above)
        counts[direction] += 1
        payload = opened[12:]
        assert data[12:12 + len(payload)] != payload, "a payload went out in the clear"
        plain_payloads.add(payload)
        wire_payloads.add(data[12:12 + len(payload)])
    assert counts[">"] > 200 and counts["<"] > 200, counts
    assert not plain_payloads & wire_payloads
    # The greeting and the question were in there, loud: the comparison was against real G.711 speech.
    assert sum(1 for p in plain_payloads if len(set(p)) > 40) > 50
