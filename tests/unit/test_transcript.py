"""Per-call files: unique names, and write failures that stop the file, are told once and never raise."""

from __future__ import annotations

import errno
import json
import os
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sipagent.bridge import transcript
from sipagent.bridge.transcript import StereoRecorder, TranscriptWriter, call_file_stem, directory_problem

FRAME = bytes(960)  # 20 ms of 24 kHz PCM16 silence
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


class Errors(list[OSError]):
    """An ``on_error`` that keeps what it is told."""

    def __call__(self, path: Path, exc: OSError) -> None:
        assert path.suffix in (".jsonl", ".wav")
        self.append(exc)


def dev_full(path: Path) -> Any:
    """A file where every write reaches a full disk: the kernel's own ENOSPC."""
    return open("/dev/full", "wb")


def test_stems_are_unique_even_for_call_ids_sharing_a_prefix() -> None:
    started = datetime(2026, 11, 25, 14, 2, 33, tzinfo=UTC)
    prefix = "a84b4c76e66710-" * 5  # PBXs number their calls: long shared prefixes are common
    stems = {call_file_stem(prefix + tail, started) for tail in ("1", "2", "3")}
    stems.add(call_file_stem(prefix + "1", started))  # the same Call-ID again (another dialog)
    assert len(stems) == 4
    stem = call_file_stem("abc/../@x y", started)
    assert stem.startswith("20261125T140233Z-abc_..__x_y-") and "/" not in stem


def test_an_existing_file_is_never_written_by_a_second_call(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    first = TranscriptWriter(path, 0.0)
    first.write(1.0, "caller", text="mine")
    errors = Errors()
    second = TranscriptWriter(path, 0.0, on_error=errors)
    second.write(2.0, "caller", text="theirs")
    second.close()
    first.close()
    assert [e.errno for e in errors] == [errno.EEXIST] and not second.ok and first.ok
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == ["mine"]
    assert second.entries[0]["text"] == "theirs"  # kept in memory all the same


def test_a_lone_surrogate_from_a_peer_is_written_escaped_not_lost(tmp_path: Path) -> None:
    """JSON can carry "\\ud800" (a model's server, a tool): the line is written all the same, readable."""
    path = tmp_path / "c.jsonl"
    writer = TranscriptWriter(path, 0.0, on_error=Errors())
    writer.write(1.0, "caller", text="hi \ud800 there")
    writer.write(2.0, "agent", text="héllo")
    writer.close()
    lines = path.read_bytes().decode().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["hi \ud800 there", "héllo"] and writer.ok
    assert "héllo" in lines[1]  # other lines stay readable UTF-8


def test_transcript_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    errors = Errors()
    writer = TranscriptWriter(tmp_path / "file" / "calls" / "c.jsonl", 0.0, on_error=errors)
    writer.write(0.5, "caller", text="hello")
    writer.close()
    assert [e.errno for e in errors] == [errno.ENOTDIR] and not writer.ok
    assert writer.entries[0]["text"] == "hello"


@needs_dev_full
def test_transcript_on_a_full_disk_stops_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcript, "open_call_file", dev_full)
    errors = Errors()
    writer = TranscriptWriter(tmp_path / "c.jsonl", 0.0, on_error=errors)
    for i in range(5):
        writer.write(float(i), "caller", text="still talking")
    writer.close()
    writer.close()
    assert [e.errno for e in errors] == [errno.ENOSPC] and not writer.ok
    assert len(writer.entries) == 5


class ClosingFails:
    """A file whose data only fails to reach the disk when it is closed (NFS, a quota checked late)."""

    def __init__(self, path: Path) -> None:
        self.inner = path.open("xb")

    def write(self, data: bytes) -> int:
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "c.jsonl")


def test_a_failing_close_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcript, "open_call_file", ClosingFails)
    errors = Errors()
    writer = TranscriptWriter(tmp_path / "c.jsonl", 0.0, on_error=errors)
    writer.write(0.0, "call", event="start")
    writer.close()
    assert [e.errno for e in errors] == [errno.EDQUOT] and not writer.ok


def test_files_deleted_during_the_call_are_reported_at_close(tmp_path: Path) -> None:
    directory = tmp_path / "calls"
    errors = Errors()
    writer = TranscriptWriter(directory / "c.jsonl", 0.0, on_error=errors)
    recorder = StereoRecorder(directory / "c.wav", on_error=errors)
    writer.write(0.0, "call", event="start")
    recorder.caller(FRAME)
    recorder.agent(FRAME)
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    writer.write(1.0, "caller", text="nobody will read this")  # an unlinked file takes writes silently
    recorder.caller(FRAME)
    recorder.agent(FRAME)
    writer.close()
    recorder.close()
    assert [e.errno for e in errors] == [errno.ENOENT, errno.ENOENT]
    assert "deleted during the call" in str(errors[0]) and not writer.ok and not recorder.ok


@needs_dev_full
def test_recording_on_a_full_disk_stops_and_buffers_nothing(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcript, "open_call_file", dev_full)
    errors = Errors()
    recorder = StereoRecorder(tmp_path / "c.wav", on_error=errors)
    for _ in range(100):  # 2 s: more than the file's buffer, so a write reaches the disk
        recorder.caller(FRAME)
        recorder.agent(FRAME)
    assert [e.errno for e in errors] == [errno.ENOSPC] and not recorder.ok
    recorder.caller(FRAME)
    assert not recorder._left and not recorder._right  # frames after the failure are dropped, not kept
    recorder.close()
    assert len(errors) == 1


def test_recording_that_cannot_be_opened(tmp_path: Path) -> None:
    errors = Errors()
    (tmp_path / "file").write_text("")
    recorder = StereoRecorder(tmp_path / "file" / "calls" / "c.wav", on_error=errors)
    recorder.caller(FRAME)
    recorder.agent(FRAME)
    recorder.close()
    assert [e.errno for e in errors] == [errno.ENOTDIR] and not recorder.ok and recorder.frames_written == 0


def test_recording_is_a_valid_wav_when_nothing_fails(tmp_path: Path) -> None:
    errors = Errors()
    recorder = StereoRecorder(tmp_path / "c.wav", on_error=errors)
    for _ in range(10):
        recorder.caller(FRAME)
        recorder.agent(FRAME)
    recorder.close()
    with wave.open(str(tmp_path / "c.wav")) as wav:
        assert (wav.getnchannels(), wav.getnframes()) == (2, 4800)
    assert not errors and recorder.ok


def test_directory_problem(tmp_path: Path) -> None:
    assert directory_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    missing = tmp_path / "a" / "b"
    assert directory_problem(missing) is None and not missing.exists()  # creatable, and not created
    (tmp_path / "file").write_text("")
    assert "not a directory" in (directory_problem(tmp_path / "file") or "")
    assert "not a directory" in (directory_problem(tmp_path / "file" / "calls") or "")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):  # root writes there anyway
            assert "cannot write" in (directory_problem(locked) or "")
            assert "not writable" in (directory_problem(locked / "calls") or "")
    finally:
        locked.chmod(0o755)
