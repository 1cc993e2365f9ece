"""Offline speech recognition for the local backend: pocketsphinx constrained by a JSGF grammar.

A free-form language model does poorly on phone audio; a grammar of the phrases the brain expects
(the intents' phrases, optionally followed by digits) is what makes pocketsphinx usable for a scripted
agent. Words missing from the pronunciation dictionary are dropped from the grammar.

:class:`GrammarRecognizer` is the recogniser itself (blocking, CPU-bound, and holding the GIL while it
decodes); the server uses it through :class:`RecognizerProcess`, which runs it in a child process with a
deadline per utterance, so no audio can stall the agent's process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pocketsphinx import Config, Decoder

from sipagent.errors import RealtimeError
from sipagent.media.kernel import Resampler
from sipagent.realtime.local.brain import DIGIT_WORDS, normalize_words

log = logging.getLogger(__name__)
_SAFE_WORD = re.compile(r"^[a-z][a-z']*$")


def build_grammar(phrases: Iterable[str], known: set[str] | None = None) -> str:
    """A JSGF grammar: one phrase, optionally followed by digits, or digits alone."""
    alternatives: list[str] = []
    for phrase in phrases:
        words = [w for w in normalize_words(phrase) if _SAFE_WORD.match(w) and (known is None or w in known)]
        text = " ".join(words)
        if text and text not in alternatives:
            alternatives.append(text)
    digits = sorted(w for w in DIGIT_WORDS if known is None or w in known)
    rules = ["#JSGF V1.0;", "grammar intents;", f"<digit> = {' | '.join(digits)};"]
    if alternatives:
        rules.append(f"<phrase> = {' | '.join(alternatives)};")
        rules.append("public <utterance> = <phrase> [ <digit>+ ] | <digit>+ ;")
    else:
        rules.append("public <utterance> = <digit>+ ;")
    return "\n".join(rules) + "\n"


class GrammarRecognizer:
    """Recognises one utterance (24 kHz PCM16) at a time; thread-safe by a lock."""

    def __init__(self, phrases: Iterable[str]) -> None:
        try:
            self._decoder = Decoder(Config(lm=None, loglevel="FATAL", samprate=16000))
        except RuntimeError as exc:
            raise RealtimeError(f"pocketsphinx failed to start: {exc}") from exc
        words = {w for p in phrases for w in normalize_words(p)} | set(DIGIT_WORDS)
        known = {w for w in words if self._decoder.lookup_word(w) is not None}
        self.missing = sorted(words - known)
        if self.missing:
            log.warning("ASR grammar: words not in the dictionary are ignored: %s", ", ".join(self.missing))
        self.grammar = build_grammar(phrases, known)
        self._decoder.add_jsgf_string("intents", self.grammar)
        self._decoder.activate_search("intents")
        self._lock = threading.Lock()

    def recognize(self, pcm24k: bytes) -> str:
        """The best grammar path for the utterance, or "" when nothing matched."""
        pcm16k = Resampler(24000, 16000).process(pcm24k)
        with self._lock:
            # The whole utterance in one call (full_utt): the cepstral mean is then the utterance's own. Fed in
            # pieces, pocketsphinx normalises with a running mean carried over from the utterances before: a
            # recogniser's first utterance on phone audio was often misread (digits or nothing), and the same
            # audio read differently depending on what came before it.
            self._decoder.start_utt()
            self._decoder.process_raw(pcm16k, False, True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


# --- recognition in a child process ---------------------------------------------------------------------
#
# pocketsphinx holds the GIL while it decodes, and its time grows faster than the audio on audio it cannot
# prune (a constant tone, music on hold, long speech without a pause: 20 s took ~17 s here, 35 s ~54 s, 140 s
# over 9 min). In the agent's own process that froze every call's SIP and RTP. So the decoder runs in a child
# process (``python -m sipagent.realtime.local.asr``), loaded once, fed one utterance at a time over its
# stdin and answering on its stdout; the thread that waits for it blocks in poll/read, which releases the GIL.

MAX_RECOGNIZED_S = 20.0  # of one utterance: the rest is not recognised (see recognition_deadline_s)
DEADLINE_FLOOR_S = 5.0  # a recognition may take max(DEADLINE_FLOOR_S, DEADLINE_PER_AUDIO_S × its audio)
DEADLINE_PER_AUDIO_S = 2.0
STARTUP_TIMEOUT_S = 30.0  # a new worker: interpreter, pocketsphinx and the model (~0.5 s when idle)
_BYTES_PER_S = 24000 * 2  # 24 kHz PCM16
WORKER_MODULE = "sipagent.realtime.local.asr"
_HEADER = struct.Struct("!I")  # each message: its length, then its bytes
_MAX_REPLY = 1 << 20  # a transcript or the ready message; more means the pipe carries garbage


def recognition_deadline_s(audio_s: float) -> float:
    """How long recognising ``audio_s`` seconds may take before the worker is killed.

    Measured on an idle machine: speech decodes at 0.03-0.25× real time for short utterances, but 18 s of
    speech without a pause took 15 s and 20 s of tone 16 s (the cost grows faster than the audio). 2× the
    audio leaves about twice the worst of that for a loaded machine; the floor covers start-up and scheduling
    noise, which dominate short utterances. MAX_RECOGNIZED_S = 20 s bounds what one utterance can cost (the
    worker held at most 40 s); at 30 s, tone already took 36 s and speech ~45 s. No caller speaks 20 s without
    the 0.6 s pause that ends an utterance, and the intent the grammar matches comes at its start."""
    return max(DEADLINE_FLOOR_S, DEADLINE_PER_AUDIO_S * audio_s)


class RecognizerProcess:
    """A :class:`GrammarRecognizer` in a persistent child process, so decoding never holds this
    process's GIL.

    ``start``, ``recognize`` and ``close`` block: the server calls them in threads (recognitions in one
    thread of their own). One utterance at a time, as the decoder takes them. A recognition past its
    deadline kills the worker and reads as ""; so does a worker that dies under it. A worker that is gone
    (killed, crashed) is started again by the next recognition."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases = list(phrases)
        self.grammar = ""
        self.missing: list[str] = []  # words of the phrases the dictionary lacks, dropped from the grammar
        self._lock = threading.Lock()  # one recognition (or start) at a time
        self._state = threading.Lock()  # _proc and _closed, between a recognition's thread and close()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running worker's process id (None when there is none)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the worker and load the model; RealtimeError if it cannot (as GrammarRecognizer raises)."""
        with self._lock:
            self._running()
        if self.missing:
            log.warning("ASR grammar: words not in the dictionary are ignored: %s", ", ".join(self.missing))

    def recognize(self, pcm24k: bytes) -> str:
        """The best grammar path for the first MAX_RECOGNIZED_S of the utterance (24 kHz PCM16), or ""."""
        audio_s = len(pcm24k) / _BYTES_PER_S
        limit = int(MAX_RECOGNIZED_S * _BYTES_PER_S) & ~1
        if len(pcm24k) > limit:
            log.info("local ASR: recognising the first %.0f s of a %.1f s utterance", MAX_RECOGNIZED_S, audio_s)
            pcm24k = pcm24k[:limit]
        with self._lock:
            try:
                proc = self._running()
            except RealtimeError as exc:
                if self._closed:  # the backend is stopping
                    return ""
                log.error("local ASR: no recogniser for a %.1f s utterance, which reads as empty: %s", audio_s, exc)
                return ""
            deadline_s = recognition_deadline_s(len(pcm24k) / _BYTES_PER_S)
            try:
                reply = _exchange(proc, pcm24k, time.monotonic() + deadline_s)
            except TimeoutError:
                log.warning("local ASR: recognising a %.1f s utterance took over %.0f s: the recogniser was "
                            "restarted and the utterance reads as empty", audio_s, deadline_s)
                self._stop(proc)
                return ""
            except (OSError, EOFError, ValueError) as exc:
                if not self._closed:
                    log.warning("local ASR: the recogniser failed on a %.1f s utterance (%s, exit code %s); "
                                "it reads as empty, and the recogniser restarts for the next one",
                                audio_s, str(exc) or type(exc).__name__, proc.poll())
                self._stop(proc)
                return ""
        return reply.decode("utf-8", "replace")

    def close(self) -> None:
        """Stop the worker (killed: it holds nothing worth a goodbye) and wait for it; a recognition under
        way reads as "". Later recognitions read as "" too."""
        with self._state:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill(proc)
        # Its pipes are closed by whoever holds the lock: a recognition under way still polls them (closed
        # here, their numbers could be reused by another file under it); it closes them as it fails.
        if self._lock.acquire(blocking=False):
            try:
                _close_pipes(proc)
            finally:
                self._lock.release()

    def _running(self) -> subprocess.Popen[bytes]:
        """The worker, started (and its model loaded) if there is none or it has exited; with self._lock held."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            log.warning("local ASR: the recogniser had exited (code %s); starting it again", proc.returncode)
            self._stop(proc)
        with self._state:  # close() sees either no worker or this one: none is left behind
            if self._closed:
                raise RealtimeError("the recogniser is closed")
            proc = self._proc = _spawn()
        try:
            _write_all(proc, _frame(json.dumps({"phrases": self.phrases}).encode()), time.monotonic() + 5)
            ready = json.loads(_read_frame(proc, time.monotonic() + STARTUP_TIMEOUT_S))
        except (OSError, EOFError, ValueError) as exc:  # TimeoutError is an OSError
            self._stop(proc)
            raise RealtimeError(f"the speech recogniser did not start: {str(exc) or type(exc).__name__}") from exc
        if "error" in ready:
            self._stop(proc)
            raise RealtimeError(str(ready["error"]))
        self.grammar, self.missing = str(ready["grammar"]), list(ready["missing"])
        return proc

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the worker and close its pipes; with self._lock held (nobody else uses them)."""
        with self._state:
            if self._proc is proc:
                self._proc = None
        _kill(proc)
        _close_pipes(proc)


