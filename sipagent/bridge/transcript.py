"""Per-call records: a JSON Lines transcript and an optional stereo WAV (caller left, agent right)."""

from __future__ import annotations

import json
import re
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np


def call_file_stem(call_id: str, started: datetime) -> str:
    """A file name that sorts by time and is safe on any filesystem."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:48]
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-{safe}"


class TranscriptWriter:
    """One JSON object per line: ``{"t": seconds since answer, "at": ISO time, "type": ..., ...}``.

    Types: ``call`` (start/end with metadata), ``caller`` and ``agent`` (final text), ``dtmf``,
    ``tool_call``, ``tool_result``, ``barge_in_pause``, ``barge_in_resume``, ``barge_in``, ``event``
    (reconnects, failures), ``usage``.
    Lines are flushed as written so a crash loses nothing and ``tail -f`` shows the call live.
    """

    def __init__(self, path: Path, clock_origin: float) -> None:
        self.path = path
        self._origin = clock_origin
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = path.open("a", encoding="utf-8")
        self.entries: list[dict[str, Any]] = []

    def write(self, now: float, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"t": round(now - self._origin, 3), "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "type": kind, **fields}
        self.entries.append(entry)
        if self._file is not None:
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class StereoRecorder:
    """Caller on the left, agent on the right, 24 kHz PCM16, written frame by frame.

    Both sides advance one 20 ms frame per media tick, so appending each side's frame as it passes keeps
    them aligned; a side with nothing that tick is padded with silence when the other side moves on.
    """

    RATE = 24000

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Open for the whole call: frames are appended as they pass, closed in close().
        self._wav: wave.Wave_write | None = wave.open(str(path), "wb")  # noqa: SIM115
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(self.RATE)
        self._left = bytearray()
        self._right = bytearray()
        self.frames_written = 0

    def caller(self, pcm24k: bytes) -> None:
        self._left += pcm24k
        self._drain()

    def agent(self, pcm24k: bytes) -> None:
        self._right += pcm24k
        self._drain()

    def _drain(self, force: bool = False) -> None:
        n = min(len(self._left), len(self._right))
        # A side more than 200 ms ahead means the other side is silent (no inbound media, or agent idle).
        lag_limit = self.RATE * 2 // 5
        if force or max(len(self._left), len(self._right)) - n > lag_limit:
            n = max(len(self._left), len(self._right))
            self._left += bytes(n - len(self._left))
            self._right += bytes(n - len(self._right))
        n -= n % 2
        if n == 0 or self._wav is None:
            return
        left = np.frombuffer(bytes(self._left[:n]), dtype="<i2")
        right = np.frombuffer(bytes(self._right[:n]), dtype="<i2")
        interleaved = np.empty(left.size * 2, dtype="<i2")
        interleaved[0::2] = left
        interleaved[1::2] = right
        self._wav.writeframes(interleaved.tobytes())
        self.frames_written += left.size
        del self._left[:n]
        del self._right[:n]

    def close(self) -> None:
        if self._wav is not None:
            self._drain(force=True)
            self._wav.close()
            self._wav = None

    @property
    def seconds(self) -> float:
        return self.frames_written / self.RATE
