"""`sipagent check` and the recording directory: where records go, and a clear failure when they cannot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipagent.cli import main

BASE = "realtime: {provider: local}\n"


def write_config(tmp_path: Path, directory: Path, audio: bool = False, keep_days: int = 0) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + f"recording: {{dir: '{directory}', audio: {str(audio).lower()}, keep_days: {keep_days}}}\n")
    return path


def test_check_reports_where_records_go(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "records"
    assert main(["check", "-c", str(write_config(tmp_path, directory, audio=True))]) == 0
    out = capsys.readouterr().out
    assert f"recording: transcripts and audio in {directory} (created at the first call as " in out, out
    assert "GB free" in out and not directory.exists()  # check creates nothing
    directory.mkdir()
    assert main(["check", "-c", str(write_config(tmp_path, directory))]) == 0
    out = capsys.readouterr().out
    assert f"recording: transcripts in {directory} (writable as " in out
    assert "; kept for good (recording.keep_days)" in out
    assert main(["check", "-c", str(write_config(tmp_path, directory, keep_days=90))]) == 0
    assert "GB free); kept 90 days" in capsys.readouterr().out


def test_check_fails_when_records_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    config = write_config(tmp_path, tmp_path / "file" / "records")
    assert main(["check", "-c", str(config)]) == 1
    captured = capsys.readouterr()
    assert "NOT WRITABLE" in captured.out
    assert f"{config}:2: recording.dir: {tmp_path / 'file' / 'records'} cannot be created: " in captured.err
    assert "calls would be answered without transcripts or recordings" in captured.err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):  # root writes there anyway
            assert main(["check", "-c", str(write_config(tmp_path, locked))]) == 1
            assert "cannot write in" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_check_with_recording_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + "recording: {dir: /proc/nowhere, transcripts: false}\n")
    assert main(["check", "-c", str(path)]) == 0
    assert "recording: off" in capsys.readouterr().out
