"""Answering-machine detection on the first seconds of an outbound call: person, machine, or no idea.

Sans-I/O: fed the called party's audio (PCM16 little-endian, 8 or 16 kHz, one 20 ms frame at a time)
with the time since the answer; returns events. The rules are the ones a listener uses:

- a person answers with a short greeting ("Hello?", under ``human_greeting_max_s``) and then waits:
  ``after_greeting_silence_s`` of silence after it means **human**;
- a machine talks on: a greeting that goes on past ``greeting_max_s`` (pauses shorter than
  ``after_greeting_silence_s`` do not end it) means **machine**; so does a **beep**, a steady pure tone
  between 400 and 2000 Hz lasting ``beep_min_s`` (a voice is many harmonics that drift, never one steady
  partial holding the energy);
- nothing decided by ``timeout_s`` (a silent answer, music): **unknown**, which the agent treats as a person.

After a machine verdict it goes on listening for when to leave a message: at the end of the beep, or,
when none comes, after ``message_silence_s`` of silence following the greeting (at the latest
``message_wait_max_s`` after the answer).

A frame is "voice" when louder than ``speech_db``; the tone test is one FFT of the frame (50 Hz bins at
both rates): the share of the energy in the strongest peak's main lobe, and that peak's frequency and
level holding still from frame to frame. It runs only for the first seconds of outbound calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sipagent.media.vad import level_db

AmdKind = Literal["human", "machine", "unknown", "beep", "message"]
Verdict = Literal["pending", "human", "machine", "unknown"]


@dataclass(frozen=True)
class AmdSettings:
    greeting_max_s: float = 3.5
    beep: bool = True
    timeout_s: float = 6.0
    human_greeting_max_s: float = 1.5
    after_greeting_silence_s: float = 0.8
    speech_db: float = -40.0  # dBFS; line noise and comfort noise sit well below
    beep_min_s: float = 0.15
    beep_low_hz: float = 400.0
    beep_high_hz: float = 2000.0
    tone_purity: float = 0.85  # share of the frame's energy in the peak's main lobe
    tone_drift_hz: float = 30.0  # how far a beep's frequency may wander from its first frame
    tone_drift_db: float = 6.0
    message_silence_s: float = 1.5  # machine, no beep: this much silence after the greeting, then speak
    message_wait_max_s: float = 30.0


@dataclass(frozen=True)
class AmdEvent:
    """``at``: seconds after the answer (a beep: when it started; the rest: the frame that decided it)."""

    kind: AmdKind
    at: float
    reason: str = ""


@dataclass(frozen=True)
class _Tone:
    hz: float
    db: float


class AnsweringMachineDetector:
    """Feed every frame of the called party's audio from the answer on; act on the events it returns."""

    def __init__(self, settings: AmdSettings | None = None, sample_rate: int = 8000) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError(f"sample rate {sample_rate}: expected 8000 or 16000")
        self.settings = settings or AmdSettings()
        self.sample_rate = sample_rate
        self.verdict: Verdict = "pending"
        self.beep_at: float | None = None  # when the beep started
        self.message_at: float | None = None  # when the message may start (machine only)
        self._greeting_start: float | None = None
        self._last_voice: float | None = None
        self._silence_s = 0.0  # quiet, non-tonal time since the last voice frame
        self._tone: _Tone | None = None  # the first frame of the tone in progress
        self._tone_start = 0.0
        self._tone_s = 0.0

    @property
    def done(self) -> bool:
        """Nothing more will come: a person, no verdict, or a machine whose message moment was given."""
        return self.verdict in ("human", "unknown") or self.message_at is not None

    def feed(self, pcm: bytes, at: float) -> list[AmdEvent]:
        """One frame, ``at`` seconds after the answer at its end; the events it caused (often none)."""
        if self.done or len(pcm) < 4:
            return []
        s = self.settings
        frame_s = len(pcm) / 2 / self.sample_rate
        events: list[AmdEvent] = []
        level = level_db(pcm[: len(pcm) & ~1])
        tone = self._tone_of(pcm, level) if s.beep and level > s.speech_db else None
        events += self._track_tone(tone, at, frame_s)
        if tone is None and self._tone_s == 0.0:
            if level > s.speech_db:
                if self._greeting_start is None:
                    self._greeting_start = at - frame_s
                self._last_voice = at
                self._silence_s = 0.0
            else:
                self._silence_s += frame_s
        if self.verdict == "pending":
            events += self._decide(at)
        if self.verdict == "machine" and self.message_at is None and self.beep_at is None:
            heard_greeting = self._last_voice is not None and self._silence_s >= s.message_silence_s
            if heard_greeting or at >= s.message_wait_max_s:
                why = "silence after the greeting" if heard_greeting else "waited long enough"
                events.append(self._message(at, why))
        return events

    # -- the decision ------------------------------------------------------------------------------------
    def _decide(self, at: float) -> list[AmdEvent]:
        s = self.settings
        if self._greeting_start is not None and self._last_voice is not None:
            greeting = self._last_voice - self._greeting_start
            if greeting > s.greeting_max_s:
                return self._verdict("machine", at, f"greeting longer than {s.greeting_max_s:g} s")
            if greeting <= s.human_greeting_max_s and self._silence_s >= s.after_greeting_silence_s:
                return self._verdict("human", at, f"{greeting:.1f} s greeting, then silence")
            if self._silence_s >= 2 * s.after_greeting_silence_s:  # a longer greeting, then waiting: a person
                return self._verdict("human", at, f"{greeting:.1f} s greeting, then a long silence")
        if at >= s.timeout_s:
            return self._verdict("unknown", at, f"no verdict within {s.timeout_s:g} s")
        return []

    def _verdict(self, verdict: Literal["human", "machine", "unknown"], at: float, reason: str) -> list[AmdEvent]:
        self.verdict = verdict
        return [AmdEvent(verdict, at, reason)]

    def _message(self, at: float, reason: str) -> AmdEvent:
        self.message_at = at
        return AmdEvent("message", at, reason)

    # -- the beep --------------------------------------------------------------------------------------
    def _track_tone(self, tone: _Tone | None, at: float, frame_s: float) -> list[AmdEvent]:
        """Follows the tone in progress: a frame that goes on with it (same pitch and level) lengthens it;
        any other frame ends it, and the end of the beep is when the message may start."""
        s = self.settings
        first = self._tone
        if tone is not None and first is not None and abs(tone.hz - first.hz) <= s.tone_drift_hz \
                and abs(tone.db - first.db) <= s.tone_drift_db:
            self._tone_s += frame_s
        else:
            was_beep = first is not None and self.beep_at is not None and self._tone_s >= s.beep_min_s - 1e-9
            self._tone, self._tone_start, self._tone_s = tone, at - frame_s, frame_s if tone is not None else 0.0
            if was_beep and first is not None:
                return [self._message(at - frame_s, f"after the beep at {first.hz:.0f} Hz")]
            return []
        if self.beep_at is not None or self._tone_s < s.beep_min_s - 1e-9:
            return []
        self.beep_at = self._tone_start
        beep = AmdEvent("beep", self._tone_start, f"{first.hz:.0f} Hz tone")
        if self.verdict == "pending":
            return [*self._verdict("machine", at, "beep"), beep]
        return [beep]

    def _tone_of(self, pcm: bytes, level: float) -> _Tone | None:
        """The frame's tone, if it is one: a peak in the beep band holding ``tone_purity`` of the energy."""
        s = self.settings
        x = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float64)
        x -= x.mean()
        power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
        bin_hz = self.sample_rate / len(x)
        power[: int(100 / bin_hz) + 1] = 0.0  # DC and hum are not part of a beep
        total = float(power.sum())
        if total <= 0.0:
            return None
        low, high = int(s.beep_low_hz / bin_hz), int(np.ceil(s.beep_high_hz / bin_hz))
        k = low + int(np.argmax(power[low : high + 1]))
        lobe = float(power[max(k - 2, 0) : k + 3].sum())
        if lobe / total < s.tone_purity:
            return None
        # Where the peak really is, between bins: a parabola through the log powers around it.
        a, b, c = (float(np.log(power[i] + 1e-12)) for i in (k - 1, k, k + 1))
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
        hz = (k + max(-0.5, min(0.5, offset))) * bin_hz
        if not s.beep_low_hz <= hz <= s.beep_high_hz:
            return None
        return _Tone(hz, level)
