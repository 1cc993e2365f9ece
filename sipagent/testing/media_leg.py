"""A call's media leg for tests of the bridge without sockets: a real playout queue of 24 kHz PCM that the
test drains itself, one 20 ms frame at a time (``queue.pop_frame()``), in place of the RTP endpoint."""

from __future__ import annotations

from sipagent.media.playout import PlayoutQueue

FRAME = 960  # 20 ms of 24 kHz PCM16


class QueueMediaLeg:
    """What the bridge needs of the call's media (sipagent.bridge.legs.MediaLeg) over ``queue``; keys sent go
    nowhere, and ``sent_audio`` is what the test says was last sent."""

    codec = "PCMU"
    dtmf_method = "rfc4733"
    dtmf_sending = False
    packets_received = 0

    def __init__(self) -> None:
        self.queue = PlayoutQueue(FRAME, bytes(FRAME))
        self.sent_audio = (bytes(FRAME), 0.0)

    def push_audio(self, pcm24k: bytes) -> None:
        self.queue.push(pcm24k)

    def flush_audio(self) -> int:
        return self.queue.flush()

    def pause_audio(self) -> None:
        self.queue.pause()

    def resume_audio(self) -> None:
        self.queue.resume()

    def duck_audio(self, gain: float) -> None:
        self.queue.duck(gain)

    def unduck_audio(self) -> None:
        self.queue.unduck()

    @property
    def played_ms(self) -> int:
        return self.queue.played_ms

    @property
    def buffered_ms(self) -> int:
        return self.queue.buffered_ms

    def media_report(self) -> dict[str, int | float | None]:
        return {}

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        """Keys go nowhere here."""


__all__ = ["FRAME", "QueueMediaLeg"]
