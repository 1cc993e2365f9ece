"""Hostile or broken files: every one is refused with a ConfigError naming file, line and key, never a
traceback, a hang or a value that loads and misbehaves later (found by fuzzing the loader)."""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sipagent.bridge.hold_audio import load_hold_wav
from sipagent.bridge.limits import CallLimits
from sipagent.bridge.settings import AgentConfig
from sipagent.bridge.state import CallState
from sipagent.bridge.webhook import RequestRefused, prepare
from sipagent.config import load_config_text
from sipagent.errors import ConfigError
from sipagent.realtime.local.brain import LocalBrainConfig

LOCAL = "realtime: {provider: local}\n"


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", {})
    return info.value


def message_of(text: str) -> str:
    return str(error_of(text))


# --- numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("section, key", [
    ("agent", "idle_timeout_s"), ("agent", "max_call_s"), ("media", "rtp_timeout_s"),
    ("realtime", "connect_timeout_s"), ("outbound", "ring_timeout_s"),
])
@pytest.mark.parametrize("value", ["nan", ".nan", ".inf", "-.inf", "1e400", "infinity"])
def test_no_float_key_takes_nan_or_infinity(section: str, key: str, value: str) -> None:
    text = LOCAL + f"{section}:\n  {key}: {value}\n"
    if section == "realtime":
        text = f"realtime:\n  provider: local\n  {key}: {value}\n"
    assert message_of(text) == f'agent.yaml:3: {section}.{key}: expected a finite number, got "{value}"'


def test_nested_float_keys_are_finite_too() -> None:
    assert message_of(LOCAL + "sip:\n  limits: {tcp_idle_s: .inf}\n") == (
        'agent.yaml:3: sip.limits.tcp_idle_s: expected a finite number, got ".inf"')
    tool = "agent:\n  tools:\n    - {name: t, url: 'https://h.example/x', timeout_s: .nan}\n"
    assert "agent.tools[0].timeout_s: expected a finite number" in message_of(LOCAL + tool)
    # Free-form data goes out as JSON, where NaN is no number.
    assert message_of("realtime:\n  provider: local\n  turn_detection: {threshold: .nan}\n") == (
        'agent.yaml:3: realtime.turn_detection.threshold: expected a finite number, got ".nan"')


@pytest.mark.parametrize("text, expected", [
    ("realtime: {provider: local, connect_timeout_s: -1}\n",
     "agent.yaml:1: realtime.connect_timeout_s: expected 0.1 to 300 seconds, got -1"),
    ("realtime: {provider: local, connect_timeout_s: 0}\n",
     "agent.yaml:1: realtime.connect_timeout_s: expected 0.1 to 300 seconds, got 0"),
    ("realtime: {provider: local, max_session_s: 0}\n",
     "agent.yaml:1: realtime.max_session_s: expected 1 to 86400 seconds, got 0"),
    ("realtime: {provider: local, max_session_s: -1}\n",
     "agent.yaml:1: realtime.max_session_s: expected 1 to 86400 seconds, got -1"),
    (LOCAL + "agent: {idle_timeout_s: -1}\n",
     "agent.yaml:2: agent.idle_timeout_s: expected 0 (never prompt) or 1 to 86400 seconds, got -1"),
    (LOCAL + "agent: {idle_timeout_s: 0.001}\n",
     "agent.yaml:2: agent.idle_timeout_s: expected 0 (never prompt) or 1 to 86400 seconds, got 0.001"),
    (LOCAL + "agent:\n  tools:\n    - {name: t, url: 'https://h.example/x', timeout_s: -1}\n",
     "agent.yaml:4: agent.tools[0].timeout_s: expected 0.1 to 300 seconds, got -1"),
    (LOCAL + "agent:\n  tools:\n    - {name: t, url: 'https://h.example/x', timeout_s: 0}\n",
     "agent.yaml:4: agent.tools[0].timeout_s: expected 0.1 to 300 seconds, got 0"),
])
def test_durations_have_ranges(text: str, expected: str) -> None:
    assert message_of(text) == expected


