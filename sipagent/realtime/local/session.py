"""One local Realtime session as a state machine (pure: client events in, server events and actions out).

The asyncio server feeds each client event to :meth:`LocalSession.handle` and gets back a list whose
entries are either server events (dicts, already in the client's dialect) to send, or actions to carry
out: :class:`Transcribe` (run ASR on a committed utterance, then call :meth:`LocalSession.transcribed`)
and :class:`Respond` (produce a response through a :class:`ResponseRun`). Audio work (decoding G.711,
VAD) happens here because it is plain computation; recognition, synthesis and pacing are the shell's.

States that matter: at most one response is active; a function call ends its response and waits for a
``function_call_output`` item and a ``response.create``; an event that does not fit the state
(truncating an unknown item, cancelling when nothing is active, a second response.create) gets an
``error`` event, and the session goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sipagent.media.kernel import Base64Decoder, Decoder24k, Encoder24k
from sipagent.realtime import events
from sipagent.realtime.events import Dialect, Event, SessionSettings
from sipagent.realtime.local.brain import Brain, LocalBrainConfig, Reply, ToolCall
from sipagent.realtime.local.vad import EnergyVad, SpeechStarted, SpeechStopped, VadConfig

_CODECS = {"g711_ulaw": "PCMU", "g711_alaw": "PCMA"}
MIN_COMMIT_MS = 100  # like the API: shorter buffers cannot be committed
# Bounds on what one client can make a session hold (the server caps each message at 4 MiB):
MAX_BUFFER_MS = 5 * 60 * 1000  # uncommitted input audio (14 MB); a longer server-VAD turn is cut here
MAX_ITEMS = 1024  # conversation items; past either cap the oldest go, as the API drops old context
MAX_ITEMS_BYTES = 8 << 20  # their JSON size
_APPEND = "input_audio_buffer.append"
_APPEND_HEAD, _APPEND_TAIL = events.AUDIO_APPEND_HEAD, events.AUDIO_APPEND_TAIL  # what the agent writes
# A field of the wrong JSON type fails as one of these in a handler (a number where an object was expected raises
# AttributeError on .get): the client gets an error event and the session goes on.
_BAD_FIELD = (AttributeError, KeyError, TypeError, ValueError, events.RealtimeEventError)
MAX_JSON_DEPTH = 32  # nesting of a client event (a tool's parameter schema needs about ten levels)
CLIENT_EVENTS = {
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
}


@dataclass(frozen=True)
class Transcribe:
    item_id: str
    pcm24k: bytes
    respond: bool  # server VAD with create_response: answer once transcribed


@dataclass(frozen=True)
class Respond:
    run: ResponseRun


Output = Event | Transcribe | Respond


class Ids:
    """Readable, session-unique ids (``item_<prefix>_7``); the prefix comes from the shell."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._n = 0

    def new(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self.prefix}_{self._n}"


@dataclass
class Item:
    """A conversation item in GA shape; ``audio_ms`` is the assistant audio it carries, ``size`` its JSON
    length when it was stored (what it counts against the conversation's cap)."""

    data: dict[str, Any]
    audio_ms: int = 0
    size: int = 0

    @property
    def id(self) -> str:
        return str(self.data["id"])


def item_for_dialect(data: Mapping[str, Any], dialect: Dialect) -> dict[str, Any]:
    """GA item → beta item: content part types differ (output_audio → audio, output_text → text)."""
    out = dict(data)
    if dialect == "beta" and "content" in out:
        renames = {"output_audio": "audio", "output_text": "text"}
        out["content"] = [{**p, "type": renames.get(p.get("type"), p.get("type"))} for p in out["content"]]
    return out


