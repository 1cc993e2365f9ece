"""The local backend's "model": intents from the YAML config → a spoken reply and/or a tool call (pure).

Configuration (``realtime.local``)::

    response_delay_ms: 200            # emulate a remote model's thinking time
    vad: {threshold_db: -40, min_speech_ms: 200, silence_ms: 500}
    tts: {voice: en-us, rate: 165}
    greeting: "Hello, how can I help?" # said when asked to respond with nothing to respond to
    intents:
      - name: order_status
        phrases: ["where is my order", "order status"]
        reply: "Let me look that up."             # spoken first (optional)
        tool: {name: lookup_order, arguments: {order_id: "{digits}"}}   # optional
        reply_after_tool: "Your order {status}."  # optional, see below
        ask_digits:                               # optional: no digits given? ask for them on the keypad
          prompt: "Please key in your order number, then press the hash key."
          arguments: {max_digits: 8}              # collect_digits' arguments
          missing: "Sorry, I did not get a number."  # said when the entry brought no digits
          spoken_digits: true                     # false: digits heard in speech do not count, always ask
    fallback: "Sorry, I did not catch that."

Matching: the caller's words (ASR transcript or a user text item) are lower-cased and stripped of
punctuation; an intent whose phrase occurs in them wins, else the intent with the best word overlap
(at least half of a phrase's words), else the fallback.

Digits: ``{digits}`` in tool arguments is replaced by the digits the caller gave (spoken digit words or
figures, or a DTMF item such as "caller pressed 7 7 2 1 #"). If an intent needs digits the caller has
not given yet, then with ``ask_digits`` the brain speaks its ``prompt`` and calls the bridge's built-in
``collect_digits`` tool, and the digits in that tool's result (``{"digits": "7721", ...}``) fill the
intent's own tool call, which comes in the next response with the intent's ``reply``; without it, the
reply is spoken and the intent waits: the next DTMF/digit input runs its tool.

After a tool: when a ``function_call_output`` arrives and a response is asked for, the reply is, in
order of preference: the output's JSON ``message`` field; the intent's ``reply_after_tool`` formatted
with the output's JSON object fields (``{output}`` is the raw output; unknown fields stay as written);
the raw output if it is short text; else "Done.".
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sipagent.errors import ConfigError
from sipagent.realtime.local.vad import VadConfig

DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_DTMF = re.compile(r"\bpressed\b(?P<keys>[\s0-9*#,]+)", re.IGNORECASE)
COLLECT_TOOL = "collect_digits"  # the bridge's built-in keypad entry


@dataclass(frozen=True)
class AskDigits:
    """How an intent asks for missing digits on the keypad: ``prompt`` spoken with a collect_digits call."""

    prompt: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    missing: str = "Sorry, I did not get a number."
    # False: digits in the caller's speech are ignored for this intent, it always asks on the keypad. The
    # offline recogniser often mishears spoken digits (a wrong order looked up is worse than asking).
    spoken_digits: bool = True


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Intent:
    name: str
    phrases: tuple[str, ...]
    reply: str = ""
    tool: ToolCall | None = None
    reply_after_tool: str = ""
    ask_digits: AskDigits | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], key: str = "") -> Intent:
        """One entry of ``realtime.local.intents`` (``key``: its place, for errors); raises ConfigError."""
        key = key or f"realtime.local.intents.{data.get('name', '?')}"
        unknown = set(data) - {"name", "phrases", "reply", "tool", "reply_after_tool", "ask_digits"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(map(str, unknown))}", key=key)
        name = data.get("name")
        phrases = data.get("phrases")
        if not isinstance(name, str) or not name:
            raise ConfigError("each intent needs a name", key=key)
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) for p in phrases):
            raise ConfigError("phrases must be a non-empty list of strings", key=f"{key}.phrases")
        tool = None
        if data.get("tool") is not None:
            raw = data["tool"]
            if (not isinstance(raw, Mapping) or set(raw) - {"name", "arguments"} or not isinstance(raw.get("name"), str)
                    or not raw["name"]):
                raise ConfigError("tool must be {name: ..., arguments: {...}}", key=f"{key}.tool")
            args = raw.get("arguments") or {}
            if not isinstance(args, Mapping):
                raise ConfigError("tool.arguments must be a mapping", key=f"{key}.tool.arguments")
            tool = ToolCall(raw["name"], dict(args))
        reply = _text(data, "reply", key)
        if not reply and tool is None:
            raise ConfigError("an intent needs a reply, a tool, or both", key=key)
        ask = None
        if data.get("ask_digits") is not None:
            raw = data["ask_digits"]
            if (not isinstance(raw, Mapping) or set(raw) - {"prompt", "arguments", "missing", "spoken_digits"}
                    or not isinstance(raw.get("prompt"), str) or not raw["prompt"]
                    or not isinstance(raw.get("spoken_digits", True), bool)):
                raise ConfigError("ask_digits must be {prompt: ..., arguments: {...}, missing: ..., "
                                  "spoken_digits: true|false}", key=f"{key}.ask_digits")
            if tool is None or not _needs_digits(tool):
                raise ConfigError('ask_digits needs a tool with "{digits}" in its arguments', key=f"{key}.ask_digits")
            arguments = raw.get("arguments") or {}
            if not isinstance(arguments, Mapping):
                raise ConfigError("ask_digits.arguments must be a mapping", key=f"{key}.ask_digits.arguments")
            missing = _text(raw, "missing", f"{key}.ask_digits") or AskDigits("").missing
            ask = AskDigits(raw["prompt"], dict(arguments), missing, raw.get("spoken_digits", True))
        return cls(name, tuple(phrases), reply, tool, _text(data, "reply_after_tool", key), ask)


def _text(data: Mapping[str, Any], name: str, key: str) -> str:
    """The text at ``data[name]`` ("" when absent or null): a list or a number is a mistake, not a text."""
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"expected a text, got {type(value).__name__} {value!r}", key=f"{key}.{name}")
    return value


_VOICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+_./\-]{0,63}")  # espeak-ng's names: en-us, en+f3, mb/mb-en1
TTS_RATES = (80, 450)  # espeak-ng's words per minute
MAX_DELAY_MS = 10000


@dataclass(frozen=True)
class TtsConfig:
    voice: str = "en-us"
    rate: int = 165


@dataclass(frozen=True)
class LocalBrainConfig:
    intents: tuple[Intent, ...] = ()
    fallback: str = "Sorry, I did not catch that. Could you say it again?"
    response_delay_ms: int = 200
    vad: VadConfig = field(default_factory=VadConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    greeting: str = "Hello, how can I help?"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LocalBrainConfig:
        """``realtime.local``; raises ConfigError naming the key (never TypeError or ValueError): the loader
        calls it too, so that ``sipagent check`` names a mistake before the backend starts."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError("expected a mapping", key="realtime.local")
        data = dict(data or {})
        unknown = set(data) - {"intents", "fallback", "response_delay_ms", "vad", "tts", "greeting"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(map(str, unknown))}", key="realtime.local")
        intents = data.get("intents") or []
        if not isinstance(intents, list) or not all(isinstance(i, Mapping) for i in intents):
            raise ConfigError("intents must be a list of mappings", key="realtime.local.intents")
        tts = data.get("tts") or {}
        if not isinstance(tts, Mapping) or set(tts) - {"voice", "rate"}:
            raise ConfigError("tts takes voice and rate", key="realtime.local.tts")
        voice, rate = tts.get("voice", TtsConfig.voice), tts.get("rate", TtsConfig.rate)
        if not isinstance(voice, str) or not _VOICE.fullmatch(voice):  # an argument of espeak-ng: no "-x"
            raise ConfigError(f"expected an espeak-ng voice name such as en-us, got {voice!r}",
                              key="realtime.local.tts.voice")
        low, high = TTS_RATES
        if isinstance(rate, bool) or not isinstance(rate, int) or not low <= rate <= high:
            raise ConfigError(f"expected words per minute, an integer from {low} to {high}, got {rate!r}",
                              key="realtime.local.tts.rate")
        delay = data.get("response_delay_ms", 200)
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
            raise ConfigError(f"expected an integer from 0 to {MAX_DELAY_MS}, got {delay!r}",
                              key="realtime.local.response_delay_ms")
        defaults = cls()
        return cls(
            intents=tuple(Intent.from_mapping(i, f"realtime.local.intents[{n}]") for n, i in enumerate(intents)),
            fallback=_text(data, "fallback", "realtime.local") or defaults.fallback,
            response_delay_ms=delay,
            vad=VadConfig.from_mapping(data.get("vad")),
            tts=TtsConfig(voice, rate),
            greeting=_text(data, "greeting", "realtime.local") or defaults.greeting,
        )