def _spawn() -> subprocess.Popen[bytes]:
    # The worker imports sipagent as this process did, wherever its working directory is.
    root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if not sys.executable:
        raise RealtimeError("no Python interpreter to run the speech recogniser with")
    try:
        proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
    except OSError as exc:
        raise RealtimeError(f"the speech recogniser could not be started: {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None
    os.set_blocking(proc.stdin.fileno(), False)  # writes wait in poll(), under the deadline
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()  # reaped: no zombie, and its pid is not reused under us


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _exchange(proc: subprocess.Popen[bytes], pcm24k: bytes, deadline: float) -> bytes:
    _write_all(proc, _frame(pcm24k), deadline)
    return _read_frame(proc, deadline)


def _wait(fd: int, event: int, deadline: float) -> None:
    """Block (without the GIL) until ``fd`` is ready for ``event`` or has closed; TimeoutError at ``deadline``."""
    poller = select.poll()
    poller.register(fd, event)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed")
        if poller.poll(math.ceil(remaining * 1000)):
            return


def _write_all(proc: subprocess.Popen[bytes], data: bytes, deadline: float) -> None:
    assert proc.stdin is not None
    fd, view = proc.stdin.fileno(), memoryview(data)
    while view:
        _wait(fd, select.POLLOUT, deadline)
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _read_frame(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > _MAX_REPLY:
        raise ValueError(f"a reply of {size} bytes")
    return _read_exact(fd, size, deadline)


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    """``size`` bytes from ``fd``; EOFError if it closes first. Without a deadline, blocks as long as it takes."""
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            _wait(fd, select.POLLIN, deadline)
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the recogniser closed its output")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _worker_main() -> int:
    """The worker: a ready message (the grammar, or the error that kept it from loading), then one
    transcript per utterance, until its input closes (the parent stopped, or died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the terminal's process group: the parent stops us
    replies = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the replies
    logging.basicConfig(level=logging.ERROR)  # the parent logs what matters (the missing words, from the ready)

    def reply(payload: bytes) -> None:
        data = memoryview(_frame(payload))
        while data:
            data = data[os.write(replies, data):]

    def request() -> bytes | None:
        try:
            (size,) = _HEADER.unpack(_read_exact(0, _HEADER.size, None))
            return _read_exact(0, size, None)
        except EOFError:
            return None

    setup = request()
    if setup is None:
        return 0
    try:
        recognizer = GrammarRecognizer(json.loads(setup)["phrases"])
    except Exception as exc:  # told to the parent, which raises it as start()'s RealtimeError
        with contextlib.suppress(BrokenPipeError):
            reply(json.dumps({"error": str(exc) or type(exc).__name__}).encode())
        return 1
    try:
        reply(json.dumps({"grammar": recognizer.grammar, "missing": recognizer.missing}).encode())
        while (pcm := request()) is not None:
            reply(recognizer.recognize(pcm).encode())
    except BrokenPipeError:  # the parent is gone
        pass
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
