"""recording.keep_days in a running agent: at start its sweep deletes the calls' files older than the limit,
says so in the log, and leaves the rest."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent_helpers import running_agent

OLD = "20250101T000000Z-old-call-0123abcd"
RECENT = "20261206T120000Z-recent-call-89abcdef"


def test_the_agent_deletes_call_files_older_than_keep_days_at_start(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    aged = time.time() - 3 * 86400
    for name in (f"{OLD}.jsonl", f"{OLD}.wav", f"{RECENT}.jsonl", "keep-me.wav"):
        (rec / name).write_bytes(b"x" * 500_000)
        if name != f"{RECENT}.jsonl":
            os.utime(rec / name, (aged, aged))
    with running_agent(tmp_path, sections={"recording": {"keep_days": 2}}) as agent:
        deadline = time.monotonic() + 10
        while "recording.keep_days: deleted" not in agent.log.read_text():
            assert time.monotonic() < deadline, agent.log.read_text()[-2000:]
            time.sleep(0.1)
        assert "deleted 2 call files older than 2 days (1.0 MB)" in agent.log.read_text()
    assert sorted(path.name for path in rec.iterdir()) == sorted([f"{RECENT}.jsonl", "keep-me.wav"])
