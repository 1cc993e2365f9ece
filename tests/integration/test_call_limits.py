"""What a call leaves on disk cannot hurt it: on real calls (agent in direct mode, our SIP caller, the
offline backend over a WebSocket).

- Recording faults (a directory that cannot be written, a full disk, a read-only filesystem, the directory
  removed during the call): the file stops, one log line and one count, and the call goes on untouched.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import Rig, bridge_config, call_rig, loud_times

from sipagent.bridge import transcript

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"),
]


def recording_errors(rig: Rig, kind: str) -> float:
    value = rig.agent.metrics.registry.get_sample_value("sipagent_recording_errors_total", {"kind": kind})
    return value or 0.0


# ---------------------------------------------------------------- recording faults


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that does not fit fails with ENOSPC."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "xb")
        self.room = room

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.name))
        self.room -= len(data)
        return super().write(data)


def full_disk(transcript_room: int, audio_room: int) -> Callable[[Path], Any]:
    def open_call_file(path: Path) -> FullDisk:
        path.parent.mkdir(parents=True, exist_ok=True)
        return FullDisk(path, transcript_room if path.suffix == ".jsonl" else audio_room)

    return open_call_file


def read_only_filesystem(path: Path) -> Any:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


FAULTS = ["not-a-directory", "read-only-directory", "disk-full", "read-only-filesystem", "directory-removed"]


@pytest.mark.parametrize("fault", FAULTS)
def test_recording_faults_never_hurt_the_call(tmp_path: Path, fault: str, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "records"
    if fault == "not-a-directory":
        (tmp_path / "file").write_text("")
        directory = tmp_path / "file" / "records"  # mkdir fails, even for root
    elif fault == "read-only-directory":
        directory.mkdir()
        directory.chmod(0o555)
        if os.access(directory, os.W_OK):
            pytest.skip("this process writes into a 0555 directory anyway (root); not-a-directory covers the path")
    elif fault == "disk-full":
        # The transcript fills the disk after its first lines, the recording after about a second of audio.
        monkeypatch.setattr(transcript, "open_call_file", full_disk(600, 100_000))
    elif fault == "read-only-filesystem":
        monkeypatch.setattr(transcript, "open_call_file", read_only_filesystem)
    caplog.set_level(logging.INFO)
    try:
        asyncio.run(_faulty_records(tmp_path, directory, fault, caplog))
    finally:
        if directory.exists():
            directory.chmod(0o755)


async def _faulty_records(tmp_path: Path, directory: Path, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    config = bridge_config(tmp_path, recording={"dir": str(directory), "audio": True})
    async with call_rig(config) as rig:
        await rig.agent_turn()
        bridge = rig.bridge  # kept: the transcript lives on in memory when its file fails
        if fault == "directory-removed":
            shutil.rmtree(directory)
        _, asked = await rig.say("where is my order seven seven two one")
        await rig.wait_entry("agent", 25, lambda e: "shipped" in e["text"])
        await rig.agent_turn(quiet_s=0.5, new=False)
        assert rig.agent.clock.streams == 1  # the media clock still serves the agent's side of the call
    outcome = await rig.wait_outcome()
    heard = loud_times(rig.caller, since=asked)
    assert len(heard) * 20 >= 1500, f"only {len(heard) * 20} ms of the answer heard\n{rig.summary()}"
    assert outcome.reason == "remote-hangup", rig.summary()
    assert rig.agent.metrics.calls_active == 0
    assert outcome.transcript_path is None and outcome.recording_path is None, outcome
    assert bridge.transcript is not None and any("shipped" in e.get("text", "") for e in bridge.transcript.entries)
    for kind in ("transcript", "audio"):
        assert recording_errors(rig, kind) == 1, kind
        lines = [r for r in caplog.records if r.getMessage().startswith(f"{kind} ") and "stopped" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "failed on tick" not in messages and "call failed" not in messages, messages
    assert "error handling" not in messages, messages
