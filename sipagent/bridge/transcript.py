"""Per-call records: a JSON Lines transcript and an optional stereo WAV (caller left, agent right).

A record is never worth a call. A write that fails (a full disk, a directory without permission or on a
read-only filesystem, a directory removed during the call) stops that file: the writer tells its owner
once through ``on_error`` and then ignores what it is given, while the call goes on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import wave
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

OnError = Callable[[Path, OSError], None]  # told once: the file's path and what failed


def call_file_stem(call_id: str, started: datetime) -> str:
    """A file name that sorts by time, is safe on any filesystem and belongs to one call only: the start
    time, the Call-ID's first characters (to find a call's files by eye) and a random part, because Call-IDs
    of one PBX often share a long prefix and two calls can start in the same second."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:32]
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-{safe}-{secrets.token_hex(4)}"


def open_call_file(path: Path) -> BinaryIO:
    """Create ``path`` (and its directory) for writing, failing if it exists: the one place per-call files
    are opened (tests put a faulty file here). Exclusive creation means two calls can never share a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _deleted(file: BinaryIO) -> bool:
    """Whether the open file no longer has a name (its directory was removed under it)."""
    try:
        return os.fstat(file.fileno()).st_nlink == 0
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (or already closed): nothing to tell


def _json_line(entry: dict[str, Any]) -> bytes:
    """One entry as UTF-8 JSON; a lone surrogate (JSON can carry one escaped, from the model's server or a
    tool) is written escaped again instead of losing the line."""
    try:
        return json.dumps(entry, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(entry).encode() + b"\n"


class _CallFile:
    """What both writers share: one file, stopped for good at its first failure."""

    def __init__(self, path: Path, on_error: OnError | None) -> None:
        self.path = path
        self.error: OSError | None = None
        self._on_error = on_error

    @property
    def ok(self) -> bool:
        """Whether the file holds everything it was given so far (no write failed, it was not deleted)."""
        return self.error is None

    def _failed(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            if self._on_error is not None:
                self._on_error(self.path, exc)

    def _check_still_there(self, file: BinaryIO) -> None:
        if _deleted(file):
            self._failed(FileNotFoundError(errno.ENOENT, "deleted during the call", str(self.path)))


class TranscriptWriter(_CallFile):
    """One JSON object per line: ``{"t": seconds since answer, "at": ISO time, "type": ..., ...}``.

    Types: ``call`` (start/end with metadata), ``caller`` and ``agent`` (final text; the greeting's entry also
    says how much of it the caller heard), ``dtmf`` (a key from the caller), ``dtmf_sent`` (keys passed to the
    model as text), ``dtmf_collected`` (a collect_digits entry's digits and why it ended), ``dtmf_out`` (keys
    sent by send_dtmf, and ``method``: "rfc4733" or "inband"), ``tool_call``, ``tool_result``,
    ``barge_in_duck``, ``barge_in_unduck``, ``barge_in_pause``, ``barge_in_resume``, ``barge_in``
    (``trigger`` "dtmf" for a key), ``event`` (reconnects, failures, limits), ``usage``.
    Lines are flushed as written so a crash loses nothing and ``tail -f`` shows the call live. ``entries``
    keeps every entry in memory, written or not.
    """

    def __init__(self, path: Path, clock_origin: float, on_error: OnError | None = None) -> None:
        super().__init__(path, on_error)
        self._origin = clock_origin
        self.entries: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        try:
            self._file = open_call_file(path)
        except OSError as exc:
            self._failed(exc)

    def write(self, now: float, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"t": round(now - self._origin, 3), "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "type": kind, **fields}
        self.entries.append(entry)
        if self._file is not None:
            try:
                self._file.write(_json_line(entry))
                self._file.flush()
            except OSError as exc:
                self._stop(exc)
        return entry

    def _stop(self, exc: OSError) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # the first failure is the one worth telling
        self._failed(exc)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        self._check_still_there(file)
        try:
            file.close()
        except OSError as exc:
            self._failed(exc)


class StereoRecorder(_CallFile):
    """Caller on the left, agent on the right, 24 kHz PCM16, written frame by frame.

    Both sides advance one 20 ms frame per media tick, so appending each side's frame as it passes keeps
    them aligned; a side with nothing that tick is padded with silence when the other side moves on.
    """

    RATE = 24000

    def __init__(self, path: Path, on_error: OnError | None = None) -> None:
        super().__init__(path, on_error)
        self._left = bytearray()
        self._right = bytearray()
        self.frames_written = 0
        self._file: BinaryIO | None = None
        self._wav: wave.Wave_write | None = None
        try:
            self._file = open_call_file(path)
            # Open for the whole call: frames are appended as they pass, closed in close().
            self._wav = wave.open(self._file, "wb")  # noqa: SIM115 (closed in close() or _stop())
            self._wav.setnchannels(2)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.RATE)
        except OSError as exc:
            self._stop(exc)

    def caller(self, pcm24k: bytes) -> None:
        if self._wav is not None:
            self._left += pcm24k
            self._drain()

    def agent(self, pcm24k: bytes) -> None:
        if self._wav is not None:
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
        del self._left[:n]
        del self._right[:n]
        try:
            self._wav.writeframes(interleaved.tobytes())
        except OSError as exc:
            self._stop(exc)
            return
        self.frames_written += left.size

    def _stop(self, exc: OSError | None) -> None:
        """Close quietly (the header may not be patched) and drop what is buffered."""
        wav, self._wav = self._wav, None
        file, self._file = self._file, None
        self._left.clear()
        self._right.clear()
        for closing in (wav, file):
            if closing is not None:
                try:
                    closing.close()
                except OSError:
                    pass  # the first failure is the one worth telling
        if exc is not None:
            self._failed(exc)

    def close(self) -> None:
        if self._wav is None or self._file is None:
            return
        wav, file = self._wav, self._file
        try:
            self._drain(force=True)
            if self._wav is not None:
                self._check_still_there(file)
                self._wav = None
                wav.close()  # patches the header's lengths
                self._file = None
                file.close()
        except OSError as exc:
            self._stop(exc)

    @property
    def seconds(self) -> float:
        return self.frames_written / self.RATE


def directory_problem(directory: Path) -> str | None:
    """Why per-call files could not be written in ``directory`` by this process now, or None if they can.

    Leaves nothing behind: in an existing directory a nameless temporary file is written, synced and
    dropped (a full disk shows here); a missing directory is not created (the agent creates it at its first
    call, as the user it runs as), only its nearest existing parent is checked."""
    if directory.exists():
        if not directory.is_dir():
            return f"{directory} is not a directory"
        try:
            with tempfile.TemporaryFile(dir=directory) as probe:
                probe.write(bytes(4096))
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            return f"cannot write in {directory}: {exc.strerror or exc}"
        return None
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{directory} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{directory} does not exist and cannot be created: {parent} is not writable"
    return None


def free_bytes(directory: Path) -> int | None:
    """Free space where ``directory`` is (or would be created), or None if it cannot be told."""
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free
    except OSError:
        return None
