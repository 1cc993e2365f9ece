"""The local backend's brain (intents, digits, tool outputs), its VAD, and its config parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sipagent.errors import ConfigError
from sipagent.realtime.local.asr import build_grammar
from sipagent.realtime.local.brain import Brain, LocalBrainConfig, ToolCall, extract_digits
from sipagent.realtime.local.vad import EnergyVad, SpeechStarted, SpeechStopped, VadConfig

YAML_SECTION = {
    "response_delay_ms": 200,
    "vad": {"threshold_db": -40, "min_speech_ms": 200, "silence_ms": 500},
    "tts": {"voice": "en-us", "rate": 165},
    "intents": [
        {
            "name": "order_status",
            "phrases": ["where is my order", "order status", "track my order"],
            "reply": "Let me look that up.",
            "tool": {"name": "lookup_order", "arguments": {"order_id": "7721"}},
        },
        {
            "name": "by_digits",
            "phrases": ["check an order"],
            "reply": "Sure.",
            "tool": {"name": "lookup_order", "arguments": {"order_id": "{digits}"}},
            "reply_after_tool": "It is {status}.",
        },
        {"name": "human", "phrases": ["talk to a human"], "tool": {"name": "transfer_call"}},
    ],
    "fallback": "Sorry, I did not catch that. Could you say it again?",
}


def test_config_from_the_yaml_section() -> None:
    cfg = LocalBrainConfig.from_mapping(YAML_SECTION)
    assert cfg.response_delay_ms == 200 and cfg.vad.silence_ms == 500 and cfg.tts.rate == 165
    assert cfg.intents[0].tool == ToolCall("lookup_order", {"order_id": "7721"})
    assert cfg.intents[2].reply == "" and cfg.intents[2].tool == ToolCall("transfer_call", {})


@pytest.mark.parametrize(
    "bad",
    [
        {"intents": [{"name": "x", "phrases": []}]},
        {"intents": [{"name": "x", "phrases": ["a"]}]},  # neither reply nor tool
        {"intents": [{"name": "x", "phrases": ["a"], "reply": "r", "colour": 1}]},
        {"response_delay_ms": -1},
        {"vad": {"threshold": 3}},
        {"what": 1},
    ],
)
def test_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        LocalBrainConfig.from_mapping(bad)


def test_intent_matching_and_fallback() -> None:
    brain = Brain(LocalBrainConfig.from_mapping(YAML_SECTION))
    reply = brain.on_user_input("Hi, where is my order?")
    assert reply.intent == "order_status" and reply.text == "Let me look that up."
    assert reply.tool == ToolCall("lookup_order", {"order_id": "7721"})
    assert brain.on_user_input("could I talk to a human please").tool == ToolCall("transfer_call", {})
    assert brain.on_user_input("my order status").intent == "order_status"  # partial overlap
    fallback = brain.on_user_input("the weather is nice")
    assert fallback.intent is None and fallback.text.startswith("Sorry")


def test_digits_from_speech_and_dtmf() -> None:
    assert extract_digits("caller pressed 7 7 2 1 #") == "7721"
    assert extract_digits("order seven seven two one") == "7721"
    assert extract_digits("order 42") == "42"
    brain = Brain(LocalBrainConfig.from_mapping(YAML_SECTION))
    assert brain.on_user_input("check an order nine one").tool == ToolCall("lookup_order", {"order_id": "91"})
    waiting = brain.on_user_input("check an order")
    assert waiting.tool is None and waiting.text == "Sure."
    assert brain.on_user_input("caller pressed 5 5 #").tool == ToolCall("lookup_order", {"order_id": "55"})
    # DTMF alone picks the intent that looks up by digits.
    assert Brain(brain.config).on_user_input("caller pressed 1 2").intent == "by_digits"


def test_reply_after_tool_output() -> None:
    brain = Brain(LocalBrainConfig.from_mapping(YAML_SECTION))
    brain.note_tool_call("c1", "by_digits")
    assert brain.on_tool_output("c1", json.dumps({"status": "shipped"})).text == "It is shipped."
    brain.note_tool_call("c2", "by_digits")
    assert (
        brain.on_tool_output("c2", json.dumps({"message": "Out for delivery."})).text == "Out for delivery."
    )
    assert brain.on_tool_output("c3", "transferred").text == "transferred"
    assert brain.on_tool_output("c4", json.dumps({"a": [1] * 100})).text == "Done."
    brain.note_tool_call("c5", "by_digits")
    assert brain.on_tool_output("c5", json.dumps({"other": 1})).text == "It is {status}."


def test_instructions_and_greeting() -> None:
    brain = Brain(LocalBrainConfig())
    assert (
        brain.on_instructions('Greet the caller with "Thanks for calling!" and wait.').text
        == "Thanks for calling!"
    )
    assert brain.on_instructions("Say hello.").text == "Say hello."
    assert brain.greeting().text == LocalBrainConfig().greeting


def test_grammar_has_phrases_and_digits() -> None:
    grammar = build_grammar(
        ["Where is my order?", "talk to a human", "xyzzy words"],
        known={"where", "is", "my", "order", "talk", "to", "a", "human", "one", "two"},
    )
    assert "where is my order | talk to a human" in grammar
    assert "<digit> = one | two;" in grammar and "xyzzy" not in grammar


def tone(ms: int, db: float) -> bytes:
    n = 24 * ms
    amp = 32767 * 10 ** (db / 20) * np.sqrt(2)
    return (amp * np.sin(2 * np.pi * 440 * np.arange(n) / 24000)).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return b"\x00\x00" * 24 * ms


def test_vad_start_stop_positions_and_hangover() -> None:
    vad = EnergyVad(VadConfig(threshold_db=-40, min_speech_ms=200, silence_ms=500, prefix_ms=100))
    audio = silence(1000) + tone(400, -20) + silence(300) + tone(400, -20) + silence(600)
    got = []
    for start in range(0, len(audio), 960):  # 20 ms pieces
        got += vad.feed(audio[start : start + 960])
    assert got == [SpeechStarted(900), SpeechStopped(900, 2100)]  # the 300 ms pause stays inside the turn


def test_vad_ignores_short_and_quiet_sounds() -> None:
    vad = EnergyVad(VadConfig(threshold_db=-40, min_speech_ms=200, silence_ms=500))
    assert vad.feed(silence(500) + tone(100, -10) + silence(800) + tone(1000, -55) + silence(500)) == []
    assert vad.position_ms == 2900 and not vad.speaking


KEYPAD_INTENT = {
    "name": "keyed_order",
    "phrases": ["where is my parcel"],
    "reply": "Let me check that order.",
    "tool": {"name": "lookup_order", "arguments": {"order_id": "{digits}"}},
    "ask_digits": {"prompt": "Please key in your order number, then press hash.", "arguments": {"max_digits": 8}},
}


def test_missing_digits_are_asked_for_on_the_keypad() -> None:
    """No digits spoken: the prompt with a collect_digits call; its result fills the intent's own tool."""
    brain = Brain(LocalBrainConfig.from_mapping({"intents": [KEYPAD_INTENT]}))
    ask = brain.on_user_input("where is my parcel")
    assert ask.text == "Please key in your order number, then press hash."
    assert ask.tool == ToolCall("collect_digits", {"max_digits": 8})
    brain.note_tool_call("c1", ask.intent, "collect_digits")
    done = brain.on_tool_output("c1", json.dumps({"digits": "1234", "ended_by": "terminator", "count": 4}))
    assert done.text == "Let me check that order." and done.tool == ToolCall("lookup_order", {"order_id": "1234"})
    # Digits spoken with the question skip the keypad.
    spoken = brain.on_user_input("where is my parcel seven seven two one")
    assert spoken.tool == ToolCall("lookup_order", {"order_id": "7721"})


