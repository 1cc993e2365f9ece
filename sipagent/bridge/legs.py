"""What the bridge needs of the things it bridges: the answered SIP call, its RTP media and a Realtime
connection. Protocols only, so that the bridge depends on no transport (agent.py adapts the real ones,
tests bring their own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class RealtimeLink(Protocol):
    """What the bridge needs of a Realtime connection (sipagent.realtime.client.RealtimeClient)."""

    async def send(self, event: dict[str, Any] | str) -> None:
        """An event as a mapping, or already as JSON text (the per-frame audio appends)."""

    def send_now(self, text: bytes) -> bool:
        """Write JSON text (UTF-8) to the socket without a task switch if nothing stands in the way; False
        when it could not (then ``send`` it, as str)."""

    async def recv(self) -> dict[str, Any]: ...

    def deliver_to(self, take: Callable[[dict[str, Any]], bool] | None) -> None:
        """Offer events to ``take`` as they arrive, before ``recv`` would get them (False: recv gets it)."""

    async def close(self) -> None: ...


class CallLeg(Protocol):
    """What the bridge needs of the SIP call (sipagent.sip IncomingCall or OutgoingCall), once answered."""

    call_id: str
    from_uri: str
    ended: asyncio.Event
    end_reason: str  # set when ``ended`` is: "remote-bye", "transferred", ...

    async def hangup(self) -> None: ...

    async def transfer(self, target: str, timeout: float = ...) -> bool: ...

    async def transfer_replacing(self, other: Any, timeout: float = 30) -> bool:
        """REFER with Replaces (RFC 3891): the far end takes the place of our call ``other``."""

    def peer_supports(self, option: str) -> bool:
        """The far end said it supports ``option`` ("replaces") in its INVITE or answer."""


class MediaLeg(Protocol):
    """What the bridge needs of the call's RTP endpoint and its playout queue."""

    codec: str

    def push_audio(self, pcm24k: bytes) -> None:
        """Queue the agent's audio (24 kHz PCM16, any length): encoded for the call's codec as it leaves."""

    def flush_audio(self) -> int: ...

    def pause_audio(self) -> None: ...

    def resume_audio(self) -> None: ...

    def duck_audio(self, gain: float) -> None:
        """Turn the agent's audio down to ``gain`` from the next frame on; it plays on (nothing held)."""

    def unduck_audio(self) -> None: ...

    @property
    def played_ms(self) -> int: ...

    @property
    def buffered_ms(self) -> int: ...

    @property
    def sent_audio(self) -> tuple[bytes, float]:
        """The last frame sent: its 24 kHz PCM16 (after any duck; zeros for silence) and that PCM's mean square."""

    @property
    def packets_received(self) -> int:
        """RTP packets taken from the far end: a count that changes whenever media arrives (it restarts with
        a new source), which the media timeout watches."""

    def media_report(self) -> dict[str, int | float | None]:
        """The call's RTP figures so far (packets, loss, jitter, concealed frames, the far end's RTCP view),
        for the transcript's ``media`` record and ``call.ended``."""

    @property
    def dtmf_method(self) -> str | None:
        """How a key goes out: "rfc4733" (the far end negotiated telephone-events), "inband" (tones in the
        audio), None when it cannot."""

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Queue one key, sent on the clock's ticks in place of audio (``dtmf_method`` says how)."""

    @property
    def dtmf_sending(self) -> bool:
        """Keys queued by ``send_dtmf`` are still going out."""


__all__ = ["CallLeg", "MediaLeg", "RealtimeLink"]
