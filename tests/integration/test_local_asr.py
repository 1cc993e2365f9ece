"""The local backend's recogniser on phone-line speech: a phrase reads the same whether it is the
recogniser's first utterance or comes after others (pocketsphinx keeps no cepstral mean across them)."""

from __future__ import annotations

import shutil

import pytest
from bridge_helpers import tts

from sipagent.media.kernel import Resampler, ulaw_decode, ulaw_encode
from sipagent.realtime.local.asr import GrammarRecognizer

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                reason="needs espeak-ng and sox")

# Each phrase, and words its reading must hold (the grammar recogniser may drop a phrase's last words).
PHRASES = {
    "Hello, this is the virtual assistant with a caller for sales. The caller would like a refund for a tent.":
        "virtual assistant with a caller for sales",
    "Hello and thank you for calling the outdoor store. How can I help you today?": "outdoor store",
    "You can return any item within thirty days.": "thirty days",
    "Let me check that order for you.": "check that order",
}


def phone_line(text: str) -> bytes:
    """``text`` spoken, through an 8 kHz μ-law line and back to 24 kHz PCM16, as the backend hears a call."""
    pcm8k = Resampler(24000, 8000).process(tts().synthesize(text))
    return Resampler(8000, 24000).process(ulaw_decode(ulaw_encode(pcm8k)))


@pytest.mark.parametrize("first", list(PHRASES))
def test_a_phrase_reads_the_same_as_the_first_utterance_and_after_the_others(first: str) -> None:
    recognizer = GrammarRecognizer(PHRASES)
    order = [first, *(p for p in PHRASES if p != first), first]
    readings = [recognizer.recognize(phone_line(phrase)) for phrase in order]
    assert readings[0] == readings[-1], readings  # the same audio, before and after the others
    for phrase, reading in zip(order, readings, strict=True):
        assert PHRASES[phrase] in reading, readings