def test_idle_timeout_zero_still_means_never_prompt() -> None:
    config = load_config_text(LOCAL + "agent: {idle_timeout_s: 0}\n", "agent.yaml", {})
    assert config.agent.idle_timeout_s == 0


@pytest.mark.parametrize("text, key", [
    (LOCAL + "sip: {max_calls: 1_000}\n", "sip.max_calls"),
    (LOCAL + "sip: {max_calls: '٥'}\n", "sip.max_calls"),
    (LOCAL + "sip: {listen: '0.0.0.0:٥٠٦٠'}\n", "sip.listen"),
    (LOCAL + "sip: {listen: '0.0.0.0:²'}\n", "sip.listen"),
    (LOCAL + "media: {rtp_ports: '٤٠٠٠٠-40999'}\n", "media.rtp_ports"),
    (LOCAL + "metrics: {listen: '127.0.0.1:٩١٠٠'}\n", "metrics.listen"),
    (LOCAL + "control: {listen: '٩١٠١', token: 0123456789abcdef0123}\n", "control.listen"),
    (LOCAL + "media: {rtp_timeout_s: '3_0'}\n", "media.rtp_timeout_s"),
])
def test_numbers_are_ascii_digits(text: str, key: str) -> None:
    error = error_of(text)
    assert (error.path, error.line, error.key) == ("agent.yaml", 2, key)


# --- watch_idle: never a loop that does not await ------------------------------------------------------


def _limits(idle_timeout_s: float, busy: Any) -> CallLimits:
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    records: Any = SimpleNamespace(record=lambda *a, **k: None)
    media: Any = SimpleNamespace()

    async def goodbye(message: str, outcome: str) -> None:
        pass

    return CallLimits(AgentConfig(idle_timeout_s=idle_timeout_s), 0.0, 0.0, media, CallState(log), records, log,
                      busy, lambda: False, lambda: None, goodbye)


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, 1e-9])
def test_watch_idle_always_yields_to_the_loop(timeout: float) -> None:
    """Busy all along (a greeting playing): the watcher must sleep, whatever the timeout; a loop that never
    awaits would freeze every call of the process. busy() raises instead of spinning for ever."""
    ticks = 0
    calls_since_tick = 0

    def busy() -> bool:
        nonlocal calls_since_tick
        calls_since_tick += 1
        if calls_since_tick > 100:
            raise AssertionError("watch_idle loops without awaiting")
        return True

    async def ticker() -> None:
        nonlocal ticks, calls_since_tick
        while True:
            ticks += 1
            calls_since_tick = 0
            await asyncio.sleep(0)

    async def main() -> None:
        beat = asyncio.create_task(ticker())
        watcher = asyncio.create_task(_limits(timeout, busy).watch_idle())
        await asyncio.sleep(0.05)
        assert ticks > 10
        if not watcher.done():
            watcher.cancel()
        beat.cancel()
        await asyncio.gather(watcher, beat, return_exceptions=True)
        assert watcher.cancelled() or watcher.exception() is None

    asyncio.run(main())


# --- nothing but ConfigError escapes the loader --------------------------------------------------------


def test_recursive_alias_is_refused() -> None:
    text = "realtime:\n  provider: local\n  turn_detection: &r {type: server_vad, loop: *r}\n"
    assert message_of(text) == ("agent.yaml:3: realtime.turn_detection.loop: a YAML alias refers to a value that "
                                "contains it (an endless loop)")
    assert "endless loop" in message_of(LOCAL + "agent:\n  tools:\n    - name: t\n      url: 'http://h/x'\n"
                                                "      parameters: &p {type: object, properties: {a: *p}}\n")


