"""One call's records: its JSON Lines transcript, its stereo recording, and the transcript callback.

The greeting's entry waits until the greeting is over, so that it says how much the caller heard of it,
also when the caller cut in (then the model may never send its transcript.done).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sipagent.bridge.conversation import Conversation
from sipagent.bridge.settings import RecordingConfig
from sipagent.bridge.transcript import StereoRecorder, TranscriptWriter, call_file_stem
from sipagent.observability.metrics import Metrics, RecordingKind


@dataclass
class _Greeting:
    """The greeting's transcript entry, written once the greeting is over (played to its end, cut by the
    caller or a limit, or the call ended) so that it can say how much of it the caller heard."""

    text: str = ""  # the model's transcript of it, once known
    sent_all: bool = False  # the model finished it (response.done, completed): its length is known
    heard_ms: int | None = None  # None while it has not stopped playing
    total_ms: int | None = None  # its whole length; None when it was cut before the model had sent all of it
    interrupted: bool = False
    written: bool = False


class CallRecords:
    def __init__(self, call_id: str, started: datetime, origin: float, recording: RecordingConfig,
                 conversation: Conversation, greeting: str, log: logging.LoggerAdapter[logging.Logger],
                 metrics: Metrics | None = None, on_transcript: Callable[[str, str], None] | None = None) -> None:
        self.log = log
        self.metrics = metrics
        self.conversation = conversation
        self.on_transcript = on_transcript
        self.greeting_text = greeting  # what the model was told to say (the entry's text without its transcript)
        self._greeting = _Greeting() if greeting else None
        stem = call_file_stem(call_id, started)
        directory = Path(recording.dir)
        self.transcript = TranscriptWriter(directory / f"{stem}.jsonl", origin,
                                           on_error=self._file_failed("transcript")) if recording.transcripts else None
        self.recorder = StereoRecorder(directory / f"{stem}.wav",
                                       on_error=self._file_failed("audio")) if recording.audio else None

    def record(self, kind: str, **fields: Any) -> None:
        if self.transcript:
            self.transcript.write(time.monotonic(), kind, **fields)

    def started(self, call_id: str, caller: str, codec: str, profile: str, route: str,
                context: dict[str, Any]) -> None:
        """The transcript's first entry: which call, from whom, in what codec, under which profile and route."""
        self.record("call", event="start", call_id=call_id, caller=caller, codec=codec, profile=profile, route=route,
                    context=context)

    def said(self, role: str, text: str, item_id: str = "", **fields: Any) -> None:
        """A line of the conversation (``role`` "caller" or "agent"; ``item_id``, the agent's item it is the
        transcript of): kept for a reconnect's replay (only what the caller heard of it), written to the
        transcript whole (a ``barge_in`` entry with the same ``item_id`` says how much was heard) and passed
        to the transcript callback."""
        if not text.strip():
            return
        if role == "caller":
            self.conversation.caller_said(text)
        else:
            self.conversation.agent_said(text, item_id)
            if item_id:
                fields["item_id"] = item_id
        self.record(role, text=text.strip(), **fields)
        if self.on_transcript:
            self.on_transcript(role, text.strip())

    def agent_transcript(self, item_id: object, text: str) -> None:
        """The model's transcript of one of its items: written now, or, for the greeting, once it is over."""
        if not self.is_greeting(item_id):
            self.said("agent", text, item_id if isinstance(item_id, str) else "")
        elif self._greeting is not None and not self._greeting.text:
            self._greeting.text = text.strip()

    def close(self, usage: dict[str, int], outcome: str, media: dict[str, int | float | None]) -> None:
        self.write_greeting()
        self.record("usage", **usage)
        self.record("media", **media)
        self.record("call", event="end", reason=outcome)
        if self.transcript:
            self.transcript.close()
        if self.recorder:
            self.recorder.close()

    def _file_failed(self, kind: RecordingKind) -> Callable[[Path, OSError], None]:
        """What a transcript or recording writer calls, once, when its file fails: the call goes on."""

        def failed(path: Path, exc: OSError) -> None:
            self.log.warning("%s %s stopped, the call goes on without it: %s (check recording.dir: free space, "
                             "permissions)", kind, path, exc.strerror or exc)
            if self.metrics:
                self.metrics.recording_error(kind)

        return failed

    # ---------------------------------------------------------------- the greeting's entry

    def is_greeting(self, item_id: object) -> bool:
        first = self.conversation.first
        return self._greeting is not None and first is not None and first.item_id == item_id

    def greeting_done(self, response: dict[str, Any]) -> None:
        """The greeting's response ended: whether the model sent all of it, and its text as far as the model
        got (a cancelled response brings no transcript.done, only its items in response.done's output)."""
        greeting, output = self._greeting, response.get("output")
        if greeting is None or greeting.written or not isinstance(output, list):
            return
        for item in output:
            if isinstance(item, dict) and self.is_greeting(item.get("id")):
                # Its length counts only if it was all sent before it stopped playing (after a cut, the
                # deltas still in flight are dropped).
                greeting.sent_all = greeting.heard_ms is None and response.get("status") == "completed"
                content = item.get("content")
                parts = content if isinstance(content, list) else []
                greeting.text = greeting.text or " ".join(str(part.get("transcript") or "") for part in parts
                                                          if isinstance(part, dict)).strip()

    def greeting_over(self, played_ms: int, interrupted: bool | None) -> None:
        """The greeting stopped playing at ``played_ms`` (``interrupted`` None: if not all of it was heard)."""
        greeting, item = self._greeting, self.conversation.first
        if greeting is None or item is None or greeting.heard_ms is not None:
            return  # no greeting, none of it played yet, or it is over already
        greeting.heard_ms = item.heard_ms(played_ms)
        greeting.total_ms = item.queued_ms if greeting.sent_all else None
        greeting.interrupted = greeting.heard_ms != greeting.total_ms if interrupted is None else interrupted

    def write_greeting(self) -> None:
        greeting = self._greeting
        if greeting is None or greeting.written or greeting.heard_ms is None:
            return  # still playing, or none of it was ever played: nothing to write
        greeting.written = True
        # Without the model's transcript (cut before it came), what the model was told to say exactly.
        first = self.conversation.first
        self.said("agent", greeting.text or self.greeting_text, first.item_id if first is not None else "",
                  greeting=True, heard_ms=greeting.heard_ms, total_ms=greeting.total_ms,
                  interrupted=greeting.interrupted)


__all__ = ["CallRecords"]
