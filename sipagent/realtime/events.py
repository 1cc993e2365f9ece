"""Realtime protocol events, pure: builders for what a client sends, normalisation of what a server sends.

Two dialects share one internal vocabulary. ``ga`` (the default) is the generally available protocol;
``beta`` is the preview protocol (header ``OpenAI-Beta: realtime=v1``), whose client events carry the
same type names but a flat session object, and whose server events use older names for audio and text
(``response.audio.delta`` instead of ``response.output_audio.delta``). Everything above this module
sees GA names only: server events go through :func:`normalize`.

Events are plain JSON-ready dicts; :func:`to_json` serialises them. The audio append is the one hot
event (50 per second per call), so :func:`audio_append_json` builds its JSON text directly.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sipagent.errors import RealtimeError

Dialect = Literal["ga", "beta"]
AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
Event = dict[str, Any]

DIALECTS: tuple[Dialect, ...] = ("ga", "beta")
AUDIO_FORMATS: tuple[AudioFormat, ...] = ("pcm16", "g711_ulaw", "g711_alaw")

# Bytes of audio per second on the wire for each format (24 kHz PCM16, or 8 kHz G.711).
BYTES_PER_SECOND: dict[str, int] = {"pcm16": 48000, "g711_ulaw": 8000, "g711_alaw": 8000}

_GA_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_GA_FORMAT_NAMES = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}

# Server event names that differ between the dialects (GA name -> beta name).
SERVER_GA_TO_BETA: dict[str, str] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
SERVER_BETA_TO_GA: dict[str, str] = {beta: ga for ga, beta in SERVER_GA_TO_BETA.items()}


class RealtimeEventError(RealtimeError):
    """An event is not valid Realtime protocol (bad JSON, missing type, unknown audio format)."""


@dataclass(frozen=True)
class SessionSettings:
    """What a session is configured with; rendered by :func:`session_update` in either dialect.

    ``turn_detection`` is passed through as given (``None`` turns server VAD off: the client commits).
    ``tools`` are ``{"type": "function", "name", "description", "parameters"}`` mappings.
    """

    instructions: str = ""
    voice: str = "alloy"
    turn_detection: Mapping[str, Any] | None = field(default_factory=lambda: {"type": "server_vad"})
    transcription_model: str | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    audio_format: AudioFormat = "pcm16"
    transcription_language: str | None = None  # ISO-639-1 hint for the caller's transcription ("en")

    def __post_init__(self) -> None:
        if self.audio_format not in AUDIO_FORMATS:
            raise RealtimeEventError(f"audio format {self.audio_format!r} is not one of {AUDIO_FORMATS}")


def check_dialect(dialect: str) -> Dialect:
    if dialect == "ga":
        return "ga"
    if dialect == "beta":
        return "beta"
    raise RealtimeEventError(f"dialect {dialect!r} is not one of {DIALECTS}")


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "name": str(tool["name"])}
    if tool.get("description"):
        out["description"] = str(tool["description"])
    out["parameters"] = dict(tool.get("parameters") or {"type": "object", "properties": {}})
    return out


def _transcription(settings: SessionSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"model": settings.transcription_model}
    if settings.transcription_language:
        out["language"] = settings.transcription_language
    return out


def session_object(settings: SessionSettings, dialect: Dialect) -> dict[str, Any]:
    """The ``session`` object of a session.update (client) or session.created/updated (server)."""
    tools = [_tool(t) for t in settings.tools]
    turn = dict(settings.turn_detection) if settings.turn_detection is not None else None
    if dialect == "beta":
        session: dict[str, Any] = {
            "modalities": ["audio", "text"],
            "instructions": settings.instructions,
            "voice": settings.voice,
            "input_audio_format": settings.audio_format,
            "output_audio_format": settings.audio_format,
            "turn_detection": turn,
            "tools": tools,
        }
        if settings.transcription_model:
            session["input_audio_transcription"] = _transcription(settings)
        return session
    audio_in: dict[str, Any] = {"format": dict(_GA_FORMATS[settings.audio_format]), "turn_detection": turn}
    if settings.transcription_model:
        audio_in["transcription"] = _transcription(settings)
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": settings.instructions,
        "audio": {
            "input": audio_in,
            "output": {"format": dict(_GA_FORMATS[settings.audio_format]), "voice": settings.voice},
        },
        "tools": tools,
    }


def session_update(settings: SessionSettings, dialect: Dialect = "ga") -> Event:
    return {"type": "session.update", "session": session_object(settings, dialect)}


def session_dialect(session: Mapping[str, Any]) -> Dialect:
    """Which dialect a session object is written in: GA sessions say ``"type": "realtime"``."""
    return "ga" if session.get("type") == "realtime" or "audio" in session else "beta"


def parse_session(session: Mapping[str, Any], base: SessionSettings | None = None) -> SessionSettings:
    """Read a session object of either dialect into settings; fields absent keep ``base``'s values.

    Used by the local backend on session.update, and by the bridge to see what the server acknowledged
    in session.updated (some servers ignore a G.711 request and send PCM16 anyway).
    """
    base = base or SessionSettings()
    values: dict[str, Any] = {
        "instructions": base.instructions,
        "voice": base.voice,
        "turn_detection": base.turn_detection,
        "transcription_model": base.transcription_model,
        "tools": base.tools,
        "audio_format": base.audio_format,
        "transcription_language": base.transcription_language,
    }
    if "instructions" in session:
        values["instructions"] = str(session["instructions"] or "")
    if "tools" in session:
        values["tools"] = tuple(_tool(t) for t in session["tools"] or ())
    if session_dialect(session) == "beta":
        if "voice" in session:
            values["voice"] = str(session["voice"])
        if "turn_detection" in session:
            values["turn_detection"] = session["turn_detection"]
        if "input_audio_transcription" in session:
            values["transcription_model"] = (session["input_audio_transcription"] or {}).get("model")
            values["transcription_language"] = (session["input_audio_transcription"] or {}).get("language")
        fmt = session.get("input_audio_format", session.get("output_audio_format"))
        if fmt is not None:
            values["audio_format"] = fmt
    else:
        audio_in = (session.get("audio") or {}).get("input") or {}
        audio_out = (session.get("audio") or {}).get("output") or {}
        if "voice" in audio_out:
            values["voice"] = str(audio_out["voice"])
        if "turn_detection" in audio_in:
            values["turn_detection"] = audio_in["turn_detection"]
        if "transcription" in audio_in:
            values["transcription_model"] = (audio_in["transcription"] or {}).get("model")
            values["transcription_language"] = (audio_in["transcription"] or {}).get("language")
        fmt_obj = audio_in.get("format") or audio_out.get("format")
        if fmt_obj is not None:
            name = _GA_FORMAT_NAMES.get(str(fmt_obj.get("type", "")))
            if name is None:
                raise RealtimeEventError(f"unsupported audio format {fmt_obj!r}")
            if name == "pcm16" and fmt_obj.get("rate", 24000) != 24000:
                raise RealtimeEventError("audio/pcm is only supported at 24000 Hz")
            values["audio_format"] = name
    return SessionSettings(**values)


# --- client events -----------------------------------------------------------------------------------


def audio_append(audio: bytes) -> Event:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode("ascii")}


# The append's JSON text around the base64 audio: the kernel's FrameDecoder writes it for each caller frame.
AUDIO_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
AUDIO_APPEND_TAIL = '"}'


def audio_append_json(audio: bytes) -> str:
    """The JSON text of :func:`audio_append`, built without json.dumps (base64 needs no escaping)."""
    return AUDIO_APPEND_HEAD + base64.b64encode(audio).decode("ascii") + AUDIO_APPEND_TAIL


def audio_commit() -> Event:
    return {"type": "input_audio_buffer.commit"}


def audio_clear() -> Event:
    return {"type": "input_audio_buffer.clear"}


def message_item(role: Literal["user", "assistant", "system"], text: str, dialect: Dialect = "ga") -> Event:
    """conversation.item.create of a text message; assistant messages seed a recovered conversation."""
    part_type = "input_text"
    if role == "assistant":
        part_type = "output_text" if dialect == "ga" else "text"
    item = {"type": "message", "role": role, "content": [{"type": part_type, "text": text}]}
    return {"type": "conversation.item.create", "item": item}


def user_text(text: str, dialect: Dialect = "ga") -> Event:
    return message_item("user", text, dialect)


def function_call_output(call_id: str, output: str) -> Event:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def item_truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> Event:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": content_index,
        "audio_end_ms": max(0, int(audio_end_ms)),
    }


def item_delete(item_id: str) -> Event:
    return {"type": "conversation.item.delete", "item_id": item_id}


def response_create(instructions: str | None = None, *, tools: bool = True) -> Event:
    """A response; ``tools=False`` lets it call none (``tool_choice: none``)."""
    event: Event = {"type": "response.create"}
    response: dict[str, Any] = {}
    if instructions is not None:
        response["instructions"] = instructions
    if not tools:
        response["tool_choice"] = "none"
    if response:
        event["response"] = response
    return event


def say_exactly(text: str) -> Event:
    """A response that speaks ``text`` word for word (a greeting, a hold message, a briefing). The text is a
    quoted passage of the instructions: a double quote in it (the model's summary, an operator's greeting)
    becomes a single one, so that it cannot end the passage early. It may call no tool: the text can hold the
    model's own summary of what a caller said, and words in it must not be able to act."""
    quoted = text.replace('"', "'")
    return response_create(instructions=f'Say exactly the following, and nothing else: "{quoted}"', tools=False)