def test_alias_bombs_are_refused_quickly() -> None:
    # Six levels of eight: 262144 values once expanded, which _plain used to build one by one.
    levels = "".join(f"    l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 8) + "]\n" for i in range(1, 7))
    text = "realtime:\n  provider: local\n  turn_detection:\n    l0: &a0 [x]\n" + levels
    error = error_of(text)
    assert error.key.startswith("realtime.turn_detection.l") and "more than 100000 values" in error.detail
    local = "realtime:\n  provider: local\n  local:\n    l0: &a0 [x]\n" + levels
    assert "more than 100000 values" in message_of(local)


@pytest.mark.parametrize("depth", [100, 3000])
def test_deep_nesting_is_refused(depth: int) -> None:
    text = "realtime:\n  provider: local\n  turn_detection: {x: " + "[" * depth + "]" * depth + "}\n"
    assert "nested more than 64 levels deep" in message_of(text)


@pytest.mark.parametrize("value, tag", [
    ("!foo server_vad", "!foo"), ("!!timestamp nope", "!!timestamp"), ("!!int nope", "!!int"),
    ("!!float nope", "!!float"), ("!!binary 'a'", "!!binary"), ("!!bool maybe", "!!bool"),
])
def test_bad_tags_in_free_form_data_are_refused(value: str, tag: str) -> None:
    text = f"realtime:\n  provider: local\n  turn_detection: {{type: {value}}}\n"
    error = error_of(text)
    assert (error.line, error.key) == (3, "realtime.turn_detection.type")
    assert error.detail.endswith(f"as YAML tag {tag}")


def test_free_form_values_stay_json_types() -> None:
    # An unquoted date is a YAML timestamp: kept as the text written, as JSON has no date type.
    config = load_config_text("realtime:\n  provider: local\n  turn_detection: {since: 2024-01-02, n: 3}\n",
                              "agent.yaml", {})
    assert config.realtime.turn_detection == {"since": "2024-01-02", "n": 3}


@pytest.mark.parametrize("zone", ["Europe", "A" * 300, "Europe/../Europe"])
def test_timezone_that_is_no_file_is_a_config_error(zone: str) -> None:
    error = error_of(LOCAL + f"context: {{timezone: '{zone}'}}\n")
    assert (error.line, error.key) == (2, "context.timezone")


def _truncated_wav(path: Path) -> Path:
    path.write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt " + b"\x00" * 40)
    return path