class LocalSession:
    def __init__(self, config: LocalBrainConfig, ids: Ids, dialect: Dialect = "ga", model: str = "") -> None:
        self.config = config
        self.ids = ids
        self.dialect: Dialect = dialect
        self.model = model
        self.settings = SessionSettings(
            instructions="",
            turn_detection={
                "type": "server_vad",
                "silence_duration_ms": config.vad.silence_ms,
                "prefix_padding_ms": config.vad.prefix_ms,
                "create_response": True,
                "interrupt_response": True,
            },
        )
        self.session_id = ids.new("sess")
        self.conversation_id = ids.new("conv")
        self.brain = Brain(config)
        self.items: OrderedDict[str, Item] = OrderedDict()
        self._items_bytes = 0
        self.vad = EnergyVad(config.vad)
        self._buffer = bytearray()  # uncommitted input audio, 24 kHz PCM16
        self._buffer_start_ms = 0  # audio position of _buffer[0]
        self._buffer_overflowed = False  # audio was dropped from _buffer since it was last emptied
        self._speech_item: str | None = None
        self._decoder: Decoder24k | None = None
        self._base64 = Base64Decoder()
        self.response: ResponseRun | None = None
        # What the next response reacts to: ("user", text) | ("tool", call_id, output) | None.
        self._pending: tuple[str, ...] | None = None

    # --- output helpers ----------------------------------------------------------------------------

    def event(self, type_: str, **fields: Any) -> Event:
        return events.to_dialect({"type": type_, "event_id": self.ids.new("event"), **fields}, self.dialect)

    def error(
        self,
        message: str,
        code: str,
        param: str | None = None,
        client_event: Mapping[str, Any] | None = None,
        kind: str = "invalid_request_error",
    ) -> Event:
        err: dict[str, Any] = {"type": kind, "code": code, "message": message, "param": param}
        if client_event is not None and isinstance(client_event.get("event_id"), str):
            err["event_id"] = client_event["event_id"]
        return self.event("error", error=err)

    def session_payload(self) -> dict[str, Any]:
        session = events.session_object(self.settings, self.dialect)
        session["id"] = self.session_id
        session["object"] = "realtime.session"
        if self.dialect == "ga" and self.model:
            session["model"] = self.model
        return session

    def created(self) -> list[Output]:
        return [self.event("session.created", session=self.session_payload())]

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items)) if self.items else None

    def store(self, item: Item) -> None:
        """Add an item to the conversation; past MAX_ITEMS or MAX_ITEMS_BYTES the oldest items go."""
        item.size = len(events.to_json(item.data))
        self.items[item.id] = item
        self._items_bytes += item.size
        while len(self.items) > 1 and (len(self.items) > MAX_ITEMS or self._items_bytes > MAX_ITEMS_BYTES):
            _, oldest = self.items.popitem(last=False)
            self._items_bytes -= oldest.size

    def _add_item(self, data: dict[str, Any], audio_ms: int = 0, done: bool = True) -> list[Output]:
        previous = self._last_item_id()
        self.store(Item(data, audio_ms))
        wire = item_for_dialect(data, self.dialect)
        out: list[Output] = [self.event("conversation.item.added", previous_item_id=previous, item=wire)]
        if done and self.dialect == "ga":
            out.append(self.event("conversation.item.done", previous_item_id=previous, item=wire))
        return out

    # --- dispatch ----------------------------------------------------------------------------------

    def handle_text(self, text: str | bytes) -> list[Output]:
        if isinstance(text, str) and text.startswith(_APPEND_HEAD) and text.endswith(_APPEND_TAIL):
            # The append as the agent writes it, every 20 ms of every call. What lies between head and tail
            # decodes as strict base64 only if it is all base64's alphabet (no quote, backslash or control
            # character), and then json.loads would give exactly {"type": APPEND, "audio": it}.
            audio = text[len(_APPEND_HEAD) : -len(_APPEND_TAIL)]
            try:
                raw = self._base64.decode(audio, strict=True)
            except (binascii.Error, ValueError):
                pass  # the full path below parses it, and says what is wrong with it
            else:
                event = {"type": _APPEND, "audio": audio}
                try:
                    return self._append(raw, event)
                except _BAD_FIELD as exc:  # as handle() answers
                    return [self._invalid(_APPEND, exc, event)]
        too_deep = f"Invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels"
        try:
            event = json.loads(text)
        except RecursionError:  # json recurses per level: 100k '[' ends here, not in the handlers
            return [self.error(too_deep, "invalid_json")]
        except (ValueError, UnicodeDecodeError) as exc:
            return [self.error(f"Invalid JSON: {exc}", "invalid_json")]
        if _brackets(text) > MAX_JSON_DEPTH and events.nested_deeper(event, MAX_JSON_DEPTH):
            return [self.error(too_deep, "invalid_json")]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [self.error("Expected a JSON object with a string 'type'", "invalid_event", "type")]
        return self.handle(event)

    def handle(self, event: dict[str, Any]) -> list[Output]:
        kind = event["type"]
        if kind not in CLIENT_EVENTS:
            return [
                self.error(
                    f"Invalid value: '{kind}' is not a supported event type", "invalid_value", "type", event
                )
            ]
        handler = getattr(self, "_on_" + kind.replace(".", "_"))
        try:
            result: list[Output] = handler(event)
        except _BAD_FIELD as exc:
            return [self._invalid(kind, exc, event)]
        return result

    def _invalid(self, kind: str, exc: Exception, event: dict[str, Any]) -> Event:
        return self.error(f"Invalid '{kind}' event: {exc}", "invalid_value", None, event)

    # --- session -----------------------------------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any]) -> list[Output]:
        session = event.get("session")
        if not isinstance(session, dict):
            return [
                self.error(
                    "Missing required parameter: 'session'", "missing_required_parameter", "session", event
                )
            ]
        self.dialect = events.session_dialect(session)
        before = self.settings.audio_format
        self.settings = events.parse_session(session, self.settings)
        if self.settings.audio_format != before:
            self._decoder = None
        self._apply_turn_detection()
        return [self.event("session.updated", session=self.session_payload())]

    def _apply_turn_detection(self) -> None:
        td = self.settings.turn_detection or {}
        base = self.config.vad
        self.vad.config = VadConfig(
            threshold_db=base.threshold_db,
            min_speech_ms=base.min_speech_ms,
            silence_ms=int(td.get("silence_duration_ms") or base.silence_ms),
            prefix_ms=int(td.get("prefix_padding_ms") or base.prefix_ms),
        )

    @property
    def server_vad(self) -> bool:
        td = self.settings.turn_detection
        return td is not None and td.get("type") in ("server_vad", "semantic_vad")

    # --- input audio -------------------------------------------------------------------------------

    def _decode_input(self, audio: bytes) -> bytes:
        codec = _CODECS.get(self.settings.audio_format)
        if codec is None:
            return audio[: len(audio) - len(audio) % 2]
        if self._decoder is None:
            self._decoder = Decoder24k(codec)
        return self._decoder.decode(audio)

    def _on_input_audio_buffer_append(self, event: dict[str, Any]) -> list[Output]:
        audio = event.get("audio")
        if not isinstance(audio, str):
            return [
                self.error(
                    "Missing required parameter: 'audio'", "missing_required_parameter", "audio", event
                )
            ]
        try:
            raw = self._base64.decode(audio, strict=True)  # in C, per 20 ms of every call
        except (binascii.Error, ValueError):
            return [self.error("Invalid 'audio': not base64", "invalid_value", "audio", event)]
        return self._append(raw, event)

    def _append(self, raw: bytes, event: dict[str, Any]) -> list[Output]:
        """An append's audio, decoded from base64 (``event`` is the append, for the errors it may cause)."""
        pcm = self._decode_input(raw)
        self._buffer += pcm
        if not self.server_vad:
            if self._trim_buffer(MAX_BUFFER_MS) and not self._buffer_overflowed:
                self._buffer_overflowed = True  # said once, not on every append after the cap
                return [self._buffer_full("its oldest audio was dropped", event)]
            return []
        out: list[Output] = []
        for vad_event in self.vad.feed(pcm):
            if isinstance(vad_event, SpeechStarted):
                out += self._speech_started(vad_event.audio_start_ms)
            elif isinstance(vad_event, SpeechStopped):
                out += self._speech_stopped(vad_event.audio_end_ms)
        if not self.vad.speaking:
            self._trim_buffer(self.vad.config.prefix_ms + 500)
        elif len(self._buffer) >= MAX_BUFFER_MS * 48:  # a turn that never pauses (noise, a stuck line)
            out.append(self._buffer_full("the turn was committed", event))
            out += self._speech_stopped(self.vad.position_ms)
        return out

    def _buffer_full(self, what_happened: str, event: dict[str, Any]) -> Event:
        return self.error(
            f"The input audio buffer reached {MAX_BUFFER_MS // 60000} minutes; {what_happened}",
            "input_audio_buffer_full", None, event,
        )

    def _trim_buffer(self, keep_ms: int) -> int:
        """Drop all but the newest ``keep_ms`` of the buffer; returns the bytes dropped."""
        keep = keep_ms * 48
        if len(self._buffer) <= keep:
            return 0
        drop = len(self._buffer) - keep
        drop -= drop % 2
        del self._buffer[:drop]
        self._buffer_start_ms += drop // 48
        return drop

    def _speech_started(self, start_ms: int) -> list[Output]:
        start = max(start_ms, self._buffer_start_ms)
        del self._buffer[: (start - self._buffer_start_ms) * 48]
        self._buffer_start_ms = start
        self._speech_item = self.ids.new("item")
        out: list[Output] = [
            self.event(
                "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self._speech_item
            )
        ]
        td = self.settings.turn_detection or {}
        if self.response is not None and td.get("interrupt_response", True):
            out += self.response.finish("cancelled", "turn_detected")
        return out

    def _speech_stopped(self, end_ms: int) -> list[Output]:
        item_id = self._speech_item or self.ids.new("item")
        out: list[Output] = [
            self.event("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        ]
        td = self.settings.turn_detection or {}
        return out + self._commit(item_id, bool(td.get("create_response", True)))

    def _on_input_audio_buffer_commit(self, event: dict[str, Any]) -> list[Output]:
        if len(self._buffer) < MIN_COMMIT_MS * 48:
            ms = len(self._buffer) // 48
            return [
                self.error(
                    f"Error committing input audio buffer: buffer too small. Expected at least "
                    f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms}ms of audio.",
                    "input_audio_buffer_commit_empty",
                    None,
                    event,
                )
            ]
        return self._commit(self._speech_item or self.ids.new("item"), False)

    def _commit(self, item_id: str, respond: bool) -> list[Output]:
        pcm = bytes(self._buffer)
        self._buffer_start_ms += len(self._buffer) // 48
        self._buffer.clear()
        self._buffer_overflowed = False
        self._speech_item = None
        self.vad.reset()
        previous = self._last_item_id()
        out: list[Output] = [
            self.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        ]
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        out += self._add_item(item, done=False)
        out.append(Transcribe(item_id, pcm, respond))
        return out

    def transcribed(self, item_id: str, transcript: str, respond: bool) -> list[Output]:
        """The shell's ASR finished: record the caller's words, answer if server VAD asked for it."""
        item = self.items.get(item_id)
        if item is None:  # deleted meanwhile
            return []
        item.data["content"] = [{"type": "input_audio", "transcript": transcript}]
        self._pending = ("user", transcript)
        out: list[Output] = []
        if self.settings.transcription_model:
            out.append(
                self.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": 0.0},
                )
            )
        if self.dialect == "ga":
            out.append(
                self.event(
                    "conversation.item.done",
                    previous_item_id=None,
                    item=item_for_dialect(item.data, self.dialect),
                )
            )
        if respond and self.response is None:
            out += self._start_response(None)
        return out

    def _on_input_audio_buffer_clear(self, event: dict[str, Any]) -> list[Output]:
        self._buffer_start_ms += len(self._buffer) // 48
        self._buffer.clear()
        self._buffer_overflowed = False
        self._speech_item = None
        self.vad.reset()
        return [self.event("input_audio_buffer.cleared")]

    def _on_output_audio_buffer_clear(self, event: dict[str, Any]) -> list[Output]:
        return [
            self.error(
                "output_audio_buffer.clear is only supported over WebRTC/SIP", "invalid_value", "type", event
            )
        ]

    # --- conversation items ------------------------------------------------------------------------

    def _on_conversation_item_create(self, event: dict[str, Any]) -> list[Output]:
        raw = event.get("item")
        if not isinstance(raw, dict):
            return [
                self.error("Missing required parameter: 'item'", "missing_required_parameter", "item", event)
            ]
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.items:
            return [
                self.error(
                    f"Conversation item with id '{previous}' not found",
                    "item_not_found",
                    "previous_item_id",
                    event,
                )
            ]
        item_id = raw.get("id") or self.ids.new("item")
        if not isinstance(item_id, str):
            return [self.error("Invalid 'item.id': expected a string", "invalid_value", "item.id", event)]
        if item_id in self.items:
            return [
                self.error(
                    f"Item with id '{item_id}' already exists", "item_already_exists", "item.id", event
                )
            ]
        kind = raw.get("type")
        data: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": kind, "status": "completed"}
        if kind == "message":
            role = raw.get("role")
            content = raw.get("content")
            if role not in ("user", "assistant", "system") or not isinstance(content, list):
                return [
                    self.error(
                        "A message item needs a role and a content list", "invalid_value", "item", event
                    )
                ]
            data.update(role=role, content=[self._ga_part(role, p) for p in content])
            if role == "user":
                text = " ".join(str(p.get("text") or p.get("transcript") or "") for p in content)
                self._pending = ("user", text)
        elif kind == "function_call_output":
            call_id, output = raw.get("call_id"), raw.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                return [
                    self.error(
                        "A function_call_output needs call_id and output strings",
                        "invalid_value",
                        "item",
                        event,
                    )
                ]
            if not any(
                i.data.get("call_id") == call_id and i.data["type"] == "function_call"
                for i in self.items.values()
            ):
                return [
                    self.error(
                        f"No function call with call_id '{call_id}'", "invalid_value", "item.call_id", event
                    )
                ]
            data.update(call_id=call_id, output=output)
            self._pending = ("tool", call_id, output)
        elif kind == "function_call":
            data.update(
                call_id=str(raw.get("call_id", "")),
                name=str(raw.get("name", "")),
                arguments=str(raw.get("arguments", "")),
            )
        else:
            return [self.error(f"Invalid item type {kind!r}", "invalid_value", "item.type", event)]
        return self._add_item(data)

    @staticmethod
    def _ga_part(role: str, part: Mapping[str, Any]) -> dict[str, Any]:
        kind = part.get("type")
        if role == "assistant" and kind in ("text", "audio"):
            kind = "output_" + str(kind)
        return {**part, "type": kind}

    def _item_of(self, event: dict[str, Any]) -> Item | list[Output]:
        """The item an event names, or the ``item_not_found`` error to send back."""
        item_id = event.get("item_id")
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            return [
                self.error(
                    f"Conversation item with id '{item_id}' not found", "item_not_found", "item_id", event
                )
            ]
        return item

    def _on_conversation_item_truncate(self, event: dict[str, Any]) -> list[Output]:
        item = self._item_of(event)
        if not isinstance(item, Item):
            return item
        item_id = event["item_id"]
        if item.data.get("role") != "assistant" or not item.audio_ms:
            return [
                self.error(
                    "Only assistant messages with audio can be truncated", "invalid_value", "item_id", event
                )
            ]
        end_ms = event.get("audio_end_ms")
        if event.get("content_index", 0) != 0 or not isinstance(end_ms, int) or end_ms < 0:
            return [
                self.error("Invalid content_index or audio_end_ms", "invalid_value", "audio_end_ms", event)
            ]
        if end_ms > item.audio_ms:
            return [
                self.error(
                    f"audio_end_ms {end_ms} is longer than the item's audio ({item.audio_ms} ms)",
                    "invalid_value",
                    "audio_end_ms",
                    event,
                )
            ]
        item.audio_ms = end_ms
        for part in item.data.get("content", []):
            if "transcript" in part:
                part["transcript"] = ""  # the API drops the text of truncated audio too
        return [
            self.event("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms)
        ]

    def _on_conversation_item_delete(self, event: dict[str, Any]) -> list[Output]:
        item = self._item_of(event)
        if not isinstance(item, Item):
            return item
        del self.items[item.id]
        self._items_bytes -= item.size
        return [self.event("conversation.item.deleted", item_id=item.id)]

    def _on_conversation_item_retrieve(self, event: dict[str, Any]) -> list[Output]:
        item = self._item_of(event)
        if not isinstance(item, Item):
            return item
        return [self.event("conversation.item.retrieved", item=item_for_dialect(item.data, self.dialect))]

    # --- responses ---------------------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any]) -> list[Output]:
        if self.response is not None:
            return [
                self.error(
                    f"Conversation already has an active response in progress: {self.response.id}",
                    "conversation_already_has_active_response",
                    None,
                    event,
                )
            ]
        params = event.get("response") or {}
        instructions = params.get("instructions") if isinstance(params, dict) else None
        return self._start_response(instructions if isinstance(instructions, str) else None)

    def _start_response(self, instructions: str | None) -> list[Output]:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == "user":
            reply = self.brain.on_user_input(pending[1])
        elif pending is not None and pending[0] == "tool":
            reply = self.brain.on_tool_output(pending[1], pending[2])
        elif instructions:
            reply = self.brain.on_instructions(instructions)
        else:
            reply = self.brain.greeting()
        run = ResponseRun(self, self.ids.new("resp"), reply)
        self.response = run
        return [self.event("response.created", response=run.payload("in_progress")), Respond(run)]

    def _on_response_cancel(self, event: dict[str, Any]) -> list[Output]:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            return [
                self.error(
                    "Cancellation failed: no active response found", "response_cancel_not_active", None, event
                )
            ]
        return self.response.finish("cancelled", "client_cancelled")


@dataclass
class ResponseRun:
    """The events of one response, produced step by step as the shell synthesises and paces audio."""

    session: LocalSession
    id: str
    reply: Reply
    output: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    _message: dict[str, Any] | None = None
    _transcript: str = ""
    _audio_ms: float = 0.0
    _encoder: Encoder24k | None = None

    @property
    def audio_format(self) -> str:
        return self.session.settings.audio_format

    def payload(self, status: str, reason: str | None = None) -> dict[str, Any]:
        s = self.session
        details = {"type": status, "reason": reason} if status == "cancelled" else None
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            "output": [item_for_dialect(i, s.dialect) for i in self.output],
            "conversation_id": s.conversation_id,
            "usage": {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0},
        }
        if s.dialect == "ga":
            body["output_modalities"] = ["audio"]
            body["audio"] = {
                "output": {
                    "format": events.session_object(s.settings, "ga")["audio"]["output"]["format"],
                    "voice": s.settings.voice,
                }
            }
        else:
            body["modalities"] = ["audio", "text"]
            body["output_audio_format"] = self.audio_format
            body["voice"] = s.settings.voice
        return body

    def _common(self) -> dict[str, Any]:
        assert self._message is not None
        return {"response_id": self.id, "item_id": self._message["id"], "output_index": len(self.output) - 1}

    def encode(self, pcm24k: bytes) -> bytes:
        """24 kHz PCM16 → the session's output format (streaming: keep one run's encoder state)."""
        codec = _CODECS.get(self.audio_format)
        if codec is None:
            return pcm24k
        if self._encoder is None:
            self._encoder = Encoder24k(codec)
        return self._encoder.encode(pcm24k)

    def start_message(self) -> list[Output]:
        s = self.session
        self._message = {
            "id": s.ids.new("item"),
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self.output.append(self._message)
        previous = s._last_item_id()
        s.store(Item(self._message))
        wire = item_for_dialect(self._message, s.dialect)
        out: list[Output] = [
            s.event(
                "response.output_item.added",
                response_id=self.id,
                output_index=len(self.output) - 1,
                item=wire,
            ),
            s.event("conversation.item.added", previous_item_id=previous, item=wire),
            s.event(
                "response.content_part.added",
                **self._common(),
                content_index=0,
                part={"type": "audio", "transcript": ""},
            ),
        ]
        return out

    def audio(self, data: bytes, transcript_delta: str = "") -> list[Output]:
        """One chunk of output audio (already in the session's format) and the words it carries."""
        s = self.session
        out: list[Output] = []
        if transcript_delta:
            self._transcript += transcript_delta
            out.append(
                s.event(
                    "response.output_audio_transcript.delta",
                    **self._common(),
                    content_index=0,
                    delta=transcript_delta,
                )
            )
        if data:
            self._audio_ms += len(data) * 1000 / events.BYTES_PER_SECOND[self.audio_format]
            item = s.items.get(self._common()["item_id"])
            if item is not None:  # the client may have deleted it (or crowded it out) meanwhile
                item.audio_ms = int(self._audio_ms)
            out.append(
                s.event(
                    "response.output_audio.delta",
                    **self._common(),
                    content_index=0,
                    delta=base64.b64encode(data).decode("ascii"),
                )
            )
        return out

    def _close_message(self, status: Literal["completed", "incomplete"]) -> list[Output]:
        s = self.session
        if self._message is None:
            return []
        common = self._common()
        self._message["status"] = status
        self._message["content"] = [{"type": "output_audio", "transcript": self._transcript}]
        wire = item_for_dialect(self._message, s.dialect)
        out: list[Output] = []
        if status == "completed":
            out += [
                s.event("response.output_audio.done", **common, content_index=0),
                s.event(
                    "response.output_audio_transcript.done",
                    **common,
                    content_index=0,
                    transcript=self._transcript,
                ),
                s.event(
                    "response.content_part.done",
                    **common,
                    content_index=0,
                    part={"type": "audio", "transcript": self._transcript},
                ),
            ]
        out.append(
            s.event(
                "response.output_item.done",
                response_id=self.id,
                output_index=common["output_index"],
                item=wire,
            )
        )
        if s.dialect == "ga":
            out.append(s.event("conversation.item.done", previous_item_id=None, item=wire))
        self._message = None
        return out

    def end_message(self) -> list[Output]:
        return self._close_message("completed")

    def function_call(self, tool: ToolCall) -> list[Output]:
        s = self.session
        call_id = s.ids.new("call")
        arguments = json.dumps(dict(tool.arguments), separators=(",", ":"))
        item: dict[str, Any] = {
            "id": s.ids.new("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": tool.name,
            "call_id": call_id,
            "arguments": "",
        }
        self.output.append(item)
        previous = s._last_item_id()
        s.store(Item(item))
        s.brain.note_tool_call(call_id, self.reply.intent, tool.name)
        index = len(self.output) - 1
        common = {"response_id": self.id, "item_id": item["id"], "output_index": index, "call_id": call_id}
        out: list[Output] = [
            s.event("response.output_item.added", response_id=self.id, output_index=index, item=dict(item)),
            s.event("conversation.item.added", previous_item_id=previous, item=dict(item)),
        ]
        step = max(1, len(arguments) // 3)
        for start in range(0, len(arguments), step):
            out.append(
                s.event(
                    "response.function_call_arguments.delta", **common, delta=arguments[start : start + step]
                )
            )
        item.update(arguments=arguments, status="completed")
        out.append(
            s.event("response.function_call_arguments.done", **common, name=tool.name, arguments=arguments)
        )
        out.append(
            s.event("response.output_item.done", response_id=self.id, output_index=index, item=dict(item))
        )
        if s.dialect == "ga":
            out.append(s.event("conversation.item.done", previous_item_id=None, item=dict(item)))
        return out

    def finish(self, status: Literal["completed", "cancelled"], reason: str | None = None) -> list[Output]:
        """End the response (idempotent): close an open message, then response.done."""
        if self.finished:
            return []
        self.finished = True
        out = self._close_message("completed" if status == "completed" else "incomplete")
        if self.session.response is self:
            self.session.response = None
        out.append(self.session.event("response.done", response=self.payload(status, reason)))
        return out


def _brackets(text: str | bytes) -> int:
    """Opening brackets in a message: a cheap bound on its depth (an audio append has one)."""
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


