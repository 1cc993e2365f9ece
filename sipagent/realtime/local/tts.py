"""Offline speech synthesis for the local backend: espeak-ng, run as a separate program.

espeak-ng is GPL-3.0; running it as a subprocess keeps it out of our process and licence. It only
writes 22050 Hz WAV. sox resamples that to 16 kHz, and the kernel's resampler takes 16 kHz to 24 kHz:
the kernel only converts between 8/16/24 kHz, and 22050 → 24000 is a fractional ratio it does not do.
Band-limiting to 8 kHz on the way loses nothing a caller can hear (the widest codec on the line is
G.722, 7 kHz), and the extra stage is off the real-time path because phrases are synthesised once and
cached.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections import OrderedDict

from sipagent.errors import RealtimeError
from sipagent.media.kernel import Resampler

log = logging.getLogger(__name__)


class TtsError(RealtimeError):
    """espeak-ng or sox is missing or failed."""


class Synthesizer:
    """Text → 24 kHz PCM16 mono, with an LRU cache of recent phrases (thread-safe)."""

    def __init__(
        self, voice: str = "en-us", rate: int = 165, cache_size: int = 64, timeout_s: float = 20.0
    ) -> None:
        self.voice = voice
        self.rate = rate
        self.timeout_s = timeout_s
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        for program in ("espeak-ng", "sox"):
            if shutil.which(program) is None:
                raise TtsError(f"{program} is not installed (apt-get install espeak-ng sox)")

    def synthesize(self, text: str) -> bytes:
        text = " ".join(text.split())
        if not text:
            return b""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        pcm = Resampler(16000, 24000).process(self._pcm16k(text))
        with self._lock:
            self._cache[text] = pcm
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pcm

    def _pcm16k(self, text: str) -> bytes:
        # "--" ends options, so text starting with "-" is spoken, not parsed as a flag.
        espeak = ["espeak-ng", "--stdout", "-v", self.voice, "-s", str(self.rate), "--", text]
        sox = [
            "sox",
            "-q",
            "-R",  # dither with a fixed seed: the same text gives the same samples (reproducible calls)
            "-t",
            "wav",
            "-",
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-L",
            "-t",
            "raw",
            "-",
        ]
        try:
            wav = subprocess.run(espeak, capture_output=True, check=True, timeout=self.timeout_s).stdout
            raw = subprocess.run(
                sox, input=wav, capture_output=True, check=True, timeout=self.timeout_s
            ).stdout
        except subprocess.CalledProcessError as exc:
            raise TtsError(f"{exc.cmd[0]} failed: {exc.stderr.decode(errors='replace').strip()}") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TtsError(f"speech synthesis failed: {exc}") from exc
        return raw[: len(raw) - len(raw) % 2]
