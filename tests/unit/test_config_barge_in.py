"""agent.barge_in: defaults that meet the latency goal, and located errors for bad values."""

from __future__ import annotations

import pytest

from sipagent.config import load_config_text
from sipagent.errors import ConfigError

BASE = "realtime: {provider: local}\nagent:\n  barge_in:\n"


def error_of(body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE + body, "agent.yaml", {})
    return str(info.value)


def test_defaults_pause_on_the_first_loud_frame() -> None:
    barge = load_config_text("realtime: {provider: local}\n", "agent.yaml", {}).agent.barge_in
    assert (barge.pause_after_ms, barge.resume_after_ms, barge.min_speech_ms) == (20, 300, 200)
    barge = load_config_text(BASE + "    pause_after_ms: 0\n    resume_after_ms: 800\n", "a.yaml", {}).agent.barge_in
    assert (barge.pause_after_ms, barge.resume_after_ms) == (0, 800)


def test_bad_values_name_line_and_key() -> None:
    assert error_of("    pause_after_ms: 200\n") == (
        "agent.yaml:4: agent.barge_in.pause_after_ms: expected 0 (no pause) or 20 ms up to less than "
        "min_speech_ms (200), got 200")
    assert error_of("    pause_after_ms: 10\n").startswith("agent.yaml:4: agent.barge_in.pause_after_ms:")
    assert error_of("    mode: local\n    resume_after_ms: 0\n") == (
        "agent.yaml:5: agent.barge_in.resume_after_ms: expected 20 to 5000 ms, got 0")
    assert error_of("    min_speech_ms: 5000\n") == (
        "agent.yaml:4: agent.barge_in.min_speech_ms: expected 20 to 2000 ms, got 5000")
    assert error_of("    protect_greeting_ms: -1\n").startswith("agent.yaml:4: agent.barge_in.protect_greeting_ms:")
    assert error_of("    resume_after_ms: soon\n") == (
        'agent.yaml:4: agent.barge_in.resume_after_ms: expected an integer, got "soon"')


def test_first_stage_keys() -> None:
    barge = load_config_text("realtime: {provider: local}\n", "agent.yaml", {}).agent.barge_in
    assert (barge.stage1, barge.duck_db, barge.unduck_after_ms) == ("duck", 30.0, 40)
    barge = load_config_text(BASE + "    stage1: pause\n    duck_db: 20\n", "a.yaml", {}).agent.barge_in
    assert (barge.stage1, barge.duck_db) == ("pause", 20.0)
    assert error_of("    stage1: mute\n") == (
        'agent.yaml:4: agent.barge_in.stage1: expected one of duck, pause, got "mute"')
    assert error_of("    duck_db: 3\n") == (
        "agent.yaml:4: agent.barge_in.duck_db: expected 6 to 60 dB (how far the agent is turned down), got 3.0")
    assert error_of("    resume_after_ms: 100\n    unduck_after_ms: 200\n") == (
        "agent.yaml:5: agent.barge_in.unduck_after_ms: expected 20 ms up to resume_after_ms (100), got 200")
