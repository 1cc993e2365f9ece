"""recording.keep_days: which files a sweep deletes (only the calls' own, by their last write) and which it
leaves (anything else, links, directories, files of calls still recent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipagent.bridge import retention
from sipagent.bridge.retention import DAY_S, Sweep, sweep

NOW = 2_000_000_000.0
OLD = "20261101T101500Z-3d66652884f3b44737998594-43b4caad"
NEW = "20261206T224654Z-a84f3b4473799-0123abcd"


def touch(path: Path, age_days: float, size: int = 10) -> Path:
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_days * DAY_S, NOW - age_days * DAY_S))
    return path


def test_only_the_calls_own_files_older_than_the_limit_go(tmp_path: Path) -> None:
    gone = [touch(tmp_path / f"{OLD}.jsonl", 40, 100), touch(tmp_path / f"{OLD}.wav", 31, 1000)]
    kept = [
        touch(tmp_path / f"{NEW}.jsonl", 29),  # younger than the limit
        touch(tmp_path / f"{NEW}.wav", 0),
        touch(tmp_path / "caller-heard.wav", 400),  # not a call file: the demo's, or an operator's
        touch(tmp_path / f"{OLD}.jsonl.bak", 400),
        touch(tmp_path / f"{OLD}.mp3", 400),
        touch(tmp_path / "notes.txt", 400),
    ]
    (tmp_path / f"{OLD}-dir.wav").mkdir()  # a directory named like a call file
    outside = touch(tmp_path.parent / f"elsewhere-{OLD}.wav", 400)
    (tmp_path / f"{OLD[:-8]}deadbeef.wav").symlink_to(outside)  # a link: neither it nor its target
    sub = tmp_path / "2026"
    sub.mkdir()
    nested = touch(sub / f"{OLD}.wav", 400)  # only the directory itself is swept
    assert sweep(tmp_path, 30, NOW) == Sweep(deleted=2, freed_bytes=1100)
    assert not any(path.exists() for path in gone)
    assert all(path.exists() for path in [*kept, outside, nested])
    assert (tmp_path / f"{OLD[:-8]}deadbeef.wav").is_symlink()


def test_a_directory_not_there_yet_has_nothing_to_delete(tmp_path: Path) -> None:
    assert sweep(tmp_path / "recordings", 30, NOW) == Sweep()


def test_a_file_that_cannot_be_deleted_is_counted_and_the_rest_still_go(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = touch(tmp_path / f"{OLD}.wav", 40)
    touch(tmp_path / f"{OLD}.jsonl", 40)
    real_unlink = os.unlink

    def unlink(path: str) -> None:
        if path.endswith(".wav"):
            raise PermissionError(13, "Permission denied")
        real_unlink(path)

    monkeypatch.setattr(retention.os, "unlink", unlink)
    done = sweep(tmp_path, 30, NOW)
    assert (done.deleted, done.failed, done.problem) == (1, 1, "Permission denied")
    assert stuck.exists() and not (tmp_path / f"{OLD}.jsonl").exists()


@pytest.mark.parametrize("value", ["0.5", "-1", "36601", ".nan", "'30 days'"])
def test_keep_days_out_of_range_is_a_config_error_naming_it(value: str) -> None:
    from sipagent.config import load_config_text
    from sipagent.errors import ConfigError

    text = "sip: {registrar: '', listen: '127.0.0.1:5080'}\nrealtime: {provider: local}\n"
    with pytest.raises(ConfigError) as error:
        load_config_text(text + f"recording: {{keep_days: {value}}}\n", "agent.yaml")
    assert (error.value.line, error.value.key) == (3, "recording.keep_days")
    assert str(error.value).startswith("agent.yaml:3: recording.keep_days: expected ")


def test_an_empty_recording_dir_is_a_config_error() -> None:
    """Most likely a ${VAR} set but empty: the files would land in whatever the working directory is."""
    from sipagent.config import load_config_text
    from sipagent.errors import ConfigError

    text = "sip: {registrar: '', listen: '127.0.0.1:5080'}\nrealtime: {provider: local}\n"
    with pytest.raises(ConfigError) as error:
        load_config_text(text + "recording: {dir: '${DIR}'}\n", "agent.yaml", {"DIR": ""})
    assert str(error.value) == ('agent.yaml:3: recording.dir: expected a directory path, got an empty one (write "." '
                                "for the working directory)")
    assert load_config_text(text + "recording: {dir: .}\n", "agent.yaml").recording.dir == "."