def test_an_entry_without_digits_says_so_and_waits() -> None:
    brain = Brain(LocalBrainConfig.from_mapping({"intents": [KEYPAD_INTENT]}))
    brain.note_tool_call("c1", brain.on_user_input("where is my parcel").intent, "collect_digits")
    missed = brain.on_tool_output("c1", json.dumps({"digits": "", "ended_by": "timeout", "count": 0}))
    assert missed.text == "Sorry, I did not get a number." and missed.tool is None
    brain.note_tool_call("c2", "keyed_order", "collect_digits")
    assert brain.on_tool_output("c2", json.dumps({"error": "unknown tool collect_digits"})).tool is None
    # Still waiting: keys passed as text complete it.
    assert brain.on_user_input("caller pressed 5 5 #").tool == ToolCall("lookup_order", {"order_id": "55"})


@pytest.mark.parametrize(
    "ask",
    [{"arguments": {}}, {"prompt": ""}, {"prompt": "Key it in.", "colour": 1}, {"prompt": "x", "arguments": [1]}],
)
def test_ask_digits_config_errors(ask: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        LocalBrainConfig.from_mapping({"intents": [{**KEYPAD_INTENT, "ask_digits": ask}]})
    with pytest.raises(ConfigError, match="needs a tool"):  # nothing to fill
        LocalBrainConfig.from_mapping({"intents": [{"name": "x", "phrases": ["a"], "reply": "r",
                                                    "ask_digits": {"prompt": "Key it in."}}]})


def test_an_intent_may_take_keyed_digits_only() -> None:
    intent = {**KEYPAD_INTENT, "ask_digits": {"prompt": "Key it in.", "spoken_digits": False}}
    brain = Brain(LocalBrainConfig.from_mapping({"intents": [intent]}))
    heard = brain.on_user_input("where is my parcel two two two one eight")  # misheard digits: ignored
    assert heard.tool == ToolCall("collect_digits", {}) and heard.text == "Key it in."
    assert brain.on_user_input("caller pressed 7 7 2 1 #").tool == ToolCall("lookup_order", {"order_id": "7721"})