@dataclass(frozen=True)
class Reply:
    """What the brain decided: words to speak (may be empty) and/or a tool to call."""

    text: str = ""
    tool: ToolCall | None = None
    intent: str | None = None


def normalize_words(text: str) -> list[str]:
    table = str.maketrans({c: " " for c in string.punctuation if c not in "'#*"})
    return text.lower().translate(table).split()


def extract_digits(text: str) -> str:
    """Digits given as DTMF ("pressed 7 7 2 1 #"), figures, or digit words ("seven seven two one")."""
    dtmf = _DTMF.search(text)
    if dtmf:
        return "".join(c for c in dtmf.group("keys") if c.isdigit())
    return "".join(DIGIT_WORDS.get(w, w if w.isdigit() else "") for w in normalize_words(text))


def _needs_digits(tool: ToolCall) -> bool:
    return any("{digits}" in str(v) for v in tool.arguments.values())


def _fill(template: str, values: Mapping[str, Any]) -> str:
    """str.format that leaves unknown {fields} as written instead of raising."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


class Brain:
    """One conversation's brain (keeps the intent waiting for digits and the last tool's intent)."""

    def __init__(self, config: LocalBrainConfig) -> None:
        self.config = config
        self._waiting_for_digits: Intent | None = None
        self._tool_intents: dict[str, tuple[Intent, str]] = {}  # call_id -> (intent whose tool was called, tool)

    def vocabulary(self) -> list[str]:
        """Phrases the recogniser should expect: every intent phrase plus digits."""
        return [p for intent in self.config.intents for p in intent.phrases]

    def match(self, text: str) -> Intent | None:
        words = normalize_words(text)
        joined = " " + " ".join(words) + " "
        best: tuple[float, Intent] | None = None
        for intent in self.config.intents:
            for phrase in intent.phrases:
                pwords = normalize_words(phrase)
                if not pwords:
                    continue
                if " " + " ".join(pwords) + " " in joined:
                    score = 1.0 + len(pwords) / 100.0  # longer exact phrases win ties
                else:
                    score = len(set(pwords) & set(words)) / len(set(pwords))
                if score >= 0.5 and (best is None or score > best[0]):
                    best = (score, intent)
        return best[1] if best else None

    def _tool_for(self, intent: Intent, digits: str) -> ToolCall | None:
        assert intent.tool is not None
        if _needs_digits(intent.tool) and not digits:
            return None
        args = {
            k: _fill(v, {"digits": digits}) if isinstance(v, str) else v
            for k, v in intent.tool.arguments.items()
        }
        return ToolCall(intent.tool.name, args)

    def on_user_input(self, text: str) -> Reply:
        """Reply to what the caller said or typed (a transcript or a user text item)."""
        digits = extract_digits(text)
        intent = self.match(text)
        if intent is None and digits and self._waiting_for_digits is not None:
            intent = self._waiting_for_digits
        if intent is None and digits and _DTMF.search(text):
            # Digits alone: the first intent whose tool takes digits ("look up by digits").
            intent = next((i for i in self.config.intents if i.tool is not None and _needs_digits(i.tool)), None)
        if intent is None:
            return Reply(self.config.fallback)
        self._waiting_for_digits = None
        if intent.ask_digits is not None and not intent.ask_digits.spoken_digits and not _DTMF.search(text):
            digits = ""  # heard, not keyed: not trusted for this intent
        tool = self._tool_for(intent, digits) if intent.tool is not None else None
        if intent.tool is not None and tool is None:
            # Digits still to come; keys typed as text (the bridge's "caller pressed ...") complete it too.
            self._waiting_for_digits = intent
            if intent.ask_digits is not None:
                return Reply(intent.ask_digits.prompt, ToolCall(COLLECT_TOOL, intent.ask_digits.arguments),
                             intent.name)
        return Reply(intent.reply, tool, intent.name)

    def note_tool_call(self, call_id: str, intent_name: str | None, tool_name: str = "") -> None:
        intent = next((i for i in self.config.intents if i.name == intent_name), None)
        if intent is not None:
            self._tool_intents[call_id] = (intent, tool_name)

    def on_tool_output(self, call_id: str, output: str) -> Reply:
        intent, tool_name = self._tool_intents.pop(call_id, (None, ""))
        try:
            parsed: Any = json.loads(output)
        except ValueError:
            parsed = None
        if intent is not None and intent.ask_digits is not None and tool_name == COLLECT_TOOL:
            return self._digits_collected(intent, intent.ask_digits, parsed)
        if isinstance(parsed, Mapping) and isinstance(parsed.get("message"), str):
            return Reply(parsed["message"], None, intent.name if intent else None)
        if intent is not None and intent.reply_after_tool:
            values = dict(parsed) if isinstance(parsed, Mapping) else {}
            values.setdefault("output", output)
            return Reply(_fill(intent.reply_after_tool, values), None, intent.name)
        if parsed is None and 0 < len(output) <= 200:
            return Reply(output, None, intent.name if intent else None)
        return Reply("Done.", None, intent.name if intent else None)

    def _digits_collected(self, intent: Intent, ask: AskDigits, output: Any) -> Reply:
        """collect_digits returned: the digits keyed in fill the intent's tool call (its reply said with it);
        none (a timeout, an error such as the tool not being configured) and the caller hears ``missing``,
        the intent still waiting for digits."""
        keyed = output.get("digits") if isinstance(output, Mapping) else None
        digits = "".join(c for c in keyed if c.isdigit()) if isinstance(keyed, str) else ""
        if not digits:
            return Reply(ask.missing, None, intent.name)
        self._waiting_for_digits = None
        return Reply(intent.reply, self._tool_for(intent, digits), intent.name)

    def on_instructions(self, instructions: str) -> Reply:
        """A response asked for with per-response instructions and no new input (e.g. a greeting):
        say the quoted text in them if any, else the instructions themselves."""
        quoted = re.search(r"[\"“]([^\"”]{2,})[\"”]", instructions)
        return Reply((quoted.group(1) if quoted else instructions).strip())

    def greeting(self) -> Reply:
        return Reply(self.config.greeting)
