"""How long calls' files are kept: ``recording.keep_days``. A call center's recordings grow by about 350 MB per
hour of calls (stereo 16-bit WAV at 24 kHz); without a limit the disk fills, and then every transcript and
recording stops (each writer gives up with a warning, the calls go on).

Only files this program names (``call_file_stem``: ``20261206T224654Z-<Call-ID>-<8 hex>.jsonl`` / ``.wav``)
directly in ``recording.dir`` are ever deleted, by their last write: never a directory, a link, or anything
an operator put there. Plain blocking calls: the agent runs a sweep in a worker thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DAY_S = 86400.0
CALL_FILE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{0,32}-[0-9a-f]{8}\.(?:jsonl|wav)")


@dataclass(frozen=True)
class Sweep:
    deleted: int = 0
    freed_bytes: int = 0
    failed: int = 0  # files that could not be deleted (permissions): left, and said
    problem: str = ""  # the last failure, as the system put it


def sweep(directory: Path, keep_days: float, now: float) -> Sweep:
    """Delete the call files in ``directory`` last written more than ``keep_days`` before ``now`` (epoch
    seconds). A directory that does not exist (yet) has nothing to delete."""
    cutoff = now - keep_days * DAY_S
    deleted = freed = failed = 0
    problem = ""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return Sweep()
    except OSError as exc:
        return Sweep(failed=1, problem=exc.strerror or str(exc))
    with entries:
        for entry in entries:
            if not CALL_FILE.fullmatch(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
                if stat.st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue  # gone meanwhile: nothing to do
            except OSError as exc:
                failed += 1
                problem = exc.strerror or str(exc)
                continue
            deleted += 1
            freed += stat.st_size
    return Sweep(deleted, freed, failed, problem)


__all__ = ["CALL_FILE", "DAY_S", "Sweep", "sweep"]