def response_cancel(response_id: str | None = None) -> Event:
    event: Event = {"type": "response.cancel"}
    if response_id:
        event["response_id"] = response_id
    return event


def to_json(event: Mapping[str, Any]) -> str:
    """Compact JSON text that always encodes as UTF-8: a lone surrogate (which JSON can carry escaped, from
    a peer or a tool) is written escaped again instead of making the send fail."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = json.dumps(event, separators=(",", ":"), ensure_ascii=True)
    return text


# --- server events -----------------------------------------------------------------------------------


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than ``limit`` (iterative: the depth is the question)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse(text: str | bytes) -> Event:
    """Decode one server (or client) message; raises RealtimeEventError unless it is a typed JSON object."""
    try:
        event = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RealtimeEventError(f"not JSON: {exc}") from exc
    except RecursionError:  # nesting deeper than the interpreter's stack: hostile, never a real event
        raise RealtimeEventError("not JSON: nested too deeply") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise RealtimeEventError("not a JSON object with a string 'type'")
    return event


def normalize(event: Event) -> Event:
    """Rename a beta server event to its GA name (a shallow copy); GA and unknown events pass unchanged."""
    ga = SERVER_BETA_TO_GA.get(event["type"])
    if ga is None:
        return event
    return {**event, "type": ga}


def to_dialect(event: Event, dialect: Dialect) -> Event:
    """Rename a GA server event for a beta client (used by the local backend)."""
    if dialect == "ga":
        return event
    beta = SERVER_GA_TO_BETA.get(event["type"])
    return event if beta is None else {**event, "type": beta}


def decode_audio(event: Mapping[str, Any]) -> bytes:
    """The audio bytes of an output audio delta (or an input append)."""
    field_name = "delta" if "delta" in event else "audio"
    try:
        return base64.b64decode(event[field_name], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise RealtimeEventError(f"{event.get('type')}: invalid base64 audio") from exc