def test_truncated_hold_audio_is_a_config_error(tmp_path: Path) -> None:
    wav = _truncated_wav(tmp_path / "hold.wav")
    with pytest.raises(ValueError, match="not a WAV file"):
        load_hold_wav(wav)
    text = LOCAL + f"agent:\n  transfer_target: '600'\n  transfer: {{hold_audio: '{wav}'}}\n"
    error = error_of(text)
    assert (error.line, error.key) == (4, "agent.transfer.hold_audio")
    assert "not a WAV file" in error.detail
    header_only = tmp_path / "short.wav"
    header_only.write_bytes(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<I", 16) + b"\x01\x00")
    with pytest.raises(ValueError, match="not a WAV file"):
        load_hold_wav(header_only)
    # A fmt chunk that claims more bytes than the file holds: wave's chunk reader raised RuntimeError.
    oversized = tmp_path / "oversized.wav"
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    oversized.write_bytes(b"RIFF" + struct.pack("<I", 16036) + b"WAVEfmt " + struct.pack("<I", 0x8510) + fmt
                          + b"data" + struct.pack("<I", 4) + bytes(4))
    with pytest.raises(ValueError, match="not a WAV file"):
        load_hold_wav(oversized)


@pytest.mark.parametrize("url", ["http://[::1/x", "http://h.example:0/x", "https://h.example:0/"])
def test_tool_url_that_urlsplit_refuses_or_port_zero(url: str) -> None:
    with pytest.raises(RequestRefused):
        prepare("POST", url, {}, b"{}")
    error = error_of(LOCAL + f"agent:\n  tools:\n    - {{name: t, url: '{url}'}}\n")
    assert (error.line, error.key) == (4, "agent.tools[0].url")


# --- realtime.local is checked when the file loads ------------------------------------------------------


@pytest.mark.parametrize("local, key", [
    ("{tts: {rate: fast}}", "realtime.local.tts.rate"),
    ("{tts: {rate: null}}", "realtime.local.tts.rate"),
    ("{tts: {voice: '-w /tmp/x'}}", "realtime.local.tts.voice"),
    ("{vad: 5}", "realtime.local.vad"),
    ("{vad: [1]}", "realtime.local.vad"),
    ("{vad: {threshold_db: x}}", "realtime.local.vad.threshold_db"),
    ("{vad: {silence_ms: -5}}", "realtime.local.vad.silence_ms"),
    ("{response_delay_ms: true}", "realtime.local.response_delay_ms"),
    ("{fallback: [x]}", "realtime.local.fallback"),
    ("{intents: [{name: a, phrases: [x], reply: [r]}]}", "realtime.local.intents[0].reply"),
])
def test_realtime_local_is_validated_by_the_loader(local: str, key: str) -> None:
    error = error_of(f"realtime:\n  provider: local\n  local: {local}\n")
    assert (error.path, error.line, error.key) == ("agent.yaml", 3, key)


def test_realtime_local_error_points_at_its_line() -> None:
    text = ("realtime:\n  provider: local\n  local:\n    response_delay_ms: 200\n"
            "    vad:\n      threshold_db: loud\n")
    assert message_of(text) == ("agent.yaml:6: realtime.local.vad.threshold_db: expected a level in dBFS from -120 "
                                "to 0, got 'loud'")


@pytest.mark.parametrize("data", [
    {"vad": 5}, {"vad": [1]}, {"tts": {"rate": "x"}}, {"tts": {"rate": None}}, {"vad": {"threshold_db": "x"}},
    {"vad": {"threshold_db": float("nan")}}, {"fallback": ["x"]}, {"response_delay_ms": True},
])
def test_local_brain_from_mapping_raises_its_typed_error(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LocalBrainConfig.from_mapping(data)


# --- duplicate keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, line, key", [
    (LOCAL + "agent:\n  transfer_targets: {sales: '601', sales: 'sip:1@evil.example'}\n",
     3, "agent.transfer_targets.sales"),
    (LOCAL + "agents: {a: {greeting: one}}\nagents: {b: {greeting: two}}\n", 3, "agents"),
    ("realtime:\n  provider: local\n  turn_detection: {type: server_vad, type: semantic_vad}\n",
     3, "realtime.turn_detection.type"),
    (LOCAL + "context: {defaults: {caller_name: a, caller_name: b}}\n", 2, "context.defaults.caller_name"),
    (LOCAL + "agent:\n  tools:\n    - {name: t, url: 'http://h/x', headers: {X-A: a, X-A: b}}\n",
     4, "agent.tools[0].headers.X-A"),
])
def test_duplicate_keys_are_errors_everywhere(text: str, line: int, key: str) -> None:
    error = error_of(text)
    assert (error.line, error.key, error.detail) == (line, key, "duplicate key")


def test_complex_key_is_named_not_dumped() -> None:
    for text in (LOCAL + "sip:\n  ? [a, b]\n  : 1\n", LOCAL + "context: {defaults: {? [a]: x}}\n"):
        message = message_of(text)
        assert "Node" not in message and "expected a name as key, got a list" in message


# --- SIP identity values -----------------------------------------------------------------------------


