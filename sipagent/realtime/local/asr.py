"""Offline speech recognition for the local backend: pocketsphinx constrained by a JSGF grammar.

A free-form language model does poorly on phone audio; a grammar of the phrases the brain expects
(the intents' phrases, optionally followed by digits) is what makes pocketsphinx usable for a scripted
agent. Words missing from the pronunciation dictionary are dropped from the grammar. Blocking and
CPU-bound: the server runs :meth:`GrammarRecognizer.recognize` in a worker thread.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

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
        missing = sorted(words - known)
        if missing:
            log.warning("ASR grammar: words not in the dictionary are ignored: %s", ", ".join(missing))
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