@pytest.mark.parametrize("sip, key", [
    ('{username: "ag\\r\\nent x"}', "sip.username"),
    ('{username: "20 01"}', "sip.username"),
    ('{user_agent: "a\\r\\nX-Evil: 1"}', "sip.user_agent"),
    ('{user_agent: ""}', "sip.user_agent"),
    ('{public_address: "a b\\r\\nc"}', "sip.public_address"),
    ('{public_address: "203.0.113.10:5060"}', "sip.public_address"),
    ('{public_address: "[2001:db8::1]"}', "sip.public_address"),
    ('{public_address: "fe80::1%eth0"}', "sip.public_address"),  # a zone: meaningless to the PBX
    ('{listen: "[fe80::1%eth0]:5060"}', "sip.listen"),
    ('{outbound_proxy: "a b c"}', "sip.outbound_proxy"),
    ('{registrar: "pbx example.com", username: "2001"}', "sip.registrar"),
])
def test_sip_identity_values_are_checked(sip: str, key: str) -> None:
    error = error_of(LOCAL + f"sip: {sip}\n")
    assert (error.line, error.key) == (2, key)


def test_good_sip_identity_values_load() -> None:
    text = LOCAL + ("sip: {username: '2001', user_agent: 'Acme PBX agent/1.0', public_address: '2001:db8::1', "
                    "outbound_proxy: '[2001:db8::2]:5070'}\n")
    sip = load_config_text(text, "agent.yaml", {}).sip
    assert (sip.public_address, sip.outbound_proxy) == ("2001:db8::1", "[2001:db8::2]:5070")
    assert load_config_text(LOCAL + "sip: {public_address: sip.example.com}\n", "a.yaml", {}).sip.public_address


# --- minor ---------------------------------------------------------------------------------------------


def test_recording_dir_with_nul_is_refused() -> None:
    error = error_of(LOCAL + 'recording: {dir: "rec\\0ordings"}\n')
    assert (error.line, error.key) == (2, "recording.dir")


@pytest.mark.parametrize("value, got", [("null", "null"), ("{a: 1}", "a mapping"), ("[a]", "a list"),
                                        ("true", "true")])
def test_header_values_must_be_texts(value: str, got: str) -> None:
    text = LOCAL + f"agent:\n  tools:\n    - {{name: t, url: 'http://h/x', headers: {{X-Api: {value}}}}}\n"
    assert message_of(text) == f"agent.yaml:4: agent.tools[0].headers.X-Api: expected a text (quote it), got {got}"
    hook = LOCAL + ("events:\n  webhook:\n    url: http://h/\n    secret: 0123456789abcdef0123\n"
                    f"    headers: {{X-Api: {value}}}\n")
    assert "events.webhook.headers.X-Api: expected a text" in message_of(hook)


def test_numeric_header_values_are_their_text() -> None:
    text = LOCAL + "agent:\n  tools:\n    - {name: t, url: 'http://h/x', headers: {X-Api: abc, X-Version: 2}}\n"
    assert load_config_text(text, "a.yaml", {}).agent.tools[0].headers == {"X-Api": "abc", "X-Version": "2"}


def test_a_header_given_twice_in_two_cases_is_refused() -> None:
    text = LOCAL + "agent:\n  tools:\n    - {name: t, url: 'http://h/x', headers: {X-Api: a, x-api: b}}\n"
    assert "agent.tools[0].headers: header x-api is given twice (header names ignore case)" in message_of(text)


# --- the Realtime connection's URL and key ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["wss://", "wss://host.example:0/v1", "wss://host.example:99999/v1",
                                 "wss://[::1/v1", "wss://host.example/v1\\r\\nX: y"])
def test_a_realtime_url_without_a_host_or_a_valid_port_is_refused(url: str) -> None:
    text = f'realtime:\n  provider: openai\n  api_key: k\n  url: "{url}"\n'  # YAML's escapes: \r\n are controls
    assert "realtime.url: expected a URL with a host and a valid port" in message_of(text)


def test_an_api_key_with_a_line_break_is_refused_without_showing_it() -> None:
    text = 'realtime:\n  provider: openai\n  api_key: "sk-secret-key-1234\\n"\n'
    message = message_of(text)
    assert "realtime.api_key: contains a line break" in message and "sk-secret" not in message
